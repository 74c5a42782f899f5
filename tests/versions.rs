//! Versions, compare-and-swap writes, touches, per-write durability and the expiry sweeper.
//!
//! Scenario: the engine support that session stores need, through the public `Db` API, on real
//! files (threads racing) and on `SimStorage` (power loss). Method: a `ManualClock` for expiry
//! (no sleeping), the engine's own fsync counter for durability, threads joined before checks.
//! Invariants:
//! - a version is the sequence number of the write that set the value; it changes with every
//!   put, not with a touch, and survives reopening and checkpoints;
//! - `put_if_version` writes only when the version it expects is the current one, counting
//!   writes not yet applied; racing updates lose nothing that was acknowledged;
//! - a touch moves the deadline without rewriting the value and a touched entry outlives its
//!   first deadline, also after a reopen and a checkpoint; touching an absent or expired key
//!   does nothing;
//! - `Durability::Lazy` writes cost no fsync of their own; `Durability::Immediate` writes are
//!   durable on return in every sync mode;
//! - the sweeper drops expired entries only.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Batch, Conflict, Db, Durability, Error, ManualClock, Options, SyncMode};
use support::{race, small_options, OptionsExt};

const T0: u64 = 1_700_000_000_000;
const MIN: Duration = Duration::from_secs(60);

fn open(dir: &Path, clock: &ManualClock) -> Db {
    Db::open_with(
        dir,
        small_options()
            .auto_checkpoint(false)
            .sweep_interval(None)
            .manual_clock(clock),
    )
    .expect("open")
}

/// Every write in one segment, nothing in the background.
fn sim_options(sim: &SimStorage, mode: SyncMode) -> Options {
    small_options().quiet().one_segment().sim(sim).sync_mode(mode)
}

#[test]
fn versions_change_with_puts_and_survive_reopen_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    assert_eq!(db.get_with_version("k").unwrap(), None);
    db.put("k", "a").unwrap();
    let (v, v1) = db.get_with_version("k").unwrap().unwrap();
    assert_eq!(v, b"a");
    db.put("other", "x").unwrap();
    db.put("k", "b").unwrap();
    let (_, v2) = db.get_with_version("k").unwrap().unwrap();
    assert!(v2 > v1, "a put gives a new, larger version: {v1} then {v2}");
    db.close().unwrap();

    let db = open(dir.path(), &clock);
    assert_eq!(
        db.get_with_version("k").unwrap().unwrap().1,
        v2,
        "replayed from the log"
    );
    db.checkpoint().unwrap();
    db.close().unwrap();
    let db = open(dir.path(), &clock);
    assert_eq!(
        db.stats().recovery.records_replayed,
        0,
        "loaded from the snapshot alone"
    );
    assert_eq!(db.get_with_version("k").unwrap().unwrap(), (b"b".to_vec(), v2));
}

#[test]
fn put_if_version_writes_only_over_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);

    let v1 = db
        .put_if_version("s", "one", None, None)
        .unwrap()
        .expect("absent: created");
    assert_eq!(
        db.put_if_version("s", "again", None, None).unwrap(),
        Err(Conflict {
            key: b"s".to_vec(),
            expected: None,
            actual: Some(v1)
        }),
        "create never overwrites"
    );
    let v2 = db
        .put_if_version("s", "two", Some(v1), None)
        .unwrap()
        .expect("current version");
    assert_eq!(db.get_with_version("s").unwrap(), Some((b"two".to_vec(), v2)));
    let stale = db.put_if_version("s", "lost?", Some(v1), None).unwrap().unwrap_err();
    assert_eq!((stale.expected, stale.actual), (Some(v1), Some(v2)));
    assert_eq!(
        db.get("s").unwrap().as_deref(),
        Some(&b"two"[..]),
        "a conflict writes nothing"
    );

    // Deletes too; and the error form of write().
    assert!(
        matches!(db.delete_if_version("s", v1).unwrap(), Err(c) if c.expected == Some(v1) && c.actual == Some(v2)),
        "a delete expecting a stale version is refused with the version it found"
    );
    let mut batch = Batch::new();
    batch.put("s", "x").expect_version("s", Some(v1));
    assert!(matches!(db.write(batch), Err(Error::Conflict(c)) if c.actual == Some(v2)));
    db.delete_if_version("s", v2).unwrap().expect("current version");
    assert_eq!(db.get("s").unwrap(), None);
    db.put_if_version("s", "back", None, None)
        .unwrap()
        .expect("absent again");
}

#[test]
fn an_expired_entry_counts_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let v = db.put_if_version("s", "old", None, Some(MIN)).unwrap().unwrap();
    assert!(db.put_if_version("s", "new", None, None).unwrap().is_err());
    clock.advance(MIN);
    let c = db.put_if_version("s", "new", Some(v), None).unwrap().unwrap_err();
    assert_eq!(c.actual, None, "expired: no version");
    db.put_if_version("s", "new", None, None)
        .unwrap()
        .expect("expired counts as absent");
}

