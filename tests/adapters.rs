//! The web-framework adapters, through each framework's own trait (and actix-session's
//! middleware): tower-sessions 0.15 and actix-session 0.11.
//!
//! Scenario: `TowerStore` / `ActixStore` over a real store with a `ManualClock`, called as the
//! frameworks call them. Invariants: a record round-trips (data and deadline); `create` never
//! overwrites a live session, drawing another id; nothing expired is loaded; a record saved
//! already expired removes the session; `update_ttl` slides the deadline; an `update` of a
//! session that is gone creates a new one under a fresh key; malformed keys load as nothing;
//! no adapter call waits for an fsync on the async executor's thread.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use actix_session::storage::{SessionKey, SessionStore as _};
use sessiondb::session::actix::ActixStore;
use sessiondb::session::tower::TowerStore;
use sessiondb::session::{SessionId, SessionStore};
use sessiondb::ManualClock;
use support::OptionsExt;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::{ExpiredDeletion, SessionStore as _};

const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn open(dir: &Path, clock: &ManualClock) -> SessionStore {
    support::manual_session_store(dir, clock)
}

fn at(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("in range")
}

fn record(id: Id, n: u64, expiry_ms: u64) -> Record {
    let mut data = HashMap::new();
    data.insert("n".to_string(), serde_json::json!(n));
    data.insert("name".to_string(), serde_json::json!({"first": "Ada", "tags": [1, 2]}));
    Record {
        id,
        data,
        expiry_date: at(expiry_ms),
    }
}

fn tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_round_trip_save_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = TowerStore::new(open(dir.path(), &clock));

    let mut rec = record(Id::default(), 1, T0 + HOUR_MS);
    store.create(&mut rec).await.unwrap();
    let loaded = store.load(&rec.id).await.unwrap().expect("created session loads");
    assert_eq!(loaded, rec, "data, id and deadline round-trip");

    let rec2 = record(rec.id, 2, T0 + 2 * HOUR_MS);
    store.save(&rec2).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec2.clone()), "save replaces");
    // The same session through the engine's API: same id string, JSON data.
    let sid: SessionId = rec.id.to_string().parse().expect("tower ids are SessionIds");
    let s = store.sessions().load(&sid).unwrap().expect("visible to SessionStore");
    assert_eq!(s.expires_at_ms, Some(T0 + 2 * HOUR_MS));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&s.data).unwrap()["n"], 2);

    store.delete(&rec.id).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), None, "deleted");
    // Saving a session that is gone creates it again (the framework's contract for save).
    store.save(&rec2).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_create_never_overwrites_a_live_session() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let sessions = open(dir.path(), &clock);
    let taken = sessions
        .create(b"{\"owner\":\"first\"}", Duration::from_secs(3600))
        .unwrap();
    let store = TowerStore::new(sessions.clone());

    // The framework proposes an id that is taken: the store must pick another.
    let mut rec = record(tower_id(&taken), 7, T0 + HOUR_MS);
    store.create(&mut rec).await.unwrap();
    assert_ne!(rec.id, tower_id(&taken), "create moved the record to a fresh id");
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec.clone()));
    let first = sessions
        .load(&taken)
        .unwrap()
        .expect("the first session is still there");
    assert_eq!(first.data, b"{\"owner\":\"first\"}", "and unchanged");
    assert_eq!(sessions.count().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_never_loads_expired_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = TowerStore::new(open(dir.path(), &clock));

    let mut short = record(Id::default(), 1, T0 + 1_000);
    let mut long = record(Id::default(), 2, T0 + HOUR_MS);
    store.create(&mut short).await.unwrap();
    store.create(&mut long).await.unwrap();
    clock.advance(Duration::from_millis(999));
    assert!(
        store.load(&short.id).await.unwrap().is_some(),
        "live until its deadline"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.load(&short.id).await.unwrap(), None, "expired at its deadline");

    // A record saved with its expiry already past removes the session.
    let past = record(long.id, 3, T0);
    store.save(&past).await.unwrap();
    assert_eq!(store.load(&long.id).await.unwrap(), None);
    // And one created already expired is never visible.
    let mut dead = record(Id::default(), 4, T0 - 1);
    store.create(&mut dead).await.unwrap();
    assert_eq!(store.load(&dead.id).await.unwrap(), None);

    store.delete_expired().await.unwrap();
    assert_eq!(store.sessions().count().unwrap(), 0);
}

