//! The cluster through a faulty network (issue 18's fault test).
//!
//! Scenario: an in-process cluster of 3 nodes (5 in some rounds), each on its own directory,
//! whose raft RPCs go through a transport of this test ([`FaultyNetwork`]) to the target's
//! `Raft::append_entries`, `vote` and `install_snapshot`. It drops requests (the target never
//! sees them) and replies (the target handled the request, the sender gets an error), delays
//! messages by random times (so later ones overtake earlier ones), delivers some twice (the
//! copy up to 300 ms later), and partitions the nodes: the leader cut off (alone, or with
//! another of 5), a follower or a random minority cut off, each for a while, then healed; an
//! RPC across the cut is `Unreachable`. Snapshots are small and frequent, and the nemesis
//! compacts the leader's log while a follower is cut off, so nodes catch up through
//! `install_snapshot` over the same transport. Meanwhile clients (tokio tasks) put, delete,
//! compare-and-swap (with versions they saw), read and scan linearizably a few shared keys
//! through `Node::write`, `Node::read` and `Node::scan`, each call with a deadline: most start
//! at the node they believe leads and follow `NotLeader` hints; two are behind a load balancer
//! (each call starts at any node, with a shorter deadline), and find the new leader while the
//! old one, cut off, still believes it leads.
//!
//! Method: every call is recorded with its invocation and response order (one global counter)
//! and checked with the library's linearizability checker (`tests/support/history.rs`), key by
//! key, and scans as one moment of every key. A cluster version is the log index of the write,
//! unique per written value and rising along a key's writes, as the checker's versions are. A
//! write answered `NotLeader` (after every hop) was not applied and is left out. A write whose
//! outcome is unknown (the client's deadline passed, the node stopped) stays in the history as
//! invoked and responding after every other call (`u64::MAX`), as an unconditional put (or
//! delete) of its value: whether it was applied at any time from its invocation on (a
//! compare-and-swap that was applied wrote its value) or never (then it is ordered last), the
//! history stays explainable, so the check is sound. Reads that got no answer are left out.
//! After the clients stop, the network heals and the cluster must converge (one leader, every
//! node applied its whole log); a final read of every key joins the history.
//!
//! Invariants: each key's history is linearizable and every scan shows one moment; no term has
//! two leaders; the replicas hold the same values and versions once they applied the same log.
//! The run asserts that its faults happened (requests and replies lost, delays, duplicates, a
//! cut-off leader that still believed it led while the majority had elected another, a new
//! leader, a snapshot installed), so it cannot pass vacuously.
//!
//! `SESSIONDB_SEED` replays the choices (faults, partitions, clients' operations; tokio's
//! scheduling is not replayed); `SESSIONDB_CLUSTER_FAULT_SECS` runs that many seconds of
//! workload (rounds of 5 s, each a fresh cluster) instead of 20.
//!
//! A bug this test found (fixed): a node that received a snapshot stopped for good.
//! `StateMachine::begin_receiving_snapshot` created the file openraft writes the chunks into
//! with `File::create` (write-only), and `install_snapshot` read it back: EBADF, a storage
//! error, fatal to the node's raft ("node 2's raft stopped: ... Bad file descriptor"). The
//! storage suite missed it: it installs from a handle it opens itself.

// openraft's `RPCError` is large; the transport's helpers return what its trait methods return.
#![allow(clippy::result_large_err)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, ServerState};
use sessiondb::Durability;
use sessiondb_cluster::node::now_ms;
use sessiondb_cluster::{ClusterError, Consistency, Expiry, Node, NodeConfig, NodeId, Response, TypeConfig, Write};
use support::history::{check, empty_states, key_name, parse_value, value_bytes, BatchOp, Call, Key, Op, Outcome};
use support::{mix64, Rng};

/// Keys `k0`..`k3`: few, so clients collide on them.
const KEYS: u8 = 4;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// Seconds of workload per round.
const ROUND_SECS: u64 = 5;
/// Seconds of workload of a run, by default (`SESSIONDB_CLUSTER_FAULT_SECS` overrides).
const DEFAULT_SECS: u64 = 20;
/// A client gives up on a call after this long (a client behind the balancer sooner).
const CALL_DEADLINE: Duration = Duration::from_secs(3);
const BALANCED_CALL_DEADLINE: Duration = Duration::from_millis(500);
/// Clients `0..BALANCED` are behind a load balancer: each call starts at any node.
const BALANCED: usize = 2;
/// How long the cluster has to converge once healed, and a final read to succeed.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The faulty transport

/// A transport error, as openraft carries it.
#[derive(Debug)]
struct Fault(String);

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fault {}

/// What the transport did, for the figures.
#[derive(Default)]
struct NetStats {
    rpcs: AtomicU64,
    dropped_requests: AtomicU64,
    dropped_replies: AtomicU64,
    delayed: AtomicU64,
    duplicated: AtomicU64,
    cut: AtomicU64,
    timed_out: AtomicU64,
    snapshot_chunks: AtomicU64,
}

/// The nodes of a round, reached by id, and the faults of their network.
struct Router {
    nodes: Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>,
    /// Each node's side of the partition: two nodes talk if they are on one side.
    side: Mutex<BTreeMap<NodeId, u8>>,
    /// The fault choices, from the round's seed.
    rng: Mutex<Rng>,
    /// Whether messages are dropped, delayed and duplicated (off while the cluster starts and
    /// settles at the end).
    faulty: AtomicBool,
    stats: NetStats,
}

