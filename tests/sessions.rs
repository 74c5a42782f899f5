//! The session layer: ids, versions without lost updates, merging map sessions, expiry,
//! regenerate, the per-user index.
//!
//! Scenario: `SessionStore` over a real store; threads race on one session (saves, updates,
//! merges, regenerates, creates against "log out everywhere"). Method: a `ManualClock` for
//! expiry, threads joined before every check, and each thread's acknowledged results kept to
//! be checked against the final state. Randomised parts take their seed from `SESSIONDB_SEED`.
//! Invariants: an acknowledged save is never overwritten by a save that did not see it (every
//! success names the version of the success before it); concurrent map saves of different
//! entries all land and of the same entry conflict; a touched session outlives its first
//! deadline, also across a reopen; an expired session is never returned; after `regenerate` the
//! old id is dead and the new one holds the data; the user index and the sessions agree.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sessiondb::session::{SessionId, SessionMap, SessionOptions, SessionStore};
use sessiondb::{Error, ManualClock};
use support::{race, seeded, Rng};

const T0: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn open(dir: &Path, clock: &ManualClock) -> SessionStore {
    support::manual_session_store(dir, clock)
}

fn fast_store(dir: &Path) -> SessionStore {
    open(dir, &ManualClock::new(T0))
}

#[test]
fn ids_are_random_url_safe_and_parse_back() {
    let mut seen = BTreeSet::new();
    for _ in 0..1000 {
        let id = SessionId::generate().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 22, "128 bits in 22 base64 characters: {s}");
        assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(s.parse::<SessionId>().unwrap(), id, "round trip");
        assert!(seen.insert(s), "ids do not repeat");
    }
    let good = SessionId::generate().unwrap().to_string();
    for bad in [
        String::new(),
        good[..21].to_string(),
        format!("{good}A"),
        format!("{}=", &good[..21]),
        format!("{}+", &good[..21]),
        format!("{}B", &good[..21]), // non-canonical: the last character carries 4 unused bits
    ] {
        assert!(
            matches!(bad.parse::<SessionId>(), Err(Error::InvalidSessionId(_))),
            "{bad:?} must not parse"
        );
    }
    let debug = format!("{:?}", SessionId::generate().unwrap());
    assert!(debug.len() < 20, "Debug does not print the whole credential: {debug}");
}

#[test]
fn create_load_save_touch_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let id = store.create(b"{}", HOUR).unwrap();
    let s = store.load(&id).unwrap().unwrap();
    assert_eq!((s.data.as_slice(), s.expires_at_ms), (&b"{}"[..], Some(T0 + 3_600_000)));

    let v2 = store.save(&id, b"{\"n\":1}", s.version).unwrap().unwrap();
    let stale = store.save(&id, b"{\"n\":99}", s.version).unwrap().unwrap_err();
    assert_eq!((stale.expected, stale.actual), (Some(s.version), Some(v2)));
    assert_eq!(stale.key, id.to_string().into_bytes(), "the conflict names the session");
    let s = store.load(&id).unwrap().unwrap();
    assert_eq!(s.data, b"{\"n\":1}", "the stale save wrote nothing");
    assert_eq!(s.expires_at_ms, Some(T0 + 3_600_000), "a save keeps the deadline");

    clock.advance(HOUR / 2);
    assert!(store.touch(&id, HOUR).unwrap());
    assert_eq!(
        store.load(&id).unwrap().unwrap().version,
        v2,
        "a touch keeps the version"
    );
    clock.advance(HOUR * 3 / 4); // past the first deadline, before the touched one
    assert!(
        store.load(&id).unwrap().is_some(),
        "a touched session outlives its first deadline"
    );
    assert_eq!(store.count().unwrap(), 1);
    assert!(store.destroy(&id).unwrap());
    assert_eq!(store.load(&id).unwrap(), None);
    assert!(!store.destroy(&id).unwrap());
    assert!(!store.touch(&id, HOUR).unwrap());
    assert!(store.save(&id, b"x", v2).unwrap().unwrap_err().actual.is_none());
    assert_eq!(store.update(&id, |_| {}).unwrap(), None);
}

