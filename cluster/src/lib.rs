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
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    /// Removes `key`.
    Delete { key: Vec<u8> },
    /// Moves the deadline of `key` to `expires_at_ms` if it is live at `now_ms` (the leader's
    /// time when it took the request).
    Touch {
        key: Vec<u8>,
        now_ms: u64,
        expires_at_ms: u64,
    },
    /// Sets `key` to `value` if its version (the log index of its last write; `None`: absent
    /// or expired at `now_ms`, the leader's time) is `expected`.
    CompareAndSwap {
        key: Vec<u8>,
        now_ms: u64,
        expected: Option<u64>,
        value: Vec<u8>,
        expires_at_ms: u64,
    },
}

/// What applying a [`Request`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request changed the store: always for a put or a delete; for a touch, whether
    /// the key was live; for a compare-and-swap, whether the versions matched.
    pub applied: bool,
    /// The key's version after the request (the log index of its last write), if it is live.
    pub version: Option<u64>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, key) = match self {
            Request::Put { key, .. } => ("put", key),
            Request::Delete { key } => ("delete", key),
            Request::Touch { key, .. } => ("touch", key),
            Request::CompareAndSwap { key, .. } => ("compare-and-swap", key),
        };
        write!(f, "{what} {}", String::from_utf8_lossy(key))
    }
}
