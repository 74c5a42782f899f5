//! The workloads W1–W7 and the checkpoint-during-writes check. Each records
//! `(workload, engine, metric, value)` rows; `report.rs` turns them into tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::engines::{self, Engine};
use crate::Args;

pub const KEY_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 256;

/// W2's value size: `VALUE_BYTES`, or `SESSIONDB_W2_VALUE_BYTES` (issue 17 measures 4 KiB).
fn w2_value_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("SESSIONDB_W2_VALUE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(VALUE_BYTES)
    })
}
const SESSION_BYTES: usize = 1024;

/// W2's untimed warm-up per writer count: `SESSIONDB_BENCH_W2_WARMUP_MS` of the same writes
/// before the timed rounds (default none). Issue 17 measures a log in its steady state with it:
/// sessiondb's recycled segments exist only after its first checkpoint, as the raw floor's
/// zero-filled file exists before its timing.
fn w2_warmup() -> Duration {
    let ms = std::env::var("SESSIONDB_BENCH_W2_WARMUP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

#[derive(Debug, Clone)]
pub struct Config {
    pub w1: Duration,
    pub w2: Duration,
    pub w3_keys: u64,
    pub w4: Duration,
    pub w7: Duration,
    pub w7_sessions: u64,
    pub w7_threads: usize,
    pub ckpt_keys: u64,
    pub ckpt: Duration,
    pub writers: Vec<usize>,
    pub reopens: usize,
    /// WOPEN: measured reopens of each store per run (after one unmeasured).
    pub wopen_reopens: usize,
}

impl Config {
    pub fn new(args: &Args) -> Config {
        let s = Duration::from_secs;
        if args.quick {
            Config {
                w1: s(1),
                w2: s(1),
                w3_keys: 100_000,
                w4: s(1),
                w7: s(2),
                w7_sessions: 10_000,
                w7_threads: 4,
                ckpt_keys: 100_000,
                ckpt: s(2),
                writers: args.writers.clone(),
                reopens: 1,
                wopen_reopens: 3,
            }
        } else {
            Config {
                w1: s(3),
                w2: s(3),
                w3_keys: 1_000_000,
                w4: s(2),
                w7: s(5),
                w7_sessions: 100_000,
                w7_threads: 4,
                ckpt_keys: 1_000_000,
                ckpt: s(6),
                writers: args.writers.clone(),
                reopens: 3,
                wopen_reopens: 9,
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub run: usize,
    pub workload: String,
    pub engine: String,
    pub metric: String,
    pub value: f64,
}

pub struct Ctx<'a> {
    pub cfg: &'a Config,
    root: &'a Path,
    run: usize,
    values: Values,
    pub rows: Vec<Row>,
}

impl<'a> Ctx<'a> {
    pub fn new(cfg: &'a Config, root: &'a Path, run: usize) -> Ctx<'a> {
        Ctx {
            cfg,
            root,
            run,
            values: Values::new(run as u64),
            rows: Vec::new(),
        }
    }

    fn record(&mut self, workload: &str, engine: &str, metric: &str, value: f64) {
        eprintln!("  {workload:5} {engine:10} {metric:24} {value:.2}");
        self.rows.push(Row {
            run: self.run,
            workload: workload.into(),
            engine: engine.into(),
            metric: metric.into(),
            value,
        });
    }

    /// A fresh, empty directory for one store.
    fn store_dir(&self, engine: &str, what: &str) -> PathBuf {
        let dir = self.root.join(format!("{engine}-{what}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create store dir");
        dir
    }
}

pub fn run(ctx: &mut Ctx, workload: &str, engines: &[String]) {
    match workload {
        "w1" => return w1(ctx, engines),
        "w2" => return w2(ctx, engines),
        "wopen" => return wopen(ctx, engines),
        _ => {}
    }
    // One engine after the other, starting with a different one each run, so that no engine
    // always runs first (on a cold cache) or last (after the others' stores filled the disk).
    let n = engines.len();
    for j in 0..n {
        let e = &engines[(j + ctx.run - 1) % n];
        match workload {
            "w3" if engines::is_durable(e) => w3_to_w6(ctx, e),
            "w4b" if engines::is_durable(e) => w4b(ctx, e),
            "w7" => w7(ctx, e),
            "ckpt" if e == "sessiondb" => ckpt(ctx),
            "w3" | "w4b" | "ckpt" => {}
            other => panic!("unknown workload {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keys and values

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`th 16-byte session id of a key space: random-looking, reproducible.
pub fn key(space: u64, i: u64) -> [u8; KEY_BYTES] {
    let mut k = [0u8; KEY_BYTES];
    let a = splitmix(i ^ space.rotate_left(40));
    k[..8].copy_from_slice(&a.to_le_bytes());
    k[8..].copy_from_slice(&splitmix(a).to_le_bytes());
    k
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 4 MiB of random bytes; values are slices of it at random offsets (incompressible).
pub struct Values(Vec<u8>);

impl Values {
    fn new(seed: u64) -> Values {
        let mut rng = Rng::new(seed ^ 0xDA7A);
        Values((0..(4 << 20) / 8).flat_map(|_| rng.next().to_le_bytes()).collect())
    }
    fn get(&self, rng: &mut Rng, len: usize) -> &[u8] {
        let off = rng.below((self.0.len() - len) as u64) as usize;
        &self.0[off..off + len]
    }
}

// ---------------------------------------------------------------------------------------------
// latencies

pub struct Lat(Vec<u64>);

impl Lat {
    fn new() -> Lat {
        Lat(Vec::with_capacity(1 << 16))
    }
    fn push(&mut self, since: Instant) {
        self.0.push(since.elapsed().as_nanos() as u64);
    }
    fn merge(all: Vec<Lat>) -> Lat {
        let mut v: Vec<u64> = all.into_iter().flat_map(|l| l.0).collect();
        v.sort_unstable();
        Lat(v)
    }
    fn sorted(mut self) -> Lat {
        self.0.sort_unstable();
        self
    }
    /// Percentile in µs of a sorted set.
    fn pct_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 * p / 100.0) as usize).min(self.0.len() - 1);
        self.0[i] as f64 / 1e3
    }
}

// ---------------------------------------------------------------------------------------------
// W1 and W2: durable writes, interleaved. The load on this shared machine (and the virtual
// disk's flush latency with it) drifts over seconds, so every engine's store is open at once
// and they take turns in short slices, round-robin (a rotating order), until each has had its
// time: every engine sees the same mix of quiet and busy moments.

/// Engines' stores, open side by side for an interleaved workload.
struct Side {
    stores: Vec<(String, PathBuf, Box<dyn Engine>)>,
}

impl Side {
    fn open(ctx: &Ctx, engines: &[String], what: &str) -> Side {
        let stores = engines
            .iter()
            .map(|e| {
                let dir = ctx.store_dir(e, what);
                let eng = engines::open(e, &dir, None);
                (e.clone(), dir, eng)
            })
            .collect();
        Side { stores }
    }

    /// Runs `slice(engine index, engine)` for every engine, `rounds` times, in a rotating order.
    fn rounds(&self, rounds: usize, mut slice: impl FnMut(usize, &dyn Engine)) {
        let n = self.stores.len();
        for r in 0..rounds {
            for j in 0..n {
                let k = (j + r) % n;
                slice(k, self.stores[k].2.as_ref());
            }
        }
    }

    fn close(self) {
        for (_, dir, eng) in self.stores {
            eng.close();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

const SLICE: Duration = Duration::from_millis(250);

fn rounds_for(total: Duration) -> usize {
    ((total.as_millis() / SLICE.as_millis()) as usize).max(1)
}

fn w1(ctx: &mut Ctx, engines: &[String]) {
    let side = Side::open(ctx, engines, "w1");
    for (_, _, eng) in &side.stores {
        eng.single_writer();
    }
    let n = engines.len();
    let mut lats: Vec<Lat> = (0..n).map(|_| Lat::new()).collect();
    let mut busy = vec![Duration::ZERO; n];
    let mut next = vec![0u64; n];
    let mut rng = Rng::new(1);
    let values = &ctx.values;
    side.rounds(1, |_, eng| {
        let mut w = eng.worker();
        for i in 0..100 {
            w.put(&key(11, (1 << 40) + i), values.get(&mut rng, VALUE_BYTES), true);
        }
    });
    side.rounds(rounds_for(ctx.cfg.w1), |k, eng| {
        let mut w = eng.worker();
        let start = Instant::now();
        while start.elapsed() < SLICE {
            let v = values.get(&mut rng, VALUE_BYTES);
            let key = key(11, next[k]);
            let t = Instant::now();
            w.put(&key, v, true);
            lats[k].push(t);
            next[k] += 1;
        }
        busy[k] += start.elapsed();
    });
    side.close();
    for (k, lat) in lats.into_iter().enumerate() {
        let e = &engines[k];
        let lat = lat.sorted();
        ctx.record("W1", e, "ops_s", lat.0.len() as f64 / busy[k].as_secs_f64());
        ctx.record("W1", e, "p50_us", lat.pct_us(50.0));
        ctx.record("W1", e, "p99_us", lat.pct_us(99.0));
        ctx.record("W1", e, "p999_us", lat.pct_us(99.9));
    }
}

/// Runs `threads` writers of durable puts for `time`; returns (puts, wall time, latencies).
/// Keys: new ones from `base` on, or random ones of the first `overwrite_keys`.
fn durable_writers(
    eng: &dyn Engine,
    values: &Values,
    threads: usize,
    time: Duration,
    key_space: u64,
    base: u64,
    overwrite_keys: Option<u64>,
) -> (u64, Duration, Lat) {
    let barrier = Barrier::new(threads + 1);
    let (lats, elapsed) = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut w = eng.worker();
                    let mut rng = Rng::new(base ^ (1000 + t as u64));
                    let mut lat = Lat::new();
                    barrier.wait();
                    let start = Instant::now();
                    let mut i = base + ((t as u64) << 32);
                    while start.elapsed() < time {
                        let k = match overwrite_keys {
                            Some(n) => key(key_space, rng.below(n)),
                            None => key(key_space, i),
                        };
                        let v = values.get(&mut rng, w2_value_bytes());
                        let t0 = Instant::now();
                        w.put(&k, v, true);
                        lat.push(t0);
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let lats: Vec<Lat> = handles.into_iter().map(|h| h.join().expect("writer thread")).collect();
        (lats, start.elapsed())
    });
    let lat = Lat::merge(lats);
    (lat.0.len() as u64, elapsed, lat)
}

fn w2(ctx: &mut Ctx, engines: &[String]) {
    let n = engines.len();
    for &writers in &ctx.cfg.writers.clone() {
        let side = Side::open(ctx, engines, &format!("w2-{writers}"));
        let mut lats: Vec<Vec<Lat>> = (0..n).map(|_| Vec::new()).collect();
        let mut puts = vec![0u64; n];
        let mut busy = vec![Duration::ZERO; n];
        let mut slice_no = 0u64;
        let values = &ctx.values;
        if !w2_warmup().is_zero() {
            side.rounds(rounds_for(w2_warmup()), |_, eng| {
                slice_no += 1;
                let base = ((writers as u64) << 56) + (slice_no << 44);
                durable_writers(eng, values, writers, SLICE, 21, base, None);
            });
        }
        side.rounds(rounds_for(ctx.cfg.w2), |k, eng| {
            slice_no += 1;
            let base = ((writers as u64) << 56) + (slice_no << 44);
            let (p, t, lat) = durable_writers(eng, values, writers, SLICE, 21, base, None);
            puts[k] += p;
            busy[k] += t;
            lats[k].push(lat);
        });
        for (k, l) in lats.into_iter().enumerate() {
            let lat = Lat::merge(l);
            let e = &engines[k];
            ctx.record(
                "W2",
                e,
                &format!("ops_s@{writers}"),
                puts[k] as f64 / busy[k].as_secs_f64(),
            );
            ctx.record("W2", e, &format!("p99_us@{writers}"), lat.pct_us(99.0));
        }
        side.close();
    }
}

// ---------------------------------------------------------------------------------------------
// W3 bulk load, W6 space, W5 reopen (fresh process), W4 gets, W6 overwrite + compaction

/// Allocated bytes (st_blocks) and apparent bytes (lengths) of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut alloc = 0;
    let mut len = 0;
    for entry in std::fs::read_dir(dir).expect("read store dir") {
        let entry = entry.expect("dir entry");
        let md = entry.metadata().expect("metadata");
        if md.is_dir() {
            let (a, l) = disk_usage(&entry.path());
            alloc += a;
            len += l;
        } else {
            alloc += md.blocks() * 512;
            len += md.len();
        }
    }
    (alloc, len)
}

fn bulk_put(eng: &dyn Engine, values: &Values, n: u64, seed: u64) -> Duration {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    {
        let mut w = eng.worker();
        for i in 0..n {
            w.put(&key(31, i), values.get(&mut rng, VALUE_BYTES), false);
        }
    }
    eng.sync();
    start.elapsed()
}

fn w3_to_w6(ctx: &mut Ctx, e: &str) {
    let n = ctx.cfg.w3_keys;
    let live = (n * (KEY_BYTES + VALUE_BYTES) as u64) as f64;
    let dir = ctx.store_dir(e, "w3");
    let eng = engines::open(e, &dir, Some(n));
    let took = bulk_put(eng.as_ref(), &ctx.values, n, 3);
    ctx.record("W3", e, "ops_s", n as f64 / took.as_secs_f64());
    let (alloc, len) = disk_usage(&dir);
    ctx.record("W6", e, "amp_load", alloc as f64 / live);
    ctx.record("W6", e, "amp_load_apparent", len as f64 / live);
    eng.before_close();
    eng.close();

    w5(ctx, e, &dir, n);

    let mut eng = engines::open(e, &dir, Some(n));
    for threads in [1, 2] {
        let ops = w4(eng.as_ref(), n, threads, ctx.cfg.w4);
        ctx.record("W4", e, &format!("ops_s_{threads}t"), ops);
    }
    bulk_put(eng.as_ref(), &ctx.values, n, 4);
    let (alloc, len) = disk_usage(&dir);
    ctx.record("W6", e, "amp_overwrite", alloc as f64 / live);
    ctx.record("W6", e, "amp_overwrite_apparent", len as f64 / live);
    let t = Instant::now();
    eng.compact();
    ctx.record("W6", e, "compact_ms", t.elapsed().as_secs_f64() * 1e3);
    let (alloc, len) = disk_usage(&dir);
    ctx.record("W6", e, "amp_compact", alloc as f64 / live);
    ctx.record("W6", e, "amp_compact_apparent", len as f64 / live);
    eng.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// W4b: the W3 keys loaded in batches of 1,000 (one batch or transaction each, lazily, then one
/// sync), then random gets on one thread; for sessiondb again after a checkpoint, which
/// rewrites the values into a snapshot (issue 14: a get of a value in a batched log record read
/// the whole record).
fn w4b(ctx: &mut Ctx, e: &str) {
    let n = ctx.cfg.w3_keys;
    let dir = ctx.store_dir(e, "w4b");
    let eng = engines::open(e, &dir, Some(n));
    let mut rng = Rng::new(5);
    let start = Instant::now();
    {
        let mut w = eng.worker();
        let mut batch = Vec::with_capacity(1000);
        for i in 0..n {
            batch.push((key(31, i).to_vec(), ctx.values.get(&mut rng, VALUE_BYTES).to_vec()));
            if batch.len() == 1000 || i + 1 == n {
                w.put_batch(&batch);
                batch.clear();
            }
        }
    }
    eng.sync();
    ctx.record("W4b", e, "load_ops_s", n as f64 / start.elapsed().as_secs_f64());
    ctx.record("W4b", e, "ops_s_1t", w4(eng.as_ref(), n, 1, ctx.cfg.w4));
    if engines::is_sessiondb(e) {
        eng.before_close();
        ctx.record("W4b", e, "ops_s_1t_checkpointed", w4(eng.as_ref(), n, 1, ctx.cfg.w4));
    }
    eng.close();
    let _ = std::fs::remove_dir_all(&dir);
}

fn w4(eng: &dyn Engine, n: u64, threads: usize, time: Duration) -> f64 {
    let barrier = Barrier::new(threads);
    let total: u64 = thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut w = eng.worker();
                    let mut rng = Rng::new(77 + t as u64);
                    barrier.wait();
                    let start = Instant::now();
                    let mut done = 0u64;
                    while start.elapsed() < time {
                        for _ in 0..64 {
                            let k = key(31, rng.below(n));
                            assert!(w.get(&k).is_some(), "W4: a loaded key is missing");
                        }
                        done += 64;
                    }
                    (done as f64 / start.elapsed().as_secs_f64()) as u64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("reader thread")).sum()
    });
    total as f64
}

/// What a reopen in a fresh process measured (see [`reopen_child`]).
struct Reopen {
    /// From just before the open to the first get's return.
    to_first_get_ms: f64,
    /// Anonymous RSS growth over the open and the get.
    rss_anon_b: f64,
    /// The open alone (for sessiondb, `Db::open_with` until it returns).
    open_ms: f64,
}

/// Reopens engine `e`'s store of `n` W3 keys in `dir` in a fresh process.
fn reopen_in_child(e: &str, dir: &Path, n: u64, probe: u64) -> Reopen {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(&exe)
        .arg("--reopen-child")
        .args([e, &dir.display().to_string(), &n.to_string(), &probe.to_string()])
        .output()
        .expect("run reopen child");
    assert!(
        out.status.success(),
        "reopen child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("REOPEN"))
        .expect("child's REOPEN line");
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("number"))
        .collect();
    Reopen {
        to_first_get_ms: f[0],
        rss_anon_b: f[1],
        open_ms: f[2],
    }
}

fn w5(ctx: &mut Ctx, e: &str, dir: &Path, n: u64) {
    let mut times = Vec::new();
    let mut opens = Vec::new();
    let mut mem = Vec::new();
    for probe in 0..ctx.cfg.reopens {
        let r = reopen_in_child(e, dir, n, probe as u64);
        times.push(r.to_first_get_ms);
        opens.push(r.open_ms);
        mem.push(r.rss_anon_b);
    }
    // The first reopen after the load separately: an engine that replays its log at open and
    // then flushes it (RocksDB) pays for the replay only there, and the median hides it.
    ctx.record("W5", e, "first_reopen_ms", times[0]);
    ctx.record("W5", e, "reopen_ms", median(&mut times));
    ctx.record("W5", e, "open_ms", median(&mut opens));
    ctx.record("W5", e, "rss_anon_b_per_key", median(&mut mem) / n as f64);
}

/// WOPEN: W5's reopen, interleaved. Every engine's store gets the W3 keys (bulk load, one
/// sync, a checkpoint for sessiondb, close); then each store is reopened in a fresh process
/// once unmeasured and `wopen_reopens` times measured, the engines taking turns in a rotating
/// order, so that the machine's drift falls on all of them alike (issue 16: the reopen of an
/// encrypted store of 1M keys against an unencrypted one). `open_ms` is the open alone
/// (`Db::open_with` until it returns), `reopen_ms` the open and the first get.
fn wopen(ctx: &mut Ctx, engines: &[String]) {
    let n = ctx.cfg.w3_keys;
    let engines: Vec<&String> = engines.iter().filter(|e| engines::is_durable(e)).collect();
    let dirs: Vec<PathBuf> = engines
        .iter()
        .map(|e| {
            let dir = ctx.store_dir(e, "wopen");
            let eng = engines::open(e, &dir, Some(n));
            bulk_put(eng.as_ref(), &ctx.values, n, 3);
            eng.before_close();
            eng.close();
            dir
        })
        .collect();
    for (e, dir) in engines.iter().zip(&dirs) {
        reopen_in_child(e, dir, n, 0);
    }
    let k = engines.len();
    let mut opens: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut reopens: Vec<Vec<f64>> = vec![Vec::new(); k];
    for r in 0..ctx.cfg.wopen_reopens {
        for j in 0..k {
            let i = (j + r) % k;
            let x = reopen_in_child(engines[i], &dirs[i], n, 1 + r as u64);
            opens[i].push(x.open_ms);
            reopens[i].push(x.to_first_get_ms);
        }
    }
    for i in 0..k {
        let e = engines[i];
        let min = opens[i].iter().copied().fold(f64::INFINITY, f64::min);
        ctx.record("WOPEN", e, "open_ms", median(&mut opens[i]));
        ctx.record("WOPEN", e, "open_min_ms", min);
        ctx.record("WOPEN", e, "reopen_ms", median(&mut reopens[i]));
        let _ = std::fs::remove_dir_all(&dirs[i]);
    }
}

fn rss_anon_bytes() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = s.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .expect("RssAnon value")
        .parse()
        .expect("RssAnon kB");
    kb * 1024.0
}

/// In a fresh process: open the store, get one key; prints
/// `REOPEN <ms to the first get> <anon RSS growth B> <ms of the open alone>`.
pub fn reopen_child(args: &[String]) {
    let (engine, dir, n, probe) = (&args[0], Path::new(&args[1]), &args[2], &args[3]);
    let n: u64 = n.parse().expect("KEYS");
    let probe: u64 = probe.parse().expect("PROBE");
    let before = rss_anon_bytes();
    let t = Instant::now();
    let eng = engines::open(engine, dir, Some(n));
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let found = eng.worker().get(&key(31, (probe * 7919) % n));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let after = rss_anon_bytes();
    assert!(found.is_some(), "reopened store lacks a loaded key");
    println!("REOPEN {ms} {} {open_ms}", after - before);
    // Close cleanly (not measured): the next reopen must find the store as the parent left it,
    // not one that needs a repair or a replay because this process died with it open.
    eng.close();
}

/// Opens a store, makes N durable 256 B puts, closes: the process `strace -c -f` counts.
pub fn durable_puts(args: &[String]) {
    let (engine, dir) = (&args[0], Path::new(&args[1]));
    let n: u64 = args[2].parse().expect("N");
    let eng = engines::open(engine, dir, None);
    let values = Values::new(5);
    let mut rng = Rng::new(5);
    let mut w = eng.worker();
    // Marks the start of the measured puts in an `strace` without `-c`.
    let _ = std::fs::metadata("/durable-puts-start");
    for i in 0..n {
        w.put(&key(51, i), values.get(&mut rng, VALUE_BYTES), true);
    }
    let _ = std::fs::metadata("/durable-puts-end");
    drop(w);
    eng.close();
}

/// A workload alone, for a profiler (see `--profile-run`).
pub fn profile_run(args: &[String]) {
    let (workload, engine, dir) = (&args[0], &args[1], Path::new(&args[2]));
    let n: u64 = args[3].parse().expect("N");
    let values = Values::new(6);
    let eng = engines::open(engine, dir, Some(n));
    let t = Instant::now();
    if workload == "w4b" {
        // As in W4b: batches of 1,000, gets before any checkpoint.
        let mut rng = Rng::new(5);
        let mut w = eng.worker();
        let mut batch = Vec::with_capacity(1000);
        for i in 0..n {
            batch.push((key(31, i).to_vec(), values.get(&mut rng, VALUE_BYTES).to_vec()));
            if batch.len() == 1000 || i + 1 == n {
                w.put_batch(&batch);
                batch.clear();
            }
        }
        drop(w);
        eng.sync();
        let t = Instant::now();
        measured_gets(eng.as_ref(), n);
        eprintln!(
            "{n} gets after a batched load: {:.0}/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
        eng.close();
        return;
    }
    measured_puts(eng.as_ref(), &values, n);
    eng.sync();
    eprintln!("{n} puts + sync: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
    if workload == "w4" {
        // As in W4: sessiondb's values come from the checkpoint's mapped snapshot.
        eng.before_close();
        let t = Instant::now();
        measured_gets(eng.as_ref(), n);
        eprintln!("{n} gets: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
    }
    eng.close();
}

#[inline(never)]
fn measured_puts(eng: &dyn Engine, values: &Values, n: u64) {
    let mut rng = Rng::new(3);
    let mut w = eng.worker();
    for i in 0..n {
        w.put(&key(31, i), values.get(&mut rng, VALUE_BYTES), false);
    }
}

#[inline(never)]
fn measured_gets(eng: &dyn Engine, n: u64) {
    let mut rng = Rng::new(4);
    let mut w = eng.worker();
    for _ in 0..n {
        assert!(w.get(&key(31, rng.below(n))).is_some(), "a loaded key is missing");
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

// ---------------------------------------------------------------------------------------------
// W7: sessions. 90 % loads (get + sliding touch, lazy), 10 % saves (1 KiB, durable).

fn w7(ctx: &mut Ctx, e: &str) {
    let dir = ctx.store_dir(e, "w7");
    let eng = engines::open(e, &dir, None);
    let s = ctx.cfg.w7_sessions;
    {
        let mut rng = Rng::new(70);
        let mut w = eng.worker();
        for i in 0..s {
            w.put(&key(71, i), ctx.values.get(&mut rng, SESSION_BYTES), false);
        }
    }
    eng.sync();
    let threads = ctx.cfg.w7_threads;
    let time = ctx.cfg.w7;
    let values = &ctx.values;
    let engr = eng.as_ref();
    let barrier = Barrier::new(threads);
    let results: Vec<(Lat, Lat, Lat, f64)> = thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                sc.spawn(move || {
                    let mut w = engr.worker();
                    let mut rng = Rng::new(700 + t as u64);
                    let (mut loads, mut saves, mut touches) = (Lat::new(), Lat::new(), Lat::new());
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < time {
                        let k = key(71, rng.below(s));
                        let v = values.get(&mut rng, SESSION_BYTES);
                        let t0 = Instant::now();
                        if rng.below(10) == 0 {
                            w.save(&k, v);
                            saves.push(t0);
                        } else {
                            assert!(w.get(&k).is_some(), "W7: a session is missing");
                            let t1 = Instant::now();
                            w.touch(&k, v);
                            touches.push(t1);
                            loads.push(t0);
                        }
                    }
                    let ops = (loads.0.len() + saves.0.len()) as f64 / start.elapsed().as_secs_f64();
                    (loads, saves, touches, ops)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("session thread")).collect()
    });
    eng.close();
    let ops: f64 = results.iter().map(|r| r.3).sum();
    let (mut loads, mut saves, mut touches) = (Vec::new(), Vec::new(), Vec::new());
    for r in results {
        loads.push(r.0);
        saves.push(r.1);
        touches.push(r.2);
    }
    let (loads, saves, touches) = (Lat::merge(loads), Lat::merge(saves), Lat::merge(touches));
    ctx.record("W7", e, "ops_s", ops);
    ctx.record("W7", e, "load_p50_us", loads.pct_us(50.0));
    ctx.record("W7", e, "load_p99_us", loads.pct_us(99.0));
    ctx.record("W7", e, "touch_p99_us", touches.pct_us(99.0));
    ctx.record("W7", e, "save_p50_us", saves.pct_us(50.0));
    ctx.record("W7", e, "save_p99_us", saves.pct_us(99.0));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// A checkpoint of the loaded keys while 16 durable writers overwrite them (sessiondb only).

fn ckpt(ctx: &mut Ctx) {
    let n = ctx.cfg.ckpt_keys;
    let dir = ctx.store_dir("sessiondb", "ckpt");
    let opts = sessiondb::Options::new()
        .sync_mode(sessiondb::SyncMode::Always)
        .auto_checkpoint(false);
    let db = sessiondb::Db::open_with(&dir, opts).expect("open sessiondb");
    {
        let mut rng = Rng::new(90);
        for i in 0..n {
            let mut b = sessiondb::Batch::new();
            b.put(key(91, i), ctx.values.get(&mut rng, VALUE_BYTES))
                .durability(sessiondb::Durability::Lazy);
            db.write(b).expect("load");
        }
        db.sync().expect("sync");
        db.checkpoint().expect("checkpoint");
    }
    let adapter = CkptDb(&db);
    let time = ctx.cfg.ckpt;
    let (p0, t0, lat0) = durable_writers(&adapter, &ctx.values, 16, time, 91, 0, Some(n));
    let ops0 = p0 as f64 / t0.as_secs_f64();
    let (ops1, lat1, ck_ms) = thread::scope(|s| {
        let db = &db;
        let ck = s.spawn(move || {
            thread::sleep(time / 4);
            let t = Instant::now();
            db.checkpoint().expect("checkpoint");
            t.elapsed().as_secs_f64() * 1e3
        });
        let (p, t, lat) = durable_writers(&adapter, &ctx.values, 16, time, 91, 1, Some(n));
        (p as f64 / t.as_secs_f64(), lat, ck.join().expect("checkpoint thread"))
    });
    db.close().expect("close");
    let (p0, p1) = (lat0.pct_us(99.0), lat1.pct_us(99.0));
    ctx.record("CKPT", "sessiondb", "ops_s_without", ops0);
    ctx.record("CKPT", "sessiondb", "ops_s_with", ops1);
    ctx.record("CKPT", "sessiondb", "p99_us_without", p0);
    ctx.record("CKPT", "sessiondb", "p99_us_with", p1);
    ctx.record("CKPT", "sessiondb", "p99_ratio", p1 / p0);
    ctx.record("CKPT", "sessiondb", "checkpoint_ms", ck_ms);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checkpoint test's store behind the harness's engine interface (durable puts only).
struct CkptDb<'a>(&'a sessiondb::Db);

impl Engine for CkptDb<'_> {
    fn worker(&self) -> Box<dyn engines::Worker + '_> {
        Box::new(CkptWorker(self.0))
    }
    fn sync(&self) {}
    fn compact(&mut self) {}
    fn close(self: Box<Self>) {}
}

struct CkptWorker<'a>(&'a sessiondb::Db);

impl engines::Worker for CkptWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], _durable: bool) {
        self.0.put(key, value).expect("put");
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.get(key).expect("get").map(|v| v.len())
    }
}
