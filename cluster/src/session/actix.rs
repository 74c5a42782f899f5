//! A store for [actix-session] 0.11 over the cluster, behind the `actix-session` feature.
//!
//! [`ClusterActixStore`] implements `actix_session::storage::SessionStore` over a
//! [`ClusterClient`], as the library's `ActixStore` does over a local store:
//! - a session key is 22 URL-safe characters (128 bits from the OS random generator, as
//!   `sessiondb::session::SessionId` draws them), stored under `session/<key>` (the prefix is
//!   [`ClusterActixStore::with_prefix`]'s); a key from a cookie that is not 1 to 128 URL-safe
//!   characters loads as no session and is never sent to the cluster;
//! - the state (`HashMap<String, String>`) is kept as a JSON object, the time-to-live as the
//!   key's deadline, from this process's clock ([`ClusterActixStore::with_clock`]); a zero or
//!   negative time-to-live is refused (as Redis refuses it), never written;
//! - `save` writes under a fresh key with a compare-and-swap that expects no live session
//!   there, and draws another key while the one tried is taken or its write's outcome is
//!   unknown (the module [`super`] says why never the same one);
//! - `load` returns nothing expired: the cluster does not return a key past its deadline, and
//!   the deadline is checked again against this process's clock;
//! - `update` replaces the state whatever it was (actix-session's interface carries no
//!   versions), but only while the session is live: like the library's store and actix-session's
//!   Redis store, when the session is gone (deleted, expired) it creates a new one under a fresh
//!   key and returns that key, never writing the old key again;
//! - `update_ttl` moves the deadline of a live session and does nothing to one that is gone;
//!   `delete` removes the key.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use actix_session::SessionMiddleware;
//! use sessiondb_cluster::session::ClusterActixStore;
//! use sessiondb_cluster::ClusterClient;
//!
//! let client = ClusterClient::new(["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])?;
//! let store = ClusterActixStore::new(client);
//! let key = actix_web::cookie::Key::generate();
//! let middleware = SessionMiddleware::new(store, key);
//! # let _ = middleware; Ok(()) }
//! ```
//!
//! [actix-session]: https://docs.rs/actix-session/0.11

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use actix_session::storage::{LoadError, SaveError, SessionKey, UpdateError};
use sessiondb::session::SessionId;
use sessiondb::Clock;

use super::{deadline_after, valid_id, Common, SessionStoreError};
use crate::node::Expiry;
use crate::ClusterClient;

/// Where [`ClusterActixStore::with_key_generator`]'s session keys come from.
pub type KeyGenerator = Arc<dyn Fn() -> Result<String, anyhow::Error> + Send + Sync>;

/// actix-session's `SessionStore` over the cluster. Cheap to clone (clones share the client).
#[derive(Clone)]
pub struct ClusterActixStore {
    common: Common,
    keys: Option<KeyGenerator>,
}

impl fmt::Debug for ClusterActixStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterActixStore")
            .field("common", &self.common)
            .field("key_generator", &self.keys.is_some())
            .finish()
    }
}

/// A session's state, as actix-session holds it.
type State = HashMap<String, String>;

impl ClusterActixStore {
    /// The store over `client` (give it every node's address: it follows the leader), with
    /// sessions under [`super::DEFAULT_PREFIX`] and deadlines from the system clock.
    pub fn new(client: ClusterClient) -> ClusterActixStore {
        ClusterActixStore {
            common: Common::new(client),
            keys: None,
        }
    }

