//! The issue's performance targets, each measured against a raw floor measured in the same run.
//!
//! ```sh
//! cargo bench --bench targets               # full run (about 1-2 minutes)
//! cargo bench --bench targets -- --quick    # smaller run (about 30 s)
//! cargo bench --bench targets -- --only w3  # some sections: w1,w2,w3,reopen,history
//! SESSIONDB_BENCH_DIR=/some/dir cargo bench --bench targets
//! ```
//!
//! Stores and floor files go in `$SESSIONDB_BENCH_DIR` (default: the system temp dir, `/tmp`),
//! in a fresh `sessiondb-targets-<pid>` directory removed at the end (left behind if a
//! measurement panics). Keep the floors and the stores on the same file system: every ratio
//! below divides by a floor from the same run.
//!
//! Floors use `std::fs` directly:
//! - A: `pwrite` + `fdatasync` of a 256 B record, appended into a preallocated, zero-filled,
//!   fsynced file (what sessiondb's segments are).
//! - B: the same, appending to a growing file (every `fdatasync` also commits the size).
//! - G: raw group commit: N client threads hand 256 B records over a channel to one leader that
//!   writes each batch with one `pwrite` and one `fdatasync` into a preallocated file.
//! - C: `pwrite` of one sessiondb-sized record per call into a growing file, then one
//!   `fdatasync` (the syscall + page cache + writeback floor of a lazy-sync writer).
//! - D: the same `pwrite`s appended through preallocated 64 MiB files, zero-filled with 64 KiB
//!   writes (as sessiondb's segments are) and with 1 MiB writes. On Linux 6.x ext4 (large
//!   folios) the fill's write size changes the cost of every later small `pwrite` into the file
//!   (here 1 MiB fills halve it), which is why sessiondb fills in 64 KiB writes.
//! - R: map the snapshot file, CRC32 all of it, and build a `BTreeMap` of the same keys from
//!   sorted input (what any open that verifies a snapshot and loads an ordered in-memory index
//!   of boxed keys must do). Also run in a fresh process.
//!
//! Reopen times are measured in a fresh process (this binary re-run with `--reopen-child`), as
//! an application restart would see them: warm page cache, fresh heap.
//!
//! CPU time (user + system, all threads,
//! from /proc/self/stat) is reported per operation next to wall-clock numbers.
//!
//! The output is a markdown table plus details; docs/benchmarks.md records a run.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sessiondb::{Db, Options, Stats, SyncMode};

const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 256;
const FLOOR_RECORD: usize = 256;
/// The write size sessiondb's segments are zero-filled with (`ZERO_CHUNK_BYTES` in
/// src/wal/writer.rs).
const ZERO_CHUNK: usize = 64 * 1024;

struct Cfg {
    quick: bool,
    /// W1 / floors A, B: ops per round, rounds (interleaved A, B, W1).
    w1_ops: usize,
    w1_rounds: usize,
    w2_secs: f64,
    w2_writers: Vec<usize>,
    w3_puts: usize,
    reopen_keys: usize,
    reopen_reps: usize,
    hist_keys: usize,
    hist_overwrites: usize,
}

impl Cfg {
    fn new(quick: bool) -> Cfg {
        if quick {
            Cfg {
                quick,
                w1_ops: 500,
                w1_rounds: 2,
                w2_secs: 1.0,
                w2_writers: vec![1, 4, 16, 64],
                w3_puts: 200_000,
                reopen_keys: 200_000,
                reopen_reps: 3,
                hist_keys: 2_000,
                hist_overwrites: 300,
            }
        } else {
            Cfg {
                quick,
                w1_ops: 1000,
                w1_rounds: 5,
                w2_secs: 3.0,
                w2_writers: vec![1, 4, 16, 64],
                w3_puts: 1_000_000,
                reopen_keys: 1_000_000,
                reopen_reps: 7,
                hist_keys: 10_000,
                hist_overwrites: 300,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Latencies in nanoseconds.
#[derive(Default, Clone)]
struct Lat(Vec<u64>);

impl Lat {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }
    fn extend(&mut self, other: &Lat) {
        self.0.extend_from_slice(&other.0);
    }
    /// Nearest-rank percentile, in microseconds.
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1] as f64 / 1000.0
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn total_secs(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / 1e9
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Writes `n` as zero-padded decimal digits filling `out`.
fn digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `k` + 15 digits. Built without `format!` so put loops measure sessiondb, not formatting.
/// CPU seconds (user, system) used by this process so far, all threads (/proc/self/stat).
fn cpu() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 12 and 13 after the comm field; ticks of
    // 1/100 s (CLK_TCK is 100 on Linux x86-64).
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN) / 100.0;
    (tick(11), tick(12))
}

/// CPU µs per op (user + sys) since `before`, formatted.
fn cpu_per_op(before: (f64, f64), ops: u64) -> String {
    let now = cpu();
    let (u, s) = (now.0 - before.0, now.1 - before.1);
    let per = |x: f64| x * 1e6 / ops.max(1) as f64;
    format!("CPU {:.1} µs/op (user {:.1} + sys {:.1})", per(u + s), per(u), per(s))
}

fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = *b"k000000000000000";
    digits(&mut k[1..], i);
    k
}

/// `tTTTk` + 11 digits: writer `t`'s `i`th key.
fn thread_key(t: usize, i: u64) -> [u8; KEY_LEN] {
    let mut k = *b"t000k00000000000";
    digits(&mut k[1..4], t as u64);
    digits(&mut k[5..], i);
    k
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![b'v'; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|f| f.sync_all()).expect("fsync dir");
}

/// A file of `size` zeros, written and fsynced with its directory entry (like a segment).
fn preallocated(path: &Path, size: u64) -> File {
    preallocated_in_chunks(path, size, ZERO_CHUNK)
}

/// [`preallocated`] with the zeros written `chunk` bytes per call.
fn preallocated_in_chunks(path: &Path, size: u64, chunk: usize) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create floor file");
    let zeros = vec![0u8; chunk];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(chunk as u64) as usize;
        f.write_all_at(&zeros[..n], at).expect("zero-fill");
        at += n as u64;
    }
    f.sync_all().expect("fsync");
    sync_dir(path.parent().unwrap());
    f
}

