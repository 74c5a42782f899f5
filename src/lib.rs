#![doc = include_str!("../README.md")]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod batch;
mod checkpoint;
pub mod clock;
mod db;
mod engine;
mod error;
pub mod format;
mod index;
pub mod layout;
pub mod limits;
mod options;
mod recovery;
pub mod session;
mod stats;
pub mod storage;
mod wal;

pub use batch::{Batch, Conflict};
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{Db, Iter, Versioned};
pub use error::{Error, Result};
pub use options::{Durability, Options, RecoveryMode, SyncMode};
pub use stats::{RecoveryReport, Skipped, Stats};
