//! A seeded swarm: random workloads under random mixes of faults, crashes and reopens.
//!
//! Scenario: for each seed, pick fault rates (short writes, ENOSPC, fsync EIO, read EIO, and for
//! some seeds misdirected writes), a sync mode and a segment size, then run random puts, TTL puts,
//! deletes, batches, lazy and immediate puts, touches, compare-and-swap puts (with the live or a
//! stale version), checkpoints, clean reopens, bursts of concurrent writers and power losses
//! (dropping unsynced data, or tearing it at 512- or 4096-byte sectors, sometimes with a bit
//! flipped in a stored file). After a failed write the machine loses power, as a crashed service
//! would.
//! Method: the real engine on `SimStorage`, single-threaded and deterministic per seed; a
//! `BTreeMap` model of every issued operation.
//! Invariant (oracle of docs/reliability.md): after every recovery the contents equal the model after some
//! prefix of the issued operations that includes every acknowledged one; in `Always` mode every
//! acknowledged operation (but a `Durability::Lazy` one only once a later durable write or a sync
//! covered it), in the lazy modes every one acknowledged before the last successful `sync()` or
//! `Durability::Immediate` write; a touch or compare-and-swap answers as the model does; no value that was never written; a second reopen gives the same contents; open
//! never fails except with a read error the swarm injected. Concurrent writers use disjoint keys:
//! each one's keys hold a prefix of its own operations. After a misdirected write or a bit flip,
//! acknowledged writes may be lost (the fault model allows it for damage that nothing vouches
//! for), so the floor drops to any prefix, and open may refuse with `Corruption`: then salvage
//! must open and return only values that were written. Default 2,000 seeds;
//! `SESSIONDB_SWARM_SEEDS=<n>` runs more, `SESSIONDB_SEED=<s>` replays one. The seeds that found
//! bugs replay in `regressions` exactly as they ran then (bursts and hostile faults off).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sessiondb::internals::sim::{CrashMode, FaultCounts, Faults, SimStorage};
use sessiondb::{Db, EncryptionKey, Error, ManualClock, Options, RecoveryMode, SyncMode};

mod support;
use support::swarm::{apply, issue, recovered_prefix, visible, Op, State};
use support::{small_options, OptionsExt, Rng};

/// Which kinds of steps a seed may take. Seeds that found bugs replay with the kinds they had.
#[derive(Clone, Copy)]
struct Features {
    bursts: bool,
    hostile: bool,
    /// Lazy and immediate puts, touches, compare-and-swap.
    sessions: bool,
}

const ORIGINAL: Features = Features {
    bursts: false,
    hostile: false,
    sessions: false,
};
const HOSTILE: Features = Features {
    bursts: true,
    hostile: true,
    sessions: false,
};
const ALL: Features = Features {
    bursts: true,
    hostile: true,
    sessions: true,
};