fn growing(path: &Path) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create floor file");
    f.sync_all().expect("fsync");
    sync_dir(path.parent().unwrap());
    f
}

/// Waits until sessiondb's background preparer has made the next segment (full size), then
/// fsyncs it from here so its zero-fill writeback is finished before anything is timed.
fn settle(dir: &Path) {
    let wal = dir.join("wal");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut segs: Vec<(PathBuf, u64)> = fs::read_dir(&wal)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                    .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        segs.sort();
        if segs.len() >= 2 && segs.last().unwrap().1 == SEGMENT_SIZE {
            let f = File::open(&segs.last().unwrap().0).expect("open spare");
            f.sync_all().expect("fsync spare");
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: did not see the preallocated spare segment in {}",
                wal.display()
            );
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Let the preparer's own fsync + directory fsync return.
    thread::sleep(Duration::from_millis(200));
}

fn open(dir: &Path, opts: Options) -> Db {
    match Db::open_with(dir, opts) {
        Ok(db) => db,
        Err(e) => panic!("sessiondb open of {} failed: {e}", dir.display()),
    }
}

fn du(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn group_hist(before: &Stats, after: &Stats) -> String {
    let mut parts = Vec::new();
    for (i, (a, b)) in after
        .commit_group_sizes
        .iter()
        .zip(before.commit_group_sizes.iter())
        .enumerate()
    {
        let n = a - b;
        if n > 0 {
            let lo = 1u64 << i;
            let label = if i == 7 {
                format!("{lo}+")
            } else {
                format!("{lo}-{}", (lo << 1) - 1)
            };
            parts.push(format!("{label}:{n}"));
        }
    }
    parts.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Output

struct Row {
    name: String,
    p50: String,
    p99: String,
    p999: String,
    rate: String,
    vs_floor: String,
    target: String,
    met: String,
}

fn us(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.0}/s", x)
    }
}

fn yes(ok: bool) -> String {
    if ok { "**met**" } else { "**not met**" }.into()
}

/// [`yes`] for a target defined at the full run's size: a `--quick` run only indicates it.
fn scaled(quick: bool, ok: bool) -> String {
    if quick {
        format!(
            "{} (indicative: smaller than the target's size)",
            if ok { "met" } else { "not met" }
        )
    } else {
        yes(ok)
    }
}

// ---------------------------------------------------------------------------------------------
// Floors A, B and W1

struct W1Out {
    floor_a: Lat,
    floor_b: Lat,
    w1: Lat,
    a_p50s: Vec<f64>,
    b_p50s: Vec<f64>,
    w1_p50s: Vec<f64>,
    /// CPU seconds (user + sys) spent in the floor A blocks and the W1 blocks.
    cpu_a: f64,
    cpu_w1: f64,
}

fn timed_appends(f: &File, off: &mut u64, cap: Option<u64>, n: usize, rec: &[u8]) -> Lat {
    let mut lat = Lat::default();
    for _ in 0..n {
        if let Some(cap) = cap {
            if *off + rec.len() as u64 > cap {
                *off = 0;
            }
        }
        let t = Instant::now();
        f.write_all_at(rec, *off).expect("floor write");
        f.sync_data().expect("floor fdatasync");
        lat.push(t.elapsed());
        *off += rec.len() as u64;
    }
    lat
}

