//! How a store is opened: durability, segment size, recovery policy, checkpoints, limits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::format::{put_encoded_size, PAYLOAD_COUNT_SIZE, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::limits;
use crate::storage::{FsStorage, Storage};

/// The shortest [`Options::max_retention`]: a retention checkpoint must start and finish within
/// half of it, and the thread that starts them looks at the clock every 100 ms.
const MAX_RETENTION_MIN: Duration = Duration::from_secs(1);

/// When a write counts as durable. See the README's guarantee table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A write returns after its commit group's `fdatasync`. Survives power loss. The default.
    #[default]
    Always,
    /// A write returns once handed to the OS; a background thread syncs every interval.
    /// Survives a process crash; power loss may lose about the last interval.
    Interval(Duration),
    /// A write returns once handed to the OS; the log is synced only at segment rolls,
    /// checkpoints, [`crate::Db::sync`] and close. Survives a process crash.
    Never,
}

/// How durable one write must be before it returns, whatever the store's [`SyncMode`].
///
/// Lets an application make a login durable at once while a sliding-expiry touch stays cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// As the store's [`SyncMode`] says.
    #[default]
    Default,
    /// Returns once the write is handed to the OS and applied; never waits for an `fdatasync` of
    /// its own. It becomes durable with the next one: a later durable write's commit group, the
    /// interval sync, [`crate::Db::sync`], a segment roll, a checkpoint or close. Survives a
    /// process crash, not a power loss before that sync. In [`SyncMode::Always`] it is visible
    /// to readers before it is durable.
    Lazy,
    /// Returns after an `fdatasync` that covers it, in every [`SyncMode`].
    Immediate,
}

impl Durability {
    /// Whether a write of this durability needs its commit group synced under `mode`.
    pub(crate) fn needs_sync(self, mode: SyncMode) -> bool {
        match self {
            Durability::Default => mode == SyncMode::Always,
            Durability::Lazy => false,
            Durability::Immediate => true,
        }
    }
}

/// What recovery does with damage it finds in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Cut a torn tail (damage at the end of the last segment that no later record proves was
    /// durable); refuse any other damage with [`Error::Corruption`]. The default.
    #[default]
    TolerateTornTail,
    /// Refuse any damage, a torn tail included.
    Strict,
    /// Recover every record that verifies, skipping damage; never return a wrong value.
    /// What was skipped is reported in [`crate::Stats::recovery`]; when anything was, the
    /// recovered state is written as a new snapshot before the open returns, so later opens
    /// agree with it.
    Salvage,
}

/// Options for [`crate::Db::open_with`]. Build with the setters; every one has a default.
#[derive(Clone)]
pub struct Options {
    pub(crate) sync_mode: SyncMode,
    pub(crate) segment_size: u64,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) auto_checkpoint: bool,
    pub(crate) checkpoint_log_bytes: u64,
    pub(crate) value_size_max: usize,
    pub(crate) batch_size_max: usize,
    pub(crate) preallocate_ahead: bool,
    pub(crate) recycle_segments: bool,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) max_retention: Option<Duration>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) encryption_key: Option<crate::EncryptionKey>,
    /// Runs at each protocol point (tests only).
    #[cfg(feature = "sim")]
    pub(crate) on_point: Option<Arc<dyn Fn(crate::storage::sim::Point) + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync_mode: SyncMode::Always,
            segment_size: limits::SEGMENT_SIZE_DEFAULT,
            recovery_mode: RecoveryMode::TolerateTornTail,
            auto_checkpoint: true,
            checkpoint_log_bytes: limits::CHECKPOINT_LOG_BYTES_DEFAULT,
            value_size_max: limits::VALUE_SIZE_MAX_DEFAULT,
            batch_size_max: limits::BATCH_SIZE_MAX_DEFAULT,
            preallocate_ahead: true,
            recycle_segments: true,
            sweep_interval: Some(limits::SWEEP_INTERVAL_DEFAULT),
            max_retention: None,
            clock: Arc::new(SystemClock),
            storage: Arc::new(FsStorage),
            encryption_key: None,
            #[cfg(feature = "sim")]
            on_point: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("sync_mode", &self.sync_mode)
            .field("segment_size", &self.segment_size)
            .field("recovery_mode", &self.recovery_mode)
            .field("auto_checkpoint", &self.auto_checkpoint)
            .field("checkpoint_log_bytes", &self.checkpoint_log_bytes)
            .field("value_size_max", &self.value_size_max)
            .field("batch_size_max", &self.batch_size_max)
            .field("preallocate_ahead", &self.preallocate_ahead)
            .field("recycle_segments", &self.recycle_segments)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_retention", &self.max_retention)
            .field("clock", &self.clock)
            .field("storage", &self.storage)
            .field("encrypted", &self.encryption_key.is_some())
            .finish()
    }
}

