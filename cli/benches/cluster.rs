//! Issue 18's figures: replicated durable writes against one node's, and failover time.
//!
//! ```sh
//! cargo bench -p sessiondb-cli --bench cluster                 # about 2 minutes
//! cargo bench -p sessiondb-cli --bench cluster -- --quick      # about 40 s
//! cargo bench -p sessiondb-cli --bench cluster -- --only writes   # or: failover
//! ```
//!
//! - **writes**: 64 clients (env `SESSIONDB_BENCH_CLIENTS`) each put unique keys with a
//!   512-byte value (`SESSIONDB_BENCH_VALUE`) as fast as they are acknowledged, for 5 s
//!   (`SESSIONDB_BENCH_SECS`): first into one `Db` in `SyncMode::Always` (64 threads, this
//!   process), then into a cluster of three `sessiondb serve` processes on loopback (64 tokio
//!   tasks, `ClusterClient`, each write committed on a quorum and applied before it is
//!   acknowledged), and, to tell the cost of replication from the cost of the client's HTTP
//!   path, into a one-node cluster. Puts/s and latency percentiles of each, and their ratios,
//!   in the same run.
//! - **failover**: with one client writing, the leader is killed (SIGKILL) 20 times
//!   (`SESSIONDB_BENCH_KILLS`); each time, the time from the kill to the first write
//!   acknowledged by the new leader. The killed node is restarted and caught up before the next
//!   kill. p50, p99 and max. `SESSIONDB_BENCH_ELECTION_MS` sets the nodes' `--election-ms`.
//!
//! `SESSIONDB_BENCH_NODES=host:port,...` runs the replicated writes against a cluster already
//! running (to profile its nodes) instead of starting one.
//!
//! Stores go in `$SESSIONDB_BENCH_DIR` (default `/tmp`), in `sessiondb-cluster-bench-<pid>`,
//! removed at the end. docs/benchmarks.md records a run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::{Db, Options, SyncMode};
use sessiondb_cluster::{ClusterClient, Consistency, Expiry};

#[path = "../tests/cluster_support/mod.rs"]
mod cluster_support;

use cluster_support::{caught_up, leader, start_nodes};

struct Settings {
    clients: usize,
    value: usize,
    secs: f64,
    kills: usize,
    only: Option<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    Settings {
        clients: env_or("SESSIONDB_BENCH_CLIENTS", 64),
        value: env_or("SESSIONDB_BENCH_VALUE", 512),
        secs: env_or("SESSIONDB_BENCH_SECS", if quick { 2.0 } else { 5.0 }),
        kills: env_or("SESSIONDB_BENCH_KILLS", if quick { 5 } else { 20 }),
        only,
    }
}

/// Latencies in µs: p50, p99, max.
fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99), v[v.len() - 1])
}

