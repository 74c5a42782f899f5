//! Faults while appending to the log (docs/reliability.md, F2, F3, F4, F6, F7, F9), on the simulated
//! storage.
//!
//! Scenario, one test each:
//! - `torn_tail_record`: a commit group of eight writers is written but its fsync never runs;
//!   the machine loses power and each sector of the group's write lands, stays old, or is zeros
//!   or garbage; after recovery more writes are made and the machine loses power again.
//! - `zero_tail`: the end of a segment's written data is zeroed or overwritten with garbage;
//!   after recovery a few records, shorter than or as long as the stale ones, are written over
//!   the place, and the machine loses power.
//! - `reordered_writes_no_hole`: unsynced commit groups in `SyncMode::Never`, then a power loss
//!   that keeps some of them (sector by sector) and loses others, so later ones land without
//!   earlier ones.
//! - `enospc_mid_append`: the disk fills part-way through the write of the n-th operation, for
//!   every n across a segment roll; then a clean drop or a power loss.
//! - `short_writes_equivalence`: one deterministic workload (puts, deletes, batches, rolls,
//!   checkpoints, a reopen) with half of all writes cut short, and without.
//! - `new_segment_dir_entry_lost`: writes acknowledged in a freshly rolled segment, then a power
//!   loss that drops every directory entry not fsynced; also a halt at every storage operation
//!   of the write that rolls, and the background preallocator on.
//!
//! Method: the real engine on `SimStorage` (deterministic: no background threads, a manual
//! clock), a `BTreeMap` model of every prefix of the issued operations, record boundaries from
//! the documented segment framing. Seeds come from `SESSIONDB_SEED` (printed on failure).
//!
//! Invariant (oracle of docs/reliability.md): the recovered contents equal the model after the first k issued
//! operations for some k ≥ the number acknowledged; batches are whole; nothing after a hole is
//! replayed; a second open gives the same state; writes after a recovery survive the next one;
//! an ENOSPC write is not acknowledged and poisons the store; short writes leave files
//! byte-identical to a run without them.

mod support;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use sessiondb::internals::sim::{CrashMode, FaultCounts, Faults, SimStorage};
use sessiondb::{Db, Error, SyncMode};
use support::faults::{
    check_oracle, contents, issue, options, prefix_k, rolling_write, run_all, run_until_roll, segments,
    segments_with_records, states, value, workload, Op, RollingWrite, State, DIR,
};
use support::hold::hold_fsync_and_line_up;
use support::{joined, parse_records};

fn mode_for(i: u64) -> CrashMode {
    match i % 3 {
        0 => CrashMode::DropUnsynced,
        1 => CrashMode::Torn { sector: 512 },
        _ => CrashMode::Torn { sector: 4096 },
    }
}

// ---------------------------------------------------------------------------------------------
// torn_tail_record

const GROUP: usize = 8;

fn group_value(i: usize) -> Vec<u8> {
    let mut v = format!("group-value-{i}:").into_bytes();
    v.extend(value("g", i, 700));
    v
}