impl Options {
    /// Default options: `SyncMode::Always`, 16 MiB segments, torn tails tolerated, automatic
    /// checkpoints every 256 MiB of log.
    pub fn new() -> Options {
        Options::default()
    }

    /// Runs `hook` on the thread that reaches each [`crate::storage::sim::Point`] of the
    /// engine's protocols, so a test can line up another thread's work exactly there (with a
    /// channel, not a sleep). Only in builds with the `sim` feature.
    #[cfg(feature = "sim")]
    #[must_use]
    pub fn on_point(mut self, hook: impl Fn(crate::storage::sim::Point) + Send + Sync + 'static) -> Options {
        self.on_point = Some(Arc::new(hook));
        self
    }

    /// When a write counts as durable. Default: [`SyncMode::Always`].
    #[must_use]
    pub fn sync_mode(mut self, mode: SyncMode) -> Options {
        self.sync_mode = mode;
        self
    }

    /// Size of each log segment file (preallocated). Default: 16 MiB. Range: 64 KiB to 1 GiB,
    /// and large enough for the largest batch.
    #[must_use]
    pub fn segment_size(mut self, bytes: u64) -> Options {
        self.segment_size = bytes;
        self
    }

    /// What recovery does with damage. Default: [`RecoveryMode::TolerateTornTail`].
    #[must_use]
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Options {
        self.recovery_mode = mode;
        self
    }

    /// Whether checkpoints run automatically (in the background past
    /// [`Options::checkpoint_log_bytes`], and on close). Default: true.
    #[must_use]
    pub fn auto_checkpoint(mut self, on: bool) -> Options {
        self.auto_checkpoint = on;
        self
    }

    /// Log bytes written since the last checkpoint that trigger an automatic one. This bounds
    /// the log that recovery replays. Default: 256 MiB.
    #[must_use]
    pub fn checkpoint_log_bytes(mut self, bytes: u64) -> Options {
        self.checkpoint_log_bytes = bytes;
        self
    }

    /// Largest value accepted. Default: 1 MiB. At most 256 MiB.
    #[must_use]
    pub fn value_size_max(mut self, bytes: usize) -> Options {
        self.value_size_max = bytes;
        self
    }

    /// Largest encoded batch accepted (keys, values and framing). Default: 4 MiB.
    #[must_use]
    pub fn batch_size_max(mut self, bytes: usize) -> Options {
        self.batch_size_max = bytes;
        self
    }

    /// Whether the next segment is created and zero-filled by a background thread before it is
    /// needed, keeping file growth off the commit path. Default: true. Turn off for fully
    /// deterministic I/O (the fault-injection tests do).
    #[must_use]
    pub fn preallocate_ahead(mut self, on: bool) -> Options {
        self.preallocate_ahead = on;
        self
    }

    /// Whether segments a checkpoint covered are kept (as many as hold `checkpoint_log_bytes`,
    /// at most 64) and reused as new segments instead of zero-filling new files: appends then
    /// never wait behind a segment's zeros going to disk (docs/design.md, "Recycled segments").
    /// The store's files hold up to that much more disk while it is open. Default: true. In a
    /// store that is not encrypted and has [`Options::max_retention`] set, segments are never
    /// recycled: their old bytes would keep dead values in the store's files.
    #[must_use]
    pub fn recycle_segments(mut self, on: bool) -> Options {
        self.recycle_segments = on;
        self
    }

    /// How many covered segments are kept to be recycled under these options.
    pub(crate) fn recycle_pool_max(&self) -> usize {
        let keeps_dead_values = self.max_retention.is_some() && self.encryption_key.is_none();
        if !self.recycle_segments || keeps_dead_values {
            return 0;
        }
        let per_checkpoint = self.checkpoint_log_bytes / self.segment_size.max(1) + 1;
        per_checkpoint.min(limits::RECYCLE_POOL_MAX) as usize
    }

    /// How often a background thread drops expired entries from memory, a bounded amount of
    /// work per pass; `None` turns it off (expired entries still never read back, and are
    /// dropped at checkpoints and by [`crate::Db::purge_expired`]). Default: every second.
    #[must_use]
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Options {
        self.sweep_interval = every;
        self
    }