/// One node, 64 threads, SyncMode::Always: puts/s and latencies.
fn single_node(s: &Settings, root: &Path) -> (f64, Vec<u64>) {
    let db = Arc::new(Db::open_with(root.join("single"), Options::new().sync_mode(SyncMode::Always)).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..s.clients)
        .map(|t| {
            let (db, stop, value) = (db.clone(), stop.clone(), vec![7u8; s.value]);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    db.put(format!("c{t}/{i}"), &value).expect("put");
                    lat.push(t0.elapsed().as_micros() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(s.secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u64> = threads.into_iter().flat_map(|t| t.join().expect("writer")).collect();
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    (rate, lat)
}

/// Three nodes, 64 tasks: puts/s and latencies.
/// `nodes` nodes (1: a one-node cluster, the same client and HTTP path without replication),
/// 64 tasks: puts/s and latencies.
async fn replicated(s: &Settings, root: &Path, nodes: u64) -> (f64, Vec<u64>) {
    // SESSIONDB_BENCH_NODES=a,b,c: a cluster already running (to profile its nodes).
    let (procs, client) = match std::env::var("SESSIONDB_BENCH_NODES") {
        Ok(nodes) => (Vec::new(), ClusterClient::new(nodes.split(',')).expect("a client")),
        Err(_) => start_nodes(&root.join(format!("cluster-{nodes}")), nodes, &[]),
    };
    let http = reqwest::Client::new();
    if !procs.is_empty() {
        leader(&http, &procs, Duration::from_secs(10)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..s.clients)
        .map(|t| {
            let (client, stop, failed, value) = (client.clone(), stop.clone(), failed.clone(), vec![7u8; s.value]);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match client.put(&format!("c{t}/{i}"), value.clone(), Expiry::Never).await {
                        Ok(_) => lat.push(t0.elapsed().as_micros() as u64),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(s.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "writes failed with all nodes up");
    // A read back: the data is there (and the client still works).
    let got = client.get("c0/0", Consistency::Linearizable).await.expect("a read");
    assert_eq!(got.map(|g| g.value.len()), Some(s.value));
    drop(procs);
    (rate, lat)
}

/// Kills the leader `kills` times; the time to the first write the new leader acknowledges.
async fn failover(s: &Settings, root: &Path) -> Vec<u64> {
    // SESSIONDB_BENCH_ELECTION_MS: the nodes' --election-ms (default: serve's, 300).
    let election = std::env::var("SESSIONDB_BENCH_ELECTION_MS").ok();
    let args: Vec<&str> = match &election {
        Some(ms) => vec!["--election-ms", ms.as_str()],
        None => Vec::new(),
    };
    let (mut procs, client) = start_nodes(&root.join("failover"), 3, &args);
    let client = client.with_deadline(Duration::from_secs(30));
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for round in 0..s.kills {
        let l = leader(&http, &procs, Duration::from_secs(10)).await;
        caught_up(&http, &procs, Duration::from_secs(30)).await;
        client
            .put(&format!("warm/{round}"), b"x".to_vec(), Expiry::Never)
            .await
            .expect("a write before the kill");
        let victim = procs.iter().position(|p| p.id == l).expect("the leader is one of ours");
        let killed_at = Instant::now();
        procs[victim].kill();
        // Writes go on until one is acknowledged; each by a node other than the victim.
        let mut n = 0;
        loop {
            n += 1;
            if client
                .put(&format!("after/{round}/{n}"), b"x".to_vec(), Expiry::Never)
                .await
                .is_ok()
            {
                break;
            }
        }
        times.push(killed_at.elapsed().as_micros() as u64);
        procs[victim].restart();
    }
    times
}

fn fmt_ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` (and `cargo test --benches`) must not run the bench.
        return;
    }
    let s = settings();
    let base = std::env::var_os("SESSIONDB_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let root = base.join(format!("sessiondb-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("the bench directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let want = |part: &str| s.only.as_deref().is_none_or(|o| o == part);
    println!(
        "clients {}, value {} B, {} s each; cpus {}",
        s.clients,
        s.value,
        s.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("writes") {
        let (one, one_lat) = single_node(&s, &root);
        let (http1, http1_lat) = rt.block_on(replicated(&s, &root, 1));
        let (three, three_lat) = rt.block_on(replicated(&s, &root, 3));
        let (p50h, p99h, maxh) = percentiles(http1_lat);
        let (p50a, p99a, maxa) = percentiles(one_lat);
        let (p50b, p99b, maxb) = percentiles(three_lat);
        println!(
            "| durable puts at {} clients | puts/s | p50 ms | p99 ms | max ms |",
            s.clients
        );
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| one node, SyncMode::Always | {one:.0} | {} | {} | {} |",
            fmt_ms(p50a),
            fmt_ms(p99a),
            fmt_ms(maxa)
        );
        println!(
            "| one node over HTTP (a one-node cluster) | {http1:.0} | {} | {} | {} |",
            fmt_ms(p50h),
            fmt_ms(p99h),
            fmt_ms(maxh)
        );
        println!(
            "| three nodes, replicated | {three:.0} | {} | {} | {} |",
            fmt_ms(p50b),
            fmt_ms(p99b),
            fmt_ms(maxb)
        );
        println!("replicated ÷ one node: {:.2}x (target ≥ 0.3x)", three / one);
        println!("replicated ÷ one node over HTTP: {:.2}x", three / http1);
    }
    if want("failover") {
        let times = rt.block_on(failover(&s, &root));
        let (p50, p99, max) = percentiles(times.clone());
        println!(
            "failover over {} kills: p50 {} ms, p99 {} ms, max {} ms",
            times.len(),
            fmt_ms(p50),
            fmt_ms(p99),
            fmt_ms(max)
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
