//! Making the log durable: every `fdatasync` of a log segment goes through [`LogSync`], which
//! knows the highest sequence number an fsync made durable and counts and times the fsyncs.
//!
//! Linux reports a failed writeback to one fsync of a file only (docs/reliability.md, F5):
//! another fsync of the same file, running alongside or after it, returns success although the
//! writes it was to cover are gone. With a commit group's fsync, a seal and `Db::sync` on
//! different threads, one could acknowledge writes the other's error dropped. So the fsyncs run
//! one at a time, and once one fails every later one fails too, with the first error: nothing is
//! acknowledged as durable after it (the engine poisons the store; reopening runs recovery).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::storage::StorageFile;
use crate::sync::{self, Mutex};
use crate::telemetry::{self, LatencyRecorder};

/// A segment to fsync (and its path) and the last sequence number written to the log when it
/// was chosen: everything up to there is in that segment or in one sealed (fsynced) before it.
/// No segment: the log has no active segment yet, and everything written is durable already.
pub(crate) struct SyncTarget {
    pub file: Option<(Arc<dyn StorageFile>, PathBuf)>,
    pub through: u64,
}

/// Every fsync of the log, one at a time; what they made durable.
pub(crate) struct LogSync {
    /// The first failure, if any. Held across each fsync: fsyncs of the log run one at a time.
    failed: Mutex<Option<String>>,
    /// The highest sequence number known durable (a protocol atomic: records vouch for it).
    durable_seq: sync::AtomicU64,
    fsyncs: AtomicU64,
    latency: LatencyRecorder,
}

impl LogSync {
    /// For a log whose records up to `durable_seq` are durable.
    pub(crate) fn new(durable_seq: u64) -> LogSync {
        LogSync {
            failed: Mutex::new(None),
            durable_seq: sync::AtomicU64::new(durable_seq),
            fsyncs: AtomicU64::new(0),
            latency: LatencyRecorder::default(),
        }
    }

    /// Whether an fsync of the log has failed (every later one fails too).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.lock().is_some()
    }

    /// The highest sequence number known durable.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// `fdatasync` of the target's segment, unless an earlier fsync failed; then every record
    /// through `target.through` is durable.
    pub(crate) fn sync(&self, target: &SyncTarget) -> Result<()> {
        let mut failed = self.failed.lock();
        if let Some(cause) = &*failed {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        let Some((file, path)) = &target.file else {
            debug_assert!(self.durable_seq() >= target.through, "no segment, nothing unsynced");
            return Ok(());
        };
        let started = Instant::now();
        file.sync_data().map_err(|e| {
            let e = Error::io("fdatasync", path, e);
            *failed = Some(e.to_string());
            e
        })?;
        let took = started.elapsed();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.latency.record(took);
        telemetry::fsync(took);
        self.durable_seq.fetch_max(target.through, Ordering::AcqRel);
        Ok(())
    }

    /// Fills the fields of `stats` this measures.
    pub(crate) fn fill(&self, stats: &mut Stats) {
        stats.fsyncs = self.fsyncs.load(Ordering::Relaxed);
        stats.fsync_latency = self.latency.snapshot();
    }
}