    /// Bounds how long a dead value stays in the store's files: no value that was overwritten
    /// (a put, a compare-and-swap), deleted (a [`crate::session::SessionStore::destroy`] or
    /// `destroy_all_of` included) or expired stays in a file of the store's directory for more
    /// than `bound` of the store's clock (see [`Options::clock`]) while the store is open; an
    /// expired value counts from its deadline. The engine notes when the first such value
    /// appeared and starts a checkpoint half of `bound` later, which rewrites the live data and
    /// deletes every segment and older snapshot that held the dead one. So the bound holds as
    /// long as a checkpoint takes less than half of it; it costs at most one checkpoint per half
    /// of `bound` under a steady stream of overwrites, none while nothing dies.
    ///
    /// Independent of [`Options::auto_checkpoint`]: with `max_retention` set, these checkpoints
    /// run (and [`crate::Db::close`] checkpoints when the files hold a dead value) even with
    /// automatic checkpoints off. A value that died before the store was opened, or that expires
    /// while it is closed, counts from the open. Not covered: blocks the file system or the disk
    /// freed but has not overwritten, and copies made outside the store (backups). At least one
    /// second. Default: `None`, no bound (dead values go at the next checkpoint, however late).
    /// See docs/design.md, "Retention".
    #[must_use]
    pub fn max_retention(mut self, bound: Duration) -> Options {
        self.max_retention = Some(bound);
        self
    }

    /// The clock behind expiry. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Options {
        self.clock = clock;
        self
    }

    /// The storage all file I/O goes through. Default: the real file system.
    #[must_use]
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Options {
        self.storage = storage;
        self
    }

    /// Encrypts the store at rest under `key` (docs/design.md, "Encryption at rest"): a new
    /// store is created encrypted; an existing one must have been encrypted with this key (or
    /// rotated to it, [`crate::Db::rotate_key`]): another key is [`crate::Error::WrongKey`], a
    /// store that is not encrypted [`crate::Error::NotEncrypted`]. Without it, an encrypted
    /// store fails to open with [`crate::Error::KeyRequired`]. Default: none (not encrypted).
    #[must_use]
    pub fn encryption_key(mut self, key: crate::EncryptionKey) -> Options {
        self.encryption_key = Some(key);
        self
    }

    /// Largest record payload these options can produce: a single put at the limits, or a batch.
    pub(crate) fn record_payload_max(&self) -> usize {
        let single_put = limits::KEY_SIZE_MAX + self.value_size_max + 64;
        single_put.max(self.batch_size_max)
    }

    /// Checks the options against the hard limits and each other.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidOptions(msg));
        if !(limits::SEGMENT_SIZE_MIN..=limits::SEGMENT_SIZE_MAX).contains(&self.segment_size) {
            return bad(format!(
                "segment_size {} is outside {}..={}",
                self.segment_size,
                limits::SEGMENT_SIZE_MIN,
                limits::SEGMENT_SIZE_MAX
            ));
        }
        if self.value_size_max == 0 {
            return bad("value_size_max 0 would refuse every value but the empty one".into());
        }
        // The smallest batch there is: one put of an empty key with an empty value.
        let smallest_batch = PAYLOAD_COUNT_SIZE + put_encoded_size(0, 0);
        if self.batch_size_max < smallest_batch {
            return bad(format!(
                "batch_size_max {} cannot hold any batch (the smallest takes {smallest_batch} bytes)",
                self.batch_size_max
            ));
        }
        if self.value_size_max > limits::VALUE_SIZE_MAX_LIMIT {
            return bad(format!(
                "value_size_max {} exceeds {}",
                self.value_size_max,
                limits::VALUE_SIZE_MAX_LIMIT
            ));
        }
        if self.batch_size_max > limits::BATCH_SIZE_MAX_LIMIT {
            return bad(format!(
                "batch_size_max {} exceeds {}",
                self.batch_size_max,
                limits::BATCH_SIZE_MAX_LIMIT
            ));
        }
        let record_max = (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + self.record_payload_max()) as u64;
        if record_max > self.segment_size {
            return bad(format!(
                "segment_size {} cannot hold the largest record ({record_max} bytes); raise it or lower value_size_max / batch_size_max",
                self.segment_size
            ));
        }
        if let SyncMode::Interval(d) = self.sync_mode {
            if d.is_zero() {
                return bad("SyncMode::Interval needs a non-zero interval".into());
            }
        }
        if self.sweep_interval.is_some_and(|d| d.is_zero()) {
            return bad("sweep_interval must be positive (None turns the sweeper off)".into());
        }
        if self.checkpoint_log_bytes == 0 {
            return bad("checkpoint_log_bytes must be positive".into());
        }
        if let Some(bound) = self.max_retention {
            if bound < MAX_RETENTION_MIN {
                return bad(format!(
                    "max_retention {bound:?} is below {MAX_RETENTION_MIN:?}: a checkpoint must fit in half of it"
                ));
            }
        }
        Ok(())
    }
}