    /// Sessions under the keys that start with `prefix` instead (`session/` by default): for
    /// several applications on one cluster. Use URL-safe characters and `/`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> ClusterActixStore {
        self.common.prefix = prefix.into();
        self
    }

    /// Takes deadlines from `clock`, and checks them against it, instead of the system clock (a
    /// `sessiondb::ManualClock` in tests). The cluster still expires keys on its nodes' clocks.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> ClusterActixStore {
        self.common.clock = clock;
        self
    }

    /// New session keys from `generator` instead of 128 bits from the OS random generator. A
    /// key must be 1 to 128 URL-safe characters (`A-Z a-z 0-9 - _`; others are an error) and
    /// must be unguessable: it is the session's only credential. For tests (forcing a taken
    /// key) and keys of an application's own scheme.
    #[must_use]
    pub fn with_key_generator(mut self, generator: KeyGenerator) -> ClusterActixStore {
        self.keys = Some(generator);
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &ClusterClient {
        &self.common.client
    }

    /// The cluster key that the session with `key` is stored under (for operators' tools and
    /// tests).
    pub fn key_of(&self, key: &SessionKey) -> String {
        self.common.key(key.as_ref())
    }

    /// A fresh session key.
    fn fresh_key(&self) -> Result<String, SessionStoreError> {
        match &self.keys {
            Some(generate) => generate().map_err(|e| SessionStoreError::Id(format!("{e:#}"))),
            None => SessionId::generate()
                .map(|id| id.to_string())
                .map_err(|e| SessionStoreError::Id(e.to_string())),
        }
    }

    /// The deadline of a session written now with time-to-live `ttl`, which must be positive
    /// (Redis refuses others as "invalid expire time", rather than write a session that never
    /// loads).
    fn deadline(&self, ttl: &time::Duration) -> Result<u64, SessionStoreError> {
        match std::time::Duration::try_from(*ttl) {
            Ok(d) if !d.is_zero() => Ok(deadline_after(self.common.now_ms(), d)),
            _ => Err(SessionStoreError::InvalidExpiry(format!(
                "the session time-to-live must be positive, got {ttl}"
            ))),
        }
    }

    /// Writes `data` as a new session expiring at `at_ms`; returns its key.
    async fn create(&self, data: &[u8], at_ms: u64) -> Result<SessionKey, anyhow::Error> {
        let first = self.fresh_key()?;
        let key = self
            .common
            .create_unique(first, || self.fresh_key(), data, Expiry::AtMs(at_ms))
            .await?;
        Ok(SessionKey::try_from(key)?)
    }
}

impl actix_session::storage::SessionStore for ClusterActixStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
        if !valid_id(key.as_ref()) {
            return Ok(None);
        }
        let stored = self
            .common
            .get_live(key.as_ref())
            .await
            .map_err(|e| LoadError::Other(e.into()))?;
        match stored {
            None => Ok(None),
            Some(s) => serde_json::from_slice(&s.value).map(Some).map_err(|e| {
                LoadError::Deserialization(anyhow::Error::new(e).context("session store: a session's state as JSON"))
            }),
        }
    }

    async fn save(&self, state: State, ttl: &time::Duration) -> Result<SessionKey, SaveError> {
        let at = self.deadline(ttl).map_err(|e| SaveError::Other(e.into()))?;
        let data = serde_json::to_vec(&state).map_err(|e| SaveError::Serialization(e.into()))?;
        self.create(&data, at).await.map_err(SaveError::Other)
    }

    async fn update(&self, key: SessionKey, state: State, ttl: &time::Duration) -> Result<SessionKey, UpdateError> {
        let at = self.deadline(ttl).map_err(|e| UpdateError::Other(e.into()))?;
        let data = serde_json::to_vec(&state).map_err(|e| UpdateError::Serialization(e.into()))?;
        if valid_id(key.as_ref())
            && self
                .common
                .replace_live(key.as_ref(), &data, at)
                .await
                .map_err(|e| UpdateError::Other(e.into()))?
        {
            return Ok(key);
        }
        // Gone (deleted or expired): a new session under a fresh key; the old one stays gone.
        self.create(&data, at).await.map_err(UpdateError::Other)
    }

    async fn update_ttl(&self, key: &SessionKey, ttl: &time::Duration) -> Result<(), anyhow::Error> {
        let at = self.deadline(ttl)?;
        if !valid_id(key.as_ref()) {
            return Ok(());
        }
        // A session that is gone stays gone (the touch is not applied to it).
        self.common.touch(key.as_ref(), Expiry::AtMs(at)).await?;
        Ok(())
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
        if !valid_id(key.as_ref()) {
            return Ok(());
        }
        self.common.delete(key.as_ref()).await?;
        Ok(())
    }
}
