//! A per-visitor counter that survives a restart: axum + tower-sessions over sessiondb.
//!
//! ```text
//! cargo run --example axum_counter --features tower-sessions -- [--addr 127.0.0.1:3000] [--dir DIR]
//! curl -c jar -b jar http://127.0.0.1:3000/    # visits: 1, 2, 3, ... even across restarts
//! ```
//!
//! Each visit is saved durably (fsynced) before its response is sent, so killing the server
//! loses no visit it has answered. Sessions expire after 30 minutes without a visit.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::routing::get;
use axum::Router;
use sessiondb::session::tower::TowerStore;
use sessiondb::session::SessionStore;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

const COUNTER: &str = "visits";

async fn visit(session: Session) -> Result<String, (axum::http::StatusCode, String)> {
    let fail = |e: tower_sessions::session::Error| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let visits = session.get::<u64>(COUNTER).await.map_err(fail)?.unwrap_or(0) + 1;
    session.insert(COUNTER, visits).await.map_err(fail)?;
    Ok(format!("visits: {visits}\n"))
}

fn usage() -> ! {
    eprintln!("usage: axum_counter [--addr HOST:PORT] [--dir DIR]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut dir = PathBuf::from("sessiondb-axum-example");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v.parse().unwrap_or_else(|_| usage()),
            ("--dir", Some(v)) => dir = PathBuf::from(v),
            _ => usage(),
        }
    }

    // Opening recovers whatever the last run wrote durably, even if it was killed.
    let store = TowerStore::new(SessionStore::open(&dir)?);
    // Expired sessions are never loaded, and the engine's sweeper frees them in the
    // background: no deletion task is needed (`ExpiredDeletion` is there if you want one).

    let sessions = SessionManagerLayer::new(store)
        .with_secure(false) // plain http on localhost
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    let app = Router::new().route("/", get(visit)).layer(sessions);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The test reads this line to find the port when started with port 0.
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