#[test]
fn expiry_holds_across_reopen_and_touches_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let short = store.create(b"short", HOUR).unwrap();
    let touched = store.create(b"touched", HOUR).unwrap();
    clock.advance(HOUR / 2);
    assert!(store.touch(&touched, 2 * HOUR).unwrap());
    drop(store);
    clock.advance(HOUR); // short has expired; touched has 1.5 h left
    let store = open(dir.path(), &clock);
    assert_eq!(
        store.load(&short).unwrap(),
        None,
        "an expired session is never returned"
    );
    assert!(!store.touch(&short, HOUR).unwrap(), "nor revived");
    assert_eq!(store.load(&touched).unwrap().unwrap().data, b"touched");
    store.db().checkpoint().unwrap();
    assert_eq!(store.count().unwrap(), 1);
    clock.advance(HOUR);
    assert_eq!(store.load(&touched).unwrap(), None, "the touched deadline holds");
    assert_eq!(store.purge_expired(), 1);
}

/// Threads load and save one session; every save names the version it loaded. Successes must
/// form a chain (each one's expected version is the previous success's new version): no
/// acknowledged save was overwritten by one that had not seen it.
#[test]
fn racing_saves_never_overwrite_a_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let id = store.create(b"0", HOUR).unwrap();
    let first = store.load(&id).unwrap().unwrap().version;
    let results = {
        let store = store.clone();
        race(8, move |t| {
            let mut wins = Vec::new();
            let mut conflicts = 0;
            for i in 0..100 {
                let s = store.load(&id).unwrap().unwrap();
                match store.save(&id, format!("{t}.{i}").as_bytes(), s.version).unwrap() {
                    Ok(v) => wins.push((s.version, v, format!("{t}.{i}"))),
                    Err(c) => {
                        assert_ne!(c.actual, Some(s.version), "a conflict has a newer version");
                        conflicts += 1;
                    }
                }
            }
            (wins, conflicts)
        })
    };
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for (w, c) in results {
        wins.extend(w);
        conflicts += c;
    }
    wins.sort();
    let mut expected = first;
    for (from, to, _) in &wins {
        assert_eq!(*from, expected, "a save succeeded over a version that was not current");
        expected = *to;
    }
    let last = store.load(&id).unwrap().unwrap();
    assert_eq!(last.version, expected);
    assert_eq!(
        last.data,
        wins.last().unwrap().2.as_bytes(),
        "the last acknowledged save is what is stored"
    );
    eprintln!("{} saves won, {conflicts} conflicts", wins.len());
}

#[test]
fn racing_updates_lose_no_increment() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let id = store.create(&0u64.to_le_bytes(), HOUR).unwrap();
    let store = store.with_options(SessionOptions::default());
    {
        let store = store.clone();
        race(8, move |_| {
            for _ in 0..100 {
                store
                    .update(&id, |d| {
                        let n = u64::from_le_bytes(d.as_slice().try_into().unwrap());
                        *d = (n + 1).to_le_bytes().to_vec();
                    })
                    .unwrap()
                    .expect("session exists");
            }
        });
    }
    let data = store.load(&id).unwrap().unwrap().data;
    assert_eq!(u64::from_le_bytes(data.try_into().unwrap()), 800);
}

#[test]
fn map_saves_merge_different_entries_and_conflict_on_the_same_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let mut m = SessionMap::new();
    m.insert("user", &42).unwrap();
    let id = store.create_map(&m, HOUR).unwrap();

    // Two requests load the same version; one sets the cart, the other the theme.
    let mut a = store.load_map(&id).unwrap().unwrap();
    let mut b = store.load_map(&id).unwrap().unwrap();
    a.map.insert("cart", &vec!["book"]).unwrap();
    b.map.insert("theme", &"dark").unwrap();
    store.save_map(&mut a).unwrap().unwrap();
    store.save_map(&mut b).unwrap().expect("different entries merge");
    let now = store.load_map(&id).unwrap().unwrap();
    assert_eq!(
        now.map.get::<Vec<String>>("cart").unwrap(),
        Some(vec!["book".to_string()])
    );
    assert_eq!(now.map.get::<String>("theme").unwrap().as_deref(), Some("dark"));
    assert_eq!(now.map.get::<u64>("user").unwrap(), Some(42));

    // Both change the same entry: the second conflicts and writes nothing.
    let mut a = store.load_map(&id).unwrap().unwrap();
    let mut b = store.load_map(&id).unwrap().unwrap();
    a.map.insert("theme", &"light").unwrap();
    b.map.insert("theme", &"blue").unwrap();
    b.map.insert("lang", &"fr").unwrap();
    store.save_map(&mut a).unwrap().unwrap();
    let c = store.save_map(&mut b).unwrap().unwrap_err();
    assert!(
        String::from_utf8_lossy(&c.key).ends_with("/theme"),
        "names the entry: {c:?}"
    );
    let now = store.load_map(&id).unwrap().unwrap();
    assert_eq!(now.map.get::<String>("theme").unwrap().as_deref(), Some("light"));
    assert_eq!(
        now.map.get::<String>("lang").unwrap(),
        None,
        "nothing of the conflicting save"
    );

    // A removal merges too.
    let mut a = store.load_map(&id).unwrap().unwrap();
    let mut b = store.load_map(&id).unwrap().unwrap();
    assert!(a.map.remove("cart"));
    b.map.insert("lang", &"de").unwrap();
    store.save_map(&mut a).unwrap().unwrap();
    store.save_map(&mut b).unwrap().unwrap();
    let now = store.load_map(&id).unwrap().unwrap();
    assert_eq!(now.map.names().collect::<Vec<_>>(), ["lang", "theme", "user"]);
}

