//! Measurements behind [`crate::Stats`] that are more than a counter: fsync latency, checkpoint
//! durations and bytes. With the cargo feature `metrics`, each
//! measurement is also recorded into the [`metrics`](https://docs.rs/metrics) crate's facade as it
//! happens, and `Stats::export_metrics` publishes the gauges and counters, so an application's
//! recorder (Prometheus, StatsD, ...) exports them.
//!
//! | name (feature `metrics`)          | kind      | what                                          |
//! |-----------------------------------|-----------|-----------------------------------------------|
//! | `sessiondb_fsync_seconds`         | histogram | each fsync of the log (group, seal, `sync()`) |
//! | `sessiondb_commit_group_size`     | histogram | records per commit group                      |
//! | `sessiondb_checkpoint_seconds`    | histogram | each checkpoint, start to covered log deleted |
//! | `sessiondb_checkpoint_bytes`      | histogram | snapshot bytes each checkpoint wrote          |
//! | `sessiondb_recovery_seconds`      | histogram | each open's recovery                          |
//!
//! and from `Stats::export_metrics` (feature `metrics`): gauges `sessiondb_keys`, `sessiondb_live_bytes`,
//! `sessiondb_dead_bytes`, `sessiondb_segments`, `sessiondb_snapshots`, `sessiondb_last_seq`,
//! `sessiondb_log_bytes_since_checkpoint`, `sessiondb_writers_waiting`; counters
//! `sessiondb_fsyncs_total`, `sessiondb_commit_groups_total`, `sessiondb_records_total`,
//! `sessiondb_checkpoints_total`, `sessiondb_expired_swept_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::{bucket_of, LatencyHistogram, Stats, LATENCY_BUCKETS};

/// A [`LatencyHistogram`] that threads add to.
#[derive(Default)]
pub(crate) struct LatencyRecorder {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LatencyRecorder {
    pub(crate) fn record(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos(d), Ordering::Relaxed);
        self.max_ns.fetch_max(nanos(d), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        for (b, a) in h.buckets.iter_mut().zip(&self.buckets) {
            *b = a.load(Ordering::Relaxed);
        }
        h.count = self.count.load(Ordering::Relaxed);
        h.sum = Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed));
        h.max = Duration::from_nanos(self.max_ns.load(Ordering::Relaxed));
        h
    }
}

/// The engine's measurements beyond plain counters.
#[derive(Default)]
pub(crate) struct Telemetry {
    checkpoint_ns_total: AtomicU64,
    checkpoint_ns_last: AtomicU64,
    checkpoint_bytes_total: AtomicU64,
    checkpoint_bytes_last: AtomicU64,
}

impl Telemetry {
    /// A commit group of `records` records was written.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn commit_group(&self, records: usize) {
        #[cfg(feature = "metrics")]
        ::metrics::histogram!("sessiondb_commit_group_size").record(records as f64);
    }

    /// A checkpoint took `d` and wrote a snapshot of `bytes` bytes.
    pub(crate) fn checkpoint(&self, d: Duration, bytes: u64) {
        self.checkpoint_ns_total.fetch_add(nanos(d), Ordering::Relaxed);
        self.checkpoint_ns_last.store(nanos(d), Ordering::Relaxed);
        self.checkpoint_bytes_total.fetch_add(bytes, Ordering::Relaxed);
        self.checkpoint_bytes_last.store(bytes, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            ::metrics::histogram!("sessiondb_checkpoint_seconds").record(d.as_secs_f64());
            ::metrics::histogram!("sessiondb_checkpoint_bytes").record(bytes as f64);
        }
    }

    /// Fills the fields of `stats` this measures.
    pub(crate) fn fill(&self, stats: &mut Stats) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.checkpoint_duration_total = Duration::from_nanos(load(&self.checkpoint_ns_total));
        stats.checkpoint_duration_last = Duration::from_nanos(load(&self.checkpoint_ns_last));
        stats.checkpoint_bytes_total = load(&self.checkpoint_bytes_total);
        stats.checkpoint_bytes_last = load(&self.checkpoint_bytes_last);
    }
}

/// An fsync of the log took `d` (its count and latency histogram are kept by the log itself).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn fsync(d: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("sessiondb_fsync_seconds").record(d.as_secs_f64());
}

/// An open's recovery took `d`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn recovered(d: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("sessiondb_recovery_seconds").record(d.as_secs_f64());
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Publishes these statistics through the `metrics` facade: the gauges and counters listed
    /// in [`crate::telemetry`]. Call it as often as the application's exporter scrapes (it takes
    /// no lock of the store; get the `Stats` from [`crate::Db::stats`]).
    ///
    /// Only with the cargo feature `metrics`.
    pub fn export_metrics(&self) {
        use ::metrics::{counter, gauge};
        gauge!("sessiondb_keys").set(self.keys as f64);
        gauge!("sessiondb_live_bytes").set(self.live_bytes as f64);
        gauge!("sessiondb_dead_bytes").set(self.dead_bytes as f64);
        gauge!("sessiondb_segments").set(self.segments as f64);
        gauge!("sessiondb_snapshots").set(self.snapshots as f64);
        gauge!("sessiondb_last_seq").set(self.last_seq as f64);
        gauge!("sessiondb_log_bytes_since_checkpoint").set(self.log_bytes_since_checkpoint as f64);
        gauge!("sessiondb_writers_waiting").set(self.writers_waiting as f64);
        counter!("sessiondb_fsyncs_total").absolute(self.fsyncs);
        counter!("sessiondb_commit_groups_total").absolute(self.commit_groups);
        counter!("sessiondb_records_total").absolute(self.records);
        counter!("sessiondb_checkpoints_total").absolute(self.checkpoints);
        counter!("sessiondb_expired_swept_total").absolute(self.expired_swept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_nanos(1999)), 0);
        assert_eq!(bucket_of(Duration::from_micros(2)), 1);
        assert_eq!(bucket_of(Duration::from_micros(3)), 1);
        assert_eq!(bucket_of(Duration::from_micros(4)), 2);
        assert_eq!(bucket_of(Duration::from_millis(1)), 9);
        assert_eq!(bucket_of(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        for i in 0..LATENCY_BUCKETS - 1 {
            let below = LatencyHistogram::bucket_upper_bound(i) - Duration::from_nanos(1);
            assert_eq!(bucket_of(below), i);
        }
    }

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let r = LatencyRecorder::default();
        for us in [10, 10, 10, 10, 10, 10, 10, 10, 10, 5000] {
            r.record(Duration::from_micros(us));
        }
        let h = r.snapshot();
        assert_eq!(h.count, 10);
        assert_eq!(h.max, Duration::from_millis(5));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(16)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(5)));
        assert_eq!(h.mean(), Some(Duration::from_micros(509)));
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }
}
