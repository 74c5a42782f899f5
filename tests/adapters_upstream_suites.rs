//! The behaviours the frameworks' own test suites assert of a session store, rewritten here (in
//! this project's words and code) and run against sessiondb's adapters: tower-sessions 0.15 (the
//! memory store's unit tests, the session manager's tests, the route suite of `tests/` shared by
//! tower-sessions and tower-sessions-stores, and its caching store) and actix-session 0.11 (its
//! `acceptance_test_suite`, its middleware test and the Redis store's tests).
//!
//! Scenario: `TowerStore` / `ActixStore` over a real store in a temporary directory with a
//! `ManualClock`, driven as the frameworks drive a store: tower-sessions' `SessionManagerLayer`
//! around an axum router (called in process, no sockets) and actix-session's `SessionMiddleware`
//! in an `actix_web::test` service, or the store traits called directly.
//!
//! Method: one test per behaviour an upstream test asserts, grouped by upstream suite (one module
//! each), named for the behaviour; where an upstream test sleeps for a session to expire, the
//! store's clock is moved instead (tower-sessions computes expiry dates from the wall clock, so its
//! tests start the manual clock at the wall clock's time). Each test also checks the store itself
//! where the upstream one could only see cookies (the record behind a cookie, what is gone).
//!
//! Invariant: sessiondb behaves as the frameworks' reference stores do: ids are assigned and never
//! overwrite a live session; data and expiry dates round-trip exactly; nothing expired or deleted
//! loads; unknown, malformed or undecodable cookies start a fresh session; cookies are set only when
//! the session is saved; `cycle_id` / `renew` move the data to a new id and drop the old one;
//! `flush` / `purge` delete the session; always-save and TTL-extension policies move the stored
//! deadline, and the default policies leave it alone.

mod support;

use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use sessiondb::session::actix::ActixStore;
use sessiondb::session::tower::TowerStore;
use sessiondb::session::{SessionId, SessionStore};
use sessiondb::ManualClock;
use tempfile::TempDir;

/// A store in its own directory, with the clock the test moves.
struct Fixture {
    _dir: TempDir,
    clock: ManualClock,
    sessions: SessionStore,
}

impl Fixture {
    /// The store's clock starts at `now_ms`.
    fn at(now_ms: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(now_ms);
        let sessions = support::manual_session_store(dir.path(), &clock);
        Fixture {
            _dir: dir,
            clock,
            sessions,
        }
    }

    /// The store's clock starts at the wall clock's time: tower-sessions dates its records with
    /// `OffsetDateTime::now_utc()`.
    fn at_wall_clock() -> Fixture {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
        Fixture::at(u64::try_from(now.as_millis()).expect("in range"))
    }

    fn tower(&self) -> TowerStore {
        TowerStore::new(self.sessions.clone())
    }

    fn actix(&self) -> ActixStore {
        ActixStore::new(self.sessions.clone())
    }
}

/// tower-sessions: an axum router behind `SessionManagerLayer`, called in process.
mod tower_http {
    use std::convert::Infallible;

    use axum::body::Body;
    use axum::handler::Handler;
    use axum::http::{header, Request, Response};
    use axum::routing::{any_service, get as on_get, MethodRouter};
    use axum::Router;
    use time::{Duration, OffsetDateTime};
    use tower_sessions::cookie::Cookie;
    use tower_sessions::session::Id;
    use tower_sessions::{Expiry, Session, SessionManagerLayer, SessionStore};

    /// The routes the upstream suites use, each touching the session one way.
    fn routes() -> Router {
        Router::new()
            .route("/", on_get(|_: Session| async { "untouched" }))
            .route(
                "/insert",
                on_get(|s: Session| async move { s.insert("foo", 42).await.expect("insert") }),
            )
            .route(
                "/get",
                on_get(|s: Session| async move {
                    let value = s.get::<usize>("foo").await.expect("get");
                    value.expect("foo is set").to_string()
                }),
            )
            .route(
                "/get_value",
                on_get(|s: Session| async move { format!("{:?}", s.get_value("foo").await.expect("get_value")) }),
            )
            .route(
                "/remove",
                on_get(|s: Session| async move {
                    s.remove::<usize>("foo").await.expect("remove");
                }),
            )
            .route(
                "/remove_value",
                on_get(|s: Session| async move {
                    s.remove_value("foo").await.expect("remove_value");
                }),
            )
            .route("/clear", on_get(|s: Session| async move { s.clear().await }))
            .route(
                "/cycle_id",
                on_get(|s: Session| async move { s.cycle_id().await.expect("cycle_id") }),
            )
            .route(
                "/flush",
                on_get(|s: Session| async move { s.flush().await.expect("flush") }),
            )
            .route(
                "/set_expiry",
                on_get(|s: Session| async move {
                    let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
                    s.set_expiry(Some(Expiry::AtDateTime(tomorrow)));
                }),
            )
            .route(
                "/remove_expiry",
                on_get(|s: Session| async move { s.set_expiry(Some(Expiry::OnSessionEnd)) }),
            )
    }

    /// The routes behind `layer`, as one value that answers requests.
    pub type App = MethodRouter<(), Infallible>;

    pub fn app<S: SessionStore + Clone>(layer: SessionManagerLayer<S>) -> App {
        any_service(routes().layer(layer))
    }

    /// GET `uri`, sending `cookie` (its name and value only, as a browser does) if given.
    pub async fn get_with(app: &App, uri: &str, cookie: Option<&Cookie<'_>>) -> Response<Body> {
        let mut req = Request::builder().uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("{}={}", c.name(), c.value()));
        }
        Handler::call(app.clone(), req.body(Body::empty()).expect("request"), ()).await
    }

    pub async fn get(app: &App, uri: &str) -> Response<Body> {
        get_with(app, uri, None).await
    }

    /// The response's (only) `Set-Cookie`, parsed.
    pub fn set_cookie(res: &Response<Body>) -> Option<Cookie<'static>> {
        let mut all = res.headers().get_all(header::SET_COOKIE).iter();
        let first = all.next()?.to_str().expect("ASCII header").to_string();
        assert!(all.next().is_none(), "more than one Set-Cookie");
        Some(Cookie::parse(first).expect("a cookie"))
    }

    pub fn raw_set_cookie(res: &Response<Body>) -> String {
        let value = res.headers().get(header::SET_COOKIE).expect("a Set-Cookie");
        value.to_str().expect("ASCII header").to_string()
    }

    pub async fn text(res: Response<Body>) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    /// The session id a cookie carries.
    pub fn id_of(cookie: &Cookie<'_>) -> Id {
        cookie.value().parse().expect("a session id")
    }

    /// `actual` is `expected` to within a second (the upstream tolerance: the test runs between
    /// the framework's clock readings).
    pub fn about(actual: Duration, expected: Duration) -> bool {
        (actual - expected).abs() <= Duration::seconds(1)
    }
}

/// tower-sessions' memory store unit tests (`memory-store/src/lib.rs`) and the session's own
/// `cycle_id` test (`tower-sessions-core/src/session.rs`): the `SessionStore` trait called
/// directly.
mod tower_memory_store {
    use std::collections::HashMap;
    use std::sync::Arc;

    use time::{Duration, OffsetDateTime};
    use tower_sessions::session::{Id, Record};
    use tower_sessions::{Session, SessionStore as _};

    use super::*;

    fn record(expiry_date: OffsetDateTime) -> Record {
        let mut data = HashMap::new();
        data.insert("user".to_string(), serde_json::json!({"name": "ada", "roles": [1, 2]}));
        Record {
            id: Id::default(),
            data,
            expiry_date,
        }
    }

