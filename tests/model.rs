//! The store behaves like an ordered map with expiry, across rolls, checkpoints and reopens.
//!
//! Scenario: random sequences of puts, TTL puts, lazy puts, deletes, batches, touches,
//! compare-and-swap puts (with the current or a stale version), purges of expired entries, clock
//! advances, explicit checkpoints, reopens (by `close` or by drop), prefix scans and range
//! scans, on a store with
//! 64 KiB segments and a 16 KiB automatic-checkpoint threshold so segment rolls and background
//! checkpoints happen within a case. Keys come from a three-letter alphabet (lengths 0 to 3,
//! the empty key included) so overwrites, deletes of live keys and prefix scans all matter.
//! Method: proptest drives the real store on real files and a `BTreeMap` model with expiry
//! deadlines under a shared `ManualClock`; after every step every key of the alphabet is read
//! with `get`, and every scan is compared whole. The proptest RNG is seeded from
//! `SESSIONDB_SEED` (or the time), printed on failure.
//! Invariant: every read equals the model: the last write per key, absent once
//! `now >= deadline` (a touch moving the deadline), and scans list exactly the model's live
//! keys in the bounds, ascending. Versions: a put's version is larger than every version seen
//! before it, a touch keeps it, a reopen keeps it; a compare-and-swap succeeds exactly when it
//! names the live version (or `None` for an absent or expired key).

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sessiondb::{Batch, Db, Durability, ManualClock, Options, SyncMode};
use support::{seeded, small_options, splitmix64, OptionsExt};

const CASES: u32 = 160;
const T0: u64 = 1_700_000_000_000;

/// What the cases exercised, summed over the run (the scenario needs rolls and checkpoints).
static STEPS: AtomicU64 = AtomicU64::new(0);
static CHECKPOINTS: AtomicU64 = AtomicU64::new(0);
static SEGMENT_ID_MAX: AtomicU64 = AtomicU64::new(0);

fn tally(db: &Db) {
    CHECKPOINTS.fetch_add(db.stats().checkpoints, Ordering::Relaxed);
}

/// The highest segment id in the store's log directory: above 2 means the log rolled.
fn tally_segments(dir: &Path) {
    for p in support::segment_files(dir) {
        let id = p
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        SEGMENT_ID_MAX.fetch_max(id, Ordering::Relaxed);
    }
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[derive(Debug, Clone)]
enum BatchOp {
    Put(Key, u16),
    PutTtl(Key, u16, u64),
    Delete(Key),
}

#[derive(Debug, Clone)]
enum Action {
    /// Put with a value of this length (its bytes are made unique per step).
    Put(Key, u16),
    /// Put with a value length and a TTL in milliseconds.
    PutTtl(Key, u16, u64),
    Delete(Key),
    Batch(Vec<BatchOp>),
    /// Put with `Durability::Lazy`.
    LazyPut(Key, u16),
    /// Touch with a TTL in milliseconds.
    Touch(Key, u64),
    /// Compare-and-swap put: with the live version (`true`) or a stale one.
    Cas(Key, u16, bool),
    PurgeExpired,
    /// Advance the clock by milliseconds.
    Advance(u64),
    Checkpoint,
    /// Reopen; `true` closes with `close()`, `false` by dropping the handle.
    Reopen(bool),
    ScanPrefix(Key),
    Range(Bound<Key>, Bound<Key>),
}

#[derive(Debug, Clone)]
struct Case {
    sync_always: bool,
    preallocate_ahead: bool,
    actions: Vec<Action>,
}

const ALPHABET: [u8; 3] = [b'a', b'b', b'c'];

fn key(max_len: usize) -> impl Strategy<Value = Key> {
    prop::collection::vec(prop::sample::select(ALPHABET.to_vec()), 0..=max_len).prop_map(Key)
}

/// Mostly small values, often large ones (up to 3500 bytes, so a 4-op batch stays under the
/// 16 KiB batch limit) to fill 64 KiB segments within a case.
fn value_len() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0u16..=16, 2 => 1000u16..=3500]
}

