//! A store for [tower-sessions] 0.15 (axum) over the cluster, behind the `tower-sessions`
//! feature.
//!
//! [`ClusterTowerStore`] implements `tower_sessions::SessionStore` over a
//! [`ClusterClient`], as the library's `TowerStore` does over a local store:
//! - a session is the key `session/<id>` (the prefix is [`ClusterTowerStore::with_prefix`]'s;
//!   the id is tower-sessions' own, 22 URL-safe characters) holding `{"data": {...},
//!   "expiry_ns": "..."}`: the record's data, and its exact `expiry_date` in Unix nanoseconds
//!   (returned as saved, as upstream stores do). The key's deadline is that expiry rounded down
//!   to the millisecond, so the cluster drops the session at its expiry;
//! - `create` writes with a compare-and-swap that expects no live session under the id, and
//!   draws another id while the one tried is taken or its write's outcome is unknown (the
//!   module [`super`] says why never the same one);
//! - `save` writes the record whatever is there (the framework's "last writer wins"; its
//!   records carry no versions); a record saved already expired deletes the session;
//! - `load` returns nothing expired: the cluster does not return a key past its deadline, and
//!   the deadline is checked again against this process's clock
//!   ([`ClusterTowerStore::with_clock`]);
//! - `delete` removes the key.
//!
//! Expired sessions are dropped by the cluster itself; no `ExpiredDeletion` task is needed.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sessiondb_cluster::session::ClusterTowerStore;
//! use sessiondb_cluster::ClusterClient;
//! use tower_sessions::{Expiry, SessionManagerLayer};
//!
//! let client = ClusterClient::new(["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])?;
//! let layer = SessionManagerLayer::new(ClusterTowerStore::new(client))
//!     .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
//! # let _ = layer; Ok(()) }
//! ```
//!
//! [tower-sessions]: https://docs.rs/tower-sessions/0.15

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sessiondb::Clock;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store;

use super::{live_at, Common, SessionStoreError};
use crate::node::Expiry;
use crate::ClusterClient;

/// tower-sessions' `SessionStore` over the cluster. Cheap to clone (clones share the client).
#[derive(Debug, Clone)]
pub struct ClusterTowerStore {
    common: Common,
}

impl ClusterTowerStore {
    /// The store over `client` (give it every node's address: it follows the leader), with
    /// sessions under [`super::DEFAULT_PREFIX`] and deadlines checked against the system clock.
    pub fn new(client: ClusterClient) -> ClusterTowerStore {
        ClusterTowerStore {
            common: Common::new(client),
        }
    }

    /// Sessions under the keys that start with `prefix` instead (`session/` by default): for
    /// several applications on one cluster. Use URL-safe characters and `/`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> ClusterTowerStore {
        self.common.prefix = prefix.into();
        self
    }

    /// Checks deadlines against `clock` instead of the system clock (a `sessiondb::ManualClock`
    /// in tests). Only this store's checks use it: the cluster expires keys on its nodes' clocks.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> ClusterTowerStore {
        self.common.clock = clock;
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &ClusterClient {
        &self.common.client
    }

    /// The cluster key that session `id` is stored under (for operators' tools and tests).
    pub fn key_of(&self, id: &Id) -> String {
        self.common.key(&id.to_string())
    }
}

/// A record's data, as tower-sessions holds it.
type Data = HashMap<String, serde_json::Value>;

/// A session as it is stored, to write.
#[derive(Serialize)]
struct StoredRef<'a> {
    data: &'a Data,
    /// The record's `expiry_date` in Unix nanoseconds, as a string (JSON readers other than
    /// serde's may hold numbers as doubles).
    expiry_ns: String,
}

/// A session as it is stored, read.
#[derive(Deserialize)]
struct StoredOwned {
    data: Data,
    #[serde(default)]
    expiry_ns: Option<String>,
}

fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    let stored = StoredRef {
        data: &record.data,
        expiry_ns: record.expiry_date.unix_timestamp_nanos().to_string(),
    };
    serde_json::to_vec(&stored).map_err(|e| session_store::Error::Encode(format!("session record as JSON: {e}")))
}

fn backend(e: SessionStoreError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

/// The key deadline of `expiry`: rounded down to the millisecond, so a session is never loaded
/// after its exact expiry; 1 (long past) for an expiry before 1970.
fn deadline_ms(expiry: OffsetDateTime) -> u64 {
    let ms = expiry.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).unwrap_or(1).max(1)
}

/// The latest instant `time` shows without its `large-dates` feature: the expiry of a session
/// stored without a deadline or an expiry of its own (written by another tool).
fn far_future() -> OffsetDateTime {
    // 9999-12-31T23:59:59Z.
    OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The expiry to return for a session whose key's deadline is `deadline_ms` (0: never) and
/// whose stored exact expiry is `exact_ns`: the exact one if the deadline is its rounding (a
/// touch through the cluster's API moves the deadline and leaves the stored expiry behind),
/// else the deadline.
fn expiry_of(deadline_ms: u64, exact_ns: Option<&str>) -> session_store::Result<OffsetDateTime> {
    let decode = |e: time::error::ComponentRange| session_store::Error::Decode(format!("session expiry: {e}"));
    let exact = exact_ns.and_then(|s| s.parse::<i128>().ok());
    let ns = match (deadline_ms, exact) {
        (0, Some(ns)) => ns,
        (0, None) => return Ok(far_future()),
        (d, Some(ns)) if ns.div_euclid(1_000_000) == i128::from(d) => ns,
        (d, _) => i128::from(d) * 1_000_000,
    };
    OffsetDateTime::from_unix_timestamp_nanos(ns).map_err(decode)
}

#[async_trait]
impl tower_sessions_core::SessionStore for ClusterTowerStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let value = encode(record)?;
        // A record already expired is written expired (never loaded; the cluster drops it), and
        // its id still must not be a live session's.
        let expiry = Expiry::AtMs(deadline_ms(record.expiry_date));
        let id = self
            .common
            .create_unique(record.id, || Ok(Id::default()), &value, expiry)
            .await
            .map_err(backend)?;
        record.id = id;
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = record.id.to_string();
        let at = deadline_ms(record.expiry_date);
        let saved = if live_at(at, self.common.now_ms()) {
            self.common.put(&id, encode(record)?, Expiry::AtMs(at)).await
        } else {
            self.common.delete(&id).await
        };
        saved.map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(stored) = self.common.get_live(&id.to_string()).await.map_err(backend)? else {
            return Ok(None);
        };
        let session: StoredOwned = serde_json::from_slice(&stored.value)
            .map_err(|e| session_store::Error::Decode(format!("session record from JSON: {e}")))?;
        let expiry_date = expiry_of(stored.expires_at_ms, session.expiry_ns.as_deref())?;
        // The stored expiry too (the key's deadline may be later, or never, if another tool
        // wrote it), on this store's clock.
        if !live_at(deadline_ms(expiry_date), self.common.now_ms()) {
            return Ok(None);
        }
        Ok(Some(Record {
            id: *id,
            data: session.data,
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.common.delete(&id.to_string()).await.map_err(backend)
    }
}
