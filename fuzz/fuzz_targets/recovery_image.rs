//! libFuzzer entry of the `recovery_image` target; its body is `tests/fuzz_support/recovery_image.rs`, shared with
//! `tests/fuzz_regressions.rs` (docs/testing.md).

#![no_main]

#[path = "../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fuzz_support::alloc_cap::CapAlloc = fuzz_support::alloc_cap::CapAlloc;

fuzz_target!(|data: &[u8]| fuzz_support::recovery_image::run(data));