fn ttl_ms() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 6 => 1u64..=5000]
}

fn bound() -> impl Strategy<Value = Bound<Key>> {
    prop_oneof![
        1 => Just(Bound::Unbounded),
        2 => key(3).prop_map(Bound::Included),
        2 => key(3).prop_map(Bound::Excluded),
    ]
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        3 => (key(3), value_len()).prop_map(|(k, l)| BatchOp::Put(k, l)),
        1 => (key(3), value_len(), ttl_ms()).prop_map(|(k, l, t)| BatchOp::PutTtl(k, l, t)),
        2 => key(3).prop_map(BatchOp::Delete),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (key(3), value_len()).prop_map(|(k, l)| Action::Put(k, l)),
        3 => (key(3), value_len(), ttl_ms()).prop_map(|(k, l, t)| Action::PutTtl(k, l, t)),
        4 => key(3).prop_map(Action::Delete),
        3 => prop::collection::vec(batch_op(), 1..=4).prop_map(Action::Batch),
        2 => (key(3), value_len()).prop_map(|(k, l)| Action::LazyPut(k, l)),
        3 => (key(3), 1u64..=5000).prop_map(|(k, t)| Action::Touch(k, t)),
        3 => (key(3), value_len(), any::<bool>()).prop_map(|(k, l, f)| Action::Cas(k, l, f)),
        1 => Just(Action::PurgeExpired),
        2 => (0u64..=3000).prop_map(Action::Advance),
        1 => Just(Action::Checkpoint),
        1 => any::<bool>().prop_map(Action::Reopen),
        2 => key(2).prop_map(Action::ScanPrefix),
        2 => (bound(), bound()).prop_map(|(lo, hi)| Action::Range(lo, hi)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), any::<bool>(), prop::collection::vec(action(), 1..=160)).prop_map(
        |(sync_always, preallocate_ahead, actions)| Case {
            sync_always,
            preallocate_ahead,
            actions,
        },
    )
}