/// `SessionKey` is not `Clone`; the framework hands each call its own.
fn copy(key: &SessionKey) -> SessionKey {
    SessionKey::try_from(key.as_ref().to_string()).unwrap()
}

fn state(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_save_update_ttl_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = ActixStore::new(open(dir.path(), &clock));
    let minute = time::Duration::minutes(1);

    let key = store.save(state(&[("user", "\"ada\"")]), &minute).await.unwrap();
    assert!(key.as_ref().parse::<SessionId>().is_ok(), "keys are session ids");
    assert_eq!(store.load(&key).await.unwrap(), Some(state(&[("user", "\"ada\"")])));

    let same = store
        .update(copy(&key), state(&[("user", "\"ada\""), ("cart", "3")]), &minute)
        .await
        .unwrap();
    assert_eq!(same.as_ref(), key.as_ref(), "an update of a live session keeps its key");
    assert_eq!(store.load(&key).await.unwrap().unwrap().len(), 2);

    // Sliding expiry: after 50 s, extend by a minute; at 100 s it is still live.
    clock.advance(Duration::from_secs(50));
    store.update_ttl(&key, &minute).await.unwrap();
    clock.advance(Duration::from_secs(50));
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "update_ttl moved the deadline"
    );
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        store.load(&key).await.unwrap(),
        None,
        "expired a minute after the touch"
    );

    // Updating a session that is gone creates a new one under a fresh key.
    let fresh = store.update(copy(&key), state(&[("a", "1")]), &minute).await.unwrap();
    assert_ne!(fresh.as_ref(), key.as_ref());
    assert_eq!(store.load(&fresh).await.unwrap(), Some(state(&[("a", "1")])));

    store.delete(&fresh).await.unwrap();
    assert_eq!(store.load(&fresh).await.unwrap(), None);

    // Keys that are not ids load as nothing; deleting or touching them is a no-op.
    let bogus = SessionKey::try_from("not-a-session-id".to_string()).unwrap();
    assert_eq!(store.load(&bogus).await.unwrap(), None);
    store.update_ttl(&bogus, &minute).await.unwrap();
    store.delete(&bogus).await.unwrap();
    // A negative time-to-live is refused (it once stored a session that never loads):
    // `actix_refuses_a_ttl_that_is_not_positive`.
    assert!(store.save(state(&[]), &time::Duration::seconds(-5)).await.is_err());
}

async fn count_visits(session: actix_session::Session) -> actix_web::Result<String> {
    let n = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", n)?;
    Ok(n.to_string())
}

#[actix_web::test]
async fn actix_middleware_keeps_a_counter_in_the_store() {
    use actix_web::{test, web, App};

    let dir = tempfile::tempdir().unwrap();
    let store = ActixStore::new(SessionStore::open(dir.path()).unwrap());
    let sessions = store.sessions().clone();
    let key = actix_web::cookie::Key::generate();
    let app = test::init_service(
        App::new()
            .wrap(actix_session::SessionMiddleware::new(store, key))
            .route("/", web::get().to(count_visits)),
    )
    .await;

    let resp = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
    let cookie = resp.response().cookies().next().expect("a session cookie").into_owned();
    assert_eq!(test::read_body(resp).await, "1");
    for expected in ["2", "3"] {
        let req = test::TestRequest::get().uri("/").cookie(cookie.clone()).to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(test::read_body(resp).await, expected);
    }
    assert_eq!(sessions.count().unwrap(), 1, "one visitor, one session in the store");
}

/// Polls `f` once (with this task's waker): whether it is still pending.
async fn polled_once<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx).is_pending())).await
}

