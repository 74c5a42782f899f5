//! Criterion micro-benchmarks of the public API: the write path per sync mode × value size ×
//! writer threads (1, 4, 16, 64), point gets (from a checkpoint's snapshot and from the log), a
//! 100-key prefix scan, recovery time against the log's length and against live keys, and a
//! checkpoint's duration and its effect on put latency while it runs; plus
//! two raw floors measured with `std::fs` in the same run (`floor/*`): `pwrite` + `fdatasync`
//! of 256 B, and a bare 329 B `pwrite` (the size of sessiondb's record for a 16 B key and a
//! 256 B value), both into a preallocated file zero-filled like a segment.
//!
//! ```sh
//! cargo bench --bench engine                 # all (a few minutes)
//! cargo bench --bench engine -- get          # only the benchmarks whose name contains "get"
//! ```
//!
//! Stores go in a temp directory under `$SESSIONDB_BENCH_DIR` (default: the system temp dir).
//! Results and the issue's targets: docs/benchmarks.md (and `cargo bench --bench targets`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sessiondb::{Db, Options, SyncMode};

const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Keys in the read benchmarks' stores: 1,000 prefixes of 100 keys each.
const READ_KEYS: u64 = 100_000;
const PER_PREFIX: u64 = 100;
/// Put benchmarks overwrite this many distinct keys round-robin, so automatic checkpoints keep
/// the store's size bounded however many iterations criterion runs.
const PUT_KEYS: u64 = 50_000;

fn bench_root() -> PathBuf {
    std::env::var_os("SESSIONDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn temp_store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sessiondb-bench-")
        .tempdir_in(bench_root())
        .expect("create bench dir")
}

/// 16-byte keys `pPPPPPP/kIIIIIII`: key `i` is the `i % 100`th of prefix `i / 100`. Built
/// without `format!` so the benchmark loop measures sessiondb, not string formatting.
fn key(i: u64) -> [u8; 16] {
    let mut k = *b"p000000/k0000000";
    let digits = |out: &mut [u8], mut n: u64| {
        for d in out.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(&mut k[1..7], i / PER_PREFIX);
    digits(&mut k[9..16], i % PER_PREFIX);
    k
}

fn prefix(p: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&key(p * PER_PREFIX)[..8]);
    out
}

/// A cheap deterministic sequence of indexes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Waits for the background preparer to finish the next (preallocated) segment of the default
/// size and fsyncs it, so its zero-fill writeback does not land in the measurements. (It waited
/// for a `SEGMENT_SIZE` segment, which the default options never make: each store's setup ran
/// into the 60 s deadline.)
fn settle(dir: &Path) {
    const SPARE_SIZE: u64 = 16 * 1024 * 1024;
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
        if let Some((path, len)) = segs.last() {
            if segs.len() >= 2 && *len == SPARE_SIZE {
                File::open(path).and_then(|f| f.sync_all()).expect("fsync spare");
                break;
            }
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
    thread::sleep(Duration::from_millis(200));
}

/// A file of `SEGMENT_SIZE` zeros written in 1 MiB calls and fsynced, as sessiondb's segments.
fn preallocated(dir: &Path) -> File {
    let path = dir.join("floor.dat");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create floor file");
    let zeros = vec![0u8; 1024 * 1024];
    for i in 0..SEGMENT_SIZE / zeros.len() as u64 {
        f.write_all_at(&zeros, i * zeros.len() as u64).expect("zero-fill");
    }
    f.sync_all().expect("fsync");
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync dir");
    f
}

fn floors(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let dir = temp_store();
    let file = preallocated(dir.path());
    for (name, len, sync) in [("pwrite_fdatasync_256B", 256usize, true), ("pwrite_329B", 329, false)] {
        let rec = vec![0x5au8; len];
        let mut off = 0u64;
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                if off + len as u64 > SEGMENT_SIZE {
                    off = 0;
                }
                file.write_all_at(&rec, off).expect("write");
                if sync {
                    file.sync_data().expect("fdatasync");
                }
                off += len as u64;
            })
        });
    }
    group.finish();
}

/// Writer threads in the write-path benchmarks.
const WRITERS: [usize; 4] = [1, 4, 16, 64];

/// `iters` puts split over `threads` threads (each its own keys); returns the wall time, so
/// criterion's time per iteration is the time per put of the whole group, and its throughput
/// the store's total puts per second.
fn put_from_threads(db: &Db, value: &[u8], threads: usize, iters: u64, next: &mut u64) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let base = *next;
    *next += per_thread * threads as u64;
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..threads as u64 {
            s.spawn(move || {
                for j in 0..per_thread {
                    let i = base + t * per_thread + j;
                    db.put(key(i % PUT_KEYS), value).expect("put");
                }
            });
        }
    });
    start.elapsed()
}

/// The write path per sync mode × value size × writer threads. Time per iteration is the
/// store's time per put (wall time of the whole group over the puts it made).
fn put_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.sample_size(10).warm_up_time(Duration::from_millis(300));
    let modes = [
        (SyncMode::Always, "Always"),
        (SyncMode::Interval(Duration::from_millis(100)), "Interval100ms"),
        (SyncMode::Never, "Never"),
    ];
    for (mode, mode_name) in modes {
        for (size, size_name) in [(256usize, "256B"), (4096, "4KiB")] {
            let dir = temp_store();
            let db = Db::open_with(dir.path(), Options::new().sync_mode(mode)).expect("open");
            db.put(b"warm-up", b"x").expect("warm-up put");
            settle(dir.path());
            let value = vec![0x42u8; size];
            group.measurement_time(Duration::from_millis(match mode {
                SyncMode::Always => 1500,
                _ => 1000,
            }));
            group.throughput(Throughput::Elements(1));
            let mut next = 0u64;
            for threads in WRITERS {
                let id = BenchmarkId::new(format!("{mode_name}/{size_name}"), format!("{threads}t"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| put_from_threads(&db, &value, threads, iters, &mut next))
                });
            }
            db.close().expect("close");
        }
    }
    group.finish();
}

