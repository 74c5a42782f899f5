//! libFuzzer entry of the `ops_vs_model` target; its body is `tests/support/fuzz/ops_vs_model.rs`, shared with
//! `tests/fuzz_regressions.rs` (docs/testing.md).

#![no_main]

#[path = "../../tests/support/mod.rs"]
mod support;

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: support::fuzz::alloc_cap::CapAlloc = support::fuzz::alloc_cap::CapAlloc;

fuzz_target!(|data: &[u8]| support::fuzz::ops_vs_model::run(data));