/// One round: 20 acknowledged puts, one held fsync, a group of `GROUP` writers behind it whose
/// write lands and whose fsync is where the machine stops. Returns (torn bytes cut, group
/// records recovered).
fn torn_group_round(seed: u64, sector: usize) -> (u64, usize) {
    let what = format!("seed {seed}, sector {sector}");
    let sim = SimStorage::new(seed);
    let opts = options(&sim, SyncMode::Always);
    let db = Arc::new(Db::open_with(DIR, opts.clone()).unwrap());
    let mut model = State::new();
    for i in 0..20 {
        let (k, v) = (format!("a{i:02}").into_bytes(), value("a", i, 500));
        db.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    let group = (0..GROUP)
        .map(|i| (format!("g{i}").into_bytes(), group_value(i)))
        .collect();
    let lined = hold_fsync_and_line_up(&sim, &db, ("first", "x"), group);
    // The held fsync and the group's one write go through; the machine stops at the group's
    // fsync.
    sim.halt_after(Some(sim.ops() + 2));
    sim.hold_syncs(false);
    joined("the first writer", lined.first).expect("the first writer's fsync succeeded");
    model.insert(b"first".to_vec(), b"x".to_vec());
    for w in lined.group {
        let r = joined("a writer of the halted group", w);
        assert!(
            matches!(r, Err(Error::Io { .. } | Error::Poisoned { .. })),
            "{what}: a writer of the halted group gets the I/O error or Poisoned: {r:?}"
        );
    }
    assert_eq!(db.stats().commit_group_size_max, GROUP as u64, "{what}: one group");

    // The group's records in file (= sequence) order, from what the write left in the page cache.
    let seg = segments(&sim).pop().unwrap();
    let bytes = sim.read_file(&seg).unwrap();
    let order: Vec<usize> = parse_records(&bytes)
        .iter()
        .skip(21)
        .map(|r| {
            let rec = &bytes[r.start as usize..r.end() as usize];
            (0..GROUP)
                .find(|&i| {
                    let marker = format!("group-value-{i}:").into_bytes();
                    rec.windows(marker.len()).any(|w| w == marker.as_slice())
                })
                .unwrap()
        })
        .collect();
    assert_eq!(order.len(), GROUP, "{what}: the group's write holds its eight records");
    let prefixes: Vec<State> = (0..=GROUP)
        .map(|c| {
            let mut s = model.clone();
            for &i in &order[..c] {
                s.insert(format!("g{i}").into_bytes(), group_value(i));
            }
            s
        })
        .collect();

    sim.crash(CrashMode::Torn { sector });
    drop(db);
    let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: open after the torn group: {e}"));
    let got = contents(&db);
    let c = prefix_k(&prefixes, &got, 0, GROUP)
        .unwrap_or_else(|| panic!("{what}: the recovered group is not a prefix of its records in log order"));
    let torn = db.stats().recovery.torn_tail_bytes;

    // Appends after the cut survive another power loss and reopen.
    let mut expected = prefixes[c].clone();
    for j in 0..3 {
        let (k, v) = (format!("later{j}").into_bytes(), value("later", j, 300 + 200 * j));
        db.put(&k, &v)
            .unwrap_or_else(|e| panic!("{what}: a write after recovery: {e}"));
        expected.insert(k, v);
    }
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    for n in 0..2 {
        let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: open {n} after the appends: {e}"));
        assert_eq!(
            contents(&db),
            expected,
            "{what}: open {n} after appending past a cut tail"
        );
    }
    (torn, c)
}

#[test]
fn torn_tail_record() {
    let (seed, _guard) = support::seeded("torn_tail_record");
    let (mut cut, mut whole, mut none) = (0, 0, 0);
    for round in 0..40u64 {
        let sector = if round % 2 == 0 { 512 } else { 4096 };
        let (torn, c) = torn_group_round(seed.wrapping_add(round), sector);
        cut += u64::from(torn > 0);
        whole += u64::from(c == GROUP);
        none += u64::from(c == 0 && torn == 0);
    }
    println!("torn_tail_record: tails cut {cut}, group kept whole {whole}, group lost {none} (of 40)");
    assert!(cut > 0, "some rounds must leave a torn tail to cut");
}

// ---------------------------------------------------------------------------------------------
// zero_tail

const ZT_SYNCED: usize = 12;
const ZT_TOTAL: usize = 30;
const ZT_NEW: usize = 3;
const ZT_VALUE_LEN: usize = 300;

fn zt_key(i: usize) -> Vec<u8> {
    format!("key{:02}", i % 7).into_bytes()
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Zeros over the first bytes (the length field) of record `ZT_SYNCED + at`.
    LengthField { at: usize },
    /// Zeros over the first half of record `ZT_SYNCED + at`.
    HalfRecord { at: usize },
    /// Zeros from record `ZT_SYNCED + at` to the end of the written data.
    ToEnd { at: usize },
    /// Garbage over the start of record `ZT_SYNCED + at`.
    Garbage { at: usize },
}

impl Damage {
    fn record(self) -> usize {
        match self {
            Damage::LengthField { at } | Damage::HalfRecord { at } | Damage::ToEnd { at } | Damage::Garbage { at } => {
                ZT_SYNCED + at
            }
        }
    }
}

#[test]
fn zero_tail() {
    let (seed, _guard) = support::seeded("zero_tail");
    let old: Vec<Op> = (0..ZT_TOTAL)
        .map(|i| Op::Put(zt_key(i), value("old", i, ZT_VALUE_LEN)))
        .collect();
    let damages = [
        Damage::LengthField { at: 0 },
        Damage::HalfRecord { at: 0 },
        Damage::ToEnd { at: 0 },
        Damage::Garbage { at: 0 },
        Damage::LengthField { at: 4 },
        Damage::Garbage { at: 2 },
    ];
    let mut case = 0u64;
    for damage in damages {
        for new_len in [ZT_VALUE_LEN / 3, ZT_VALUE_LEN] {
            for crash in [CrashMode::DropUnsynced, CrashMode::Torn { sector: 512 }] {
                case += 1;
                let what = format!("{damage:?}, new values of {new_len} bytes, {crash:?}");
                zero_tail_case(seed ^ (case << 32), &old, damage, new_len, crash, &what);
            }
        }
    }
}

fn zero_tail_case(seed: u64, old: &[Op], damage: Damage, new_len: usize, crash: CrashMode, what: &str) {
    let sim = SimStorage::new(seed);
    // Records after ZT_SYNCED carry durable_seq = ZT_SYNCED: nothing vouches for them, so
    // damage among them is a tail to cut (docs/reliability.md, F2/F9), not corruption.
    let db = Db::open_with(DIR, options(&sim, SyncMode::Never)).unwrap();
    run_all(&db, &old[..ZT_SYNCED], what);
    db.sync().unwrap();
    run_all(&db, &old[ZT_SYNCED..], what);
    db.close().unwrap();

    let segs = segments_with_records(&sim);
    assert_eq!(segs.len(), 1, "{what}: the test wants one segment");
    let (seg, recs) = &segs[0];
    assert_eq!(recs.len(), ZT_TOTAL);
    let rec = recs[damage.record()];
    let data_end = recs.last().unwrap().end();
    match damage {
        Damage::LengthField { .. } => sim.zero_range(seg, rec.start, rec.start + 4).unwrap(),
        Damage::HalfRecord { .. } => sim.zero_range(seg, rec.start, rec.start + rec.len / 2).unwrap(),
        Damage::ToEnd { .. } => sim.zero_range(seg, rec.start, data_end).unwrap(),
        Damage::Garbage { .. } => {
            let garbage = support::Rng::new(seed).bytes(100);
            sim.write_durable(seg, rec.start, &garbage).unwrap();
        }
    }

    let opts = options(&sim, SyncMode::Always);
    let kept = damage.record();
    let mut ops: Vec<Op> = old[..kept].to_vec();
    let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: open over the damaged tail: {e}"));
    assert_eq!(
        contents(&db),
        states(&ops)[kept],
        "{what}: the log ends before the damaged record"
    );
    // F9: what lies past the valid end was zeroed, so no stale byte can be parsed later.
    let bytes = sim.read_file(seg).unwrap();
    let stale = bytes[rec.start as usize..].iter().position(|&b| b != 0);
    assert_eq!(stale, None, "{what}: stale bytes left past the end of the log");

    // Records of the same keys, shorter than the stale ones or exactly as long, over the place.
    for j in 0..ZT_NEW {
        let op = Op::Put(zt_key(kept + j), value("new", kept + j, new_len));
        issue(&db, &op).unwrap_or_else(|e| panic!("{what}: write after recovery: {e}"));
        ops.push(op);
    }
    sim.crash(crash);
    drop(db);
    let expected = states(&ops).pop().unwrap();
    for n in 0..2 {
        let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: open {n} after the crash: {e}"));
        assert_eq!(
            contents(&db),
            expected,
            "{what}: open {n}: a stale record resurfaced or a write is lost"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// reordered_writes_no_hole

const RW_SYNCED: usize = 8;
const RW_UNSYNCED: usize = 10;

#[test]
fn reordered_writes_no_hole() {
    let (seed, _guard) = support::seeded("reordered_writes_no_hole");
    let ops: Vec<Op> = (0..RW_SYNCED + RW_UNSYNCED)
        .map(|i| {
            Op::Put(
                format!("r{:02}", i % 6).into_bytes(),
                value("rw", i, 150 + (i * 97) % 500),
            )
        })
        .collect();
    let states = states(&ops);
    let (mut holes_then_landed, mut partial) = (0, 0);
    for round in 0..240u64 {
        let s = seed.wrapping_add(round);
        let sector = if round % 2 == 0 { 512 } else { 4096 };
        let what = format!("seed {s}, sector {sector}");
        let sim = SimStorage::new(s);
        let opts = options(&sim, SyncMode::Never);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        run_all(&db, &ops[..RW_SYNCED], &what);
        db.sync().unwrap();
        run_all(&db, &ops[RW_SYNCED..], &what);
        let seg = segments(&sim).pop().unwrap();
        let before = sim.read_file(&seg).unwrap();
        let recs = parse_records(&before);
        assert_eq!(recs.len(), ops.len(), "{what}");

        sim.crash(CrashMode::Torn { sector });
        drop(db);
        let after = sim.read_file(&seg).unwrap();
        let intact: Vec<bool> = recs[RW_SYNCED..]
            .iter()
            .map(|r| {
                let range = r.start as usize..r.end() as usize;
                after.get(range.clone()) == Some(&before[range])
            })
            .collect();
        let lead = intact.iter().take_while(|&&ok| ok).count();
        let hole_then_landed = intact[lead..].iter().any(|&ok| ok);
        holes_then_landed += u64::from(hole_then_landed);
        partial += u64::from(lead > 0 && lead < RW_UNSYNCED);

        // Exactly the records before the first hole: nothing after it, even what landed whole.
        let k = check_oracle(&opts, &states, RW_SYNCED, ops.len(), &what);
        assert_eq!(
            k,
            RW_SYNCED + lead,
            "{what}: records after the first hole were replayed, or intact ones before it lost \
             (intact after the sync: {intact:?})"
        );
    }
    println!(
        "reordered_writes_no_hole: a later record landed after a hole in {holes_then_landed} of 240 crashes; \
         a partial tail in {partial}"
    );
    assert!(holes_then_landed > 0, "the crashes must reorder some writes");
}

// ---------------------------------------------------------------------------------------------
// enospc_mid_append

#[test]
fn enospc_mid_append() {
    let (seed, _guard) = support::seeded("enospc_mid_append");
    let ops = workload(seed, 110);
    let states = states(&ops);
    let mut roll_failed = false;
    for fail_at in 0..ops.len() {
        let what = format!("ENOSPC in operation {fail_at}");
        let sim = SimStorage::new(seed ^ ((fail_at as u64) << 40));
        let opts = options(&sim, SyncMode::Always);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        run_all(&db, &ops[..fail_at], &what);
        let segs_before = segments(&sim).len();
        sim.set_faults(Faults {
            enospc: 1.0,
            ..Faults::default()
        });
        let r = issue(&db, &ops[fail_at]);
        sim.set_faults(Faults::default());
        match &r {
            Err(Error::StorageFull { source, .. }) if source.kind() == io::ErrorKind::StorageFull => {}
            other => panic!("{what}: expected StorageFull, got {other:?}"),
        }
        assert_eq!(sim.counts().enospc, 1, "{what}");
        let in_roll =
            matches!(&r, Err(Error::StorageFull { path, .. }) if path.to_string_lossy().ends_with(".wal.tmp"));
        roll_failed |= in_roll || segments(&sim).len() > segs_before;
        // A segment that could not be filled gives its space back at once (issue 15).
        assert!(
            !sim.files().iter().any(|p| p.to_string_lossy().ends_with(".wal.tmp")),
            "{what}: a half-filled segment was left behind"
        );
        // Not acknowledged, not visible; reads go on.
        assert_eq!(contents(&db), states[fail_at], "{what}: the failed write is visible");
        let acked = if in_roll {
            // No room for the next segment: nothing of the write reached the log, so the store
            // is not poisoned, and the same write succeeds once there is room (issue 15).
            issue(&db, &ops[fail_at]).unwrap_or_else(|e| panic!("{what}: the write again: {e}"));
            fail_at + 1
        } else {
            // Part of the write may be in the log: the store is poisoned until reopened.
            let next = issue(&db, &ops[(fail_at + 1) % ops.len()]);
            assert!(
                matches!(next, Err(Error::Poisoned { .. })),
                "{what}: a write after ENOSPC: {next:?}"
            );
            fail_at
        };
        match fail_at % 3 {
            0 => {}
            1 => sim.crash(CrashMode::DropUnsynced),
            _ => sim.crash(CrashMode::Torn { sector: 512 }),
        }
        drop(db);
        check_oracle(&opts, &states, acked, fail_at + 1, &what);
        // The recovered store takes writes again.
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        db.put("after", "enospc")
            .unwrap_or_else(|e| panic!("{what}: write after reopen: {e}"));
        drop(db);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"enospc"[..]), "{what}");
    }
    assert!(roll_failed, "one ENOSPC must hit the preallocation of a new segment");
}

// ---------------------------------------------------------------------------------------------
// short_writes_equivalence

fn short_write_run(seed: u64, faults: Faults, ops: &[Op]) -> (BTreeMap<std::path::PathBuf, Vec<u8>>, FaultCounts) {
    let sim = SimStorage::new(seed);
    sim.set_faults(faults);
    let opts = options(&sim, SyncMode::Always);
    let db = Db::open_with(DIR, opts.clone()).unwrap();
    let (first, second) = ops.split_at(ops.len() * 2 / 3);
    for (i, op) in first.iter().enumerate() {
        issue(&db, op).unwrap_or_else(|e| panic!("short writes: operation {i}: {e}"));
        if i == 40 || i == 90 {
            db.checkpoint().unwrap();
        }
    }
    db.close().unwrap();
    let db = Db::open_with(DIR, opts.clone()).unwrap();
    run_all(&db, second, "short writes, after reopen");
    run_all(&db, &ops[..5], "short writes, at the end");
    db.close().unwrap();
    let db = Db::open_with(DIR, opts).unwrap();
    let mut all = ops.to_vec();
    all.extend_from_slice(&ops[..5]);
    assert_eq!(contents(&db), states(&all).pop().unwrap(), "contents after the run");
    drop(db);
    (support::faults::all_files(&sim), sim.counts())
}

#[test]
fn short_writes_equivalence() {
    let (seed, _guard) = support::seeded("short_writes_equivalence");
    let ops = workload(seed, 180);
    let (clean, _) = short_write_run(seed, Faults::default(), &ops);
    let short = Faults {
        short_write: 0.5,
        ..Faults::default()
    };
    let (cut, counts) = short_write_run(seed, short, &ops);
    assert!(counts.short_writes > 50, "short writes injected: {counts:?}");
    assert!(
        clean
            .keys()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .count()
            >= 2
            && clean.keys().any(|p| p.extension().is_some_and(|e| e == "snap")),
        "the run has segments and a snapshot: {:?}",
        clean.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        clean.keys().collect::<Vec<_>>(),
        cut.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (path, bytes) in &clean {
        let other = &cut[path];
        if let Some(at) = (0..bytes.len().max(other.len())).find(|&i| bytes.get(i) != other.get(i)) {
            panic!(
                "{}: differs at byte {at} (lengths {} and {}) after {} short writes",
                path.display(),
                bytes.len(),
                other.len(),
                counts.short_writes
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// new_segment_dir_entry_lost

/// Issues `ops` until one lands in a segment after the first; returns its index.
#[test]
fn new_segment_dir_entry_lost() {
    let (seed, _guard) = support::seeded("new_segment_dir_entry_lost");
    let ops = workload(seed, 150);
    let states = states(&ops);

    // 1. Acknowledged writes in a freshly rolled segment survive losing every unsynced
    //    directory entry (and, in torn mode, a random subset of them).
    for extra in 0..4 {
        for (m, mode) in [CrashMode::DropUnsynced, CrashMode::Torn { sector: 4096 }]
            .into_iter()
            .enumerate()
        {
            let what = format!("{extra} writes after the roll, {mode:?}");
            let sim = SimStorage::new(seed ^ (extra << 8) ^ m as u64);
            let opts = options(&sim, SyncMode::Always);
            let db = Db::open_with(DIR, opts.clone()).unwrap();
            let rolled = run_until_roll(&sim, &db, &ops, &what);
            let acked = rolled + 1 + extra as usize;
            run_all(&db, &ops[rolled + 1..acked], &what);
            let segs = segments_with_records(&sim);
            let newest = &segs.last().unwrap().1;
            assert_eq!(
                newest.last().unwrap().seq as usize,
                acked,
                "{what}: the last acknowledged write is in the new segment"
            );
            sim.crash(mode);
            drop(db);
            check_oracle(&opts, &states, acked, acked, &what);
        }
    }

    // 2. A halt at every storage operation of the write that rolls, then a power loss.
    let RollingWrite {
        index: rolled,
        start,
        ops: roll_ops,
    } = rolling_write(seed, &ops);
    assert!(roll_ops >= 8, "the rolling write makes {roll_ops} storage operations");
    for n in 0..=roll_ops {
        for m in 0..3u64 {
            let mode = mode_for(m);
            let what = format!("halt after {n} of the rolling write's {roll_ops} operations, {mode:?}");
            let sim = SimStorage::new(seed ^ (n << 16) ^ m);
            let opts = options(&sim, SyncMode::Always);
            let db = Db::open_with(DIR, opts.clone()).unwrap();
            run_all(&db, &ops[..rolled], &what);
            assert_eq!(sim.ops(), start, "{what}: the workload is deterministic");
            sim.halt_after(Some(start + n));
            let acked = rolled + usize::from(issue(&db, &ops[rolled]).is_ok());
            sim.crash(mode);
            drop(db);
            let k = check_oracle(&opts, &states, acked, rolled + 1, &what);
            // The store rolls and takes writes again, durably.
            let db = Db::open_with(DIR, opts.clone()).unwrap();
            run_all(&db, &ops[k..k + 3], &what);
            sim.crash(CrashMode::DropUnsynced);
            drop(db);
            check_oracle(&opts, &states, k + 3, k + 3, &format!("{what}, then three more writes"));
        }
    }

    // 3. With the background preallocator on: spares are made durable before use too.
    for round in 0..4u64 {
        let what = format!("preallocating ahead, round {round}");
        let sim = SimStorage::new(seed.wrapping_add(round));
        let opts = options(&sim, SyncMode::Always).preallocate_ahead(true);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        let upto = 110 + 10 * round as usize;
        run_all(&db, &ops[..upto], &what);
        assert!(segments_with_records(&sim).len() >= 2, "{what}: rolled");
        sim.crash(mode_for(round));
        drop(db);
        check_oracle(&opts, &states, upto, upto, &what);
    }
}
