//! `sessiondb serve` (a node of a replicated store) and `sessiondb cluster ...` (its
//! operators' commands), over the node's HTTP API (docs/cluster.md).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use sessiondb_cluster::http::{AddLearnerRequest, ChangeMembershipRequest, InitRequest, LEADER_HEADER};
use sessiondb_cluster::network::HttpNetwork;
use sessiondb_cluster::{ClusterError, Node, NodeConfig, NodeId, Status};

/// `sessiondb serve`.
#[derive(Args)]
pub struct Serve {
    /// This node's id: a number unique in the cluster, the same at every start.
    #[arg(long)]
    id: NodeId,
    /// The address to listen on (`host:port`).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The node's directory (its raft log and state stores; created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Ms between the leader's heartbeats.
    #[arg(long, default_value_t = NodeConfig::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// A follower calls an election after this many ms without a leader (at random up to twice it).
    #[arg(long, default_value_t = NodeConfig::default().election_min_ms)]
    election_ms: u64,
    /// Entries applied between two snapshots (the log before a snapshot is purged).
    #[arg(long, default_value_t = NodeConfig::default().snapshot_every)]
    snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers a little behind.
    #[arg(long, default_value_t = NodeConfig::default().keep_logs)]
    keep_logs: u64,
}

/// `sessiondb cluster ...`: each talks to the node at --node (the leader, for changes; a
/// follower answers with the leader's address, and the command follows it).
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show each node's view: role, term, leader, log and applied indexes, members, and on the
    /// leader each follower's lag.
    Status {
        /// The nodes to ask (`host:port`), one or more.
        #[arg(long = "node", value_name = "ADDR", required = true)]
        nodes: Vec<String>,
        /// Print JSON, one object per node.
        #[arg(long)]
        json: bool,
    },
    /// Make a new cluster: the node at --node becomes its first member, with --member
    /// ID=ADDR voters (none: that node alone; add others as learners, then change membership).
    Init {
        #[arg(long = "node", value_name = "ADDR")]
        node: String,
        /// A voter of the new cluster, ID=ADDR; give the node at --node too.
        #[arg(long = "member", value_name = "ID=ADDR")]
        members: Vec<String>,
    },
    /// Add node ID at ADDR as a learner; returns once it is close behind the leader (within
    /// openraft's replication lag threshold).
    #[command(name = "add-learner")]
    AddLearner {
        #[arg(long = "node", value_name = "ADDR")]
        node: String,
        id: NodeId,
        addr: String,
        /// Return at once, without waiting for the learner to catch up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make VOTERS the voters (each already a member, as a learner at least).
    #[command(name = "change-membership")]
    ChangeMembership {
        #[arg(long = "node", value_name = "ADDR")]
        node: String,
        #[arg(required = true)]
        voters: Vec<NodeId>,
        /// Keep the voters removed as learners.
        #[arg(long)]
        retain: bool,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

/// Runs a node until SIGINT or SIGTERM.
pub fn serve(args: Serve) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(serve_async(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiondb serve: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(args: Serve) -> Result<(), String> {
    let config = NodeConfig {
        heartbeat_ms: args.heartbeat_ms.max(1),
        election_min_ms: args.election_ms.max(args.heartbeat_ms + 1),
        election_max_ms: 2 * args.election_ms.max(args.heartbeat_ms + 1),
        snapshot_every: args.snapshot_every.max(1),
        keep_logs: args.keep_logs,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let node = Node::start(args.id, &args.dir, &config, HttpNetwork::new())
        .await
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    // Tests and scripts wait for this line: the node answers from now on.
    println!("sessiondb node {} listening on {local}", args.id);
    let stop = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    };
    let served = sessiondb_cluster::http::serve(node.clone(), listener, stop).await;
    let stopped = node.shutdown().await;
    served.map_err(|e| format!("serving on {local}: {e}"))?;
    stopped.map_err(|e| e.to_string())
}

/// Runs an operator's command.
pub fn cluster(command: ClusterCommand) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(cluster_async(command))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sessiondb cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `body` to `path` on `node`, following a 421's leader address (at most 5 hops) and
/// retrying while the cluster has no leader, for up to 15 s.
async fn post<T: serde::Serialize>(node: &str, path: &str, body: &T) -> Result<(String, Status), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut target = node.to_string();
    loop {
        let url = format!("http://{target}{path}");
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let leader = resp
            .headers()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if status.is_success() {
            let status = serde_json::from_slice(&bytes).map_err(|e| format!("{url}: reply: {e}"))?;
            return Ok((target, status));
        }
        let err = serde_json::from_slice::<ClusterError>(&bytes)
            .map(|e| e.to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{url}: {err}"));
        }
        match leader {
            Some(l) if status.as_u16() == 421 && l != target => target = l,
            _ if status.as_u16() == 421 || status.as_u16() == 503 => {
                // No leader yet (an election): ask again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return Err(format!("{url}: {err}")),
        }
    }
}

async fn status_of(node: &str) -> Result<Status, String> {
    let url = format!("http://{node}/cluster/metrics");
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: reply: {e}"))
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn print_status(addr: &str, s: &Status) {
    println!(
        "{addr}: node {} {} term {} leader {} log {} applied {} snapshot {} purged {}",
        s.id,
        s.state,
        s.term,
        opt(s.leader),
        opt(s.last_log_index),
        opt(s.last_applied_index),
        opt(s.snapshot_index),
        opt(s.purged_index),
    );
    let voters: BTreeSet<NodeId> = s.voters.iter().copied().collect();
    let members: Vec<String> = s
        .nodes
        .iter()
        .map(|(id, a)| format!("{id}={a}{}", if voters.contains(id) { "" } else { " (learner)" }))
        .collect();
    println!("  members: {}", members.join(", "));
    if !s.replication_lag.is_empty() {
        let lag: Vec<String> = s.replication_lag.iter().map(|(id, l)| format!("{id}: {l}")).collect();
        println!("  replication lag (entries): {}", lag.join(", "));
    }
}

async fn cluster_async(command: ClusterCommand) -> Result<ExitCode, String> {
    match command {
        ClusterCommand::Status { nodes, json } => {
            let mut failed = false;
            for addr in &nodes {
                match status_of(addr).await {
                    Ok(s) if json => println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?),
                    Ok(s) => print_status(addr, &s),
                    Err(e) => {
                        eprintln!("sessiondb cluster status: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        ClusterCommand::Init { node, members } => {
            let mut req = InitRequest::default();
            for m in &members {
                let parsed = m
                    .split_once('=')
                    .filter(|(_, addr)| !addr.is_empty())
                    .and_then(|(id, addr)| Some((id.parse::<NodeId>().ok()?, addr.to_string())));
                let Some((id, addr)) = parsed else {
                    // A usage error, as clap reports one.
                    eprintln!("sessiondb cluster init: --member {m:?}: expected ID=ADDR, e.g. 1=127.0.0.1:7001");
                    return Ok(ExitCode::from(2));
                };
                req.members.insert(id, addr);
            }
            let (addr, s) = post(&node, "/cluster/init", &req).await?;
            print_status(&addr, &s);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::AddLearner {
            node,
            id,
            addr,
            no_wait,
        } => {
            let req = AddLearnerRequest {
                id,
                addr,
                blocking: !no_wait,
            };
            let (addr, s) = post(&node, "/cluster/add-learner", &req).await?;
            print_status(&addr, &s);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::ChangeMembership { node, voters, retain } => {
            let req = ChangeMembershipRequest {
                voters: voters.into_iter().collect(),
                retain,
            };
            let (addr, s) = post(&node, "/cluster/change-membership", &req).await?;
            print_status(&addr, &s);
            Ok(ExitCode::SUCCESS)
        }
    }
}
