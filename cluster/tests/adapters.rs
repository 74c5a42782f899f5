//! The cluster's session stores through the frameworks' real middleware, over real sockets:
//! tower-sessions' `SessionManagerLayer` around an axum app and actix-session's
//! `SessionMiddleware` in an actix-web server, each storing its sessions in a three-node cluster
//! through a `ClusterClient` that knows every node.
//!
//! Scenario: three in-process nodes (`Node::start` with the HTTP transport, each served by
//! `sessiondb_cluster::http::serve` on its own localhost port, initialised with all three as
//! voters); the apps on localhost ports; browsers are reqwest clients with a cookie jar. What
//! the browsers cannot see is checked in the cluster itself through a second client.
//!
//! Invariants: a session survives the leader's shutdown, its data intact; nothing expired is
//! returned, even when the cluster would still return it (the store's clock is ahead of the
//! nodes'); a new session never overwrites another (a taken id is replaced, the other session
//! untouched) and an id whose write's outcome is unknown is never used again; a deleted session
//! is gone; actix's `update_ttl` moves the deadline, and does nothing to a session that is gone;
//! actix's `update` of a session that is gone writes a new session under a fresh key and never
//! brings the old key back.
//!
//! No fixed sleeps: every wait polls a condition until a deadline ([`DEADLINE`]), and every
//! request has a timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_session::storage::{SessionKey, SessionStore as _};
use sessiondb::{Clock as _, ManualClock};
use sessiondb_cluster::network::HttpNetwork;
use sessiondb_cluster::session::{ClusterActixStore, ClusterTowerStore};
use sessiondb_cluster::{ClusterClient, Consistency, Expiry, Node, NodeConfig, NodeId};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore as _;

/// The longest any condition is waited for, and any request may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// The key prefix the stores use by default.
const PREFIX: &str = "session/";

fn now_ms() -> u64 {
    sessiondb_cluster::node::now_ms()
}

/// Polls `check` every 20 ms until it holds; fails the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "not after {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A node with its API server.
struct Member {
    node: Node,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Three nodes on localhost.
struct Cluster {
    addrs: Vec<String>,
    running: Mutex<BTreeMap<NodeId, Member>>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts three nodes, initialises them as one cluster and waits until each knows the leader.
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind a node's port"));
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr").to_string())
            .collect();
        let mut running = BTreeMap::new();
        for (id, listener) in (1..).zip(listeners) {
            let node = Node::start(
                id,
                dir.path().join(format!("n{id}")),
                &NodeConfig::default(),
                HttpNetwork::new(),
            )
            .await
            .expect("start a node");
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(sessiondb_cluster::http::serve(node.clone(), listener, async {
                let _ = stopped.await;
            }));
            running.insert(id, Member { node, stop, server });
        }
        let members: BTreeMap<NodeId, String> = (1..).zip(addrs.iter().cloned()).collect();
        running[&1].node.init(members).await.expect("init");
        for m in running.values() {
            m.node.wait_for_leader(DEADLINE).await.expect("a leader");
        }
        Cluster {
            addrs,
            running: Mutex::new(running),
            _dir: dir,
        }
    }

    /// A client that knows every node, as an application's would.
    fn client(&self) -> ClusterClient {
        ClusterClient::new(self.addrs.clone()).expect("client")
    }

