//! Nodes of a replicated store as `sessiondb serve` processes, for tests/cluster_processes.rs
//! and benches/cluster.rs: start, SIGKILL, restart on the same address and directory, and wait
//! (always with a deadline) for what `/cluster/metrics` says.

#![allow(dead_code)] // Each user takes what it needs.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sessiondb_cluster::{ClusterClient, Status};

/// The `sessiondb` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_sessiondb");

/// A node process; killed (SIGKILL) when dropped.
pub struct Proc {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    /// Extra arguments of `serve` (raft times, snapshot policy).
    pub args: Vec<String>,
    child: Option<Child>,
    /// Kept open: the node never writes to a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
    /// How many times it was started.
    pub starts: u32,
}

impl Proc {
    /// Starts node `id` on `addr` with its directory `dir`; returns once it answers.
    pub fn start(id: u64, addr: &str, dir: &Path, args: &[&str]) -> Proc {
        let mut p = Proc {
            id,
            addr: addr.to_string(),
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            _stdout: None,
            starts: 0,
        };
        p.restart();
        p
    }

    /// The file the node's standard error goes to (appended at each start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("stderr")
    }

    /// The last lines of the node's standard error.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the node again (same id, address and directory); returns once it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        std::fs::create_dir_all(&self.dir).expect("the node's directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the node's log file");
        let mut child = Command::new(BIN)
            .args(["serve", "--id", &self.id.to_string(), "--listen", &self.addr, "--dir"])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start sessiondb serve");
        self.starts += 1;
        // The node prints one line once it answers; read it on a thread, to wait with a deadline.
        let out = child.stdout.take().expect("the node's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send((line, reader));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((line, reader)) if line.contains("listening on") => {
                self._stdout = Some(reader);
                self.child = Some(child);
            }
            got => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not start: {:?}\n{}",
                    self.id,
                    got.map(|(l, _)| l),
                    self.log_tail()
                );
            }
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self._stdout = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An address on loopback that was free a moment ago.
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").to_string()
}

/// `sessiondb ARGS...`, run to completion.
pub fn sessiondb(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run sessiondb")
}

/// A node's view, or `None` if it does not answer within 1 s.
pub async fn status(http: &reqwest::Client, addr: &str) -> Option<Status> {
    let r = http
        .get(format!("http://{addr}/cluster/metrics"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

/// The id of the node a running node of `procs` says leads (as a leader itself), within `limit`.
pub async fn leader(http: &reqwest::Client, procs: &[Proc], limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        for p in procs.iter().filter(|p| p.running()) {
            if let Some(s) = status(http, &p.addr).await {
                if s.state == "Leader" {
                    return s.id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader in {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every running node of `procs` has applied the leader's last log index; returns
/// that index.
pub async fn caught_up(http: &reqwest::Client, procs: &[Proc], limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let mut views = Vec::new();
        for p in procs.iter().filter(|p| p.running()) {
            views.push(status(http, &p.addr).await);
        }
        let leader_last = views
            .iter()
            .flatten()
            .find(|s| s.state == "Leader")
            .and_then(|s| s.last_log_index);
        if let Some(last) = leader_last {
            if views
                .iter()
                .all(|v| v.as_ref().and_then(|s| s.last_applied_index) == Some(last))
            {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes not caught up in {limit:?}: {:?}",
            views
                .iter()
                .map(|v| v
                    .as_ref()
                    .map(|s| (s.id, s.state.clone(), s.last_log_index, s.last_applied_index)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` nodes in `root` (`n1`, `n2`, ...), started with `args` and initialised as one cluster;
/// returns them and a client of all of them.
pub fn start_nodes(root: &Path, n: u64, args: &[&str]) -> (Vec<Proc>, ClusterClient) {
    let procs: Vec<Proc> = (1..=n)
        .map(|id| Proc::start(id, &free_addr(), &root.join(format!("n{id}")), args))
        .collect();
    let members: Vec<String> = procs.iter().map(|p| format!("{}={}", p.id, p.addr)).collect();
    let mut init = vec!["cluster", "init", "--node", &procs[0].addr];
    for m in &members {
        init.extend(["--member", m.as_str()]);
    }
    let out = sessiondb(&init);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let client = ClusterClient::new(procs.iter().map(|p| p.addr.clone())).expect("a client");
    (procs, client)
}
