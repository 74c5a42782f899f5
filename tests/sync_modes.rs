//! What each `SyncMode` promises about power loss, on the simulated storage.
//!
//! Scenario: writes in `Never`, `Interval` and `Always` mode, then a power loss that drops every
//! unsynced byte (docs/reliability.md, F1). Method: the real engine on `SimStorage`; waits are on the
//! engine's own fsync counter, never sleeps. Invariant: `Always` loses nothing acknowledged;
//! `Never` keeps what `sync()` covered; `Interval` keeps what its background sync covered; and in
//! `Always` mode a write is not visible to readers before its fsync returns.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Db, Options, SyncMode};
use support::hold::hold_fsync_and_line_up;
use support::{joined, small_options, wait_until, OptionsExt};

/// Every write in one segment, nothing in the background.
fn options(sim: &SimStorage, mode: SyncMode) -> Options {
    small_options().quiet().one_segment().sim(sim).sync_mode(mode)
}

fn reopen_after_power_loss(sim: &SimStorage, db: Db, dir: &str, mode: SyncMode) -> Db {
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    Db::open_with(dir, options(sim, mode)).unwrap()
}

#[test]
fn never_keeps_what_sync_covered_and_loses_the_rest() {
    let sim = SimStorage::new(1);
    let db = Db::open_with("/never", options(&sim, SyncMode::Never)).unwrap();
    let fsyncs = db.stats().fsyncs;
    db.put("synced", "1").unwrap();
    assert_eq!(db.stats().fsyncs, fsyncs, "Never: a put does not fsync");
    assert_eq!(
        db.get("synced").unwrap().as_deref(),
        Some(&b"1"[..]),
        "visible once handed to the OS"
    );
    db.sync().unwrap();
    db.put("unsynced", "2").unwrap();
    let db = reopen_after_power_loss(&sim, db, "/never", SyncMode::Never);
    assert_eq!(
        db.get("synced").unwrap().as_deref(),
        Some(&b"1"[..]),
        "sync() made it durable"
    );
    assert_eq!(
        db.get("unsynced").unwrap(),
        None,
        "an unsynced write is lost by a power loss"
    );
}

#[test]
fn interval_syncs_in_the_background() {
    let sim = SimStorage::new(2);
    let mode = SyncMode::Interval(Duration::from_millis(5));
    let db = Db::open_with("/interval", options(&sim, mode)).unwrap();
    let fsyncs = db.stats().fsyncs;
    db.put("k", "v").unwrap();
    // Wait for the background thread's next fsync (a condition, not a sleep).
    wait_until("the interval sync", || db.stats().fsyncs > fsyncs);
    let db = reopen_after_power_loss(&sim, db, "/interval", mode);
    assert_eq!(
        db.get("k").unwrap().as_deref(),
        Some(&b"v"[..]),
        "the background sync made it durable"
    );
}

