//! The raft RPCs between nodes over HTTP: a POST of the request, encoded by [`crate::codec`],
//! to `/raft/append`, `/raft/vote` or `/raft/snapshot` on the target's address; the reply is
//! `Result<reply, RaftError>`, encoded the same way ([`crate::http`] serves them).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{codec, NodeId, TypeConfig};

/// Makes HTTP connections to other nodes. Clones share one connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
}

impl Default for HttpNetwork {
    fn default() -> Self {
        HttpNetwork::new()
    }
}

impl HttpNetwork {
    pub fn new() -> HttpNetwork {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpNetwork { client }
    }
}

/// A connection to one node.
pub struct HttpConnection {
    client: reqwest::Client,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpConnection {
        HttpConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// An error of the transport, as a plain error openraft can carry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl HttpConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{path}", self.addr);
        let body = codec::encode(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&Transport(format!("encoding {path}: {e}")))))?;
        let sent = self
            .client
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            // Nothing listens there (a node down): openraft backs off before it tries again.
            Err(e) if e.is_connect() => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(RPCError::Network(NetworkError::new(&Transport(format!(
                "{url}: HTTP {status}: {text}"
            )))));
        }
        let reply: Result<Resp, RaftError<NodeId, E>> = codec::decode(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&Transport(format!("{url}: reply: {e}")))))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A node that is down is tried again every 200 ms: it is back soon after a restart.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
