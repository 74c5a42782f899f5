//! The cargo feature `metrics` of the cluster: a running node publishes its raft figures as
//! gauges of the `metrics` facade (`Status::export_metrics`).
//!
//! Scenario: a one-node cluster (initialised with itself as its only voter) takes writes.
//! Method: a recorder of our own keeps the last value of every gauge by name and labels.
//! Invariant: the gauges say what `Node::status` says: the leader, the term, the log and
//! applied indexes, the voters.

#![cfg(feature = "metrics")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use sessiondb_cluster::network::HttpNetwork;
use sessiondb_cluster::{Expiry, Node, NodeConfig, Write};

type Gauges = Arc<Mutex<BTreeMap<String, f64>>>;

/// One gauge: it writes its value into the map under "name{label=value,...}".
struct Slot {
    name: String,
    gauges: Gauges,
}

impl GaugeFn for Slot {
    fn increment(&self, value: f64) {
        *self.gauges.lock().unwrap().entry(self.name.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.gauges.lock().unwrap().entry(self.name.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.gauges.lock().unwrap().insert(self.name.clone(), value);
    }
}

struct Gather(Gauges);

impl Recorder for Gather {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        Gauge::from_arc(Arc::new(Slot {
            name: format!("{}{{{}}}", key.name(), labels.join(",")),
            gauges: self.0.clone(),
        }))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_its_raft_figures_as_gauges() {
    let gauges = Gauges::default();
    metrics::set_global_recorder(Gather(gauges.clone())).expect("the only recorder of this test binary");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = Node::start(7, dir.path(), &NodeConfig::default(), HttpNetwork::new())
        .await
        .expect("the node starts");
    node.init(BTreeMap::from([(7, "127.0.0.1:1".to_string())]))
        .await
        .expect("a one-node cluster");
    node.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("it elects itself");
    for i in 0..5 {
        let put = Write::Put {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            expiry: Expiry::Never,
        };
        node.write(put).await.expect("a write on the leader");
    }
    // The gauges follow openraft's metrics; wait until the last write's index shows.
    let status = node.status();
    let applied = status.last_applied_index.expect("writes were applied");
    let get = |name: &str| gauges.lock().unwrap().get(&format!("{name}{{node=7}}")).copied();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get("sessiondb_cluster_applied_index") != Some(applied as f64) {
        assert!(
            std::time::Instant::now() < deadline,
            "the applied index gauge never reached {applied}: {:?}",
            gauges.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get("sessiondb_cluster_is_leader"), Some(1.0));
    assert_eq!(get("sessiondb_cluster_leader"), Some(7.0));
    assert_eq!(get("sessiondb_cluster_term"), Some(status.term as f64));
    assert_eq!(get("sessiondb_cluster_voters"), Some(1.0));
    assert_eq!(
        get("sessiondb_cluster_last_log_index"),
        status.last_log_index.map(|i| i as f64)
    );
    assert_eq!(
        get("sessiondb_cluster_snapshot_index"),
        Some(-1.0),
        "no snapshot was taken"
    );
    let names: BTreeSet<String> = gauges.lock().unwrap().keys().cloned().collect();
    assert!(names.iter().all(|n| n.starts_with("sessiondb_cluster_")), "{names:?}");
    node.shutdown().await.expect("the node stops");
}
