//! A node of the replicated store: openraft's `Raft` over the log store and the state machine in
//! one directory, and what clients and operators ask of it. The transport between nodes is a
//! parameter ([`openraft::RaftNetworkFactory`]): HTTP in `sessiondb serve`
//! ([`crate::network::HttpNetwork`]), an in-memory one with faults in the tests.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, Config, Raft, RaftNetworkFactory, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::state_machine::Stored;
use crate::{LogStore, NodeId, Request, Response, StateMachine, TypeConfig};

/// The most bytes of a write's key and value together: its log entry then fits in
/// [`crate::log_store::ENTRY_BYTES_MAX`] with room to spare, and its value in the state.
pub const WRITE_BYTES_MAX: usize = 1 << 20;

/// The most entries one page of a scan returns.
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// The times of a node's raft: how often a leader sends heartbeats and how long a follower
/// waits for one before it calls an election, and when a snapshot is taken.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Ms between a leader's heartbeats.
    pub heartbeat_ms: u64,
    /// A follower calls an election after a random time in `[election_min_ms, election_max_ms)`
    /// without hearing from a leader.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A snapshot is built after this many entries were applied since the last one, and the log
    /// before it is purged, keeping [`NodeConfig::keep_logs`] entries.
    pub snapshot_every: u64,
    pub keep_logs: u64,
}

impl Default for NodeConfig {
    /// Loopback and LAN times: heartbeats every 50 ms, elections after 300-600 ms of silence;
    /// a snapshot every 20,000 entries, keeping 1,000 for followers that are a little behind.
    fn default() -> NodeConfig {
        NodeConfig {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 20_000,
            keep_logs: 1_000,
        }
    }
}

impl NodeConfig {
    fn raft_config(&self) -> Result<Config, ClusterError> {
        let config = Config {
            cluster_name: "sessiondb".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // A snapshot goes in chunks of 1 MiB.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 2_000,
            // An entry is a batch of writes of at most WRITE_BYTES_MAX (BATCH_BYTES_MAX): 32 of
            // them stay well under the RPC size limit (codec::BYTES_MAX).
            max_payload_entries: 32,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::BadRequest(format!("raft configuration: {e}")))
    }
}

/// What went wrong with a request to a node. Each says whether the request may have taken effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClusterError {
    /// This node is not the leader; `leader` is the one it knows of (id and address), if any.
    /// The request did not take effect.
    #[error("node {node} is not the leader (leader: {})", leader_text(.leader))]
    NotLeader {
        node: NodeId,
        leader: Option<(NodeId, String)>,
    },
    /// The leader could not reach a quorum to confirm it still leads; a read was not served.
    #[error("no quorum confirmed the leader: {0}")]
    NoQuorum(String),
    /// The request is malformed or too large; it did not take effect.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A membership change was refused (another in progress, an unknown learner, ...).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The node stopped (storage error, shut down). A write may or may not have taken effect.
    #[error("node stopped: {0}")]
    Stopped(String),
    /// No node answered in time. A write may or may not have taken effect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A node's reply could not be understood.
    #[error("protocol: {0}")]
    Protocol(String),
}

fn leader_text(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("{id} at {addr}"),
        None => "unknown".to_string(),
    }
}

impl ClusterError {
    /// Whether a write that failed with this error certainly did not take effect.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            ClusterError::NotLeader { .. } | ClusterError::BadRequest(_) | ClusterError::Membership(_)
        )
    }
}

/// When a written value expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    Never,
    /// This many ms after the leader takes the request.
    TtlMs(u64),
    /// At this time (ms since the Unix epoch).
    AtMs(u64),
}

/// A client's write, before the leader stamps its times on it ([`Request`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Put {
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes")]
        value: Vec<u8>,
        expiry: Expiry,
    },
    Delete {
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
    },
    /// Moves the deadline of a live key.
    Touch {
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
        expiry: Expiry,
    },
    /// Writes if the key's version is `expected` (`None`: absent or expired).
    CompareAndSwap {
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
        expected: Option<u64>,
        #[serde(with = "crate::bytes")]
        value: Vec<u8>,
        expiry: Expiry,
    },
}