    fn in_half_an_hour() -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::minutes(30)
    }

    #[tokio::test]
    async fn create_succeeds_and_the_record_loads_as_created() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut rec = record(in_half_an_hour());
        store.create(&mut rec).await.expect("create");
        let loaded = store.load(&rec.id).await.expect("load");
        assert_eq!(loaded, Some(rec), "id, data and expiry_date round-trip exactly");
    }

    #[tokio::test]
    async fn save_of_a_record_never_created_succeeds_and_loads() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let rec = record(in_half_an_hour());
        store.save(&rec).await.expect("save");
        assert_eq!(store.load(&rec.id).await.expect("load"), Some(rec));
    }

    #[tokio::test]
    async fn save_replaces_data_and_expiry_date() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut rec = record(in_half_an_hour());
        store.create(&mut rec).await.expect("create");
        let mut changed = rec.clone();
        changed.data.insert("n".into(), serde_json::json!(2));
        changed.expiry_date += Duration::nanoseconds(1_234);
        store.save(&changed).await.expect("save");
        assert_eq!(store.load(&rec.id).await.expect("load"), Some(changed));
    }

    #[tokio::test]
    async fn load_of_an_id_never_stored_is_none() {
        let f = Fixture::at_wall_clock();
        assert_eq!(f.tower().load(&Id::default()).await.expect("load"), None);
    }

    #[tokio::test]
    async fn delete_removes_the_record() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut rec = record(in_half_an_hour());
        store.create(&mut rec).await.expect("create");
        store.delete(&rec.id).await.expect("delete");
        assert_eq!(store.load(&rec.id).await.expect("load"), None);
        // Deleting what is not there is not an error either.
        store.delete(&rec.id).await.expect("delete again");
    }

    #[tokio::test]
    async fn create_with_a_colliding_id_draws_another_and_keeps_the_first() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut first = record(in_half_an_hour());
        store.create(&mut first).await.expect("create first");
        let mut second = record(in_half_an_hour());
        second.data.insert("second".into(), serde_json::json!(true));
        second.id = first.id;
        store.create(&mut second).await.expect("create second");
        assert_ne!(first.id, second.id, "the colliding record got a fresh id");
        assert_eq!(
            store.load(&first.id).await.expect("load"),
            Some(first),
            "first untouched"
        );
        assert_eq!(store.load(&second.id).await.expect("load"), Some(second));
    }

    #[tokio::test]
    async fn record_saved_with_an_expiry_in_the_past_is_not_loaded() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut rec = record(in_half_an_hour());
        store.create(&mut rec).await.expect("create");
        let mut past = rec.clone();
        past.expiry_date = OffsetDateTime::now_utc() - Duration::minutes(1);
        store.save(&past).await.expect("save");
        assert_eq!(store.load(&rec.id).await.expect("load"), None);
        // Nor is one created already expired.
        let mut dead = record(OffsetDateTime::now_utc() - Duration::seconds(1));
        store.create(&mut dead).await.expect("create");
        assert_eq!(store.load(&dead.id).await.expect("load"), None);
    }

    #[tokio::test]
    async fn record_is_never_returned_once_its_expiry_date_passes() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let mut rec = record(OffsetDateTime::now_utc() + Duration::seconds(1));
        store.create(&mut rec).await.expect("create");
        assert!(store.load(&rec.id).await.expect("load").is_some(), "live before");
        f.clock.advance(StdDuration::from_millis(1_100));
        assert_eq!(store.load(&rec.id).await.expect("load"), None, "expired after");
    }

    /// `Session::cycle_id`: the data stays, the id is cleared until the next save, which creates
    /// the session under a new id; the old id is deleted from the store.
    #[tokio::test]
    async fn session_cycle_id_keeps_the_data_under_a_new_id() {
        let f = Fixture::at_wall_clock();
        let store = Arc::new(f.tower());
        // A session that is in the store (upstream's mock store makes one up; a real store drops
        // an id it does not hold, so the session is saved first).
        let first = Session::new(None, store.clone(), None);
        first.insert("foo", 42).await.expect("insert");
        first.save().await.expect("save");
        let initial = first.id().expect("an id after saving");
        assert!(store.load(&initial).await.expect("load").is_some());

        let session = Session::new(Some(initial), store.clone(), None);
        session.cycle_id().await.expect("cycle_id");
        assert_eq!(session.id(), None, "no id until saved");
        assert_eq!(session.get::<i32>("foo").await.expect("get"), Some(42));
        assert_eq!(store.load(&initial).await.expect("load"), None, "old id deleted");

        session.save().await.expect("save");
        let new_id = session.id().expect("an id after saving");
        assert_ne!(new_id, initial);
        let rec = store
            .load(&new_id)
            .await
            .expect("load")
            .expect("stored under the new id");
        assert_eq!(rec.data["foo"], serde_json::json!(42));
    }
}

/// tower-sessions' session manager tests (`src/service.rs`): when the layer saves and what
/// cookie it sets, with the record behind the cookie checked in the store.
mod tower_service {
    use time::{Duration, OffsetDateTime};
    use tower_sessions::cookie::SameSite;
    use tower_sessions::{Expiry, SessionManagerLayer, SessionStore as _};

    use super::tower_http::{app, get, get_with, id_of, raw_set_cookie, set_cookie};
    use super::*;

    #[tokio::test]
    async fn modified_session_sets_a_cookie_and_an_unmodified_one_does_not() {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let app = app(SessionManagerLayer::new(store.clone()));
        let res = get(&app, "/insert").await;
        let cookie = set_cookie(&res).expect("a cookie for the new session");
        let before = store.load(&id_of(&cookie)).await.expect("load").expect("saved");

        // The same value again does not modify the session: no cookie, no save.
        let res = get_with(&app, "/insert", Some(&cookie)).await;
        assert!(set_cookie(&res).is_none(), "cookie resent for an unmodified session");
        let after = store.load(&id_of(&cookie)).await.expect("load").expect("still there");
        assert_eq!(after, before, "an unmodified session was saved again");
    }

    #[tokio::test]
    async fn untouched_session_sets_no_cookie_and_stores_nothing() {
        let f = Fixture::at_wall_clock();
        let app = app(SessionManagerLayer::new(f.tower()).with_expiry(Expiry::OnInactivity(Duration::hours(1))));
        let res = get(&app, "/").await;
        assert!(set_cookie(&res).is_none());
        assert_eq!(f.sessions.count().expect("count"), 0);
    }

    #[tokio::test]
    async fn bogus_cookie_value_gets_a_new_session() {
        let f = Fixture::at_wall_clock();
        let app = app(SessionManagerLayer::new(f.tower()));
        let bogus = tower_sessions::cookie::Cookie::new("id", "bogus");
        let res = get_with(&app, "/insert", Some(&bogus)).await;
        let cookie = set_cookie(&res).expect("a cookie for the new session");
        assert_ne!(cookie.value(), "bogus");
        assert!(f.tower().load(&id_of(&cookie)).await.expect("load").is_some());
    }