/// Every key the alphabet can make (40 of them).
fn all_keys() -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut frontier = vec![Vec::new()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for k in &frontier {
            for c in ALPHABET {
                let mut k2: Vec<u8> = k.clone();
                k2.push(c);
                next.push(k2);
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

/// A value unique to (step, op within the step), `len` bytes long.
fn value(step: usize, op: usize, len: u16) -> Vec<u8> {
    let mut v = format!("{step}.{op};").into_bytes();
    let fill = b'A' + ((step * 7 + op) % 26) as u8;
    v.resize(usize::from(len), fill);
    v
}

/// What the model knows of a key's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ver {
    Known(u64),
    /// Put but not yet read back: larger than this (every version seen before the put).
    Above(u64),
}

/// The model: value, expiry deadline and version per key.
#[derive(Default)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>, Ver)>,
    /// The largest version seen so far.
    max_seen: u64,
}

impl Model {
    fn put(&mut self, k: &Key, v: Vec<u8>, deadline: Option<u64>) {
        self.map.insert(k.0.clone(), (v, deadline, Ver::Above(self.max_seen)));
    }

    fn put_at(&mut self, k: &Key, v: Vec<u8>, deadline: Option<u64>, version: u64) {
        self.max_seen = self.max_seen.max(version);
        self.map.insert(k.0.clone(), (v, deadline, Ver::Known(version)));
    }

    /// The live version, if the model knows it (`Ok(None)`: absent or expired).
    fn version(&self, k: &[u8], now: u64) -> Result<Option<u64>, ()> {
        match self.map.get(k) {
            Some((_, d, ver)) if d.is_none_or(|d| now < d) => match ver {
                Ver::Known(v) => Ok(Some(*v)),
                Ver::Above(_) => Err(()),
            },
            _ => Ok(None),
        }
    }

    /// Moves a live key's deadline; false if absent or expired.
    fn touch(&mut self, k: &Key, deadline: u64, now: u64) -> bool {
        match self.map.get_mut(&k.0) {
            Some((_, d, _)) if d.is_none_or(|d| now < d) => {
                *d = Some(deadline);
                true
            }
            _ => false,
        }
    }

    /// Records the version read back for `k`, checking it against what the model knows.
    fn learn(&mut self, k: &[u8], version: u64) -> Result<(), String> {
        let Some((_, _, ver)) = self.map.get_mut(k) else {
            return Err("a version for a key the model does not have".into());
        };
        match *ver {
            Ver::Known(v) if v != version => return Err(format!("version {version}, model knows {v}")),
            Ver::Above(floor) if version <= floor => {
                return Err(format!(
                    "version {version} of a put is not above {floor}, seen before it"
                ))
            }
            _ => {}
        }
        *ver = Ver::Known(version);
        self.max_seen = self.max_seen.max(version);
        Ok(())
    }

    fn delete(&mut self, k: &Key) {
        self.map.remove(&k.0);
    }

    fn get(&self, k: &[u8], now: u64) -> Option<Vec<u8>> {
        match self.map.get(k) {
            Some((v, d, _)) if d.is_none_or(|d| now < d) => Some(v.clone()),
            _ => None,
        }
    }

    fn live(&self, now: u64, keep: impl Fn(&[u8]) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.map
            .iter()
            .filter(|(k, (_, d, _))| d.is_none_or(|d| now < d) && keep(k))
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect()
    }
}

fn deadline(now: u64, ttl_ms: u64) -> u64 {
    (now + ttl_ms).max(1)
}

fn in_bounds(k: &[u8], lo: &Bound<Key>, hi: &Bound<Key>) -> bool {
    let above = match lo {
        Bound::Unbounded => true,
        Bound::Included(b) => k >= b.0.as_slice(),
        Bound::Excluded(b) => k > b.0.as_slice(),
    };
    let below = match hi {
        Bound::Unbounded => true,
        Bound::Included(b) => k <= b.0.as_slice(),
        Bound::Excluded(b) => k < b.0.as_slice(),
    };
    above && below
}

fn to_vec_bound(b: &Bound<Key>) -> Bound<Vec<u8>> {
    match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(k) => Bound::Included(k.0.clone()),
        Bound::Excluded(k) => Bound::Excluded(k.0.clone()),
    }
}

fn fail(step: usize, what: impl fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("step {step}: {what}"))
}

type Items = Vec<(Vec<u8>, Vec<u8>)>;

fn collect(
    step: usize,
    iter: impl Iterator<Item = sessiondb::Result<(Vec<u8>, Vec<u8>)>>,
) -> Result<Items, TestCaseError> {
    iter.map(|r| r.map_err(|e| fail(step, format!("scan failed: {e}"))))
        .collect()
}