#[test]
fn always_loses_nothing_acknowledged_and_shows_nothing_unsynced() {
    let sim = SimStorage::new(3);
    let db = Arc::new(Db::open_with("/always", options(&sim, SyncMode::Always)).unwrap());
    for i in 0..50 {
        db.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    // Hold the next fsync: the write is in the file but not durable, and must not be visible.
    let held = hold_fsync_and_line_up(&sim, &db, ("pending", "x"), Vec::new());
    assert_eq!(db.get("pending").unwrap(), None, "not visible before its fsync returns");
    sim.hold_syncs(false);
    joined("the held writer", held.first).expect("the write succeeds once its fsync returns");
    assert_eq!(
        db.get("pending").unwrap().as_deref(),
        Some(&b"x"[..]),
        "visible once durable"
    );
    let db = Arc::try_unwrap(db).unwrap();
    let db = reopen_after_power_loss(&sim, db, "/always", SyncMode::Always);
    for i in 0..50 {
        assert_eq!(db.get(format!("k{i}")).unwrap(), Some(format!("v{i}").into_bytes()));
    }
    assert_eq!(db.get("pending").unwrap().as_deref(), Some(&b"x"[..]));
}

/// Found by the linearizability checker: a lazy batch whose touch of a key was dropped because a
/// pending (syncing) delete had removed the key wrote only its other keys, went beside the
/// syncing group, and returned "not touched" while every read still found the key. A checked
/// write decided on a pending write must not go beside it: it waits, and once it returns the
/// key reads as gone. With `decided_on_pending` ignored the assertion on `writes_beside` (and
/// the read) fails (checked).
#[test]
fn a_lazy_write_decided_on_a_pending_write_does_not_go_beside_it() {
    use sessiondb::Durability;
    let sim = SimStorage::new(18);
    let db = Arc::new(Db::open_with("/db", options(&sim, SyncMode::Always)).unwrap());
    db.put("k", "1").unwrap();
    sim.hold_syncs(true);
    let durable = {
        let db = db.clone();
        std::thread::spawn(move || db.delete("k"))
    };
    wait_until("the durable delete's fsync", || sim.syncs_waiting() == 1);
    let lazy = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut batch = sessiondb::Batch::new();
            batch
                .put("other", "1")
                .touch("k", Duration::from_secs(600))
                .durability(Durability::Lazy);
            let written = db.write_if(batch).unwrap().unwrap();
            // Whatever the touch found must be what a read finds now.
            (written, db.get("k").unwrap())
        })
    };
    // A watchdog releases the gate after the deadline, so a wrong wait fails, never hangs.
    let watchdog = support::wait::GateWatchdog::start(&sim);
    wait_until("the lazy batch to finish or wait", || {
        lazy.is_finished() || db.stats().writers_waiting == 1
    });
    watchdog.done();
    assert_eq!(
        db.stats().writes_beside,
        0,
        "a write decided on a pending delete went beside it"
    );
    sim.hold_syncs(false);
    joined("the durable delete", durable).unwrap();
    let (_, k) = joined("the lazy batch", lazy);
    assert_eq!(k, None, "the touch found the key gone but a read still finds it");
}

/// Issue 17: a `Durability::Lazy` write to other keys does not wait for an fsync in flight. It
/// goes beside the syncing group (`Stats::writes_beside`), is visible when it returns, and a
/// power loss after that group's fsync keeps both in log order. A lazy write to a key the
/// syncing group writes does wait (it must be applied after it).
#[test]
fn a_lazy_write_does_not_wait_for_an_fsync_in_flight() {
    use sessiondb::Durability;
    let sim = SimStorage::new(17);
    let db = Arc::new(Db::open_with("/db", options(&sim, SyncMode::Always)).unwrap());
    db.put("a", "1").unwrap();
    db.put("b", "1").unwrap();
    sim.hold_syncs(true);
    let durable = {
        let db = db.clone();
        std::thread::spawn(move || db.put("a", "2"))
    };
    wait_until("the durable put's fsync", || sim.syncs_waiting() == 1);
    // A watchdog releases the gate after the deadline: a lazy write that waited for the fsync
    // then returns, late, and the assertions below fail instead of the test hanging.
    let watchdog = support::wait::GateWatchdog::start(&sim);
    assert!(db.touch_with("b", Duration::from_secs(600), Durability::Lazy).unwrap());
    let mut batch = sessiondb::Batch::new();
    batch.put("c", "1").durability(Durability::Lazy);
    db.write(batch).unwrap();
    watchdog.done();
    assert_eq!(sim.syncs_waiting(), 1, "the lazy writes waited for the fsync in flight");
    assert_eq!(db.stats().writes_beside, 2);
    assert!(db.get_versioned("b").unwrap().unwrap().expires_at_ms.is_some());
    assert_eq!(db.get("c").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        db.get("a").unwrap().as_deref(),
        Some(&b"1"[..]),
        "visible before its fsync"
    );
    // A lazy write to "a", which the syncing group writes, waits for it.
    let after = {
        let db = db.clone();
        std::thread::spawn(move || db.touch_with("a", Duration::from_secs(600), Durability::Lazy))
    };
    assert_eq!(db.stats().writers_waiting, 0);
    wait_until("the lazy touch of a pending key to wait", || {
        db.stats().writers_waiting == 1
    });
    assert_eq!(db.stats().writes_beside, 2, "a write to a pending key went beside");
    sim.hold_syncs(false);
    joined("the durable put", durable).unwrap();
    assert!(joined("the lazy touch", after).unwrap());
    db.sync().unwrap();
    let db = Arc::into_inner(db).unwrap();
    let db = reopen_after_power_loss(&sim, db, "/db", SyncMode::Always);
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("c").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.get_versioned("a").unwrap().unwrap().expires_at_ms.is_some());
    assert!(db.get_versioned("b").unwrap().unwrap().expires_at_ms.is_some());
}