    #[tokio::test]
    async fn cookie_attributes_follow_the_layer_configuration() {
        let f = Fixture::at_wall_clock();
        let layer = SessionManagerLayer::new(f.tower())
            .with_name("my.sid")
            .with_http_only(false)
            .with_secure(false)
            .with_same_site(SameSite::Lax)
            .with_path("/foo/bar")
            .with_domain("example.com");
        let res = get(&app(layer), "/insert").await;
        let cookie = set_cookie(&res).expect("a cookie");
        assert_eq!(cookie.name(), "my.sid");
        assert_eq!(cookie.http_only(), None);
        assert_eq!(cookie.secure(), None);
        assert_eq!(cookie.same_site(), Some(SameSite::Lax));
        assert_eq!(cookie.path(), Some("/foo/bar"));
        assert_eq!(cookie.domain(), Some("example.com"));
        assert!(f.tower().load(&id_of(&cookie)).await.expect("load").is_some());

        for (same_site, shown) in [
            (SameSite::Strict, "SameSite=Strict"),
            (SameSite::Lax, "SameSite=Lax"),
            (SameSite::None, "SameSite=None"),
        ] {
            let layer = SessionManagerLayer::new(f.tower()).with_same_site(same_site);
            let res = get(&app(layer), "/insert").await;
            assert!(raw_set_cookie(&res).contains(shown), "{shown}");
        }
        let res = get(&app(SessionManagerLayer::new(f.tower())), "/insert").await;
        assert!(raw_set_cookie(&res).contains("HttpOnly"), "HttpOnly by default");
        let res = get(&app(SessionManagerLayer::new(f.tower()).with_secure(true)), "/insert").await;
        assert!(raw_set_cookie(&res).contains("Secure"));
    }

    #[tokio::test]
    async fn on_session_end_cookie_has_no_max_age() {
        let f = Fixture::at_wall_clock();
        let app = app(SessionManagerLayer::new(f.tower()).with_expiry(Expiry::OnSessionEnd));
        let res = get(&app, "/insert").await;
        assert!(!raw_set_cookie(&res).contains("Max-Age"));
        let cookie = set_cookie(&res).expect("a cookie");
        assert!(f.tower().load(&id_of(&cookie)).await.expect("load").is_some());
    }

    #[tokio::test]
    async fn on_inactivity_cookie_max_age_is_the_inactivity_period() {
        let f = Fixture::at_wall_clock();
        let inactivity = Duration::hours(2);
        let app = app(SessionManagerLayer::new(f.tower()).with_expiry(Expiry::OnInactivity(inactivity)));
        let cookie = set_cookie(&get(&app, "/insert").await).expect("a cookie");
        assert!(tower_http::about(cookie.max_age().expect("Max-Age"), inactivity));
        let rec = f.tower().load(&id_of(&cookie)).await.expect("load").expect("saved");
        assert!(tower_http::about(
            rec.expiry_date - OffsetDateTime::now_utc(),
            inactivity
        ));
    }

    #[tokio::test]
    async fn at_date_time_cookie_max_age_counts_down_to_the_date() {
        let f = Fixture::at_wall_clock();
        let at = OffsetDateTime::now_utc() + Duration::weeks(1);
        let app = app(SessionManagerLayer::new(f.tower()).with_expiry(Expiry::AtDateTime(at)));
        let cookie = set_cookie(&get(&app, "/insert").await).expect("a cookie");
        let expected = at - OffsetDateTime::now_utc();
        assert!(tower_http::about(cookie.max_age().expect("Max-Age"), expected));
        let rec = f.tower().load(&id_of(&cookie)).await.expect("load").expect("saved");
        assert_eq!(rec.expiry_date, at, "the store keeps the date exactly");
    }

    /// With `always_save`, a second request that changes nothing saves the session again under the
    /// same id; returns the second cookie and the stored expiry after each request.
    async fn two_saves(expiry: Expiry) -> (Fixture, tower_sessions::cookie::Cookie<'static>, [OffsetDateTime; 2]) {
        let f = Fixture::at_wall_clock();
        let store = f.tower();
        let app = app(SessionManagerLayer::new(store.clone())
            .with_expiry(expiry)
            .with_always_save(true));
        let first = set_cookie(&get(&app, "/insert").await).expect("a cookie");
        let rec1 = store.load(&id_of(&first)).await.expect("load").expect("saved");
        let second = set_cookie(&get_with(&app, "/insert", Some(&first)).await).expect("always saved: a cookie");
        assert_eq!(second.value(), first.value(), "same session id");
        let rec2 = store.load(&id_of(&second)).await.expect("load").expect("saved");
        assert_eq!(rec2.data, rec1.data);
        (f, second, [rec1.expiry_date, rec2.expiry_date])
    }

    #[tokio::test]
    async fn always_save_on_session_end_moves_the_stored_expiry_later() {
        let (_f, cookie, [first, second]) = two_saves(Expiry::OnSessionEnd).await;
        assert!(cookie.max_age().is_none());
        assert!(first < second, "{first} then {second}");
    }

    #[tokio::test]
    async fn always_save_on_inactivity_moves_the_stored_expiry_later() {
        let inactivity = Duration::hours(2);
        let (_f, cookie, [first, second]) = two_saves(Expiry::OnInactivity(inactivity)).await;
        assert!(tower_http::about(cookie.max_age().expect("Max-Age"), inactivity));
        assert!(first < second, "{first} then {second}");
    }

    #[tokio::test]
    async fn always_save_at_date_time_keeps_the_stored_expiry() {
        let at = OffsetDateTime::now_utc() + Duration::weeks(1);
        let (_f, cookie, [first, second]) = two_saves(Expiry::AtDateTime(at)).await;
        assert!(tower_http::about(
            cookie.max_age().expect("Max-Age"),
            at - OffsetDateTime::now_utc()
        ));
        assert_eq!((first, second), (at, at));
    }
}

/// The route suite of tower-sessions' `tests/` (and tower-sessions-stores' `tests/`, which adds
/// `expired`): a session used across requests through a router.
mod tower_routes {
    use time::{Duration, OffsetDateTime};
    use tower_sessions::cookie::{Cookie, SameSite};
    use tower_sessions::session::Id;
    use tower_sessions::{Expiry, SessionManagerLayer, SessionStore as _};

    use super::tower_http::{about, app, get, get_with, id_of, set_cookie, text, App};
    use super::*;

    /// The upstream suites' app: secure cookies, optionally an inactivity expiry and a domain.
    fn suite_app(f: &Fixture, max_age: Option<Duration>, domain: Option<&str>) -> App {
        let mut layer = SessionManagerLayer::new(f.tower()).with_secure(true);
        if let Some(max_age) = max_age {
            layer = layer.with_expiry(Expiry::OnInactivity(max_age));
        }
        if let Some(domain) = domain {
            layer = layer.with_domain(domain.to_string());
        }
        app(layer)
    }

