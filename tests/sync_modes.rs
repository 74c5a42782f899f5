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
