//! libFuzzer entry of the `recovery_image` target; its body is `tests/support/fuzz/recovery_image.rs`, shared with
//! `tests/fuzz_regressions.rs` (docs/testing.md).

#![no_main]

#[path = "../../tests/support/mod.rs"]
mod support;

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: support::fuzz::alloc_cap::CapAlloc = support::fuzz::alloc_cap::CapAlloc;

fuzz_target!(|data: &[u8]| support::fuzz::recovery_image::run(data));