/// Many threads each own one entry of the same map session and save it repeatedly from
/// possibly stale loads: every thread's last acknowledged value must be in the final map.
#[test]
fn racing_map_saves_to_different_entries_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let id = store.create_map(&SessionMap::new(), HOUR).unwrap();
    let lasts = {
        let store = store.clone();
        race(6, move |t| {
            let mut last = None;
            for i in 0..50u32 {
                let mut s = store.load_map(&id).unwrap().unwrap();
                s.map.insert(format!("t{t}"), &i).unwrap();
                store
                    .save_map(&mut s)
                    .unwrap()
                    .expect("entries of other threads never conflict");
                last = Some(i);
            }
            last
        })
    };
    let now = store.load_map(&id).unwrap().unwrap();
    for (t, last) in lasts.iter().enumerate() {
        assert_eq!(
            now.map.get::<u32>(&format!("t{t}")).unwrap(),
            *last,
            "thread {t}'s last save"
        );
    }
}

#[test]
fn regenerate_moves_the_session_atomically_under_concurrent_loads() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let old = store.create_for_user(b"alice", b"cart=3", HOUR).unwrap();
    let barrier = Arc::new(Barrier::new(5));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut saw_gone = false;
                for _ in 0..500 {
                    match store.load(&old).unwrap() {
                        Some(s) => {
                            assert!(!saw_gone, "the old id came back after it was gone");
                            assert_eq!(s.data, b"cart=3");
                        }
                        None => saw_gone = true,
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    let new = store.regenerate(&old).unwrap().expect("exists");
    for h in loaders {
        h.join().unwrap();
    }
    assert_ne!(new, old);
    assert_eq!(store.load(&old).unwrap(), None);
    let s = store.load(&new).unwrap().unwrap();
    assert_eq!(
        (s.data.as_slice(), s.user.as_deref()),
        (&b"cart=3"[..], Some(&b"alice"[..]))
    );
    assert_eq!(s.expires_at_ms, Some(T0 + 3_600_000), "the deadline moves with it");
    assert_eq!(store.sessions_of(b"alice").unwrap(), vec![new], "the index follows");
    assert_eq!(store.regenerate(&old).unwrap(), None);
}

/// An update racing a regenerate: it lands in the session that moves (it is carried to the new
/// id), or it finds the old id gone. Never lost silently.
#[test]
fn an_update_racing_regenerate_is_carried_or_reported() {
    let (seed, _guard) = seeded("an_update_racing_regenerate_is_carried_or_reported");
    let mut rng = Rng::new(seed);
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let store = fast_store(dir.path());
        let old = store.create(&0u64.to_le_bytes(), HOUR).unwrap();
        let updates = rng.range(1, 50);
        let updater = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut acked = 0u64;
                for _ in 0..updates {
                    let r = store.update(&old, |d| {
                        let n = u64::from_le_bytes(d.as_slice().try_into().unwrap());
                        *d = (n + 1).to_le_bytes().to_vec();
                    });
                    match r.unwrap() {
                        Some(_) => acked += 1,
                        None => break,
                    }
                }
                acked
            })
        };
        let new = store.regenerate(&old).unwrap().expect("exists");
        let acked = updater.join().unwrap();
        let n = u64::from_le_bytes(store.load(&new).unwrap().unwrap().data.try_into().unwrap());
        assert_eq!(n, acked, "every acknowledged update is in the regenerated session");
    }
}

/// `destroy_all_of` removes a user's sessions in batches that fit the store's `batch_size_max`
/// (16 KiB here): it wrote 256 sessions (512 deletes) a batch whatever the limit, and a user with
/// that many sessions could not be logged out everywhere (`TooLarge`, found by the test below
/// once its store became the small one).
#[test]
fn destroy_all_of_fits_its_batches_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let user = vec![b'u'; 100];
    for _ in 0..600 {
        store.create_for_user(&user, b"", HOUR).unwrap();
    }
    assert_eq!(store.destroy_all_of(&user).unwrap(), 600);
    assert_eq!(store.sessions_of(&user).unwrap(), Vec::<SessionId>::new());
    assert_eq!(store.count().unwrap(), 0);
}

