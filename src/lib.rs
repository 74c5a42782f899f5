#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

/// Runs the test hook of [`Options::on_point`] at a protocol point (only in builds with the
/// `sim` feature; nothing otherwise).
macro_rules! point {
    ($engine:expr, $point:ident) => {
        #[cfg(feature = "sim")]
        $engine.point(crate::storage::sim::Point::$point);
    };
}

mod backup;
mod batch;
mod checkpoint;
pub mod clock;
mod db;
mod engine;
mod error;
pub mod format;
mod index;
pub mod inspect;
pub mod layout;
pub mod limits;
mod options;
mod recovery;
mod repair;
pub mod session;
mod stats;
pub mod storage;
mod sync;
pub mod telemetry;
mod wal;

pub use backup::{backup_dir, restore, BackupReport, RestoreReport};
pub use batch::{Batch, Conflict};
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{Db, Iter, Versioned};
pub use error::{Error, Result};
pub use options::{Durability, Options, RecoveryMode, SyncMode};
pub use repair::{repair, RepairReport};
pub use stats::{RecoveryReport, Skipped, Stats};
