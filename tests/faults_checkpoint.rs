//! Crashes inside a checkpoint, and a damaged snapshot, on the simulated storage.
//!
//! Scenario, one test each:
//! - `checkpoint_crash_matrix`: a store with an older snapshot and several segments (so the
//!   checkpoint has segments and a snapshot to delete) runs `Db::checkpoint`; the machine halts
//!   at each of the checkpoint's storage operations (temp file create, write, fsync, log sync,
//!   rename, directory fsync, read-back, each segment and snapshot unlink, directory fsyncs)
//!   and loses power, dropping everything unsynced or keeping a random torn subset (lost
//!   renames and unlinks included); in `SyncMode::Always` and in `SyncMode::Never`.
//! - `checkpoint_lost_unlink_with_torn_roll_header`: one state of that matrix built without
//!   chance: the checkpoint is durable, one covered segment's unlink was lost and a later one's
//!   kept, and the header the checkpoint wrote (unsynced) into the new empty segment landed,
//!   was lost, or was torn.
//! - `bitflip_in_snapshot`: a bit flips in the newest snapshot (header, blocks, footer) when (a)
//!   an older snapshot exists and the log still covers the gap after it (the state a crash
//!   between the new snapshot's rename and the deletions leaves: the deleted files are put
//!   back), (b) the log no longer covers it, with and without the older snapshot.
//!
//! Method: the real engine on `SimStorage` (deterministic: no background threads, a manual
//! clock), the same seeded workload replayed per crash point, a `BTreeMap` model of every
//! prefix. Seeds come from `SESSIONDB_SEED` (printed on failure).
//!
//! Invariant: after a crash in a checkpoint, open never fails (there is always a usable snapshot
//! or the log to rebuild it) and the oracle of docs/reliability.md holds (the model after k operations, k ≥
//! the number that must survive, the same again on a second open), and the store checkpoints
//! again. A damaged newest snapshot falls back to the older one only when the log covers the
//! gap, with the right contents; otherwise open fails with `Error::Corruption` naming the damaged
//! snapshot, and `RecoveryMode::Salvage` opens with no value that was never written.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Db, Error, RecoveryMode, SyncMode};
use support::faults::{
    all_files, assert_only_written, check_oracle, contents, create_durable, options, run_all, snapshot_seq, snapshots,
    states, workload, written_values, Op, State, DIR,
};

// ---------------------------------------------------------------------------------------------
// checkpoint_crash_matrix

const OPS: usize = 130;
const FIRST_CHECKPOINT_AT: usize = 30;
const SYNCED_AT: usize = 100;

/// The store just before the checkpoint under test; returns how many operations must survive
/// a power loss at this point.
fn prepare(sim: &SimStorage, ops: &[Op], mode: SyncMode) -> (Db, usize) {
    let db = Db::open_with(DIR, options(sim, mode)).unwrap();
    run_all(&db, &ops[..FIRST_CHECKPOINT_AT], "prepare");
    db.checkpoint().unwrap();
    run_all(&db, &ops[FIRST_CHECKPOINT_AT..SYNCED_AT], "prepare");
    db.sync().unwrap();
    run_all(&db, &ops[SYNCED_AT..], "prepare");
    let must = if mode == SyncMode::Always { OPS } else { SYNCED_AT };
    (db, must)
}

