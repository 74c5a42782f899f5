//! sessiondb replicated with [openraft] (0.9): the raft log and the state machine each on a
//! sessiondb store (issue 18, docs/cluster.md).
//!
//! - [`LogStore`]: openraft's `RaftLogStorage` on a store in `DIR/log` (`SyncMode::Always`):
//!   entries, the vote, the committed log id and the last purged log id, each durable before
//!   openraft is told so.
//! - [`StateMachine`]: openraft's `RaftStateMachine` on a store in `DIR/state-<n>`: the
//!   replicated keys and values, the last applied log id and the membership, written together
//!   in one batch per `apply`. Snapshots are the engine's backups ([`sessiondb::Db::backup`]) in
//!   one file ([`snapshot_file`]), installed with [`sessiondb::restore`].
//!
//! Applying an entry is deterministic: deadlines are absolute times the leader chose, and a
//! compare-and-swap compares against the log index of the value's last write, decided at apply.

#![deny(clippy::unwrap_used, clippy::expect_used)]
// openraft's traits return its `StorageError` (over 200 bytes); the helpers here return what
// those methods return.
#![allow(clippy::result_large_err)]

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod client;
pub mod codec;
mod error;
pub mod http;
pub mod log_store;
pub mod network;
pub mod node;
#[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
pub mod session;
pub mod snapshot_file;
pub mod state_machine;

pub use client::ClusterClient;
pub use log_store::LogStore;
pub use node::{ClusterError, Consistency, Expiry, Node, NodeConfig, Status, Write};
pub use state_machine::{StateMachine, Stored};

/// A node's id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's openraft types: requests and responses of the replicated store, snapshots
    /// in files.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        // A file, not openraft's default in-memory cursor: a backup can be larger than memory.
        SnapshotData = tokio::fs::File,
);

/// A write to the replicated store, as the leader puts it in the log. Every time in it is
/// absolute (ms since the Unix epoch, 0: never), chosen by the leader, so every node applies
/// the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sets `key` to `value`, expiring at `expires_at_ms`.
    Put {
        #[serde(with = "bytes")]
        key: Vec<u8>,
        #[serde(with = "bytes")]
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    /// Removes `key`.
    Delete {
        #[serde(with = "bytes")]
        key: Vec<u8>,
    },
    /// Moves the deadline of `key` to `expires_at_ms` if it is live at `now_ms` (the leader's
    /// time when it took the request).
    Touch {
        #[serde(with = "bytes")]
        key: Vec<u8>,
        now_ms: u64,
        expires_at_ms: u64,
    },
    /// Sets `key` to `value` if its version (the log index of its last write; `None`: absent
    /// or expired at `now_ms`, the leader's time) is `expected`.
    CompareAndSwap {
        #[serde(with = "bytes")]
        key: Vec<u8>,
        now_ms: u64,
        expected: Option<u64>,
        #[serde(with = "bytes")]
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    /// Several requests of different clients in one log entry, applied in order, each as if
    /// alone; no two of them write the same key (so each written value's version, the entry's
    /// index, is its own). The leader batches requests that arrive while earlier ones are
    /// being committed: openraft 0.9 waits for each entry's fsync before it appends the next.
    Batch(Vec<Request>),
}

/// What applying a [`Request`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request changed the store: always for a put or a delete; for a touch, whether
    /// the key was live; for a compare-and-swap, whether the versions matched.
    pub applied: bool,
    /// The key's version after the request (the log index of its last write), if it is live.
    pub version: Option<u64>,
    /// For a [`Request::Batch`]: each request's response, in order. (Always written, even
    /// empty: bincode, which carries responses in `POST /writes`, cannot skip a field.)
    #[serde(default)]
    pub batch: Vec<Response>,
}

/// Keys and values as byte strings: bincode writes a length and the bytes, not one element at
/// a time (a quarter of a node's CPU went to decoding values element by element).
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// As JSON writes them: an array of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, key) = match self {
            Request::Put { key, .. } => ("put", key),
            Request::Delete { key } => ("delete", key),
            Request::Touch { key, .. } => ("touch", key),
            Request::CompareAndSwap { key, .. } => ("compare-and-swap", key),
            Request::Batch(reqs) => return write!(f, "batch of {}", reqs.len()),
        };
        write!(f, "{what} {}", String::from_utf8_lossy(key))
    }
}
