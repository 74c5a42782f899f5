//! A full disk (issue 15, points 1 and 2), on the simulated storage with a fixed size
//! (`SimStorage::set_capacity`): deterministic, every byte counted. `tests/real_fs.rs` does the
//! same on a real, small tmpfs.
//!
//! - `a_full_disk_fails_the_write_that_needs_room_and_nothing_else`: writes fill the disk; the
//!   write that needs a new segment gets `StorageFull` naming the segment and the room it
//!   needs, takes no space, and does not poison the store; reads go on; once there is room the
//!   same write succeeds.
//! - `a_store_opens_on_a_disk_without_room_for_a_segment`: reopened on that full disk (with the
//!   options it was written with, and with others), the store opens, reads everything, takes
//!   writes while they fit, and once space is freed takes all writes again; the background
//!   preparer makes the segment once it can.
//! - `a_failed_checkpoint_leaves_disk_use_as_it_was`: checkpoints on a full disk fail with
//!   `StorageFull` and the room they need; each undoes its roll, so disk use after each try is
//!   no higher than before the first, with or without preallocation; nothing is poisoned; writes
//!   go on; with room, a checkpoint succeeds.
//! - `a_crash_anywhere_around_an_undone_roll_loses_nothing`: power lost at every storage
//!   operation of a failed checkpoint, its undone roll and the writes after it.
//! - `a_failed_backup_leaves_nothing_and_the_next_one_succeeds`: a backup on a full disk removes
//!   what it wrote; the next, with room, succeeds.

use std::path::Path;

use sessiondb::internals::sim::SimStorage;
use sessiondb::{Db, Error, Options};

mod support;
use support::OptionsExt;

const DIR: &str = "/full";

fn value(i: usize) -> Vec<u8> {
    format!("value {i:05} ").repeat(70).into_bytes()
}

/// Puts until one fails; returns how many succeeded and the error.
fn fill(db: &Db, from: usize) -> (usize, Error) {
    for i in from.. {
        if let Err(e) = db.put(format!("k{i:05}"), value(i)) {
            return (i, e);
        }
        assert!(i < from + 100_000, "the disk never filled");
    }
    unreachable!()
}

fn assert_all_there(db: &Db, n: usize, what: &str) {
    for i in 0..n {
        let got = db
            .get(format!("k{i:05}"))
            .unwrap_or_else(|e| panic!("{what}: get k{i:05}: {e}"));
        assert_eq!(got.as_deref(), Some(&value(i)[..]), "{what}: k{i:05}");
    }
}

fn assert_storage_full(e: &Error, file_suffix: &str, needed: u64, what: &str) {
    match e {
        Error::StorageFull {
            path,
            needed: Some(n),
            source,
            ..
        } => {
            assert!(
                path.to_string_lossy().ends_with(file_suffix),
                "{what}: names {path:?}, expected a {file_suffix} file"
            );
            assert_eq!(*n, needed, "{what}: the room it needs");
            assert_eq!(source.raw_os_error(), Some(28), "{what}: ENOSPC");
        }
        other => panic!("{what}: expected StorageFull, got {other:?}"),
    }
    assert!(e.is_storage_full());
    assert!(e.to_string().contains("no space left"), "{what}: {e}");
}

