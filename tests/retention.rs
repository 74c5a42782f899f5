//! Bounded retention (`Options::max_retention`, issue 16).
//!
//! Scenario: a value carrying a unique marker dies (overwritten, deleted, expired with nothing
//! else written, a session destroyed, a user logged out everywhere) in a store on the real file
//! system with a `ManualClock`; the clock is moved by hand past the retention bound.
//! Method: every file of the store's directory is read raw and searched for the marker. The
//! retention thread publishes the store time at which it last looked (after any checkpoint it
//! started then), so a test waits, with a deadline, for a look at the time it set instead of
//! sleeping, and can also show that nothing was forced before the bound was due.
//! Invariant: the marker is in some file until half of `max_retention` after the value died
//! (when the retention checkpoint starts, and not before), and in none once the thread has
//! looked at that time: no dead value stays in a file for `max_retention`. A randomised run
//! (`SESSIONDB_SEED` replays it) checks the bound for every value of a mixed workload.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiondb::internals::sim::SimStorage;
use sessiondb::session::SessionStore;
use sessiondb::{Clock, Db, Error, ManualClock, Options, SyncMode};
use support::{seeded, small_options, wait_until, OptionsExt, Rng, SEGMENT_SIZE_SMALL};

const T0: u64 = 1_700_000_000_000;
const RETENTION: Duration = Duration::from_secs(60);
const RETENTION_MS: u64 = 60_000;
/// A retention checkpoint starts this long after the first death.
const HALF_MS: u64 = RETENTION_MS / 2;

fn options(clock: &ManualClock) -> Options {
    small_options()
        .manual_clock(clock)
        .sync_mode(SyncMode::Never)
        .max_retention(RETENTION)
}

/// The bytes of `path`; none if it went meanwhile (a background thread deleted it).
fn read_raw(path: &Path) -> Vec<u8> {
    match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Every regular file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() {
                todo.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// The files under `dir` whose raw bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| {
            let bytes = read_raw(p);
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// Sets the clock to `at` and waits until the retention thread has looked at it (and finished
/// whatever checkpoint that look started).
fn look_at(db: &Db, clock: &ManualClock, at: u64) {
    clock.set(at);
    wait_until(&format!("the retention thread to look at {at}"), || {
        db.stats().retention_checked_ms >= at
    });
}

/// The bound, for `markers` of values that died at `died`: in the files until the retention
/// checkpoint is due (half the bound after the death), nothing forced before; gone from every
/// file once the thread has looked at that time, well within the bound.
fn assert_gone_when_due(db: &Db, clock: &ManualClock, dir: &Path, markers: &[&[u8]], died: u64) {
    let before = db.stats();
    assert_eq!(before.dead_since_ms, Some(died), "{before:?}");
    for m in markers {
        assert!(
            !files_holding(dir, m).is_empty(),
            "{} should still be on disk before the bound",
            String::from_utf8_lossy(m)
        );
    }
    // A millisecond before the retention checkpoint is due: the thread looks and does nothing.
    look_at(db, clock, died + HALF_MS - 1);
    let early = db.stats();
    assert_eq!(
        (early.retention_checkpoints, early.checkpoints),
        (before.retention_checkpoints, before.checkpoints),
        "nothing is forced before half the bound: {early:?}"
    );
    for m in markers {
        assert!(!files_holding(dir, m).is_empty());
    }
    // Due: by the time the thread has looked, its checkpoint has deleted every file holding them.
    look_at(db, clock, died + HALF_MS);
    let after = db.stats();
    assert_eq!(
        after.retention_checkpoints,
        before.retention_checkpoints + 1,
        "{after:?}"
    );
    assert!(db.now_ms() < died + RETENTION_MS);
    for m in markers {
        assert_eq!(
            files_holding(dir, m),
            Vec::<PathBuf>::new(),
            "{} outlived the retention bound",
            String::from_utf8_lossy(m)
        );
    }
    // Only deadlines still ahead (of live sessions, say) are left.
    assert!(after.dead_since_ms.is_none_or(|at| at > db.now_ms()), "{after:?}");
}

#[test]
fn an_overwritten_value_leaves_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    db.put("other", "a live value").unwrap();
    db.put("k", "OVERWRITTEN-MARKER-1").unwrap();
    assert_eq!(db.stats().dead_since_ms, None, "a put of a new key kills nothing");
    clock.advance(Duration::from_secs(5));
    let (_, version) = db.get_with_version("k").unwrap().unwrap();
    db.put_if_version("k", "second", Some(version), None).unwrap().unwrap();
    assert_gone_when_due(&db, &clock, dir.path(), &[b"OVERWRITTEN-MARKER-1"], T0 + 5_000);
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(db.get("other").unwrap().as_deref(), Some(&b"a live value"[..]));
}

#[test]
fn a_deleted_value_and_its_key_leave_every_file_with_automatic_checkpoints_off() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock).quiet()).unwrap();
    db.put("other", "a live value").unwrap();
    db.put("DELETED-KEY-MARKER", "DELETED-VALUE-MARKER").unwrap();
    db.checkpoint().unwrap(); // the value in a snapshot too, then deleted in the log
    clock.advance(Duration::from_secs(1));
    db.delete("DELETED-KEY-MARKER").unwrap();
    assert_gone_when_due(
        &db,
        &clock,
        dir.path(),
        &[b"DELETED-KEY-MARKER", b"DELETED-VALUE-MARKER"],
        T0 + 1_000,
    );
    assert_eq!(db.get("other").unwrap().as_deref(), Some(&b"a live value"[..]));
}

