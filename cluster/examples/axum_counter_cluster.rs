//! The per-visitor counter of the root's `examples/axum_counter.rs`, on three nodes: axum +
//! tower-sessions, its sessions replicated by a sessiondb cluster. Any number of app servers
//! share the cluster, so a visitor's counter goes on whichever server answers, and while one of
//! the three nodes is down (the leader included).
//!
//! ```text
//! # three nodes, then one cluster of them (README, "Three nodes")
//! sessiondb serve --id 1 --listen 127.0.0.1:7001 --dir n1   # and 2, 3 on 7002, 7003
//! sessiondb cluster init --node 127.0.0.1:7001 \
//!     --member 1=127.0.0.1:7001 --member 2=127.0.0.1:7002 --member 3=127.0.0.1:7003
//! # app servers, each given every node
//! export SESSIONDB_CLUSTER=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! cargo run -p sessiondb-cluster --example axum_counter_cluster --features tower-sessions -- --addr 127.0.0.1:3000
//! cargo run -p sessiondb-cluster --example axum_counter_cluster --features tower-sessions -- --addr 127.0.0.1:3001
//! curl -c jar -b jar http://127.0.0.1:3000/    # visits: 1
//! curl -c jar -b jar http://127.0.0.1:3001/    # visits: 2, from the other server
//! ```
//!
//! Each visit is committed by a majority of the nodes (each fsyncs it) before its response is
//! sent, so losing a node loses no visit that was answered. Sessions expire after 30 minutes
//! without a visit. The nodes come from `--cluster` or `SESSIONDB_CLUSTER` (comma-separated
//! `host:port`); the app listens on `--addr` (default 127.0.0.1:3000). `RUST_LOG` filters the
//! log on stderr (default `warn`).

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sessiondb_cluster::session::ClusterTowerStore;
use sessiondb_cluster::ClusterClient;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

const COUNTER: &str = "visits";

async fn visit(session: Session) -> Result<String, (StatusCode, String)> {
    let fail = |e: tower_sessions::session::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let visits = session.get::<u64>(COUNTER).await.map_err(fail)?.unwrap_or(0) + 1;
    session.insert(COUNTER, visits).await.map_err(fail)?;
    Ok(format!("visits: {visits}\n"))
}

fn usage() -> ! {
    eprintln!("usage: axum_counter_cluster [--addr HOST:PORT] [--cluster HOST:PORT,HOST:PORT,...]");
    eprintln!("       (the nodes from --cluster or SESSIONDB_CLUSTER)");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut addr: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut nodes = std::env::var("SESSIONDB_CLUSTER").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v.parse().unwrap_or_else(|_| usage()),
            ("--cluster", Some(v)) => nodes = v,
            _ => usage(),
        }
    }
    let nodes: Vec<String> = nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if nodes.is_empty() {
        usage();
    }

    // The client talks to any node and follows the leader; give it every node.
    let client = ClusterClient::new(nodes)?;
    let store = ClusterTowerStore::new(client);
    // Expired sessions are never loaded, and the cluster drops them at their deadline: no
    // deletion task is needed.
    let sessions = SessionManagerLayer::new(store)
        .with_secure(false) // plain http on localhost
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    let app = Router::new().route("/", get(visit)).layer(sessions);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