/// On a current-thread runtime the executor is this thread: with every fsync held at the
/// simulated storage's gate, each adapter's save, update, create and delete is polled once and
/// must return at once (`Pending`: its write waits as a task, led by the store's commit thread),
/// and a load must answer there and then. A watchdog releases the gate after the deadline, so a
/// call that waited for the fsync on this thread fails the test instead of hanging it.
#[tokio::test(flavor = "current_thread")]
async fn adapters_never_wait_for_an_fsync_on_the_executor_thread() {
    let sim = sessiondb::internals::sim::SimStorage::new(9);
    let opts = support::small_options()
        .quiet()
        .sim(&sim)
        .sync_mode(sessiondb::SyncMode::Always);
    let sessions = SessionStore::new(sessiondb::Db::open_with("/sessions", opts).unwrap());
    let tower = TowerStore::new(sessions.clone());
    let actix = ActixStore::new(sessions.clone());
    let minute = time::Duration::minutes(1);
    let now = sessions.db().now_ms();
    let mut rec = record(Id::default(), 1, now + HOUR_MS);
    tower.create(&mut rec).await.unwrap();
    let key = actix.save(state(&[("a", "1")]), &minute).await.unwrap();

    sim.hold_syncs(true);
    let watchdog = support::wait::GateWatchdog::start(&sim);
    let rec2 = record(rec.id, 2, now + HOUR_MS);
    let mut save = std::pin::pin!(async { tower.save(&rec2).await.unwrap() });
    assert!(
        polled_once(save.as_mut()).await,
        "tower save waited for its fsync on the executor"
    );
    let mut update = std::pin::pin!(async {
        let same = SessionKey::try_from(key.as_ref().to_string()).unwrap();
        actix.update(same, state(&[("a", "2")]), &minute).await.unwrap();
    });
    assert!(
        polled_once(update.as_mut()).await,
        "actix update waited for its fsync on the executor"
    );
    let mut fresh = record(Id::default(), 3, now + HOUR_MS);
    let mut create = std::pin::pin!(async { tower.create(&mut fresh).await.unwrap() });
    assert!(
        polled_once(create.as_mut()).await,
        "tower create waited for its fsync on the executor"
    );
    // A load answers at once, with what was durable before the held fsync.
    let loaded = tower.load(&rec.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["n"], serde_json::json!(1));
    watchdog.done();
    assert!(sim.syncs_waiting() >= 1, "no fsync was held");
    assert_eq!(
        sessions.db().stats().writers_waiting,
        0,
        "a thread waits for an adapter's write"
    );
    sim.hold_syncs(false);
    save.await;
    update.await;
    create.await;
    assert_eq!(
        tower.load(&rec.id).await.unwrap().unwrap().data["n"],
        serde_json::json!(2)
    );
    assert_eq!(actix.load(&key).await.unwrap().unwrap()["a"], "2");
    actix.delete(&key).await.unwrap();
    tower.delete(&rec.id).await.unwrap();
    assert!(tower.load(&rec.id).await.unwrap().is_none());
}

/// Issue 17, point 4: `load` returns `expiry_date` exactly as saved, to the nanosecond, as
/// upstream stores do (tower-sessions' `always_save` tests compare expiries of two saves in one
/// millisecond); the engine's deadline is it rounded down, so a session is never loaded after
/// it. The reserved field never shows in the data; a session stored as plain JSON (as before)
/// loads with its deadline, and a deadline moved by the engine's own `touch` is what loads.
#[tokio::test(flavor = "current_thread")]
async fn tower_returns_expiry_date_exactly_as_saved() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = TowerStore::new(open(dir.path(), &clock));
    let exact = |ms: u64, ns: i128| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000 + ns).unwrap();
    let mut rec = record(Id::default(), 1, T0);
    rec.expiry_date = exact(T0 + HOUR_MS, 123_456);
    store.create(&mut rec).await.unwrap();
    let loaded = store.load(&rec.id).await.unwrap().unwrap();
    assert_eq!(loaded.expiry_date, rec.expiry_date, "expiry truncated");
    assert!(!loaded.data.contains_key(sessiondb::session::tower::EXACT_EXPIRY_FIELD));
    assert_eq!(loaded, rec);
    // Two saves within one millisecond: each loads its own expiry.
    for ns in [200_001, 999_999] {
        let mut again = rec.clone();
        again.expiry_date = exact(T0 + HOUR_MS, ns);
        store.save(&again).await.unwrap();
        assert_eq!(
            store.load(&rec.id).await.unwrap().unwrap().expiry_date,
            again.expiry_date
        );
    }
    // The deadline is rounded down: at the exact expiry's millisecond it no longer loads.
    let sid: SessionId = rec.id.to_string().parse().unwrap();
    assert_eq!(
        store.sessions().load(&sid).unwrap().unwrap().expires_at_ms,
        Some(T0 + HOUR_MS)
    );
    // Moved by the engine's touch: the stored exact expiry is stale, the deadline loads.
    assert!(store.sessions().touch(&sid, Duration::from_secs(60)).unwrap());
    let touched = store.load(&rec.id).await.unwrap().unwrap();
    assert_eq!(touched.expiry_date, at(T0 + 60_000));
    assert!(!touched.data.contains_key(sessiondb::session::tower::EXACT_EXPIRY_FIELD));
    // A session stored as plain JSON (the adapter's earlier layout) loads with its deadline.
    let plain = SessionId::generate().unwrap();
    let json = serde_json::to_vec(&serde_json::json!({"n": 7})).unwrap();
    assert!(store
        .sessions()
        .create_with_id(&plain, &json, Duration::from_secs(60))
        .unwrap());
    let old = store.load(&tower_id(&plain)).await.unwrap().unwrap();
    assert_eq!(
        (old.data["n"].clone(), old.expiry_date),
        (serde_json::json!(7), at(T0 + 60_000))
    );
    clock.advance(Duration::from_millis(HOUR_MS));
    assert!(store.load(&rec.id).await.unwrap().is_none(), "loaded at its expiry");
}

