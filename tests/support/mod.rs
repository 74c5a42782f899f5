//! The one support module of the tests: every integration test in `tests/`, the CLI's tests
//! (`cli/tests/cli.rs`), the shuttle scenarios (`schedules/tests/schedules.rs`) and the
//! libFuzzer targets (`fuzz/fuzz_targets/`) include it, the last three with `#[path]`.
//!
//! - [`random`]: seeds that replay (`SESSIONDB_SEED`) and a small generator;
//! - [`wait`]: waiting for another thread, always with a deadline;
//! - [`hold`]: an fsync held with a commit group lined up behind it, a thread held at a
//!   protocol point;
//! - [`child`]: a child process's output, read with a deadline;
//! - [`options`]: the options of the tests' stores;
//! - [`files`]: a store's files, their framing, copies and damage;
//! - [`writes`]: what the models write (a batch of puts and deletes);
//! - [`faults`]: the fault tests' workload, model and oracle on the simulated storage;
//! - [`swarm`]: the model of the swarm and of the `ops_vs_model` fuzz target;
//! - [`history`]: recorded concurrent histories and their linearizability checker;
//! - [`fuzz`]: the bodies of the fuzz targets, which `fuzz_regressions.rs` replays;
//! - [`syscalls`]: system calls recorded with strace, and the power-loss states they may leave.
//!
//! It names the library `sessiondb` only: the shuttle build renames its own copy to that name.

#![allow(dead_code)]

pub mod child;
pub mod faults;
pub mod files;
pub mod fuzz;
pub mod history;
pub mod hold;
pub mod options;
pub mod random;
pub mod swarm;
pub mod syscalls;
pub mod wait;
pub mod writes;

// The everyday helpers, by their short names (`support::wait_until`); a test that needs none of
// one module's leaves its re-export unused.
#[allow(unused_imports)]
pub use {files::*, options::*, random::*, wait::*, writes::*};
