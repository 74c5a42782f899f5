//! A node's HTTP API (docs/cluster.md, "HTTP API"): the raft RPCs between nodes, the clients'
//! reads and writes, and the operators' endpoints.
//!
//! Errors are a JSON [`ClusterError`] with a status: 421 (not the leader; the header
//! `x-leader-addr` names the leader when it is known), 400, 409 (membership), 503 (no quorum,
//! unavailable), 500 (the node stopped).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{Deserialize, Serialize};

use crate::node::{ClusterError, Consistency, Expiry, Node, Write};
use crate::{codec, NodeId, TypeConfig};

/// The header that names the leader's address on a 421 reply.
pub const LEADER_HEADER: &str = "x-leader-addr";
/// The headers of a read: the value's version and its deadline (ms since the Unix epoch, 0: never).
pub const VERSION_HEADER: &str = "x-version";
pub const EXPIRES_HEADER: &str = "x-expires-at-ms";

fn status_of(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
        ClusterError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ClusterError::Membership(_) => StatusCode::CONFLICT,
        ClusterError::NoQuorum(_) | ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ClusterError::Stopped(_) | ClusterError::Protocol(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A [`ClusterError`] as a reply.
struct Failure(ClusterError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if let ClusterError::NotLeader {
            leader: Some((_, addr)),
            ..
        } = &self.0
        {
            if let Ok(v) = HeaderValue::from_str(addr) {
                headers.insert(LEADER_HEADER, v);
            }
        }
        (status_of(&self.0), headers, Json(self.0)).into_response()
    }
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Failure {
        Failure(e)
    }
}

/// The router of a node's API.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .route("/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/scan", get(kv_scan))
        .route("/writes", post(kv_writes))
        .route("/touch/{*key}", post(kv_touch))
        .route("/cas/{*key}", post(kv_cas))
        .route("/cluster/init", post(cluster_init))
        .route("/cluster/add-learner", post(cluster_add_learner))
        .route("/cluster/change-membership", post(cluster_change_membership))
        .route("/cluster/metrics", get(cluster_metrics))
        .route("/cluster/snapshot", post(cluster_snapshot))
        // An RPC (a snapshot chunk of 1 MiB, entries up to openraft's payload limit) or a value.
        .layer(DefaultBodyLimit::max(codec::BYTES_MAX))
        .with_state(node)
}

/// Serves `node`'s API on `listener` until `shutdown` completes.
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
}

// ---------------------------------------------------------------------------------------------
// Raft RPCs

