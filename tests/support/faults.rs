//! Shared pieces of the fault tests (`faults_log.rs`, `faults_checkpoint.rs`,
//! `faults_recovery.rs`): a workload of puts, deletes and batches with a `BTreeMap` model of the
//! state after every prefix of it, deterministic options for the simulated storage, the
//! oracle of docs/reliability.md, and helpers that find segments and records inside `SimStorage`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sessiondb::internals::sim::SimStorage;
use sessiondb::storage::{OpenMode, Storage};
use sessiondb::{Db, ManualClock, Options, SyncMode};

use super::{batch_of, small_options, OptionsExt, PutOrDelete, RecordPos, Rng};

/// Where every fault test keeps its store inside the simulated file system.
pub const DIR: &str = "/store";

/// Live contents: key → value.
pub type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// One issued operation: one record in the log.
#[derive(Clone, Debug)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<PutOrDelete>),
}

impl Op {
    /// The (key, value) pairs this operation writes.
    pub fn puts(&self) -> Vec<(&[u8], &[u8])> {
        match self {
            Op::Put(k, v) => vec![(k, v)],
            Op::Delete(_) => Vec::new(),
            Op::Batch(ops) => ops
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_slice(), v.as_slice())))
                .collect(),
        }
    }
}

pub fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Put(k, v) => {
            state.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            state.remove(k);
        }
        Op::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => state.insert(k.clone(), v.clone()),
                    None => state.remove(k),
                };
            }
        }
    }
}

/// `states[k]` is the model after the first `k` operations.
pub fn states(ops: &[Op]) -> Vec<State> {
    let mut out = vec![State::new()];
    let mut s = State::new();
    for op in ops {
        apply(&mut s, op);
        out.push(s.clone());
    }
    out
}

/// The model after every operation but `skipped` (what salvage leaves when one record is lost).
pub fn state_without(ops: &[Op], skipped: usize) -> State {
    let mut s = State::new();
    for (i, op) in ops.iter().enumerate() {
        if i != skipped {
            apply(&mut s, op);
        }
    }
    s
}

/// Every value each key was ever given.
pub fn written_values(ops: &[Op]) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut m: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for op in ops {
        for (k, v) in op.puts() {
            m.entry(k.to_vec()).or_default().insert(v.to_vec());
        }
    }
    m
}

/// Asserts that every value in `got` was written to its key at some point.
pub fn assert_only_written(got: &State, written: &BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>, what: &str) {
    for (k, v) in got {
        assert!(
            written.get(k).is_some_and(|vs| vs.contains(v)),
            "{what}: key {:?} holds a value that was never written to it",
            String::from_utf8_lossy(k)
        );
    }
}

/// A value: unique per (tag, i), `len` bytes, no zero byte (so a zeroed or torn byte is always
/// a change).
pub fn value(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{tag}-{i:05}:").into_bytes();
    let mut x = i as u64 ^ 0x5eed;
    while v.len() < len {
        let b = (super::splitmix64(&mut x) % 255 + 1) as u8;
        v.push(b);
    }
    v.truncate(len.max(1));
    v
}

/// A workload of `n` operations over 23 keys: mostly puts of 600 to 1500 bytes, every tenth a
/// delete, every seventh a batch of three. Values are unique, so a prefix state names its k.
pub fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let key = format!("k{:02}", rng.below(23)).into_bytes();
            let len = rng.range(600, 1500) as usize;
            match i % 10 {
                3 => Op::Delete(key),
                7 => Op::Batch(vec![
                    (key, Some(value("batch", i, 200))),
                    (format!("k{:02}", rng.below(23)).into_bytes(), None),
                    (format!("b{i}").into_bytes(), Some(value("bval", i, len / 2))),
                ]),
                _ => Op::Put(key, value("put", i, len)),
            }
        })
        .collect()
}

/// Deterministic options on the simulator: the tests' small store, quiet (no background
/// threads), a manual clock.
pub fn options(sim: &SimStorage, mode: SyncMode) -> Options {
    small_options()
        .quiet()
        .sim(sim)
        .sync_mode(mode)
        .manual_clock(&ManualClock::new(1_000_000))
}

pub fn issue(db: &Db, op: &Op) -> sessiondb::Result<()> {
    match op {
        Op::Put(k, v) => db.put(k, v),
        Op::Delete(k) => db.delete(k),
        Op::Batch(ops) => db.write(batch_of(ops)),
    }
}

/// Issues every operation, each of which must be acknowledged.
pub fn run_all(db: &Db, ops: &[Op], what: &str) {
    for (i, op) in ops.iter().enumerate() {
        issue(db, op).unwrap_or_else(|e| panic!("{what}: operation {i} failed: {e}"));
    }
}

