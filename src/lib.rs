#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// A function longer than clippy.toml's threshold (80 lines) is split into named steps, or an
// `#[allow]` on it says why it must be one piece (issue 13; none does today).
#![deny(clippy::too_many_lines)]

/// Runs the test hook of [`Options::on_point`] at a protocol point (only in builds with the
/// `sim` feature; nothing otherwise).
macro_rules! point {
    ($engine:expr, $point:ident) => {
        #[cfg(feature = "sim")]
        $engine.point(crate::storage::sim::Point::$point);
    };
}

// Public types: the API a user holds (db.rs, batch.rs, options.rs, error.rs, stats.rs, clock.rs,
// limits.rs). Then the data flow: engine (group commit, reads) → wal (segments) → storage (the
// seam); checkpoint (snapshots) and recovery (open) beside them; format (every on-disk byte) and
// index (the in-memory map) underneath; tools (inspect, backup, repair) and session on top.
mod batch;
mod clock;
mod crypto;
mod db;
mod error;
pub mod limits;
mod options;
mod stats;

mod checkpoint;
mod engine;
mod format;
mod index;
mod recovery;
pub mod storage;
mod sync;
mod wal;

pub mod session;
#[cfg(feature = "metrics")]
pub mod telemetry;
#[cfg(not(feature = "metrics"))]
mod telemetry;
mod tools;

pub use tools::inspect;

pub use batch::Batch;
pub use clock::{Clock, ManualClock, SystemClock};
pub use crypto::EncryptionKey;
pub use db::{Db, Iter, Versioned};
pub use error::{Conflict, Error, Result};
pub use format::{FORMAT_VERSION, FORMAT_VERSION_ENCRYPTED, FORMAT_VERSION_NEWEST, FORMAT_VERSION_OLDEST};
pub use options::{Durability, Options, RecoveryMode, SyncMode};
pub use stats::{LatencyHistogram, RecoveryReport, Skipped, Stats};
pub use tools::backup::{backup_dir, restore, BackupReport, RestoreReport};
pub use tools::repair::{repair, RepairReport};

/// What the project's own tests, fuzz targets and benchmarks reach inside the crate: the
/// on-disk format, file names, tuning limits, the simulated storage and the decoders' fuzzing
/// entry points. Only with the cargo feature `sim`; not part of the API, no stability promised.
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod internals {
    /// Every on-disk byte (src/format/).
    pub mod format {
        pub use crate::format::*;
    }
    /// Every file name (src/storage/layout.rs).
    pub mod layout {
        pub use crate::storage::layout::*;
    }
    /// The contract limits and the tuning values.
    pub mod limits {
        pub use crate::limits::tuning::*;
        pub use crate::limits::*;
    }
    /// The simulated, fault-injecting storage.
    pub mod sim {
        pub use crate::storage::sim::*;
    }
    /// Entry points of the fuzz targets.
    pub mod fuzzing {
        pub use crate::tools::inspect::fuzzing::*;
    }
    /// A file's data key, to seal and open format version 3's pieces (golden files, fuzzing).
    pub mod crypto {
        pub use crate::crypto::FileCipher;
    }
    /// The nonce audit: every nonce sealed under each data key, recorded (test builds).
    #[cfg(feature = "sim")]
    pub mod nonce_audit {
        pub use crate::crypto::audit::*;
    }
    /// Test hooks of the engine's protocol points ([`crate::Options::on_point`]).
    pub use crate::storage::sim::Point;
}