/// The store's segment files.
fn segments(sim: &SimStorage) -> Vec<std::path::PathBuf> {
    let wal = Path::new(DIR).join("wal");
    let files = sim.files().into_iter();
    files
        .filter(|p| p.parent() == Some(wal.as_path()) && p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

fn has_tmp(sim: &SimStorage) -> bool {
    sim.files().iter().any(|p| p.to_string_lossy().ends_with(".tmp"))
}

/// Bytes the store's files hold, temporary files left out (the background preparer's tries
/// come and go).
fn used(sim: &SimStorage) -> u64 {
    let files = sim
        .files()
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"));
    files.map(|p| sim.read_file(&p).map_or(0, |b| b.len() as u64)).sum()
}

fn opts(sim: &SimStorage) -> Options {
    support::small_options().quiet().sim(sim)
}

#[test]
fn a_full_disk_fails_the_write_that_needs_room_and_nothing_else() {
    let sim = SimStorage::new(1);
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    // Room for the first segment and half of another.
    sim.set_capacity(Some(sim.used_bytes() + support::SEGMENT_SIZE_SMALL / 2));
    let (n, e) = fill(&db, 0);
    assert_storage_full(&e, ".wal.tmp", support::SEGMENT_SIZE_SMALL, "the write that rolls");
    let used = sim.used_bytes();
    // Not poisoned: reads go on, and the next write needing a segment gets the same error.
    assert_all_there(&db, n, "after the failed write");
    assert_eq!(
        db.get(format!("k{n:05}")).unwrap(),
        None,
        "the failed write is not visible"
    );
    let again = db.put(format!("k{n:05}"), value(n)).unwrap_err();
    assert_storage_full(&again, ".wal.tmp", support::SEGMENT_SIZE_SMALL, "again");
    assert_eq!(sim.used_bytes(), used, "a failed write takes no space");
    // Room again: the same write succeeds, and more.
    sim.set_capacity(None);
    for i in n..n + 100 {
        db.put(format!("k{i:05}"), value(i)).unwrap();
    }
    db.close().unwrap();
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    assert_all_there(&db, n + 100, "after reopening");
}

#[test]
fn a_store_opens_on_a_disk_without_room_for_a_segment() {
    for (case, reopen) in [
        ("same options", opts as fn(&SimStorage) -> Options),
        ("larger segments", |sim: &SimStorage| opts(sim).segment_size(256 * 1024)),
        ("default segments, preallocation on", |sim: &SimStorage| {
            Options::new().storage(std::sync::Arc::new(sim.clone()))
        }),
    ] {
        let sim = SimStorage::new(2);
        let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
        sim.set_capacity(Some(sim.used_bytes() + support::SEGMENT_SIZE_SMALL / 2));
        let (n, _) = fill(&db, 0);
        db.close().unwrap();

        // Before issue 15, every open failed here: recovery made a fresh segment first.
        let db =
            Db::open_with(Path::new(DIR), reopen(&sim)).unwrap_or_else(|e| panic!("{case}: open on a full disk: {e}"));
        assert_all_there(&db, n, case);
        let e = db.put(format!("k{n:05}"), value(n)).unwrap_err();
        assert!(e.is_storage_full(), "{case}: {e}");
        assert!(db.stats().keys as usize == n, "{case}: stats work");
        // Freeing space: writes go on (the writer or the background preparer makes the segment).
        sim.set_capacity(None);
        for i in n..n + 50 {
            db.put(format!("k{i:05}"), value(i))
                .unwrap_or_else(|e| panic!("{case}: put after freeing space: {e}"));
        }
        db.close().unwrap();
        let db = Db::open_with(Path::new(DIR), reopen(&sim)).unwrap();
        assert_all_there(&db, n + 50, case);
        db.close().unwrap();
    }
}

#[test]
fn a_new_store_opens_on_a_full_disk() {
    let sim = SimStorage::new(5);
    sim.set_capacity(Some(0));
    let db = Db::open_with(Path::new(DIR), opts(&sim)).expect("a new store opens with no room for a segment");
    let e = db.put("k", "v").unwrap_err();
    assert_storage_full(&e, ".wal.tmp", support::SEGMENT_SIZE_SMALL, "the first write");
    assert_eq!(db.get("k").unwrap(), None);
    sim.set_capacity(None);
    db.put("k", "v").unwrap();
    db.close().unwrap();
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_store_on_a_full_disk_makes_its_next_segment_in_the_background_once_there_is_room() {
    let sim = SimStorage::new(3);
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    sim.set_capacity(Some(sim.used_bytes() + support::SEGMENT_SIZE_SMALL / 2));
    let (n, _) = fill(&db, 0);
    db.close().unwrap();
    let db = Db::open_with(Path::new(DIR), opts(&sim).preallocate_ahead(true)).unwrap();
    let segments = || segments(&sim).len();
    let before = segments();
    sim.set_capacity(None);
    // The preparer retries on its own, with no write asking.
    support::wait_until("the preparer makes the next segment", || segments() > before);
    db.put(format!("k{n:05}"), value(n)).unwrap();
    db.close().unwrap();
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    assert_all_there(&db, n + 1, "after reopening");
}

#[test]
fn a_failed_checkpoint_leaves_disk_use_as_it_was() {
    for prealloc in [false, true] {
        let what = format!("preallocation {prealloc}");
        let sim = SimStorage::new(4);
        let o = opts(&sim).preallocate_ahead(prealloc);
        let db = Db::open_with(Path::new(DIR), o.clone()).unwrap();
        let n = 150;
        for i in 0..n {
            db.put(format!("k{i:05}"), value(i)).unwrap();
        }
        if prealloc {
            let spare_ready = || segments(&sim).len() as u64 > db.stats().segments;
            support::wait_until("a spare is ready", || spare_ready() && !has_tmp(&sim));
        }
        // Without preallocation, room for two segments (the roll's, and one more that a retry
        // must not take) but not for the snapshot (about n × 1 KiB); with it, the roll takes
        // the spare and there is no more room. Each failed try undoes its roll: disk use is
        // back where it was (with preallocation the preparer makes the spare again in the
        // background, which is where it was too).
        let before = used(&sim);
        let segments_before = segments(&sim).len();
        let room = if prealloc {
            4096
        } else {
            2 * support::SEGMENT_SIZE_SMALL + 4096
        };
        sim.set_capacity(Some(before + room));
        for attempt in 0..4 {
            let e = db.checkpoint().unwrap_err();
            assert!(e.is_storage_full(), "{what}: attempt {attempt}: {e}");
            assert!(
                matches!(&e, Error::StorageFull { path, needed: Some(_), .. } if path.to_string_lossy().contains(".snap")),
                "{what}: attempt {attempt}: names the snapshot and the room it needs: {e:?}"
            );
            let now = used(&sim);
            assert!(
                now <= before,
                "{what}: attempt {attempt}: {now} bytes used, {before} before"
            );
            if !prealloc {
                assert_eq!(now, before, "{what}: attempt {attempt}");
                assert!(!has_tmp(&sim), "{what}: no temporary file stays: {:?}", sim.files());
            }
        }
        // Not poisoned: writes go on (into the segment the undone roll had sealed), and with
        // room the checkpoint succeeds and the disk use drops.
        db.put("after", "x").unwrap();
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]), "{what}");
        sim.set_capacity(None);
        db.checkpoint().unwrap();
        // The segments it covers are gone (disk use itself need not drop: the snapshot of
        // about 2.1 segments of log plus the fresh active segment take about as much room).
        let after = segments(&sim).len();
        assert!(
            after < segments_before,
            "{what}: the checkpoint freed the log: {:?}",
            sim.files()
        );
        db.close().unwrap();
        let db = Db::open_with(Path::new(DIR), o).unwrap();
        assert_all_there(&db, n, &what);
    }
}

