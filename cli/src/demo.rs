//! `sessiondb demo`: the README's main job. Writes sessions durably from several threads with
//! live progress, closes, reopens, and verifies every one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::{Db, EncryptionKey, Options};

use crate::keys::with_key;
use crate::out;
use crate::progress;

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

pub fn run(
    dir: &Path,
    threads: usize,
    sessions: u64,
    value_size: usize,
    key: Option<&EncryptionKey>,
) -> sessiondb::Result<()> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    outln!(
        "sessiondb demo: {} (SyncMode::Always: every write is fsynced before it returns)",
        dir.display()
    );
    let open_started = Instant::now();
    let db = Arc::new(Db::open_with(dir, with_key(Options::new(), key))?);
    outln!("opened in {:.1} ms", open_started.elapsed().as_secs_f64() * 1e3);

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
    let bar = progress::bar(sessions, "written");
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::park_timeout(Duration::from_millis(100));
        bar.set_position(done.load(Ordering::Relaxed));
    }
    bar.finish_and_clear();
    for w in workers {
        w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let s = db.stats();
    outln!(
        "wrote {sessions} sessions of {value_size} B from {threads} threads in {secs:.2} s: {:.0} durable writes/s",
        sessions as f64 / secs
    );
    outln!(
        "fsyncs: {}, commit groups: {}, mean group size: {:.1}, largest: {}",
        s.fsyncs,
        s.commit_groups,
        s.records as f64 / s.commit_groups.max(1) as f64,
        s.commit_group_size_max
    );
    outln!("group sizes (1, 2-3, 4-7, 8-15, ...): {:?}", s.commit_group_sizes);
    let q = |p: f64| {
        s.fsync_latency
            .quantile(p)
            .map_or_else(|| "-".to_string(), out::duration)
    };
    outln!(
        "fsync latency: p50 under {}, p99 under {}, max {}",
        q(0.5),
        q(0.99),
        out::duration(s.fsync_latency.max)
    );
    let db = Arc::try_unwrap(db).unwrap_or_else(|_| unreachable!("the workers are joined"));
    let close_started = Instant::now();
    db.close()?;
    outln!("closed in {:.1} ms", close_started.elapsed().as_secs_f64() * 1e3);

    let reopen_started = Instant::now();
    let db = Db::open_with(dir, with_key(Options::new(), key))?;
    let reopen = reopen_started.elapsed();
    let r = &db.stats().recovery;
    outln!(
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
    outln!(
        "verified {sessions} sessions in {:.2} s: {missing} missing or wrong",
        verify_started.elapsed().as_secs_f64()
    );
    db.close()?;
    if missing > 0 {
        return Err(sessiondb::Error::Corruption {
            path: dir.to_path_buf(),
            offset: 0,
            reason: format!("{missing} sessions did not read back"),
        });
    }
    Ok(())
}
