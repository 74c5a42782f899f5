//! Crash at every storage operation of a workload; recovery yields a prefix holding every
//! acknowledged write.
//!
//! Scenario: a fixed workload (puts, deletes, batches, TTL puts, several segment rolls, two
//! checkpoints) runs on the simulated storage with `SyncMode::Always`; the machine halts at the
//! n-th storage operation, for every n, then loses power, under "drop everything unsynced" and
//! under "random torn subset" (512- and 4096-byte sectors).
//! Method: the real engine on `SimStorage`, deterministic (no background threads), then reopen.
//! Invariant (oracle of docs/reliability.md): the recovered contents equal the model after the first k
//! operations for some k ≥ the number acknowledged; a second reopen gives the same contents.

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Db, EncryptionKey, Options, SyncMode};

mod support;
use support::faults::{apply, check_oracle, issue, options, Op, State, DIR};

/// A workload step: an operation of the model, or a checkpoint.
#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    Checkpoint,
}

fn workload() -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..170u32 {
        let key = format!("k{:02}", i % 23).into_bytes();
        let value = vec![(i % 251) as u8; 600 + (i as usize * 37) % 900];
        let op = match i % 10 {
            3 => Op::Delete(key),
            7 => Op::Batch(vec![
                (key.clone(), Some(format!("batch-{i}").into_bytes())),
                (format!("k{:02}", (i + 5) % 23).into_bytes(), None),
                (format!("b{i}").into_bytes(), Some(value.clone())),
            ]),
            _ => Op::Put(key, value),
        };
        steps.push(Step::Op(op));
        if i == 60 || i == 130 {
            steps.push(Step::Checkpoint);
        }
    }
    steps
}

/// The model after each prefix of the steps (a checkpoint changes nothing).
fn model_states(steps: &[Step]) -> Vec<State> {
    let mut states = vec![State::new()];
    let mut s = State::new();
    for step in steps {
        if let Step::Op(op) = step {
            apply(&mut s, op);
        }
        states.push(s.clone());
    }
    states
}

/// Runs the workload until an operation fails; returns how many were acknowledged.
fn run(db: &Db, steps: &[Step]) -> usize {
    steps
        .iter()
        .take_while(|step| match step {
            Step::Op(op) => issue(db, op).is_ok(),
            Step::Checkpoint => db.checkpoint().is_ok(),
        })
        .count()
}

#[test]
fn crash_at_every_io_op() {
    crash_at_every_io_op_of(options, "crash_at_every_io_op");
}

/// The same on an encrypted store: its keyring is written at creation, at every segment taken
/// for appends and at every checkpoint, and each is a crash point too.
#[test]
fn crash_at_every_io_op_encrypted() {
    crash_at_every_io_op_of(
        |sim, mode| options(sim, mode).encryption_key(EncryptionKey::from_bytes([0xc5; 32])),
        "crash_at_every_io_op_encrypted",
    );
}

fn crash_at_every_io_op_of(options: impl Fn(&SimStorage, SyncMode) -> Options, test: &'static str) {
    let (seed, _guard) = support::seeded(test);
    let steps = workload();
    let states = model_states(&steps);

    // Count the workload's storage operations in a run without a crash.
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
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
    assert!(
        stats.segments_recycled > 0,
        "the log recycles segments the first checkpoint covered"
    );

    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::Torn { sector: 512 },
        CrashMode::Torn { sector: 4096 },
    ];
    let (mut points, mut torn_cuts, mut unacked_kept, mut lost_tail) = (0u64, 0u64, 0u64, 0u64);
    for n in opened..=total {
        for (m, mode) in modes.iter().enumerate() {
            let sim = SimStorage::new(seed ^ (n << 8) ^ m as u64);
            let opts = options(&sim, SyncMode::Always);
            let db = Db::open_with(DIR, opts.clone()).unwrap();
            sim.halt_after(Some(n));
            let acked = run(&db, &steps);
            let issued = (acked + 1).min(steps.len());
            sim.crash(*mode);
            drop(db);
            let what = format!("halt after op {n}, {mode:?}");
            // The first open cuts what is torn (counted here); the oracle then checks it.
            let torn = Db::open_with(DIR, opts.clone())
                .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"))
                .stats()
                .recovery
                .torn_tail_bytes;
            let k = check_oracle(&opts, &states, acked, issued, &what);
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