/// What happens to one message.
#[derive(Default, Debug)]
struct Plan {
    drop_request: bool,
    drop_reply: bool,
    delay_ms: u64,
    reply_delay_ms: u64,
    duplicate_after_ms: Option<u64>,
}

impl Router {
    fn new(seed: u64) -> Router {
        Router {
            nodes: Mutex::new(BTreeMap::new()),
            side: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(Rng::new(seed)),
            faulty: AtomicBool::new(false),
            stats: NetStats::default(),
        }
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let side = self.side.lock().unwrap();
        side.get(&a).copied().unwrap_or(0) == side.get(&b).copied().unwrap_or(0)
    }

    fn raft(&self, id: NodeId) -> Option<Raft<TypeConfig>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    /// Puts `minority` on a side of its own.
    fn cut(&self, minority: &BTreeSet<NodeId>) {
        let mut side = self.side.lock().unwrap();
        for (id, s) in side.iter_mut() {
            *s = u8::from(minority.contains(id));
        }
    }

    fn heal(&self) {
        for s in self.side.lock().unwrap().values_mut() {
            *s = 0;
        }
    }

    fn plan(&self) -> Plan {
        if !self.faulty.load(Ordering::SeqCst) {
            return Plan::default();
        }
        let mut rng = self.rng.lock().unwrap();
        let mut p = Plan::default();
        match rng.below(100) {
            0..=3 => p.drop_request = true,
            4..=7 => p.drop_reply = true,
            _ => {}
        }
        if rng.chance(30) {
            // Mostly short; sometimes longer than openraft's timeout of the RPC.
            p.delay_ms = if rng.chance(15) {
                rng.range(40, 150)
            } else {
                rng.range(1, 25)
            };
        }
        if rng.chance(10) {
            p.reply_delay_ms = rng.range(1, 30);
        }
        if rng.chance(5) {
            p.duplicate_after_ms = Some(if rng.chance(30) { 0 } else { rng.range(1, 300) });
        }
        p
    }
}

/// Makes connections from node `from` through the round's router.
#[derive(Clone)]
struct FaultyNetwork {
    router: Arc<Router>,
    from: NodeId,
}

