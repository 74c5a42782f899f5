//! Crash at every storage operation of a workload; recovery yields a prefix holding every
//! acknowledged write.
//!
//! Scenario: a fixed workload (puts, deletes, batches, TTL puts, several segment rolls, two
//! checkpoints) runs on the simulated storage with `SyncMode::Always`; the machine halts at the
//! n-th storage operation, for every n, then loses power, under "drop everything unsynced" and
//! under "random torn subset" (512- and 4096-byte sectors).
//! Method: the real engine on `SimStorage`, deterministic (no background threads), then reopen.
//! Invariant (faults.md oracle): the recovered contents equal the model after the first k
//! operations for some k ≥ the number acknowledged; a second reopen gives the same contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use sessiondb::storage::sim::{CrashMode, SimStorage};
use sessiondb::{Batch, Db, ManualClock, Options, SyncMode};

mod common;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Step {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Checkpoint,
}

fn workload() -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..170u32 {
        let key = format!("k{:02}", i % 23).into_bytes();
        let value = vec![(i % 251) as u8; 600 + (i as usize * 37) % 900];
        match i % 10 {
            3 => steps.push(Step::Delete(key)),
            7 => steps.push(Step::Batch(vec![
                (key.clone(), Some(format!("batch-{i}").into_bytes())),
                (format!("k{:02}", (i + 5) % 23).into_bytes(), None),
                (format!("b{i}").into_bytes(), Some(value.clone())),
            ])),
            _ => steps.push(Step::Put(key, value)),
        }
        if i == 60 || i == 130 {
            steps.push(Step::Checkpoint);
        }
    }
    steps
}

fn model_states(steps: &[Step]) -> Vec<State> {
    let mut states = vec![State::new()];
    let mut s = State::new();
    for step in steps {
        match step {
            Step::Put(k, v) => {
                s.insert(k.clone(), v.clone());
            }
            Step::Delete(k) => {
                s.remove(k);
            }
            Step::Batch(ops) => {
                for (k, v) in ops {
                    match v {
                        Some(v) => s.insert(k.clone(), v.clone()),
                        None => s.remove(k),
                    };
                }
            }
            Step::Checkpoint => {}
        }
        states.push(s.clone());
    }
    states
}

fn options(sim: &SimStorage) -> Options {
    Options::new()
        .sync_mode(SyncMode::Always)
        .segment_size(64 * 1024)
        .value_size_max(4096)
        .batch_size_max(16 * 1024)
        .auto_checkpoint(false)
        .preallocate_ahead(false)
        .clock(Arc::new(ManualClock::new(1_000_000)))
        .storage(Arc::new(sim.clone()))
}

/// Runs the workload until an operation fails; returns how many were acknowledged.
fn run(db: &Db, steps: &[Step]) -> usize {
    for (i, step) in steps.iter().enumerate() {
        let r = match step {
            Step::Put(k, v) => db.put(k, v),
            Step::Delete(k) => db.delete(k),
            Step::Batch(ops) => {
                let mut b = Batch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => b.put(k, v),
                        None => b.delete(k),
                    };
                }
                db.write(b)
            }
            Step::Checkpoint => db.checkpoint(),
        };
        if r.is_err() {
            return i;
        }
    }
    steps.len()
}

fn contents(db: &Db) -> State {
    db.range::<&[u8], _>(..)
        .map(|r| r.expect("scan after recovery"))
        .collect()
}

/// Returns (recovered k, torn tail bytes cut).
fn check(
    dir: &std::path::Path,
    sim: &SimStorage,
    states: &[State],
    acked: usize,
    issued: usize,
    what: &str,
) -> (usize, u64) {
    let db = Db::open_with(dir, options(sim)).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let got = contents(&db);
    let k = (acked..=issued.min(states.len() - 1))
        .find(|&k| states[k] == got)
        .unwrap_or_else(|| panic!("{what}: recovered state is no prefix with ≥ {acked} ops (issued {issued})"));
    let torn = db.stats().recovery.torn_tail_bytes;
    drop(db);
    let db = Db::open_with(dir, options(sim)).unwrap();
    assert_eq!(contents(&db), states[k], "{what}: a second reopen gives the same state");
    (k, torn)
}

#[test]
fn crash_at_every_io_op() {
    let (seed, _guard) = common::seeded("crash_at_every_io_op");
    let steps = workload();
    let states = model_states(&steps);
    let dir = std::path::Path::new("/store");

    // Count the workload's storage operations in a run without a crash.
    let sim = SimStorage::new(seed);
    let db = Db::open_with(dir, options(&sim)).unwrap();
    let opened = sim.ops();
    assert_eq!(run(&db, &steps), steps.len());
    let total = sim.ops();
    let stats = db.stats();
    drop(db);
    assert!(
        total - opened >= 300,
        "the workload has {} storage operations",
        total - opened
    );
    assert!(stats.checkpoints == 2, "two checkpoints");

    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::Torn { sector: 512 },
        CrashMode::Torn { sector: 4096 },
    ];
    let (mut points, mut torn_cuts, mut unacked_kept, mut lost_tail) = (0u64, 0u64, 0u64, 0u64);
    for n in opened..=total {
        for (m, mode) in modes.iter().enumerate() {
            let sim = SimStorage::new(seed ^ (n << 8) ^ m as u64);
            let db = Db::open_with(dir, options(&sim)).unwrap();
            sim.halt_after(Some(n));
            let acked = run(&db, &steps);
            let issued = (acked + 1).min(steps.len());
            sim.crash(*mode);
            drop(db);
            let (k, torn) = check(
                dir,
                &sim,
                &states,
                acked,
                issued,
                &format!("halt after op {n}, {mode:?}"),
            );
            points += 1;
            torn_cuts += u64::from(torn > 0);
            unacked_kept += u64::from(k > acked);
            lost_tail += u64::from(k == acked && issued > acked);
        }
    }
    println!(
        "crash points: {points} over {} storage ops; torn tails cut: {torn_cuts}; \
         unacknowledged write recovered: {unacked_kept}; unacknowledged write lost: {lost_tail}",
        total - opened
    );
    assert!(
        torn_cuts > 0 && unacked_kept > 0 && lost_tail > 0,
        "the crash points cover every outcome"
    );
}
