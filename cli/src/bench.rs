//! `sessiondb bench`: the write, read and recovery workloads of `benches/`, sized by the
//! command line, printed as a table. (`cargo bench --bench targets` measures the targets
//! against raw floors; this is the quick look an operator takes on their own disk.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sessiondb::{Db, EncryptionKey, Options, SyncMode};

use crate::out;
use crate::progress;

/// What to run.
pub struct Bench {
    pub dir: Option<PathBuf>,
    pub threads: usize,
    pub value_size: usize,
    pub sync: SyncMode,
    pub seconds: f64,
    /// The store's key (a new store is encrypted with it).
    pub key: Option<EncryptionKey>,
}

/// One row of the table.
struct Row {
    workload: String,
    ops: u64,
    secs: f64,
    /// Per-operation latencies in nanoseconds (empty for one-shot workloads).
    lat: Vec<u64>,
    notes: String,
}

fn key(t: usize, i: u64) -> Vec<u8> {
    format!("bench:{t:03}:{i:012}").into_bytes()
}

/// splitmix64, for the read workload's key choice.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Automatic checkpoints off: the recovery workload then replays the whole log the write
/// workload left (closing would otherwise checkpoint it away), then loads a snapshot of it.
fn options(b: &Bench) -> Options {
    crate::keys::with_key(Options::new().sync_mode(b.sync).auto_checkpoint(false), b.key.as_ref())
}

/// Runs `op(thread, i)` on `threads` threads for `secs` seconds; returns the operations done per
/// thread and every latency.
fn timed<F>(what: &str, threads: usize, secs: f64, op: F) -> sessiondb::Result<(Vec<u64>, Vec<u64>, f64)>
where
    F: Fn(usize, u64) -> sessiondb::Result<()> + Send + Sync,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let bar = progress::spinner(what);
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, done, op) = (&stop, &done, &op);
                scope.spawn(move || -> sessiondb::Result<(u64, Vec<u64>)> {
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        op(t, i)?;
                        lat.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        i += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((i, lat))
                })
            })
            .collect();
        let deadline = Duration::from_secs_f64(secs);
        while started.elapsed() < deadline && workers.iter().any(|w| !w.is_finished()) {
            std::thread::park_timeout((deadline.saturating_sub(started.elapsed())).min(Duration::from_millis(100)));
            bar.set_message(format!("{what}: {} ops", done.load(Ordering::Relaxed)));
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join()).collect::<Vec<_>>()
    });
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut per_thread = Vec::new();
    let mut lat = Vec::new();
    for r in results {
        let (n, l) = r.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        per_thread.push(n);
        lat.extend(l);
    }
    Ok((per_thread, lat, elapsed))
}

pub fn run(b: &Bench) -> sessiondb::Result<()> {
    let (dir, temporary) = match &b.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("sessiondb-bench-{}", std::process::id())),
            true,
        ),
    };
    outln!(
        "sessiondb bench: {} ({} threads, {} B values, {:?}, {} s per workload)",
        dir.display(),
        b.threads,
        b.value_size,
        b.sync,
        b.seconds
    );
    let result = workloads(&dir, b);
    if temporary {
        // NOTE: the bench's own scratch store; nothing else lives there.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rows = result?;
    print_table(&rows);
    Ok(())
}

fn workloads(dir: &Path, b: &Bench) -> sessiondb::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let db = Db::open_with(dir, options(b))?;
    let value = vec![b'v'; b.value_size];
    let before = db.stats();
    let (written, lat, secs) = timed("write", b.threads, b.seconds, |t, i| db.put(key(t, i), &value))?;
    let after = db.stats();
    let groups = after.commit_groups - before.commit_groups;
    rows.push(Row {
        workload: format!("write ({} threads)", b.threads),
        ops: written.iter().sum(),
        secs,
        lat,
        notes: format!(
            "{} fsyncs, mean commit group {:.1}",
            after.fsyncs - before.fsyncs,
            (after.records - before.records) as f64 / groups.max(1) as f64
        ),
    });

    let (reads, lat, secs) = timed("read", b.threads, b.seconds, |t, i| {
        let owner = (mix(i ^ ((t as u64) << 40)) % written.len() as u64) as usize;
        let n = written[owner];
        if n == 0 {
            return Ok(());
        }
        let k = key(owner, mix(i.wrapping_add(t as u64)) % n);
        match db.get(k)? {
            Some(_) => Ok(()),
            None => Err(sessiondb::Error::Corruption {
                path: dir.to_path_buf(),
                offset: 0,
                reason: "a key the bench wrote reads as absent".into(),
            }),
        }
    })?;
    rows.push(Row {
        workload: format!("read ({} threads)", b.threads),
        ops: reads.iter().sum(),
        secs,
        lat,
        notes: "random keys written above".into(),
    });
    let log_bytes = db.stats().log_bytes_since_checkpoint;
    db.close()?;

    // Recovery, twice: replaying the log the write workload left, then loading a snapshot.
    rows.push(reopen("recovery (log replay)", dir, options(b), log_bytes)?);
    let db = Db::open_with(dir, options(b))?;
    db.checkpoint()?;
    db.close()?;
    rows.push(reopen("recovery (snapshot)", dir, options(b), 0)?);
    Ok(rows)
}

fn reopen(what: &str, dir: &Path, opts: Options, log_bytes: u64) -> sessiondb::Result<Row> {
    let started = Instant::now();
    let db = Db::open_with(dir, opts)?;
    let secs = started.elapsed().as_secs_f64();
    let s = db.stats();
    db.close()?;
    let notes = format!(
        "{} keys: {} snapshot entries, {} log records replayed ({})",
        s.keys,
        s.recovery.snapshot_entries,
        s.recovery.records_replayed,
        out::size(log_bytes)
    );
    Ok(Row {
        workload: what.into(),
        ops: 1,
        secs,
        lat: Vec::new(),
        notes,
    })
}

fn pct(sorted: &[u64], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    // NOTE: nearest rank; the index is a bounded fraction of the length.
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    out::duration(Duration::from_nanos(sorted[i]))
}

fn print_table(rows: &[Row]) {
    outln!();
    outln!(
        "| {:<24} | {:>9} | {:>11} | {:>9} | {:>9} | {:>9} | notes",
        "workload",
        "ops",
        "ops/s",
        "p50",
        "p99",
        "max"
    );
    outln!(
        "|{:-<26}|{:->11}|{:->13}|{:->11}|{:->11}|{:->11}|-------",
        "",
        "",
        "",
        "",
        "",
        ""
    );
    for r in rows {
        let mut lat = r.lat.clone();
        lat.sort_unstable();
        let (rate, p50, p99, max) = if lat.is_empty() {
            let t = out::duration(Duration::from_secs_f64(r.secs));
            ("-".to_string(), t.clone(), "-".to_string(), t)
        } else {
            (
                format!("{:.0}", r.ops as f64 / r.secs.max(1e-9)),
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                pct(&lat, 1.0),
            )
        };
        outln!(
            "| {:<24} | {:>9} | {:>11} | {:>9} | {:>9} | {:>9} | {}",
            r.workload,
            r.ops,
            rate,
            p50,
            p99,
            max,
            r.notes
        );
    }
}