#[test]
fn destroy_all_of_a_user_keeps_the_index_and_sessions_in_step_under_concurrent_creates() {
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path());
    let before: Vec<SessionId> = (0..50)
        .map(|_| store.create_for_user(b"bob", b"", HOUR).unwrap())
        .collect();
    let other = store.create_for_user(b"carol", b"", HOUR).unwrap();
    let creators: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|_| store.create_for_user(b"bob", b"", HOUR).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let removed = store.destroy_all_of(b"bob").unwrap();
    let created: Vec<SessionId> = creators.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(removed >= 50);
    for id in &before {
        assert_eq!(store.load(id).unwrap(), None, "a session from before is gone");
    }
    // Index and sessions agree: every indexed id is a live session of bob, and every live
    // session of bob is indexed.
    let indexed: BTreeSet<SessionId> = store.sessions_of(b"bob").unwrap().into_iter().collect();
    for id in &indexed {
        let s = store.load(id).unwrap().expect("an index entry without its session");
        assert_eq!(s.user.as_deref(), Some(&b"bob"[..]));
    }
    for id in created.iter().chain(&before) {
        assert_eq!(
            store.load(id).unwrap().is_some(),
            indexed.contains(id),
            "session without index entry"
        );
    }
    assert_eq!(
        created.iter().filter(|id| indexed.contains(id)).count() as u64 + removed,
        350
    );
    assert_eq!(
        store.sessions_of(b"carol").unwrap(),
        vec![other],
        "other users untouched"
    );
}

#[test]
fn typed_sessions_and_limits() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cart {
        user: u64,
        items: Vec<String>,
    }
    let dir = tempfile::tempdir().unwrap();
    let store = fast_store(dir.path()).with_options(SessionOptions::default().max_session_bytes(100));
    let id = store.create_as(&Cart { user: 7, items: vec![] }, HOUR).unwrap();
    let (mut cart, v) = store.load_as::<Cart>(&id).unwrap().unwrap();
    cart.items.push("pen".into());
    store.save_as(&id, &cart, v).unwrap().unwrap();
    assert_eq!(store.load_as::<Cart>(&id).unwrap().unwrap().0, cart);
    assert!(matches!(store.load_as::<Vec<u8>>(&id), Err(Error::SessionData(_))));
    let big = vec![0u8; 101];
    assert!(matches!(
        store.create(&big, HOUR),
        Err(Error::TooLarge {
            what: "session",
            size: 101,
            max: 100
        })
    ));
    let v = store.load(&id).unwrap().unwrap().version;
    assert!(matches!(store.save(&id, &big, v), Err(Error::TooLarge { .. })));
}

#[test]
fn framework_writes_create_with_id_set_and_replace() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock);
    let id = store.create_for_user(b"ada", b"v1", HOUR).unwrap();

    assert!(
        !store.create_with_id(&id, b"intruder", HOUR).unwrap(),
        "a taken id is refused"
    );
    assert_eq!(store.load(&id).unwrap().unwrap().data, b"v1", "and left alone");
    let fresh = SessionId::generate().unwrap();
    assert_eq!(
        store.replace(&fresh, b"x", HOUR).unwrap(),
        None,
        "replace needs a session"
    );
    assert!(store.load(&fresh).unwrap().is_none());
    assert!(store.create_with_id(&fresh, b"mine", HOUR).unwrap());

    // set: last writer wins whatever the version, a new deadline, the user kept and indexed.
    clock.advance(Duration::from_secs(1800));
    let v = store.set(&id, b"v2", HOUR).unwrap();
    let s = store.load(&id).unwrap().unwrap();
    assert_eq!((s.data.as_slice(), s.version), (&b"v2"[..], v));
    assert_eq!(s.user.as_deref(), Some(&b"ada"[..]));
    assert_eq!(s.expires_at_ms, Some(T0 + 1_800_000 + 3_600_000));
    clock.advance(Duration::from_secs(3000)); // past the first deadline, before the new one
    assert_eq!(
        store.sessions_of(b"ada").unwrap(),
        vec![id],
        "the index entry moved with it"
    );
    assert!(store.replace(&id, b"v3", HOUR).unwrap().is_some());
    // set creates a session that does not exist.
    let other = SessionId::generate().unwrap();
    store.set(&other, b"new", HOUR).unwrap();
    assert_eq!(store.load(&other).unwrap().unwrap().data, b"new");
}