#[test]
fn checkpoint_crash_matrix() {
    let (seed, _guard) = support::seeded("checkpoint_crash_matrix");
    let ops = workload(seed, OPS + 10);
    let states = states(&ops);
    let (mut points, mut ok_checkpoints, mut old_snapshot_left) = (0u64, 0u64, 0u64);
    for sync_mode in [SyncMode::Always, SyncMode::Never] {
        // Probe: how many storage operations the checkpoint makes, and what it deletes.
        let sim = SimStorage::new(seed);
        let (db, _) = prepare(&sim, &ops[..OPS], sync_mode);
        let start = sim.ops();
        let files_before = sim.files();
        db.checkpoint().unwrap();
        let total = sim.ops() - start;
        let files_after = sim.files();
        drop(db);
        let deleted: Vec<&PathBuf> = files_before.iter().filter(|p| !files_after.contains(p)).collect();
        let deleted_segments = deleted
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .count();
        let deleted_snapshots = deleted
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .count();
        assert!(
            deleted_segments >= 2 && deleted_snapshots == 1,
            "{sync_mode:?}: the checkpoint under test deletes segments and a snapshot: {deleted:?}"
        );

        for n in 0..=total {
            // Three crashes per point; 120 while segment unlinks are pending, since which of them
            // a crash keeps is a combination (and so is whether the header the checkpoint wrote
            // into the new segment, unsynced, lands whole, torn or not at all).
            let mut variants = 3;
            let mut m = 0u64;
            while m < variants {
                let crash = match m {
                    0 => CrashMode::DropUnsynced,
                    m if m % 2 == 1 => CrashMode::Torn { sector: 512 },
                    _ => CrashMode::Torn { sector: 4096 },
                };
                let what =
                    format!("{sync_mode:?}: halt after {n} of the checkpoint's {total} operations, {crash:?} #{m}");
                let sim = SimStorage::new(seed ^ (n << 16) ^ (m << 8));
                let opts = options(&sim, sync_mode);
                let (db, must) = prepare(&sim, &ops[..OPS], sync_mode);
                assert_eq!(sim.ops(), start, "{what}: the workload is deterministic");
                sim.halt_after(Some(start + n));
                let done = db.checkpoint().is_ok();
                let visible = sim.files();
                if m == 0
                    && files_before
                        .iter()
                        .any(|p| p.extension().is_some_and(|e| e == "wal") && !visible.contains(p))
                {
                    variants = 120;
                }
                // A completed checkpoint made the log durable through its base.
                let must = if done { OPS } else { must };
                sim.crash(crash);
                drop(db);
                // Open never fails: check_oracle panics if it does.
                let k = check_oracle(&opts, &states, must, OPS, &what);
                points += 1;
                ok_checkpoints += u64::from(done);

                // The recovered store writes and checkpoints again, and reopens to the same state.
                let db = Db::open_with(DIR, opts.clone()).unwrap();
                run_all(&db, &ops[k..k + 5], &what);
                db.checkpoint()
                    .unwrap_or_else(|e| panic!("{what}: checkpoint after recovery: {e}"));
                old_snapshot_left += u64::from(snapshots(&sim).len() > 1);
                sim.crash(CrashMode::DropUnsynced);
                drop(db);
                check_oracle(&opts, &states, k + 5, k + 5, &format!("{what}, then a checkpoint"));
                m += 1;
            }
        }
    }
    println!(
        "checkpoint_crash_matrix: {points} crash points, {ok_checkpoints} after the checkpoint completed; \
         {old_snapshot_left} left an older snapshot behind after the next checkpoint"
    );
}

/// The new segment's header after a power loss: the checkpoint wrote it without an fsync.
#[derive(Debug, Clone, Copy)]
enum RollHeader {
    Landed,
    Lost,
    Torn,
}