    async fn inserted(app: &App) -> Cookie<'static> {
        set_cookie(&get(app, "/insert").await).expect("a session cookie")
    }

    #[tokio::test]
    async fn request_not_using_the_session_sets_no_cookie() {
        let f = Fixture::at_wall_clock();
        let res = get(&suite_app(&f, Some(Duration::hours(1)), None), "/").await;
        assert!(set_cookie(&res).is_none());
    }

    #[tokio::test]
    async fn well_formed_unknown_id_is_replaced_by_a_new_one() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let unknown = Cookie::new("id", "AAAAAAAAAAAAAAAAAAAAAA");
        let res = get_with(&app, "/insert", Some(&unknown)).await;
        assert!(res.status().is_success());
        let cookie = set_cookie(&res).expect("a session cookie");
        assert_ne!(cookie.value(), "AAAAAAAAAAAAAAAAAAAAAA");
        let store = f.tower();
        assert_eq!(store.load(&id_of(&unknown)).await.expect("load"), None, "not created");
        assert!(store.load(&id_of(&cookie)).await.expect("load").is_some());
        assert_eq!(f.sessions.count().expect("count"), 1);
    }

    #[tokio::test]
    async fn malformed_cookie_is_not_sent_back() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let res = get_with(&app, "/", Some(&Cookie::new("id", "malformed"))).await;
        assert!(res.status().is_success());
        let cookie = set_cookie(&res).expect("a cookie");
        assert_ne!(cookie.value(), "malformed");
        assert_eq!(f.sessions.count().expect("count"), 0);
    }

    #[tokio::test]
    async fn insert_sets_a_secure_http_only_strict_cookie_within_max_age() {
        let f = Fixture::at_wall_clock();
        let cookie = inserted(&suite_app(&f, Some(Duration::hours(1)), None)).await;
        assert_eq!(cookie.name(), "id");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Strict));
        let max_age = cookie.max_age().expect("Max-Age");
        assert!(max_age <= Duration::hours(1) && max_age > Duration::ZERO, "{max_age}");
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.path(), Some("/"));
    }

    #[tokio::test]
    async fn without_an_inactivity_expiry_the_cookie_has_no_max_age() {
        let f = Fixture::at_wall_clock();
        let cookie = inserted(&suite_app(&f, None, None)).await;
        assert_eq!(cookie.name(), "id");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Strict));
        assert!(cookie.max_age().is_none());
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.path(), Some("/"));
    }

    #[tokio::test]
    async fn inserted_value_is_read_on_the_next_request() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let cookie = inserted(&app).await;
        let res = get_with(&app, "/get", Some(&cookie)).await;
        assert!(res.status().is_success());
        assert_eq!(text(res).await, "42");
    }

    #[tokio::test]
    async fn value_never_inserted_reads_as_none() {
        let f = Fixture::at_wall_clock();
        let res = get(&suite_app(&f, Some(Duration::hours(1)), None), "/get_value").await;
        assert_eq!(text(res).await, "None");
    }

    #[tokio::test]
    async fn removed_last_value_reads_as_none() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        for remove in ["/remove_value", "/remove"] {
            let cookie = inserted(&app).await;
            get_with(&app, remove, Some(&cookie)).await;
            assert_eq!(
                text(get_with(&app, "/get_value", Some(&cookie)).await).await,
                "None",
                "{remove}"
            );
            let rec = f.tower().load(&id_of(&cookie)).await.expect("load").expect("kept");
            assert!(rec.data.is_empty(), "{remove}: the store still has the value");
        }
    }

    #[tokio::test]
    async fn cycle_id_moves_the_data_to_a_new_id_and_drops_the_old() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let first = inserted(&app).await;
        let second = set_cookie(&get_with(&app, "/cycle_id", Some(&first)).await).expect("a new cookie");
        assert_ne!(first.value(), second.value());
        assert_eq!(text(get_with(&app, "/get", Some(&second)).await).await, "42");
        assert_eq!(f.tower().load(&id_of(&first)).await.expect("load"), None, "old id kept");
        assert_eq!(f.sessions.count().expect("count"), 1);
    }

    #[tokio::test]
    async fn flush_deletes_the_session_and_expires_the_cookie() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let cookie = inserted(&app).await;
        let removal = set_cookie(&get_with(&app, "/flush", Some(&cookie)).await).expect("a removal cookie");
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(Duration::ZERO));
        assert_eq!(removal.path(), Some("/"));
        assert_eq!(f.tower().load(&id_of(&cookie)).await.expect("load"), None);
        assert_eq!(f.sessions.count().expect("count"), 0);
    }

    #[tokio::test]
    async fn flush_removal_cookie_keeps_the_domain() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), Some("localhost"));
        let cookie = inserted(&app).await;
        let removal = set_cookie(&get_with(&app, "/flush", Some(&cookie)).await).expect("a removal cookie");
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(Duration::ZERO));
        assert_eq!(removal.domain(), Some("localhost"));
        assert_eq!(removal.path(), Some("/"));
        assert_eq!(f.tower().load(&id_of(&cookie)).await.expect("load"), None);
    }

    /// Not in the route suite: `Session::clear`'s documented behaviour, over this store.
    #[tokio::test]
    async fn clear_empties_the_data_and_keeps_the_session() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), None);
        let cookie = inserted(&app).await;
        let after = set_cookie(&get_with(&app, "/clear", Some(&cookie)).await).expect("saved");
        assert_eq!(after.value(), cookie.value(), "same session");
        assert_eq!(text(get_with(&app, "/get_value", Some(&cookie)).await).await, "None");
        let rec = f.tower().load(&id_of(&cookie)).await.expect("load").expect("kept");
        assert!(rec.data.is_empty());
    }

    #[tokio::test]
    async fn set_expiry_replaces_the_inactivity_max_age() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::hours(1)), Some("localhost"));
        let cookie = inserted(&app).await;
        assert!(about(cookie.max_age().expect("Max-Age"), Duration::hours(1)));
        let res = get_with(&app, "/set_expiry", Some(&cookie)).await;
        let cookie = set_cookie(&res).expect("a cookie");
        assert!(about(cookie.max_age().expect("Max-Age"), Duration::days(1)));
        let rec = f.tower().load(&id_of(&cookie)).await.expect("load").expect("saved");
        assert!(about(rec.expiry_date - OffsetDateTime::now_utc(), Duration::days(1)));
    }

    #[tokio::test]
    async fn expiry_type_changes_between_session_end_and_a_date() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, None, Some("localhost"));
        let cookie = inserted(&app).await;
        assert_eq!(cookie.max_age(), None);
        let cookie = set_cookie(&get_with(&app, "/set_expiry", Some(&cookie)).await).expect("a cookie");
        assert!(about(cookie.max_age().expect("Max-Age"), Duration::days(1)));

        let app = suite_app(&f, Some(Duration::hours(1)), Some("localhost"));
        let cookie = inserted(&app).await;
        assert!(about(cookie.max_age().expect("Max-Age"), Duration::hours(1)));
        let cookie = set_cookie(&get_with(&app, "/remove_expiry", Some(&cookie)).await).expect("a cookie");
        assert_eq!(cookie.max_age(), None);
        assert!(f.tower().load(&id_of(&cookie)).await.expect("load").is_some());
    }

    /// tower-sessions-stores' `expired`: upstream sleeps past a one-second inactivity expiry; here
    /// the store's clock moves past it.
    #[tokio::test]
    async fn session_past_its_inactivity_expiry_reads_as_none() {
        let f = Fixture::at_wall_clock();
        let app = suite_app(&f, Some(Duration::seconds(1)), None);
        let cookie = inserted(&app).await;
        assert_eq!(
            text(get_with(&app, "/get_value", Some(&cookie)).await).await,
            "Some(Number(42))"
        );
        f.clock.advance(StdDuration::from_secs(60));
        assert_eq!(text(get_with(&app, "/get_value", Some(&cookie)).await).await, "None");
        let id: Id = id_of(&cookie);
        assert_eq!(f.tower().load(&id).await.expect("load"), None);
    }
}

/// tower-sessions-stores' `caching_store_tests`: a `CachingSessionStore` (an in-memory cache in
/// front of a persistent store) with sessiondb as the persistent store.
mod tower_caching_store {
    use time::Duration;
    use tower_sessions::{CachingSessionStore, Expiry, MemoryStore, SessionManagerLayer, SessionStore as _};

    use super::tower_http::{app, get, get_with, id_of, set_cookie, text};
    use super::*;

    #[tokio::test]
    async fn session_round_trips_and_reads_through_a_cold_cache() {
        let f = Fixture::at_wall_clock();
        let layer = |cache: MemoryStore| {
            SessionManagerLayer::new(CachingSessionStore::new(cache, f.tower()))
                .with_expiry(Expiry::OnInactivity(Duration::hours(1)))
        };
        let warm = app(layer(MemoryStore::default()));
        let cookie = set_cookie(&get(&warm, "/insert").await).expect("a cookie");
        assert_eq!(text(get_with(&warm, "/get", Some(&cookie)).await).await, "42");
        let rec = f
            .tower()
            .load(&id_of(&cookie))
            .await
            .expect("load")
            .expect("written through");
        assert_eq!(rec.data["foo"], serde_json::json!(42));

        // A new cache (a restart): the session is read from sessiondb.
        let cold = app(layer(MemoryStore::default()));
        assert_eq!(text(get_with(&cold, "/get", Some(&cookie)).await).await, "42");
        // Flushed through the cache: gone from sessiondb too.
        get_with(&cold, "/flush", Some(&cookie)).await;
        assert_eq!(f.tower().load(&id_of(&cookie)).await.expect("load"), None);
    }
}