/// `SyncMode::Always` with 64 KiB segments, which 3,000-byte puts fill every 21 or so.
fn rolling_options(sim: &SimStorage) -> Options {
    small_options()
        .quiet()
        .segment_size(64 * 1024)
        .sim(sim)
        .sync_mode(SyncMode::Always)
}

/// Issue 17: in `SyncMode::Always`, a put that rolls the log seals the full segment without an
/// fsync (the previous put's fsync made all of it durable): one fsync per put, rolls included,
/// where the seal used to add one per roll. After a power loss every put is there. Fails with
/// the seal's fsync forced (104 fsyncs for 100 puts, checked).
#[test]
fn always_a_roll_adds_no_fsync() {
    let sim = SimStorage::new(19);
    let opts = || rolling_options(&sim);
    let db = Db::open_with("/rolls", opts()).unwrap();
    let value = vec![7u8; 3000];
    let (fsyncs, segments) = (db.stats().fsyncs, db.stats().segments);
    let puts = 100;
    for i in 0..puts {
        db.put(format!("k{i:03}"), &value).unwrap();
    }
    let rolled = db.stats().segments - segments;
    assert!(rolled >= 3, "the puts rolled {rolled} times");
    assert_eq!(db.stats().fsyncs - fsyncs, puts, "a roll added an fsync");
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = Db::open_with("/rolls", opts()).unwrap();
    for i in 0..puts {
        assert_eq!(
            db.get(format!("k{i:03}")).unwrap().as_deref(),
            Some(&value[..]),
            "k{i:03}"
        );
    }
}

/// Issue 17: a commit group of several records that does not fit in the rest of the active
/// segment goes whole into the next one (everything before it being durable), so it waits for
/// its own fsync alone instead of a seal's and its own. Each round holds one put at the fsync
/// gate while four more form the next group; every group then costs one fsync, rolls included,
/// and after a power loss every put is there. Fails with the whole-group roll left out (a
/// group split across two segments seals the first with an fsync of its own: checked).
#[test]
fn always_a_group_that_does_not_fit_rolls_whole_with_one_fsync() {
    let sim = SimStorage::new(20);
    let opts = || rolling_options(&sim);
    let db = Arc::new(Db::open_with("/groups", opts()).unwrap());
    let value = Arc::new(vec![7u8; 3000]);
    let (fsyncs, segments) = (db.stats().fsyncs, db.stats().segments);
    let put = |key: String| {
        let (db, value) = (db.clone(), value.clone());
        std::thread::spawn(move || db.put(key, &*value))
    };
    let rounds = 20;
    let mut keys = Vec::new();
    for round in 0..rounds {
        sim.hold_syncs(true);
        keys.push(format!("a{round:02}"));
        let first = put(keys[keys.len() - 1].clone());
        wait_until("the first put's fsync", || sim.syncs_waiting() == 1);
        let group: Vec<_> = (0..4)
            .map(|i| {
                keys.push(format!("b{round:02}-{i}"));
                put(keys[keys.len() - 1].clone())
            })
            .collect();
        wait_until("the next group to form", || db.stats().writers_waiting == 4);
        sim.hold_syncs(false);
        joined("the first put", first).unwrap();
        for member in group {
            joined("a group member", member).unwrap();
        }
    }
    assert!(db.stats().segments - segments >= 4, "too few rolls to tell");
    assert_eq!(
        db.stats().fsyncs - fsyncs,
        2 * rounds,
        "a group waited for more than its own fsync"
    );
    sim.crash(CrashMode::DropUnsynced);
    drop(Arc::into_inner(db).unwrap());
    let db = Db::open_with("/groups", opts()).unwrap();
    for key in &keys {
        assert_eq!(db.get(key).unwrap().as_deref(), Some(&value[..]), "{key}");
    }
}