fn show(items: &[(Vec<u8>, Vec<u8>)]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|(k, v)| {
            format!(
                "{:?}=>{}b:{:?}",
                String::from_utf8_lossy(k),
                v.len(),
                String::from_utf8_lossy(&v[..v.len().min(8)])
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn options(case: &Case, clock: &ManualClock) -> Options {
    small_options()
        .sync_mode(if case.sync_always {
            SyncMode::Always
        } else {
            SyncMode::Never
        })
        .preallocate_ahead(case.preallocate_ahead)
        .checkpoint_log_bytes(16 * 1024)
        .sweep_interval(None)
        .manual_clock(clock)
}

fn open(dir: &Path, opts: &Options, step: usize) -> Result<Db, TestCaseError> {
    Db::open_with(dir, opts.clone()).map_err(|e| fail(step, format!("open failed: {e}")))
}

/// Applies one action to the store and the model, comparing scans with the model.
fn apply(
    db: &mut Option<Db>,
    model: &mut Model,
    clock: &ManualClock,
    dir: &Path,
    opts: &Options,
    step: usize,
    action: &Action,
) -> Result<(), TestCaseError> {
    let now = sessiondb::Clock::now_ms(clock);
    let d = db.as_ref().expect("open");
    let io = |r: sessiondb::Result<()>, what: &str| r.map_err(|e| fail(step, format!("{what} failed: {e}")));
    match action {
        Action::Put(k, len) => {
            let v = value(step, 0, *len);
            io(d.put(&k.0, &v), "put")?;
            model.put(k, v, None);
        }
        Action::PutTtl(k, len, ttl) => {
            let v = value(step, 0, *len);
            io(d.put_with_ttl(&k.0, &v, Duration::from_millis(*ttl)), "put_with_ttl")?;
            model.put(k, v, Some(deadline(now, *ttl)));
        }
        Action::Delete(k) => {
            io(d.delete(&k.0), "delete")?;
            model.delete(k);
        }
        Action::Batch(ops) => {
            let mut batch = Batch::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    BatchOp::Put(k, len) => batch.put(&k.0, value(step, i, *len)),
                    BatchOp::PutTtl(k, len, ttl) => {
                        batch.put_with_ttl(&k.0, value(step, i, *len), Duration::from_millis(*ttl))
                    }
                    BatchOp::Delete(k) => batch.delete(&k.0),
                };
            }
            io(d.write(batch), "write(batch)")?;
            for (i, op) in ops.iter().enumerate() {
                match op {
                    BatchOp::Put(k, len) => model.put(k, value(step, i, *len), None),
                    BatchOp::PutTtl(k, len, ttl) => model.put(k, value(step, i, *len), Some(deadline(now, *ttl))),
                    BatchOp::Delete(k) => model.delete(k),
                }
            }
        }
        Action::LazyPut(k, len) => {
            let v = value(step, 0, *len);
            let mut batch = Batch::new();
            batch.put(&k.0, &v).durability(Durability::Lazy);
            io(d.write(batch), "lazy put")?;
            model.put(k, v, None);
        }
        Action::Touch(k, ttl) => {
            let got = d
                .touch(&k.0, Duration::from_millis(*ttl))
                .map_err(|e| fail(step, format!("touch failed: {e}")))?;
            let want = model.touch(k, deadline(now, *ttl), now);
            if got != want {
                return Err(fail(step, format!("touch({k:?}) = {got}, model says {want}")));
            }
        }
        Action::Cas(k, len, fresh) => {
            // Every key's version is read back after every step, so the model knows it.
            let live = model
                .version(&k.0, now)
                .map_err(|()| fail(step, format!("model lost the version of {k:?}")))?;
            let expected = if *fresh {
                live
            } else {
                Some(live.map_or(1, |v| v + 1000))
            };
            let v = value(step, 0, *len);
            let got = d
                .put_if_version(&k.0, &v, expected, None)
                .map_err(|e| fail(step, format!("put_if_version failed: {e}")))?;
            match got {
                Ok(version) if expected == live => model.put_at(k, v, None, version),
                Err(c) if expected != live && c.actual == live && c.expected == expected => {}
                other => {
                    return Err(fail(
                        step,
                        format!("put_if_version({k:?}, expected {expected:?}) = {other:?}; live version {live:?}"),
                    ))
                }
            }
        }
        Action::PurgeExpired => {
            d.purge_expired();
        }
        Action::Advance(ms) => clock.advance(Duration::from_millis(*ms)),
        Action::Checkpoint => io(d.checkpoint(), "checkpoint")?,
        Action::Reopen(close) => {
            let old = db.take().expect("open");
            tally(&old);
            if *close {
                io(old.close(), "close")?;
            } else {
                drop(old);
            }
            *db = Some(open(dir, opts, step)?);
        }
        Action::ScanPrefix(p) => {
            let got = collect(step, d.scan_prefix(&p.0))?;
            let want = model.live(now, |k| k.starts_with(&p.0));
            if got != want {
                return Err(fail(
                    step,
                    format!("scan_prefix({p:?})\n  got:  {}\n  want: {}", show(&got), show(&want)),
                ));
            }
        }
        Action::Range(lo, hi) => {
            let got = collect(step, d.range((to_vec_bound(lo), to_vec_bound(hi))))?;
            let want = model.live(now, |k| in_bounds(k, lo, hi));
            if got != want {
                return Err(fail(
                    step,
                    format!("range({lo:?}, {hi:?})\n  got:  {}\n  want: {}", show(&got), show(&want)),
                ));
            }
        }
    }
    Ok(())
}

/// Every key of the alphabet reads as the model says; after reopens and checkpoints the full
/// range scan does too.
fn check(
    db: &Db,
    model: &mut Model,
    now: u64,
    keys: &[Vec<u8>],
    step: usize,
    full_scan: bool,
) -> Result<(), TestCaseError> {
    for k in keys {
        let got = db
            .get_with_version(k)
            .map_err(|e| fail(step, format!("get failed: {e}")))?;
        if let Some((_, version)) = &got {
            model
                .learn(k, *version)
                .map_err(|e| fail(step, format!("{:?}: {e}", String::from_utf8_lossy(k))))?;
        }
        let got = got.map(|(v, _)| v);
        let want = model.get(k, now);
        if got != want {
            return Err(fail(
                step,
                format!(
                    "get({:?}) = {:?}, model says {:?}",
                    String::from_utf8_lossy(k),
                    got.map(|v| show(&[(k.clone(), v)])),
                    want.map(|v| show(&[(k.clone(), v)]))
                ),
            ));
        }
    }
    if full_scan {
        let got = collect(step, db.range::<&[u8], _>(..))?;
        let want = model.live(now, |_| true);
        if got != want {
            return Err(fail(
                step,
                format!("full range\n  got:  {}\n  want: {}", show(&got), show(&want)),
            ));
        }
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let clock = ManualClock::new(T0);
    let opts = options(case, &clock);
    let keys = all_keys();
    let mut db = Some(open(dir.path(), &opts, 0)?);
    let mut model = Model::default();
    for (step, action) in case.actions.iter().enumerate() {
        apply(&mut db, &mut model, &clock, dir.path(), &opts, step, action)?;
        let full = matches!(action, Action::Reopen(_) | Action::Checkpoint);
        let now = sessiondb::Clock::now_ms(&clock);
        check(db.as_ref().expect("open"), &mut model, now, &keys, step, full)?;
        STEPS.fetch_add(1, Ordering::Relaxed);
    }
    // One more reopen at the end: everything acknowledged is still there.
    let last = case.actions.len();
    tally(db.as_ref().expect("open"));
    tally_segments(dir.path());
    db.take()
        .expect("open")
        .close()
        .map_err(|e| fail(last, format!("close failed: {e}")))?;
    let db = open(dir.path(), &opts, last)?;
    check(&db, &mut model, sessiondb::Clock::now_ms(&clock), &keys, last, true)
}

fn rng_from(seed: u64) -> TestRng {
    let mut s = seed;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut s).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

#[test]
fn store_matches_btreemap_model() {
    let (seed, _guard) = seeded("store_matches_btreemap_model");
    let config = Config {
        cases: CASES,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng_from(seed));
    match runner.run(&case(), |c| run_case(&c)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, minimal)) => {
            panic!("model mismatch: {reason}\nminimal case: {minimal:#?}")
        }
        Err(e) => panic!("{e}"),
    }
    let (steps, checkpoints, segments) = (
        STEPS.load(Ordering::Relaxed),
        CHECKPOINTS.load(Ordering::Relaxed),
        SEGMENT_ID_MAX.load(Ordering::Relaxed),
    );
    eprintln!("model: seed {seed}, {steps} steps, {checkpoints} checkpoints, segment ids up to {segments}");
    assert!(checkpoints > 0, "no case checkpointed");
    assert!(
        segments >= 3,
        "no case rolled its log segment twice: segment ids up to {segments}"
    );
}
