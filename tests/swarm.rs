//! A seeded swarm: random workloads under random mixes of faults, crashes and reopens.
//!
//! Scenario: for each seed, pick fault rates (short writes, ENOSPC, fsync EIO, read EIO), a sync
//! mode and a segment size, then run random puts, TTL puts, deletes, batches, checkpoints, clean
//! reopens and power losses (dropping unsynced data, or tearing it at 512- or 4096-byte sectors).
//! After a failed write the machine loses power, as a crashed service would.
//! Method: the real engine on `SimStorage`, single-threaded and deterministic per seed; a
//! `BTreeMap` model of every issued operation.
//! Invariant (faults.md oracle): after every recovery the contents equal the model after some
//! prefix of the issued operations that includes every acknowledged one; in `Always` mode every
//! acknowledged operation, in the lazy modes every one acknowledged before the last successful
//! `sync()`; no value that was never written; a second reopen gives the same contents; open
//! never fails except with a read error the swarm injected. Default 2,000 seeds;
//! `SESSIONDB_SWARM_SEEDS=<n>` runs more, `SESSIONDB_SEED=<s>` replays one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sessiondb::storage::sim::{CrashMode, FaultCounts, Faults, SimStorage};
use sessiondb::{Batch, Db, Error, ManualClock, Options, SyncMode};

mod common;
use common::Rng;

type State = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>, Option<u64>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

fn apply(state: &mut State, op: &Op, now_ms: u64) {
    match op {
        Op::Put(k, v, ttl) => {
            state.insert(k.clone(), (v.clone(), ttl.map_or(0, |t| now_ms + t)));
        }
        Op::Delete(k) => {
            state.remove(k);
        }
        Op::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => state.insert(k.clone(), (v.clone(), 0)),
                    None => state.remove(k),
                };
            }
        }
    }
}

