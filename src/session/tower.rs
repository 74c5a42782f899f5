//! A store for [tower-sessions] 0.15 (axum and other tower services), behind the
//! `tower-sessions` feature.
//!
//! [`TowerStore`] implements `tower_sessions_core::SessionStore` and `ExpiredDeletion`:
//! - ids are the framework's 128-bit ids, kept as [`SessionId`]s (same bytes, same string
//!   form); `create` draws a fresh id when the framework's one is taken, never overwriting;
//! - the record's data is kept as a JSON object (bincode cannot encode `serde_json::Value`),
//!   with the exact `expiry_date` under the reserved name [`EXACT_EXPIRY_FIELD`] (returned as
//!   saved, to the nanosecond, as upstream stores do), and the `expiry_date` rounded down to the
//!   millisecond as the entry's deadline, so `load` never returns an expired session and
//!   the engine's sweeper and checkpoints drop them;
//! - `save` is the framework's "last writer wins" ([`SessionStore::set`]), since its records
//!   carry no versions; a record saved already expired deletes the session. Opt in to
//!   [`TowerStore::with_merge_on_save`] and a save writes only the entries its request changed,
//!   over what concurrent requests on the same session saved meanwhile (docs/sessions.md,
//!   "Concurrent requests on one session");
//! - writes go through the engine's async path (docs/design.md, "Async writes"): no executor
//!   thread waits for an fsync and no blocking thread is parked per pending save; loads run on
//!   the executor (they never wait for the disk's writes); `delete_expired`, a sweep of the
//!   whole index, runs on tokio's blocking pool.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sessiondb::session::{tower::TowerStore, SessionStore};
//! use tower_sessions::{Expiry, SessionManagerLayer};
//!
//! let store = TowerStore::new(SessionStore::open("sessions")?);
//! let layer = SessionManagerLayer::new(store)
//!     .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
//! # let _ = layer; Ok(()) }
//! ```
//!
//! [tower-sessions]: https://docs.rs/tower-sessions/0.15

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion};

use super::{off_executor, AdapterError, SessionId, SessionStore, Until};

/// tower-sessions' `SessionStore` over a [`SessionStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TowerStore {
    sessions: SessionStore,
    /// What each request loaded, when saves merge ([`TowerStore::with_merge_on_save`]).
    bases: Option<Arc<Bases>>,
}

impl TowerStore {
    /// The adapter over `sessions`; a save replaces the whole session (the framework's "last
    /// writer wins").
    pub fn new(sessions: SessionStore) -> TowerStore {
        TowerStore { sessions, bases: None }
    }

    /// Saves merge instead: a save writes the entries its request changed (set, changed or
    /// removed since its load) over the session as it is then, so concurrent requests on one
    /// session that change different entries all keep their changes. Two requests changing
    /// the same entry: the later save's value stays (last writer wins, per entry).
    ///
    /// The adapter remembers what each request loaded by the tokio task that loaded it (a
    /// request's load and save run in its connection's task, as axum and hyper serve them),
    /// up to [`MERGE_BASES_MAX`] loads at a time; a save with no load remembered (made outside
    /// a task, from another task than its load, or after the oldest half of the loads was
    /// forgotten) replaces the whole session, as without this option. Costs a copy of the data
    /// at each load and a decode of the stored data at each save.
    pub fn with_merge_on_save(mut self) -> TowerStore {
        self.bases = Some(Arc::default());
        self
    }

    /// The session store underneath.
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }
}

/// The most loads [`TowerStore::with_merge_on_save`] remembers at once; when full, it forgets
/// the oldest half (a load that is never saved, a read-only request's, is forgotten this way).
pub const MERGE_BASES_MAX: usize = 16_384;

/// A record's data, as tower-sessions holds it.
type Data = HashMap<String, serde_json::Value>;

/// The data each request loaded, by (tokio task, session): what a merging save compares its
/// record with to find what its request changed.
#[derive(Debug, Default)]
struct Bases {
    inner: parking_lot::Mutex<BasesInner>,
}

#[derive(Debug, Default)]
struct BasesInner {
    /// Each load's data, with the load's number (its age).
    loaded: HashMap<(tokio::task::Id, SessionId), (u64, Arc<Data>)>,
    /// The next load's number.
    next: u64,
}