#[test]
fn checkpoint_lost_unlink_with_torn_roll_header() {
    // One state from the matrix above, built without chance: the checkpoint completed (its
    // snapshot and the rename are durable), the unlink of the oldest covered segment was lost
    // (it reappears) while a later covered segment's unlink persisted, and the header the
    // checkpoint wrote into the new, still empty, segment was never fsynced.
    let (seed, _guard) = support::seeded("checkpoint_lost_unlink_with_torn_roll_header");
    let ops = workload(seed, OPS);
    let states = states(&ops);
    for header in [RollHeader::Landed, RollHeader::Lost, RollHeader::Torn] {
        let what = format!("a covered segment reappears, another stays deleted, roll header {header:?}");
        let sim = SimStorage::new(seed);
        let opts = options(&sim, SyncMode::Always);
        let (db, _) = prepare(&sim, &ops, SyncMode::Always);
        let before = all_files(&sim);
        db.checkpoint().unwrap();
        db.close().unwrap();
        let wal = |p: &PathBuf| p.extension().is_some_and(|e| e == "wal");
        let deleted: Vec<&PathBuf> = before.keys().filter(|p| wal(p) && !sim.files().contains(p)).collect();
        assert!(deleted.len() >= 2, "{what}: the checkpoint deleted {deleted:?}");
        create_durable(&sim, deleted[0], &before[deleted[0]]);
        let newest = support::faults::segments(&sim).pop().unwrap();
        assert!(
            support::parse_records(&sim.read_file(&newest).unwrap()).is_empty(),
            "{what}: the new segment holds no record"
        );
        match header {
            RollHeader::Landed => {}
            RollHeader::Lost => sim.zero_range(&newest, 0, 40).unwrap(),
            RollHeader::Torn => sim
                .write_durable(&newest, 0, &support::Rng::new(seed).bytes(40))
                .unwrap(),
        }
        check_oracle(&opts, &states, OPS, OPS, &what);
    }
}

// ---------------------------------------------------------------------------------------------
// bitflip_in_snapshot

const SNAP_OPS: usize = 120;

struct Built {
    sim: SimStorage,
    ops: Vec<Op>,
    /// Every file just before the second checkpoint.
    before: BTreeMap<PathBuf, Vec<u8>>,
    older: PathBuf,
    newest: PathBuf,
}

/// Snapshot S1 after 40 operations, S2 after 110, ten more operations after it; closed.
fn build(seed: u64) -> Built {
    let sim = SimStorage::new(seed);
    let ops = workload(seed, SNAP_OPS);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    run_all(&db, &ops[..40], "build");
    db.checkpoint().unwrap();
    let older = snapshots(&sim).pop().unwrap();
    run_all(&db, &ops[40..110], "build");
    let before = all_files(&sim);
    db.checkpoint().unwrap();
    run_all(&db, &ops[110..], "build");
    db.close().unwrap();
    let snaps = snapshots(&sim);
    assert_eq!(snaps.len(), 1, "the second checkpoint deleted the first snapshot");
    let newest = snaps[0].clone();
    assert!(newest != older);
    Built {
        sim,
        ops,
        before,
        older,
        newest,
    }
}