/// A store whose checkpoint fails for want of room after its roll, then takes more writes: the
/// roll is undone (its segment removed, appends back in the segment it sealed). The acknowledged
/// writes, from before and after.
fn undone_roll_scenario(sim: &SimStorage, halt: Option<u64>) -> Vec<usize> {
    let db = Db::open_with(Path::new(DIR), opts(sim)).unwrap();
    let n = 150;
    for i in 0..n {
        db.put(format!("k{i:05}"), value(i)).unwrap();
    }
    let mut acked: Vec<usize> = (0..n).collect();
    sim.set_capacity(Some(sim.used_bytes() + 2 * support::SEGMENT_SIZE_SMALL + 4096));
    sim.halt_after(halt.map(|h| sim.ops() + h));
    let _ = db.checkpoint();
    for i in n..n + 20 {
        if db.put(format!("k{i:05}"), value(i)).is_ok() {
            acked.push(i);
        }
    }
    drop(db);
    acked
}

/// Power lost at every storage operation of a failed checkpoint, its undone roll and the writes
/// after it: every acknowledged write survives, and the store opens again after one more write.
#[test]
fn a_crash_anywhere_around_an_undone_roll_loses_nothing() {
    use sessiondb::internals::sim::CrashMode;
    let total = {
        let sim = SimStorage::new(6);
        let before = sim.ops();
        undone_roll_scenario(&sim, None);
        sim.ops() - before
    };
    for halt in 0..total {
        for mode in [CrashMode::DropUnsynced, CrashMode::Torn { sector: 512 }] {
            let what = format!("halt after {halt} of {total} operations, {mode:?}");
            let sim = SimStorage::new(6 ^ (halt << 8));
            let acked = undone_roll_scenario(&sim, Some(halt));
            sim.crash(mode);
            sim.halt_after(None);
            sim.set_capacity(None);
            let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap_or_else(|e| panic!("{what}: open: {e}"));
            for &i in &acked {
                let got = db
                    .get(format!("k{i:05}"))
                    .unwrap_or_else(|e| panic!("{what}: get: {e}"));
                assert_eq!(got.as_deref(), Some(&value(i)[..]), "{what}: k{i:05} lost");
            }
            db.put("again", "x")
                .unwrap_or_else(|e| panic!("{what}: put after recovery: {e}"));
            drop(db);
            let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
            assert_eq!(db.get("again").unwrap().as_deref(), Some(&b"x"[..]), "{what}");
        }
    }
}

/// A backup that fails for want of room leaves nothing behind (before, its staging directory
/// stayed, holding the room it had taken, and every later backup from the same process to the
/// same destination was refused: "a temporary directory ... is in the way"); with room, the next
/// try succeeds and opens as a store.
#[test]
fn a_failed_backup_leaves_nothing_and_the_next_one_succeeds() {
    let sim = SimStorage::new(7);
    let db = Db::open_with(Path::new(DIR), opts(&sim)).unwrap();
    for i in 0..100 {
        db.put(format!("k{i:05}"), value(i)).unwrap();
    }
    let before = used(&sim);
    sim.set_capacity(Some(sim.used_bytes() + 8 * 1024));
    let dest = Path::new("/backups/b1");
    sessiondb::storage::Storage::create_dir_all(&sim, Path::new("/backups")).unwrap();
    let e = db.backup(dest).unwrap_err();
    assert!(e.is_storage_full(), "{e}");
    let left: Vec<_> = sim.files().into_iter().filter(|p| p.starts_with("/backups")).collect();
    assert!(left.is_empty(), "the failed backup left {left:?}");
    assert_eq!(used(&sim), before, "the failed backup keeps no room");
    sim.set_capacity(None);
    db.backup(dest).expect("the next backup, with room");
    db.close().unwrap();
    let copy = Db::open_with(dest, opts(&sim)).unwrap();
    assert_all_there(&copy, 100, "the backup");
}