struct Run {
    rng: Rng,
    /// Draws for the newer kinds of steps, apart from `rng` so older seeds replay unchanged.
    extra: Rng,
    /// Draws for the session operations (newer still).
    sess: Rng,
    /// Every value ever issued per key (what salvage may return).
    written: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// A misdirected write or a bit flip happened: damage nothing may vouch for.
    damaged: bool,
    /// The store is encrypted at rest.
    encrypted: bool,
    features: Features,
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
        let opts = small_options()
            .sync_mode(mode)
            .segment_size(if rng.chance(50) { 64 * 1024 } else { 256 * 1024 })
            .value_size_max(8 * 1024)
            .batch_size_max(32 * 1024)
            .auto_checkpoint(false)
            .preallocate_ahead(false)
            .manual_clock(&clock)
            .sim(&sim);
        Run {
            rng,
            extra: Rng::new(seed ^ 0x005e_ed0f_5a1d),
            sess: Rng::new(seed ^ 0x5e55_1047),
            written: HashMap::new(),
            damaged: false,
            encrypted: false,
            features: ORIGINAL,
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

    /// A lazy or immediate put, a touch or a compare-and-swap on the 40 keys of `random_op`.
    fn session_op(&mut self) -> Op {
        let k = format!("k{}", self.sess.below(40)).into_bytes();
        let n = self.sess.range(0, 300) as usize;
        let mut v = self.sess.bytes(n);
        v.extend_from_slice(&self.sess.next_u64().to_le_bytes());
        match self.sess.below(4) {
            0 => Op::Lazy(k, v),
            1 => Op::Immediate(k, v),
            2 => {
                let ttl = self.sess.range(1, 5000);
                let live = self.current().get(&k).is_some_and(|(_, exp)| {
                    let now = self.clock.now_ms_for_tests();
                    *exp == 0 || *exp > now
                });
                Op::Touch(k, ttl, live)
            }
            _ => Op::Cas(k, v, self.sess.chance(70)),
        }
    }

    /// The model after every operation issued so far.
    fn current(&self) -> State {
        let mut state = self.base.clone();
        for (op, at) in &self.issued {
            apply(&mut state, op, *at);
        }
        state
    }

    fn remember(&mut self, op: &Op) {
        match op {
            Op::Lazy(k, v) | Op::Immediate(k, v) | Op::Cas(k, v, _) => {
                self.written.entry(k.clone()).or_default().insert(v.clone());
            }
            Op::Touch(..) => {}
            Op::Put(k, v, _) => {
                self.written.entry(k.clone()).or_default().insert(v.clone());
            }
            Op::Delete(_) => {}
            Op::Batch(ops) => {
                for (k, v) in ops {
                    if let Some(v) = v {
                        self.written.entry(k.clone()).or_default().insert(v.clone());
                    }
                }
            }
        }
    }

    /// After a misdirected write or a bit flip: open may refuse with `Corruption` (then salvage
    /// must open); whatever opens holds only values that were written, and a second open agrees.
    fn check_damaged(&mut self, what: &str) {
        self.sim.set_faults(Faults::default());
        let opts = match Db::open_with("/swarm", self.opts.clone()) {
            Ok(db) => {
                drop(db);
                self.opts.clone()
            }
            // An encrypted store's keyring is the one file it cannot lose: damage to it is
            // reported (by file and offset), and nothing is read.
            Err(Error::Corruption { path, .. }) if self.encrypted && path.ends_with("KEYRING") => return,
            Err(Error::Corruption { .. }) => self.opts.clone().recovery_mode(RecoveryMode::Salvage),
            Err(e) => panic!("{what}: open after damage failed with {e}"),
        };
        let first = self.written_only(&opts, what);
        let second = self.written_only(&opts, what);
        assert_eq!(first, second, "{what}: a second open after damage agrees");
    }

    fn written_only(&self, opts: &Options, what: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let db = Db::open_with("/swarm", opts.clone()).unwrap_or_else(|e| panic!("{what}: reopen after damage: {e}"));

        let got: BTreeMap<Vec<u8>, Vec<u8>> = db
            .range::<&[u8], _>(..)
            .map(|r| r.unwrap_or_else(|e| panic!("{what}: scan after damage: {e}")))
            .collect();
        for (k, v) in &got {
            let ok = self.written.get(k).is_some_and(|vs| vs.contains(v));
            assert!(
                ok,
                "{what}: a value never written for {k:?}: {} bytes, tail {:?}; opts {:?}; counts {:?}",
                v.len(),
                &v[v.len().saturating_sub(8)..],
                opts,
                self.sim.counts()
            );
        }
        got
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

    /// Checks the recovered contents against the model and makes them the new base. Deadlines
    /// are compared too: a lost touch changes only a deadline.
    fn verify(&mut self, db: &Db, what: &str) {
        let now = self.clock.now_ms_for_tests();
        let got: State = loop {
            let scanned: Result<BTreeMap<Vec<u8>, Vec<u8>>, _> = db.range::<&[u8], _>(..).collect();
            let with_deadlines = scanned.and_then(|m| {
                m.into_iter()
                    .map(|(k, v)| {
                        let exp = db.get_versioned(&k)?.and_then(|e| e.expires_at_ms).unwrap_or(0);
                        Ok((k, (v, exp)))
                    })
                    .collect::<sessiondb::Result<State>>()
            });
            match with_deadlines {
                Ok(m) => break m,
                Err(Error::Io { .. }) => continue,
                Err(e) => panic!("{what}: scan failed: {e}"),
            }
        };
        let Some((_, state)) = recovered_prefix(&self.base, &self.issued, self.must_survive, &got, now) else {
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

/// A power loss (or, when `clean`, a close) and a verified reopen. `None` when the seed ends:
/// damage was injected and checked.
fn reopen(run: &mut Run, db: Db, crash: Option<CrashMode>, what: &str) -> Option<Db> {
    match crash {
        None => {
            let closed = db.close();
            if closed.is_ok() {
                run.must_survive = run.acked;
            } else {
                run.sim.crash(CrashMode::DropUnsynced);
            }
        }
        Some(mode) => {
            run.sim.crash(mode);
            drop(db);
            if run.hostile_flip() {
                run.damaged = true;
            }
        }
    }
    run.sim.set_faults(Faults::default());
    if run.damaged {
        run.check_damaged(what);
        return None;
    }
    let db = run.open(what);
    run.verify(&db, what);
    Some(db)
}

impl Run {
    /// In hostile seeds, sometimes flips one bit of a stored file after a power loss (F8).
    fn hostile_flip(&mut self) -> bool {
        if !self.features.hostile || !self.extra.chance(8) {
            return false;
        }
        let files = self.sim.files();
        if files.is_empty() {
            return false;
        }
        let f = &files[self.extra.below(files.len() as u64) as usize];
        let len = self.sim.read_file(f).map_or(0, |b| b.len() as u64);
        if len == 0 {
            return false;
        }
        let at = self.extra.below(len);
        let bit = self.extra.below(8) as u8;
        self.sim.flip_bit(f, at, bit).is_ok()
    }

    fn crash_mode(&mut self) -> CrashMode {
        match self.rng.below(3) {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::Torn { sector: 512 },
            _ => CrashMode::Torn { sector: 4096 },
        }
    }
}

/// Concurrent writers on disjoint keys, then a power loss or a close, then a check that each
/// writer's keys hold a prefix of its operations (every acknowledged one in `Always` mode or after
/// a clean close). Starts from a verified clean state so the model is exact.
fn burst(run: &mut Run, db: Db, faults: Faults, what: &str) -> Option<Db> {
    let db = reopen(run, db, None, what)?;
    run.sim.set_faults(faults);
    let threads = run.extra.range(2, 5) as usize;
    let now = run.clock.now_ms_for_tests();
    let plans: Vec<Vec<Op>> = (0..threads)
        .map(|t| {
            (0..run.extra.range(2, 9))
                .map(|_| {
                    let k = format!("c{t}:{}", run.extra.below(4)).into_bytes();
                    match run.extra.below(4) {
                        0 => Op::Delete(k),
                        _ => {
                            let n = run.extra.range(0, 200) as usize;
                            let mut v = run.extra.bytes(n);
                            v.extend_from_slice(&run.extra.next_u64().to_le_bytes());
                            Op::Put(k, v, None)
                        }
                    }
                })
                .collect()
        })
        .collect();
    for plan in &plans {
        for op in plan {
            run.remember(op);
        }
    }
    let db = Arc::new(db);
    let acked: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let db = db.clone();
                scope.spawn(move || plan.iter().take_while(|op| issue(&db, op).is_ok()).count())
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
    });
    let db = Arc::try_unwrap(db).unwrap_or_else(|_| panic!("{what}: writers still hold the store"));
    let clean = run.extra.chance(30);
    let closed_ok = if clean {
        let ok = db.close().is_ok();
        if !ok {
            run.sim.crash(CrashMode::DropUnsynced);
        }
        ok
    } else {
        let mode = run.crash_mode();
        run.sim.crash(mode);
        drop(db);
        false
    };
    run.sim.set_faults(Faults::default());
    let db = run.open(what);
    let got: BTreeMap<Vec<u8>, Vec<u8>> = db.range::<&[u8], _>(..).map(|r| r.expect("scan")).collect();
    let mut base = run.base.clone();
    for (t, plan) in plans.iter().enumerate() {
        let prefix = format!("c{t}:").into_bytes();
        let mine = |m: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            m.iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let floor = if run.mode == SyncMode::Always || closed_ok {
            acked[t]
        } else {
            0
        };
        let mut state = run.base.clone();
        let mut found = None;
        for k in 0..=plan.len() {
            if k > 0 {
                apply(&mut state, &plan[k - 1], now);
            }
            if k >= floor && mine(&visible(&state, now)) == mine(&got) {
                found = Some(k);
            }
        }
        let k = found.unwrap_or_else(|| {
            panic!(
                "{what}: writer {t}'s keys hold no prefix of its {} operations with ≥ {floor}",
                plan.len()
            )
        });
        for op in &plan[..k] {
            apply(&mut base, op, now);
        }
    }
    assert_eq!(
        visible(&base, now),
        got,
        "{what}: keys outside the writers' are unchanged"
    );
    run.base = base;
    run.sim.set_faults(faults);
    Some(db)
}

/// Seeds that ran on an encrypted store.
static ENCRYPTED_SEEDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn one_seed(seed: u64, features: Features) -> FaultCounts {
    let mut run = Run::new(seed);
    run.features = features;
    // Encryption at rest, for a third of the seeds of the full mix (a draw of its own: the seeds
    // kept as regressions replay unencrypted, as they were found).
    if features.sessions && Rng::new(seed ^ 0x00e4_c2ce_7e11).chance(33) {
        run.encrypted = true;
        ENCRYPTED_SEEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        run.opts = run.opts.clone().encryption_key(EncryptionKey::from_bytes([0x5e; 32]));
    }
    let mut faults = run.faults();
    if features.hostile && run.extra.chance(5) {
        // F10: a write that lands elsewhere and reports success.
        faults.misdirect = 0.02;
        run.damaged = true;
    }
    let steps = run.rng.range(20, 80);
    let mut db = run.open("first open");
    run.sim.set_faults(faults);
    for step in 0..steps {
        let what = format!("seed {seed} step {step}");
        if features.bursts && run.extra.chance(4) {
            match burst(&mut run, db, faults, &what) {
                Some(d) => db = d,
                None => return run.sim.counts(),
            }
            continue;
        }
        match run.rng.below(20) {
            0 => {
                let _ = db.checkpoint();
            }
            1 => {
                // A clean close, then reopen: everything acknowledged survives.
                match reopen(&mut run, db, None, &what) {
                    Some(d) => db = d,
                    None => return run.sim.counts(),
                }
                run.sim.set_faults(faults);
            }
            2 | 3 => {
                let mode = run.crash_mode();
                match reopen(&mut run, db, Some(mode), &what) {
                    Some(d) => db = d,
                    None => return run.sim.counts(),
                }
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
                let op = if features.sessions && run.sess.chance(30) {
                    run.session_op()
                } else {
                    run.random_op()
                };
                run.remember(&op);
                let at = run.clock.now_ms_for_tests();
                let result = issue(&db, &op);
                let durable = match op {
                    // Writes nothing, so syncs nothing: a lazy write before it stays unsynced.
                    Op::Lazy(..) | Op::Cas(_, _, false) | Op::Touch(_, _, false) => false,
                    Op::Immediate(..) => true,
                    _ => run.mode == SyncMode::Always,
                };
                run.issued.push((op, at));
                // A compare-and-swap reads first: after a misdirected write, that read may
                // rightly find damage.
                let read_damage = run.damaged && matches!(run.issued.last(), Some((Op::Cas(..), _)));
                match result {
                    Ok(()) => {
                        run.acked = run.issued.len();
                        if durable {
                            run.must_survive = run.acked;
                        }
                    }
                    Err(Error::Corruption { .. }) if read_damage => {
                        match reopen(&mut run, db, Some(CrashMode::Torn { sector: 512 }), &what) {
                            Some(d) => db = d,
                            None => return run.sim.counts(),
                        }
                    }
                    Err(Error::Io { .. } | Error::StorageFull { .. } | Error::Poisoned { .. }) => {
                        // The service dies with its store: a power loss, then recovery.
                        match reopen(&mut run, db, Some(CrashMode::Torn { sector: 512 }), &what) {
                            Some(d) => db = d,
                            None => return run.sim.counts(),
                        }
                        run.sim.set_faults(faults);
                    }
                    Err(e) => panic!("{what}: unexpected error {e}"),
                }
            }
        }
    }
    let what = format!("seed {seed} final");
    let _ = reopen(&mut run, db, Some(CrashMode::Torn { sector: 4096 }), &what);
    run.sim.counts()
}

/// Seeds that found bugs, replayed as they first ran.
#[test]
fn regressions() {
    for seed in [
        // A damaged first-segment header counted as vouched by any durable record.
        1621071163199920188,
        // A segment torn while being zero-filled read as a foreign file.
        6623995608238488258,
        // A torn header with an intact magic read as a newer format version.
        11827624910985751299,
    ] {
        one_seed(seed, ORIGINAL);
    }
    for seed in [
        // A misdirected write was read back as a value and copied into a snapshot.
        9108680194353185753,
        // Two salvage opens disagreed: cutting a torn tail erased the record that had vouched
        // for earlier damage.
        4549507823450706146,
    ] {
        one_seed(seed, HOSTILE);
    }
}

#[test]
fn swarm() {
    let seeds: u64 = std::env::var("SESSIONDB_SWARM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let (first, _guard) = support::seeded("swarm");
    let only_one = std::env::var(support::SEED_VAR).is_ok();
    let count = if only_one { 1 } else { seeds };
    let mut total = FaultCounts::default();
    for i in 0..count {
        let seed = first.wrapping_add(i);
        let outcome = std::panic::catch_unwind(|| one_seed(seed, ALL));
        let c = outcome.unwrap_or_else(|_| panic!("swarm seed failed; replay with SESSIONDB_SEED={seed}"));
        total.short_writes += c.short_writes;
        total.enospc += c.enospc;
        total.sync_eio += c.sync_eio;
        total.read_eio += c.read_eio;
        total.crashes += c.crashes;
        total.writes_lost += c.writes_lost;
        total.sectors_torn += c.sectors_torn;
        total.dir_changes_lost += c.dir_changes_lost;
        total.misdirects += c.misdirects;
        total.bit_flips += c.bit_flips;
    }
    let encrypted = ENCRYPTED_SEEDS.load(std::sync::atomic::Ordering::Relaxed);
    println!("swarm: {count} seeds from {first} ({encrypted} encrypted); faults injected: {total:?}");
    if count >= 100 {
        assert!(total.short_writes > 0 && total.enospc > 0 && total.sync_eio > 0 && total.read_eio > 0);
        assert!(total.sectors_torn > 0 && total.writes_lost > 0 && total.dir_changes_lost > 0);
        assert!(
            total.misdirects > 0 && total.bit_flips > 0,
            "hostile faults were injected"
        );
    }
}