/// Puts back the files the second checkpoint deleted: all of them (`segments`), or only the
/// older snapshot.
fn restore(b: &Built, segments: bool) {
    let now = b.sim.files();
    for (path, bytes) in &b.before {
        let wanted = *path == b.older || (segments && path.extension().is_some_and(|e| e == "wal"));
        if wanted && !now.contains(path) {
            create_durable(&b.sim, path, bytes);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Case {
    /// The older snapshot and the whole log are there.
    Covered,
    /// The log starts after the newest snapshot's base; no older snapshot.
    NotCoveredAlone,
    /// The older snapshot is there, but the log does not reach back to it.
    NotCoveredWithOlder,
}

#[test]
fn bitflip_in_snapshot() {
    let (seed, _guard) = support::seeded("bitflip_in_snapshot");
    let mut rng = support::Rng::new(seed);
    let probe = build(seed);
    let len = probe.sim.read_file(&probe.newest).unwrap().len() as u64;
    // Header (not its pad at 28..32), blocks, footer (not its pad, the last 4 bytes).
    let offsets = [
        0,
        9,
        13,
        17,
        25,
        32,
        36,
        41,
        60,
        len / 2,
        len - 49,
        len - 48,
        len - 44,
        len - 40,
        len - 30,
        len - 16,
        len - 8,
        len - 5,
    ];
    for case in [Case::Covered, Case::NotCoveredAlone, Case::NotCoveredWithOlder] {
        for &offset in &offsets {
            let bit = rng.below(8) as u8;
            let what = format!("{case:?}: bit {bit} of byte {offset} of the newest snapshot ({len} bytes)");
            let b = build(seed);
            match case {
                Case::Covered => restore(&b, true),
                Case::NotCoveredAlone => {}
                Case::NotCoveredWithOlder => restore(&b, false),
            }
            b.sim.flip_bit(&b.newest, offset, bit).unwrap();
            let states = states(&b.ops);
            let opts = options(&b.sim, SyncMode::Always);
            match case {
                Case::Covered => {
                    let db = Db::open_with(DIR, opts.clone())
                        .unwrap_or_else(|e| panic!("{what}: the log covers the older snapshot: {e}"));
                    assert_eq!(
                        db.stats().recovery.snapshot_seq,
                        Some(snapshot_seq(&b.older)),
                        "{what}: falls back to the older snapshot"
                    );
                    assert_eq!(contents(&db), states[SNAP_OPS], "{what}: contents after the fallback");
                    drop(db);
                    check_oracle(&opts, &states, SNAP_OPS, SNAP_OPS, &what);
                }
                Case::NotCoveredAlone | Case::NotCoveredWithOlder => {
                    match Db::open_with(DIR, opts.clone()) {
                        Err(Error::Corruption { path, .. }) => assert_eq!(
                            path.file_name(),
                            b.newest.file_name(),
                            "{what}: the error names the damaged snapshot"
                        ),
                        Err(e) => panic!("{what}: expected Corruption naming the snapshot, got {e:?}"),
                        Ok(db) => panic!(
                            "{what}: opened without the data the snapshot held ({} keys)",
                            db.stats().keys
                        ),
                    }
                    let salvage = opts.clone().recovery_mode(RecoveryMode::Salvage);
                    let db = Db::open_with(DIR, salvage).unwrap_or_else(|e| panic!("{what}: Salvage must open: {e}"));
                    let got: State = contents(&db);
                    assert!(
                        !db.stats().recovery.skipped.is_empty(),
                        "{what}: Salvage reports the snapshot"
                    );
                    assert_only_written(&got, &written_values(&b.ops), &format!("{what}, Salvage"));
                }
            }
        }
    }
}

/// Issue 15, point 2: on a disk with no room for the segment a checkpoint rolls to, the
/// checkpoint fails with the full disk's error, leaves no temporary file holding the space it
/// got, and does not poison the store (nothing was lost): writes go on, and a checkpoint once
/// there is room succeeds. Before, the half-filled `.wal.tmp` stayed (each try made the disk
/// fuller) and the store was poisoned.
#[test]
fn a_checkpoint_without_room_for_the_next_segment_leaves_nothing_behind() {
    use sessiondb::internals::sim::Faults;
    use sessiondb::storage::Storage;
    use support::OptionsExt;

    let sim = SimStorage::new(15);
    let dir = std::path::Path::new("/full");
    let opts = support::small_options().quiet().sim(&sim);
    let db = Db::open_with(dir, opts.clone()).unwrap();
    for i in 0..50 {
        db.put(format!("k{i:02}"), "v").unwrap();
    }
    sim.set_faults(Faults {
        enospc: 1.0,
        ..Faults::default()
    });
    let r = db.checkpoint();
    sim.set_faults(Faults::default());
    match &r {
        Err(Error::StorageFull { source, .. }) => assert_eq!(source.raw_os_error(), Some(28), "{r:?}"),
        other => panic!("expected the full disk's error, got {other:?}"),
    }
    let wal = sim.list(&dir.join("wal")).unwrap();
    assert!(
        !wal.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
        "no temporary file is left: {wal:?}"
    );
    db.put("after", "x").expect("the store is not poisoned");
    db.checkpoint().expect("a checkpoint with room succeeds");
    db.close().unwrap();
    let db = Db::open_with(dir, opts).unwrap();
    assert_eq!(db.stats().keys, 51);
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]));
}