    /// The leader, as the running nodes agree on it.
    async fn leader(&self) -> NodeId {
        let start = Instant::now();
        loop {
            let (running, leaders): (Vec<NodeId>, Vec<Option<NodeId>>) = {
                let members = self.running.lock().expect("lock");
                members.iter().map(|(id, m)| (*id, m.node.status().leader)).unzip()
            };
            if let Some(Some(l)) = leaders.first() {
                if running.contains(l) && leaders.iter().all(|x| *x == Some(*l)) {
                    return *l;
                }
            }
            assert!(start.elapsed() < DEADLINE, "no agreed leader after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts node `id` down (`Node::shutdown`) and stops its API server.
    async fn stop(&self, id: NodeId) {
        let member = self.running.lock().expect("lock").remove(&id).expect("a running node");
        member.node.shutdown().await.expect("shutdown");
        let _ = member.stop.send(());
        let mut server = member.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
            server.abort();
        }
    }
}

/// The live value of `key`, read linearizably.
async fn stored(client: &ClusterClient, key: &str) -> Option<sessiondb_cluster::Stored> {
    client
        .get(key, Consistency::Linearizable)
        .await
        .expect("read the cluster")
}

/// Every live session under `prefix`.
async fn session_keys(client: &ClusterClient, prefix: &str) -> Vec<sessiondb_cluster::http::ScanEntry> {
    client
        .scan(prefix, None, 1000, Consistency::Linearizable)
        .await
        .expect("scan the cluster")
}

// ---------------------------------------------------------------------------------------------
// Browsers

/// A browser: a client with its own cookie jar. (Cookies are per host, not per port: one
/// browser per app on localhost.)
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
        .timeout(DEADLINE)
        .build()
        .expect("browser")
}

/// GETs `url` and returns the body; fails the test on an error status.
async fn get(browser: &reqwest::Client, url: &str) -> String {
    let resp = browser
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert!(status.is_success(), "GET {url}: {status}: {body}");
    body
}

// ---------------------------------------------------------------------------------------------
// The tower-sessions app

mod tower_app {
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower_sessions::{Session, SessionManagerLayer, SessionStore};

    type Failed = (StatusCode, String);

    fn failed(e: tower_sessions::session::Error) -> Failed {
        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    /// Counts the visits of this session.
    async fn visit(session: Session) -> Result<String, Failed> {
        let n = session.get::<u64>("visits").await.map_err(failed)?.unwrap_or(0) + 1;
        session.insert("visits", n).await.map_err(failed)?;
        Ok(n.to_string())
    }

    /// The session's id (after a visit), for the test to look it up in the cluster.
    async fn id(session: Session) -> String {
        session.id().map(|id| id.to_string()).unwrap_or_default()
    }

    /// Deletes the session (store and cookie).
    async fn logout(session: Session) -> Result<&'static str, Failed> {
        session.delete().await.map_err(failed)?;
        Ok("bye")
    }