/// actix-session: handlers shaped like those of its acceptance suite, and cookie helpers.
mod actix_http {
    use actix_session::config::{CookieContentSecurity, PersistentSession};
    use actix_session::{Session, SessionMiddleware};
    use actix_web::body::MessageBody;
    use actix_web::cookie::{Cookie, CookieJar, Key};
    use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
    use actix_web::web::ServiceConfig;
    use actix_web::{web, App, HttpResponse};
    use serde::{Deserialize, Serialize};
    use sessiondb::session::actix::ActixStore;

    pub const POLICIES: [CookieContentSecurity; 2] = [CookieContentSecurity::Signed, CookieContentSecurity::Private];

    /// The `SessionMiddleware` settings the tests vary; each one left `None` is not set, so the
    /// builder's default stands (private cookies named `id` on `/`, no domain, a browser session).
    #[derive(Default)]
    pub struct Settings {
        pub security: Option<CookieContentSecurity>,
        pub lifecycle: Option<PersistentSession>,
        pub name: Option<&'static str>,
        pub path: Option<&'static str>,
        pub domain: Option<&'static str>,
    }

    impl Settings {
        /// Cookies sealed with `policy`, everything else the builder's default.
        pub fn sealed_with(policy: CookieContentSecurity) -> Settings {
            Settings {
                security: Some(policy),
                ..Settings::default()
            }
        }

        /// The app the tests serve (`test::init_service`): `routes` behind a `SessionMiddleware`
        /// over `store` with cookies signed or encrypted with `key` and these settings.
        pub fn app(
            self,
            store: ActixStore,
            key: Key,
            routes: fn(&mut ServiceConfig),
        ) -> App<
            impl ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<impl MessageBody>,
                Error = actix_web::Error,
                InitError = (),
            >,
        > {
            let mut builder = SessionMiddleware::builder(store, key);
            if let Some(path) = self.path {
                builder = builder.cookie_path(path.to_string());
            }
            if let Some(name) = self.name {
                builder = builder.cookie_name(name.to_string());
            }
            if let Some(domain) = self.domain {
                builder = builder.cookie_domain(Some(domain.to_string()));
            }
            if let Some(policy) = self.security {
                builder = builder.cookie_content_security(policy);
            }
            if let Some(lifecycle) = self.lifecycle {
                builder = builder.session_lifecycle(lifecycle);
            }
            App::new().wrap(builder.build()).configure(routes)
        }
    }

    /// What the state handlers answer.
    #[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Visit {
        pub user_id: Option<String>,
        pub counter: i32,
    }

    impl Visit {
        pub fn new(user_id: Option<&str>, counter: i32) -> Visit {
            Visit {
                user_id: user_id.map(str::to_string),
                counter,
            }
        }
    }

    fn counter(session: &Session) -> i32 {
        session.get::<i32>("counter").ok().flatten().unwrap_or(0)
    }

    fn user(session: &Session) -> Option<String> {
        session.get::<String>("user_id").expect("user_id decodes")
    }

    /// Reads the state, changes nothing.
    pub async fn index(session: Session) -> HttpResponse {
        HttpResponse::Ok().json(Visit {
            user_id: user(&session),
            counter: counter(&session),
        })
    }

    /// Adds one to the counter.
    pub async fn do_something(session: Session) -> actix_web::Result<HttpResponse> {
        let counter = counter(&session) + 1;
        session.insert("counter", counter)?;
        Ok(HttpResponse::Ok().json(Visit {
            user_id: user(&session),
            counter,
        }))
    }

    /// Reads the counter, which must be set (behind the guard).
    pub async fn count(session: Session) -> HttpResponse {
        let counter = session.get::<i32>("counter").expect("decodes").expect("set");
        HttpResponse::Ok().json(Visit {
            user_id: user(&session),
            counter,
        })
    }

    #[derive(Deserialize)]
    pub struct Login {
        user_id: String,
    }

    /// Records the user and renews the session key.
    pub async fn login(who: web::Json<Login>, session: Session) -> actix_web::Result<HttpResponse> {
        session.insert("user_id", &who.user_id)?;
        session.renew();
        Ok(HttpResponse::Ok().json(Visit {
            user_id: Some(who.user_id.clone()),
            counter: counter(&session),
        }))
    }

    /// Purges the session of a logged-in user.
    pub async fn logout(session: Session) -> HttpResponse {
        match user(&session) {
            Some(id) => {
                session.purge();
                HttpResponse::Ok().body(format!("bye {id}"))
            }
            None => HttpResponse::Ok().body("nobody to log out"),
        }
    }

    pub fn cookie_named<B>(res: &ServiceResponse<B>, name: &str) -> Option<Cookie<'static>> {
        res.response()
            .cookies()
            .find(|c| c.name() == name)
            .map(|c| c.into_owned())
    }

    pub fn no_cookies<B>(res: &ServiceResponse<B>) -> bool {
        res.response().cookies().next().is_none()
    }

    /// The session key inside a cookie the middleware set (signed or encrypted with `key`).
    pub fn key_in(cookie: &Cookie<'static>, key: &Key, policy: CookieContentSecurity) -> String {
        let mut jar = CookieJar::new();
        jar.add_original(cookie.clone());
        let opened = match policy {
            CookieContentSecurity::Signed => jar.signed(key).get(cookie.name()),
            CookieContentSecurity::Private => jar.private(key).get(cookie.name()),
        };
        opened.expect("the cookie opens with the key").value().to_string()
    }

    /// A cookie named `name` holding `value`, signed or encrypted with `key` as the middleware
    /// would have made it.
    pub fn sealed(name: &str, value: &str, key: &Key, policy: CookieContentSecurity) -> Cookie<'static> {
        let mut jar = CookieJar::new();
        let plain = Cookie::new(name.to_string(), value.to_string());
        match policy {
            CookieContentSecurity::Signed => jar.signed_mut(key).add(plain),
            CookieContentSecurity::Private => jar.private_mut(key).add(plain),
        }
        jar.get(name).expect("added").clone()
    }
}

/// actix-session's `acceptance_test_suite` (each test over both cookie content policies, as
/// upstream runs it), with `is_invalidation_supported` true: sessiondb forgets a renewed or
/// purged session. Upstream runs two of its tests against a real server; here every test is an
/// `actix_web::test` service.
mod actix_acceptance {
    use actix_session::config::{PersistentSession, TtlExtensionPolicy};
    use actix_session::storage::{SessionKey, SessionStore as _};
    use actix_session::{Session, SessionExt};
    use actix_web::cookie::{time, Key};
    use actix_web::web::{self, get, post, resource, Bytes, ServiceConfig};
    use actix_web::{guard, test};

    use super::actix_http::{
        cookie_named, count, do_something, index, key_in, login, logout, no_cookies, Settings, Visit, POLICIES,
    };
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn session_key(s: &str) -> SessionKey {
        SessionKey::try_from(s.to_string()).expect("a session key")
    }