impl Bases {
    fn remember(&self, id: SessionId, data: &Data) {
        let Some(task) = tokio::task::try_id() else { return };
        let data = Arc::new(data.clone());
        let mut inner = self.inner.lock();
        if inner.loaded.len() >= MERGE_BASES_MAX {
            // Numbers are distinct and below `next`: at least half of the entries go.
            let keep_from = inner.next.saturating_sub((MERGE_BASES_MAX / 2) as u64);
            inner.loaded.retain(|_, (n, _)| *n >= keep_from);
        }
        let n = inner.next;
        inner.next += 1;
        inner.loaded.insert((task, id), (n, data));
    }

    fn take(&self, id: SessionId) -> Option<Arc<Data>> {
        let task = tokio::task::try_id()?;
        self.inner.lock().loaded.remove(&(task, id)).map(|(_, d)| d)
    }
}

fn to_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

fn from_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

fn backend(e: AdapterError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn engine(e: crate::Error) -> session_store::Error {
    backend(AdapterError::Engine(e))
}

impl TowerStore {
    /// Creates the session under `first`, or under a fresh id if `first` is a live session's.
    /// A record already expired is written expired (never loaded, swept later); its id still
    /// must not be a live session's.
    async fn create_with_first(
        &self,
        first: SessionId,
        data: &[u8],
        expiry: OffsetDateTime,
    ) -> crate::Result<Option<SessionId>> {
        let s = &self.sessions;
        let until = deadline_of(s, expiry).map_or(Until::Ttl(Duration::ZERO), Until::At);
        let mut id = first;
        for _ in 0..s.opts.retries_max {
            if s.create_with_id_until_async(&id, data, until).await? {
                return Ok(Some(id));
            }
            id = SessionId::generate()?;
        }
        Ok(None)
    }
}

/// The engine deadline of `expiry`: rounded down to the millisecond, so a session is never
/// loaded after its exact expiry; `None` if that has passed by the store's clock.
fn deadline_of(sessions: &SessionStore, expiry: OffsetDateTime) -> Option<u64> {
    let deadline_ms = expiry.unix_timestamp_nanos().div_euclid(1_000_000);
    let deadline_ms = u64::try_from(deadline_ms).ok()?;
    (deadline_ms > sessions.db().now_ms()).then_some(deadline_ms)
}

/// The latest instant `time` can show without its `large-dates` feature, for a session that has
/// no deadline (one written without a time-to-live through the Rust API).
fn far_future() -> OffsetDateTime {
    // 9999-12-31T23:59:59Z.
    OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The name under which the stored JSON object keeps the record's exact `expiry_date` (Unix
/// nanoseconds, as a string): the engine's deadline has whole milliseconds, and upstream stores
/// return the expiry exactly as saved. Reserved: the adapter removes it from what it loads.
pub const EXACT_EXPIRY_FIELD: &str = "__sessiondb_expiry_ns";

/// The record's data with its exact expiry, as stored.
#[derive(serde::Serialize)]
struct StoredData<'a> {
    #[serde(flatten)]
    data: &'a std::collections::HashMap<String, serde_json::Value>,
    #[serde(rename = "__sessiondb_expiry_ns")]
    expiry_ns: String,
}

fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    encode_data(&record.data, record.expiry_date).map_err(|e| session_store::Error::Encode(e.to_string()))
}

fn encode_data(data: &Data, expiry: OffsetDateTime) -> serde_json::Result<Vec<u8>> {
    let stored = StoredData {
        data,
        expiry_ns: expiry.unix_timestamp_nanos().to_string(),
    };
    serde_json::to_vec(&stored)
}

/// The entries `record` changed since `base` was loaded: each with its new value, or `None`
/// where it was removed.
fn changes<'a>(base: &Data, record: &'a Data) -> Vec<(String, Option<&'a serde_json::Value>)> {
    let removed = base.keys().filter(|k| !record.contains_key(*k));
    let set = record.iter().filter(|(k, v)| base.get(*k) != Some(*v)).map(|(k, _)| k);
    removed.chain(set).map(|k| (k.clone(), record.get(k))).collect()
}

/// What a merging save writes: `changes` applied to the stored data `current` (the session as it
/// is now; without it, or if it is not a JSON object, the record's data alone).
fn merged(
    current: Option<&[u8]>,
    changes: &[(String, Option<&serde_json::Value>)],
    record: &Record,
) -> crate::Result<Vec<u8>> {
    let now = current.and_then(|c| serde_json::from_slice::<Data>(c).ok());
    let bytes = match now {
        Some(mut now) => {
            now.remove(EXACT_EXPIRY_FIELD);
            for (k, v) in changes {
                match v {
                    Some(v) => now.insert(k.clone(), (*v).clone()),
                    None => now.remove(k),
                };
            }
            encode_data(&now, record.expiry_date)
        }
        None => encode_data(&record.data, record.expiry_date),
    };
    bytes.map_err(|e| crate::Error::SessionData(e.to_string()))
}

