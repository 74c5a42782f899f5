//! A node's write path on a one-node cluster (in this process, no transport needed):
//! writes that arrive together share a log entry, yet each keeps a version of its own; the size
//! limit of a write; a node stopped and started again in the same directory.
//!
//! Scenario: `Node::start` on a temporary directory, initialised with itself as the only voter.
//! Invariant: every acknowledged write is applied with a version no other write of its key has,
//! and is there after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use sessiondb_cluster::network::HttpNetwork;
use sessiondb_cluster::node::WRITE_BYTES_MAX;
use sessiondb_cluster::{ClusterError, Consistency, Expiry, Node, NodeConfig, Write};

async fn one_node(dir: &Path, init: bool) -> Node {
    let node = Node::start(1, dir, &NodeConfig::default(), HttpNetwork::new())
        .await
        .expect("the node starts");
    if init {
        node.init(BTreeMap::from([(1, "127.0.0.1:1".to_string())]))
            .await
            .expect("a one-node cluster");
    }
    node.wait_for_leader(Duration::from_secs(10)).await.expect("it leads");
    node
}

fn put(key: &str, value: Vec<u8>) -> Write {
    Write::Put {
        key: key.as_bytes().to_vec(),
        value,
        expiry: Expiry::Never,
    }
}

/// 64 tasks write one key at once, many times, and each a key of its own: the batcher gathers
/// concurrent writes into one entry, but never two of one key, so every acknowledged write has its own version, and the
/// value read at the end is the one with the highest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_key_get_versions_of_their_own() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = one_node(dir.path(), true).await;
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20 {
                    let value = format!("{t}/{i}").into_bytes();
                    let r = node
                        .write(put("shared", value.clone()))
                        .await
                        .expect("a write on the leader");
                    assert!(r.applied);
                    got.push((r.version.expect("a put's version"), value));
                    // And a key of its own, which may share an entry with the others' writes.
                    node.write(put(&format!("own{t}"), b"x".to_vec()))
                        .await
                        .expect("a write");
                }
                got
            })
        })
        .collect();
    let mut versions = BTreeMap::new();
    for t in tasks {
        for (version, value) in t.await.expect("a writer") {
            if let Some(other) = versions.insert(version, value.clone()) {
                panic!(
                    "version {version} was given to two writes: {:?} and {:?}",
                    String::from_utf8_lossy(&other),
                    String::from_utf8_lossy(&value)
                );
            }
        }
    }
    assert_eq!(versions.len(), 64 * 20);
    let (last_version, last_value) = versions.last_key_value().expect("writes were made");
    let read = node
        .read(b"shared", Consistency::Linearizable)
        .await
        .expect("a read")
        .expect("the key is there");
    assert_eq!((read.version, &read.value), (*last_version, last_value));
    // Writes of different keys shared entries: fewer log entries than writes.
    let entries = node.status().last_log_index.expect("a log");
    assert!(entries < 2 * 64 * 20, "{entries} entries for {} writes", 2 * 64 * 20);
    node.shutdown().await.expect("the node stops");
}

/// A key and value of WRITE_BYTES_MAX bytes in all is written; one byte more is refused as a
/// bad request, and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_write_is_applied_and_a_larger_one_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = one_node(dir.path(), true).await;
    let key = "big";
    let value = vec![0xA5; WRITE_BYTES_MAX - key.len()];
    node.write(put(key, value.clone())).await.expect("the largest write");
    let too_big = node.write(put(key, vec![1; WRITE_BYTES_MAX - key.len() + 1])).await;
    assert!(matches!(too_big, Err(ClusterError::BadRequest(_))), "{too_big:?}");
    // Several large writes at once: the batcher keeps each entry under the log's limit.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.write(put(&format!("big{i}"), vec![i; WRITE_BYTES_MAX / 2])).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("a writer").expect("a large write");
    }
    let read = node
        .read(key.as_bytes(), Consistency::Linearizable)
        .await
        .expect("a read");
    assert_eq!(read.map(|s| s.value), Some(value));
    node.shutdown().await.expect("the node stops");
}

/// A node shut down and dropped releases its stores: a new node starts at once in the same
/// directory (no `Locked`), leads again, and holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_in_its_directory_keeps_its_writes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut written = BTreeSet::new();
    for round in 0..3 {
        let node = one_node(dir.path(), round == 0).await;
        for i in 0..50 {
            let key = format!("r{round}/{i}");
            node.write(put(&key, key.clone().into_bytes())).await.expect("a write");
            written.insert(key);
        }
        for key in &written {
            let got = node
                .read(key.as_bytes(), Consistency::Linearizable)
                .await
                .expect("a read");
            assert_eq!(
                got.map(|s| s.value),
                Some(key.clone().into_bytes()),
                "round {round}: {key}"
            );
        }
        node.shutdown().await.expect("the node stops");
    }
}
