//! The `sessiondb` command-line tool. It only calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sessiondb::{Db, Options};

/// sessiondb: an embedded, crash-safe key-value store for session state.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write sessions durably from several threads, close, reopen, and verify every one.
    Demo {
        /// The store's directory (created if missing).
        #[arg(default_value = "sessiondb-demo")]
        dir: PathBuf,
        /// Writer threads.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// Sessions to write in all.
        #[arg(long, default_value_t = 100_000)]
        sessions: u64,
        /// Bytes of session data.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    /// Print a store's statistics.
    Stats {
        /// The store's directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            dir,
            threads,
            sessions,
            value_size,
        } => demo(dir, threads.max(1), sessions, value_size),
        Command::Stats { dir } => stats(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiondb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A session id for `n`, unique per run (`run` differs between runs so reruns add sessions).
fn session_key(run: u64, n: u64) -> String {
    format!("session:{:016x}{:016x}", mix(run), mix(run ^ mix(n)))
}

/// splitmix64: spreads ids over the key space so writes land all over the index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn session_value(n: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{{\"user\":{n},\"data\":\"").into_bytes();
    v.resize(size.saturating_sub(2), b'x');
    v.extend_from_slice(b"\"}");
    v.truncate(size);
    v
}

fn demo(dir: PathBuf, threads: usize, sessions: u64, value_size: usize) -> sessiondb::Result<()> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    println!(
        "sessiondb demo: {} (SyncMode::Always: every write is fsynced before it returns)",
        dir.display()
    );
    let open_started = Instant::now();
    let db = Arc::new(Db::open_with(&dir, Options::new())?);
    println!("opened in {:.1} ms", open_started.elapsed().as_secs_f64() * 1e3);

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads as u64)
        .map(|t| {
            let db = db.clone();
            let done = done.clone();
            std::thread::spawn(move || -> sessiondb::Result<()> {
                let mut n = t;
                while n < sessions {
                    db.put(session_key(run, n), session_value(n, value_size))?;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += threads as u64;
                }
                Ok(())
            })
        })
        .collect();
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::park_timeout(Duration::from_millis(500));
        let d = done.load(Ordering::Relaxed);
        eprint!("\r  written {d:>10} / {sessions} sessions");
    }
    eprintln!();
    for w in workers {
        w.join().map_err(|_| sessiondb::Error::Closed)??;
    }
    let secs = started.elapsed().as_secs_f64();
    let s = db.stats();
    println!(
        "wrote {sessions} sessions of {value_size} B from {threads} threads in {secs:.2} s: {:.0} durable writes/s",
        sessions as f64 / secs
    );
    println!(
        "fsyncs: {}, commit groups: {}, mean group size: {:.1}, largest: {}",
        s.fsyncs,
        s.commit_groups,
        s.records as f64 / s.commit_groups.max(1) as f64,
        s.commit_group_size_max
    );
    println!("group sizes (1, 2-3, 4-7, 8-15, ...): {:?}", s.commit_group_sizes);
    let db = Arc::try_unwrap(db).map_err(|_| sessiondb::Error::Closed)?;
    let close_started = Instant::now();
    db.close()?;
    println!("closed in {:.1} ms", close_started.elapsed().as_secs_f64() * 1e3);

    let reopen_started = Instant::now();
    let db = Db::open(&dir)?;
    let reopen = reopen_started.elapsed();
    let r = &db.stats().recovery;
    println!(
        "reopened in {:.1} ms: snapshot entries {}, log records replayed {}",
        reopen.as_secs_f64() * 1e3,
        r.snapshot_entries,
        r.records_replayed
    );
    let verify_started = Instant::now();
    let mut missing = 0u64;
    for n in 0..sessions {
        if db.get(session_key(run, n))?.as_deref() != Some(&session_value(n, value_size)[..]) {
            missing += 1;
        }
    }
    println!(
        "verified {sessions} sessions in {:.2} s: {missing} missing or wrong",
        verify_started.elapsed().as_secs_f64()
    );
    db.close()?;
    if missing > 0 {
        return Err(sessiondb::Error::Corruption {
            path: dir,
            offset: 0,
            reason: format!("{missing} sessions did not read back"),
        });
    }
    Ok(())
}

fn stats(dir: PathBuf) -> sessiondb::Result<()> {
    let db = Db::open_with(&dir, Options::new().auto_checkpoint(false))?;
    let s = db.stats();
    println!("keys: {}", s.keys);
    println!("live bytes: {}", s.live_bytes);
    println!("log bytes since checkpoint: {}", s.log_bytes_since_checkpoint);
    println!("segments: {}", s.segments);
    println!("snapshots: {}", s.snapshots);
    println!("last checkpoint seq: {}", s.last_checkpoint_seq);
    println!("last seq: {}", s.last_seq);
    println!("recovery: {:?}", s.recovery);
    db.close()
}