#[test]
fn an_expired_value_in_a_snapshot_leaves_it_with_no_other_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    db.put("other", "a live value").unwrap();
    db.put_with_ttl("k", "EXPIRED-MARKER-1", Duration::from_secs(10))
        .unwrap();
    // Everything in one snapshot, the log after it empty: nothing written since the last
    // checkpoint when the entry expires.
    db.checkpoint().unwrap();
    let seq = db.stats().last_seq;
    assert_gone_when_due(&db, &clock, dir.path(), &[b"EXPIRED-MARKER-1"], T0 + 10_000);
    assert_eq!(db.get("k").unwrap(), None);
    assert_eq!(db.get("other").unwrap().as_deref(), Some(&b"a live value"[..]));
    let stats = db.stats();
    assert_eq!(stats.snapshots, 1, "{stats:?}");
    assert!(stats.last_checkpoint_seq > seq, "a new snapshot: {stats:?}");
    drop(db);
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    assert_eq!(db.get("other").unwrap().as_deref(), Some(&b"a live value"[..]));
    assert_eq!(db.get("k").unwrap(), None);
}

#[test]
fn an_expired_value_in_the_log_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock).quiet()).unwrap();
    db.put("other", "a live value").unwrap();
    db.put_with_ttl("k", "EXPIRED-MARKER-2", Duration::from_secs(10))
        .unwrap();
    // A touch moves the deadline: the value is dead from the later one.
    clock.advance(Duration::from_secs(5));
    assert!(db.touch("k", Duration::from_secs(100)).unwrap());
    let deadline = T0 + 105_000;
    // Counted early (from the first deadline written): a checkpoint that finds it live keeps it.
    look_at(&db, &clock, T0 + 10_000 + HALF_MS);
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"EXPIRED-MARKER-2"[..]));
    assert!(!files_holding(dir.path(), b"EXPIRED-MARKER-2").is_empty());
    assert_gone_when_due(&db, &clock, dir.path(), &[b"EXPIRED-MARKER-2"], deadline);
    assert_eq!(db.get("k").unwrap(), None);
}

#[test]
fn a_destroyed_session_leaves_its_payload_and_user_id_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = SessionStore::new(Db::open_with(dir.path(), options(&clock)).unwrap());
    let hour = Duration::from_secs(3600);
    let kept = store.create_for_user(b"someone-else", b"kept payload", hour).unwrap();
    let id = store
        .create_for_user(b"USER-ID-MARKER-1", b"SESSION-PAYLOAD-MARKER-1", hour)
        .unwrap();
    store.touch(&id, hour).unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(store.destroy(&id).unwrap());
    assert_gone_when_due(
        store.db(),
        &clock,
        dir.path(),
        &[b"USER-ID-MARKER-1", b"SESSION-PAYLOAD-MARKER-1"],
        T0 + 2_000,
    );
    assert!(store.load(&id).unwrap().is_none());
    assert_eq!(store.load(&kept).unwrap().unwrap().data, b"kept payload");
    assert_eq!(store.sessions_of(b"someone-else").unwrap(), vec![kept]);
}

#[test]
fn logging_a_user_out_everywhere_leaves_their_sessions_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = SessionStore::new(Db::open_with(dir.path(), options(&clock)).unwrap());
    let hour = Duration::from_secs(3600);
    let kept = store.create_for_user(b"someone-else", b"kept payload", hour).unwrap();
    for payload in [&b"PAYLOAD-MARKER-A"[..], b"PAYLOAD-MARKER-B"] {
        store.create_for_user(b"USER-ID-MARKER-2", payload, hour).unwrap();
    }
    store.db().checkpoint().unwrap(); // in a snapshot as well as the log
    clock.advance(Duration::from_secs(3));
    assert_eq!(store.destroy_all_of(b"USER-ID-MARKER-2").unwrap(), 2);
    assert_gone_when_due(
        store.db(),
        &clock,
        dir.path(),
        &[b"USER-ID-MARKER-2", b"PAYLOAD-MARKER-A", b"PAYLOAD-MARKER-B"],
        T0 + 3_000,
    );
    assert_eq!(store.sessions_of(b"USER-ID-MARKER-2").unwrap(), vec![]);
    assert_eq!(store.load(&kept).unwrap().unwrap().data, b"kept payload");
}

