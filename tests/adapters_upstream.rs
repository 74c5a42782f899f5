//! What the frameworks' own test suites check of a session store, rewritten for sessiondb's
//! adapters (issue 17, point 4): tower-sessions 0.15's integration tests (a router behind
//! `SessionManagerLayer`) and its stores' tests, and actix-session 0.11's acceptance suite (a
//! service behind `SessionMiddleware`). Read for the behaviours they assert; written here in our
//! own words.
//!
//! Scenario: `TowerStore` behind tower-sessions' middleware in an axum server on localhost,
//! driven by an HTTP client that handles the cookie by hand; `ActixStore` behind actix-session's
//! middleware, driven by `actix_web::test`. Invariants: a request that never touches its session
//! gets no cookie and writes nothing; values round-trip across requests; an unknown, forged or
//! malformed cookie starts a fresh session (never another's); flushing or purging deletes the
//! session from the store (removing its last value leaves it, empty, as upstream); cycling or renewing an id moves the data to a
//! new id and the old one loads nothing; expiry settings reach the cookie, and a save on every
//! request (tower `always_save`, actix `OnEveryRequest`) re-sends it.

mod support;

use std::time::Duration;

use sessiondb::session::actix::ActixStore;
use sessiondb::session::tower::TowerStore;
use sessiondb::session::SessionStore;

// ---------------------------------------------------------------------------------------------
// tower-sessions

/// What a response said: status, the session cookie it set (the whole header), and its body.
struct Answer {
    cookie: Option<String>,
    body: String,
}

impl Answer {
    /// `id=<value>` of the cookie set, to send back.
    fn pair(&self) -> String {
        let c = self.cookie.as_deref().expect("a session cookie was set");
        c.split(';').next().unwrap().trim().to_string()
    }
}