struct FaultyConnection {
    router: Arc<Router>,
    from: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for FaultyNetwork {
    type Network = FaultyConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> FaultyConnection {
        FaultyConnection {
            router: self.router.clone(),
            from: self.from,
            target,
        }
    }
}

type RpcResult<Resp, E> = Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

fn unreachable<Resp, E: std::error::Error>(why: &str) -> RpcResult<Resp, E> {
    Err(RPCError::Unreachable(Unreachable::new(&Fault(why.to_string()))))
}

fn network<Resp, E: std::error::Error>(why: &str) -> RpcResult<Resp, E> {
    Err(RPCError::Network(NetworkError::new(&Fault(why.to_string()))))
}

impl FaultyConnection {
    /// Delivers `req` to the target with `call` (one of its raft's RPC handlers), with the
    /// faults the router plans for it, within the RPC's hard TTL.
    async fn deliver<Req, Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        req: Req,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft<TypeConfig>, Req) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let (router, from, to) = (self.router.clone(), self.from, self.target);
        let stats = &router.stats;
        stats.rpcs.fetch_add(1, Ordering::Relaxed);
        if matches!(action, RPCTypes::InstallSnapshot) {
            stats.snapshot_chunks.fetch_add(1, Ordering::Relaxed);
        }
        let ttl = option.hard_ttl();
        let trip = async {
            if !router.connected(from, to) {
                stats.cut.fetch_add(1, Ordering::Relaxed);
                return unreachable("partitioned");
            }
            let plan = router.plan();
            if let Some(after) = plan.duplicate_after_ms {
                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                let (router, copy) = (router.clone(), req.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    if let (true, Some(raft)) = (router.connected(from, to), router.raft(to)) {
                        let _ = call(raft, copy).await;
                    }
                });
            }
            if plan.delay_ms > 0 {
                stats.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
            }
            if plan.drop_request {
                stats.dropped_requests.fetch_add(1, Ordering::Relaxed);
                return network("request lost");
            }
            // Cut off while the message was on its way.
            if !router.connected(from, to) {
                stats.cut.fetch_add(1, Ordering::Relaxed);
                return unreachable("partitioned");
            }
            let Some(raft) = router.raft(to) else {
                return unreachable("no such node (yet)");
            };
            let result = call(raft, req).await;
            if plan.reply_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(plan.reply_delay_ms)).await;
            }
            if plan.drop_reply || !router.connected(from, to) {
                stats.dropped_replies.fetch_add(1, Ordering::Relaxed);
                return network("reply lost");
            }
            result.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
        };
        match tokio::time::timeout(ttl, trip).await {
            Ok(r) => r,
            Err(_) => {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(RPCError::Timeout(Timeout {
                    action,
                    id: from,
                    target: to,
                    timeout: ttl,
                }))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for FaultyConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.deliver(RPCTypes::AppendEntries, rpc, &option, |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.deliver(RPCTypes::InstallSnapshot, rpc, &option, |raft, rpc| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.deliver(
            RPCTypes::Vote,
            rpc,
            &option,
            |raft, rpc| async move { raft.vote(rpc).await },
        )
        .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

// ---------------------------------------------------------------------------------------------
// A round: the cluster, its clients and its nemesis

/// What the clients did.
#[derive(Default)]
struct ClientStats {
    writes_ok: AtomicU64,
    writes_unknown: AtomicU64,
    writes_not_applied: AtomicU64,
    reads_ok: AtomicU64,
    reads_given_up: AtomicU64,
    redirects: AtomicU64,
    no_quorum: AtomicU64,
}

/// What the nemesis did.
#[derive(Default, Debug, Clone, Copy)]
struct NemesisStats {
    partitions: u64,
    /// Partitions whose minority held the leader of the moment.
    leader_in_minority: u64,
    /// ... and where a new leader was elected on the majority side while the cut-off one still
    /// believed it led: two leaders at once, of different terms.
    two_leaders_seen: u64,
    compactions: u64,
}

struct Round {
    index: u64,
    nodes: BTreeMap<NodeId, Node>,
    router: Arc<Router>,
    tick: AtomicU64,
    calls: Mutex<Vec<Call>>,
    stop: AtomicBool,
    clients: ClientStats,
    /// (term, node) for every node seen as leader.
    leaders: Mutex<BTreeSet<(u64, NodeId)>>,
}

impl Round {
    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Records a call invoked at `invoke` (clock `clock_lo`) that returned now, or never
    /// (`returned: false`: its outcome is unknown, so it may take effect at any later time).
    fn record(&self, thread: usize, invoke: u64, clock_lo: u64, op: Op, outcome: Outcome, returned: bool) {
        let (response, clock_hi) = if returned {
            (self.tick.fetch_add(1, Ordering::SeqCst), now_ms())
        } else {
            (u64::MAX, now_ms() + 3_600_000)
        };
        self.calls.lock().unwrap().push(Call {
            thread,
            invoke,
            response,
            clock_lo,
            clock_hi,
            op,
            outcome,
        });
    }

    /// The node that leads in the highest term, by the nodes' own metrics.
    fn leader(&self) -> Option<(NodeId, u64)> {
        self.nodes
            .values()
            .filter_map(|n| {
                let m = n.raft().metrics().borrow().clone();
                (m.state == ServerState::Leader).then_some((n.id(), m.current_term))
            })
            .max_by_key(|(_, term)| *term)
    }
}

/// How a write ended.
enum Fate {
    Applied(Response),
    NotApplied,
    Unknown,
}

struct Client {
    thread: usize,
    rng: Rng,
    target: NodeId,
    /// The last version seen of each key, for compare-and-swaps.
    seen: HashMap<Key, u64>,
    id_base: u64,
    next: u64,
}

impl Client {
    fn new(round: &Round, thread: usize, seed: u64) -> Client {
        let mut rng = Rng::new(seed);
        let ids = round.ids();
        let target = ids[rng.below(ids.len() as u64) as usize];
        Client {
            thread,
            rng,
            target,
            seen: HashMap::new(),
            id_base: (round.index * 256 + thread as u64 + 1) << 32,
            next: 0,
        }
    }

    fn val(&mut self) -> u64 {
        self.next += 1;
        self.id_base | self.next
    }

    /// A version to expect: mostly the last one seen, else absent or a stale guess.
    fn expected(&mut self, key: Key) -> Option<u64> {
        match (self.rng.below(10), self.seen.get(&key)) {
            (0..=5, Some(&v)) => Some(v),
            (6..=7, _) => None,
            (_, Some(&v)) => Some(v.saturating_sub(1 + self.rng.below(3)).max(1)),
            (_, None) => Some(1 + self.rng.below(50)),
        }
    }

    async fn run(mut self, round: Arc<Round>) {
        while !round.stop.load(Ordering::SeqCst) {
            let key = self.rng.below(u64::from(KEYS)) as Key;
            match self.rng.below(100) {
                0..=29 => self.read(&round, key).await,
                30..=33 => self.scan(&round).await,
                34..=58 => {
                    let val = self.val();
                    self.write(&round, key, val, None, false).await;
                }
                59..=67 => self.write(&round, key, 0, None, true).await,
                _ => {
                    let val = self.val();
                    let expected = self.expected(key);
                    self.write(&round, key, val, Some(expected), false).await;
                }
            }
        }
    }

    /// After a `NotLeader` (with the leader it named, if any): goes to the leader, waiting (up
    /// to `deadline`, briefly) until that node believes it leads.
    async fn follow(&mut self, round: &Round, hint: Option<NodeId>, deadline: Instant) {
        round.clients.redirects.fetch_add(1, Ordering::Relaxed);
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(300));
        match hint {
            Some(l) if l != self.target => {
                self.target = l;
                let _ = round
                    .node(l)
                    .raft()
                    .wait(Some(wait))
                    .metrics(|m| m.current_leader == Some(l), "the hinted node leads")
                    .await;
            }
            _ => {
                let ids = round.ids();
                self.target = ids[self.rng.below(ids.len() as u64) as usize];
                if let Ok(l) = round.node(self.target).wait_for_leader(wait).await {
                    self.target = l;
                }
            }
        }
    }

    /// Where a call starts: mostly the node this client believes leads, sometimes any node
    /// (a client with a stale view, or behind a load balancer), which must redirect it.
    fn start_somewhere(&mut self, round: &Round) {
        if self.thread < BALANCED || self.rng.chance(25) {
            let ids = round.ids();
            self.target = ids[self.rng.below(ids.len() as u64) as usize];
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now()
            + if self.thread < BALANCED {
                BALANCED_CALL_DEADLINE
            } else {
                CALL_DEADLINE
            }
    }

    fn pick_another(&mut self, round: &Round) {
        let ids: Vec<NodeId> = round.ids().into_iter().filter(|&i| i != self.target).collect();
        self.target = ids[self.rng.below(ids.len() as u64) as usize];
    }

    /// Submits `w`, following `NotLeader` hints until `deadline`.
    async fn submit(&mut self, round: &Round, w: Write) -> Fate {
        let deadline = self.deadline();
        self.start_somewhere(round);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Every attempt so far answered NotLeader: none was applied.
                return Fate::NotApplied;
            }
            let node = round.node(self.target).clone();
            match tokio::time::timeout(left, node.write(w.clone())).await {
                Err(_) => {
                    // Our next call goes elsewhere: this node may be a cut-off leader.
                    self.pick_another(round);
                    return Fate::Unknown;
                }
                Ok(Ok(r)) => return Fate::Applied(r),
                Ok(Err(ClusterError::NotLeader { leader, .. })) => {
                    self.follow(round, leader.map(|l| l.0), deadline).await;
                }
                Ok(Err(e)) if e.certainly_not_applied() => panic!("a write refused: {e}"),
                Ok(Err(_)) => return Fate::Unknown,
            }
        }
    }

    /// A put (`expected: None`), a compare-and-swap (`Some(expected)`) or a delete.
    async fn write(&mut self, round: &Round, key: Key, val: u64, expected: Option<Option<u64>>, delete: bool) {
        let name = key_name(key);
        let w = match (delete, expected) {
            (true, _) => Write::Delete { key: name },
            (false, None) => Write::Put {
                key: name,
                value: value_bytes(val),
                expiry: Expiry::Never,
            },
            (false, Some(expected)) => Write::CompareAndSwap {
                key: name,
                expected,
                value: value_bytes(val),
                expiry: Expiry::Never,
            },
        };
        let clock_lo = now_ms();
        let invoke = round.tick.fetch_add(1, Ordering::SeqCst);
        let fate = self.submit(round, w).await;
        let stats = &round.clients;
        let (op, outcome, returned) = match fate {
            Fate::NotApplied => {
                stats.writes_not_applied.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Fate::Unknown => {
                stats.writes_unknown.fetch_add(1, Ordering::Relaxed);
                // Whether it was (or will be) applied is unknown: a write of its value (a
                // compare-and-swap applied writes it, whatever it compared) at any time from
                // its invocation on, or nothing (ordered after every other call).
                let op = if delete {
                    Op::Delete { key }
                } else {
                    Op::Put { key, val, ttl_ms: None }
                };
                (op, Outcome::Done, false)
            }
            Fate::Applied(r) => {
                stats.writes_ok.fetch_add(1, Ordering::Relaxed);
                let (op, outcome) = match (delete, expected) {
                    (true, _) => (Op::Delete { key }, Outcome::Done),
                    (false, None) => (
                        Op::Write {
                            ops: vec![BatchOp::Put {
                                key,
                                val,
                                expiry: support::history::Expiry::Never,
                            }],
                            expect: Vec::new(),
                            durability: Durability::Default,
                        },
                        written(&r),
                    ),
                    (false, Some(expected)) => {
                        let outcome = if r.applied {
                            written(&r)
                        } else {
                            Outcome::Conflict {
                                key,
                                expected,
                                actual: r.version,
                            }
                        };
                        (
                            Op::PutIfVersion {
                                key,
                                val,
                                expected,
                                ttl_ms: None,
                            },
                            outcome,
                        )
                    }
                };
                if let Some(v) = r.version {
                    self.seen.insert(key, v);
                }
                (op, outcome, true)
            }
        };
        round.record(self.thread, invoke, clock_lo, op, outcome, returned);
    }

    /// A linearizable read, following hints and trying other nodes until its deadline;
    /// `None` if it got no answer.
    async fn read_raw<T>(
        &mut self,
        round: &Round,
        read: impl Fn(Node) -> std::pin::Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send>>,
    ) -> Option<T> {
        let deadline = self.deadline();
        self.start_somewhere(round);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let node = round.node(self.target).clone();
            match tokio::time::timeout(left, read(node)).await {
                Err(_) => return None,
                Ok(Ok(v)) => return Some(v),
                Ok(Err(ClusterError::NotLeader { leader, .. })) => {
                    self.follow(round, leader.map(|l| l.0), deadline).await;
                }
                Ok(Err(ClusterError::NoQuorum(_))) => {
                    // A leader cut off from its followers: ask another node, once it knows of
                    // another leader (or briefly, if none is elected yet).
                    round.clients.no_quorum.fetch_add(1, Ordering::Relaxed);
                    let deposed = self.target;
                    self.pick_another(round);
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(300));
                    let other = round
                        .node(self.target)
                        .raft()
                        .wait(Some(wait))
                        .metrics(
                            |m| m.current_leader.is_some_and(|l| l != deposed),
                            "another leader is known",
                        )
                        .await;
                    if let Some(l) = other.ok().and_then(|m| m.current_leader) {
                        self.target = l;
                    }
                }
                Ok(Err(_)) => return None,
            }
        }
    }

    async fn read(&mut self, round: &Round, key: Key) {
        let clock_lo = now_ms();
        let invoke = round.tick.fetch_add(1, Ordering::SeqCst);
        let got = self
            .read_raw(round, |node| {
                Box::pin(async move { node.read(&key_name(key), Consistency::Linearizable).await })
            })
            .await;
        let Some(got) = got else {
            round.clients.reads_given_up.fetch_add(1, Ordering::Relaxed);
            return;
        };
        round.clients.reads_ok.fetch_add(1, Ordering::Relaxed);
        let outcome = match got {
            None => Outcome::Full(None),
            Some(s) => match parse_value(&s.value) {
                Ok(id) => {
                    self.seen.insert(key, s.version);
                    Outcome::Full(Some((id, s.version, (s.expires_at_ms != 0).then_some(s.expires_at_ms))))
                }
                Err(e) => Outcome::Failed(format!("k{key}: {e}")),
            },
        };
        round.record(self.thread, invoke, clock_lo, Op::GetVersioned { key }, outcome, true);
    }

    async fn scan(&mut self, round: &Round) {
        let clock_lo = now_ms();
        let invoke = round.tick.fetch_add(1, Ordering::SeqCst);
        let got = self
            .read_raw(round, |node| {
                Box::pin(async move { node.scan(b"k", None, 100, Consistency::Linearizable).await })
            })
            .await;
        let Some(page) = got else {
            round.clients.reads_given_up.fetch_add(1, Ordering::Relaxed);
            return;
        };
        round.clients.reads_ok.fetch_add(1, Ordering::Relaxed);
        let mut found = Vec::new();
        let mut outcome = None;
        for (k, s) in page {
            let key = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.strip_prefix('k'))
                .and_then(|k| k.parse::<Key>().ok())
                .filter(|k| *k < KEYS);
            match (key, parse_value(&s.value)) {
                (Some(key), Ok(id)) => found.push((key, id)),
                (None, _) => outcome = Some(Outcome::Failed(format!("a key never written: {k:?}"))),
                (Some(key), Err(e)) => outcome = Some(Outcome::Failed(format!("k{key}: {e}"))),
            }
        }
        let outcome = outcome.unwrap_or(Outcome::Entries(found));
        round.record(self.thread, invoke, clock_lo, Op::ScanAll, outcome, true);
    }
}

