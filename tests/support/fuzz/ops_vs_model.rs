//! Target `ops_vs_model`: arbitrary sequences of writes, clock moves, checkpoints, syncs,
//! closes and power losses through the simulated storage, against the swarm's `BTreeMap` model
//! and the oracle of docs/reliability.md (`tests/support/swarm.rs`, shared with `tests/swarm.rs`).
//!
//! Input: a structured [`OpsSpec`]: sync mode, segment size, fault rates (short writes, ENOSPC,
//! fsync EIO), the simulator's seed, and up to 64 steps: puts (with or without a TTL), deletes,
//! batches, lazy and immediate puts, touches, compare-and-swap puts with the live or a stale
//! version, clock advances, checkpoints, syncs, clean closes, power losses (unsynced writes
//! dropped, or torn at 512 or 4096 bytes) and crash points (the machine halts after the n-th
//! storage operation from now).
//! Invariants: every read after an acknowledged write equals the model; touches and
//! compare-and-swaps answer as the model says; after every recovery the contents (deadlines
//! included) equal the model after a prefix of the issued operations holding every one that
//! must survive (all acknowledged in `Always` mode, else those a sync or an immediate write
//! covered), and a second open agrees; only the injected faults make a write fail.

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use sessiondb::internals::sim::{CrashMode, Faults, SimStorage};
use sessiondb::{Clock, Db, Error, ManualClock, Options, SyncMode};

use super::super::swarm::{apply, issue, live_entries, recovered_prefix, visible, Op, State};
use super::super::{small_options, OptionsExt};

