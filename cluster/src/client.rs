//! A client of the cluster's HTTP API that talks to any node and follows the leader.
//!
//! A request goes to the leader the client last heard of (at first, the first address). A
//! node that is not the leader answers 421 with the leader's address, and the client goes
//! there. A node that does not answer, or has no leader yet, is left for the next address, after
//! a short pause once every node was tried. This goes on until the client's deadline
//! ([`ClusterClient::with_deadline`], 10 s by default).
//!
//! Retries and what they mean: a request that never reached a node (connection refused) or that
//! a node refused as not the leader did not take effect, and is sent again. A put, a delete and a
//! touch are sent again after any failure too: doing one twice leaves what doing it once does
//! (a put's version is then the later write's). A compare-and-swap is not: if its reply is lost
//! it may have taken effect, and the client says so ([`ClusterError::Unavailable`]) rather than
//! send it again and report its own write as a conflict.
//!
//! Writes are pipelined: the writes of all the callers of one client (clones share it) that
//! arrive while earlier requests are in flight go to the leader together in one `POST /writes`
//! (at most 256 of them, 4 requests in flight), so a busy application server sends few HTTP
//! requests, not one per write. Each write keeps its own outcome and the retry rules above. The
//! pipeline runs as a task on the tokio runtime of the client's first write; if that runtime is
//! gone, writes go one request each, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::codec;
use crate::http::{ScanEntry, EXPIRES_HEADER, LEADER_HEADER, VERSION_HEADER};
use crate::node::{ClusterError, Consistency, Expiry, Write};
use crate::state_machine::Stored;
use crate::Response;

/// A client of a cluster. Clones share the connections and the leader it knows.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    nodes: Vec<String>,
    /// The leader's address, when learnt from a 421 or a success (index in `nodes`, or a new
    /// address pushed to `extra`).
    leader: parking_lot::Mutex<Option<String>>,
    next: AtomicUsize,
    deadline: Duration,
    /// The pipeline's queue, once started ([`ClusterClient::pipeline`]).
    pipe: parking_lot::Mutex<Option<mpsc::UnboundedSender<Piped>>>,
}

/// A write waiting in the pipeline, and where its outcome goes.
struct Piped {
    write: Write,
    retry: Retry,
    reply: oneshot::Sender<Result<Response, ClusterError>>,
}

/// Requests of the pipeline in flight at once, at most; the writes that arrive meanwhile go in
/// the next one.
const PIPE_IN_FLIGHT: usize = 4;
/// Writes in one request of the pipeline, at most, and their keys' and values' bytes.
const PIPE_WRITES_MAX: usize = 256;
const PIPE_BYTES_MAX: usize = 4 << 20;

/// Path segments of a key: percent-encoded, `/` kept as it is.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn expiry_query(e: Expiry) -> String {
    match e {
        Expiry::Never => String::new(),
        Expiry::TtlMs(t) => format!("ttl_ms={t}"),
        Expiry::AtMs(at) => format!("expires_at_ms={at}"),
    }
}

/// Whether a request may be sent again after a failure whose effect is unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Doing it twice is doing it once (a read, a put, a delete, a touch).
    Always,
    /// Only when it surely did not take effect (a compare-and-swap).
    OnlyIfNotSent,
}

enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl ClusterClient {
    /// A client of the nodes at `nodes` (`host:port` each).
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Result<ClusterClient, ClusterError> {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        if nodes.is_empty() {
            return Err(ClusterError::BadRequest(
                "a cluster client needs one node address or more".to_string(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClusterError::Protocol(e.to_string()))?;
        Ok(ClusterClient {
            inner: Arc::new(Inner {
                http,
                nodes,
                leader: parking_lot::Mutex::new(None),
                next: AtomicUsize::new(0),
                deadline: Duration::from_secs(10),
                pipe: parking_lot::Mutex::new(None),
            }),
        })
    }

    /// How long a call keeps trying before it gives up (10 s by default).
    pub fn with_deadline(self, deadline: Duration) -> ClusterClient {
        let inner = &self.inner;
        ClusterClient {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                nodes: inner.nodes.clone(),
                leader: parking_lot::Mutex::new(inner.leader.lock().clone()),
                next: AtomicUsize::new(0),
                deadline,
                pipe: parking_lot::Mutex::new(None),
            }),
        }
    }

    /// The addresses this client was given.
    pub fn nodes(&self) -> &[String] {
        &self.inner.nodes
    }

    /// The leader this client last heard of.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner.leader.lock().clone()
    }

    fn target(&self) -> String {
        if let Some(l) = self.inner.leader.lock().clone() {
            return l;
        }
        let i = self.inner.next.load(Ordering::Relaxed) % self.inner.nodes.len();
        self.inner.nodes[i].clone()
    }

    /// The target did not serve the request: try another node next.
    fn move_on(&self, from: &str) {
        let mut leader = self.inner.leader.lock();
        if leader.as_deref() == Some(from) {
            *leader = None;
        }
        self.inner.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a request to the leader until it is served, the deadline passes, or (for `retry:
    /// OnlyIfNotSent`) a failure leaves its effect unknown. Returns the reply's status, headers
    /// and body (2xx or 404).
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        retry: Retry,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClusterError> {
        let start = Instant::now();
        let mut tries = 0usize;
        let mut last = ClusterError::Unavailable("no node tried".to_string());
        while start.elapsed() < self.inner.deadline {
            // After every node was tried once without success, pause a little: an election
            // takes a few hundred ms.
            if tries > 0 && tries.is_multiple_of(self.inner.nodes.len().max(2)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tries += 1;
            let addr = self.target();
            let url = format!("http://{addr}{path_and_query}");
            let req = match method {
                Method::Get => self.inner.http.get(&url),
                Method::Put => self.inner.http.put(&url),
                Method::Post => self.inner.http.post(&url),
                Method::Delete => self.inner.http.delete(&url),
            };
            let req = match &body {
                Some(b) => req.body(b.clone()),
                None => req,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                // Errors name the node, not the URL: a key (a session id) must not reach logs.
                Err(e) => {
                    let e = e.without_url();
                    last = ClusterError::Unavailable(format!("{addr}: {e}"));
                    self.move_on(&addr);
                    if e.is_connect() || retry == Retry::Always {
                        continue;
                    }
                    return Err(ClusterError::Unavailable(format!(
                        "{addr}: {e}; the request may or may not have taken effect"
                    )));
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = match resp.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    let e = e.without_url();
                    last = ClusterError::Unavailable(format!("{addr}: {e}"));
                    self.move_on(&addr);
                    if retry == Retry::Always {
                        continue;
                    }
                    return Err(ClusterError::Unavailable(format!(
                        "{addr}: {e}; the request may or may not have taken effect"
                    )));
                }
            };
            if status.is_success() || status == StatusCode::NOT_FOUND {
                *self.inner.leader.lock() = Some(addr);
                return Ok((status, headers, bytes));
            }
            let err: ClusterError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                ClusterError::Protocol(format!("{addr}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)))
            });
            match &err {
                ClusterError::NotLeader { leader, .. } => {
                    let hint = headers
                        .get(LEADER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| leader.as_ref().map(|(_, a)| a.clone()));
                    match hint {
                        Some(l) if l != addr => *self.inner.leader.lock() = Some(l),
                        _ => self.move_on(&addr),
                    }
                    last = err;
                }
                ClusterError::NoQuorum(_) | ClusterError::Unavailable(_) => {
                    self.move_on(&addr);
                    last = err;
                }
                // A node that stopped (shutting down, a storage error) may have taken a write.
                ClusterError::Stopped(_) if retry == Retry::Always => {
                    self.move_on(&addr);
                    last = err;
                }
                _ => return Err(err),
            }
        }
        Err(match last {
            ClusterError::NotLeader { .. } | ClusterError::NoQuorum(_) => ClusterError::Unavailable(format!(
                "no leader served the request in {:?}: {last}",
                self.inner.deadline
            )),
            e => e,
        })
    }

    fn response(bytes: &[u8]) -> Result<Response, ClusterError> {
        serde_json::from_slice(bytes).map_err(|e| ClusterError::Protocol(format!("a write's reply: {e}")))
    }

    /// The value of `key` with its version and deadline; linearizable unless `consistency` says stale.
    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<Option<Stored>, ClusterError> {
        let q = match consistency {
            Consistency::Linearizable => "",
            Consistency::Stale => "?consistency=stale",
        };
        let (status, headers, body) = self
            .send(Method::Get, &format!("/kv/{}{q}", encode_key(key)), None, Retry::Always)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let num = |h: &str| -> Result<u64, ClusterError> {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ClusterError::Protocol(format!("a read's reply has no {h}")))
        };
        Ok(Some(Stored {
            version: num(VERSION_HEADER)?,
            expires_at_ms: num(EXPIRES_HEADER)?,
            value: body,
        }))
    }

    /// One page of the live keys that start with `prefix`, after `after`, at most `limit`
    /// (the node caps it at [`crate::node::SCAN_LIMIT_MAX`]), in key order.
    pub async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<ScanEntry>, ClusterError> {
        let mut path = format!("/scan?prefix={}&limit={limit}", encode_key(prefix));
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode_key(a)));
        }
        if consistency == Consistency::Stale {
            path.push_str("&consistency=stale");
        }
        let (_, _, body) = self.send(Method::Get, &path, None, Retry::Always).await?;
        serde_json::from_slice(&body).map_err(|e| ClusterError::Protocol(format!("a scan's reply: {e}")))
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &str, value: Vec<u8>, expiry: Expiry) -> Result<Response, ClusterError> {
        let w = Write::Put {
            key: key.as_bytes().to_vec(),
            value,
            expiry,
        };
        self.write(w, Retry::Always).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<Response, ClusterError> {
        let w = Write::Delete {
            key: key.as_bytes().to_vec(),
        };
        self.write(w, Retry::Always).await
    }

    /// Moves the deadline of `key` if it is live; `applied` says whether it was.
    pub async fn touch(&self, key: &str, expiry: Expiry) -> Result<Response, ClusterError> {
        let w = Write::Touch {
            key: key.as_bytes().to_vec(),
            expiry,
        };
        self.write(w, Retry::Always).await
    }

    /// Writes `value` if the version of `key` is `expected` (`None`: absent or expired).
    /// `applied` says whether it did; `version` is the key's version after the call.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        expiry: Expiry,
    ) -> Result<Response, ClusterError> {
        let w = Write::CompareAndSwap {
            key: key.as_bytes().to_vec(),
            expected,
            value,
            expiry,
        };
        self.write(w, Retry::OnlyIfNotSent).await
    }

    /// Sends `w` through the pipeline, or in a request of its own if there is none.
    async fn write(&self, w: Write, retry: Retry) -> Result<Response, ClusterError> {
        let Some(pipe) = self.pipeline() else {
            return self.write_alone(w, retry).await;
        };
        let (reply, outcome) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = pipe.send(Piped { write: w, retry, reply }) {
            return self.write_alone(p.write, retry).await;
        }
        outcome.await.map_err(|_| {
            ClusterError::Unavailable(
                "the client's pipeline stopped (its runtime ended); the write may or may not have taken effect"
                    .to_string(),
            )
        })?
    }

    /// The pipeline's queue: started on the current tokio runtime if it is not running.
    fn pipeline(&self) -> Option<mpsc::UnboundedSender<Piped>> {
        let mut pipe = self.inner.pipe.lock();
        if let Some(p) = pipe.as_ref().filter(|p| !p.is_closed()) {
            return Some(p.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        // The task holds no strong handle of the client: it ends when the client is dropped.
        runtime.spawn(run_pipeline(Arc::downgrade(&self.inner), rx));
        *pipe = Some(tx.clone());
        Some(tx)
    }

    /// One write in one request of its own (`PUT /kv`, `DELETE /kv`, `POST /touch`, `POST /cas`).
    async fn write_alone(&self, w: Write, retry: Retry) -> Result<Response, ClusterError> {
        let text = |k: &[u8]| encode_key(&String::from_utf8_lossy(k));
        let (method, path, body) = match w {
            Write::Put { key, value, expiry } => (
                Method::Put,
                format!("/kv/{}?{}", text(&key), expiry_query(expiry)),
                Some(value),
            ),
            Write::Delete { key } => (Method::Delete, format!("/kv/{}", text(&key)), None),
            Write::Touch { key, expiry } => (
                Method::Post,
                format!("/touch/{}?{}", text(&key), expiry_query(expiry)),
                None,
            ),
            Write::CompareAndSwap {
                key,
                expected,
                value,
                expiry,
            } => {
                let expected = expected.map_or("none".to_string(), |v| v.to_string());
                let mut path = format!("/cas/{}?expected={expected}", text(&key));
                let e = expiry_query(expiry);
                if !e.is_empty() {
                    path.push('&');
                    path.push_str(&e);
                }
                (Method::Post, path, Some(value))
            }
        };
        let (_, _, body) = self.send(method, &path, body, retry).await?;
        Self::response(&body)
    }

    /// Sends `group` in one `POST /writes` (again, for the writes that may be), and tells each
    /// write its outcome.
    async fn write_group(&self, group: Vec<Piped>) {
        let start = Instant::now();
        let mut pending = group;
        while !pending.is_empty() {
            let all_safe = pending.iter().all(|p| p.retry == Retry::Always);
            let writes: Vec<&Write> = pending.iter().map(|p| &p.write).collect();
            let body = match codec::encode(&writes) {
                Ok(b) => b,
                Err(e) => {
                    let e = ClusterError::Protocol(format!("encoding writes: {e}"));
                    for p in pending {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                    return;
                }
            };
            let retry = if all_safe { Retry::Always } else { Retry::OnlyIfNotSent };
            let sent = self.send(Method::Post, "/writes", Some(body), retry).await;
            let time_left = start.elapsed() < self.inner.deadline;
            let outcomes = sent.and_then(|(_, _, bytes)| {
                let o: Vec<Result<Response, ClusterError>> =
                    codec::decode(&bytes).map_err(|e| ClusterError::Protocol(format!("a reply to writes: {e}")))?;
                if o.len() == pending.len() {
                    Ok(o)
                } else {
                    Err(ClusterError::Protocol(format!(
                        "{} outcomes for {} writes",
                        o.len(),
                        pending.len()
                    )))
                }
            });
            let mut again = Vec::new();
            match outcomes {
                Ok(outcomes) => {
                    for (p, outcome) in pending.into_iter().zip(outcomes) {
                        match outcome {
                            // Not applied: leadership moved while the request was served.
                            Err(ClusterError::NotLeader { .. }) if time_left => again.push(p),
                            o => {
                                let _ = p.reply.send(o);
                            }
                        }
                    }
                }
                // The effect is unknown (or no leader until the deadline): the writes that may be
                // sent again are, while time is left; the others learn it.
                Err(e) => {
                    for p in pending {
                        if p.retry == Retry::Always && !all_safe && time_left {
                            again.push(p);
                        } else {
                            let _ = p.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            pending = again;
        }
    }
}

/// The pipeline: takes the writes queued while up to [`PIPE_IN_FLIGHT`] requests are in flight
/// and sends them together. Ends when the client is gone.
async fn run_pipeline(inner: std::sync::Weak<Inner>, mut queue: mpsc::UnboundedReceiver<Piped>) {
    let slots = Arc::new(Semaphore::new(PIPE_IN_FLIGHT));
    let mut carried: Option<Piped> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = piped_bytes(&first);
        let mut group = vec![first];
        while group.len() < PIPE_WRITES_MAX {
            let Ok(p) = queue.try_recv() else {
                break;
            };
            let size = piped_bytes(&p);
            if bytes + size > PIPE_BYTES_MAX {
                carried = Some(p);
                break;
            }
            bytes += size;
            group.push(p);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = ClusterClient { inner };
        tokio::spawn(async move {
            client.write_group(group).await;
            drop(slot);
        });
    }
}

/// The bytes of a queued write's key and value.
fn piped_bytes(p: &Piped) -> usize {
    match &p.write {
        Write::Put { key, value, .. } | Write::CompareAndSwap { key, value, .. } => key.len() + value.len(),
        Write::Delete { key } | Write::Touch { key, .. } => key.len(),
    }
}