#[test]
fn batch_preconditions_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let va = db.put_if_version("a", "1", None, None).unwrap().unwrap();
    let vb = db.put_if_version("b", "1", None, None).unwrap().unwrap();
    let mut batch = Batch::new();
    batch
        .put("a", "2")
        .put("b", "2")
        .expect_version("a", Some(va))
        .expect_version("b", Some(va));
    let c = db.write_if(batch).unwrap().unwrap_err();
    assert_eq!((c.key.as_slice(), c.actual), (&b"b"[..], Some(vb)));
    assert_eq!(
        db.get("a").unwrap().as_deref(),
        Some(&b"1"[..]),
        "nothing of a failed batch"
    );
    let mut batch = Batch::new();
    batch
        .put("a", "2")
        .put("b", "2")
        .expect_version("a", Some(va))
        .expect_version("b", Some(vb));
    let seq = db.write_if(batch).unwrap().unwrap();
    assert_eq!(
        db.get_with_version("a").unwrap().unwrap().1,
        seq,
        "every put of a batch has its version"
    );
    assert_eq!(db.get_with_version("b").unwrap().unwrap().1, seq);
}

/// Threads increment one counter with read / compare-and-swap / retry. Every acknowledged
/// increment must be in the final count: none overwritten by a racing writer.
#[test]
fn racing_compare_and_swap_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        Db::open_with(
            dir.path(),
            small_options().sync_mode(SyncMode::Never).sweep_interval(None),
        )
        .unwrap(),
    );
    const THREADS: u64 = 8;
    const EACH: u64 = 200;
    let per_thread = {
        let db = db.clone();
        race(THREADS as usize, move |_| {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let (n, v) = match db.get_with_version("counter").unwrap() {
                        Some((b, v)) => (u64::from_le_bytes(b.try_into().unwrap()), Some(v)),
                        None => (0, None),
                    };
                    match db.put_if_version("counter", (n + 1).to_le_bytes(), v, None).unwrap() {
                        Ok(_) => break,
                        Err(c) => {
                            assert_eq!(c.expected, v);
                            assert_ne!(c.actual, v, "a conflict names a different version");
                            conflicts += 1;
                        }
                    }
                }
            }
            conflicts
        })
    };
    let conflicts: u64 = per_thread.into_iter().sum();
    let n = u64::from_le_bytes(db.get("counter").unwrap().unwrap().try_into().unwrap());
    assert_eq!(
        n,
        THREADS * EACH,
        "every acknowledged increment counted ({conflicts} conflicts retried)"
    );
}

#[test]
fn touch_extends_expiry_without_rewriting_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let value = vec![7u8; 2000];
    db.put_with_ttl("s", &value, MIN).unwrap();
    let (_, v) = db.get_with_version("s").unwrap().unwrap();
    let log_before = db.stats().log_bytes_since_checkpoint;
    clock.advance(MIN / 2);
    assert!(db.touch("s", MIN).unwrap(), "live: touched");
    let touch_bytes = db.stats().log_bytes_since_checkpoint - log_before;
    assert!(
        touch_bytes < 100,
        "a touch is a small record ({touch_bytes} bytes), not a rewrite"
    );
    assert_eq!(
        db.get_with_version("s").unwrap(),
        Some((value.clone(), v)),
        "same value, same version"
    );

    clock.advance(MIN / 2 + Duration::from_secs(1)); // past the first deadline
    assert!(
        db.get("s").unwrap().is_some(),
        "a touched entry outlives its first deadline"
    );
    db.close().unwrap();
    let db = open(dir.path(), &clock);
    assert!(db.get("s").unwrap().is_some(), "the touch is replayed after a reopen");
    db.checkpoint().unwrap();
    db.close().unwrap();
    let db = open(dir.path(), &clock);
    assert!(db.get("s").unwrap().is_some(), "and kept by a checkpoint");
    clock.advance(MIN / 2);
    assert_eq!(db.get("s").unwrap(), None, "the new deadline holds");
    assert!(
        !db.touch("s", MIN).unwrap(),
        "an expired entry is not revived by a touch"
    );
    assert_eq!(db.get("s").unwrap(), None);
    assert!(!db.touch("never", MIN).unwrap(), "absent: nothing to touch");
}