fn run_w1(root: &Path, cfg: &Cfg) -> W1Out {
    let rec = vec![0xabu8; FLOOR_RECORD];
    let fa = preallocated(&root.join("floor-a.dat"), SEGMENT_SIZE);
    let fb = growing(&root.join("floor-b.dat"));
    let (mut off_a, mut off_b) = (0u64, 0u64);

    let dir = root.join("w1");
    let db = open(&dir, Options::new().sync_mode(SyncMode::Always));
    for i in 0..20 {
        db.put(key(1_000_000_000 + i), value(i)).expect("warm-up put");
    }
    settle(&dir);
    // Warm the floors too (first write to each file).
    timed_appends(&fa, &mut off_a, Some(SEGMENT_SIZE), 20, &rec);
    timed_appends(&fb, &mut off_b, None, 20, &rec);

    let mut out = W1Out {
        floor_a: Lat::default(),
        floor_b: Lat::default(),
        w1: Lat::default(),
        a_p50s: vec![],
        b_p50s: vec![],
        w1_p50s: vec![],
        cpu_a: 0.0,
        cpu_w1: 0.0,
    };
    let cpu_sum = || {
        let (u, s) = cpu();
        u + s
    };
    let s0 = db.stats();
    let mut next = 0u64;
    for _ in 0..cfg.w1_rounds {
        let c0 = cpu_sum();
        let a = timed_appends(&fa, &mut off_a, Some(SEGMENT_SIZE), cfg.w1_ops, &rec);
        out.cpu_a += cpu_sum() - c0;
        let b = timed_appends(&fb, &mut off_b, None, cfg.w1_ops, &rec);
        let mut w = Lat::default();
        let c0 = cpu_sum();
        for _ in 0..cfg.w1_ops {
            let (k, v) = (key(next), value(next));
            next += 1;
            let t = Instant::now();
            if let Err(e) = db.put(k, &v) {
                panic!("W1 put failed: {e}");
            }
            w.push(t.elapsed());
        }
        out.cpu_w1 += cpu_sum() - c0;
        out.a_p50s.push(a.pct(50.0));
        out.b_p50s.push(b.pct(50.0));
        out.w1_p50s.push(w.pct(50.0));
        out.floor_a.extend(&a);
        out.floor_b.extend(&b);
        out.w1.extend(&w);
    }
    let s1 = db.stats();
    println!(
        "W1 store: fsyncs {} for {} records in {} commit groups",
        s1.fsyncs - s0.fsyncs,
        s1.records - s0.records,
        s1.commit_groups - s0.commit_groups
    );
    db.close().expect("close W1");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(root.join("floor-a.dat"));
    let _ = fs::remove_file(root.join("floor-b.dat"));
    out
}

// ---------------------------------------------------------------------------------------------
// W2 and the raw group-commit floor G

struct W2Out {
    secs: f64,
    ops: u64,
    lat: Lat,
    errors: u64,
    first_error: Option<String>,
    hist: String,
    group_max: u64,
    groups: u64,
    fsyncs: u64,
    cpu: String,
}