/// A raft RPC's request, decoded; a reply the peer decodes with [`codec::decode`].
fn raft_reply<T: Serialize>(v: &T) -> Response {
    match codec::encode(v) {
        Ok(b) => ([("content-type", "application/octet-stream")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the reply: {e}")).into_response(),
    }
}

fn bad_rpc(what: &str, e: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{what}: {e}")).into_response()
}

async fn raft_append(State(node): State<Node>, body: Bytes) -> Response {
    match codec::decode::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(req) => raft_reply(&node.raft().append_entries(req).await),
        Err(e) => bad_rpc("an append-entries request", e),
    }
}

async fn raft_vote(State(node): State<Node>, body: Bytes) -> Response {
    match codec::decode::<VoteRequest<NodeId>>(&body) {
        Ok(req) => raft_reply(&node.raft().vote(req).await),
        Err(e) => bad_rpc("a vote request", e),
    }
}

async fn raft_snapshot(State(node): State<Node>, body: Bytes) -> Response {
    match codec::decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(req) => raft_reply(&node.raft().install_snapshot(req).await),
        Err(e) => bad_rpc("an install-snapshot request", e),
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// `?consistency=stale` opts a read into this node's state as it is.
#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

/// A write's expiry: `ttl_ms` (from the leader's clock), `expires_at_ms` (absolute), or neither.
#[derive(Deserialize)]
struct WriteParams {
    ttl_ms: Option<u64>,
    expires_at_ms: Option<u64>,
    /// For `/cas`: the expected version, or `none` (absent or expired).
    expected: Option<String>,
}

impl WriteParams {
    fn expiry(&self) -> Result<Expiry, ClusterError> {
        match (self.ttl_ms, self.expires_at_ms) {
            (None, None) => Ok(Expiry::Never),
            (Some(t), None) => Ok(Expiry::TtlMs(t)),
            (None, Some(at)) => Ok(Expiry::AtMs(at)),
            (Some(_), Some(_)) => Err(ClusterError::BadRequest(
                "give ttl_ms or expires_at_ms, not both".to_string(),
            )),
        }
    }
}

async fn kv_get(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(p): Query<ReadParams>,
) -> Result<Response, Failure> {
    let consistency = match p.consistency.as_deref() {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(ClusterError::BadRequest(format!("consistency {other:?}: linearizable or stale")).into())
        }
    };
    match node.read(key.as_bytes(), consistency).await? {
        None => Ok(StatusCode::NOT_FOUND.into_response()),
        Some(s) => {
            let mut headers = HeaderMap::new();
            headers.insert(VERSION_HEADER, HeaderValue::from(s.version));
            headers.insert(EXPIRES_HEADER, HeaderValue::from(s.expires_at_ms));
            Ok((StatusCode::OK, headers, s.value).into_response())
        }
    }
}

/// `GET /scan?prefix=P&after=K&limit=N&consistency=stale`.
#[derive(Deserialize)]
struct ScanParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

/// One entry of a scan's reply (a JSON array of them, in key order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEntry {
    pub key: String,
    pub version: u64,
    pub expires_at_ms: u64,
    pub value: Vec<u8>,
}

fn consistency(p: Option<&str>) -> Result<Consistency, ClusterError> {
    match p {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ClusterError::BadRequest(format!(
            "consistency {other:?}: linearizable or stale"
        ))),
    }
}

async fn kv_scan(State(node): State<Node>, Query(p): Query<ScanParams>) -> Result<Response, Failure> {
    let page = node
        .scan(
            p.prefix.as_bytes(),
            p.after.as_deref().map(str::as_bytes),
            p.limit.unwrap_or(1_000),
            consistency(p.consistency.as_deref())?,
        )
        .await?;
    let entries: Vec<ScanEntry> = page
        .into_iter()
        .map(|(k, s)| ScanEntry {
            key: String::from_utf8_lossy(&k).into_owned(),
            version: s.version,
            expires_at_ms: s.expires_at_ms,
            value: s.value,
        })
        .collect();
    Ok(Json(entries).into_response())
}

/// The most writes one `POST /writes` takes.
pub const WRITES_MAX: usize = 1024;

/// `POST /writes`: several writes in one request (a client's pipeline), encoded by
/// [`codec`] as a list of [`Write`]s; the reply is the list of their outcomes,
/// `Result<Response, ClusterError>` each, in order. They are submitted together, so they share
/// log entries. A node that is not the leader refuses the whole request with 421 (nothing
/// applied); an outcome may still be "not the leader" if leadership was lost meanwhile.
async fn kv_writes(State(node): State<Node>, body: Bytes) -> Result<Response, Failure> {
    let writes: Vec<Write> =
        codec::decode(&body).map_err(|e| ClusterError::BadRequest(format!("a list of writes: {e}")))?;
    if writes.len() > WRITES_MAX {
        return Err(ClusterError::BadRequest(format!(
            "{} writes in one request, more than {WRITES_MAX}",
            writes.len()
        ))
        .into());
    }
    node.check_leader()?;
    let pending: Vec<_> = writes
        .into_iter()
        .map(|w| {
            let node = node.clone();
            tokio::spawn(async move { node.write(w).await })
        })
        .collect();
    let mut outcomes: Vec<Result<crate::Response, ClusterError>> = Vec::with_capacity(pending.len());
    for p in pending {
        outcomes.push(
            p.await
                .unwrap_or_else(|e| Err(ClusterError::Stopped(format!("a write's task failed: {e}")))),
        );
    }
    Ok(raft_reply(&outcomes))
}

