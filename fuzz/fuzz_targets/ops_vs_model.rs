//! libFuzzer entry of the `ops_vs_model` target; its body is `tests/fuzz_support/ops_vs_model.rs`, shared with
//! `tests/fuzz_regressions.rs` (docs/testing.md).

#![no_main]

#[path = "../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fuzz_support::alloc_cap::CapAlloc = fuzz_support::alloc_cap::CapAlloc;

fuzz_target!(|data: &[u8]| fuzz_support::ops_vs_model::run(data));