#[test]
fn a_store_closed_with_a_dead_value_holds_it_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock).quiet()).unwrap();
    db.put("k", "CLOSED-MARKER-1").unwrap();
    db.put("k", "second").unwrap();
    assert!(!files_holding(dir.path(), b"CLOSED-MARKER-1").is_empty());
    db.close().unwrap();
    assert_eq!(files_holding(dir.path(), b"CLOSED-MARKER-1"), Vec::<PathBuf>::new());
    let db = Db::open_with(dir.path(), options(&clock).quiet()).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(db.stats().dead_since_ms, None, "{:?}", db.stats());
}

#[test]
fn a_value_that_expired_while_the_store_was_closed_counts_from_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    db.put("other", "a live value").unwrap();
    db.put_with_ttl("k", "EXPIRED-MARKER-3", Duration::from_secs(10))
        .unwrap();
    db.checkpoint().unwrap();
    db.close().unwrap();
    assert!(!files_holding(dir.path(), b"EXPIRED-MARKER-3").is_empty());
    clock.advance(Duration::from_secs(3600));
    let opened = clock.now_ms();
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    assert_gone_when_due(&db, &clock, dir.path(), &[b"EXPIRED-MARKER-3"], opened);
}

#[test]
fn a_retention_checkpoint_that_fails_is_tried_again() {
    let sim = SimStorage::new(16);
    let clock = ManualClock::new(T0);
    let db = Db::open_with("/store", options(&clock).quiet().sim(&sim)).unwrap();
    let on_disk = |marker: &[u8]| {
        sim.files()
            .into_iter()
            .filter(|p| {
                sim.read_file(p)
                    .is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker))
            })
            .count()
    };
    let mut old = b"FAILED-MARKER-1".to_vec();
    old.resize(3000, b'.');
    db.put("k", &old).unwrap();
    for i in 0..4 {
        db.put(format!("other{i}"), [b'o'; 3000]).unwrap();
    }
    clock.advance(Duration::from_secs(1));
    db.put("k", "second").unwrap();
    let died = T0 + 1_000;
    // Room for the checkpoint's roll (a new segment), none for its snapshot: it fails after
    // the roll, and must give back what the roll took.
    sim.set_capacity(Some(sim.used_bytes() + SEGMENT_SIZE_SMALL + 1024));
    look_at(&db, &clock, died + HALF_MS);
    let failed = db.stats();
    assert_eq!((failed.retention_checkpoints, failed.checkpoints), (1, 0), "{failed:?}");
    assert_eq!(failed.dead_since_ms, Some(died), "still dead, still noted: {failed:?}");
    assert_eq!(on_disk(b"FAILED-MARKER-1"), 1);
    // Room again: the next attempt (after a pause, not in a loop) removes it.
    sim.set_capacity(None);
    wait_until("a retention checkpoint that succeeds", || db.stats().checkpoints == 1);
    assert_eq!(on_disk(b"FAILED-MARKER-1"), 0);
    let stats = db.stats();
    assert_eq!(
        (stats.retention_checkpoints, stats.dead_since_ms),
        (2, None),
        "{stats:?}"
    );
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"second"[..]));
}

#[test]
fn nothing_is_checkpointed_while_nothing_dies() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = Db::open_with(dir.path(), options(&clock)).unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), "value").unwrap();
    }
    look_at(&db, &clock, T0 + 10 * RETENTION_MS);
    let stats = db.stats();
    assert_eq!(
        (stats.dead_since_ms, stats.retention_checkpoints, stats.checkpoints),
        (None, 0, 0)
    );
}

#[test]
fn max_retention_is_at_least_a_second() {
    let dir = tempfile::tempdir().unwrap();
    for bound in [Duration::ZERO, Duration::from_millis(999)] {
        let r = Db::open_with(dir.path(), Options::new().max_retention(bound));
        assert!(matches!(r, Err(Error::InvalidOptions(_))), "{bound:?}: {r:?}");
    }
    Db::open_with(dir.path(), Options::new().max_retention(Duration::from_secs(1)))
        .unwrap()
        .close()
        .unwrap();
}

