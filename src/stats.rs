//! What [`crate::Db::stats`] reports.

use std::path::PathBuf;
use std::time::Duration;

/// Counters and sizes of an open store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys in the index: undeleted, and not yet dropped after expiring (expired entries never
    /// read back; the sweeper, checkpoints and the next open drop them).
    pub keys: u64,
    /// Bytes of live keys and values.
    pub live_bytes: u64,
    /// Bytes in log segments and snapshots beyond the live keys and values: overwritten,
    /// deleted and expired data, and framing. Preallocated space not yet written is not counted.
    pub dead_bytes: u64,
    /// Log bytes written (framing included) since the last checkpoint.
    pub log_bytes_since_checkpoint: u64,
    /// Log segments holding records (the preallocated spare is not counted).
    pub segments: u64,
    /// Snapshot files.
    pub snapshots: u64,
    /// Base sequence number of the newest snapshot, 0 if none.
    pub last_checkpoint_seq: u64,
    /// Sequence number of the last write applied.
    pub last_seq: u64,
    /// `fdatasync`/`fsync` calls on log segments since open.
    pub fsyncs: u64,
    /// Commit groups written since open (one write call each).
    pub commit_groups: u64,
    /// Writers waiting for their commit group right now (the commit queue's depth).
    pub writers_waiting: u64,
    /// Records written since open.
    pub records: u64,
    /// Largest commit group since open, in records.
    pub commit_group_size_max: u64,
    /// Commit groups by size: bucket `i` counts groups of `2^i ..= 2^(i+1) - 1` records.
    pub commit_group_sizes: [u64; 8],
    /// Checkpoints completed since open.
    pub checkpoints: u64,
    /// Latency of the fsyncs counted in `fsyncs` (commit groups', seals', checkpoint rolls' and
    /// [`crate::Db::sync`]'s) since open.
    pub fsync_latency: LatencyHistogram,
    /// Time the last checkpoint took, from its start until the log it covers was deleted.
    pub checkpoint_duration_last: Duration,
    /// Time all checkpoints since open took together.
    pub checkpoint_duration_total: Duration,
    /// Bytes of the snapshot the last checkpoint wrote.
    pub checkpoint_bytes_last: u64,
    /// Bytes of snapshots written by checkpoints since open.
    pub checkpoint_bytes_total: u64,
    /// Expired entries the sweeper (or [`crate::Db::purge_expired`]) dropped since open.
    pub expired_swept: u64,
    /// Lazy writes (`Durability::Lazy`, or any write in `SyncMode::Never`/`Interval` while a
    /// durable write's fsync is running) written and applied beside a commit group that was
    /// waiting for its fsync, instead of waiting for it (docs/design.md, "Write path").
    pub writes_beside: u64,
    /// Segments made by recycling one a checkpoint covered instead of zero-filling a new file
    /// ([`crate::Options::recycle_segments`]), since open.
    pub segments_recycled: u64,
    /// With [`crate::Options::max_retention`]: the store's time (ms since the Unix epoch) from
    /// which the store's files hold a dead value (overwritten, deleted, or expired: an expiry
    /// deadline may still be ahead), the earliest the engine knows of; it errs early, never
    /// late. A retention checkpoint starts half of `max_retention` after it. `None` when the
    /// files hold none, and without `max_retention`.
    pub dead_since_ms: Option<u64>,
    /// Checkpoints started because of [`crate::Options::max_retention`] since open.
    pub retention_checkpoints: u64,
    /// The store's time when the retention thread last looked at the clock, after any
    /// checkpoint it started then (it looks at least every 100 ms); 0 before its first look and
    /// without [`crate::Options::max_retention`].
    pub retention_checked_ms: u64,
    /// What the last open found and did.
    pub recovery: RecoveryReport,
}

/// What recovery found and did when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Base sequence number of the snapshot loaded, if any.
    pub snapshot_seq: Option<u64>,
    /// Entries loaded from the snapshot.
    pub snapshot_entries: u64,
    /// Log records replayed after the snapshot.
    pub records_replayed: u64,
    /// Bytes of torn tail cut from the last segment.
    pub torn_tail_bytes: u64,
    /// Damage skipped in [`crate::RecoveryMode::Salvage`].
    pub skipped: Vec<Skipped>,
    /// Files removed: leftover temp files, covered segments, older snapshots.
    pub files_removed: u64,
    /// Time from the start of open to ready.
    pub duration: Duration,
}

/// A damaged region that salvage recovery skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// Buckets of a [`LatencyHistogram`].
pub(crate) const LATENCY_BUCKETS: usize = 24;

/// A histogram of latencies in power-of-two buckets of microseconds.
///
/// Bucket 0 counts latencies below 2 µs; bucket `i` (0 < i < 23) counts latencies in
/// `2^i .. 2^(i+1)` µs; the last bucket counts everything from 2^23 µs (about 8.4 s) up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// Samples per bucket.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Samples in all.
    pub count: u64,
    /// Sum of all samples.
    pub sum: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl LatencyHistogram {
    /// Buckets of a histogram.
    pub const BUCKETS: usize = LATENCY_BUCKETS;

    /// The exclusive upper bound of bucket `i` (`Duration::MAX` for the last).
    pub fn bucket_upper_bound(i: usize) -> Duration {
        if i + 1 >= LATENCY_BUCKETS {
            return Duration::MAX;
        }
        Duration::from_micros(2u64 << i)
    }

    /// Mean of the samples, if any.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.count).ok().filter(|&n| n > 0)?;
        Some(self.sum / n)
    }

    /// An upper bound for quantile `q` (0.0 to 1.0): the upper bound of the bucket holding it,
    /// capped at the largest sample. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        // NOTE: rank in 1..=count; the float is a bounded fraction of a u64 count.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::bucket_upper_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Which bucket a latency falls into.
pub(crate) fn bucket_of(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let i = (u64::BITS - us.max(1).leading_zeros() - 1) as usize;
    i.min(LATENCY_BUCKETS - 1)
}
