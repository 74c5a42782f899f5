//! Session payloads that change shape between releases of an application.
//!
//! Scenario: release 1 of an application keeps `Cart { items }` in its sessions; release 2
//! reopens the same store with payload version 2 and a migration to `Cart { lines }`; release 1
//! is then started again on what release 2 saved. Around it: records written before payload
//! versions existed (record version 1, the golden bytes of docs/format.md section 10), chains
//! of several steps, missing and failing steps, map sessions, the web-framework adapters, and
//! `migrate_all` racing threads that keep saving.
//! Method: `SessionStore`s over real stores with a `ManualClock`; the stored bytes are read
//! back raw and decoded with `internals::format` to see the payload version each save wrote.
//! Threads run without sleeps; every wait has a deadline (`support::joined`). The randomised
//! test takes its seed from `SESSIONDB_SEED` and prints it on failure.
//! Invariants: a load returns data at the application's payload version and names the one it
//! was stored at; a save writes the current version; a session saved by a newer release is an
//! error, never returned and never overwritten; a missing or failing step is an error naming
//! the step, and writes nothing; `migrate_all` brings every session to the current version
//! without losing a save acknowledged while it ran.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sessiondb::internals::format::{decode_session_record, session_key};
use sessiondb::session::{Migrations, SessionId, SessionMap, SessionStore};
use sessiondb::{Error, ManualClock};
use support::{joined, seeded, wait_until, Rng};

const T0: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

/// Release 1's session type.
mod release1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Cart {
        pub items: Vec<String>,
    }
}

/// Release 2's: the items became lines with a quantity.
mod release2 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Line {
        pub sku: String,
        pub qty: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Cart {
        pub lines: Vec<Line>,
    }
}

/// Release 2's migrations: each item becomes a line of quantity 1.
fn release2_migrations() -> Migrations {
    Migrations::new()
        .payload_version(2)
        .migrate_as(1, |old: release1::Cart| {
            Ok(release2::Cart {
                lines: old
                    .items
                    .into_iter()
                    .map(|sku| release2::Line { sku, qty: 1 })
                    .collect(),
            })
        })
}

fn open(dir: &Path) -> SessionStore {
    support::manual_session_store(dir, &ManualClock::new(T0))
}

fn open_with(dir: &Path, migrations: Migrations) -> SessionStore {
    open(dir).with_migrations(migrations).expect("valid migrations")
}

/// The raw record of session `id`.
fn raw(store: &SessionStore, id: &SessionId) -> Vec<u8> {
    store.db().get(session_key(id.as_bytes())).unwrap().expect("stored")
}

/// The record version byte and payload version of session `id` as stored.
fn stored_versions(store: &SessionStore, id: &SessionId) -> (u8, u32) {
    let r = raw(store, id);
    (r[0], decode_session_record(&r).unwrap().payload_version)
}

fn lines(skus: &[(&str, u32)]) -> release2::Cart {
    release2::Cart {
        lines: skus
            .iter()
            .map(|(sku, qty)| release2::Line {
                sku: sku.to_string(),
                qty: *qty,
            })
            .collect(),
    }
}

