//! Time-to-live expiry.
//!
//! Scenario: entries written with a TTL under a `ManualClock`, read before and after their
//! deadline, through `get`, `scan_prefix` and `range`, across a reopen and a checkpoint.
//! Method: move the clock by hand (no sleeping); an entry put at `now` with `ttl` has the
//! deadline `now + ttl`.
//! Invariant: an entry reads as present while `now < deadline` and as absent once
//! `now >= deadline`, in every read path, whether the store was reopened in between or not;
//! a checkpoint drops expired entries.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sessiondb::{Batch, Db, ManualClock};
use support::{contents, small_options};

const T0: u64 = 1_700_000_000_000;

fn open(dir: &Path, clock: &ManualClock) -> Db {
    Db::open_with(
        dir,
        small_options().auto_checkpoint(false).clock(Arc::new(clock.clone())),
    )
    .expect("open")
}

fn keys_of(db: &Db, prefix: &[u8]) -> Vec<String> {
    db.scan_prefix(prefix)
        .map(|r| String::from_utf8(r.unwrap().0).unwrap())
        .collect()
}

fn range_keys(db: &Db) -> Vec<String> {
    db.range::<&[u8], _>(..)
        .map(|r| String::from_utf8(r.unwrap().0).unwrap())
        .collect()
}

#[test]
fn expiry_applies_to_get_and_scans_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    db.put(b"s:forever", b"f").unwrap();
    db.put_with_ttl(b"s:short", b"1", Duration::from_millis(1000)).unwrap();
    db.put_with_ttl(b"s:long", b"2", Duration::from_secs(3600)).unwrap();

    clock.advance(Duration::from_millis(999));
    assert_eq!(
        db.get(b"s:short").unwrap().as_deref(),
        Some(&b"1"[..]),
        "1 ms before the deadline"
    );
    assert_eq!(keys_of(&db, b"s:"), ["s:forever", "s:long", "s:short"]);

    clock.advance(Duration::from_millis(1));
    assert_eq!(db.get(b"s:short").unwrap(), None, "at the deadline it is gone");
    assert_eq!(keys_of(&db, b"s:"), ["s:forever", "s:long"]);
    assert_eq!(range_keys(&db), ["s:forever", "s:long"]);

    clock.advance(Duration::from_secs(3600));
    assert_eq!(db.get(b"s:long").unwrap(), None);
    assert_eq!(
        db.get(b"s:forever").unwrap().as_deref(),
        Some(&b"f"[..]),
        "no TTL, no expiry"
    );
    assert_eq!(range_keys(&db), ["s:forever"]);
}

#[test]
fn overwrite_replaces_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    db.put_with_ttl(b"k", b"short", Duration::from_millis(10)).unwrap();
    db.put(b"k", b"plain").unwrap();
    db.put(b"j", b"plain").unwrap();
    db.put_with_ttl(b"j", b"short", Duration::from_millis(10)).unwrap();
    clock.advance(Duration::from_millis(10));
    assert_eq!(
        db.get(b"k").unwrap().as_deref(),
        Some(&b"plain"[..]),
        "a plain put clears the TTL"
    );
    assert_eq!(db.get(b"j").unwrap(), None, "a TTL put gives a plain key a deadline");
    // A write to an expired key brings it back.
    db.put(b"j", b"again").unwrap();
    assert_eq!(db.get(b"j").unwrap().as_deref(), Some(&b"again"[..]));
}

#[test]
fn deadlines_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let db = open(dir.path(), &clock);
        db.put_with_ttl(b"a", b"a", Duration::from_secs(10)).unwrap();
        db.put_with_ttl(b"b", b"b", Duration::from_secs(100)).unwrap();
        db.close().unwrap();
    }
    clock.advance(Duration::from_secs(5));
    {
        let db = open(dir.path(), &clock);
        assert_eq!(
            db.get(b"a").unwrap().as_deref(),
            Some(&b"a"[..]),
            "not yet expired after reopen"
        );
        assert_eq!(range_keys(&db), ["a", "b"]);
        db.close().unwrap();
    }
    clock.advance(Duration::from_secs(5));
    let db = open(dir.path(), &clock);
    assert_eq!(db.get(b"a").unwrap(), None, "deadline T0+10s reached while closed");
    assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b"b"[..]));
    assert_eq!(keys_of(&db, b""), ["b"]);
}