    /// Serves the app with `store` on a localhost port; returns its base URL.
    pub async fn serve<S: SessionStore + Clone>(store: S) -> String {
        let layer = SessionManagerLayer::new(store).with_secure(false);
        let app = Router::new()
            .route("/visit", get(visit))
            .route("/id", get(id))
            .route("/logout", get(logout))
            .layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

// ---------------------------------------------------------------------------------------------
// The actix-session app

mod actix_app {
    use actix_session::config::{PersistentSession, TtlExtensionPolicy};
    use actix_session::{Session, SessionMiddleware};
    use actix_web::cookie::time::Duration as CookieDuration;
    use actix_web::dev::ServerHandle;
    use actix_web::{web, App, HttpResponse, HttpServer};
    use sessiondb_cluster::session::ClusterActixStore;
    use sessiondb_cluster::{ClusterClient, Consistency};

    /// Sessions live an hour, and every request extends them (`update_ttl` on requests that do
    /// not change the session).
    pub const TTL_SECS: i64 = 3600;

    async fn visit(session: Session) -> actix_web::Result<String> {
        let n = session.get::<u64>("visits")?.unwrap_or(0) + 1;
        session.insert("visits", n)?;
        Ok(n.to_string())
    }

    /// Reads the session without changing it.
    async fn peek(session: Session) -> actix_web::Result<String> {
        Ok(session.get::<u64>("visits")?.unwrap_or(0).to_string())
    }

    async fn logout(session: Session) -> &'static str {
        session.purge();
        "bye"
    }

    /// Deletes every session in the cluster (the test's only one: the requester's) after the
    /// middleware loaded it, then counts the visit: the middleware then updates a key that is
    /// gone.
    async fn vanish_then_visit(session: Session, client: web::Data<ClusterClient>) -> actix_web::Result<String> {
        let fail = actix_web::error::ErrorInternalServerError;
        let page = client
            .scan(super::PREFIX, None, 1000, Consistency::Linearizable)
            .await
            .map_err(fail)?;
        for entry in page {
            client.delete(&entry.key).await.map_err(fail)?;
        }
        visit(session).await
    }

    /// A running server; stopped when dropped.
    pub struct Server {
        pub url: String,
        handle: ServerHandle,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // The server's own system stops it; this thread only waits (bounded by its
            // shutdown timeout).
            drop(self.handle.stop(false));
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Serves the app on a localhost port, in a thread of its own running an actix system,
    /// with the store `make` builds over a client of `addrs` (made there, on that system's
    /// runtime).
    pub fn serve(addrs: Vec<String>, make: impl FnOnce(ClusterClient) -> ClusterActixStore + Send + 'static) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let client = ClusterClient::new(addrs).expect("client");
                let store = make(client.clone());
                let key = actix_web::cookie::Key::generate();
                let server = HttpServer::new(move || {
                    let sessions = SessionMiddleware::builder(store.clone(), key.clone())
                        .cookie_secure(false)
                        .session_lifecycle(
                            PersistentSession::default()
                                .session_ttl(CookieDuration::seconds(TTL_SECS))
                                .session_ttl_extension_policy(TtlExtensionPolicy::OnEveryRequest),
                        )
                        .build();
                    App::new()
                        .app_data(web::Data::new(client.clone()))
                        .wrap(sessions)
                        .route("/visit", web::get().to(visit))
                        .route("/peek", web::get().to(peek))
                        .route("/logout", web::get().to(logout))
                        .route("/vanish-then-visit", web::get().to(vanish_then_visit))
                        .default_service(web::to(HttpResponse::NotFound))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)
                .expect("listen")
                .run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = rx.recv_timeout(super::DEADLINE).expect("the actix server started");
        Server {
            url,
            handle,
            thread: Some(thread),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A session on each framework survives the leader's shutdown: after `Node::shutdown` of the
/// leader and the end of its API server, the apps' stores (clients given all three addresses)
/// go on with the new leader, and each counter continues from its last answer. The stored
/// sessions hold what the counters said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_shutting_down_the_leader() {
    let cluster = Cluster::start().await;
    let tower = tower_app::serve(ClusterTowerStore::new(cluster.client())).await;
    let actix = actix_app::serve(cluster.addrs.clone(), ClusterActixStore::new);
    let (alice, bob) = (browser(), browser());
    for n in 1..=3 {
        assert_eq!(get(&alice, &format!("{tower}/visit")).await, n.to_string());
        assert_eq!(get(&bob, &format!("{}/visit", actix.url)).await, n.to_string());
    }
    let tower_key = format!("{PREFIX}{}", get(&alice, &format!("{tower}/id")).await);

    let old = cluster.leader().await;
    cluster.stop(old).await;
    // At once, while the other nodes elect a leader: the stores' clients find it.
    for n in 4..=5 {
        assert_eq!(
            get(&alice, &format!("{tower}/visit")).await,
            n.to_string(),
            "tower: the counter goes on"
        );
        assert_eq!(
            get(&bob, &format!("{}/visit", actix.url)).await,
            n.to_string(),
            "actix: the counter goes on"
        );
    }
    let new = cluster.leader().await;
    assert_ne!(new, old, "a new leader took over");
    // The data as the cluster's new leader holds it.
    let check = cluster.client();
    let record = stored(&check, &tower_key).await.expect("the tower session");
    let record: serde_json::Value = serde_json::from_slice(&record.value).expect("JSON");
    assert_eq!(record["data"]["visits"], 5, "{record}");
    let sessions = session_keys(&check, PREFIX).await;
    let actix_states: Vec<HashMap<String, String>> = sessions
        .iter()
        .filter(|e| e.key != tower_key)
        .map(|e| serde_json::from_slice(&e.value).expect("JSON"))
        .collect();
    assert_eq!(actix_states.len(), 1, "one actix session: {actix_states:?}");
    assert_eq!(actix_states[0]["visits"], "5");
}

/// tower: nothing expired is returned. (1) The store's clock is ahead of the nodes' (as if the
/// leader's clock lagged): at the session's expiry by the store's clock (a millisecond before,
/// it loads), the cluster still returns the key, yet the store loads nothing and the browser's
/// cookie brings a fresh session. (2) A session whose expiry passes for real: it loads before,
/// the cluster stops returning it (waited for with a deadline) not before its expiry, and the
/// store loads nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_never_returns_an_expired_session() {
    let cluster = Cluster::start().await;
    let clock = ManualClock::new(now_ms());
    let store = ClusterTowerStore::new(cluster.client()).with_clock(Arc::new(clock.clone()));
    let url = tower_app::serve(store.clone()).await;
    let alice = browser();
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "1");
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "2");
    let id: Id = get(&alice, &format!("{url}/id")).await.parse().expect("an id");
    let record = store.load(&id).await.expect("load").expect("live");
    // Its expiry (tower-sessions' default: two weeks away) by the store's clock only.
    let expiry_ms = u64::try_from(record.expiry_date.unix_timestamp_nanos() / 1_000_000).expect("ms");
    clock.set(expiry_ms - 1);
    assert!(store.load(&id).await.expect("load").is_some(), "expired early");
    clock.set(expiry_ms);
    assert!(
        stored(&cluster.client(), &store.key_of(&id)).await.is_some(),
        "the cluster still returns it"
    );
    assert!(store.load(&id).await.expect("load").is_none(), "loaded at its expiry");
    assert_eq!(
        get(&alice, &format!("{url}/visit")).await,
        "1",
        "an expired session was served"
    );

    // (2) A short expiry (a whole millisecond), on the real clock.
    let client = cluster.client();
    let expiry_ms = now_ms() + 2_000;
    let mut short = Record {
        id: Id::default(),
        data: HashMap::from([("visits".to_string(), serde_json::json!(41))]),
        expiry_date: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(expiry_ms) * 1_000_000)
            .expect("a date"),
    };
    let short_store = ClusterTowerStore::new(cluster.client());
    short_store.create(&mut short).await.expect("create");
    assert!(
        short_store.load(&short.id).await.expect("load").is_some(),
        "gone before its expiry"
    );
    eventually("the cluster expires the session", || {
        let (client, key) = (client.clone(), short_store.key_of(&short.id));
        async move { stored(&client, &key).await.is_none() }
    })
    .await;
    assert!(now_ms() >= expiry_ms, "the cluster dropped it before its expiry");
    assert!(short_store.load(&short.id).await.expect("load").is_none());
}

/// tower: a new session never takes a live session's id. The store is made to try a taken id
/// first (a wrapper sets the record's id before `create`, as a collision would): the visitor's
/// session gets another id and works, and the session under the taken id is untouched (same
/// value, same version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_create_resolves_an_id_collision() {
    let cluster = Cluster::start().await;
    let store = ClusterTowerStore::new(cluster.client());
    let taken = Id::default();
    let mut other = Record {
        id: taken,
        data: HashMap::from([("visits".to_string(), serde_json::json!(41))]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    store.create(&mut other).await.expect("create the other session");
    assert_eq!(other.id, taken, "the id was free");
    let client = cluster.client();
    let before = stored(&client, &store.key_of(&taken)).await.expect("the other session");

    let url = tower_app::serve(TakenFirst {
        inner: store.clone(),
        taken,
    })
    .await;
    let alice = browser();
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "1", "a fresh session");
    let id: Id = get(&alice, &format!("{url}/id")).await.parse().expect("an id");
    assert_ne!(id, taken, "the new session took the live session's id");
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "2", "the new session works");
    let after = stored(&client, &store.key_of(&taken)).await.expect("the other session");
    assert_eq!(after, before, "the other session was touched");
    let loaded = store.load(&taken).await.expect("load").expect("the other session");
    assert_eq!(loaded.data["visits"], 41);
}

/// A tower store whose `create` tries `taken` first: the store then sees a collision.
#[derive(Debug, Clone)]
struct TakenFirst {
    inner: ClusterTowerStore,
    taken: Id,
}

#[async_trait::async_trait]
impl tower_sessions::SessionStore for TakenFirst {
    async fn create(&self, record: &mut Record) -> tower_sessions::session_store::Result<()> {
        record.id = self.taken;
        self.inner.create(record).await
    }
    async fn save(&self, record: &Record) -> tower_sessions::session_store::Result<()> {
        self.inner.save(record).await
    }
    async fn load(&self, id: &Id) -> tower_sessions::session_store::Result<Option<Record>> {
        self.inner.load(id).await
    }
    async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
        self.inner.delete(id).await
    }
}