    async fn set_counter(session: Session) -> actix_web::Result<&'static str> {
        session.insert("counter", 100)?;
        Ok("test")
    }

    async fn show_counter(session: Session) -> String {
        let counter: usize = session.get("counter").expect("decodes").expect("set");
        format!("counter: {counter}")
    }

    /// `/` sets the counter, `/test/` leaves the session alone.
    fn counter_and_no_changes(cfg: &mut ServiceConfig) {
        cfg.service(resource("/").to(set_counter))
            .service(resource("/test/").to(|| async { "no-changes-in-session" }));
    }

    #[actix_web::test]
    async fn basic_workflow_state_round_trips_under_the_configured_cookie() {
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let key = Key::generate();
            let settings = Settings {
                path: Some("/test/"),
                name: Some("actix-test"),
                domain: Some("localhost"),
                lifecycle: Some(PersistentSession::default().session_ttl(time::Duration::seconds(100))),
                ..Settings::sealed_with(policy)
            };
            let app = test::init_service(settings.app(f.actix(), key.clone(), |cfg| {
                cfg.service(resource("/").to(set_counter))
                    .service(resource("/test/").to(show_counter));
            }))
            .await;

            let res = test::call_service(&app, test::TestRequest::get().to_request()).await;
            let cookie = cookie_named(&res, "actix-test").expect("a session cookie");
            assert_eq!(cookie.path(), Some("/test/"));
            let stored = f.actix().load(&session_key(&key_in(&cookie, &key, policy))).await;
            assert_eq!(stored.expect("load").expect("saved")["counter"], "100", "{policy:?}");

            let req = test::TestRequest::with_uri("/test/").cookie(cookie).to_request();
            let body = test::call_and_read_body(&app, req).await;
            assert_eq!(body, Bytes::from_static(b"counter: 100"), "{policy:?}");
        }
    }

    #[actix_web::test]
    async fn expiration_is_refreshed_only_on_changes_by_default() {
        let ttl = time::Duration::seconds(60);
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let settings = Settings {
                lifecycle: Some(PersistentSession::default().session_ttl(ttl)),
                ..Settings::sealed_with(policy)
            };
            let app = test::init_service(settings.app(f.actix(), Key::generate(), counter_and_no_changes)).await;

            let res = test::call_service(&app, test::TestRequest::get().to_request()).await;
            let first = cookie_named(&res, "id").expect("a session cookie");
            assert_eq!(first.max_age(), Some(ttl));

            let req = test::TestRequest::with_uri("/test/").cookie(first.clone()).to_request();
            let res = test::call_service(&app, req).await;
            assert!(no_cookies(&res), "{policy:?}: cookie for an unchanged session");

            let req = test::TestRequest::get().cookie(first).to_request();
            let res = test::call_service(&app, req).await;
            let second = cookie_named(&res, "id").expect("a cookie after a change");
            assert_eq!(second.max_age(), Some(ttl));
        }
    }

    #[actix_web::test]
    async fn expiration_is_refreshed_on_every_request_when_configured() {
        let ttl = time::Duration::seconds(60);
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let settings = Settings {
                lifecycle: Some(
                    PersistentSession::default()
                        .session_ttl(ttl)
                        .session_ttl_extension_policy(TtlExtensionPolicy::OnEveryRequest),
                ),
                ..Settings::sealed_with(policy)
            };
            let app = test::init_service(settings.app(f.actix(), Key::generate(), counter_and_no_changes)).await;

            let res = test::call_service(&app, test::TestRequest::get().to_request()).await;
            let first = cookie_named(&res, "id").expect("a session cookie");
            assert_eq!(first.max_age(), Some(ttl));

            let req = test::TestRequest::with_uri("/test/").cookie(first).to_request();
            let res = test::call_service(&app, req).await;
            let second = cookie_named(&res, "id").expect("a cookie on every request");
            assert_eq!(second.max_age(), Some(ttl), "{policy:?}");
        }
    }

    #[actix_web::test]
    async fn login_renews_the_key_and_logout_purges_the_session() {
        let ttl = time::Duration::days(7);
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let key = Key::generate();
            let settings = Settings {
                name: Some("test-session"),
                lifecycle: Some(PersistentSession::default().session_ttl(ttl)),
                ..Settings::sealed_with(policy)
            };
            let app = test::init_service(settings.app(f.actix(), key.clone(), |cfg| {
                cfg.service(resource("/").route(get().to(index)))
                    .service(resource("/do_something").route(post().to(do_something)))
                    .service(resource("/login").route(post().to(login)))
                    .service(resource("/logout").route(post().to(logout)));
            }))
            .await;
            let name = "test-session";

            // 1. A fresh, empty session: no cookie, nothing stored.
            let res = test::call_service(&app, test::TestRequest::get().to_request()).await;
            assert!(no_cookies(&res));
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
            assert_eq!(f.sessions.count().expect("count"), 0);

            // 2. A change: stored, cookie #1 with the session's time-to-live.
            let req = test::TestRequest::post().uri("/do_something").to_request();
            let res = test::call_service(&app, req).await;
            let cookie1 = cookie_named(&res, name).expect("cookie #1");
            assert_eq!(cookie1.max_age(), Some(ttl));
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));

            // 3. A read with cookie #1: the state, no cookie.
            let req = test::TestRequest::get().cookie(cookie1.clone()).to_request();
            let res = test::call_service(&app, req).await;
            assert!(no_cookies(&res));
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));

            // 4. Another change: cookie #2, same lifetime.
            let req = test::TestRequest::post()
                .uri("/do_something")
                .cookie(cookie1.clone())
                .to_request();
            let res = test::call_service(&app, req).await;
            let cookie2 = cookie_named(&res, name).expect("cookie #2");
            assert_eq!(cookie2.max_age(), cookie1.max_age());
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 2));

            // 5. Login renews: cookie #3 with another key, the state carried over.
            let req = test::TestRequest::post()
                .uri("/login")
                .cookie(cookie2.clone())
                .set_json(serde_json::json!({"user_id": "ferris"}))
                .to_request();
            let res = test::call_service(&app, req).await;
            let cookie3 = cookie_named(&res, name).expect("cookie #3");
            assert_ne!(cookie2.value(), cookie3.value());
            assert_ne!(key_in(&cookie2, &key, policy), key_in(&cookie3, &key, policy));
            assert_eq!(
                test::read_body_json::<Visit, _>(res).await,
                Visit::new(Some("ferris"), 2)
            );

            // 6. Read with cookie #3.
            let req = test::TestRequest::get().cookie(cookie3.clone()).to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(
                test::read_body_json::<Visit, _>(res).await,
                Visit::new(Some("ferris"), 2)
            );

            // 7. Change with cookie #3.
            let req = test::TestRequest::post()
                .uri("/do_something")
                .cookie(cookie3.clone())
                .to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(
                test::read_body_json::<Visit, _>(res).await,
                Visit::new(Some("ferris"), 3)
            );

            // 8. Cookie #2 was invalidated by the renewal: an empty session, no cookie.
            let req = test::TestRequest::get().cookie(cookie2.clone()).to_request();
            let res = test::call_service(&app, req).await;
            assert!(no_cookies(&res), "{policy:?}: the renewed-away session answered");
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
            assert_eq!(f.sessions.count().expect("count"), 1, "the old key's state is gone");

            // 9. Logout purges: a removal cookie.
            let req = test::TestRequest::post()
                .uri("/logout")
                .cookie(cookie3.clone())
                .to_request();
            let res = test::call_service(&app, req).await;
            let removal = cookie_named(&res, name).expect("a removal cookie");
            assert_eq!(removal.max_age().map(|d| d.whole_seconds()), Some(0));
            assert_eq!(removal.path(), Some("/"));
            assert_eq!(f.sessions.count().expect("count"), 0, "purged session still stored");

            // 10. Cookie #3 no longer finds anything.
            let req = test::TestRequest::get().cookie(cookie3).to_request();
            let res = test::call_service(&app, req).await;
            assert!(no_cookies(&res));
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
        }
    }

    #[actix_web::test]
    async fn guard_reads_the_session_state() {
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let settings = Settings {
                name: Some("test-session"),
                lifecycle: Some(PersistentSession::default().session_ttl(time::Duration::days(7))),
                ..Settings::sealed_with(policy)
            };
            let app = test::init_service(settings.app(f.actix(), Key::generate(), |cfg| {
                cfg.service(resource("/do_something").route(post().to(do_something)))
                    .service(resource("/login").route(post().to(login)))
                    .service(
                        web::scope("/protected")
                            .guard(guard::fn_guard(|g| {
                                g.get_session().get::<String>("user_id").ok().flatten().is_some()
                            }))
                            .service(resource("/count").route(get().to(count))),
                    );
            }))
            .await;
            let name = "test-session";

            let req = test::TestRequest::get().uri("/protected/count").to_request();
            let res = test::call_service(&app, req).await;
            assert!(!res.status().is_success(), "the guard let an anonymous request in");

            let req = test::TestRequest::post()
                .uri("/login")
                .set_json(serde_json::json!({"user_id": "ferris"}))
                .to_request();
            let cookie1 = cookie_named(&test::call_service(&app, req).await, name).expect("cookie #1");

            let req = test::TestRequest::post()
                .uri("/do_something")
                .cookie(cookie1)
                .to_request();
            let res = test::call_service(&app, req).await;
            let cookie2 = cookie_named(&res, name).expect("cookie #2");
            assert_eq!(
                test::read_body_json::<Visit, _>(res).await,
                Visit::new(Some("ferris"), 1)
            );

            let req = test::TestRequest::get()
                .uri("/protected/count")
                .cookie(cookie2)
                .to_request();
            let res = test::call_service(&app, req).await;
            assert!(res.status().is_success(), "{policy:?}: the guard did not see the user");
            assert_eq!(
                test::read_body_json::<Visit, _>(res).await,
                Visit::new(Some("ferris"), 1)
            );
        }
    }
}

