//! Helpers shared by the integration tests: seeds and a small RNG, options that force segment
//! rolls, directory copies, and a parser for the documented segment framing (used only to find
//! record boundaries for the tamper tests; the engine's own parser is what is under test).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sessiondb::session::SessionStore;
use sessiondb::{Db, ManualClock, Options, SyncMode};

/// Environment variable that replays a randomised test from a seed.
pub const SEED_VAR: &str = "SESSIONDB_SEED";

/// The seed for a randomised test: `SESSIONDB_SEED` when set, else derived from the time.
pub fn seed() -> u64 {
    if let Ok(s) = std::env::var(SEED_VAR) {
        let s = s.trim();
        let parsed = s
            .strip_prefix("0x")
            .map(|h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|| s.parse());
        return parsed.unwrap_or_else(|_| panic!("{SEED_VAR}={s} is not a u64"));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(&mut (nanos ^ u64::from(std::process::id())))
}

/// Prints `SESSIONDB_SEED=<n>` if the test panics while this guard is alive.
pub struct SeedGuard {
    pub seed: u64,
    test: &'static str,
}

impl SeedGuard {
    pub fn new(test: &'static str, seed: u64) -> SeedGuard {
        SeedGuard { seed, test }
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n{test} failed; replay with: {SEED_VAR}={seed} cargo test --test <file> {test}\n",
                test = self.test,
                seed = self.seed
            );
        }
    }
}

/// Seed plus guard in one call.
pub fn seeded(test: &'static str) -> (u64, SeedGuard) {
    let s = seed();
    (s, SeedGuard::new(test, s))
}

/// How long a test waits for another thread before it fails instead of hanging.
pub const WAIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Spins (yielding, never sleeping) until `done` holds; fails the test naming `what` if that
/// takes longer than [`WAIT_DEADLINE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT_DEADLINE, "waited {WAIT_DEADLINE:?} for {what}");
        std::thread::yield_now();
    }
}

pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic RNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Small segments and limits so a few hundred writes roll segments.
pub const SEGMENT_SIZE_SMALL: u64 = 64 * 1024;

/// Options that make tests roll segments quickly: 64 KiB segments, 4 KiB values, 16 KiB batches.
pub fn small_opts() -> Options {
    Options::new()
        .segment_size(SEGMENT_SIZE_SMALL)
        .value_size_max(4096)
        .batch_size_max(16 * 1024)
}

/// Every live entry, through a full range scan (which must not fail).
/// Sessions over a store in `dir` whose time is `clock`: no fsyncs, no background checkpoints
/// or sweeps, so the tests decide when anything happens.
pub fn manual_session_store(dir: &Path, clock: &ManualClock) -> SessionStore {
    let opts = Options::new()
        .sync_mode(SyncMode::Never)
        .auto_checkpoint(false)
        .sweep_interval(None)
        .clock(std::sync::Arc::new(clock.clone()));
    SessionStore::new(Db::open_with(dir, opts).expect("open"))
}

pub fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut last: Option<Vec<u8>> = None;
    for item in db.range::<&[u8], _>(..) {
        let (k, v) = item.expect("full range scan failed");
        if let Some(prev) = &last {
            assert!(prev < &k, "range scan is not strictly ascending: {prev:?} then {k:?}");
        }
        last = Some(k.clone());
        out.insert(k, v);
    }
    out
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dst);
        } else if ty.is_file() {
            fs::copy(entry.path(), &dst).unwrap();
        }
    }
}

/// Paths of files in `dir` whose names end in `ext`, sorted by name.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(ext)))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Segment files of the store in `dir`, in log order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(&dir.join("wal"), ".wal")
}

/// Snapshot files of the store in `dir`, in order.
pub fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, ".snap")
}

// ---------------------------------------------------------------------------------------------
// Segment framing, from the documented format: a 40-byte header (magic at 0, version u32 at 8,
// segment id u64 at 16, first seq u64 at 24), then records back to back, each a 25-byte header
// [len u32][crc32 u32][seq u64][durable_seq u64][kind u8] and `len` payload bytes; a zero
// length (or the end of the file) ends the log.

pub const SEGMENT_HEADER_SIZE: usize = 40;
pub const RECORD_HEADER_SIZE: usize = 25;
pub const SEGMENT_MAGIC: &[u8; 8] = b"SDB-WAL\0";

/// One record's place in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// Offset of the record's first byte.
    pub start: u64,
    /// Header plus payload.
    pub len: u64,
    pub seq: u64,
    pub durable_seq: u64,
}

impl RecordPos {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// True when the file starts with our segment magic (a spare preallocated segment may be all
/// zero).
pub fn has_segment_header(bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_SIZE && &bytes[..8] == SEGMENT_MAGIC
}

/// The first sequence number a segment's header declares.
pub fn segment_first_seq(bytes: &[u8]) -> u64 {
    assert!(has_segment_header(bytes), "not a segment");
    u64_at(bytes, 24)
}

/// Record positions in a segment's bytes (no checksum verification: test-written files only).
pub fn parse_records(bytes: &[u8]) -> Vec<RecordPos> {
    let mut out = Vec::new();
    if !has_segment_header(bytes) {
        return out;
    }
    let mut at = SEGMENT_HEADER_SIZE;
    while at + RECORD_HEADER_SIZE <= bytes.len() {
        let len = u32_at(bytes, at) as usize;
        if len == 0 || at + RECORD_HEADER_SIZE + len > bytes.len() {
            break;
        }
        out.push(RecordPos {
            start: at as u64,
            len: (RECORD_HEADER_SIZE + len) as u64,
            seq: u64_at(bytes, at + 8),
            durable_seq: u64_at(bytes, at + 16),
        });
        at += RECORD_HEADER_SIZE + len;
    }
    out
}

/// Segments that hold at least one record, with their records, in log order.
pub fn segments_with_records(dir: &Path) -> Vec<(PathBuf, Vec<RecordPos>)> {
    segment_files(dir)
        .into_iter()
        .filter_map(|p| {
            let recs = parse_records(&fs::read(&p).unwrap());
            (!recs.is_empty()).then_some((p, recs))
        })
        .collect()
}

/// Flips every bit of the byte at `offset` in `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xFF;
    fs::write(path, bytes).unwrap();
}

/// `wal/<name>` for a segment path.
pub fn wal_relative(segment: &Path) -> PathBuf {
    Path::new("wal").join(segment.file_name().unwrap())
}