/// Issue 17, point 4: actix `save`, `update` and `update_ttl` with a zero or negative
/// time-to-live are refused (Redis: "invalid expire time"), and nothing is written.
#[tokio::test(flavor = "current_thread")]
async fn actix_refuses_a_ttl_that_is_not_positive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let sessions = open(dir.path(), &clock);
    let store = ActixStore::new(sessions.clone());
    let minute = time::Duration::minutes(1);
    let key = store.save(state(&[("a", "1")]), &minute).await.unwrap();
    for bad in [time::Duration::ZERO, time::Duration::seconds(-5)] {
        let saved = store.save(state(&[("b", "2")]), &bad).await;
        assert!(saved.is_err_and(|e| format!("{e:?}").contains("invalid expire time")));
        let same = SessionKey::try_from(key.as_ref().to_string()).unwrap();
        assert!(store.update(same, state(&[("a", "2")]), &bad).await.is_err());
        assert!(store.update_ttl(&key, &bad).await.is_err());
    }
    assert_eq!(sessions.count().unwrap(), 1, "a refused call wrote a session");
    assert_eq!(
        store.load(&key).await.unwrap().unwrap()["a"],
        "1",
        "a refused update wrote"
    );
    let deadline = sessions
        .load(&key.as_ref().parse().unwrap())
        .unwrap()
        .unwrap()
        .expires_at_ms;
    assert_eq!(deadline, Some(T0 + 60_000), "a refused update_ttl moved the deadline");
}

/// How many requests run at once on one session in the merge tests.
const SAME_SESSION_REQUESTS: usize = 16;

