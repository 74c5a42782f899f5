//! `ClusterClient`'s pipeline against nodes served over HTTP in this process: many callers'
//! writes travel together (`POST /writes`), yet each gets its own outcome, and the client finds
//! the leader behind a node that is not it.
//!
//! Scenario: one node initialised as a cluster of itself and served on loopback, and a second
//! node that belongs to no cluster (it knows no leader: it answers 421 without an address).

use std::collections::BTreeMap;
use std::time::Duration;

use sessiondb_cluster::network::HttpNetwork;
use sessiondb_cluster::{ClusterClient, Consistency, Expiry, Node, NodeConfig};

/// A node served on 127.0.0.1; with `init`, the leader of a cluster of itself.
async fn served(id: u64, dir: &std::path::Path, init: bool) -> (Node, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let node = Node::start(id, dir, &NodeConfig::default(), HttpNetwork::new())
        .await
        .expect("the node starts");
    tokio::spawn(sessiondb_cluster::http::serve(
        node.clone(),
        listener,
        std::future::pending(),
    ));
    if init {
        node.init(BTreeMap::from([(id, addr.clone())])).await.expect("init");
        node.wait_for_leader(Duration::from_secs(10)).await.expect("it leads");
    }
    (node, addr)
}

/// 200 callers at once on one client, its first address a node outside the cluster: each put
/// is acknowledged and readable, and of 40 compare-and-swaps expecting one key absent exactly
/// one applies while the others see its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_each_get_their_own_outcome() {
    let dirs = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (_leader, leader_addr) = served(1, dirs.0.path(), true).await;
    let (_stray, stray_addr) = served(2, dirs.1.path(), false).await;
    let client = ClusterClient::new([stray_addr, leader_addr]).expect("a client");
    let puts: Vec<_> = (0..160)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .put(&format!("k{i}"), format!("v{i}").into_bytes(), Expiry::Never)
                    .await
            })
        })
        .collect();
    let cas: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .compare_and_swap("only-one", None, format!("c{i}").into_bytes(), Expiry::Never)
                    .await
            })
        })
        .collect();
    for (i, p) in puts.into_iter().enumerate() {
        let r = p.await.expect("a caller").unwrap_or_else(|e| panic!("put k{i}: {e}"));
        assert!(r.applied && r.version.is_some(), "put k{i}: {r:?}");
    }
    let mut winners = Vec::new();
    let mut versions_seen = Vec::new();
    for (i, c) in cas.into_iter().enumerate() {
        let r = c.await.expect("a caller").unwrap_or_else(|e| panic!("cas {i}: {e}"));
        if r.applied {
            winners.push(i);
        }
        versions_seen.push(r.version.expect("the key has a version after any of them"));
    }
    assert_eq!(
        winners.len(),
        1,
        "compare-and-swaps on 'absent' that applied: {winners:?}"
    );
    assert!(versions_seen.windows(2).all(|w| w[0] == w[1]), "{versions_seen:?}");
    for i in 0..160 {
        let got = client
            .get(&format!("k{i}"), Consistency::Linearizable)
            .await
            .expect("a read");
        assert_eq!(got.map(|s| s.value), Some(format!("v{i}").into_bytes()), "k{i}");
    }
    let got = client.get("only-one", Consistency::Linearizable).await.expect("a read");
    assert_eq!(
        got.map(|s| (s.version, s.value)),
        Some((versions_seen[0], format!("c{}", winners[0]).into_bytes()))
    );
}

/// Without a tokio runtime's pipeline (a client whose runtime ended), writes still go, one
/// request each: a client made and first used on one runtime works on the next.
#[test]
fn a_client_outlives_the_runtime_of_its_first_write() {
    let dir = tempfile::tempdir().expect("dir");
    let server = tokio::runtime::Runtime::new().expect("a runtime");
    let (_node, addr) = server.block_on(served(1, dir.path(), true));
    let client = ClusterClient::new([addr]).expect("a client");
    let first = tokio::runtime::Runtime::new().expect("a runtime");
    first
        .block_on(client.put("a", b"1".to_vec(), Expiry::Never))
        .expect("a write on the first runtime");
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("a runtime");
    second
        .block_on(client.put("b", b"2".to_vec(), Expiry::Never))
        .expect("a write on the next runtime");
    let got = second
        .block_on(client.get("a", Consistency::Linearizable))
        .expect("a read");
    assert_eq!(got.map(|s| s.value), Some(b"1".to_vec()));
}
