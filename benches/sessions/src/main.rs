//! Issue 17, point 1: each request loads a ~1 KiB JSON session by id through the framework's
//! store trait, changes one field and saves it. 20,000 sessions are created first; every store
//! runs at each concurrency in one process, in an order that rotates between runs. No HTTP:
//! the traits are called directly (tower: one multi-threaded tokio runtime; actix: its
//! futures are not `Send`, so one current-thread runtime with a LocalSet per core, as
//! actix-web's workers). Output: one CSV line per point on stdout.
//!
//! Environment: REDIS_ALWAYS_URL / REDIS_EVERYSEC_URL (and *_PID for the server's CPU time),
//! BENCH_SECS (4), BENCH_SESSIONS (20000), BENCH_RUNS (2), BENCH_CONC ("1,16,64,256"),
//! BENCH_STORES (all), BENCH_DIR (a directory on the disk to measure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

const BLOB: usize = 900;

/// Failed actix requests (loads or updates), reported per point on stderr.
static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

fn rusage_us() -> u64 {
    // SAFETY-free: libc::getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of another process, in µs (0 when there is none).
fn proc_cpu_us(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000 / hz
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn json_data(i: usize) -> HashMap<String, serde_json::Value> {
    let mut m = HashMap::new();
    m.insert("user_id".into(), json!(i));
    m.insert("counter".into(), json!(0));
    m.insert("csrf".into(), json!(format!("{:032x}", i as u128 * 0x9e3779b97f4a7c15)));
    m.insert("blob".into(), json!("x".repeat(BLOB)));
    m
}

fn str_data(i: usize) -> HashMap<String, String> {
    json_data(i).into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

struct Point {
    reqs: u64,
    lat_ns: Vec<u64>,
    wall: Duration,
    cpu_us: u64,
    redis_us: u64,
}

/// One store of one framework: what a request does, behind a common face.
macro_rules! tower_store {
    ($name:ident, $core:ident) => {
        mod $name {
            use super::*;
            use $core::session::{Id, Record};
            use $core::SessionStore;

            pub async fn populate<S: SessionStore + Clone>(s: &S, n: usize) -> Vec<Id> {
                let exp = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
                let mut ids = Vec::with_capacity(n);
                let chunks: Vec<_> = (0..64)
                    .map(|c| {
                        let s = s.clone();
                        tokio::spawn(async move {
                            let mut ids = vec![];
                            for i in (c..n).step_by(64) {
                                let mut r = Record {
                                    id: Id::default(),
                                    data: json_data(i),
                                    expiry_date: exp,
                                };
                                s.create(&mut r).await.expect("create");
                                ids.push(r.id);
                            }
                            ids
                        })
                    })
                    .collect();
                for c in chunks {
                    ids.extend(c.await.unwrap());
                }
                ids
            }

            pub async fn run<S: SessionStore + Clone>(
                s: &S,
                ids: Arc<Vec<Id>>,
                conc: usize,
                secs: f64,
            ) -> (u64, Vec<u64>) {
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let tasks: Vec<_> = (0..conc)
                    .map(|t| {
                        let (s, ids) = (s.clone(), ids.clone());
                        tokio::spawn(async move {
                            let mut seed = 0x2545F4914F6CDD1D ^ ((t as u64 + 1) * 0x9E37);
                            let mut lat = Vec::new();
                            while Instant::now() < end {
                                let id = ids[(rng(&mut seed) % ids.len() as u64) as usize];
                                let t0 = Instant::now();
                                let mut r = s.load(&id).await.expect("load").expect("session missing");
                                let c = r.data.get("counter").and_then(|v| v.as_u64()).unwrap_or(0);
                                r.data.insert("counter".into(), json!(c + 1));
                                s.save(&r).await.expect("save");
                                lat.push(t0.elapsed().as_nanos() as u64);
                            }
                            lat
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                (all.len() as u64, all)
            }
        }
    };
}
tower_store!(t15, tsc15);
tower_store!(t14, tsc14);

mod actix {
    use super::*;
    use actix_session::storage::{SessionKey, SessionStore};

    pub async fn populate<S: SessionStore>(s: &S, n: usize) -> Vec<String> {
        let ttl = time::Duration::hours(2);
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let k = s
                .save(str_data(i), &ttl)
                .await
                .map_err(|e| e.to_string())
                .expect("save");
            ids.push(k.as_ref().to_string());
        }
        ids
    }

    /// `conc` tasks on this thread's LocalSet.
    pub async fn run<S: SessionStore + Clone + 'static>(
        s: S,
        ids: Arc<Vec<String>>,
        conc: usize,
        secs: f64,
        salt: u64,
    ) -> Vec<u64> {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let ttl = time::Duration::hours(2);
        let tasks: Vec<_> = (0..conc)
            .map(|t| {
                let (s, ids) = (s.clone(), ids.clone());
                tokio::task::spawn_local(async move {
                    let mut seed = 0x2545F4914F6CDD1D ^ ((t as u64 + 1 + salt * 1000) * 0x9E37);
                    let mut lat = Vec::new();
                    while Instant::now() < end {
                        let id = &ids[(rng(&mut seed) % ids.len() as u64) as usize];
                        let t0 = Instant::now();
                        let key = SessionKey::try_from(id.clone()).unwrap();
                        let Ok(Some(mut st)) = s.load(&key).await else {
                            ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        };
                        let c: u64 = st.get("counter").and_then(|v| v.parse().ok()).unwrap_or(0);
                        st.insert("counter".into(), (c + 1).to_string());
                        if s.update(key, st, &ttl).await.is_err() {
                            // Counted and reported, not fatal: one failed request must not end the run.
                            ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// Runs an actix store on `threads` single-threaded runtimes (actix-web's worker model).
fn actix_point<S: actix_session::storage::SessionStore + Clone + Send + 'static>(
    s: &S,
    ids: &Arc<Vec<String>>,
    conc: usize,
    secs: f64,
) -> (u64, Vec<u64>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(conc);
    let hs: Vec<_> = (0..threads)
        .map(|w| {
            let (s, ids) = (s.clone(), ids.clone());
            let n = conc / threads + usize::from(w < conc % threads);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let ls = tokio::task::LocalSet::new();
                ls.block_on(&rt, actix::run(s, ids, n, secs, w as u64))
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in hs {
        all.extend(h.join().unwrap());
    }
    (all.len() as u64, all)
}

enum Store {
    T15(Box<dyn Fn(usize, f64) -> (u64, Vec<u64>)>),
}

fn measure(f: &dyn Fn(usize, f64) -> (u64, Vec<u64>), conc: usize, secs: f64, redis_pid: Option<u32>) -> Point {
    let (c0, r0, t0) = (rusage_us(), proc_cpu_us(redis_pid), Instant::now());
    let (reqs, lat_ns) = f(conc, secs);
    let wall = t0.elapsed();
    Point {
        reqs,
        lat_ns,
        wall,
        cpu_us: rusage_us() - c0,
        redis_us: proc_cpu_us(redis_pid) - r0,
    }
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
}

fn main() {
    let secs: f64 = env_or("BENCH_SECS", "4").parse().unwrap();
    let n: usize = env_or("BENCH_SESSIONS", "20000").parse().unwrap();
    let runs: usize = env_or("BENCH_RUNS", "2").parse().unwrap();
    let concs: Vec<usize> = env_or("BENCH_CONC", "1,16,64,256")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let want = env_or("BENCH_STORES", "all");
    let base = std::path::PathBuf::from(env_or("BENCH_DIR", "."));
    let dir = tempfile::tempdir_in(&base).unwrap();
    let r_always = std::env::var("REDIS_ALWAYS_URL").ok();
    let r_every = std::env::var("REDIS_EVERYSEC_URL").ok();
    let pid = |k: &str| std::env::var(k).ok().and_then(|p| p.parse::<u32>().ok());
    let (p_always, p_every) = (pid("REDIS_ALWAYS_PID"), pid("REDIS_EVERYSEC_PID"));

    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let on = |name: &str| want == "all" || want.split(',').any(|w| w == name);
    // (name, redis pid, the point function)
    let mut stores: Vec<(&'static str, Option<u32>, Store)> = Vec::new();

    if on("tower-sessiondb") {
        let db = sessiondb::session::SessionStore::open(dir.path().join("tower-sessiondb")).unwrap();
        let s = sessiondb::session::tower::TowerStore::new(db);
        let ids = Arc::new(rt.block_on(t15::populate(&s, n)));
        let rt2 = rt.clone();
        stores.push((
            "tower-sessiondb",
            None,
            Store::T15(Box::new(move |c, d| rt2.block_on(t15::run(&s, ids.clone(), c, d)))),
        ));
    }
    if on("tower-memory") {
        let s = tower_sessions_memory_store::MemoryStore::default();
        let ids = Arc::new(rt.block_on(t15::populate(&s, n)));
        let rt2 = rt.clone();
        stores.push((
            "tower-memory",
            None,
            Store::T15(Box::new(move |c, d| rt2.block_on(t15::run(&s, ids.clone(), c, d)))),
        ));
    }
    for (name, url, p) in [
        ("tower-redis-always", &r_always, p_always),
        ("tower-redis-everysec", &r_every, p_every),
    ] {
        let Some(url) = url.clone() else { continue };
        if !on(name) {
            continue;
        }
        use tower_sessions_redis_store::fred::prelude::*;
        let s = rt.block_on(async {
            let cfg = Config::from_url(&url).unwrap();
            let pool = Pool::new(cfg, None, None, None, 6).unwrap();
            pool.connect();
            pool.wait_for_connect().await.unwrap();
            tower_sessions_redis_store::RedisStore::new(pool)
        });
        let ids = Arc::new(rt.block_on(t14::populate(&s, n)));
        let rt2 = rt.clone();
        stores.push((
            name,
            p,
            Store::T15(Box::new(move |c, d| rt2.block_on(t14::run(&s, ids.clone(), c, d)))),
        ));
    }
    if on("tower-sqlite") {
        use std::str::FromStr;
        use tower_sessions_sqlx_store::sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let path = dir.path().join("tower-sqlite.db");
        let s = rt.block_on(async {
            let o = SqliteConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", path.display()))
                .unwrap()
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            let pool = SqlitePoolOptions::new()
                .max_connections(16)
                .connect_with(o)
                .await
                .unwrap();
            let s = tower_sessions_sqlx_store::SqliteStore::new(pool);
            s.migrate().await.unwrap();
            s
        });
        let ids = Arc::new(rt.block_on(t14::populate(&s, n)));
        let rt2 = rt.clone();
        stores.push((
            "tower-sqlite",
            None,
            Store::T15(Box::new(move |c, d| rt2.block_on(t14::run(&s, ids.clone(), c, d)))),
        ));
    }
    if on("actix-sessiondb") {
        let db = sessiondb::session::SessionStore::open(dir.path().join("actix-sessiondb")).unwrap();
        let s = sessiondb::session::actix::ActixStore::new(db);
        let ids = {
            let rt1 = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Arc::new(tokio::task::LocalSet::new().block_on(&rt1, actix::populate(&s, n)))
        };
        stores.push((
            "actix-sessiondb",
            None,
            Store::T15(Box::new(move |c, d| actix_point(&s, &ids, c, d))),
        ));
    }
    if let (Some(url), true) = (r_always.clone(), on("actix-redis-always")) {
        let rt1 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ls = tokio::task::LocalSet::new();
        let (s, ids) = ls.block_on(&rt1, async {
            let s = actix_session::storage::RedisSessionStore::new(url).await.unwrap();
            let ids = actix::populate(&s, n).await;
            (s, ids)
        });
        let ids = Arc::new(ids);
        stores.push((
            "actix-redis-always",
            p_always,
            Store::T15(Box::new(move |c, d| actix_point(&s, &ids, c, d))),
        ));
    }

    println!("run,store,concurrency,requests,req_per_s,p50_us,p99_us,cpu_us_per_req,redis_cpu_us_per_req");
    for run in 0..runs {
        for &conc in &concs {
            let k = stores.len();
            for j in 0..k {
                // Interleaved: the starting store rotates with the run and the concurrency.
                let (name, rp, Store::T15(f)) = &stores[(j + run + conc) % k];
                let mut p = measure(f.as_ref(), conc, secs, *rp);
                p.lat_ns.sort_unstable();
                let errs = ERRORS.swap(0, std::sync::atomic::Ordering::Relaxed);
                if errs > 0 {
                    eprintln!("{name} at {conc}: {errs} failed requests (not counted)");
                }
                let r = p.reqs.max(1) as f64;
                println!(
                    "{},{},{},{},{:.0},{:.1},{:.1},{:.1},{:.1}",
                    run + 1,
                    name,
                    conc,
                    p.reqs,
                    p.reqs as f64 / p.wall.as_secs_f64(),
                    pct(&p.lat_ns, 0.50),
                    pct(&p.lat_ns, 0.99),
                    p.cpu_us as f64 / r,
                    p.redis_us as f64 / r,
                );
            }
        }
    }
}