/// Serves `store` through tower-sessions' middleware on localhost: `/init` starts a session,
/// `/add/{i}` loads it, waits until every one of [`SAME_SESSION_REQUESTS`] requests has loaded
/// it too (a barrier, with a deadline), then sets entry `k{i}`; `/count` answers how many `k`
/// entries the session holds. Returns the base URL.
async fn serve_same_session(store: TowerStore) -> String {
    use axum::extract::Path as UrlPath;
    use axum::routing::get;
    use tower_sessions::{Session, SessionManagerLayer};

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(SAME_SESSION_REQUESTS));
    let add = move |session: Session, UrlPath(i): UrlPath<usize>| {
        let barrier = barrier.clone();
        async move {
            assert_eq!(session.get::<bool>("init").await.unwrap(), Some(true));
            tokio::time::timeout(Duration::from_secs(60), barrier.wait())
                .await
                .expect("every request loaded the session within the deadline");
            session.insert(&format!("k{i}"), i).await.unwrap();
            "ok"
        }
    };
    let app = axum::Router::new()
        .route(
            "/init",
            get(|session: tower_sessions::Session| async move {
                session.insert("init", true).await.unwrap();
                "ok"
            }),
        )
        .route("/add/{i}", get(add))
        .route(
            "/count",
            get(|session: tower_sessions::Session| async move {
                let mut n = 0;
                for i in 0..SAME_SESSION_REQUESTS {
                    n += usize::from(session.get::<usize>(&format!("k{i}")).await.unwrap() == Some(i));
                }
                n.to_string()
            }),
        )
        .layer(SessionManagerLayer::new(store).with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Starts one session, sends [`SAME_SESSION_REQUESTS`] requests with its cookie at once, each
/// setting its own entry after all have loaded it; returns how many entries the session keeps.
async fn entries_kept_by_concurrent_requests(store: TowerStore) -> usize {
    let url = serve_same_session(store).await;
    let client = reqwest::Client::new();
    let init = client.get(format!("{url}/init")).send().await.unwrap();
    let cookie = init.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let requests = (0..SAME_SESSION_REQUESTS).map(|i| {
        let (client, url, cookie) = (client.clone(), url.clone(), cookie.clone());
        tokio::spawn(async move {
            let r = client
                .get(format!("{url}/add/{i}"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "request {i}: {}", r.status());
        })
    });
    for r in requests.collect::<Vec<_>>() {
        r.await.unwrap();
    }
    let count = client
        .get(format!("{url}/count"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    count.text().await.unwrap().parse().unwrap()
}

/// Issue 17, point 4: concurrent requests on one session, each loading it and then setting an
/// entry of its own. With `with_merge_on_save` every request's entry stays; without it, the
/// framework's last writer wins and exactly one does (every request loaded before any saved).
/// With the merge left out of `save` the first assertion fails with 1 (checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_merge_on_save_keeps_every_concurrent_requests_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = TowerStore::new(SessionStore::open(dir.path()).unwrap());
    assert_eq!(
        entries_kept_by_concurrent_requests(store.clone().with_merge_on_save()).await,
        SAME_SESSION_REQUESTS,
        "with merge on save, a concurrent request's entry was lost"
    );
    assert_eq!(
        entries_kept_by_concurrent_requests(store).await,
        1,
        "without merge on save, the last save replaces the whole session"
    );
}

/// The merge, entry by entry, through the trait as tower-sessions calls it (a load and a save
/// per request, each request its own task): entries removed or changed by a request are
/// removed or changed; entries another request set meanwhile stay; the same entry changed by
/// two requests keeps the later save's value; a save whose load is not remembered (outside a
/// task) replaces the whole session; a session deleted meanwhile is written again by a save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_merge_on_save_applies_only_what_a_request_changed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = TowerStore::new(open(dir.path(), &clock)).with_merge_on_save();
    let mut rec = record(Id::default(), 1, T0 + HOUR_MS);
    rec.data.insert("gone".into(), serde_json::json!("x"));
    store.create(&mut rec).await.unwrap();
    let id = rec.id;

    // Two requests, each a task that loads and later saves: both load before either saves,
    // and the second saves first.
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let s1 = store.clone();
    let first = tokio::spawn(async move {
        let mut r = s1.load(&id).await.unwrap().unwrap();
        loaded_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), go_rx)
            .await
            .expect("the second request saved within the deadline")
            .unwrap();
        r.data.insert("n".into(), serde_json::json!(10));
        r.data.remove("gone");
        r.data.insert("a".into(), serde_json::json!("from a"));
        s1.save(&r).await.unwrap();
    });
    let s2 = store.clone();
    let second = tokio::spawn(async move {
        let mut r = s2.load(&id).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(60), loaded_rx)
            .await
            .expect("the first request loaded within the deadline")
            .unwrap();
        r.data.insert("n".into(), serde_json::json!(20));
        r.data.insert("b".into(), serde_json::json!("from b"));
        s2.save(&r).await.unwrap();
        go_tx.send(()).unwrap();
    });
    second.await.unwrap();
    first.await.unwrap();
    let now = store.load(&id).await.unwrap().unwrap().data;
    assert_eq!(now["a"], serde_json::json!("from a"));
    assert_eq!(
        now["b"],
        serde_json::json!("from b"),
        "the other request's entry was lost"
    );
    assert_eq!(
        now["n"],
        serde_json::json!(10),
        "the later save's value of an entry both changed"
    );
    assert!(!now.contains_key("gone"), "an entry the request removed came back");
    assert_eq!(now["name"], rec.data["name"], "an entry nobody changed");

    // Outside a task (the test's own future) nothing is remembered: the save replaces the
    // whole session.
    let mut whole = store.load(&id).await.unwrap().unwrap();
    whole.data.clear();
    whole.data.insert("only".into(), serde_json::json!(1));
    store.save(&whole).await.unwrap();
    let now = store.load(&id).await.unwrap().unwrap().data;
    assert_eq!(now.keys().collect::<Vec<_>>(), vec!["only"]);

    // A session deleted between a request's load and its save is written again by the save,
    // as without merging (tower-sessions' save creates).
    let s3 = store.clone();
    tokio::spawn(async move {
        let mut r = s3.load(&id).await.unwrap().unwrap();
        s3.delete(&id).await.unwrap();
        r.data.insert("again".into(), serde_json::json!(true));
        s3.save(&r).await.unwrap();
    })
    .await
    .unwrap();
    let now = store.load(&id).await.unwrap().unwrap().data;
    assert_eq!(now["again"], serde_json::json!(true));
}