/// actix-session's middleware test (`tests/middleware.rs`) and what its middleware does with the
/// store on each path (`renew`, `purge`, the TTL extension policies, a cookie that names nothing),
/// checked in the store with the clock moved instead of slept.
mod actix_middleware {
    use actix_session::config::{CookieContentSecurity, PersistentSession, TtlExtensionPolicy};
    use actix_session::storage::{SessionKey, SessionStore as _};
    use actix_session::Session;
    use actix_web::cookie::{time, Cookie, Key};
    use actix_web::test;
    use actix_web::web::{get, post, ServiceConfig};

    use super::actix_http::{
        cookie_named, do_something, index, key_in, login, no_cookies, sealed, Settings, Visit, POLICIES,
    };
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn stored_key(s: &str) -> SessionKey {
        SessionKey::try_from(s.to_string()).expect("a session key")
    }

    async fn sign_in(session: Session) -> actix_web::Result<&'static str> {
        session.insert("user_id", "id")?;
        Ok("Logged in")
    }

    async fn sign_out(session: Session) -> &'static str {
        session.purge();
        "Logged out"
    }

    #[actix_web::test]
    async fn purge_deletes_the_session_and_sends_a_matching_removal_cookie() {
        let f = Fixture::at(T0);
        let key = Key::generate();
        let settings = Settings {
            path: Some("/test"),
            domain: Some("localhost"),
            ..Settings::default()
        };
        let app = test::init_service(settings.app(f.actix(), key.clone(), |cfg| {
            cfg.route("/login", post().to(sign_in))
                .route("/logout", post().to(sign_out));
        }))
        .await;

        let res = test::call_service(&app, test::TestRequest::post().uri("/login").to_request()).await;
        let cookie = cookie_named(&res, "id").expect("a session cookie");
        assert_eq!(cookie.path(), Some("/test"));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.max_age(), None, "a browser session by default");
        assert_eq!(cookie.domain(), Some("localhost"));
        let key_of_session = stored_key(&key_in(&cookie, &key, CookieContentSecurity::Private));
        assert!(f.actix().load(&key_of_session).await.expect("load").is_some());

        let req = test::TestRequest::post().uri("/logout").cookie(cookie).to_request();
        let res = test::call_service(&app, req).await;
        let removal = cookie_named(&res, "id").expect("a removal cookie");
        assert_eq!(removal.path(), Some("/test"));
        assert_eq!(removal.secure(), Some(true));
        assert_eq!(removal.http_only(), Some(true));
        assert_eq!(removal.max_age(), Some(time::Duration::ZERO));
        assert_eq!(removal.domain(), Some("localhost"));
        assert_eq!(
            f.actix().load(&key_of_session).await.expect("load"),
            None,
            "purged but stored"
        );
    }

    #[actix_web::test]
    async fn renew_moves_the_state_to_a_new_key_and_deletes_the_old_one() {
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let key = Key::generate();
            let app = test::init_service(Settings::sealed_with(policy).app(f.actix(), key.clone(), |cfg| {
                cfg.route("/do_something", post().to(do_something))
                    .route("/login", post().to(login));
            }))
            .await;
            let req = test::TestRequest::post().uri("/do_something").to_request();
            let before = cookie_named(&test::call_service(&app, req).await, "id").expect("a cookie");
            let req = test::TestRequest::post()
                .uri("/login")
                .cookie(before.clone())
                .set_json(serde_json::json!({"user_id": "ferris"}))
                .to_request();
            let after = cookie_named(&test::call_service(&app, req).await, "id").expect("a cookie");
            let (old, new) = (key_in(&before, &key, policy), key_in(&after, &key, policy));
            assert_ne!(old, new);
            let store = f.actix();
            assert_eq!(store.load(&stored_key(&old)).await.expect("load"), None, "old key kept");
            let state = store.load(&stored_key(&new)).await.expect("load").expect("state moved");
            assert_eq!(state["counter"], "1");
            assert_eq!(state["user_id"], "\"ferris\"");
        }
    }

    /// The state routes: `GET /` reads, `POST /do_something` changes.
    fn read_and_change(cfg: &mut ServiceConfig) {
        cfg.route("/", get().to(index))
            .route("/do_something", post().to(do_something));
    }

    /// A sixty-second time-to-live extended by `policy`, the rest the builder's default.
    fn ttl_of_a_minute(policy: TtlExtensionPolicy) -> Settings {
        Settings {
            lifecycle: Some(
                PersistentSession::default()
                    .session_ttl(time::Duration::seconds(60))
                    .session_ttl_extension_policy(policy),
            ),
            ..Settings::default()
        }
    }

    #[actix_web::test]
    async fn on_every_request_an_unchanged_session_gets_its_ttl_extended_in_the_store() {
        let f = Fixture::at(T0);
        let key = Key::generate();
        let settings = ttl_of_a_minute(TtlExtensionPolicy::OnEveryRequest);
        let app = test::init_service(settings.app(f.actix(), key.clone(), read_and_change)).await;
        let req = test::TestRequest::post().uri("/do_something").to_request();
        let cookie = cookie_named(&test::call_service(&app, req).await, "id").expect("a cookie");

        f.clock.advance(StdDuration::from_secs(50));
        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie.clone()).to_request()).await;
        assert!(cookie_named(&res, "id").is_some(), "cookie refreshed");
        // 100 s after the session was created, 50 s after the read: still there.
        f.clock.advance(StdDuration::from_secs(50));
        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie.clone()).to_request()).await;
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));
        // And gone a time-to-live after the last request.
        f.clock.advance(StdDuration::from_secs(61));
        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie).to_request()).await;
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
    }

    #[actix_web::test]
    async fn on_state_changes_an_unchanged_session_expires_a_ttl_after_its_last_change() {
        let f = Fixture::at(T0);
        let key = Key::generate();
        let settings = ttl_of_a_minute(TtlExtensionPolicy::OnStateChanges);
        let app = test::init_service(settings.app(f.actix(), key.clone(), read_and_change)).await;
        let req = test::TestRequest::post().uri("/do_something").to_request();
        let cookie = cookie_named(&test::call_service(&app, req).await, "id").expect("a cookie");
        let stored = stored_key(&key_in(&cookie, &key, CookieContentSecurity::Private));

        f.clock.advance(StdDuration::from_secs(50));
        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie.clone()).to_request()).await;
        assert!(no_cookies(&res), "cookie sent for an unchanged session");
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));
        // A change extends it: 50 s later it is 100 s old and still there.
        let req = test::TestRequest::post()
            .uri("/do_something")
            .cookie(cookie.clone())
            .to_request();
        let res = test::call_service(&app, req).await;
        assert!(cookie_named(&res, "id").is_some(), "no cookie after a change");
        f.clock.advance(StdDuration::from_secs(50));
        assert!(
            f.actix().load(&stored).await.expect("load").is_some(),
            "the change did not extend it"
        );
        // The read above did not: 61 s after the change it is gone, and the cookie starts afresh.
        f.clock.advance(StdDuration::from_secs(11));
        assert_eq!(f.actix().load(&stored).await.expect("load"), None);
        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie).to_request()).await;
        assert!(no_cookies(&res));
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
    }

    #[actix_web::test]
    async fn cookie_failing_its_check_starts_a_fresh_session() {
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let key = Key::generate();
            let app =
                test::init_service(Settings::sealed_with(policy).app(f.actix(), key.clone(), read_and_change)).await;
            // A real session's key, but unsigned / unencrypted: it must not be accepted.
            let req = test::TestRequest::post().uri("/do_something").to_request();
            let real = cookie_named(&test::call_service(&app, req).await, "id").expect("a cookie");
            let bare = Cookie::new("id", key_in(&real, &key, policy));
            for garbage in [Cookie::new("id", "garbage"), bare] {
                let req = test::TestRequest::get().cookie(garbage.clone()).to_request();
                let res = test::call_service(&app, req).await;
                assert!(no_cookies(&res));
                assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));
                let req = test::TestRequest::post()
                    .uri("/do_something")
                    .cookie(garbage.clone())
                    .to_request();
                let res = test::call_service(&app, req).await;
                let fresh = cookie_named(&res, "id").expect("a new cookie");
                assert_ne!(fresh.value(), garbage.value());
                assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));
            }
            assert_eq!(f.sessions.count().expect("count"), 3, "{policy:?}");
        }
    }

    #[actix_web::test]
    async fn authentic_cookie_naming_no_session_starts_a_fresh_one_under_a_new_key() {
        for policy in POLICIES {
            let f = Fixture::at(T0);
            let key = Key::generate();
            let app =
                test::init_service(Settings::sealed_with(policy).app(f.actix(), key.clone(), read_and_change)).await;
            let unknown = SessionId::generate().expect("an id").to_string();
            let cookie = sealed("id", &unknown, &key, policy);
            let res = test::call_service(&app, test::TestRequest::get().cookie(cookie.clone()).to_request()).await;
            assert!(no_cookies(&res));
            assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));

            let req = test::TestRequest::post()
                .uri("/do_something")
                .cookie(cookie)
                .to_request();
            let res = test::call_service(&app, req).await;
            let fresh = cookie_named(&res, "id").expect("a new cookie");
            let fresh_key = key_in(&fresh, &key, policy);
            assert_ne!(fresh_key, unknown, "{policy:?}: the client chose the session key");
            assert_eq!(f.actix().load(&stored_key(&unknown)).await.expect("load"), None);
            assert!(f.actix().load(&stored_key(&fresh_key)).await.expect("load").is_some());
        }
    }

    /// The middleware treats state that does not deserialize as an empty session under the same
    /// key (and a change then overwrites it there).
    #[actix_web::test]
    async fn state_that_does_not_deserialize_reads_as_an_empty_session() {
        let f = Fixture::at(T0);
        let key = Key::generate();
        let settings = ttl_of_a_minute(TtlExtensionPolicy::OnStateChanges);
        let app = test::init_service(settings.app(f.actix(), key.clone(), read_and_change)).await;
        let id = SessionId::generate().expect("an id");
        let created = f
            .sessions
            .create_with_id(&id, b"random-thing-which-is-not-json", StdDuration::from_secs(60))
            .expect("create");
        assert!(created);
        let cookie = sealed("id", &id.to_string(), &key, CookieContentSecurity::Private);

        let res = test::call_service(&app, test::TestRequest::get().cookie(cookie.clone()).to_request()).await;
        assert!(res.status().is_success());
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 0));

        let req = test::TestRequest::post()
            .uri("/do_something")
            .cookie(cookie)
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(test::read_body_json::<Visit, _>(res).await, Visit::new(None, 1));
        let state = f.actix().load(&stored_key(&id.to_string())).await.expect("now decodes");
        assert_eq!(state.expect("stored under the same key")["counter"], "1");
    }
}