/// tower: a create whose compare-and-swap's outcome is unknown is retried under a NEW id. The
/// store's client lists first a node that reads the request and closes the connection without
/// answering (the client reports `Unavailable`: it may have been applied). The session then
/// lives under another id than the one that request carried, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_create_with_an_unknown_outcome_draws_a_new_id() {
    let cluster = Cluster::start().await;
    let (silent, requests) = silent_node().await;
    let mut addrs = vec![silent];
    addrs.extend(cluster.addrs.iter().cloned());
    let store = ClusterTowerStore::new(ClusterClient::new(addrs).expect("client"));
    let url = tower_app::serve(store.clone()).await;
    let alice = browser();
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "1");
    let id = get(&alice, &format!("{url}/id")).await;
    let seen = requests.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "one request reached the silent node: {seen:?}");
    // A create is a compare-and-swap of `PREFIX` and the id (22 characters), in the request's
    // path or, through the client's pipeline, in its body.
    let request = &seen[0];
    assert!(
        request.starts_with("POST /cas/") || request.starts_with("POST /writes"),
        "not a create: {request}"
    );
    let lost: String = request
        .split(PREFIX)
        .nth(1)
        .map(|rest| rest.chars().take(22).collect())
        .unwrap_or_else(|| panic!("no session key in the request: {request}"));
    assert_eq!(lost.len(), 22, "{request}");
    assert_ne!(id, lost, "the id whose write's outcome was unknown was used again");
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "2", "the session works");
    assert!(stored(&cluster.client(), &format!("{PREFIX}{lost}")).await.is_none());
}