/// Issues `ops` until one of them lands in a new segment (the log's second or a later one to
/// hold records); returns its index.
pub fn run_until_roll(sim: &SimStorage, db: &Db, ops: &[Op], what: &str) -> usize {
    for (i, op) in ops.iter().enumerate() {
        let before = segments_with_records(sim).len();
        issue(db, op).unwrap_or_else(|e| panic!("{what}: operation {i}: {e}"));
        if segments_with_records(sim).len() > before && before > 0 {
            return i;
        }
    }
    panic!("{what}: the workload never rolled");
}

/// Where the first write of `ops` that rolls to a new segment stands in a run on a fresh
/// simulator seeded `seed` (the same in every such run: the simulator is deterministic).
pub struct RollingWrite {
    /// Its index in `ops`.
    pub index: usize,
    /// Storage operations made before it.
    pub start: u64,
    /// Storage operations it makes.
    pub ops: u64,
}

/// Finds the rolling write of `ops` and counts its storage operations, a crash test's range of
/// halt points.
pub fn rolling_write(seed: u64, ops: &[Op]) -> RollingWrite {
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    let index = run_until_roll(&sim, &db, ops, "probe");
    drop(db);
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    run_all(&db, &ops[..index], "probe");
    let start = sim.ops();
    issue(&db, &ops[index]).unwrap_or_else(|e| panic!("probe: the rolling write: {e}"));
    RollingWrite {
        index,
        start,
        ops: sim.ops() - start,
    }
}

/// Every live entry through a full scan (which must not fail).
pub fn contents(db: &Db) -> State {
    super::contents(db)
}

/// The k in `lo..=hi` whose model state equals `got`, the largest if several do.
pub fn prefix_k(states: &[State], got: &State, lo: usize, hi: usize) -> Option<usize> {
    (lo..=hi.min(states.len() - 1)).rev().find(|&k| &states[k] == got)
}

/// the oracle of docs/reliability.md: opens the store, whose contents must equal the model after the first k
/// operations for some `acked <= k <= issued`; a second open must give the same contents.
/// Returns k.
pub fn check_oracle(opts: &Options, states: &[State], acked: usize, issued: usize, what: &str) -> usize {
    let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: open after the fault failed: {e}"));
    let got = contents(&db);
    let k = prefix_k(states, &got, acked, issued).unwrap_or_else(|| {
        panic!(
            "{what}: recovered {} keys, which is the model after no k in {acked}..={issued} operations",
            got.len()
        )
    });
    drop(db);
    let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: second open failed: {e}"));
    assert_eq!(contents(&db), states[k], "{what}: a second open gives another state");
    k
}

/// `DIR/wal/<id>.wal` files in the simulator, in log order.
pub fn segments(sim: &SimStorage) -> Vec<PathBuf> {
    let wal = Path::new(DIR).join("wal");
    sim.files()
        .into_iter()
        .filter(|p| p.parent() == Some(wal.as_path()) && p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

/// `DIR/<seq>.snap` files in the simulator, in order.
pub fn snapshots(sim: &SimStorage) -> Vec<PathBuf> {
    sim.files()
        .into_iter()
        .filter(|p| p.parent() == Some(Path::new(DIR)) && p.extension().is_some_and(|e| e == "snap"))
        .collect()
}

/// The base sequence number in a snapshot's file name.
pub fn snapshot_seq(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Segments holding records, with the records (parsed from the documented framing), in log
/// order.
pub fn segments_with_records(sim: &SimStorage) -> Vec<(PathBuf, Vec<RecordPos>)> {
    segments(sim)
        .into_iter()
        .filter_map(|p| {
            let recs = super::parse_records(&sim.read_file(&p).unwrap());
            (!recs.is_empty()).then_some((p, recs))
        })
        .collect()
}

/// Creates a file with `bytes`, durable with its directory entry (restores a file a checkpoint
/// deleted, or leaves a stray one behind).
pub fn create_durable(sim: &SimStorage, path: &Path, bytes: &[u8]) {
    let f = sim.open(path, OpenMode::CreateNew).unwrap();
    let mut at = 0;
    while at < bytes.len() {
        at += f.write_at(&bytes[at..], at as u64).unwrap();
    }
    f.sync_all().unwrap();
    sim.sync_dir(path.parent().unwrap()).unwrap();
}

/// Every file in the simulator with its visible bytes.
pub fn all_files(sim: &SimStorage) -> BTreeMap<PathBuf, Vec<u8>> {
    sim.files()
        .into_iter()
        .map(|p| {
            let b = sim.read_file(&p).unwrap();
            (p, b)
        })
        .collect()
}