/// Serves a router over `store` with `layer`'s settings on localhost: `/insert` sets `foo` to 42,
/// `/get` answers `foo` (or "none"), `/remove` removes it, `/cycle` cycles the id, `/flush`
/// flushes the session, `/id` answers the session's id, `/noop` never touches the session.
async fn serve_tower(
    store: TowerStore,
    layer: impl FnOnce(tower_sessions::SessionManagerLayer<TowerStore>) -> tower_sessions::SessionManagerLayer<TowerStore>,
) -> String {
    use axum::routing::get;
    use tower_sessions::Session;

    let app = axum::Router::new()
        .route(
            "/insert",
            get(|s: Session| async move {
                s.insert("foo", 42).await.unwrap();
                "inserted"
            }),
        )
        .route(
            "/get",
            get(|s: Session| async move {
                s.get::<u64>("foo")
                    .await
                    .unwrap()
                    .map_or("none".to_string(), |v| v.to_string())
            }),
        )
        .route(
            "/remove",
            get(|s: Session| async move {
                s.remove::<u64>("foo").await.unwrap();
                "removed"
            }),
        )
        .route(
            "/cycle",
            get(|s: Session| async move {
                s.cycle_id().await.unwrap();
                "cycled"
            }),
        )
        .route(
            "/flush",
            get(|s: Session| async move {
                s.flush().await.unwrap();
                "flushed"
            }),
        )
        .route(
            "/id",
            get(|s: Session| async move { s.id().map_or("none".to_string(), |id| id.to_string()) }),
        )
        .route("/noop", get(|| async { "nothing" }))
        .layer(layer(
            tower_sessions::SessionManagerLayer::new(store).with_secure(false),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// GET `url/path`, sending `cookie` (`id=...`) if given.
async fn ask(url: &str, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = reqwest::Client::new().get(format!("{url}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("id="));
    Answer {
        cookie,
        body: resp.text().await.unwrap(),
    }
}

/// A store in a fresh directory (kept alive by the returned guard) and its adapter.
fn tower_store() -> (tempfile::TempDir, SessionStore, TowerStore) {
    let dir = tempfile::tempdir().unwrap();
    let sessions = SessionStore::open(dir.path()).unwrap();
    let store = TowerStore::new(sessions.clone());
    (dir, sessions, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_a_request_that_never_touches_its_session_gets_no_cookie_and_writes_nothing() {
    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store, |l| l).await;
    let a = ask(&url, "/noop", None).await;
    assert_eq!(a.cookie, None);
    let a = ask(&url, "/get", None).await;
    assert_eq!(
        (a.cookie, a.body.as_str()),
        (None, "none"),
        "a read of no session sets nothing"
    );
    assert_eq!(sessions.count().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_an_inserted_value_comes_back_on_the_next_request_with_the_default_cookie() {
    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store, |l| l).await;
    let a = ask(&url, "/insert", None).await;
    let cookie = a.cookie.clone().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    assert!(
        !cookie.contains("Max-Age"),
        "the default expiry ends with the browser session: {cookie}"
    );
    assert_eq!(ask(&url, "/get", Some(&a.pair())).await.body, "42");
    assert_eq!(sessions.count().unwrap(), 1);
    // A second request that only reads does not save (nothing modified): no cookie again.
    assert_eq!(ask(&url, "/get", Some(&a.pair())).await.cookie, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_an_unknown_or_malformed_cookie_starts_a_fresh_session() {
    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store, |l| l).await;
    let mine = ask(&url, "/insert", None).await.pair();
    // A well-formed id nobody was given, and garbage.
    let forged = "id=AAAAAAAAAAAAAAAAAAAAAA";
    for bogus in [forged, "id=not-a-session-id!!", "id="] {
        assert_eq!(ask(&url, "/get", Some(bogus)).await.body, "none", "{bogus}");
        let a = ask(&url, "/insert", Some(bogus)).await;
        assert_ne!(a.pair(), bogus, "a cookie the store never issued was kept");
        assert_ne!(a.pair(), mine, "another visitor's session was handed out");
    }
    assert_eq!(
        ask(&url, "/get", Some(&mine)).await.body,
        "42",
        "the real session is untouched"
    );
    assert_eq!(sessions.count().unwrap(), 4);
}

/// tower-sessions deletes a session only when it never had an id (`Session::is_empty`): a
/// session whose last value is removed is saved empty and keeps its cookie, as with its own
/// stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_removing_the_last_value_keeps_an_empty_session() {
    use tower_sessions_core::SessionStore as _;

    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store.clone(), |l| l).await;
    let pair = ask(&url, "/insert", None).await.pair();
    let id: tower_sessions::session::Id = ask(&url, "/id", Some(&pair)).await.body.parse().unwrap();
    let a = ask(&url, "/remove", Some(&pair)).await;
    assert_eq!(a.pair(), pair, "the same session is saved");
    assert_eq!(ask(&url, "/get", Some(&pair)).await.body, "none");
    assert_eq!(sessions.count().unwrap(), 1);
    let record = store.load(&id).await.unwrap().expect("the empty session is stored");
    assert!(record.data.is_empty(), "{:?}", record.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_cycling_the_id_keeps_the_data_under_a_new_id_and_the_old_id_loads_nothing() {
    use tower_sessions_core::SessionStore as _;

    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store.clone(), |l| l).await;
    let old = ask(&url, "/insert", None).await.pair();
    let old_id: tower_sessions::session::Id = ask(&url, "/id", Some(&old)).await.body.parse().unwrap();
    let a = ask(&url, "/cycle", Some(&old)).await;
    let new = a.pair();
    assert_ne!(new, old);
    assert_eq!(
        ask(&url, "/get", Some(&new)).await.body,
        "42",
        "the data moved with the id"
    );
    assert_eq!(
        ask(&url, "/get", Some(&old)).await.body,
        "none",
        "the old id still works"
    );
    assert!(store.load(&old_id).await.unwrap().is_none());
    assert_eq!(sessions.count().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_flush_deletes_the_session_from_the_store_and_removes_the_cookie() {
    let (_dir, sessions, store) = tower_store();
    let url = serve_tower(store, |l| l).await;
    let pair = ask(&url, "/insert", None).await.pair();
    let a = ask(&url, "/flush", Some(&pair)).await;
    assert!(a.cookie.expect("a removal cookie").contains("Max-Age=0"));
    assert_eq!(sessions.count().unwrap(), 0);
    assert_eq!(
        ask(&url, "/get", Some(&pair)).await.body,
        "none",
        "a flushed session came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_expiry_settings_reach_the_cookie_and_always_save_resends_it() {
    use tower_sessions::Expiry;

    let (_dir, sessions, store) = tower_store();
    let hour = time::Duration::hours(1);
    let url = serve_tower(store.clone(), |l| l.with_expiry(Expiry::OnInactivity(hour))).await;
    let a = ask(&url, "/insert", None).await;
    assert!(a.cookie.as_deref().unwrap().contains("Max-Age=3600"), "{:?}", a.cookie);
    // The store's deadline is the record's expiry: about an hour from now.
    let id: sessiondb::session::SessionId = ask(&url, "/id", Some(&a.pair())).await.body.parse().unwrap();
    let deadline = sessions.load(&id).unwrap().unwrap().expires_at_ms.unwrap();
    let now = sessions.db().now_ms();
    assert!(
        (now + 3_590_000..=now + 3_600_000).contains(&deadline),
        "{deadline} vs {now}"
    );
    assert_eq!(
        ask(&url, "/get", Some(&a.pair())).await.cookie,
        None,
        "a read saves nothing"
    );

    let at = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let url = serve_tower(store.clone(), move |l| l.with_expiry(Expiry::AtDateTime(at))).await;
    let a = ask(&url, "/insert", None).await;
    let cookie = a.cookie.as_deref().unwrap();
    assert!(
        cookie.contains("Max-Age=172799") || cookie.contains("Max-Age=172800"),
        "a fixed expiry two days ahead: {cookie}"
    );

    let url = serve_tower(store, |l| {
        l.with_expiry(Expiry::OnInactivity(hour)).with_always_save(true)
    })
    .await;
    let a = ask(&url, "/insert", None).await;
    let again = ask(&url, "/get", Some(&a.pair())).await;
    assert_eq!(again.body, "42");
    assert!(
        again.cookie.as_deref().is_some_and(|c| c.contains("Max-Age=3600")),
        "always_save re-sends the cookie on a read: {:?}",
        again.cookie
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_store_save_creates_a_missing_record_and_load_of_a_missing_id_is_none() {
    use tower_sessions_core::session::{Id, Record};
    use tower_sessions_core::SessionStore as _;

    let (_dir, _sessions, store) = tower_store();
    let id = Id::default();
    assert!(store.load(&id).await.unwrap().is_none());
    let mut data = std::collections::HashMap::new();
    data.insert("k".to_string(), serde_json::json!("v"));
    let record = Record {
        id,
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(5),
    };
    store.save(&record).await.unwrap();
    let loaded = store.load(&id).await.unwrap().expect("save created it");
    assert_eq!(loaded.data, record.data);
    assert_eq!(loaded.expiry_date, record.expiry_date);
    store.delete(&id).await.unwrap();
    store.delete(&id).await.unwrap(); // deleting twice is no error
    assert!(store.load(&id).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// actix-session

async fn actix_login(session: actix_session::Session) -> actix_web::Result<String> {
    session.insert("user", "ada")?;
    session.insert("counter", 0u64)?;
    Ok("in".into())
}

async fn actix_count(session: actix_session::Session) -> actix_web::Result<String> {
    let n = session.get::<u64>("counter")?.map(|n| n + 1);
    if let Some(n) = n {
        session.insert("counter", n)?;
    }
    Ok(format!("{:?}", n))
}

async fn actix_read(session: actix_session::Session) -> actix_web::Result<String> {
    Ok(format!("{:?}", session.get::<String>("user")?))
}

async fn actix_logout(session: actix_session::Session) -> actix_web::Result<String> {
    session.purge();
    Ok("out".into())
}

async fn actix_renew(session: actix_session::Session) -> actix_web::Result<String> {
    session.renew();
    Ok("renewed".into())
}

/// The actix app over `store`, with `lifecycle` applied to the middleware builder.
macro_rules! actix_app {
    ($store:expr, $builder:expr) => {{
        use actix_web::{test, web, App};
        let key = actix_web::cookie::Key::generate();
        let builder = actix_session::SessionMiddleware::builder($store, key).cookie_secure(false);
        test::init_service(
            App::new()
                .wrap(($builder)(builder).build())
                .route("/login", web::get().to(actix_login))
                .route("/count", web::get().to(actix_count))
                .route("/read", web::get().to(actix_read))
                .route("/logout", web::get().to(actix_logout))
                .route("/renew", web::get().to(actix_renew))
                .route("/noop", web::get().to(|| async { "nothing" })),
        )
        .await
    }};
}

/// GET `path` with `cookie`; the session cookie the response set (if any) and the body.
macro_rules! actix_ask {
    ($app:expr, $path:expr, $cookie:expr) => {{
        use actix_web::test;
        let mut req = test::TestRequest::get().uri($path);
        if let Some(c) = $cookie {
            req = req.cookie(c);
        }
        let resp = test::call_service(&$app, req.to_request()).await;
        assert!(resp.status().is_success(), "{}: {}", $path, resp.status());
        let set = resp.response().cookies().next().map(|c| c.into_owned());
        let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
        (set, body)
    }};
}

type Cookie = actix_web::cookie::Cookie<'static>;

fn actix_store() -> (tempfile::TempDir, SessionStore, ActixStore) {
    let dir = tempfile::tempdir().unwrap();
    let sessions = SessionStore::open(dir.path()).unwrap();
    let store = ActixStore::new(sessions.clone());
    (dir, sessions, store)
}

#[actix_web::test]
async fn actix_a_request_that_never_touches_its_session_gets_no_cookie_and_writes_nothing() {
    let (_dir, sessions, store) = actix_store();
    let app = actix_app!(store, |b| b);
    let (set, _) = actix_ask!(app, "/noop", None::<Cookie>);
    assert!(set.is_none());
    let (set, body) = actix_ask!(app, "/read", None::<Cookie>);
    assert_eq!((set.is_none(), body.as_str()), (true, "None"));
    assert_eq!(sessions.count().unwrap(), 0);
}

#[actix_web::test]
async fn actix_state_round_trips_and_a_logout_purges_it_from_the_store() {
    let (_dir, sessions, store) = actix_store();
    let app = actix_app!(store, |b| b);
    let (set, _) = actix_ask!(app, "/login", None::<Cookie>);
    let cookie = set.expect("login sets the cookie");
    let (_, body) = actix_ask!(app, "/read", Some(cookie.clone()));
    assert_eq!(body, "Some(\"ada\")");
    for n in 1..=3u64 {
        let (_, body) = actix_ask!(app, "/count", Some(cookie.clone()));
        assert_eq!(body, format!("Some({n})"));
    }
    assert_eq!(sessions.count().unwrap(), 1);
    let (set, _) = actix_ask!(app, "/logout", Some(cookie.clone()));
    let removal = set.expect("logout removes the cookie");
    assert_eq!(removal.value(), "", "{removal}");
    assert_eq!(sessions.count().unwrap(), 0, "a purged session stays in the store");
    // The old cookie, replayed after the logout, is a fresh, empty session.
    let (_, body) = actix_ask!(app, "/read", Some(cookie.clone()));
    assert_eq!(body, "None", "a purged session came back");
    let (_, body) = actix_ask!(app, "/count", Some(cookie));
    assert_eq!(body, "None");
}

#[actix_web::test]
async fn actix_renew_moves_the_state_to_a_new_key_and_the_old_key_loads_nothing() {
    use actix_session::storage::{SessionKey, SessionStore as _};

    let (_dir, sessions, store) = actix_store();
    let app = actix_app!(store.clone(), |b| b);
    let (set, _) = actix_ask!(app, "/login", None::<Cookie>);
    let before = set.unwrap();
    let (set, _) = actix_ask!(app, "/renew", Some(before.clone()));
    let after = set.expect("renew sets a new cookie");
    assert_ne!(after.value(), before.value());
    let (_, body) = actix_ask!(app, "/read", Some(after));
    assert_eq!(body, "Some(\"ada\")", "the state moved with the key");
    let (_, body) = actix_ask!(app, "/read", Some(before));
    assert_eq!(body, "None", "the old key still works");
    assert_eq!(sessions.count().unwrap(), 1, "the old key's session stays in the store");
    // (The cookie is signed: its value is not the key. The store's own view: no session under
    // a key it never issued.)
    let bogus = SessionKey::try_from("x".repeat(64)).unwrap();
    assert!(store.load(&bogus).await.unwrap().is_none());
}

#[actix_web::test]
async fn actix_a_forged_cookie_starts_a_fresh_session() {
    let (_dir, sessions, store) = actix_store();
    let app = actix_app!(store, |b| b);
    let (set, _) = actix_ask!(app, "/login", None::<Cookie>);
    let real = set.unwrap();
    let mut forged = real.clone();
    forged.set_value(format!("{}x", real.value()));
    let (_, body) = actix_ask!(app, "/read", Some(forged.clone()));
    assert_eq!(body, "None", "a tampered cookie read a session");
    let (set, _) = actix_ask!(app, "/login", Some(forged));
    assert_ne!(set.unwrap().value(), real.value());
    assert_eq!(sessions.count().unwrap(), 2);
}

#[actix_web::test]
async fn actix_ttl_extension_policies_decide_when_the_deadline_moves() {
    use actix_session::config::{PersistentSession, TtlExtensionPolicy};

    let hour = time::Duration::hours(1);
    let persistent = |policy: TtlExtensionPolicy| {
        PersistentSession::default()
            .session_ttl(hour)
            .session_ttl_extension_policy(policy)
    };

    // On state changes only: a read sends no cookie and leaves the deadline.
    let (_dir, sessions, store) = actix_store();
    let app = actix_app!(store, |b: actix_session::config::SessionMiddlewareBuilder<
        ActixStore,
    >| b
        .session_lifecycle(persistent(TtlExtensionPolicy::OnStateChanges)));
    let (set, _) = actix_ask!(app, "/login", None::<Cookie>);
    let cookie = set.unwrap();
    assert_eq!(cookie.max_age(), Some(hour), "a persistent cookie carries the TTL");
    let deadline = only_deadline(&sessions);
    let now = sessions.db().now_ms();
    assert!((now + 3_590_000..=now + 3_600_000).contains(&deadline));
    let (set, _) = actix_ask!(app, "/read", Some(cookie.clone()));
    assert!(set.is_none(), "a read re-sent the cookie under OnStateChanges");

    // On every request: a read re-sends the cookie and moves the deadline (never back).
    let (_dir2, sessions, store) = actix_store();
    let app = actix_app!(store, |b: actix_session::config::SessionMiddlewareBuilder<
        ActixStore,
    >| b
        .session_lifecycle(persistent(TtlExtensionPolicy::OnEveryRequest)));
    let (set, _) = actix_ask!(app, "/login", None::<Cookie>);
    let cookie = set.unwrap();
    let first = only_deadline(&sessions);
    // The deadline has millisecond precision: let the clock pass one (a wait on time, not on
    // another thread).
    std::thread::sleep(Duration::from_millis(5));
    let (set, body) = actix_ask!(app, "/read", Some(cookie));
    assert_eq!(body, "Some(\"ada\")");
    assert_eq!(set.expect("OnEveryRequest re-sends the cookie").max_age(), Some(hour));
    assert!(only_deadline(&sessions) > first, "the deadline did not move on a read");
}

/// The deadline of the store's only session.
fn only_deadline(sessions: &SessionStore) -> u64 {
    let db = sessions.db();
    let keys: Vec<Vec<u8>> = db.scan_prefix(b"").map(|e| e.unwrap().0).collect();
    let deadlines: Vec<u64> = keys
        .iter()
        .filter_map(|k| db.get_versioned(k).unwrap().and_then(|v| v.expires_at_ms))
        .collect();
    assert_eq!(deadlines.len(), 1, "one session: {keys:?}");
    deadlines[0]
}