#[test]
fn a_typed_cart_changes_shape_across_two_releases() {
    let dir = tempfile::tempdir().unwrap();

    // Release 1: no migrations, payload version 1.
    let (id, idle) = {
        let r1 = open(dir.path());
        assert_eq!(r1.payload_version(), 1);
        let id = r1
            .create_as(
                &release1::Cart {
                    items: vec!["apple".into()],
                },
                HOUR,
            )
            .unwrap();
        let (mut cart, v) = r1.load_as::<release1::Cart>(&id).unwrap().unwrap();
        cart.items.push("pear".into());
        r1.save_as(&id, &cart, v).unwrap().expect("saved");
        let idle = r1
            .create_as(
                &release1::Cart {
                    items: vec!["fig".into()],
                },
                HOUR,
            )
            .unwrap();
        assert_eq!(stored_versions(&r1, &id), (2, 1), "record version 2, payload version 1");
        (id, idle)
    };

    // Release 2 reads release 1's carts as its own, migrated on load; a save writes version 2.
    {
        let r2 = open_with(dir.path(), release2_migrations());
        let s = r2.load(&id).unwrap().unwrap();
        assert_eq!(s.stored_payload_version, 1, "stored by release 1");
        let (mut cart, v) = r2.load_as::<release2::Cart>(&id).unwrap().unwrap();
        assert_eq!(cart, lines(&[("apple", 1), ("pear", 1)]));
        assert_eq!(stored_versions(&r2, &id), (2, 1), "a load writes nothing");
        cart.lines[0].qty = 3;
        r2.save_as(&id, &cart, v).unwrap().expect("saved");
        assert_eq!(stored_versions(&r2, &id), (2, 2), "the save wrote payload version 2");
        let s = r2.load(&id).unwrap().unwrap();
        assert_eq!(s.stored_payload_version, 2);
        assert_eq!(
            serde_json::from_slice::<release2::Cart>(&s.data).unwrap(),
            lines(&[("apple", 3), ("pear", 1)])
        );
        // The session nobody saved stays as release 1 left it (migrations are lazy).
        assert_eq!(stored_versions(&r2, &idle), (2, 1));
    }

    // Release 1 again: the migrated session is newer than it knows; an error, not a loss.
    let r1 = open(dir.path());
    let before = raw(&r1, &id);
    let err = r1.load(&id).unwrap_err();
    assert!(
        matches!(err, Error::SessionPayloadTooNew { found: 2, known: 1 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer") && msg.contains('2') && msg.contains('1'), "{msg}");
    assert!(matches!(
        r1.load_as::<release1::Cart>(&id),
        Err(Error::SessionPayloadTooNew { .. })
    ));
    let version = r1.db().get_with_version(session_key(id.as_bytes())).unwrap().unwrap().1;
    let stale = release1::Cart { items: vec![] };
    assert!(matches!(
        r1.save_as(&id, &stale, version),
        Err(Error::SessionPayloadTooNew { .. })
    ));
    assert!(matches!(
        r1.set(&id, b"{\"items\":[]}", HOUR),
        Err(Error::SessionPayloadTooNew { .. })
    ));
    assert!(matches!(
        r1.update(&id, |d| d.clear()),
        Err(Error::SessionPayloadTooNew { .. })
    ));
    assert_eq!(raw(&r1, &id), before, "nothing overwrote release 2's save");
    // Release 1 still reads the session that stayed at version 1.
    let (cart, _) = r1.load_as::<release1::Cart>(&idle).unwrap().unwrap();
    assert_eq!(cart.items, ["fig"]);
}

/// A record version 1 value, as builds before payload versions wrote it (docs/format.md,
/// section 10): version byte 1, then user and data.
fn v1_record(user: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    match user {
        None => out.push(0),
        Some(u) => {
            out.push(1);
            out.extend_from_slice(&(u.len() as u64).to_le_bytes());
            out.extend_from_slice(u);
        }
    }
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Puts a raw record under a fresh session id, as an older build would have left it.
fn put_raw(store: &SessionStore, record: &[u8]) -> SessionId {
    let id = SessionId::generate().unwrap();
    store
        .db()
        .put_with_ttl(session_key(id.as_bytes()), record, HOUR)
        .unwrap();
    id
}

#[test]
fn record_version_1_values_load_as_payload_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let golden = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/session_record.bin")).unwrap();
    assert_eq!(
        golden,
        v1_record(Some(b"ada"), br#"{"n":1}"#),
        "the helper writes what old builds did"
    );
    let (id, map_id) = {
        let plain = open(dir.path());
        let id = put_raw(&plain, &golden);
        let s = plain.load(&id).unwrap().unwrap();
        assert_eq!(s.stored_payload_version, 1);
        assert_eq!(s.data, br#"{"n":1}"#);
        assert_eq!(s.user.as_deref(), Some(&b"ada"[..]));
        // A map session from before payload versions.
        let mut m = SessionMap::new();
        m.insert("cart", &3).unwrap();
        let fresh = plain.create_map(&m, HOUR).unwrap();
        let map_data = plain.load(&fresh).unwrap().unwrap().data;
        let map_id = put_raw(&plain, &v1_record(None, &map_data));
        assert_eq!(
            plain
                .load_map(&map_id)
                .unwrap()
                .unwrap()
                .map
                .get::<u32>("cart")
                .unwrap(),
            Some(3)
        );
        (id, map_id)
    };

    // Version 2 renames "n" to "count" and the map entry "cart" to "items", both over JSON.
    let store = open_with(
        dir.path(),
        Migrations::new().payload_version(2).migrate_json(1, |mut v| {
            let obj = v.as_object_mut().ok_or("not an object")?;
            if let Some(n) = obj.remove("n") {
                obj.insert("count".into(), n);
            }
            if let Some(c) = obj.remove("cart") {
                obj.insert("items".into(), c);
            }
            Ok(v)
        }),
    );
    let s = store.load(&id).unwrap().unwrap();
    assert_eq!(
        (s.stored_payload_version, s.data.as_slice()),
        (1, &br#"{"count":1}"#[..])
    );
    store.save(&id, &s.data, s.version).unwrap().unwrap();
    assert_eq!(
        stored_versions(&store, &id),
        (2, 2),
        "the save rewrote it as record version 2"
    );
    let again = store.load(&id).unwrap().unwrap();
    assert_eq!(again.user.as_deref(), Some(&b"ada"[..]), "the user is kept");
    assert_eq!(again.stored_payload_version, 2);

    let mut ms = store.load_map(&map_id).unwrap().unwrap();
    assert_eq!(ms.stored_payload_version(), 1);
    assert_eq!(ms.map.get::<u32>("items").unwrap(), Some(3));
    assert_eq!(ms.map.get::<u32>("cart").unwrap(), None);
    ms.map.insert("theme", &"dark").unwrap();
    store.save_map(&mut ms).unwrap().unwrap();
    assert_eq!(ms.stored_payload_version(), 2);
    assert_eq!(stored_versions(&store, &map_id), (2, 2));
    let ms = store.load_map(&map_id).unwrap().unwrap();
    assert_eq!(ms.map.names().collect::<Vec<_>>(), ["items", "theme"]);
}

#[test]
fn migrations_run_over_several_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v1 = store.create(b"alice", HOUR).unwrap();
    let v2 = open_with_db(
        &store,
        Migrations::new()
            .payload_version(2)
            .migrate(1, |_| Err("unused".into())),
    )
    .create(b"BOB", HOUR)
    .unwrap();
    assert_eq!(stored_versions(&store, &v2), (2, 2));

    // 1 → 2: upper case; 2 → 3: wrap in JSON.
    let three = || {
        Migrations::new()
            .payload_version(3)
            .migrate(1, |d| Ok(d.to_ascii_uppercase()))
            .migrate(2, |d| {
                let name = String::from_utf8(d).map_err(|e| e.to_string())?;
                Ok(serde_json::to_vec(&serde_json::json!({ "name": name })).unwrap())
            })
    };
    let s3 = open_with_db(&store, three());
    let a = s3.load(&v1).unwrap().unwrap();
    assert_eq!(
        (a.stored_payload_version, a.data.as_slice()),
        (1, &br#"{"name":"ALICE"}"#[..])
    );
    let b = s3.load(&v2).unwrap().unwrap();
    assert_eq!(
        (b.stored_payload_version, b.data.as_slice()),
        (2, &br#"{"name":"BOB"}"#[..])
    );
    s3.update(&v1, |_| {}).unwrap().unwrap();
    assert_eq!(stored_versions(&s3, &v1), (2, 3), "update saves at the current version");

    // What configuration can tell: a gap in the chain, steps past the current version, twice
    // the same step, version 0.
    let gap = Migrations::new().payload_version(4).migrate(1, Ok).migrate(3, Ok);
    let err = store.clone().with_migrations(gap).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionMigrationMissing {
                from: 2,
                to: 3,
                current: 4
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("from payload version 2 to 3"), "{err}");
    for bad in [
        Migrations::new().payload_version(2).migrate(2, Ok),
        Migrations::new().payload_version(2).migrate(0, Ok),
        Migrations::new().payload_version(0),
        Migrations::new().payload_version(3).migrate(2, Ok).migrate(2, Ok),
    ] {
        let shown = format!("{bad:?}");
        assert!(
            matches!(store.clone().with_migrations(bad), Err(Error::InvalidOptions(_))),
            "{shown}"
        );
    }
    // What only a load can tell: no step from the oldest version a session is at.
    let partial = open_with_db(&store, Migrations::new().payload_version(3).migrate(2, Ok));
    let untouched = store.create(b"carol", HOUR).unwrap();
    let err = partial.load(&untouched).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionMigrationMissing {
                from: 1,
                to: 2,
                current: 3
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no session migration from payload version 1 to 2"),
        "{err}"
    );
    assert_eq!(stored_versions(&store, &untouched), (2, 1), "nothing written");
}

/// Another `SessionStore` over the same open store, with `migrations`.
fn open_with_db(store: &SessionStore, migrations: Migrations) -> SessionStore {
    SessionStore::new(store.db().clone())
        .with_migrations(migrations)
        .expect("valid migrations")
}

#[test]
fn a_failing_migration_names_its_step_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bad = store.create(br#"{"items":["x",7]}"#, HOUR).unwrap();
    let good = store.create(br#"{"items":["y"]}"#, HOUR).unwrap();
    let before = raw(&store, &bad);
    let r2 = open_with_db(&store, release2_migrations());
    let err = r2.load(&bad).unwrap_err();
    let Error::SessionMigrationFailed { from: 1, to: 2, reason } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("reading the old data"), "{reason}");
    assert!(err.to_string().contains("from payload version 1 to 2 failed"), "{err}");
    assert_eq!(raw(&store, &bad), before);

    let report = r2.migrate_all().unwrap();
    assert_eq!(report.found, BTreeMap::from([(1, 2)]));
    assert_eq!((report.migrated, report.failed, report.already_current), (1, 1, 0));
    assert_eq!(report.failures.len(), 1);
    assert!(
        report.failures[0].contains("from payload version 1 to 2"),
        "{:?}",
        report.failures
    );
    assert_eq!(raw(&store, &bad), before, "a failed session is left as it was");
    assert_eq!(stored_versions(&store, &good), (2, 2));
    let (cart, _) = r2.load_as::<release2::Cart>(&good).unwrap().unwrap();
    assert_eq!(cart, lines(&[("y", 1)]));
}

/// The data a writer thread leaves: release 2's cart, one line per acknowledged update.
fn add_line(data: &mut Vec<u8>, sku: &str) {
    let mut cart: release2::Cart = serde_json::from_slice(data).expect("release 2's shape");
    cart.lines.push(release2::Line {
        sku: sku.to_string(),
        qty: 1,
    });
    *data = serde_json::to_vec(&cart).unwrap();
}

#[test]
fn migrate_all_with_concurrent_writers_loses_nothing() {
    let (seed, _guard) = seeded("migrate_all_with_concurrent_writers_loses_nothing");
    const SESSIONS: usize = 300;
    const WRITERS: usize = 2;
    const UPDATES_MIN: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let r1 = open(dir.path());
    let ids: Arc<Vec<SessionId>> = Arc::new(
        (0..SESSIONS)
            .map(|i| {
                r1.create_as(
                    &release1::Cart {
                        items: vec![format!("s{i}")],
                    },
                    HOUR,
                )
                .unwrap()
            })
            .collect(),
    );
    let r2 = open_with_db(&r1, release2_migrations());
    drop(r1);

    // Writers update random sessions through release 2 (load migrates, save writes version 2)
    // until the bulk migration is over and they have made UPDATES_MIN updates each.
    let done = Arc::new(AtomicBool::new(false));
    let updates = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (store, ids, done, updates) = (r2.clone(), ids.clone(), done.clone(), updates.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64 + 1));
                let mut acked: Vec<(usize, String)> = Vec::new();
                let mut i = 0;
                while i < UPDATES_MIN || !done.load(Ordering::Acquire) {
                    let s = rng.below(SESSIONS as u64) as usize;
                    let sku = format!("w{t}-{i}");
                    let v = store.update(&ids[s], |d| add_line(d, &sku)).unwrap();
                    assert!(v.is_some(), "session {s} is live");
                    acked.push((s, sku));
                    updates.fetch_add(1, Ordering::Release);
                    i += 1;
                }
                acked
            })
        })
        .collect();
    // The bulk migration starts while both writers are at work.
    wait_until("the writers' first updates", || {
        updates.load(Ordering::Acquire) >= 2 * WRITERS
    });
    let report = r2.migrate_all().unwrap();
    done.store(true, Ordering::Release);
    let acked: Vec<(usize, String)> = writers.into_iter().flat_map(|w| joined("a writer thread", w)).collect();

    assert_eq!(report.payload_version, 2);
    assert_eq!(report.found.values().sum::<u64>(), SESSIONS as u64);
    assert_eq!(
        report.migrated + report.already_current + report.newer + report.failed + report.gone,
        SESSIONS as u64,
        "{report:?}"
    );
    assert_eq!((report.failed, report.newer, report.gone), (0, 0, 0), "{report:?}");
    let mut expected: Vec<Vec<String>> = (0..SESSIONS).map(|i| vec![format!("s{i}")]).collect();
    for (s, sku) in acked {
        expected[s].push(sku);
    }
    // What every session must hold: its first item, and each acknowledged line.
    let reopened = open_with_db(&r2, release2_migrations());
    for (s, want) in expected.iter().enumerate() {
        let (cart, _) = reopened.load_as::<release2::Cart>(&ids[s]).unwrap().unwrap();
        let got: Vec<String> = cart.lines.iter().map(|l| l.sku.clone()).collect();
        // Writers interleave; each writer's lines keep its order.
        for t in 0..WRITERS {
            let of = |v: &[String]| -> Vec<String> {
                v.iter().filter(|k| k.starts_with(&format!("w{t}-"))).cloned().collect()
            };
            assert_eq!(of(&got), of(want), "session {s}, writer {t}");
        }
        let (mut a, mut b) = (got.clone(), want.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "session {s}: every acknowledged line, nothing else");
        assert_eq!(got[0], want[0], "session {s}: release 1's item first");
        assert_eq!(
            stored_versions(&reopened, &ids[s]),
            (2, 2),
            "session {s} is at version 2"
        );
    }
    let again = r2.migrate_all().unwrap();
    assert_eq!((again.migrated, again.already_current), (0, SESSIONS as u64));
}

// ---------------------------------------------------------------------------------------------
// The adapters go through the same path.

/// Version 2 of an adapter's session data: the entry "n" is called "visits".
fn rename_n() -> Migrations {
    Migrations::new().payload_version(2).migrate_json(1, |mut v| {
        let obj = v.as_object_mut().ok_or("not an object")?;
        let n = obj.remove("n").ok_or("no n")?;
        obj.insert("visits".into(), n);
        Ok(v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_loads_a_version_1_session_through_a_migration() {
    use sessiondb::session::tower::TowerStore;
    use tower_sessions_core::session::Id;
    use tower_sessions_core::SessionStore as _;

    let dir = tempfile::tempdir().unwrap();
    let plain = open(dir.path());
    let id = put_raw(&plain, &v1_record(None, br#"{"n":4}"#));
    let tower = TowerStore::new(open_with_db(&plain, rename_n()));
    let tid = Id(i128::from_le_bytes(*id.as_bytes()));
    let mut rec = tower.load(&tid).await.unwrap().expect("loads");
    assert_eq!(rec.data.get("visits"), Some(&serde_json::json!(4)));
    assert_eq!(rec.data.get("n"), None);
    rec.data.insert("visits".into(), serde_json::json!(5));
    tower.save(&rec).await.unwrap();
    assert_eq!(
        stored_versions(&plain, &id),
        (2, 2),
        "the adapter's save writes version 2"
    );
    // Release 1 behind the adapter refuses the newer session instead of reading it as empty.
    let old = TowerStore::new(open_with_db(&plain, Migrations::new()));
    let err = old.load(&tid).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(old.save(&rec).await.is_err(), "nor overwrites it");
    assert_eq!(stored_versions(&plain, &id), (2, 2));
}

#[actix_web::test]
async fn actix_loads_a_version_1_session_through_a_migration() {
    use actix_session::storage::{SessionKey, SessionStore as _};
    use sessiondb::session::actix::ActixStore;

    let dir = tempfile::tempdir().unwrap();
    let plain = open(dir.path());
    // actix-session keeps each value as a JSON string.
    let id = put_raw(&plain, &v1_record(None, br#"{"n":"4"}"#));
    let actix = ActixStore::new(open_with_db(&plain, rename_n()));
    let key = SessionKey::try_from(id.to_string()).unwrap();
    let state = actix.load(&key).await.unwrap().expect("loads");
    assert_eq!(state, HashMap::from([("visits".to_string(), "4".to_string())]));
    let minute = time::Duration::minutes(1);
    let key = actix.update(key, state, &minute).await.unwrap();
    assert_eq!(key.as_ref(), id.to_string(), "the same session, updated in place");
    assert_eq!(stored_versions(&plain, &id), (2, 2));
    let old = ActixStore::new(open_with_db(&plain, Migrations::new()));
    assert!(old.load(&key).await.is_err(), "release 1 refuses it");
}