/// The expiry to return for a session whose engine deadline is `deadline_ms`: the exact one
/// saved, if `exact` (the stored field) is that deadline's (a touch through another API moves
/// the deadline and leaves the field behind); else the deadline itself.
fn expiry_of(deadline_ms: u64, exact: Option<serde_json::Value>) -> session_store::Result<OffsetDateTime> {
    let decode = |e: time::error::ComponentRange| session_store::Error::Decode(e.to_string());
    let exact = exact
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse::<i128>().ok())
        .filter(|ns| ns.div_euclid(1_000_000) == i128::from(deadline_ms));
    match exact {
        Some(ns) => OffsetDateTime::from_unix_timestamp_nanos(ns).map_err(decode),
        None => OffsetDateTime::from_unix_timestamp_nanos(i128::from(deadline_ms) * 1_000_000).map_err(decode),
    }
}

#[async_trait]
impl tower_sessions_core::SessionStore for TowerStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = encode(record)?;
        let (expiry, first) = (record.expiry_date, to_id(&record.id));
        let id = self.create_with_first(first, &data, expiry).await.map_err(engine)?;
        match id {
            Some(id) => {
                record.id = from_id(&id);
                Ok(())
            }
            None => Err(session_store::Error::Backend(
                "no free session id after many draws".into(),
            )),
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let (id, expiry) = (to_id(&record.id), record.expiry_date);
        let s = &self.sessions;
        let base = self.bases.as_ref().and_then(|b| b.take(id));
        let saved = match (deadline_of(s, expiry), base) {
            (None, _) => s.destroy_async(&id).await.map(drop),
            (Some(ms), None) => s.set_until_async(&id, &encode(record)?, Until::At(ms)).await.map(drop),
            (Some(ms), Some(base)) => {
                let changes = changes(&base, &record.data);
                s.update_until_async(&id, Until::At(ms), |current| merged(current, &changes, record))
                    .await
                    .map(drop)
            }
        };
        saved.map_err(engine)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        // On the executor: a load never waits for the disk's writes (docs/design.md, "Async
        // writes").
        let Some(session) = self.sessions.load(&to_id(id)).map_err(engine)? else {
            return Ok(None);
        };
        let mut data: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_slice(&session.data).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        let exact = data.remove(EXACT_EXPIRY_FIELD);
        if let Some(bases) = &self.bases {
            bases.remember(to_id(id), &data);
        }
        let expiry_date = match session.expires_at_ms {
            Some(ms) => expiry_of(ms, exact)?,
            None => far_future(),
        };
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        if let Some(bases) = &self.bases {
            bases.take(to_id(id));
        }
        self.sessions.destroy_async(&to_id(id)).await.map(drop).map_err(engine)
    }
}

#[async_trait]
impl ExpiredDeletion for TowerStore {
    /// Drops every expired session from memory now. Expired sessions are never returned
    /// anyway, and the engine's sweeper drops them a little at a time; this is for
    /// `continuously_delete_expired`.
    async fn delete_expired(&self) -> session_store::Result<()> {
        off_executor(&self.sessions, |s| Ok(s.purge_expired()))
            .await
            .map(drop)
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loads remembered for merging stay bounded: past [`MERGE_BASES_MAX`] the oldest half
    /// goes, and the newest load is always kept.
    #[test]
    fn remembered_loads_are_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            tokio::spawn(async {
                let bases = Bases::default();
                let data = Data::new();
                let ids: Vec<SessionId> = (0..=MERGE_BASES_MAX as u64)
                    .map(|n| SessionId::from_bytes(u128::from(n).to_le_bytes()))
                    .collect();
                for id in &ids {
                    bases.remember(*id, &data);
                    assert!(bases.inner.lock().loaded.len() <= MERGE_BASES_MAX);
                }
                assert!(bases.inner.lock().loaded.len() > MERGE_BASES_MAX / 2);
                assert!(
                    bases.take(ids[MERGE_BASES_MAX]).is_some(),
                    "the newest load was forgotten"
                );
                assert!(bases.take(ids[0]).is_none(), "the oldest load was kept");
                assert!(bases.take(ids[MERGE_BASES_MAX]).is_none(), "a load was taken twice");
            })
            .await
            .unwrap();
        });
        // Outside a task nothing is remembered.
        let bases = Bases::default();
        bases.remember(SessionId::from_bytes([1; 16]), &Data::new());
        assert!(bases.inner.lock().loaded.is_empty());
    }
}