impl Write {
    fn key(&self) -> &[u8] {
        match self {
            Write::Put { key, .. }
            | Write::Delete { key }
            | Write::Touch { key, .. }
            | Write::CompareAndSwap { key, .. } => key,
        }
    }

    /// The request the log holds, with times taken from `now_ms` (the leader's clock).
    fn stamp(self, now_ms: u64) -> Request {
        let at = |e: Expiry| match e {
            Expiry::Never => 0,
            Expiry::TtlMs(ttl) => now_ms.saturating_add(ttl.max(1)),
            Expiry::AtMs(at) => at,
        };
        match self {
            Write::Put { key, value, expiry } => Request::Put {
                key,
                value,
                expires_at_ms: at(expiry),
            },
            Write::Delete { key } => Request::Delete { key },
            Write::Touch { key, expiry } => Request::Touch {
                key,
                now_ms,
                expires_at_ms: at(expiry),
            },
            Write::CompareAndSwap {
                key,
                expected,
                value,
                expiry,
            } => Request::CompareAndSwap {
                key,
                now_ms,
                expected,
                value,
                expires_at_ms: at(expiry),
            },
        }
    }
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Consistency {
    /// By the leader, after a quorum confirmed it still leads and its state machine applied
    /// everything committed when the read came (openraft's `ensure_linearizable`).
    #[default]
    Linearizable,
    /// From this node's state machine as it is: may miss recent writes (a follower's lag, or a
    /// deposed leader's). Opt-in.
    Stale,
}

/// A node's view of the cluster, as `GET /cluster/metrics` and `sessiondb cluster status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// The voters, and every node (voters and learners) with its address.
    pub voters: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, String>,
    /// On the leader: how many entries each follower is behind the leader's last log index.
    pub replication_lag: BTreeMap<NodeId, u64>,
    /// Ms since a quorum last acknowledged the leader (the leader only).
    pub millis_since_quorum_ack: Option<u64>,
}

#[cfg(feature = "metrics")]
impl Status {
    /// Publishes this status as gauges of the [`metrics`](https://docs.rs/metrics) facade, each
    /// labelled `node` (the node's id); a running node does it at every change of its raft
    /// metrics (cargo feature `metrics`):
    ///
    /// | gauge | what |
    /// |---|---|
    /// | `sessiondb_cluster_is_leader` | 1 on the leader, else 0 |
    /// | `sessiondb_cluster_term` | the current term |
    /// | `sessiondb_cluster_leader` | the leader's id (-1: none known) |
    /// | `sessiondb_cluster_last_log_index` | the last entry in the log |
    /// | `sessiondb_cluster_applied_index` | the last entry applied to the state |
    /// | `sessiondb_cluster_snapshot_index` | the last entry in the snapshot |
    /// | `sessiondb_cluster_purged_index` | the last entry purged from the log |
    /// | `sessiondb_cluster_voters` | the number of voters |
    /// | `sessiondb_cluster_replication_lag` | on the leader, per follower (label `follower`): entries behind |
    pub fn export_metrics(&self) {
        use metrics::gauge;
        let node = self.id.to_string();
        let index = |v: Option<u64>| v.map_or(-1.0, |v| v as f64);
        gauge!("sessiondb_cluster_is_leader", "node" => node.clone()).set(if self.state == "Leader" {
            1.0
        } else {
            0.0
        });
        gauge!("sessiondb_cluster_term", "node" => node.clone()).set(self.term as f64);
        gauge!("sessiondb_cluster_leader", "node" => node.clone()).set(index(self.leader));
        gauge!("sessiondb_cluster_last_log_index", "node" => node.clone()).set(index(self.last_log_index));
        gauge!("sessiondb_cluster_applied_index", "node" => node.clone()).set(index(self.last_applied_index));
        gauge!("sessiondb_cluster_snapshot_index", "node" => node.clone()).set(index(self.snapshot_index));
        gauge!("sessiondb_cluster_purged_index", "node" => node.clone()).set(index(self.purged_index));
        gauge!("sessiondb_cluster_voters", "node" => node.clone()).set(self.voters.len() as f64);
        for (follower, lag) in &self.replication_lag {
            gauge!("sessiondb_cluster_replication_lag", "node" => node.clone(), "follower" => follower.to_string())
                .set(*lag as f64);
        }
    }
}