/// The snapshot is written while the entry is still under its first deadline; the touch is in
/// the log after it; recovery runs after the first deadline. The entry must survive: recovery
/// drops expired entries only after replaying every touch.
#[test]
fn a_touch_after_the_snapshot_saves_an_entry_that_expired_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    db.put_with_ttl("s", "v", MIN).unwrap();
    db.checkpoint().unwrap();
    assert!(db.touch("s", 10 * MIN).unwrap());
    drop(db); // no close-time checkpoint: auto checkpoints are off
    clock.advance(2 * MIN);
    let db = open(dir.path(), &clock);
    assert!(db.stats().recovery.records_replayed >= 1);
    assert_eq!(db.get("s").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn touches_in_a_batch_follow_the_batch_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let mut batch = Batch::new();
    batch
        .put_with_ttl("new", "v", MIN)
        .touch("new", 10 * MIN)
        .touch("absent", MIN);
    db.write(batch).unwrap();
    clock.advance(2 * MIN);
    assert!(
        db.get("new").unwrap().is_some(),
        "a touch after a put in the same batch applies to it"
    );
    assert_eq!(db.get("absent").unwrap(), None, "a touch never creates");
    db.close().unwrap();
    let db = open(dir.path(), &clock);
    assert!(db.get("new").unwrap().is_some(), "the same after replay");
}

#[test]
fn lazy_writes_cost_no_fsync_and_immediate_ones_are_durable_in_every_mode() {
    let sim = SimStorage::new(11);
    let db = Db::open_with("/always", sim_options(&sim, SyncMode::Always)).unwrap();
    let fsyncs = db.stats().fsyncs;
    let mut batch = Batch::new();
    batch.put("lazy", "1").durability(Durability::Lazy);
    db.write(batch).unwrap();
    assert!(db.touch_with("lazy", MIN, Durability::Lazy).unwrap());
    assert_eq!(db.stats().fsyncs, fsyncs, "Always mode: lazy writes do not fsync");
    assert_eq!(db.get("lazy").unwrap().as_deref(), Some(&b"1"[..]), "visible at once");
    db.put("durable", "2").unwrap();
    assert_eq!(db.stats().fsyncs, fsyncs + 1, "the next durable write fsyncs once");
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = Db::open_with("/always", sim_options(&sim, SyncMode::Always)).unwrap();
    assert_eq!(
        db.get("lazy").unwrap().as_deref(),
        Some(&b"1"[..]),
        "made durable by the later fsync"
    );
    assert_eq!(db.get("durable").unwrap().as_deref(), Some(&b"2"[..]));
    drop(db);

    let sim = SimStorage::new(12);
    let db = Db::open_with("/never", sim_options(&sim, SyncMode::Never)).unwrap();
    let fsyncs = db.stats().fsyncs;
    db.put("default", "1").unwrap();
    assert_eq!(db.stats().fsyncs, fsyncs, "Never mode: a default write does not fsync");
    let mut batch = Batch::new();
    batch.put("login", "2").durability(Durability::Immediate);
    db.write(batch).unwrap();
    assert_eq!(db.stats().fsyncs, fsyncs + 1, "an immediate write fsyncs");
    db.put("after", "3").unwrap();
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = Db::open_with("/never", sim_options(&sim, SyncMode::Never)).unwrap();
    assert_eq!(
        db.get("login").unwrap().as_deref(),
        Some(&b"2"[..]),
        "immediate: survives power loss"
    );
    assert_eq!(
        db.get("default").unwrap().as_deref(),
        Some(&b"1"[..]),
        "earlier writes ride along"
    );
    assert_eq!(db.get("after").unwrap(), None, "a later unsynced write is lost");
}

#[test]
fn a_lazy_write_is_lost_by_power_loss_only_until_something_syncs() {
    let sim = SimStorage::new(13);
    let db = Db::open_with("/lazy", sim_options(&sim, SyncMode::Always)).unwrap();
    db.put("durable", "1").unwrap();
    let mut batch = Batch::new();
    batch.put("lazy", "2").durability(Durability::Lazy);
    db.write(batch).unwrap();
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = Db::open_with("/lazy", sim_options(&sim, SyncMode::Always)).unwrap();
    assert_eq!(db.get("durable").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        db.get("lazy").unwrap(),
        None,
        "lazy and not yet synced: lost by a power loss"
    );
}

#[test]
fn purge_drops_expired_entries_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    for i in 0..1000u32 {
        let key = format!("k{i:04}");
        if i % 3 == 0 {
            db.put(&key, "forever").unwrap();
        } else {
            db.put_with_ttl(&key, "brief", Duration::from_secs(u64::from(i % 5) + 1))
                .unwrap();
        }
    }
    clock.advance(Duration::from_secs(3)); // deadlines 1..=3 s passed: i % 5 in 0..=2
    let expected_dropped = (0..1000u32).filter(|i| i % 3 != 0 && i % 5 <= 2).count() as u64;
    let keys_before = db.stats().keys;
    assert_eq!(db.purge_expired(), expected_dropped);
    assert_eq!(db.stats().keys, keys_before - expected_dropped);
    assert_eq!(db.stats().expired_swept, expected_dropped);
    for i in 0..1000u32 {
        let live = i % 3 == 0 || i % 5 > 2;
        assert_eq!(db.get(format!("k{i:04}")).unwrap().is_some(), live, "key {i}");
    }
    assert_eq!(db.purge_expired(), 0, "nothing left to drop");
}