fn visible(state: &State, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    state
        .iter()
        .filter(|(_, (_, exp))| *exp == 0 || *exp > now_ms)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

struct Run {
    rng: Rng,
    sim: SimStorage,
    clock: ManualClock,
    opts: Options,
    mode: SyncMode,
    /// The state the last recovery verified.
    base: State,
    /// Operations issued since, with the clock at issue time.
    issued: Vec<(Op, u64)>,
    /// How many of `issued` must survive a power loss.
    must_survive: usize,
    /// How many of `issued` were acknowledged.
    acked: usize,
}

impl Run {
    fn new(seed: u64) -> Run {
        let mut rng = Rng::new(seed);
        let sim = SimStorage::new(seed);
        let clock = ManualClock::new(1_000_000);
        let mode = match rng.below(4) {
            0 => SyncMode::Never,
            1 => SyncMode::Interval(Duration::from_secs(3600)),
            _ => SyncMode::Always,
        };
        let opts = Options::new()
            .sync_mode(mode)
            .segment_size(if rng.chance(50) { 64 * 1024 } else { 256 * 1024 })
            .value_size_max(8 * 1024)
            .batch_size_max(32 * 1024)
            .auto_checkpoint(false)
            .preallocate_ahead(false)
            .clock(Arc::new(clock.clone()))
            .storage(Arc::new(sim.clone()));
        Run {
            rng,
            sim,
            clock,
            opts,
            mode,
            base: State::new(),
            issued: Vec::new(),
            must_survive: 0,
            acked: 0,
        }
    }

    fn faults(&mut self) -> Faults {
        let rate = |rng: &mut Rng, p: f64| if rng.chance(30) { p } else { 0.0 };
        Faults {
            short_write: rate(&mut self.rng, 0.2),
            enospc: rate(&mut self.rng, 0.01),
            sync_eio: rate(&mut self.rng, 0.01),
            read_eio: rate(&mut self.rng, 0.01),
            misdirect: 0.0,
        }
    }

    fn random_op(&mut self) -> Op {
        let key = |rng: &mut Rng| format!("k{}", rng.below(40)).into_bytes();
        let value = |rng: &mut Rng| {
            let n = if rng.chance(10) {
                rng.range(2000, 7000)
            } else {
                rng.range(0, 300)
            };
            let mut v = rng.bytes(n as usize);
            v.extend_from_slice(&rng.next_u64().to_le_bytes());
            v
        };
        match self.rng.below(10) {
            0..=4 => {
                let (k, v) = (key(&mut self.rng), value(&mut self.rng));
                Op::Put(k, v, None)
            }
            5 => {
                let (k, v) = (key(&mut self.rng), value(&mut self.rng));
                Op::Put(k, v, Some(self.rng.range(1, 5000)))
            }
            6 | 7 => Op::Delete(key(&mut self.rng)),
            _ => {
                let n = self.rng.range(1, 6);
                let ops = (0..n)
                    .map(|_| {
                        let k = key(&mut self.rng);
                        let v = if self.rng.chance(70) {
                            Some(value(&mut self.rng))
                        } else {
                            None
                        };
                        (k, v)
                    })
                    .collect();
                Op::Batch(ops)
            }
        }
    }

    fn issue(&self, db: &Db, op: &Op) -> sessiondb::Result<()> {
        match op {
            Op::Put(k, v, None) => db.put(k, v),
            Op::Put(k, v, Some(ttl)) => db.put_with_ttl(k, v, Duration::from_millis(*ttl)),
            Op::Delete(k) => db.delete(k),
            Op::Batch(ops) => {
                let mut b = Batch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => b.put(k, v),
                        None => b.delete(k),
                    };
                }
                db.write(b)
            }
        }
    }

    /// Opens the store, retrying while injected read errors make recovery fail.
    fn open(&mut self, what: &str) -> Db {
        for _ in 0..20 {
            match Db::open_with("/swarm", self.opts.clone()) {
                Ok(db) => return db,
                Err(Error::Io { .. }) if self.sim.counts().read_eio > 0 => continue,
                Err(e) => {
                    for f in self.sim.files() {
                        let b = self.sim.read_file(&f).unwrap();
                        let nz = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
                        eprintln!(
                            "  {} len {} nonzero_end {} head {:02x?}",
                            f.display(),
                            b.len(),
                            nz,
                            &b[..b.len().min(48)]
                        );
                    }
                    panic!("{what}: open failed: {e}")
                }
            }
        }
        self.sim.set_faults(Faults::default());
        Db::open_with("/swarm", self.opts.clone()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"))
    }

    /// Checks the recovered contents against the model and makes them the new base.
    fn verify(&mut self, db: &Db, what: &str) {
        let now = self.clock.now_ms_for_tests();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = loop {
            match db.range::<&[u8], _>(..).collect::<Result<_, _>>() {
                Ok(m) => break m,
                Err(Error::Io { .. }) => continue,
                Err(e) => panic!("{what}: scan failed: {e}"),
            }
        };
        let mut state = self.base.clone();
        let mut candidates = Vec::new();
        for k in 0..=self.issued.len() {
            if k > 0 {
                let (op, at) = &self.issued[k - 1];
                apply(&mut state, op, *at);
            }
            if k >= self.must_survive && visible(&state, now) == got {
                candidates.push((k, state.clone()));
            }
        }
        let Some((_, state)) = candidates.pop() else {
            panic!(
                "{what}: recovered {} keys, which is no prefix of the {} issued operations holding the {} that must survive",
                got.len(),
                self.issued.len(),
                self.must_survive
            );
        };
        self.base = state;
        self.issued.clear();
        self.must_survive = 0;
        self.acked = 0;
    }
}

trait NowForTests {
    fn now_ms_for_tests(&self) -> u64;
}

impl NowForTests for ManualClock {
    fn now_ms_for_tests(&self) -> u64 {
        sessiondb::Clock::now_ms(self)
    }
}