/// actix-session's Redis store tests (`src/storage/redis_rs.rs`): the `SessionStore` trait called
/// directly.
mod actix_store {
    use std::collections::HashMap;

    use actix_session::storage::{LoadError, SessionKey, SessionStore as _};

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn fresh_key() -> SessionKey {
        SessionKey::try_from(SessionId::generate().expect("an id").to_string()).expect("a key")
    }

    #[actix_web::test]
    async fn loading_a_missing_session_returns_none() {
        let f = Fixture::at(T0);
        assert_eq!(f.actix().load(&fresh_key()).await.expect("load"), None);
    }

    #[actix_web::test]
    async fn loading_state_that_is_not_json_is_a_deserialization_error() {
        let f = Fixture::at(T0);
        let key = fresh_key();
        let id: SessionId = key.as_ref().parse().expect("an id");
        let created = f
            .sessions
            .create_with_id(&id, b"random-thing-which-is-not-json", StdDuration::from_secs(60))
            .expect("create");
        assert!(created);
        let loaded = f.actix().load(&key).await;
        assert!(matches!(loaded, Err(LoadError::Deserialization(_))), "{loaded:?}");
    }

    #[actix_web::test]
    async fn updating_a_session_that_is_gone_saves_it_under_a_new_key() {
        let f = Fixture::at(T0);
        let store = f.actix();
        let gone = fresh_key();
        let initial = gone.as_ref().to_string();
        let updated = store
            .update(gone, HashMap::new(), &time::Duration::seconds(1))
            .await
            .expect("update");
        assert_ne!(updated.as_ref(), initial);
        assert_eq!(store.load(&updated).await.expect("load"), Some(HashMap::new()));
    }

    #[actix_web::test]
    async fn update_ttl_moves_the_deadline_and_the_session_expires_after_it() {
        let f = Fixture::at(T0);
        let store = f.actix();
        let state: HashMap<String, String> = [("k".to_string(), "\"v\"".to_string())].into();
        let minute = time::Duration::minutes(1);
        let key = store.save(state.clone(), &minute).await.expect("save");
        f.clock.advance(StdDuration::from_secs(45));
        store.update_ttl(&key, &minute).await.expect("update_ttl");
        f.clock.advance(StdDuration::from_secs(45));
        assert_eq!(
            store.load(&key).await.expect("load"),
            Some(state),
            "expired on the old TTL"
        );
        f.clock.advance(StdDuration::from_secs(16));
        assert_eq!(store.load(&key).await.expect("load"), None, "outlived the new TTL");
    }
}