/// A "node" that reads each request (its line kept) and closes the connection unanswered.
async fn silent_node() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The headers and the body (its length from Content-Length): the client's
                // pipeline carries the key in the body of a `POST /writes`.
                let read = tokio::time::timeout(DEADLINE, async {
                    loop {
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (name, value) = l.split_once(':')?;
                                    name.eq_ignore_ascii_case("content-length")
                                        .then(|| value.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break;
                            }
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                })
                .await;
                if read.is_ok() {
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&buf).into_owned());
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, requests)
}

/// actix: a new session never takes a live session's key. The store's key generator offers a
/// taken key first: the visitor's session is written under another key and works, and the
/// session under the taken key is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_save_resolves_a_key_collision() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let taken = "TakenTakenTakenTakenTa".to_string();
    let taken_key = format!("{PREFIX}{taken}");
    client
        .put(
            &taken_key,
            serde_json::to_vec(&HashMap::from([("visits", "41")])).expect("JSON"),
            Expiry::TtlMs(3_600_000),
        )
        .await
        .expect("the other session");
    let before = stored(&client, &taken_key).await.expect("the other session");

    let offered = Arc::new(AtomicUsize::new(0));
    let (offers, first) = (offered.clone(), taken.clone());
    let server = actix_app::serve(cluster.addrs.clone(), move |client| {
        ClusterActixStore::new(client).with_key_generator(Arc::new(move || {
            Ok(match offers.fetch_add(1, Ordering::SeqCst) {
                0 => first.clone(),
                n => format!("fresh{n:017}"),
            })
        }))
    });
    let bob = browser();
    assert_eq!(
        get(&bob, &format!("{}/visit", server.url)).await,
        "1",
        "a fresh session"
    );
    assert_eq!(
        get(&bob, &format!("{}/visit", server.url)).await,
        "2",
        "the new session works"
    );
    assert_eq!(offered.load(Ordering::SeqCst), 2, "the taken key, then another");
    let after = stored(&client, &taken_key).await.expect("the other session");
    assert_eq!(after, before, "the other session was touched");
    let keys: Vec<String> = session_keys(&client, PREFIX).await.into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![taken_key, format!("{PREFIX}fresh00000000000000001")],
        "the new session under the second key"
    );
}

