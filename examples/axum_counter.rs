//! A per-visitor counter that survives a restart: axum + tower-sessions over sessiondb.
//!
//! ```text
//! cargo run --example axum_counter --features tower-sessions -- [--addr 127.0.0.1:3000] [--dir DIR]
//! curl -c jar -b jar http://127.0.0.1:3000/    # visits: 1, 2, 3, ... even across restarts
//! ```
//!
//! Each visit is saved durably (fsynced) before its response is sent, so killing the server
//! loses no visit it has answered. Sessions expire after 30 minutes without a visit.
//!
//! Encrypted at rest: give the store's key in `SESSIONDB_KEY` (64 hex characters) or in a file
//! named by `SESSIONDB_KEY_FILE` (32 raw bytes or 64 hex characters), as a secrets manager or a
//! systemd credential would provide it. Make one with `sessiondb keygen key.hex` (or
//! `head -c 32 /dev/urandom > key.bin`), keep it outside the store's directory, and never lose
//! it: without it the sessions cannot be read.
//!
//! The library's log (docs/design.md, "Logging (tracing)": open and recovery, checkpoints,
//! failures in the background, a full disk, a poisoned store) goes to stderr; `RUST_LOG`
//! filters it (default `sessiondb=info`; e.g. `RUST_LOG=sessiondb=debug`).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::routing::get;
use axum::Router;
use sessiondb::session::tower::TowerStore;
use sessiondb::session::SessionStore;
use sessiondb::{EncryptionKey, Options};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

const COUNTER: &str = "visits";

async fn visit(session: Session) -> Result<String, (axum::http::StatusCode, String)> {
    let fail = |e: tower_sessions::session::Error| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let visits = session.get::<u64>(COUNTER).await.map_err(fail)?.unwrap_or(0) + 1;
    session.insert(COUNTER, visits).await.map_err(fail)?;
    Ok(format!("visits: {visits}\n"))
}

/// The store's encryption key, if the environment gives one: `SESSIONDB_KEY` (hex) or the file
/// `SESSIONDB_KEY_FILE` names. Never printed, and wiped from memory when dropped.
fn key_from_env() -> Result<Option<EncryptionKey>, Box<dyn std::error::Error>> {
    if let Ok(hex) = std::env::var("SESSIONDB_KEY") {
        return Ok(Some(EncryptionKey::from_hex(&hex)?));
    }
    if let Some(path) = std::env::var_os("SESSIONDB_KEY_FILE") {
        let contents = zeroize::Zeroizing::new(std::fs::read(&path)?);
        return Ok(Some(EncryptionKey::from_key_file_contents(&contents)?));
    }
    Ok(None)
}

fn usage() -> ! {
    eprintln!("usage: axum_counter [--addr HOST:PORT] [--dir DIR]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // sessiondb's events to stderr (stdout carries the "listening on" line).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sessiondb=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let mut options = Options::new();
    if let Some(key) = key_from_env()? {
        options = options.encryption_key(key);
    }
    // (An encrypted store opened without its key, or with another, fails here with a message
    // that says so; it is never served empty.)
    let sessions = SessionStore::open_with(&dir, options).map_err(|e| e.to_string())?;
    let store = TowerStore::new(sessions);
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