/// Steps per input at most.
const STEPS_MAX: usize = 64;
/// Distinct keys: few, so writes overwrite, delete and touch live keys.
const KEYS: u8 = 12;
/// Longest value: a few fill a 64 KiB segment within an input.
const VALUE_LEN_MAX: usize = 4000;
const DIR: &str = "/ops";

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct ValueSpec {
    pub len: u16,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CrashSpec {
    DropUnsynced,
    Torn512,
    Torn4096,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Put {
        key: u8,
        value: ValueSpec,
        ttl_ms: Option<u16>,
    },
    Delete {
        key: u8,
    },
    Batch(Vec<(u8, Option<ValueSpec>)>),
    Lazy {
        key: u8,
        value: ValueSpec,
    },
    Immediate {
        key: u8,
        value: ValueSpec,
    },
    Touch {
        key: u8,
        ttl_ms: u16,
    },
    Cas {
        key: u8,
        value: ValueSpec,
        fresh: bool,
    },
    Advance(u16),
    Checkpoint,
    Sync,
    Close,
    Crash(CrashSpec),
    /// The machine halts after this many more storage operations (a crash point); the next
    /// write that fails is followed by a power loss.
    HaltAfter(u8),
    Scan,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct OpsSpec {
    pub sync_always: bool,
    pub small_segments: bool,
    /// Bits pick short writes (1), ENOSPC (2), fsync EIO (4), and an encrypted store (8).
    pub faults: u8,
    pub seed: u64,
    pub steps: Vec<Step>,
}

/// One run: the store, the model and what must survive.
struct Run {
    sim: SimStorage,
    clock: ManualClock,
    opts: Options,
    always: bool,
    faults: Faults,
    /// The state the last recovery verified.
    base: State,
    /// Operations issued since, with the clock at issue time.
    issued: Vec<(Op, u64)>,
    must_survive: usize,
    acked: usize,
    /// Makes every value unique, so a recovered state names its prefix.
    counter: u64,
    /// A crash point was set: storage operations fail from some point until the power loss.
    halted: bool,
}

fn key(k: u8) -> Vec<u8> {
    format!("k{}", k % KEYS).into_bytes()
}

impl Run {
    fn value(&mut self, v: ValueSpec) -> Vec<u8> {
        self.counter += 1;
        let mut out = format!("v{}:", self.counter).into_bytes();
        let len = usize::from(v.len) % VALUE_LEN_MAX;
        let fill = b'a' + (self.counter % 26) as u8;
        out.resize(len.max(out.len()), fill);
        out
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn current(&self) -> State {
        let mut state = self.base.clone();
        for (op, at) in &self.issued {
            apply(&mut state, op, *at);
        }
        state
    }

    fn op_of(&mut self, step: &Step) -> Option<Op> {
        Some(match step {
            Step::Put { key: k, value, ttl_ms } => {
                let v = self.value(*value);
                Op::Put(key(*k), v, ttl_ms.map(|t| u64::from(t) + 1))
            }
            Step::Delete { key: k } => Op::Delete(key(*k)),
            Step::Batch(ops) => {
                let ops: Vec<_> = ops
                    .iter()
                    .take(4)
                    .map(|(k, v)| (key(*k), v.map(|v| self.value(v))))
                    .collect();
                if ops.is_empty() {
                    return None;
                }
                Op::Batch(ops)
            }
            Step::Lazy { key: k, value } => Op::Lazy(key(*k), self.value(*value)),
            Step::Immediate { key: k, value } => Op::Immediate(key(*k), self.value(*value)),
            Step::Touch { key: k, ttl_ms } => {
                let k = key(*k);
                let now = self.now();
                let live = self.current().get(&k).is_some_and(|(_, exp)| *exp == 0 || *exp > now);
                Op::Touch(k, u64::from(*ttl_ms) + 1, live)
            }
            Step::Cas { key: k, value, fresh } => Op::Cas(key(*k), self.value(*value), *fresh),
            _ => return None,
        })
    }

    /// After an acknowledged write: every key reads as the model says. `Err` only while the
    /// machine is halted (reads fail then too).
    fn check_reads(&self, db: &Db, op: &Op) -> sessiondb::Result<()> {
        let now = self.now();
        let model = visible(&self.current(), now);
        let keys: Vec<Vec<u8>> = match op {
            Op::Batch(ops) => ops.iter().map(|(k, _)| k.clone()).collect(),
            Op::Put(k, ..)
            | Op::Delete(k)
            | Op::Lazy(k, _)
            | Op::Immediate(k, _)
            | Op::Touch(k, ..)
            | Op::Cas(k, ..) => {
                vec![k.clone()]
            }
        };
        for k in keys {
            let got = match db.get(&k) {
                Ok(got) => got,
                Err(e @ Error::Io { .. }) if self.halted => return Err(e),
                Err(e) => panic!("get {k:?} failed: {e}"),
            };
            assert_eq!(
                got.as_ref(),
                model.get(&k),
                "get {k:?} after {op:?} differs from the model"
            );
        }
        Ok(())
    }

    fn open(&mut self, what: &str) -> Db {
        self.sim.set_faults(Faults::default());
        let db = Db::open_with(DIR, self.opts.clone()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        self.sim.set_faults(self.faults);
        db
    }

    /// The recovered contents must be a prefix holding what must survive; they become the base.
    fn verify(&mut self, db: &Db, what: &str) {
        let now = self.now();
        let got = contents_with_deadlines(db, what);
        let Some((_, state)) = recovered_prefix(&self.base, &self.issued, self.must_survive, &got, now) else {
            panic!(
                "{what}: recovered {} keys, no prefix of the {} issued operations holding the {} that must survive",
                got.len(),
                self.issued.len(),
                self.must_survive
            );
        };
        self.base = live_entries(&state, now);
        self.issued.clear();
        self.must_survive = 0;
        self.acked = 0;
    }

    /// A power loss (or a clean close and then one), then a verified reopen, then a second open
    /// that agrees.
    fn reopen(&mut self, db: Db, crash: Option<CrashMode>, what: &str) -> Db {
        match crash {
            None => {
                self.sim.set_faults(Faults::default());
                if db.close().is_ok() {
                    self.must_survive = self.acked;
                }
                // Then the power goes: a clean close made everything acknowledged durable (and
                // the power loss ends a crash point that the close itself did not reach).
                self.sim.crash(CrashMode::DropUnsynced);
            }
            Some(mode) => {
                self.sim.crash(mode);
                drop(db);
            }
        }
        self.halted = false;
        let db = self.open(what);
        self.verify(&db, what);
        let first = contents_with_deadlines(&db, what);
        drop(db);
        let db = self.open(what);
        assert_eq!(
            contents_with_deadlines(&db, what),
            first,
            "{what}: a second open disagrees"
        );
        db
    }
}

fn contents_with_deadlines(db: &Db, what: &str) -> State {
    let mut out = State::new();
    for item in db.range::<&[u8], _>(..) {
        let (k, v) = item.unwrap_or_else(|e| panic!("{what}: scan failed: {e}"));
        let exp = db
            .get_versioned(&k)
            .unwrap_or_else(|e| panic!("{what}: get failed: {e}"))
            .and_then(|e| e.expires_at_ms)
            .unwrap_or(0);
        out.insert(k, (v, exp));
    }
    out
}

fn crash_mode(c: CrashSpec) -> CrashMode {
    match c {
        CrashSpec::DropUnsynced => CrashMode::DropUnsynced,
        CrashSpec::Torn512 => CrashMode::Torn { sector: 512 },
        CrashSpec::Torn4096 => CrashMode::Torn { sector: 4096 },
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let Ok(spec) = OpsSpec::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    if std::env::var_os("SESSIONDB_FUZZ_PRINT").is_some() {
        eprintln!("{spec:#?}");
    }
    let sim = SimStorage::new(spec.seed);
    let clock = ManualClock::new(1_700_000_000_000);
    let mode = if spec.sync_always {
        SyncMode::Always
    } else {
        SyncMode::Never
    };
    let mut opts = small_options()
        .quiet()
        .sync_mode(mode)
        .segment_size(if spec.small_segments { 64 * 1024 } else { 256 * 1024 })
        .value_size_max(8 * 1024)
        .batch_size_max(32 * 1024)
        .manual_clock(&clock)
        .sim(&sim);
    if spec.faults & 8 != 0 {
        opts = opts.encryption_key(sessiondb::EncryptionKey::from_bytes([0xf2; 32]));
    }
    let pick = |bit: u8, p: f64| if spec.faults & bit != 0 { p } else { 0.0 };
    let faults = Faults {
        short_write: pick(1, 0.2),
        enospc: pick(2, 0.01),
        sync_eio: pick(4, 0.01),
        ..Faults::default()
    };
    let mut run = Run {
        sim,
        clock,
        opts,
        always: spec.sync_always,
        faults,
        base: State::new(),
        issued: Vec::new(),
        must_survive: 0,
        acked: 0,
        counter: 0,
        halted: false,
    };
    let mut db = run.open("first open");
    for (i, step) in spec.steps.iter().take(STEPS_MAX).enumerate() {
        let what = format!("step {i} ({step:?})");
        db = match step {
            Step::Advance(ms) => {
                run.clock.advance(Duration::from_millis(u64::from(*ms)));
                db
            }
            Step::Checkpoint => match db.checkpoint() {
                Ok(()) => db,
                Err(e) => failed(&mut run, db, &e, &what),
            },
            Step::Sync => match db.sync() {
                Ok(()) => {
                    run.must_survive = run.acked;
                    db
                }
                Err(e) => failed(&mut run, db, &e, &what),
            },
            Step::Close => run.reopen(db, None, &what),
            Step::Crash(c) => run.reopen(db, Some(crash_mode(*c)), &what),
            Step::HaltAfter(n) => {
                run.sim.halt_after(Some(run.sim.ops() + u64::from(*n)));
                run.halted = true;
                db
            }
            Step::Scan => {
                let now = run.now();
                let scanned: sessiondb::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> =
                    db.range::<&[u8], _>(..).collect();
                match scanned {
                    Ok(got) => {
                        assert_eq!(
                            got,
                            visible(&run.current(), now),
                            "{what}: a scan differs from the model"
                        );
                        db
                    }
                    Err(e) if run.halted => failed(&mut run, db, &e, &what),
                    Err(e) => panic!("{what}: scan failed: {e}"),
                }
            }
            _ => {
                let Some(op) = run.op_of(step) else {
                    continue;
                };
                let at = run.now();
                let result = issue(&db, &op);
                let durable = match op {
                    // Writes nothing, so syncs nothing.
                    Op::Lazy(..) | Op::Cas(_, _, false) | Op::Touch(_, _, false) => false,
                    Op::Immediate(..) => true,
                    _ => run.always,
                };
                run.issued.push((op.clone(), at));
                match result {
                    Ok(()) => {
                        run.acked = run.issued.len();
                        if durable {
                            run.must_survive = run.acked;
                        }
                        match run.check_reads(&db, &op) {
                            Ok(()) => db,
                            Err(e) => failed(&mut run, db, &e, &what),
                        }
                    }
                    Err(e) => failed(&mut run, db, &e, &what),
                }
            }
        };
    }
    let _ = run.reopen(db, Some(CrashMode::Torn { sector: 4096 }), "final power loss");
}

/// A failed call: only an injected fault or a halted machine explains one. The service dies
/// with its store: a power loss, then recovery.
fn failed(run: &mut Run, db: Db, e: &Error, what: &str) -> Db {
    assert!(
        matches!(e, Error::Io { .. } | Error::StorageFull { .. } | Error::Poisoned { .. }),
        "{what}: unexpected error {e}"
    );
    run.reopen(db, Some(CrashMode::Torn { sector: 512 }), what)
}