/// tower and actix: a deleted session is gone from the cluster, its store loads nothing for
/// it, and its old cookie brings a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_session() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let store = ClusterTowerStore::new(cluster.client());
    let url = tower_app::serve(store.clone()).await;
    let alice = browser();
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "1");
    assert_eq!(get(&alice, &format!("{url}/visit")).await, "2");
    let id = get(&alice, &format!("{url}/id")).await;
    assert_eq!(get(&alice, &format!("{url}/logout")).await, "bye");
    let tid: Id = id.parse().expect("an id");
    assert!(
        stored(&client, &store.key_of(&tid)).await.is_none(),
        "tower: still in the cluster"
    );
    assert!(store.load(&tid).await.expect("load").is_none());
    // The old cookie, sent again by hand.
    let resp = reqwest::Client::new()
        .get(format!("{url}/visit"))
        .header("cookie", format!("id={id}"))
        .timeout(DEADLINE)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        resp.text().await.expect("body"),
        "1",
        "tower: the deleted session was served"
    );

    // actix, its sessions under a prefix of their own.
    const ACTIX: &str = "actix/";
    let server = actix_app::serve(cluster.addrs.clone(), |c| ClusterActixStore::new(c).with_prefix(ACTIX));
    let bob = browser();
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "1");
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "2");
    let keys = session_keys(&client, ACTIX).await;
    assert_eq!(keys.len(), 1, "one actix session");
    let actix_key = SessionKey::try_from(keys[0].key[ACTIX.len()..].to_string()).expect("a key");
    assert_eq!(get(&bob, &format!("{}/logout", server.url)).await, "bye");
    assert!(
        session_keys(&client, ACTIX).await.is_empty(),
        "actix: still in the cluster"
    );
    let actix_store = ClusterActixStore::new(cluster.client()).with_prefix(ACTIX);
    assert_eq!(actix_store.load(&actix_key).await.expect("load"), None);
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "1");
}

/// actix: nothing expired is returned. The store's clock is ahead of the nodes': past the
/// session's deadline by that clock, the cluster still returns the key, yet the store loads
/// nothing and the browser's cookie brings a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_never_returns_an_expired_session() {
    let cluster = Cluster::start().await;
    let clock = ManualClock::new(now_ms());
    let app_clock = clock.clone();
    let server = actix_app::serve(cluster.addrs.clone(), move |client| {
        ClusterActixStore::new(client).with_clock(Arc::new(app_clock))
    });
    let bob = browser();
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "1");
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "2");
    let client = cluster.client();
    let keys = session_keys(&client, PREFIX).await;
    assert_eq!(keys.len(), 1);
    let deadline = keys[0].expires_at_ms;
    clock.set(deadline);
    assert!(
        stored(&client, &keys[0].key).await.is_some(),
        "the cluster still returns it"
    );
    let key = SessionKey::try_from(keys[0].key[PREFIX.len()..].to_string()).expect("a key");
    let store = ClusterActixStore::new(cluster.client()).with_clock(Arc::new(clock.clone()));
    assert_eq!(store.load(&key).await.expect("load"), None, "loaded at its deadline");
    assert_eq!(
        get(&bob, &format!("{}/peek", server.url)).await,
        "0",
        "an expired session was served"
    );
}

