//! The README's axum example as a user runs it (`cargo run --example axum_counter --features
//! tower-sessions`): a real server process, a real HTTP client with
//! a cookie jar, a SIGKILL, a restart, and the counter goes on.
//!
//! Scenario: `examples/axum_counter.rs` started on 127.0.0.1 port 0 (it prints the address it
//! bound), driven by reqwest. Invariants: each answered visit is durable (the counter after a
//! SIGKILL and restart continues from the last answer); each visitor (cookie jar) has its own
//! counter.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use support::child::ChildOutput;

/// The example's binary, built (or found up to date, which takes a fraction of a second) with
/// the same cargo and profile as this test, so the test never runs a stale build.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/axum_counter
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "axum_counter",
        "--features",
        "tower-sessions",
    ]);
    // The profile `cargo test` built this test (and, with it, the example) in, so a run of the
    // whole suite finds the example built and a fresh machine compiles no second profile.
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    } else {
        cmd.args(["--profile", "test"]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building the example failed");
    profile_dir.join("examples").join("axum_counter")
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// With `env` set (the encryption key, say).
    fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(example_binary())
            .args(["--addr", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let line = ChildOutput::new(child.stdout.take().expect("stdout"))
            .next_line()
            .unwrap_or_default();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
            .to_string();
        Server { child, url }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn visit(client: &reqwest::Client, server: &Server) -> String {
    let resp = client.get(format!("{}/", server.url)).send().await.expect("GET /");
    assert!(resp.status().is_success(), "status {}", resp.status());
    resp.text().await.expect("body").trim().to_string()
}

fn browser() -> reqwest::Client {
    // One jar per simulated browser; cookies are per host, not per port, so the jar follows the
    // server across restarts on a new port.
    let jar = Arc::new(reqwest::cookie::Jar::default());
    reqwest::Client::builder().cookie_provider(jar).build().expect("client")
}

#[tokio::test]
async fn counter_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let alice = browser();
    let bob = browser();

    let server = Server::start(dir.path());
    for n in 1..=3 {
        assert_eq!(visit(&alice, &server).await, format!("visits: {n}"));
    }
    assert_eq!(visit(&bob, &server).await, "visits: 1", "each visitor has a counter");
    server.kill();

    let server = Server::start(dir.path());
    assert_eq!(
        visit(&alice, &server).await,
        "visits: 4",
        "alice's counter survived the kill"
    );
    assert_eq!(visit(&bob, &server).await, "visits: 2", "and bob's");
    assert_eq!(
        visit(&browser(), &server).await,
        "visits: 1",
        "a new visitor starts at 1"
    );
    server.kill();
}

/// The example's encrypted mode: the key from `SESSIONDB_KEY_FILE`; sessions survive a kill,
/// the visitor's counter never appears in the store's files in clear, and a start without the
/// key fails (it never serves an empty store in place of the encrypted one).
#[tokio::test]
async fn encrypted_counter_with_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("key.hex");
    std::fs::write(&key_file, format!("{}\n", "3c".repeat(32))).unwrap();
    let env = [("SESSIONDB_KEY_FILE", key_file.to_str().unwrap())];
    let alice = browser();
    let server = Server::start_with(dir.path(), &env);
    for n in 1..=2 {
        assert_eq!(visit(&alice, &server).await, format!("visits: {n}"));
    }
    server.kill();
    assert!(dir.path().join("KEYRING").exists(), "the store is encrypted");
    let server = Server::start_with(dir.path(), &env);
    assert_eq!(visit(&alice, &server).await, "visits: 3");
    server.kill();
    let plain = "\"visits\"";
    for entry in std::fs::read_dir(dir.path().join("wal")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "session data in clear"
        );
    }
    let status = Command::new(example_binary())
        .args(["--addr", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run without the key");
    assert!(!status.status.success(), "started without the key");
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("encrypted"), "says why: {err}");
}