fn one_seed(seed: u64) -> FaultCounts {
    let mut run = Run::new(seed);
    let faults = run.faults();
    let steps = run.rng.range(20, 80);
    let mut db = run.open("first open");
    run.sim.set_faults(faults);
    for step in 0..steps {
        let what = format!("seed {seed} step {step}");
        match run.rng.below(20) {
            0 => {
                let _ = db.checkpoint();
            }
            1 => {
                // A clean close, then reopen: everything acknowledged survives.
                let closed = db.close();
                if closed.is_ok() {
                    run.must_survive = run.acked;
                }
                run.sim.set_faults(Faults::default());
                if closed.is_err() {
                    run.sim.crash(CrashMode::DropUnsynced);
                }
                db = run.open(&what);
                run.verify(&db, &what);
                run.sim.set_faults(faults);
            }
            2 | 3 => {
                let mode = match run.rng.below(3) {
                    0 => CrashMode::DropUnsynced,
                    1 => CrashMode::Torn { sector: 512 },
                    _ => CrashMode::Torn { sector: 4096 },
                };
                run.sim.crash(mode);
                drop(db);
                run.sim.set_faults(Faults::default());
                db = run.open(&what);
                run.verify(&db, &what);
                // A second reopen gives the same contents.
                drop(db);
                db = run.open(&what);
                run.verify(&db, &what);
                run.sim.set_faults(faults);
            }
            4 => run.clock.advance(Duration::from_millis(run.rng.range(1, 3000))),
            5 => {
                if db.sync().is_ok() {
                    run.must_survive = run.acked;
                }
            }
            _ => {
                let op = run.random_op();
                let at = run.clock.now_ms_for_tests();
                let result = run.issue(&db, &op);
                run.issued.push((op, at));
                match result {
                    Ok(()) => {
                        run.acked = run.issued.len();
                        if run.mode == SyncMode::Always {
                            run.must_survive = run.acked;
                        }
                    }
                    Err(Error::Io { .. } | Error::Poisoned { .. }) => {
                        // The service dies with its store: a power loss, then recovery.
                        run.sim.crash(CrashMode::Torn { sector: 512 });
                        drop(db);
                        run.sim.set_faults(Faults::default());
                        db = run.open(&what);
                        run.verify(&db, &what);
                        run.sim.set_faults(faults);
                    }
                    Err(e) => panic!("{what}: unexpected error {e}"),
                }
            }
        }
    }
    run.sim.set_faults(Faults::default());
    run.sim.crash(CrashMode::Torn { sector: 4096 });
    drop(db);
    let db = run.open(&format!("seed {seed} final"));
    run.verify(&db, &format!("seed {seed} final"));
    run.sim.counts()
}

#[test]
fn swarm() {
    let seeds: u64 = std::env::var("SESSIONDB_SWARM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let (first, _guard) = common::seeded("swarm");
    let only_one = std::env::var(common::SEED_VAR).is_ok();
    let count = if only_one { 1 } else { seeds };
    let mut total = FaultCounts::default();
    for i in 0..count {
        let seed = first.wrapping_add(i);
        let outcome = std::panic::catch_unwind(|| one_seed(seed));
        let c = outcome.unwrap_or_else(|_| panic!("swarm seed failed; replay with SESSIONDB_SEED={seed}"));
        total.short_writes += c.short_writes;
        total.enospc += c.enospc;
        total.sync_eio += c.sync_eio;
        total.read_eio += c.read_eio;
        total.crashes += c.crashes;
        total.writes_lost += c.writes_lost;
        total.sectors_torn += c.sectors_torn;
        total.dir_changes_lost += c.dir_changes_lost;
    }
    println!("swarm: {count} seeds from {first}; faults injected: {total:?}");
    if count >= 100 {
        assert!(total.short_writes > 0 && total.enospc > 0 && total.sync_eio > 0 && total.read_eio > 0);
        assert!(total.sectors_torn > 0 && total.writes_lost > 0 && total.dir_changes_lost > 0);
    }
}