/// actix: `update_ttl` moves the deadline (a request that does not change the session, with
/// the policy "extend on every request", calls it): by exactly how far the store's clock moved.
/// On a session that is gone it does nothing (no session comes back), and a time-to-live that
/// is not positive is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_update_ttl_moves_the_deadline_of_live_sessions_only() {
    let cluster = Cluster::start().await;
    let clock = ManualClock::new(now_ms());
    let app_clock = clock.clone();
    let server = actix_app::serve(cluster.addrs.clone(), move |client| {
        ClusterActixStore::new(client).with_clock(Arc::new(app_clock))
    });
    let bob = browser();
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "1");
    let client = cluster.client();
    let keys = session_keys(&client, PREFIX).await;
    assert_eq!(keys.len(), 1);
    let first = keys[0].expires_at_ms;
    let ttl_ms = u64::try_from(actix_app::TTL_SECS).expect("positive") * 1000;
    assert_eq!(
        first,
        clock.now_ms() + ttl_ms,
        "the deadline is the time-to-live from now"
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(get(&bob, &format!("{}/peek", server.url)).await, "1");
    let moved = stored(&client, &keys[0].key).await.expect("the session");
    assert_eq!(
        moved.expires_at_ms,
        first + 60_000,
        "update_ttl did not move the deadline"
    );
    assert_eq!(moved.version, keys[0].version, "update_ttl rewrote the session");

    // Gone: nothing happens.
    let store = ClusterActixStore::new(cluster.client());
    let key = SessionKey::try_from(keys[0].key[PREFIX.len()..].to_string()).expect("a key");
    client.delete(&keys[0].key).await.expect("delete");
    store
        .update_ttl(&key, &time::Duration::seconds(60))
        .await
        .expect("update_ttl of a session that is gone");
    assert!(
        stored(&client, &keys[0].key).await.is_none(),
        "update_ttl brought it back"
    );
    assert!(
        store.update_ttl(&key, &time::Duration::seconds(0)).await.is_err(),
        "a zero time-to-live was taken"
    );
}

/// actix: `update` of a session that is gone (deleted after the middleware loaded it) writes a
/// new session under a fresh key, which the browser then uses, and never writes the old key
/// again; through the trait too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_update_of_a_vanished_key_creates_a_new_session() {
    let cluster = Cluster::start().await;
    let server = actix_app::serve(cluster.addrs.clone(), ClusterActixStore::new);
    let client = cluster.client();
    let bob = browser();
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "1");
    assert_eq!(get(&bob, &format!("{}/visit", server.url)).await, "2");
    let old = session_keys(&client, PREFIX).await;
    assert_eq!(old.len(), 1);
    assert_eq!(get(&bob, &format!("{}/vanish-then-visit", server.url)).await, "3");
    let now = session_keys(&client, PREFIX).await;
    assert_eq!(now.len(), 1, "one session: {now:?}");
    assert_ne!(now[0].key, old[0].key, "the vanished key was written again");
    let state: HashMap<String, String> = serde_json::from_slice(&now[0].value).expect("JSON");
    assert_eq!(state["visits"], "3");
    assert_eq!(
        get(&bob, &format!("{}/visit", server.url)).await,
        "4",
        "the browser follows the new key"
    );

    // Through the trait: the key returned is another, the old stays gone.
    let store = ClusterActixStore::new(cluster.client());
    let gone = SessionKey::try_from(old[0].key[PREFIX.len()..].to_string()).expect("a key");
    let state = HashMap::from([("visits".to_string(), "9".to_string())]);
    let fresh = store
        .update(gone, state.clone(), &time::Duration::seconds(60))
        .await
        .expect("update");
    assert_ne!(format!("{PREFIX}{}", fresh.as_ref()), old[0].key);
    assert!(stored(&client, &old[0].key).await.is_none(), "the old key came back");
    assert_eq!(store.load(&fresh).await.expect("load"), Some(state));
}