/// The marker a randomised value carries: `<<v` + 8 digits + `>>`.
fn marker(n: u64) -> Vec<u8> {
    format!("<<v{n:08}>>").into_bytes()
}

/// The numbers of every marker in the files under `dir`.
fn markers_on_disk(dir: &Path) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for p in all_files(dir) {
        let bytes = read_raw(&p);
        for w in bytes.windows(13) {
            if w.starts_with(b"<<v") && w.ends_with(b">>") {
                let digits = std::str::from_utf8(&w[3..11]).ok().and_then(|d| d.parse().ok());
                if let Some(n) = digits {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// A key's current value in the model: its number and deadline (0: never).
#[derive(Clone, Copy)]
struct Live {
    n: u64,
    deadline: u64,
}

#[test]
fn randomised_no_dead_value_outlives_the_bound() {
    let (seed, _guard) = seeded("randomised_no_dead_value_outlives_the_bound");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut opts = options(&clock);
    if rng.chance(50) {
        opts = opts.quiet();
    }
    let mut db = Db::open_with(dir.path(), opts.clone()).unwrap();
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    // Value number -> when it died (overwritten, deleted, or its deadline).
    let mut died: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next = 0u64;
    let mut checks = 0;
    // What was done, printed when the check fails.
    let mut log: Vec<String> = Vec::new();
    for _ in 0..300 {
        let now = db.now_ms();
        // Values whose deadline has passed are dead from it.
        for (_, l) in live.iter().filter(|(_, l)| l.deadline != 0 && l.deadline <= now) {
            died.entry(l.n).or_insert(l.deadline);
        }
        live.retain(|_, l| l.deadline == 0 || l.deadline > now);
        let key = rng.below(12);
        let k = format!("k{key}");
        match rng.below(100) {
            0..=44 => {
                next += 1;
                let mut value = marker(next);
                let len = rng.below(200) as usize;
                value.extend(std::iter::repeat_n(b'.', len));
                let ttl = rng
                    .chance(30)
                    .then(|| Duration::from_millis(rng.range(1, 2 * RETENTION_MS)));
                match ttl {
                    Some(ttl) => db.put_with_ttl(&k, &value, ttl).unwrap(),
                    None => db.put(&k, &value).unwrap(),
                }
                let deadline = ttl.map_or(0, |t| now + t.as_millis() as u64);
                log.push(format!("{now} put k{key} v{next} deadline {deadline}"));
                if let Some(old) = live.insert(key, Live { n: next, deadline }) {
                    died.insert(old.n, now);
                }
            }
            45..=59 => {
                db.delete(&k).unwrap();
                log.push(format!("{now} delete k{key}"));
                if let Some(old) = live.remove(&key) {
                    died.insert(old.n, now);
                }
            }
            60..=69 => {
                let ttl = Duration::from_millis(rng.range(1, 2 * RETENTION_MS));
                let touched = db.touch(&k, ttl).unwrap();
                log.push(format!("{now} touch k{key} {ttl:?} {touched}"));
                assert_eq!(touched, live.contains_key(&key));
                if let Some(l) = live.get_mut(&key) {
                    l.deadline = now + ttl.as_millis() as u64;
                }
            }
            70..=72 => {
                db.checkpoint().unwrap();
                log.push(format!("{now} checkpoint"));
            }
            73..=74 => {
                db.close().unwrap();
                db = Db::open_with(dir.path(), opts.clone()).unwrap();
                log.push(format!("{now} reopen {:?}", db.stats().dead_since_ms));
            }
            _ => {
                // Time passes and the retention thread looks: every value dead for half the
                // bound (when its checkpoint starts; the bound itself is what is promised) is
                // gone from every file.
                let at = now + rng.range(1, RETENTION_MS / 3);
                look_at(&db, &clock, at);
                let st = db.stats();
                log.push(format!(
                    "look at {at}: dead since {:?}, {} retention checkpoints",
                    st.dead_since_ms, st.retention_checkpoints
                ));
                for l in live.values() {
                    if l.deadline != 0 && l.deadline <= at {
                        died.entry(l.n).or_insert(l.deadline);
                    }
                }
                let on_disk = markers_on_disk(dir.path());
                for (n, &when) in &died {
                    assert!(
                        when + HALF_MS > at || !on_disk.contains(n),
                        "value {n} died at {when} and is still in {:?} at {at}; after:\n{}",
                        files_holding(dir.path(), &marker(*n)),
                        log.join("\n")
                    );
                }
                checks += 1;
            }
        }
    }
    assert!(checks > 30, "{checks} checks");
    db.close().unwrap();
}