/// A write's outcome with the version it reports.
fn written(r: &Response) -> Outcome {
    match r.version {
        Some(v) if r.applied => Outcome::Seq(v),
        _ => Outcome::Failed(format!("a write applied without a version: {r:?}")),
    }
}

/// Cuts off minorities and heals them until the round stops.
async fn nemesis(round: Arc<Round>, seed: u64) -> NemesisStats {
    let mut rng = Rng::new(seed);
    let mut stats = NemesisStats::default();
    let ids = round.ids();
    let n = ids.len();
    // The first partition of a round cuts a follower off while the leader compacts its log,
    // the second the leader; then any.
    for i in 0.. {
        let pause = Duration::from_millis(if i < 2 {
            rng.range(150, 400)
        } else {
            rng.range(150, 600)
        });
        if stopped_within(&round, pause).await {
            break;
        }
        let kind = match i {
            0 => 50,
            1 => 0,
            _ => rng.below(100),
        };
        let leader = wait_for_a_leader(&round, Duration::from_secs(1)).await;
        let size = if n == 3 { 1 } else { 1 + rng.below(2) as usize };
        let mut minority = BTreeSet::new();
        match (kind, leader) {
            (0..=44, Some((l, _))) => {
                minority.insert(l);
            }
            (45..=79, Some((l, _))) => {
                // Followers only.
                while minority.len() < size {
                    let x = ids[rng.below(n as u64) as usize];
                    if x != l {
                        minority.insert(x);
                    }
                }
            }
            _ => {}
        }
        while minority.len() < size {
            minority.insert(ids[rng.below(n as u64) as usize]);
        }
        let cut_leader = leader.filter(|(l, _)| minority.contains(l));
        round.router.cut(&minority);
        stats.partitions += 1;
        if cut_leader.is_some() {
            stats.leader_in_minority += 1;
        }
        // A cut-off leader stays cut off long enough for the majority to elect another and
        // serve clients while it still believes it leads; sometimes longer than a client's
        // deadline (the outcome of the writes stuck on it is then unknown).
        let hold = Duration::from_millis(match (i, cut_leader.is_some()) {
            (0, _) => rng.range(500, 1_200),
            (1.., true) if rng.chance(15) => rng.range(3_000, 4_000),
            (1.., true) => rng.range(1_000, 2_500),
            _ => rng.range(500, 1_500),
        });
        // With a follower cut off, the leader may compact its log halfway through: the
        // follower can then only catch up from a snapshot.
        let compact = cut_leader.is_none() && leader.is_some() && (i == 0 || rng.chance(50));
        let cut_at = Instant::now();
        let mut saw_two = false;
        let mut compacted = false;
        while cut_at.elapsed() < hold && !round.stop.load(Ordering::SeqCst) {
            if let Some((old, old_term)) = cut_leader {
                if !saw_two && two_leaders(&round, old, old_term, &minority) {
                    saw_two = true;
                    stats.two_leaders_seen += 1;
                }
            }
            if compact && !compacted && cut_at.elapsed() >= hold / 2 {
                compacted = true;
                if let Some((l, _)) = leader {
                    if compact_log(round.node(l)).await {
                        stats.compactions += 1;
                    }
                }
            }
            // Polling the nodes' state, not waiting for a task.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        round.router.heal();
    }
    round.router.heal();
    stats
}

/// Whether `old` (cut off in `minority`) still believes it leads in `old_term` while a node of
/// the majority leads in a later term.
fn two_leaders(round: &Round, old: NodeId, old_term: u64, minority: &BTreeSet<NodeId>) -> bool {
    let m = round.node(old).raft().metrics().borrow().clone();
    if m.state != ServerState::Leader || m.current_term != old_term {
        return false;
    }
    round.nodes.values().any(|n| {
        let m = n.raft().metrics().borrow().clone();
        !minority.contains(&n.id()) && m.state == ServerState::Leader && m.current_term > old_term
    })
}

/// Sleeps `d` unless the round stops first; whether it stopped.
async fn stopped_within(round: &Round, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if round.stop.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now()))).await;
    }
    round.stop.load(Ordering::SeqCst)
}