/// A store built for the recovery benchmarks: `live` keys, each written `writes_per_key`
/// times; checkpointed at the end or not (then the whole log is replayed on open).
fn recovery_store(live: u64, writes_per_key: u64, checkpointed: bool) -> tempfile::TempDir {
    let dir = temp_store();
    let opts = Options::new().sync_mode(SyncMode::Never).auto_checkpoint(false);
    let db = Db::open_with(dir.path(), opts).expect("open");
    let value = vec![0x24u8; 256];
    for _ in 0..writes_per_key {
        for i in 0..live {
            db.put(key(i), &value).expect("put");
        }
    }
    if checkpointed {
        db.checkpoint().expect("checkpoint");
    }
    db.close().expect("close");
    dir
}

/// Open (recovery) + close, against the log's length (1,000 live keys, log of N records, no
/// checkpoint) and against live keys (N keys, checkpointed, empty log).
fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let reopen = |dir: &Path| {
        let opts = Options::new().auto_checkpoint(false);
        let db = Db::open_with(dir, opts).expect("reopen");
        black_box(db.get(key(0)).expect("get"));
        db.close().expect("close");
    };
    for records in [10_000u64, 100_000, 300_000] {
        let dir = recovery_store(1_000, records / 1_000, false);
        group.throughput(Throughput::Elements(records));
        group.bench_function(BenchmarkId::new("log_records", records), |b| {
            b.iter(|| reopen(dir.path()))
        });
    }
    for live in [10_000u64, 100_000, 1_000_000] {
        let dir = recovery_store(live, 1, true);
        group.throughput(Throughput::Elements(live));
        group.bench_function(BenchmarkId::new("live_keys_checkpointed", live), |b| {
            b.iter(|| reopen(dir.path()))
        });
    }
    group.finish();
}

/// Checkpoint duration of a 200k-key store, and a durable put's latency while checkpoints run
/// back to back on another thread, against the same store idle.
fn checkpoint(c: &mut Criterion) {
    const KEYS: u64 = 200_000;
    let mut group = c.benchmark_group("checkpoint");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let dir = temp_store();
    let opts = Options::new().sync_mode(SyncMode::Always).auto_checkpoint(false);
    let db = Db::open_with(dir.path(), opts).expect("open");
    let value = vec![0x24u8; 256];
    for i in 0..KEYS {
        let mut b = sessiondb::Batch::new();
        b.put(key(i), &value).durability(sessiondb::Durability::Lazy);
        db.write(b).expect("load");
    }
    db.sync().expect("sync");
    group.throughput(Throughput::Elements(KEYS));
    let mut i = 0u64;
    group.bench_function("duration_200k", |b| {
        b.iter(|| {
            // One new write, so there is something to checkpoint (an unchanged store's
            // checkpoint returns at once).
            db.put(key(i % KEYS), &value).expect("put");
            i += 1;
            db.checkpoint().expect("checkpoint")
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_Always_256B/idle", |b| {
        b.iter(|| {
            db.put(key(i % KEYS), &value).expect("put");
            i += 1;
        })
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.checkpoint().expect("checkpoint");
            }
        });
        group.bench_function("put_Always_256B/during_checkpoints", |b| {
            b.iter(|| {
                db.put(key(i % KEYS), &value).expect("put");
                i += 1;
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    db.close().expect("close");
    group.finish();
}

/// A store of `READ_KEYS` keys × 256 B; checkpointed (values read from the mapped snapshot) or
/// not (values read from the log's active segment).
fn read_store(checkpointed: bool) -> (tempfile::TempDir, Db) {
    let dir = temp_store();
    let db = Db::open_with(
        dir.path(),
        Options::new().sync_mode(SyncMode::Never).auto_checkpoint(false),
    )
    .expect("open");
    let value = vec![0x24u8; 256];
    for i in 0..READ_KEYS {
        db.put(key(i), &value).expect("put");
    }
    db.sync().expect("sync");
    if checkpointed {
        db.checkpoint().expect("checkpoint");
    }
    settle(dir.path());
    (dir, db)
}

fn reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (checkpointed, from) in [(true, "checkpoint"), (false, "log")] {
        let (_dir, db) = read_store(checkpointed);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("get_100k", from), |b| {
            b.iter(|| {
                let v = db.get(key(rng.below(READ_KEYS))).expect("get");
                assert!(v.is_some());
                black_box(v)
            })
        });
        group.throughput(Throughput::Elements(PER_PREFIX));
        group.bench_function(BenchmarkId::new("scan_prefix_100", from), |b| {
            b.iter(|| {
                let mut n = 0;
                for entry in db.scan_prefix(prefix(rng.below(READ_KEYS / PER_PREFIX))) {
                    black_box(entry.expect("scan"));
                    n += 1;
                }
                assert_eq!(n, PER_PREFIX);
            })
        });
        db.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, floors, put_latency, reads, recovery, checkpoint);
criterion_main!(benches);
