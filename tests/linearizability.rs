//! Concurrent histories checked for linearizability (issue 12).
//!
//! Scenario: four threads (`SESSIONDB_CHECKER_THREADS`) issue every kind of call (`put`, `put_with_ttl`, `delete`, `write`
//! with and without preconditions, `put_if_version`, `delete_if_version`, `touch` and
//! `touch_with` in each durability (odd threads' writes through the async API: `put_async`,
//! `delete_async`, `write_async`, `write_if_async`, `touch_with_async`), `get`, `get_with_version`, `get_versioned`, `scan_prefix`,
//! `range`, `backup`) on six keys, so they collide on every key, while checkpoints (automatic,
//! after 32 to 256 KiB of log, and a thread calling `checkpoint` and `sync`), the expiry
//! sweeper (every few ms) and `purge_expired` run, batches of filler keys outside the checked
//! ones grow the index's layers into sorted runs, and a `ManualClock` moves forward under them
//! (TTLs of 50 ms to 5 s, so entries expire mid-history). Segments are 64 KiB, so rolls and the
//! spare segment's hand-off happen all the time. Every few rounds the store is closed and
//! reopened, with other options (segment size among them).
//!
//! Method: each round's calls are recorded with their invocation and response order and the
//! clock around them, then checked key by key for linearizability against a sequential model
//! (tests/support/history.rs: value, version, expiry); scans and backups also never show part of
//! a batch. A round ends with a read of every key when nobody else runs, where the next round's
//! model starts; across a reopen those reads must find exactly what the last round left.
//!
//! The seed (`SESSIONDB_SEED`) fixes every call each thread issues and the options; the
//! interleaving is the machine's, so a failure prints the whole history of the key that broke.
//! For interleavings chosen and replayed by a scheduler, see `schedules/` (shuttle).
//!
//! Budget: `SESSIONDB_CHECKER_SECS` seconds per storage (default 8: real files, where sealed
//! segments and snapshots are mapped, then the simulated storage, where every read is a
//! positioned read). The campaign in docs/testing.md ran it for hours.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::internals::sim::SimStorage;
use sessiondb::storage::{FsStorage, Storage};
use sessiondb::{Batch, Db, EncryptionKey, ManualClock, Options, SyncMode};
use support::history::{check, final_reads, state_after, Env, Key, KeyState, Mix, Recorder, Worker};
use support::{seed, small_options, OptionsExt, Rng};

const KEYS: u8 = 6;