fn run_w2_db(root: &Path, n: usize, secs: f64) -> W2Out {
    let dir = root.join(format!("w2-{n}"));
    let db = Arc::new(open(&dir, Options::new().sync_mode(SyncMode::Always)));
    for i in 0..20 {
        db.put(key(2_000_000_000 + i), value(i)).expect("warm-up put");
    }
    settle(&dir);
    let s0 = db.stats();
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let db = db.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let v = value(t as u64);
                let mut lat = Lat::default();
                lat.0.reserve(200_000 / n.max(1) + 1000);
                let mut errors = 0u64;
                let mut first_error = None;
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let mut i = 0u64;
                while Instant::now() < end {
                    let k = thread_key(t, i);
                    i += 1;
                    let s = Instant::now();
                    match db.put(k, &v) {
                        Ok(()) => lat.push(s.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                            if errors > 10 {
                                break;
                            }
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let c0 = cpu();
    let mut out = W2Out {
        secs: 0.0,
        ops: 0,
        lat: Lat::default(),
        errors: 0,
        first_error: None,
        hist: String::new(),
        group_max: 0,
        groups: 0,
        fsyncs: 0,
        cpu: String::new(),
    };
    for h in handles {
        match h.join() {
            Ok((lat, errors, fe)) => {
                out.lat.extend(&lat);
                out.errors += errors;
                if out.first_error.is_none() {
                    out.first_error = fe;
                }
            }
            Err(_) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| "writer thread panicked".into());
            }
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out.ops = out.lat.len() as u64;
    out.cpu = cpu_per_op(c0, out.ops);
    let s1 = db.stats();
    out.hist = group_hist(&s0, &s1);
    out.group_max = s1.commit_group_size_max;
    out.groups = s1.commit_groups - s0.commit_groups;
    out.fsyncs = s1.fsyncs - s0.fsyncs;
    match Arc::try_unwrap(db) {
        Ok(db) => db.close().expect("close W2"),
        Err(_) => panic!("W2 store still shared"),
    }
    let _ = fs::remove_dir_all(&dir);
    out
}

fn run_w2_floor(root: &Path, n: usize, secs: f64) -> W2Out {
    let path = root.join(format!("floor-g-{n}.dat"));
    let file = preallocated(&path, SEGMENT_SIZE);
    let (tx, rx) = mpsc::channel::<usize>();
    let mut replies = Vec::new();
    let mut reply_rxs = Vec::new();
    for _ in 0..n {
        let (rtx, rrx) = mpsc::channel::<()>();
        replies.push(rtx);
        reply_rxs.push(rrx);
    }
    let leader = thread::spawn(move || {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut batch = Vec::new();
        let mut off = 0u64;
        let (mut groups, mut max, mut hist) = (0u64, 0u64, [0u64; 8]);
        while let Ok(first) = rx.recv() {
            batch.clear();
            batch.push(first);
            while let Ok(c) = rx.try_recv() {
                batch.push(c);
            }
            buf.clear();
            for _ in &batch {
                buf.extend_from_slice(&[0xcdu8; FLOOR_RECORD]);
            }
            if off + buf.len() as u64 > SEGMENT_SIZE {
                off = 0;
            }
            file.write_all_at(&buf, off).expect("floor G write");
            file.sync_data().expect("floor G fdatasync");
            off += buf.len() as u64;
            groups += 1;
            max = max.max(batch.len() as u64);
            hist[((usize::BITS - 1 - batch.len().leading_zeros()) as usize).min(7)] += 1;
            for &c in &batch {
                let _ = replies[c].send(());
            }
        }
        (groups, max, hist)
    });
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = reply_rxs
        .into_iter()
        .enumerate()
        .map(|(c, rrx)| {
            let tx = tx.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut lat = Lat::default();
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    let s = Instant::now();
                    tx.send(c).expect("send");
                    rrx.recv().expect("reply");
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    drop(tx);
    barrier.wait();
    let start = Instant::now();
    let c0 = cpu();
    let mut lat = Lat::default();
    for h in handles {
        lat.extend(&h.join().expect("floor client"));
    }
    let secs_run = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(c0, lat.len() as u64);
    let (groups, max, hist) = leader.join().expect("floor leader");
    let _ = fs::remove_file(&path);
    let before = Stats::default();
    let mut after = Stats::default();
    after.commit_group_sizes = hist;
    W2Out {
        secs: secs_run,
        ops: lat.len() as u64,
        lat,
        errors: 0,
        first_error: None,
        hist: group_hist(&before, &after),
        group_max: max,
        groups,
        fsyncs: groups,
        cpu,
    }
}

// ---------------------------------------------------------------------------------------------
// W3 and floor C

struct W3Out {
    secs: f64,
    put_secs: f64,
    sync_secs: f64,
    chunk_p50_ms: f64,
    chunk_max_ms: f64,
    stats: Stats,
    cpu: String,
}

/// `n` puts with SyncMode::Never into `dir`, then one sync. Leaves the store open.
fn run_w3(dir: &Path, n: usize, auto_checkpoint: bool) -> (Db, W3Out) {
    let db = open(
        dir,
        Options::new()
            .sync_mode(SyncMode::Never)
            .auto_checkpoint(auto_checkpoint),
    );
    db.put(b"warm-up", b"x").expect("warm-up put");
    settle(dir);
    let v = value(7);
    const CHUNK: usize = 1000;
    let mut chunks = Vec::with_capacity(n / CHUNK + 1);
    let c0 = cpu();
    let start = Instant::now();
    let mut last = start;
    for i in 0..n {
        if let Err(e) = db.put(key(i as u64), &v) {
            panic!("W3 put {i} failed: {e}");
        }
        if (i + 1) % CHUNK == 0 {
            let now = Instant::now();
            chunks.push((now - last).as_secs_f64() * 1000.0);
            last = now;
        }
    }
    let put_secs = start.elapsed().as_secs_f64();
    let t = Instant::now();
    db.sync().expect("W3 sync");
    let sync_secs = t.elapsed().as_secs_f64();
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(c0, n as u64);
    let chunk_max_ms = chunks.iter().cloned().fold(0.0, f64::max);
    let stats = db.stats();
    (
        db,
        W3Out {
            secs,
            put_secs,
            sync_secs,
            chunk_p50_ms: median(&chunks),
            chunk_max_ms,
            stats,
            cpu,
        },
    )
}

fn run_floor_c(root: &Path, n: usize, rec_len: usize) -> (f64, f64, String) {
    let path = root.join("floor-c.dat");
    let f = growing(&path);
    let rec = vec![0x5au8; rec_len];
    let c0 = cpu();
    let start = Instant::now();
    let mut off = 0u64;
    for _ in 0..n {
        f.write_all_at(&rec, off).expect("floor C write");
        off += rec_len as u64;
    }
    let t = Instant::now();
    f.sync_data().expect("floor C fdatasync");
    let sync = t.elapsed().as_secs_f64();
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(c0, n as u64);
    drop(f);
    let _ = fs::remove_file(&path);
    (secs, sync, cpu)
}

/// Floor D: `n` × `pwrite` of `rec_len` bytes appended through preallocated 64 MiB files whose
/// zeros were written `fill_chunk` bytes per call (sessiondb: 64 KiB), then one `fdatasync`.
/// The files are made before the clock starts, as sessiondb's preparer makes segments ahead.
fn run_floor_d(root: &Path, n: usize, rec_len: usize, fill_chunk: usize) -> (f64, String) {
    let per_file = (SEGMENT_SIZE as usize / rec_len) as u64;
    let files: Vec<(PathBuf, File)> = (0..(n as u64).div_ceil(per_file))
        .map(|i| {
            let path = root.join(format!("floor-d-{i}.dat"));
            let f = preallocated_in_chunks(&path, SEGMENT_SIZE, fill_chunk);
            (path, f)
        })
        .collect();
    let rec = vec![0x5au8; rec_len];
    let c0 = cpu();
    let start = Instant::now();
    for i in 0..n as u64 {
        let (file, slot) = (i / per_file, i % per_file);
        files[file as usize]
            .1
            .write_all_at(&rec, slot * rec_len as u64)
            .expect("floor D write");
    }
    files.last().unwrap().1.sync_data().expect("floor D fdatasync");
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(c0, n as u64);
    for (path, _) in files {
        let _ = fs::remove_file(path);
    }
    (secs, cpu)
}

// ---------------------------------------------------------------------------------------------
// Reopen

fn reopen_opts() -> Options {
    Options::new().auto_checkpoint(false)
}

/// Times `Db::open_with` + one get; returns (ms, recovery.duration ms, stats).
/// What one reopen measured.
struct Reopened {
    /// `Db::open_with` + the first get, ms.
    ms: f64,
    /// `stats().recovery.duration`, ms.
    recovery_ms: f64,
    snapshot_entries: u64,
    records_replayed: u64,
}

/// Times `Db::open_with` + one get of `probe` in a fresh process (this binary, re-run with
/// `--reopen-child`), as an application restart would: the page cache is warm, the heap is not.
fn timed_reopen(dir: &Path, probe: &[u8]) -> Reopened {
    let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .arg("--reopen-child")
        .arg(dir)
        .arg(String::from_utf8_lossy(probe).as_ref())
        .output()
        .expect("run reopen child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("reopen: "));
    match (out.status.success(), line) {
        (true, Some(line)) => {
            let f: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN)).collect();
            Reopened {
                ms: f[0],
                recovery_ms: f[1],
                snapshot_entries: f[2] as u64,
                records_replayed: f[3] as u64,
            }
        }
        _ => panic!(
            "reopen of {} failed: {}\n{}",
            dir.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The child side of [`timed_reopen`].
fn reopen_child(dir: &Path, probe: &str) {
    let t = Instant::now();
    let db = open(dir, reopen_opts());
    let got = db.get(probe).expect("first get");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(got.is_some(), "probe key {probe} missing after reopen");
    let st = db.stats();
    println!(
        "reopen: {ms:.3} {:.3} {} {}",
        st.recovery.duration.as_secs_f64() * 1000.0,
        st.recovery.snapshot_entries,
        st.recovery.records_replayed
    );
    db.close().expect("close after reopen");
}

/// Runs [`floor_r`] in a fresh process (like [`timed_reopen`]).
fn floor_r_fresh(dir: &Path, keys: usize) -> (f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .arg("--floor-r-child")
        .arg(dir)
        .arg(keys.to_string())
        .output()
        .expect("run floor R child");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("floor-r: "))
        .expect("floor R child output")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    (f[0], f[1])
}

/// Floor R: map the snapshot file(s) and CRC32 every byte; build a `BTreeMap` of `keys` boxed
/// keys from sorted input. Returns (crc ms, map ms).
fn floor_r(dir: &Path, keys: usize) -> (f64, f64) {
    let t = Instant::now();
    let mut crc = 0u32;
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".snap") {
            let f = File::open(e.path()).expect("open snapshot");
            // SAFETY: the store is closed; nothing writes or truncates the file while mapped.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&f) }.expect("map snapshot");
            crc ^= crc32fast::hash(&map);
        }
    }
    let crc_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let map: BTreeMap<Box<[u8]>, (u64, u64, u64, u32)> = (0..keys as u64)
        .map(|i| (Box::from(&key(i)[..]), (i, 0, i, 256)))
        .collect();
    let map_ms = t.elapsed().as_secs_f64() * 1000.0;
    std::hint::black_box((&map, crc));
    drop(map);
    (crc_ms, map_ms)
}

// ---------------------------------------------------------------------------------------------

fn row(name: String, p50: String, rate_s: String, vs_floor: String, target: &str, met: String) -> Row {
    Row {
        name,
        p50,
        p99: "–".into(),
        p999: "–".into(),
        rate: rate_s,
        vs_floor,
        target: target.into(),
        met,
    }
}

fn lat_row(name: String, lat: &Lat, rate_s: f64, vs_floor: String, target: &str, met: String) -> Row {
    Row {
        name,
        p50: us(lat.pct(50.0)),
        p99: us(lat.pct(99.0)),
        p999: us(lat.pct(99.9)),
        rate: rate(rate_s),
        vs_floor,
        target: target.into(),
        met,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--reopen-child") {
        reopen_child(Path::new(&args[i + 1]), &args[i + 2]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--floor-r-child") {
        let (crc, map) = floor_r(Path::new(&args[i + 1]), args[i + 2].parse().expect("keys"));
        println!("floor-r: {crc:.3} {map:.3}");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|l| l.split(',').map(|x| x.trim().to_lowercase()).collect());
    let run = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == section));
    let cfg = Cfg::new(quick);
    let base = std::env::var_os("SESSIONDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("sessiondb-targets-{}", std::process::id()));
    fs::create_dir_all(&root).expect("create bench dir");
    let put_payload = 4 + sessiondb::internals::format::put_encoded_size(KEY_LEN, VALUE_LEN);
    let on_disk_record = sessiondb::internals::format::RECORD_HEADER_SIZE + put_payload;
    println!(
        "# sessiondb targets ({}), dir {}, {} CPUs, on-disk record for a {KEY_LEN} B key + {VALUE_LEN} B value: {on_disk_record} B",
        if cfg.quick { "--quick" } else { "full" },
        root.display(),
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let dash = || "–".to_string();

    // ---- Floors A, B; W1
    if run("w1") {
        let w1 = run_w1(&root, &cfg);
        let a50 = w1.floor_a.pct(50.0);
        let a_rate = w1.floor_a.len() as f64 / w1.floor_a.total_secs();
        rows.push(lat_row(
            "Floor A: pwrite+fdatasync 256 B, preallocated file".into(),
            &w1.floor_a,
            a_rate,
            "1.00".into(),
            "–",
            dash(),
        ));
        let b50 = w1.floor_b.pct(50.0);
        rows.push(lat_row(
            "Floor B: pwrite+fdatasync 256 B, growing file".into(),
            &w1.floor_b,
            w1.floor_b.len() as f64 / w1.floor_b.total_secs(),
            format!("{:.2} × A", b50 / a50),
            "–",
            dash(),
        ));
        let w1_ratio = w1.w1.pct(50.0) / a50;
        rows.push(lat_row(
            "W1: 1 durable writer (Always), 256 B".into(),
            &w1.w1,
            w1.w1.len() as f64 / w1.w1.total_secs(),
            format!("{w1_ratio:.2} × A"),
            "p50 ≤ 1.15 × A",
            yes(w1_ratio <= 1.15),
        ));
        let round_ratios: Vec<f64> = w1.w1_p50s.iter().zip(&w1.a_p50s).map(|(w, a)| w / a).collect();
        notes.push(format!(
            "W1 per-round p50 (µs): floor A {:?}, floor B {:?}, W1 {:?}; per-round W1/A ratio {:?} (median {:.2})",
            w1.a_p50s.iter().map(|x| x.round()).collect::<Vec<_>>(),
            w1.b_p50s.iter().map(|x| x.round()).collect::<Vec<_>>(),
            w1.w1_p50s.iter().map(|x| x.round()).collect::<Vec<_>>(),
            round_ratios
                .iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            median(&round_ratios),
        ));
        notes.push(format!(
            "W1 CPU per op (user + sys): floor A {:.1} µs, W1 {:.1} µs",
            w1.cpu_a * 1e6 / w1.floor_a.len() as f64,
            w1.cpu_w1 * 1e6 / w1.w1.len() as f64
        ));
    }

    // ---- W2 + floor G
    if run("w2") {
        for &n in &cfg.w2_writers {
            let g = run_w2_floor(&root, n, cfg.w2_secs);
            let d = run_w2_db(&root, n, cfg.w2_secs);
            let g_rate = g.ops as f64 / g.secs;
            let d_rate = d.ops as f64 / d.secs;
            rows.push(lat_row(
                format!("Floor G: raw group commit, {n} clients"),
                &g.lat,
                g_rate,
                "1.00".into(),
                "–",
                dash(),
            ));
            let (target, met) = if n == 64 {
                let ok = d_rate >= 60_000.0 && d.lat.pct(99.0) < 10_000.0 && d.errors == 0;
                ("≥ 60,000/s, p99 < 10 ms", yes(ok))
            } else {
                ("–", dash())
            };
            rows.push(lat_row(
                format!("W2: {n} durable writers"),
                &d.lat,
                d_rate,
                format!("{:.2} × G", d_rate / g_rate),
                target,
                met,
            ));
            notes.push(format!(
                "W2 n={n}: sessiondb {} ops in {:.2} s, {} commit groups (avg {:.1}), max group {}, groups by size [{}], fsyncs {}, {}, errors {}{} | floor G {} ops, {} groups (avg {:.1}), max {}, groups by size [{}], {}",
                d.ops,
                d.secs,
                d.groups,
                d.ops as f64 / d.groups.max(1) as f64,
                d.group_max,
                d.hist,
                d.fsyncs,
                d.cpu,
                d.errors,
                d.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
                g.ops,
                g.groups,
                g.ops as f64 / g.groups.max(1) as f64,
                g.group_max,
                g.hist,
                g.cpu,
            ));
        }
    }

    // ---- W3 + floor C
    let n3 = cfg.w3_puts;
    let w3_dir = root.join("w3");
    let mut reopen_store: Option<Db> = None;
    if run("w3") {
        let (c_secs, c_sync, c_cpu) = run_floor_c(&root, n3, on_disk_record);
        let c_rate = n3 as f64 / c_secs;
        rows.push(row(
            format!("Floor C: {n3} × pwrite {on_disk_record} B (growing file) + 1 fdatasync"),
            dash(),
            rate(c_rate),
            "1.00".into(),
            "–",
            dash(),
        ));
        notes.push(format!(
            "Floor C: {c_secs:.2} s total, final fdatasync {c_sync:.2} s; {c_cpu}"
        ));
        let mut d_seg_rate = f64::NAN;
        for (chunk, label) in [(ZERO_CHUNK, "64 KiB (as sessiondb segments)"), (1024 * 1024, "1 MiB")] {
            let (d_secs, d_cpu) = run_floor_d(&root, n3, on_disk_record, chunk);
            let d_rate = n3 as f64 / d_secs;
            if chunk == ZERO_CHUNK {
                d_seg_rate = d_rate;
            }
            rows.push(row(
                format!("Floor D: same into preallocated files zero-filled in {label} writes"),
                dash(),
                rate(d_rate),
                format!("{:.2} × C", d_rate / c_rate),
                "–",
                dash(),
            ));
            notes.push(format!("Floor D ({label} zero-fill writes): {d_secs:.2} s; {d_cpu}"));
        }

        let (db3, w3) = run_w3(&w3_dir, n3, false);
        let w3_rate = n3 as f64 / w3.secs;
        rows.push(row(
            format!("W3: {n3} puts, Never, auto_checkpoint off, + 1 sync"),
            dash(),
            rate(w3_rate),
            format!("{:.2} × C, {:.2} × D(64 KiB)", w3_rate / c_rate, w3_rate / d_seg_rate),
            if cfg.quick {
                "≥ 600,000/s (target is for 1M puts)"
            } else {
                "≥ 600,000/s"
            },
            scaled(cfg.quick, w3_rate >= 600_000.0),
        ));
        notes.push(format!(
            "W3 (auto_checkpoint off): {:.2} s = puts {:.2} s + final sync {:.3} s; per-1000-put chunk median {:.2} ms, slowest {:.1} ms; segments {}, fsyncs {}; {}",
            w3.secs, w3.put_secs, w3.sync_secs, w3.chunk_p50_ms, w3.chunk_max_ms, w3.stats.segments, w3.stats.fsyncs, w3.cpu
        ));
        reopen_store = Some(db3);

        let w3b_dir = root.join("w3-auto");
        let (db3b, w3b) = run_w3(&w3b_dir, n3, true);
        let w3b_rate = n3 as f64 / w3b.secs;
        rows.push(row(
            format!("W3: {n3} puts, Never, auto_checkpoint on (default), + 1 sync"),
            dash(),
            rate(w3b_rate),
            format!("{:.2} × C, {:.2} × D(64 KiB)", w3b_rate / c_rate, w3b_rate / d_seg_rate),
            "(info)",
            dash(),
        ));
        let t = Instant::now();
        db3b.close().expect("close W3 auto store");
        notes.push(format!(
            "W3 (auto_checkpoint on): {:.2} s = puts {:.2} s + sync {:.3} s; chunk median {:.2} ms, slowest {:.1} ms; checkpoints during run {}; {}; close took {:.0} ms",
            w3b.secs,
            w3b.put_secs,
            w3b.sync_secs,
            w3b.chunk_p50_ms,
            w3b.chunk_max_ms,
            w3b.stats.checkpoints,
            w3b.cpu,
            t.elapsed().as_secs_f64() * 1000.0
        ));
        let _ = fs::remove_dir_all(&w3b_dir);
    }

    // ---- Reopen (1M keys): reuses the W3 store when W3 ran.
    if run("reopen") {
        let n_reopen = cfg.reopen_keys;
        let db3 = match reopen_store.take() {
            Some(db) => db,
            None => open(
                &w3_dir,
                Options::new().sync_mode(SyncMode::Never).auto_checkpoint(false),
            ),
        };
        let have = db3.stats().keys as usize;
        let v = value(7);
        for i in have.saturating_sub(1)..n_reopen {
            db3.put(key(i as u64), &v).expect("fill put");
        }
        let t = Instant::now();
        db3.checkpoint().expect("checkpoint before reopen");
        let ck_ms = t.elapsed().as_secs_f64() * 1000.0;
        db3.close().expect("close reopen store");
        let (files, bytes) = du(&w3_dir);
        notes.push(format!(
            "Reopen store: {n_reopen} keys; checkpoint took {ck_ms:.0} ms; after close {files} files, {:.1} MiB on disk (includes the preallocated segments)",
            bytes as f64 / 1048576.0
        ));
        // One untimed open warms the page cache.
        let probe = key(12_345 % n_reopen as u64);
        let _ = timed_reopen(&w3_dir, &probe);
        let (mut open_ms, mut rec_ms, mut last) = (Vec::new(), Vec::new(), None);
        for _ in 0..cfg.reopen_reps {
            let r = timed_reopen(&w3_dir, &probe);
            open_ms.push(r.ms);
            rec_ms.push(r.recovery_ms);
            last = Some(r);
        }
        let (mut crc_ms, mut map_ms) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (c, m) = floor_r_fresh(&w3_dir, n_reopen);
            crc_ms.push(c);
            map_ms.push(m);
        }
        let r_floor = median(&crc_ms) + median(&map_ms);
        rows.push(row(
            format!("Floor R: map + CRC32 snapshot, BTreeMap of {n_reopen} keys"),
            format!("{r_floor:.0} ms"),
            dash(),
            "1.00".into(),
            "–",
            dash(),
        ));
        let open_med = median(&open_ms);
        rows.push(row(
            format!("Reopen: {n_reopen} keys × 256 B, open + first get (fresh process)"),
            format!("{open_med:.0} ms"),
            dash(),
            format!("{:.2} × R", open_med / r_floor),
            if cfg.quick {
                "≤ 100 ms (for 1M keys)"
            } else {
                "≤ 100 ms"
            },
            scaled(cfg.quick, open_med <= 100.0),
        ));
        let st = last.unwrap();
        notes.push(format!(
            "Reopen {n_reopen} keys: open+get ms {:?}; recovery.duration ms {:?}; snapshot entries {}, records replayed {}; floor R = CRC32 of mapped snapshot {:.0} ms + BTreeMap build {:.0} ms",
            open_ms.iter().map(|x| x.round()).collect::<Vec<_>>(),
            rec_ms.iter().map(|x| x.round()).collect::<Vec<_>>(),
            st.snapshot_entries,
            st.records_replayed,
            median(&crc_ms),
            median(&map_ms),
        ));
    } else if let Some(db) = reopen_store.take() {
        db.close().expect("close W3 store");
    }
    let _ = fs::remove_dir_all(&w3_dir);

    // ---- History vs no history
    if run("history") {
        let hk = cfg.hist_keys;
        let hist_dir = root.join("hist");
        let flat_dir = root.join("flat");
        let t = Instant::now();
        let db = open(&hist_dir, Options::new().sync_mode(SyncMode::Never));
        for round in 0..cfg.hist_overwrites {
            let v = value(round as u64);
            for i in 0..hk {
                db.put(key(i as u64), &v).expect("history put");
            }
        }
        db.checkpoint().expect("history checkpoint");
        let st = db.stats();
        db.close().expect("close history store");
        let (files, bytes) = du(&hist_dir);
        notes.push(format!(
            "History store: {hk} keys × {} writes each built in {:.1} s ({} checkpoints); after checkpoint+close {files} files, {:.1} MiB",
            cfg.hist_overwrites,
            t.elapsed().as_secs_f64(),
            st.checkpoints,
            bytes as f64 / 1048576.0
        ));
        let db = open(&flat_dir, Options::new().sync_mode(SyncMode::Never));
        let v = value(0);
        for i in 0..hk {
            db.put(key(i as u64), &v).expect("flat put");
        }
        db.checkpoint().expect("flat checkpoint");
        db.close().expect("close flat store");
        let (files, bytes) = du(&flat_dir);
        notes.push(format!(
            "No-history store: {hk} keys × 1 write; after checkpoint+close {files} files, {:.1} MiB",
            bytes as f64 / 1048576.0
        ));
        let probe = key(hk as u64 / 2);
        let _ = timed_reopen(&hist_dir, &probe);
        let _ = timed_reopen(&flat_dir, &probe);
        let (mut h_ms, mut f_ms) = (Vec::new(), Vec::new());
        for _ in 0..cfg.reopen_reps {
            f_ms.push(timed_reopen(&flat_dir, &probe).ms);
            h_ms.push(timed_reopen(&hist_dir, &probe).ms);
        }
        let (h_med, f_med) = (median(&h_ms), median(&f_ms));
        rows.push(row(
            format!("Reopen: {hk} keys, no history (fresh process)"),
            format!("{f_med:.1} ms"),
            dash(),
            "1.00".into(),
            "–",
            dash(),
        ));
        // "No slower": allow 10% (or 1 ms) of timing noise.
        let ok = h_med <= f_med * 1.10 || h_med <= f_med + 1.0;
        rows.push(row(
            format!("Reopen: {hk} keys, history {}× live", cfg.hist_overwrites),
            format!("{h_med:.1} ms"),
            dash(),
            format!("{:.2} × no-history", h_med / f_med),
            "no slower (≤ 1.10 × or +1 ms)",
            yes(ok),
        ));
        notes.push(format!(
            "Reopen ms, no history {:?}; history {:?}",
            f_ms.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
            h_ms.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>()
        ));
        let _ = fs::remove_dir_all(&hist_dir);
        let _ = fs::remove_dir_all(&flat_dir);
    }
    let _ = fs::remove_dir_all(&root);

    // ---- Print
    println!();
    println!("| measurement | p50 | p99 | p99.9 | ops/s | ratio | target | |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name, r.p50, r.p99, r.p999, r.rate, r.vs_floor, r.target, r.met
        );
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    println!("\nTotal bench time {:.1} s", started.elapsed().as_secs_f64());
}