/// A running node.
#[derive(Clone)]
pub struct Node {
    id: NodeId,
    dir: PathBuf,
    raft: Raft<TypeConfig>,
    state: StateMachine,
    /// The batcher's queue ([`Node::write`]).
    writes: mpsc::UnboundedSender<Queued>,
}

/// `Ok` if node `id` believes it leads; else who it believes leads. A node that knows it is
/// not the leader must not stamp a request with its clock (openraft would refuse it anyway).
fn leading(id: NodeId, raft: &Raft<TypeConfig>) -> Result<(), ClusterError> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    // Both: a leader removed from the membership steps down to learner but keeps its vote, so
    // it still names itself as the leader; it must neither take writes (openraft then holds
    // them unanswered) nor send clients back to itself.
    if m.state == ServerState::Leader && m.current_leader == Some(id) {
        return Ok(());
    }
    let leader = m.current_leader.filter(|l| *l != id).and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| (l, n.addr.clone()))
    });
    Err(ClusterError::NotLeader { node: id, leader })
}

/// A [`ForwardToLeader`] as [`ClusterError::NotLeader`].
fn not_leader(id: NodeId, f: ForwardToLeader<NodeId, BasicNode>) -> ClusterError {
    ClusterError::NotLeader {
        node: id,
        leader: match (f.leader_id, f.leader_node) {
            (Some(id), Some(n)) => Some((id, n.addr)),
            _ => None,
        },
    }
}

/// A failed client write (or membership change) of node `id` as a [`ClusterError`].
fn write_error(id: NodeId, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(id, f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => membership_error(m),
        RaftError::Fatal(f) => ClusterError::Stopped(f.to_string()),
    }
}

/// Gathers writes into entries ([`Node::write`]).
#[derive(Clone)]
struct Batcher {
    id: NodeId,
    raft: Raft<TypeConfig>,
}

impl Batcher {
    /// Takes queued writes, as many as arrived while earlier entries were in flight, and
    /// submits each group as one entry. Ends when every handle of the node is gone.
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let mut carried: Option<Queued> = None;
        loop {
            let first = match carried.take() {
                Some(q) => q,
                None => match queue.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            // Waiting for a slot is when the next group gathers.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut keys = HashSet::new();
            keys.insert(first.write.key().to_vec());
            let mut bytes = write_bytes(&first.write);
            let mut group = vec![first];
            while group.len() < BATCH_REQUESTS_MAX {
                let Ok(q) = queue.try_recv() else {
                    break;
                };
                let size = write_bytes(&q.write);
                // No two writes of one key in an entry: each written value's version (the
                // entry's index) is then its own.
                if bytes + size > BATCH_BYTES_MAX || !keys.insert(q.write.key().to_vec()) {
                    carried = Some(q);
                    break;
                }
                bytes += size;
                group.push(q);
            }
            let batcher = self.clone();
            tokio::spawn(async move {
                batcher.submit(group).await;
                drop(slot);
            });
        }
    }

