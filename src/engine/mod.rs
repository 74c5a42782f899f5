//! The engine shared by a [`crate::Db`] handle and its background threads: its state, poisoning
//! and statistics here; the write path in `commit.rs` (group commit, sync), reads in `read.rs`.
//! Checkpoints live in `src/checkpoint/`, opening in `src/recovery/`.

mod commit;
mod read;
mod retention;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::sync::{self, Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use crate::index::{FileId, Index, Source};
use crate::options::Options;
use crate::stats::{RecoveryReport, Stats};
use crate::storage::layout::Layout;
use crate::storage::{LockGuard, Storage};
use crate::telemetry::Telemetry;
use crate::wal::sync::LogSync;
use crate::wal::writer::{LogWriter, SegmentFile, SpareSlot};

pub(crate) use commit::{CommitState, RollPoint};
pub(crate) use read::Entries;
pub(crate) use retention::{Retention, Taken};

/// Counters for [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub commit_groups: AtomicU64,
    pub records: AtomicU64,
    pub commit_group_size_max: AtomicU64,
    pub commit_group_sizes: [AtomicU64; 8],
    pub checkpoints: AtomicU64,
    pub log_bytes_since_checkpoint: AtomicU64,
    pub writers_waiting: AtomicU64,
    pub expired_swept: AtomicU64,
    /// Lazy writes that went beside a syncing commit group (`Engine::beside`).
    pub writes_beside: AtomicU64,
    /// Checkpoint durations and bytes (the log counts and times its own fsyncs).
    pub telemetry: Telemetry,
}

/// Signals to the background threads.
#[derive(Default)]
pub(crate) struct Background {
    pub state: Mutex<BackgroundState>,
    pub cv: Condvar,
}

#[derive(Default)]
pub(crate) struct BackgroundState {
    pub shutdown: bool,
    pub checkpoint_wanted: bool,
}

/// Everything recovery hands to the engine.
pub(crate) struct Recovered {
    pub index: Index,
    pub log: LogWriter,
    pub next_seq: u64,
    pub durable_seq: u64,
    /// `(base_seq, file size)` of each snapshot on disk, oldest first.
    pub snapshots: Vec<(u64, u64)>,
    pub log_bytes_since_checkpoint: u64,
    pub report: RecoveryReport,
    /// An encrypted store's keyring.
    pub keyring: Option<Arc<crate::crypto::Keyring>>,
}

pub(crate) struct Engine {
    pub layout: Layout,
    pub opts: Options,
    pub storage: Arc<dyn Storage>,
    pub index: RwLock<Index>,
    pub log: Mutex<LogWriter>,
    commit: Mutex<CommitState>,
    leader_cv: Condvar,
    /// Wakes the commit thread (`CommitState::async_lead`, `commit_thread_stop`).
    commit_cv: Condvar,
    poisoned: sync::AtomicBool,
    poison_cause: Mutex<Option<String>>,
    pub spare: Arc<SpareSlot>,
    /// Held for the whole of a checkpoint: one at a time.
    pub checkpoint_lock: Mutex<()>,
    /// `(base_seq, file size)` of each snapshot on disk, oldest first.
    pub snapshots: Mutex<Vec<(u64, u64)>>,
    pub counters: Counters,
    pub background: Background,
    pub lock_guard: Mutex<Option<LockGuard>>,
    pub recovery: RecoveryReport,
    /// The latest time [`Engine::now_ms`] returned (a protocol atomic: expiry decisions on
    /// different threads rest on it).
    clock_floor: sync::AtomicU64,
    /// Every fsync of the log goes through it (the log writer's own seals too); it knows the
    /// highest sequence number known durable.
    pub log_sync: Arc<LogSync>,
    /// An encrypted store's keyring (docs/design.md, "Encryption at rest").
    pub keyring: Option<Arc<crate::crypto::Keyring>>,
    /// Since when the files hold a dead value (noted only with `Options::max_retention`).
    pub retention: Retention,
}

