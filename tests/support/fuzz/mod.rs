//! The bodies of the fuzz targets, shared by the libFuzzer binaries in `fuzz/fuzz_targets/`
//! (which include the support module with `#[path]`) and by `tests/fuzz_regressions.rs`, which
//! replays every saved input through the same functions under `cargo test`. See
//! docs/testing.md.

pub mod alloc_cap;
pub mod ops_vs_model;
pub mod record_decode;
pub mod recovery_image;
pub mod seeds;
pub mod snapshot_decode;
pub mod spec;
