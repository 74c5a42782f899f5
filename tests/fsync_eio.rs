//! A failed fsync fails every writer of its commit group and poisons the store (docs/reliability.md, F5).
//!
//! Scenario: one writer's fsync is held at a gate in the simulated storage while 16 more writers
//! line up in the next commit group; then every fsync starts failing with EIO (Linux semantics:
//! the dirty data is dropped, the next fsync would report success) and the gate opens.
//! Method: the real engine on `SimStorage`; the test waits on the engine's own queue gauge
//! (`stats().writers_waiting`), not on sleeps.
//! Invariant: no writer hangs and none is told Ok; later writes get `Poisoned`; reads still
//! work; after a crash, reopening gives a state holding every acknowledged write and no value
//! that was never written.

mod support;

use std::sync::Arc;

use sessiondb::internals::sim::{CrashMode, Faults, SimStorage};
use sessiondb::{Db, Error};
use support::hold::{hold_fsync_and_line_up, LinedUp};
use support::{joined, small_options, OptionsExt};

const WRITERS: usize = 16;

/// One writer ("first") in its fsync at the gate, `WRITERS` more lined up behind it.
fn line_up(sim: &SimStorage, db: &Arc<Db>) -> LinedUp {
    let group = (0..WRITERS)
        .map(|i| (format!("w{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    hold_fsync_and_line_up(sim, db, ("first", "x"), group)
}

#[test]
fn fsync_eio_fails_the_whole_group_and_poisons() {
    let sim = SimStorage::new(7);
    let dir = std::path::Path::new("/eio");
    let opts = small_options().quiet().one_segment().sim(&sim);
    let db = Arc::new(Db::open_with(dir, opts.clone()).unwrap());
    db.put("before", "acknowledged").unwrap();

    // The first writer is in its fsync; the other 16 wait in the next group (its leader-to-be
    // included).
    let lined = line_up(&sim, &db);
    sim.set_faults(Faults {
        sync_eio: 1.0,
        ..Faults::default()
    });
    sim.hold_syncs(false);

    let first = joined("the first writer", lined.first);
    assert!(
        matches!(first, Err(Error::Io { .. })),
        "the first group's fsync failed: {first:?}"
    );
    for w in lined.group {
        let r = joined("a writer of the lined-up group", w);
        assert!(
            matches!(r, Err(Error::Poisoned { .. }) | Err(Error::Io { .. })),
            "no writer of a failed or later group is told Ok: {r:?}"
        );
    }
    // "before" and "first" were written; the lined-up group found the store poisoned and wrote
    // nothing.
    assert_eq!(db.stats().commit_groups, 2, "{:?}", db.stats());
    assert!(
        matches!(db.put("after", "x"), Err(Error::Poisoned { .. })),
        "later writes are refused"
    );
    assert_eq!(
        db.get("before").unwrap().as_deref(),
        Some(&b"acknowledged"[..]),
        "reads still work"
    );
    assert_eq!(
        db.get("first").unwrap(),
        None,
        "a write whose fsync failed is not visible"
    );

    sim.crash(CrashMode::Torn { sector: 512 });
    drop(db);
    sim.set_faults(Faults::default());
    let db = Db::open_with(dir, opts).unwrap();
    assert_eq!(db.get("before").unwrap().as_deref(), Some(&b"acknowledged"[..]));
    for r in db.range::<&[u8], _>(..) {
        let (k, v) = r.unwrap();
        let k = String::from_utf8(k).unwrap();
        let expected = match k.as_str() {
            "before" => "acknowledged".to_string(),
            "first" => "x".to_string(),
            w => format!("v{}", &w[1..]),
        };
        assert_eq!(v, expected.as_bytes(), "no value that was never written ({k})");
    }
}

#[test]
fn sixteen_writers_share_one_failing_group() {
    // The held fsync (of the first writer) succeeds; the next group, all 16 writers, fails.
    let sim = SimStorage::new(11);
    let dir = std::path::Path::new("/eio16");
    let opts = small_options().quiet().one_segment().sim(&sim);
    let db = Arc::new(Db::open_with(dir, opts.clone()).unwrap());
    let lined = line_up(&sim, &db);
    sim.pass_syncs(1);
    joined("the first writer", lined.first).expect("the first group's fsync succeeded");
    // The 16-writer group has written its records and waits at the gate for its fsync.
    support::wait_until("an fsync at the gate", || sim.syncs_waiting() > 0);
    sim.set_faults(Faults {
        sync_eio: 1.0,
        ..Faults::default()
    });
    sim.hold_syncs(false);
    for w in lined.group {
        let r = joined("a writer of the failed group", w);
        match &r {
            // The same error as the leader's, with its OS error number (EIO).
            Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(5), "{r:?}"),
            other => panic!("every writer of the failed group gets the I/O error: {other:?}"),
        }
    }
    let stats = db.stats();
    assert_eq!(
        stats.commit_group_size_max, WRITERS as u64,
        "the 16 writers were one group"
    );
    assert!(matches!(db.put("after", "x"), Err(Error::Poisoned { .. })));
    assert_eq!(db.get("w0").unwrap(), None, "nothing of the failed group is visible");
    assert_eq!(db.get("first").unwrap().as_deref(), Some(&b"x"[..]));

    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    sim.set_faults(Faults::default());
    let db = Db::open_with(dir, opts).unwrap();
    assert_eq!(
        db.get("first").unwrap().as_deref(),
        Some(&b"x"[..]),
        "the acknowledged write survived"
    );
    assert_eq!(
        db.get("w0").unwrap(),
        None,
        "dropped dirty data is gone after the crash"
    );
}