/// The leader, waiting up to `timeout` for one.
async fn wait_for_a_leader(round: &Round, timeout: Duration) -> Option<(NodeId, u64)> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(l) = round.leader() {
            return Some(l);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Builds a snapshot on `node` and purges its log up to it; whether it did.
async fn compact_log(node: &Node) -> bool {
    let applied = node.status().last_applied_index.unwrap_or(0);
    if node.trigger_snapshot().await.is_err() {
        return false;
    }
    let built = node
        .raft()
        .wait(Some(Duration::from_secs(2)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "a snapshot of what was applied",
        )
        .await;
    let Ok(m) = built else { return false };
    let upto = m.snapshot.map_or(0, |s| s.index);
    node.raft().trigger().purge_log(upto).await.is_ok()
}

/// Records every (term, node) a node leads in, until its raft stops.
fn watch_leaders(round: &Arc<Round>, node: &Node) -> tokio::task::JoinHandle<()> {
    let (round, id, mut rx) = (round.clone(), node.id(), node.raft().metrics());
    tokio::spawn(async move {
        loop {
            let lead = {
                let m = rx.borrow_and_update();
                (m.state == ServerState::Leader).then_some(m.current_term)
            };
            if let Some(term) = lead {
                round.leaders.lock().unwrap().insert((term, id));
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Running a round

/// Figures of a run.
#[derive(Default, Debug)]
struct Figures {
    rounds: u64,
    calls: u64,
    key_histories: u64,
    states: u64,
    writes_ok: u64,
    writes_unknown: u64,
    writes_not_applied: u64,
    reads_ok: u64,
    reads_given_up: u64,
    redirects: u64,
    no_quorum: u64,
    rpcs: u64,
    dropped_requests: u64,
    dropped_replies: u64,
    delayed: u64,
    duplicated: u64,
    cut: u64,
    timed_out: u64,
    snapshot_chunks: u64,
    partitions: u64,
    leader_in_minority: u64,
    two_leaders_seen: u64,
    compactions: u64,
    leader_changes: u64,
    snapshots_installed: u64,
}

async fn start_cluster(index: u64, n: u64, seed: u64, dirs: &[tempfile::TempDir]) -> Arc<Round> {
    let mut rng = Rng::new(seed);
    let config = NodeConfig {
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_every: rng.range(80, 200),
        keep_logs: rng.range(5, 20),
    };
    let router = Arc::new(Router::new(mix64(seed ^ 0xfa17)));
    let mut nodes = BTreeMap::new();
    for id in 0..n {
        router.side.lock().unwrap().insert(id, 0);
        let net = FaultyNetwork {
            router: router.clone(),
            from: id,
        };
        let node = Node::start(id, dirs[id as usize].path(), &config, net)
            .await
            .unwrap_or_else(|e| panic!("node {id} starts: {e}"));
        router.nodes.lock().unwrap().insert(id, node.raft().clone());
        nodes.insert(id, node);
    }
    let members: BTreeMap<NodeId, String> = (0..n).map(|id| (id, format!("node-{id}"))).collect();
    nodes[&0].init(members).await.expect("the cluster initialises");
    let round = Arc::new(Round {
        index,
        nodes,
        router,
        tick: AtomicU64::new(0),
        calls: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        clients: ClientStats::default(),
        leaders: Mutex::new(BTreeSet::new()),
    });
    assert!(
        wait_for_a_leader(&round, SETTLE_DEADLINE).await.is_some(),
        "round {index}: no leader elected without faults"
    );
    round
}

/// Waits until the healed cluster has one leader that every node follows and every node
/// applied the whole log; returns the leader.
async fn converge(round: &Round) -> Result<NodeId, String> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let ms: Vec<_> = round
            .nodes
            .values()
            .map(|n| n.raft().metrics().borrow().clone())
            .collect();
        if let Some(m) = ms.iter().find(|m| m.running_state.is_err()) {
            return Err(format!("node {}'s raft stopped: {:?}", m.id, m.running_state));
        }
        let leader = ms.iter().find(|m| m.state == ServerState::Leader);
        if let Some(l) = leader {
            let last = l.last_log_index;
            if ms.iter().all(|m| {
                m.current_leader == Some(l.id)
                    && m.current_term == l.current_term
                    && m.last_log_index == last
                    && m.last_applied.map(|a| a.index) == last
            }) {
                return Ok(l.id);
            }
        }
        if Instant::now() >= until {
            let summary: Vec<String> = round
                .nodes
                .values()
                .map(|n| {
                    format!(
                        "{:?} (raft: {:?})",
                        n.status(),
                        n.raft().metrics().borrow().running_state
                    )
                })
                .collect();
            return Err(format!(
                "the healed cluster did not converge in {SETTLE_DEADLINE:?}:\n  {}",
                summary.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A linearizable read of every key through the leader, recorded: the end of the history.
async fn final_reads(round: &Round, leader: NodeId) {
    for key in 0..KEYS {
        let until = Instant::now() + SETTLE_DEADLINE;
        let mut target = leader;
        loop {
            let clock_lo = now_ms();
            let invoke = round.tick.fetch_add(1, Ordering::SeqCst);
            let got = tokio::time::timeout(
                CALL_DEADLINE,
                round.node(target).read(&key_name(key), Consistency::Linearizable),
            )
            .await;
            match got {
                Ok(Ok(got)) => {
                    let outcome = match got {
                        None => Outcome::Full(None),
                        Some(s) => parse_value(&s.value)
                            .map_or_else(Outcome::Failed, |id| Outcome::Full(Some((id, s.version, None)))),
                    };
                    round.record(usize::MAX, invoke, clock_lo, Op::GetVersioned { key }, outcome, true);
                    break;
                }
                Ok(Err(ClusterError::NotLeader {
                    leader: Some((l, _)), ..
                })) => target = l,
                other => {
                    assert!(
                        Instant::now() < until,
                        "round {}: a final read of k{key} failed for {SETTLE_DEADLINE:?}: {other:?}",
                        round.index
                    );
                    if let Some((l, _)) = round.leader() {
                        target = l;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Every replica holds the same values and versions once they applied the same log.
async fn replicas_agree(round: &Round) -> Result<(), String> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let applied = |round: &Round| -> BTreeSet<Option<u64>> {
            round.nodes.values().map(|n| n.status().last_applied_index).collect()
        };
        let before = applied(round);
        let mut states = BTreeMap::new();
        for node in round.nodes.values() {
            let mut state = Vec::new();
            for key in 0..KEYS {
                let got = node
                    .read(&key_name(key), Consistency::Stale)
                    .await
                    .map_err(|e| format!("a stale read on node {}: {e}", node.id()))?;
                state.push(got.map(|s| (s.version, s.value)));
            }
            states.insert(node.id(), state);
        }
        if before.len() == 1 && applied(round) == before {
            let first = states.values().next().cloned().unwrap_or_default();
            for (id, s) in &states {
                if *s != first {
                    return Err(format!(
                        "replicas differ after applying the same log (index {before:?}): node {id} holds {:?}, node 0 \
                         holds {:?}",
                        summary(s),
                        summary(&first)
                    ));
                }
            }
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("replicas never applied the same log: {before:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(state: &[Option<(u64, Vec<u8>)>]) -> Vec<Option<(u64, String)>> {
    state
        .iter()
        .map(|s| {
            s.as_ref()
                .map(|(v, b)| (*v, parse_value(b).map_or_else(|e| e, |id| format!("{id:#x}"))))
        })
        .collect()
}

/// How many snapshots the nodes installed: each install moves `STATE` to the next generation.
fn snapshots_installed(dirs: &[tempfile::TempDir]) -> u64 {
    dirs.iter()
        .map(|d| {
            std::fs::read_to_string(d.path().join("STATE"))
                .ok()
                .and_then(|s| s.trim().strip_prefix("state-").and_then(|g| g.parse::<u64>().ok()))
                .unwrap_or(0)
        })
        .sum()
}

/// Joins a task, with a deadline; a panic in it goes on here.
async fn joined<T>(what: &str, task: tokio::task::JoinHandle<T>, deadline: Duration) -> T {
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what} did not finish in {deadline:?}"),
    }
}

async fn run_round(index: u64, n: u64, seed: u64, secs: u64, figures: &mut Figures) {
    let dirs: Vec<tempfile::TempDir> = (0..n)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let round = start_cluster(index, n, seed, &dirs).await;
    let watchers: Vec<_> = round.nodes.values().map(|node| watch_leaders(&round, node)).collect();
    round.router.faulty.store(true, Ordering::SeqCst);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let client = Client::new(&round, t, mix64(seed ^ (0xc11e_0000 + t as u64)));
            tokio::spawn(client.run(round.clone()))
        })
        .collect();
    let nemesis_task = tokio::spawn(nemesis(round.clone(), mix64(seed ^ 0x0e3e_5155)));
    tokio::time::sleep(Duration::from_secs(secs)).await;

    // Stop: no new calls, a healed network without faults; the calls in flight finish.
    round.stop.store(true, Ordering::SeqCst);
    round.router.faulty.store(false, Ordering::SeqCst);
    round.router.heal();
    let nemesis_stats = joined("the nemesis", nemesis_task, Duration::from_secs(10)).await;
    for (t, c) in clients.into_iter().enumerate() {
        joined(&format!("client {t}"), c, CALL_DEADLINE * 3).await;
    }

    let settled = converge(&round).await;
    let leader = settled.unwrap_or_else(|e| panic!("round {index}: {e}"));
    final_reads(&round, leader).await;
    if let Err(e) = replicas_agree(&round).await {
        panic!("round {index}: {e}");
    }

    let leaders = round.leaders.lock().unwrap().clone();
    let mut terms: BTreeMap<u64, NodeId> = BTreeMap::new();
    for (term, id) in &leaders {
        if let Some(other) = terms.insert(*term, *id) {
            panic!("round {index}: nodes {other} and {id} both led in term {term}");
        }
    }
    let installed = snapshots_installed(&dirs);
    for node in round.nodes.values() {
        let _ = node.shutdown().await;
    }
    for w in watchers {
        w.abort();
    }

    let calls = std::mem::take(&mut *round.calls.lock().unwrap());
    let checked = check(&calls, &empty_states(KEYS), KEYS).unwrap_or_else(|e| {
        panic!("round {index} (round seed {seed}): the clients' history is not linearizable:\n{e}");
    });

    let c = &round.clients;
    let s = &round.router.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let line = format!(
        "round {index} ({n} nodes, round seed {seed}): {} calls ({} writes ok, {} unknown, {} not applied; {} reads ok, {} \
         given up), {} rpcs ({} requests lost, {} replies lost, {} delayed, {} duplicated, {} refused by a partition, {} \
         timed out, {} snapshot chunks), {:?}, {} leaders, {} snapshots installed",
        calls.len(),
        get(&c.writes_ok),
        get(&c.writes_unknown),
        get(&c.writes_not_applied),
        get(&c.reads_ok),
        get(&c.reads_given_up),
        get(&s.rpcs),
        get(&s.dropped_requests),
        get(&s.dropped_replies),
        get(&s.delayed),
        get(&s.duplicated),
        get(&s.cut),
        get(&s.timed_out),
        get(&s.snapshot_chunks),
        nemesis_stats,
        leaders.len(),
        installed,
    );
    eprintln!("faulty_transport: {line}");

    figures.rounds += 1;
    figures.calls += checked.calls;
    figures.key_histories += checked.key_histories;
    figures.states += checked.states;
    figures.writes_ok += get(&c.writes_ok);
    figures.writes_unknown += get(&c.writes_unknown);
    figures.writes_not_applied += get(&c.writes_not_applied);
    figures.reads_ok += get(&c.reads_ok);
    figures.reads_given_up += get(&c.reads_given_up);
    figures.redirects += get(&c.redirects);
    figures.no_quorum += get(&c.no_quorum);
    figures.rpcs += get(&s.rpcs);
    figures.dropped_requests += get(&s.dropped_requests);
    figures.dropped_replies += get(&s.dropped_replies);
    figures.delayed += get(&s.delayed);
    figures.duplicated += get(&s.duplicated);
    figures.cut += get(&s.cut);
    figures.timed_out += get(&s.timed_out);
    figures.snapshot_chunks += get(&s.snapshot_chunks);
    figures.partitions += nemesis_stats.partitions;
    figures.leader_in_minority += nemesis_stats.leader_in_minority;
    figures.two_leaders_seen += nemesis_stats.two_leaders_seen;
    figures.compactions += nemesis_stats.compactions;
    figures.leader_changes += (leaders.len() as u64).saturating_sub(1);
    figures.snapshots_installed += installed;
}

/// Prints how to replay the run if it fails.
struct Replay(u64);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nfaulty_transport failed; replay with: SESSIONDB_SEED={} cargo test -p sessiondb-cluster --test \
                 faulty_transport -- --nocapture\n",
                self.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_through_a_faulty_network_are_linearizable() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let seed = support::seed();
    let _replay = Replay(seed);
    let secs = std::env::var("SESSIONDB_CLUSTER_FAULT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS)
        .max(ROUND_SECS);
    eprintln!("faulty_transport: SESSIONDB_SEED={seed}, {secs} s of faults in rounds of {ROUND_SECS} s");
    let started = Instant::now();
    let mut figures = Figures::default();
    for r in 0..secs.div_ceil(ROUND_SECS) {
        // Every fourth round, from the third, has 5 nodes.
        let n = if r % 4 == 2 { 5 } else { 3 };
        run_round(r, n, mix64(seed ^ (r + 1)), ROUND_SECS, &mut figures).await;
    }
    eprintln!(
        "faulty_transport: SESSIONDB_SEED={seed}: {figures:#?}\nin {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        figures.key_histories > 0 && figures.writes_ok > 0,
        "nothing was checked"
    );
    assert!(figures.leader_in_minority > 0, "no partition cut off a leader");
    assert!(
        figures.two_leaders_seen > 0,
        "a cut-off leader never still believed it led while the majority had elected another"
    );
    assert!(figures.leader_changes > 0, "no new leader was ever elected");
    assert!(figures.snapshots_installed > 0, "no snapshot was installed");
    assert!(
        figures.dropped_requests > 0 && figures.dropped_replies > 0 && figures.delayed > 0 && figures.duplicated > 0,
        "the transport injected too few faults"
    );
}