impl Engine {
    pub(crate) fn new(layout: Layout, opts: Options, spare: Arc<SpareSlot>, guard: LockGuard, r: Recovered) -> Engine {
        let counters = Counters::default();
        counters
            .log_bytes_since_checkpoint
            .store(r.log_bytes_since_checkpoint, Ordering::Relaxed);
        let log_sync = r.log.log_sync();
        let retention = Retention::default();
        if opts.max_retention.is_some() {
            // Anything but one snapshot of live entries may hold dead values: a log (its puts
            // may overwrite, its deletes delete), an older snapshot, entries recovery dropped
            // as expired. They count from now.
            let dropped_expired = (r.index.len() as u64) < r.report.snapshot_entries;
            let dead = r.report.records_replayed > 0 || r.snapshots.len() > 1 || dropped_expired;
            retention.opened(dead, opts.clock.now_ms());
        }
        debug_assert_eq!(
            log_sync.durable_seq(),
            r.durable_seq,
            "recovery hands over a durable log"
        );
        Engine {
            log_sync,
            keyring: r.keyring,
            storage: opts.storage.clone(),
            layout,
            opts,
            index: RwLock::new(r.index),
            log: Mutex::new(r.log),
            commit: Mutex::new(CommitState::new(r.next_seq)),
            leader_cv: Condvar::new(),
            commit_cv: Condvar::new(),
            poisoned: sync::AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            spare,
            checkpoint_lock: Mutex::new(()),
            snapshots: Mutex::new(r.snapshots),
            counters,
            background: Background::default(),
            lock_guard: Mutex::new(Some(guard)),
            recovery: r.report,
            clock_floor: sync::AtomicU64::new(0),
            retention,
        }
    }

    /// The store's time for expiry: the clock, except that it never goes back. Expiry
    /// decisions lean on that: a touch decided after a checkpoint fixed its cut finds its entry
    /// live at the cut too, so the snapshot holds it (docs/design.md, "Concurrency"); and a
    /// wall clock stepped back must not revive entries already read as expired.
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.opts.clock.now_ms();
        let floor = self.clock_floor.load(Ordering::Acquire);
        if now <= floor {
            return floor;
        }
        self.clock_floor.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// Runs the test hook at `point` (builds with the `sim` feature; nothing otherwise).
    #[cfg(feature = "sim")]
    pub(crate) fn point(&self, point: crate::storage::sim::Point) {
        if let Some(hook) = &self.opts.on_point {
            hook(point);
        }
    }

    /// The format version of the files this store writes: 3 if it is encrypted, else 2.
    pub(crate) fn write_version(&self) -> u32 {
        if self.keyring.is_some() {
            crate::format::FORMAT_VERSION_ENCRYPTED
        } else {
            FORMAT_VERSION
        }
    }

    // -----------------------------------------------------------------------------------------
    // Poisoning

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let cause = self.poison_cause.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    pub(crate) fn poison(&self, err: &Error) {
        let mut cause = self.poison_cause.lock();
        if cause.is_none() {
            *cause = Some(err.to_string());
            tracing::error!(target: "sessiondb", cause = %err, "store poisoned: writes refused until reopened");
        }
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    // -----------------------------------------------------------------------------------------
    // Stats

    pub(crate) fn stats(&self) -> Stats {
        let (keys, live_bytes, last_seq) = {
            let index = self.index.read();
            (index.len() as u64, index.live_bytes(), index.applied_seq)
        };
        let (segments, log_bytes) = {
            let log = self.log.lock();
            (log.segments.len() as u64, log.bytes_on_disk())
        };
        let snapshots = self.snapshots.lock().clone();
        let snapshot_bytes: u64 = snapshots.iter().map(|s| s.1).sum();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut sizes = [0u64; 8];
        for (s, a) in sizes.iter_mut().zip(&c.commit_group_sizes) {
            *s = load(a);
        }
        let mut stats = Stats {
            keys,
            live_bytes,
            dead_bytes: (log_bytes + snapshot_bytes).saturating_sub(live_bytes),
            log_bytes_since_checkpoint: load(&c.log_bytes_since_checkpoint),
            segments,
            snapshots: snapshots.len() as u64,
            last_checkpoint_seq: snapshots.last().map_or(0, |s| s.0),
            last_seq,
            commit_groups: load(&c.commit_groups),
            writers_waiting: load(&c.writers_waiting),
            records: load(&c.records),
            commit_group_size_max: load(&c.commit_group_size_max),
            commit_group_sizes: sizes,
            checkpoints: load(&c.checkpoints),
            expired_swept: load(&c.expired_swept),
            writes_beside: load(&c.writes_beside),
            segments_recycled: self.spare.recycled(),
            dead_since_ms: self.retention.dead_since(),
            retention_checkpoints: load(&self.retention.checkpoints),
            retention_checked_ms: load(&self.retention.checked_ms),
            recovery: self.recovery.clone(),
            ..Stats::default()
        };
        c.telemetry.fill(&mut stats);
        self.log_sync.fill(&mut stats);
        stats
    }
}

/// How values in a segment that no longer changes are read: mapped when the storage can.
pub(crate) fn sealed_source(seg: &SegmentFile, version: u32) -> Source {
    let file = FileId::Segment(seg.id);
    let source = match seg.file.map() {
        Ok(Some(map)) => Source::bytes(file, version, Arc::new(crate::storage::FileBytes::Mapped(map))),
        _ => Source::file(file, version, seg.file.clone()),
    };
    source.with_cipher(seg.cipher.clone())
}