/// Worker threads: `SESSIONDB_CHECKER_THREADS`, default 4.
fn workers() -> usize {
    std::env::var("SESSIONDB_CHECKER_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}
const T0: u64 = 1_700_000_000_000;

/// Figures of a campaign.
#[derive(Debug, Default)]
struct Figures {
    rounds: u64,
    /// Lazy writes that went beside a syncing group (`Stats::writes_beside`).
    beside: u64,
    /// The campaign's store was encrypted.
    encrypted: bool,
    calls: u64,
    key_histories: u64,
    states: u64,
    checkpoints: u64,
    reopens: u64,
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("SESSIONDB_CHECKER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    Duration::from_secs_f64(secs)
}

/// Options for one open, drawn from `rng` (the store's encryption key, if it has one, is the
/// campaign's: a store is encrypted or not for its life).
fn options(rng: &mut Rng, storage: &Arc<dyn Storage>, clock: &ManualClock, key: Option<&EncryptionKey>) -> Options {
    let sync_mode = match rng.below(3) {
        0 => SyncMode::Always,
        1 => SyncMode::Never,
        _ => SyncMode::Interval(Duration::from_millis(1 + rng.below(10))),
    };
    let mut opts = small_options()
        .storage(storage.clone())
        .manual_clock(clock)
        .sync_mode(sync_mode)
        .segment_size([64 << 10, 128 << 10, 256 << 10][rng.below(3) as usize])
        .checkpoint_log_bytes([32 << 10, 96 << 10, 256 << 10][rng.below(3) as usize])
        .preallocate_ahead(rng.chance(70))
        .sweep_interval(Some(Duration::from_millis(1 + rng.below(5))));
    if let Some(key) = key {
        opts = opts.encryption_key(key.clone());
    }
    // Retention checkpoints on the store's clock, which the campaign moves: one more background
    // thread checkpointing under the calls.
    if rng.chance(30) {
        opts = opts.max_retention(Duration::from_secs(1 + rng.below(3)));
    }
    opts
}

/// One storage's campaign for `budget`.
fn campaign(seed: u64, storage: Arc<dyn Storage>, dir: &Path, env: Env, budget: Duration) -> Figures {
    let mut rng = Rng::new(seed);
    // Half the campaigns run on an encrypted store (a draw of its own).
    let key = Rng::new(seed ^ 0x00e4_c2ce_7e11)
        .chance(50)
        .then(|| EncryptionKey::from_bytes([0x1e; 32]));
    let env = Env {
        key: key.clone(),
        ..env
    };
    let clock = ManualClock::new(T0);
    let recorder = Arc::new(Recorder::new(clock.clone()));
    let mut figures = Figures {
        encrypted: key.is_some(),
        ..Figures::default()
    };
    let mut db = Arc::new(Db::open_with(dir, options(&mut rng, &storage, &clock, key.as_ref())).unwrap());
    let mut init: BTreeMap<Key, KeyState> = support::history::empty_states(KEYS);
    let mut versions_max = BTreeMap::new();
    let mix = Mix {
        keys: KEYS,
        clock_moves: 4,
        backups: 1,
    };
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < budget {
        round += 1;
        let ops_per_worker = 50 + rng.below(250);
        let stop = Arc::new(AtomicBool::new(false));
        let background = {
            let (db, stop, clock) = (db.clone(), stop.clone(), clock.clone());
            let mut rng = Rng::new(rng.next_u64());
            std::thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    match rng.below(5) {
                        0 => db.checkpoint().map_err(|e| format!("checkpoint: {e}"))?,
                        1 => db.sync().map_err(|e| format!("sync: {e}"))?,
                        2 => {
                            db.purge_expired();
                        }
                        3 => {
                            // Filler keys, outside the checked ones' `k` prefix: enough of them
                            // that the index's layers become sorted runs (merged in place,
                            // changed in place, copied up by touches during checkpoints) with
                            // the checked keys among them.
                            let mut batch = Batch::new();
                            for _ in 0..32 {
                                let key = format!("f{:04}", rng.below(2_000));
                                if rng.chance(20) {
                                    batch.delete(key);
                                } else {
                                    batch.put(key, [7u8; 16]);
                                }
                            }
                            db.write(batch).map_err(|e| format!("filler batch: {e}"))?;
                        }
                        _ => clock.advance(Duration::from_millis(rng.below(3))),
                    }
                    std::thread::yield_now();
                }
                Ok(())
            })
        };
        let workers: Vec<_> = (0..workers())
            .map(|t| {
                let (db, recorder, env, clock) = (db.clone(), recorder.clone(), env.clone(), clock.clone());
                let mut worker = Worker::new(t, round, rng.next_u64(), mix);
                std::thread::spawn(move || {
                    // Odd threads write through the async API: its groups, led by the commit
                    // thread, interleave with the blocking writers' (issue 17).
                    support::history::use_async_writes(t % 2 == 1);
                    for _ in 0..ops_per_worker {
                        worker.maybe_move_clock(&clock);
                        let op = worker.next_op();
                        let outcome = recorder.call(&db, t, op.clone(), &env);
                        worker.saw(&op, &outcome);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker panicked");
        }
        stop.store(true, Ordering::Relaxed);
        let background = background.join().expect("the background thread panicked");
        final_reads(&recorder, &db, KEYS, &env);
        let calls = recorder.take();
        let fail = |what: String| -> ! {
            panic!(
                "\nSESSIONDB_SEED={seed}, round {round}, {} calls:\n{what}\n",
                calls.len()
            )
        };
        background.unwrap_or_else(|e| fail(e));
        let checked = check(&calls, &init, KEYS).unwrap_or_else(|e| fail(e));
        init = state_after(&calls, KEYS, &mut versions_max);
        figures.rounds += 1;
        figures.calls += checked.calls;
        figures.key_histories += checked.key_histories;
        figures.states += checked.states;
        if rng.chance(25) {
            // Close and reopen with other options; the next round starts with reads of every
            // key, which must find what this one left.
            let closing = Arc::into_inner(db).expect("no other handle");
            figures.checkpoints += closing.stats().checkpoints;
            figures.beside += closing.stats().writes_beside;
            closing.close().unwrap_or_else(|e| fail(format!("close: {e}")));
            let reopened = Db::open_with(dir, options(&mut rng, &storage, &clock, key.as_ref()));
            db = Arc::new(reopened.unwrap_or_else(|e| fail(format!("reopen: {e}"))));
            final_reads(&recorder, &db, KEYS, &env);
            figures.reopens += 1;
        }
    }
    let last = Arc::into_inner(db).expect("no other handle");
    figures.checkpoints += last.stats().checkpoints;
    figures.beside += last.stats().writes_beside;
    last.close().unwrap();
    figures
}

fn report(name: &str, seed: u64, f: &Figures, took: Duration) {
    eprintln!(
        "{name}: SESSIONDB_SEED={seed}: {} rounds, {} calls, {} key histories, {} search states, {} checkpoints, \
         {} reopens, {} lazy writes beside a syncing group, in {:.1} s{}: linearizable",
        f.rounds,
        f.calls,
        f.key_histories,
        f.states,
        f.checkpoints,
        f.reopens,
        f.beside,
        took.as_secs_f64(),
        if f.encrypted { ", encrypted" } else { "" }
    );
}

#[test]
fn concurrent_histories_on_real_files_are_linearizable() {
    let seed = seed();
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let env = Env {
        storage: storage.clone(),
        backups: tmp.path().to_path_buf(),
        real_files: true,
        key: None,
    };
    let started = Instant::now();
    let f = campaign(seed, storage, &tmp.path().join("store"), env, budget());
    report("real files", seed, &f, started.elapsed());
}

#[test]
fn concurrent_histories_on_the_sim_are_linearizable() {
    let seed = seed();
    let sim: Arc<dyn Storage> = Arc::new(SimStorage::new(seed));
    let env = Env {
        storage: sim.clone(),
        backups: PathBuf::from("/backups"),
        real_files: false,
        key: None,
    };
    sim.create_dir_all(&env.backups).unwrap();
    let started = Instant::now();
    let f = campaign(seed, sim, Path::new("/store"), env, budget());
    report("sim", seed, &f, started.elapsed());
}