async fn write(node: &Node, w: Write) -> Result<Response, Failure> {
    let r = node.write(w).await?;
    Ok(Json(r).into_response())
}

async fn kv_put(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(p): Query<WriteParams>,
    body: Bytes,
) -> Result<Response, Failure> {
    let w = Write::Put {
        key: key.into_bytes(),
        value: body.to_vec(),
        expiry: p.expiry()?,
    };
    write(&node, w).await
}

async fn kv_delete(State(node): State<Node>, Path(key): Path<String>) -> Result<Response, Failure> {
    write(&node, Write::Delete { key: key.into_bytes() }).await
}

async fn kv_touch(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(p): Query<WriteParams>,
) -> Result<Response, Failure> {
    let w = Write::Touch {
        key: key.into_bytes(),
        expiry: p.expiry()?,
    };
    write(&node, w).await
}

async fn kv_cas(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(p): Query<WriteParams>,
    body: Bytes,
) -> Result<Response, Failure> {
    let expected = match p.expected.as_deref() {
        Some("none") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ClusterError::BadRequest(format!("expected={v:?}: a version or none")))?,
        ),
        None => return Err(ClusterError::BadRequest("expected= is required: a version or none".to_string()).into()),
    };
    let w = Write::CompareAndSwap {
        key: key.into_bytes(),
        expected,
        value: body.to_vec(),
        expiry: p.expiry()?,
    };
    write(&node, w).await
}

// ---------------------------------------------------------------------------------------------
// Operators

/// `POST /cluster/init`: the voters of the new cluster (id → address); empty: this node alone.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InitRequest {
    #[serde(default)]
    pub members: BTreeMap<NodeId, String>,
}

/// `POST /cluster/add-learner`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub id: NodeId,
    pub addr: String,
    /// Wait until it caught up (default).
    #[serde(default = "yes")]
    pub blocking: bool,
}

fn yes() -> bool {
    true
}

/// `POST /cluster/change-membership`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeMembershipRequest {
    pub voters: BTreeSet<NodeId>,
    /// Keep removed voters as learners.
    #[serde(default)]
    pub retain: bool,
}

/// This node's address as the cluster knows it: from `init`'s members, or the `Host` header.
fn own_addr(node: &Node, headers: &HeaderMap) -> Option<String> {
    let known = node.status().nodes.get(&node.id()).cloned();
    known.or_else(|| headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_string))
}

async fn cluster_init(
    State(node): State<Node>,
    headers: HeaderMap,
    Json(mut req): Json<InitRequest>,
) -> Result<Response, Failure> {
    if req.members.is_empty() {
        let addr = own_addr(&node, &headers)
            .ok_or_else(|| ClusterError::BadRequest("no members given and no Host header".to_string()))?;
        req.members.insert(node.id(), addr);
    }
    node.init(req.members).await?;
    Ok(Json(node.status()).into_response())
}

async fn cluster_add_learner(
    State(node): State<Node>,
    Json(req): Json<AddLearnerRequest>,
) -> Result<Response, Failure> {
    node.add_learner(req.id, req.addr, req.blocking).await?;
    Ok(Json(node.status()).into_response())
}

async fn cluster_change_membership(
    State(node): State<Node>,
    Json(req): Json<ChangeMembershipRequest>,
) -> Result<Response, Failure> {
    node.change_membership(req.voters, req.retain).await?;
    Ok(Json(node.status()).into_response())
}

async fn cluster_metrics(State(node): State<Node>) -> Response {
    Json(node.status()).into_response()
}

async fn cluster_snapshot(State(node): State<Node>) -> Result<Response, Failure> {
    node.trigger_snapshot().await?;
    Ok(Json(node.status()).into_response())
}