    /// Submits `group` as one entry (a plain request if it is one write) and tells each
    /// writer its outcome.
    async fn submit(&self, group: Vec<Queued>) {
        if let Err(e) = leading(self.id, &self.raft) {
            for q in group {
                let _ = q.reply.send(Err(e.clone()));
            }
            return;
        }
        let now = now_ms();
        let (writes, replies): (Vec<Write>, Vec<_>) = group.into_iter().map(|q| (q.write, q.reply)).unzip();
        let mut reqs: Vec<Request> = writes.into_iter().map(|w| w.stamp(now)).collect();
        let req = if reqs.len() == 1 {
            reqs.remove(0)
        } else {
            Request::Batch(reqs)
        };
        let batched = matches!(req, Request::Batch(_));
        match self.raft.client_write(req).await {
            Ok(r) if batched && r.data.batch.len() == replies.len() => {
                for (reply, each) in replies.into_iter().zip(r.data.batch) {
                    let _ = reply.send(Ok(each));
                }
            }
            Ok(r) if !batched => {
                for reply in replies {
                    let _ = reply.send(Ok(r.data.clone()));
                }
            }
            Ok(r) => {
                let e = ClusterError::Stopped(format!(
                    "an entry of {} writes was applied with {} responses",
                    replies.len(),
                    r.data.batch.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                let e = write_error(self.id, e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A client's write waiting for the batcher, and where its outcome goes.
struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Response, ClusterError>>,
}

/// Entries the batcher has submitted and not yet seen committed, at most. While they are in
/// flight, writes that arrive wait and go out together in the next entry: openraft 0.9 makes
/// each entry durable on the leader before it appends the next, so one write per entry would
/// cost an fsync each.
const BATCHES_IN_FLIGHT: usize = 2;
/// Requests in one entry, at most, and their keys' and values' bytes (the entry, encoded, stays
/// under the log's limit).
const BATCH_REQUESTS_MAX: usize = 1024;
const BATCH_BYTES_MAX: usize = WRITE_BYTES_MAX;

/// The bytes of a write's key and value.
fn write_bytes(w: &Write) -> usize {
    w.key().len()
        + match w {
            Write::Put { value, .. } | Write::CompareAndSwap { value, .. } => value.len(),
            _ => 0,
        }
}

/// Ms since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Opens the node's stores in `dir` (`log/`, `STATE`, `state-<n>/`, `snapshots/`) and starts
    /// its raft. A node that was never part of a cluster waits to be initialised or added.
    pub async fn start<N>(
        id: NodeId,
        dir: impl AsRef<Path>,
        config: &NodeConfig,
        network: N,
    ) -> Result<Node, ClusterError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let dir = dir.as_ref().to_path_buf();
        let log = LogStore::open(dir.join("log")).map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let state = StateMachine::open(&dir).map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config.raft_config()?), network, log, state.clone())
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let (writes, queue) = mpsc::unbounded_channel();
        let node = Node {
            id,
            dir,
            raft,
            state,
            writes,
        };
        let batcher = Batcher {
            id,
            raft: node.raft.clone(),
        };
        // It holds no handle of the node: it ends when the last one is dropped.
        tokio::spawn(batcher.run(queue));
        #[cfg(feature = "metrics")]
        node.spawn_metrics_export();
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// openraft's handle, for the raft RPCs a transport delivers.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Submits `write` to the log if this node leads, and waits until it is committed and
    /// applied here. Times in it are taken from this (the leader's) clock when its entry is
    /// made. Writes that arrive together share an entry ([`Request::Batch`]).
    pub async fn write(&self, write: Write) -> Result<Response, ClusterError> {
        let len = write_bytes(&write);
        if write.key().is_empty() || len > WRITE_BYTES_MAX {
            return Err(ClusterError::BadRequest(format!(
                "a key must be 1 byte or more and a key and its value at most {WRITE_BYTES_MAX} bytes; got {len}"
            )));
        }
        leading(self.id, &self.raft)?;
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(Queued { write, reply })
            .map_err(|_| ClusterError::Stopped("the node's batcher stopped".to_string()))?;
        outcome
            .await
            .map_err(|_| ClusterError::Stopped("the node stopped before the write's outcome was known".to_string()))?
    }

    /// `Ok` if this node believes it leads; else [`ClusterError::NotLeader`] with the leader it
    /// knows of.
    pub fn check_leader(&self) -> Result<(), ClusterError> {
        leading(self.id, &self.raft)
    }

    /// The value of `key`, its version and deadline.
    pub async fn read(&self, key: &[u8], consistency: Consistency) -> Result<Option<Stored>, ClusterError> {
        self.confirm(consistency).await?;
        let now = now_ms();
        let got = self.state.get(key).map_err(|e| ClusterError::Stopped(e.to_string()))?;
        // The store expires values on this node's clock; a value read at the very moment of
        // its deadline is not returned either.
        Ok(got.filter(|s| s.expires_at_ms == 0 || s.expires_at_ms > now))
    }

    /// For a linearizable read: waits until a quorum confirmed this node leads and its state
    /// machine applied everything committed when the read came.
    async fn confirm(&self, consistency: Consistency) -> Result<(), ClusterError> {
        if consistency == Consistency::Linearizable {
            match self.raft.ensure_linearizable().await {
                Ok(_) => {}
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => return Err(not_leader(self.id, f)),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                    return Err(ClusterError::NoQuorum(q.to_string()))
                }
                Err(RaftError::Fatal(f)) => return Err(ClusterError::Stopped(f.to_string())),
            }
        }
        Ok(())
    }

    /// One page of the live keys that start with `prefix`, after `after`, at most `limit`
    /// (at most [`SCAN_LIMIT_MAX`]), in key order.
    pub async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(Vec<u8>, Stored)>, ClusterError> {
        self.confirm(consistency).await?;
        let now = now_ms();
        let page = self
            .state
            .scan(prefix, after, limit.min(SCAN_LIMIT_MAX))
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        Ok(page
            .into_iter()
            .filter(|(_, s)| s.expires_at_ms == 0 || s.expires_at_ms > now)
            .collect())
    }

    /// Makes this node the first of a new cluster whose voters are `members` (ids and
    /// addresses; this node among them). Refused on a node that already has a log.
    pub async fn init(&self, members: BTreeMap<NodeId, String>) -> Result<(), ClusterError> {
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                Err(ClusterError::Membership(format!("already initialised: {e}")))
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => Err(ClusterError::BadRequest(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ClusterError::Stopped(f.to_string())),
        }
    }

    /// Adds node `id` at `addr` as a learner; with `blocking`, returns once it caught up.
    pub async fn add_learner(&self, id: NodeId, addr: String, blocking: bool) -> Result<(), ClusterError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), blocking)
            .await
            .map(|_| ())
            .map_err(|e| write_error(self.id, e))
    }

    /// Makes `voters` the voters (each must be a member already, as a learner at least). With
    /// `retain`, voters removed stay as learners.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>, retain: bool) -> Result<(), ClusterError> {
        self.raft
            .change_membership(voters, retain)
            .await
            .map(|_| ())
            .map_err(|e| write_error(self.id, e))
    }

    /// Where this node stands.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let replication_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| (*id, last.saturating_sub(matched.map(|l| l.index).unwrap_or(0))))
                    .collect()
            })
            .unwrap_or_default();
        Status {
            id: self.id,
            state: match m.state {
                ServerState::Leader => "Leader",
                ServerState::Follower => "Follower",
                ServerState::Candidate => "Candidate",
                ServerState::Learner => "Learner",
                ServerState::Shutdown => "Shutdown",
            }
            .to_string(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            replication_lag,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// Publishes [`Status::export_metrics`] each time openraft's metrics change, until the raft
    /// stops.
    #[cfg(feature = "metrics")]
    fn spawn_metrics_export(&self) {
        let node = self.clone();
        let mut rx = self.raft.metrics();
        tokio::spawn(async move {
            loop {
                node.status().export_metrics();
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Waits up to `timeout` for this node to know a leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow().current_leader {
                    return Ok(l);
                }
                if rx.changed().await.is_err() {
                    return Err(ClusterError::Stopped("raft stopped".to_string()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClusterError::Unavailable(format!("no leader known after {timeout:?}")))?
    }

    /// Takes a snapshot now (and purges the log it covers, keeping `keep_logs` entries).
    pub async fn trigger_snapshot(&self) -> Result<(), ClusterError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }

    /// Stops the raft; the stores close when the last handle goes.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }
}

fn membership_error(e: ChangeMembershipError<NodeId>) -> ClusterError {
    ClusterError::Membership(e.to_string())
}