#[test]
fn deadlines_survive_checkpoint_and_reopen() {
    // The snapshot must carry the deadline, not turn the entry into a plain one.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let db = open(dir.path(), &clock);
        db.put_with_ttl(b"a", b"a", Duration::from_secs(10)).unwrap();
        db.checkpoint().unwrap();
        db.close().unwrap();
    }
    let db = open(dir.path(), &clock);
    assert!(db.stats().recovery.snapshot_seq.is_some());
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"a"[..]));
    clock.advance(Duration::from_secs(10));
    assert_eq!(db.get(b"a").unwrap(), None);
}

/// `Batch::put_expiring_at`: a deadline chosen elsewhere (the replicated store's leader), on
/// this store's clock; 0 never expires, a past one reads as absent at once.
#[test]
fn batch_put_expiring_at_an_absolute_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let mut batch = Batch::new();
    batch
        .put_expiring_at(b"a:later", b"x".to_vec(), T0 + 100)
        .put_expiring_at(b"a:never", b"y".to_vec(), 0)
        .put_expiring_at(b"a:past", b"z".to_vec(), T0 - 1);
    db.write(batch).unwrap();
    assert_eq!(keys_of(&db, b"a:"), ["a:later", "a:never"]);
    assert_eq!(
        db.get_versioned(b"a:later").unwrap().map(|v| v.expires_at_ms),
        Some(Some(T0 + 100))
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(keys_of(&db, b"a:"), ["a:never"]);
}

#[test]
fn batch_put_with_ttl_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let mut batch = Batch::new();
    batch
        .put_with_ttl(b"b:1", b"x", Duration::from_millis(50))
        .put(b"b:2", b"y")
        .put_with_ttl(b"b:3", b"z", Duration::from_millis(500));
    db.write(batch).unwrap();
    assert_eq!(keys_of(&db, b"b:"), ["b:1", "b:2", "b:3"]);
    clock.advance(Duration::from_millis(50));
    assert_eq!(db.get(b"b:1").unwrap(), None);
    assert_eq!(keys_of(&db, b"b:"), ["b:2", "b:3"]);
    db.close().unwrap();
    clock.advance(Duration::from_millis(450));
    let db = open(dir.path(), &clock);
    assert_eq!(keys_of(&db, b"b:"), ["b:2"], "the batch's TTLs were logged with it");
}

#[test]
fn checkpoint_drops_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    for i in 0..20u32 {
        db.put_with_ttl(format!("e{i:02}"), b"soon", Duration::from_secs(1))
            .unwrap();
    }
    for i in 0..5u32 {
        db.put(format!("p{i}"), b"plain").unwrap();
    }
    assert_eq!(db.stats().keys, 25);
    clock.advance(Duration::from_secs(1));
    db.checkpoint().unwrap();
    assert_eq!(
        db.stats().keys,
        5,
        "expired entries are gone after a checkpoint: {:?}",
        db.stats()
    );
    assert_eq!(contents(&db).len(), 5);
    db.close().unwrap();
    // Turn the clock back: the expired entries must not come back from the snapshot.
    clock.set(T0);
    let db = open(dir.path(), &clock);
    assert_eq!(db.stats().recovery.snapshot_entries, 5, "{:?}", db.stats().recovery);
    assert_eq!(keys_of(&db, b""), ["p0", "p1", "p2", "p3", "p4"]);
}

/// The store's time never goes back while it is open: a clock stepped back (a wall clock set by
/// hand or by NTP) revives no entry already read as expired, in `get`, scans or a touch.
/// Expiry decisions across threads rely on it (docs/design.md, "Concurrency").
#[test]
fn a_clock_stepped_back_revives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    db.put_with_ttl(b"s:short", b"1", Duration::from_millis(1000)).unwrap();
    clock.advance(Duration::from_millis(1000));
    assert_eq!(db.get(b"s:short").unwrap(), None, "expired at the deadline");
    clock.set(T0);
    assert_eq!(
        db.get(b"s:short").unwrap(),
        None,
        "still expired with the clock stepped back"
    );
    assert!(keys_of(&db, b"s:").is_empty());
    assert!(
        !db.touch(b"s:short", Duration::from_secs(60)).unwrap(),
        "a touch finds nothing live"
    );
    assert_eq!(db.now_ms(), T0 + 1000, "the store's time stays where it was");
    clock.set(T0 + 2000);
    assert_eq!(db.now_ms(), T0 + 2000, "and moves on with the clock");
}
