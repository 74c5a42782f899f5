//! The cargo feature `metrics`: sessiondb's measurements reach the `metrics` facade.
//!
//! Scenario: a store with the feature on, written in `SyncMode::Always`, checkpointed, reopened.
//! Method: a recorder of our own, installed globally, keeps the last value of every gauge and
//! counter and every histogram sample by name. Run with
//! `cargo test --features metrics --test metrics_export`.
//! Invariant: each fsync, commit group, checkpoint and recovery is recorded as it happens, and
//! `Stats::export_metrics` publishes the gauges and counters with the values `stats()` reports.

#![cfg(feature = "metrics")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use sessiondb::{Db, SyncMode};
use support::small_options;

#[derive(Default)]
struct Value(AtomicU64);

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Value {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

#[derive(Default)]
struct Capture {
    counters: Mutex<BTreeMap<String, Arc<Value>>>,
    gauges: Mutex<BTreeMap<String, Arc<Value>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
}

impl Recorder for &'static Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let v = self
            .counters
            .lock()
            .unwrap()
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Counter::from_arc(v)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let v = self
            .gauges
            .lock()
            .unwrap()
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Gauge::from_arc(v)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let v = self
            .histograms
            .lock()
            .unwrap()
            .entry(key.name().to_string())
            .or_default()
            .clone();
        Histogram::from_arc(v)
    }
}

impl Capture {
    fn samples(&self, name: &str) -> Vec<f64> {
        self.histograms
            .lock()
            .unwrap()
            .get(name)
            .map(|s| s.0.lock().unwrap().clone())
            .unwrap_or_default()
    }

    fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .map(|v| v.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap()
            .get(name)
            .map(|v| f64::from_bits(v.0.load(Ordering::Relaxed)))
    }
}

#[test]
fn measurements_reach_the_metrics_facade() {
    let capture: &'static Capture = Box::leak(Box::default());
    metrics::set_global_recorder(capture).expect("the only recorder in this test binary");
    let dir = tempfile::tempdir().unwrap();
    let opts = small_options().sync_mode(SyncMode::Always).preallocate_ahead(false);
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..20u32 {
        db.put(format!("k{i}"), "v").unwrap();
    }
    db.checkpoint().unwrap();
    let s = db.stats();
    s.export_metrics();
    db.close().unwrap();

    assert_eq!(
        capture.samples("sessiondb_fsync_seconds").len() as u64,
        s.fsync_latency.count
    );
    assert!(s.fsync_latency.count >= 20);
    let groups = capture.samples("sessiondb_commit_group_size");
    assert_eq!(groups.len() as u64, s.commit_groups);
    assert_eq!(groups.iter().sum::<f64>(), s.records as f64);
    assert_eq!(capture.samples("sessiondb_checkpoint_seconds").len(), 1);
    assert_eq!(
        capture.samples("sessiondb_checkpoint_bytes"),
        vec![s.checkpoint_bytes_last as f64]
    );
    assert_eq!(
        capture.samples("sessiondb_recovery_seconds").len(),
        1,
        "the open's recovery"
    );
    assert_eq!(capture.gauge("sessiondb_keys"), Some(20.0));
    assert_eq!(capture.gauge("sessiondb_last_seq"), Some(20.0));
    assert_eq!(capture.counter("sessiondb_fsyncs_total"), Some(s.fsyncs));
    assert_eq!(capture.counter("sessiondb_records_total"), Some(20));
    assert_eq!(capture.counter("sessiondb_checkpoints_total"), Some(1));

    let db = Db::open_with(dir.path(), opts).unwrap();
    db.close().unwrap();
    assert_eq!(capture.samples("sessiondb_recovery_seconds").len(), 2);
}
