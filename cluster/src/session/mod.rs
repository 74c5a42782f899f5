//! Session stores for the web frameworks over the cluster ([`crate::ClusterClient`]), with the
//! guarantees of the library's own adapters (`sessiondb::session::tower`,
//! `sessiondb::session::actix`):
//!
//! - [`tower::ClusterTowerStore`] (feature `tower-sessions`): a `tower_sessions::SessionStore`;
//! - [`actix::ClusterActixStore`] (feature `actix-session`): an
//!   `actix_session::storage::SessionStore`.
//!
//! A session is one key of the replicated store: a prefix ([`DEFAULT_PREFIX`], `session/`, or
//! the store's `with_prefix`) followed by the session's id (22 URL-safe characters, 128 random
//! bits), holding the session as JSON, with the session's deadline as the key's expiry.
//!
//! What every store here guarantees:
//! - **Nothing expired is returned.** The cluster expires a key at its deadline, and a load
//!   checks the deadline again against this process's clock (the system clock, or the store's
//!   `with_clock`), so a leader whose clock lags behind the application's does not bring an
//!   expired session back.
//! - **A new session never overwrites another.** It is written with a compare-and-swap that
//!   expects no live value under its id; an id that is taken is replaced by a fresh one. A
//!   compare-and-swap whose outcome is unknown (the cluster did not answer it:
//!   [`crate::ClusterError::Unavailable`]) may have written under its id, so the next attempt
//!   draws a fresh id too, never the same one. (A session written that way and never used
//!   expires at its deadline.)
//! - Reads are linearizable (the leader serves them after confirming it still leads): a
//!   session saved by one application server is what the next request loads, wherever it
//!   lands. The [`crate::ClusterClient`] follows the leader when it changes.
//!
//! The frameworks' interfaces carry no versions, so a save replaces the whole session (the
//! frameworks' "last writer wins"), as the library's adapters do by default.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::{Clock, SystemClock};

use crate::node::{ClusterError, Consistency, Expiry};
use crate::state_machine::Stored;
use crate::ClusterClient;

#[cfg(feature = "actix-session")]
pub mod actix;
#[cfg(feature = "tower-sessions")]
pub mod tower;

#[cfg(feature = "actix-session")]
pub use actix::ClusterActixStore;
#[cfg(feature = "tower-sessions")]
pub use tower::ClusterTowerStore;

/// The key prefix of sessions unless a store is given another (`with_prefix`).
pub const DEFAULT_PREFIX: &str = "session/";

/// Attempts at creating a session under a free id before giving up. Ids are 128 random bits:
/// a second attempt is needed only after an answer was lost (or, astronomically rarely, a
/// collision).
pub const CREATE_ATTEMPTS: usize = 16;

/// How long a create or an update keeps retrying writes whose outcome is unknown: past it,
/// the cluster's failure is the answer. (Each attempt also has the client's own deadline.)
const UNKNOWN_OUTCOME_BUDGET: Duration = Duration::from_secs(10);

/// The most characters of a session id this crate writes or looks up.
const ID_CHARS_MAX: usize = 128;

/// Why a session store's call failed. The framework adapters wrap it in their frameworks'
/// error types; its message says what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionStoreError {
    /// The cluster failed or did not answer in time. Whether a write took effect is as the
    /// [`ClusterError`] says ([`ClusterError::certainly_not_applied`]).
    #[error("session store: {op} a session in the cluster failed: {source}")]
    Cluster {
        /// What the store was doing ("loading", "saving", ...).
        op: &'static str,
        /// The cluster's error.
        #[source]
        source: ClusterError,
    },
    /// Every id drawn for a new session was taken (or its write's outcome was unknown).
    #[error("session store: no free session id after {0} attempts")]
    NoFreeId(usize),
    /// A fresh session id could not be drawn (the OS random generator failed, or a key
    /// generator returned an id that is not 1 to 128 URL-safe characters).
    #[error("session store: drawing a session id failed: {0}")]
    Id(String),
    /// A time-to-live or an expiry the store cannot write.
    #[error("session store: invalid expire time: {0}")]
    InvalidExpiry(String),
}

/// The cluster's failure `source` while doing `op` on session `id`, with the id shortened to
/// its first characters wherever the message names it (a request's URL): ids are credentials
/// and should not reach logs whole.
fn failed(op: &'static str, id: &str, source: ClusterError) -> SessionStoreError {
    let short = format!("{}…", id.get(..4).unwrap_or(""));
    let redact = |s: String| if id.is_empty() { s } else { s.replace(id, &short) };
    let source = match source {
        ClusterError::NoQuorum(s) => ClusterError::NoQuorum(redact(s)),
        ClusterError::BadRequest(s) => ClusterError::BadRequest(redact(s)),
        ClusterError::Membership(s) => ClusterError::Membership(redact(s)),
        ClusterError::Stopped(s) => ClusterError::Stopped(redact(s)),
        ClusterError::Unavailable(s) => ClusterError::Unavailable(redact(s)),
        ClusterError::Protocol(s) => ClusterError::Protocol(redact(s)),
        other => other,
    };
    SessionStoreError::Cluster { op, source }
}

/// What both adapters share: the client, the key prefix and the clock the deadlines are checked
/// against.
#[derive(Clone)]
pub(crate) struct Common {
    pub(crate) client: ClusterClient,
    pub(crate) prefix: String,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("nodes", &self.client.nodes())
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .finish()
    }
}

/// Whether `id` is fit for a key: 1 to [`ID_CHARS_MAX`] URL-safe characters (`A-Z a-z 0-9 - _`).
/// Ids come from cookies: anything else (a `/`, a `..`) could name a key outside the prefix.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=ID_CHARS_MAX).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a value with deadline `expires_at_ms` (0: never) is live at `now_ms`.
pub(crate) fn live_at(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms == 0 || expires_at_ms > now_ms
}

impl Common {
    pub(crate) fn new(client: ClusterClient) -> Common {
        Common {
            client,
            prefix: DEFAULT_PREFIX.to_string(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The key session `id` is stored under.
    pub(crate) fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The live value of session `id`: what the cluster returns, unless its deadline has passed
    /// by this store's clock too.
    pub(crate) async fn get_live(&self, id: &str) -> Result<Option<Stored>, SessionStoreError> {
        let stored = self
            .client
            .get(&self.key(id), Consistency::Linearizable)
            .await
            .map_err(|source| failed("loading", id, source))?;
        let now = self.now_ms();
        Ok(stored.filter(|s| live_at(s.expires_at_ms, now)))
    }

    /// Writes `value` under a free id: `first`, then fresh ids from `fresh` while the id tried
    /// is taken or its write's outcome is unknown. Returns the id written.
    pub(crate) async fn create_unique<I: fmt::Display>(
        &self,
        first: I,
        mut fresh: impl FnMut() -> Result<I, SessionStoreError>,
        value: &[u8],
        expiry: Expiry,
    ) -> Result<I, SessionStoreError> {
        let start = Instant::now();
        let mut id = first;
        // The last attempt's failure, if its outcome was unknown: the answer if none succeeds.
        let mut unknown = None;
        for attempt in 0..CREATE_ATTEMPTS {
            if attempt > 0 {
                id = fresh()?;
            }
            let text = id.to_string();
            if !valid_id(&text) {
                return Err(SessionStoreError::Id(format!(
                    "an id of {} characters, not 1 to {ID_CHARS_MAX} URL-safe ones",
                    text.len()
                )));
            }
            match self
                .client
                .compare_and_swap(&self.key(&text), None, value.to_vec(), expiry)
                .await
            {
                Ok(r) if r.applied => return Ok(id),
                // Taken by a live session: another id.
                Ok(_) => unknown = None,
                // It may have been written under this id: never this id again.
                Err(e @ ClusterError::Unavailable(_)) if start.elapsed() < UNKNOWN_OUTCOME_BUDGET => {
                    unknown = Some(failed("creating", &text, e));
                }
                Err(source) => return Err(failed("creating", &text, source)),
            }
        }
        Err(unknown.unwrap_or(SessionStoreError::NoFreeId(CREATE_ATTEMPTS)))
    }

    /// Replaces the value of session `id` with `value`, expiring at `at_ms`, if it is live (by
    /// the cluster and by this store's clock), whatever its version; returns false, writing
    /// nothing, if it is not. A compare-and-swap against the version read, so a session deleted
    /// meanwhile is not written again.
    #[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
    pub(crate) async fn replace_live(&self, id: &str, value: &[u8], at_ms: u64) -> Result<bool, SessionStoreError> {
        let start = Instant::now();
        // Whether an earlier attempt's outcome is unknown: finding exactly what it wrote means
        // it did.
        let mut maybe_written = false;
        for _ in 0..CREATE_ATTEMPTS {
            let Some(current) = self.get_live(id).await? else {
                return Ok(false);
            };
            if maybe_written && current.value == value && current.expires_at_ms == at_ms {
                return Ok(true);
            }
            match self
                .client
                .compare_and_swap(
                    &self.key(id),
                    Some(current.version),
                    value.to_vec(),
                    Expiry::AtMs(at_ms),
                )
                .await
            {
                Ok(r) if r.applied => return Ok(true),
                // Written meanwhile by another request: read it again.
                Ok(_) => {}
                Err(ClusterError::Unavailable(_)) if start.elapsed() < UNKNOWN_OUTCOME_BUDGET => maybe_written = true,
                Err(source) => return Err(failed("updating", id, source)),
            }
        }
        Err(SessionStoreError::Cluster {
            op: "updating",
            source: ClusterError::Unavailable(format!(
                "the session changed under each of {CREATE_ATTEMPTS} attempts to replace it"
            )),
        })
    }

    /// Writes `value` to session `id` whatever is there (creating it if absent).
    #[cfg_attr(not(feature = "tower-sessions"), allow(dead_code))]
    pub(crate) async fn put(&self, id: &str, value: Vec<u8>, expiry: Expiry) -> Result<(), SessionStoreError> {
        self.client
            .put(&self.key(id), value, expiry)
            .await
            .map(drop)
            .map_err(|source| failed("saving", id, source))
    }

    /// Moves the deadline of session `id` if it is live; false if it is not.
    #[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
    pub(crate) async fn touch(&self, id: &str, expiry: Expiry) -> Result<bool, SessionStoreError> {
        self.client
            .touch(&self.key(id), expiry)
            .await
            .map(|r| r.applied)
            .map_err(|source| failed("extending", id, source))
    }

    /// Removes session `id` (nothing if it is absent).
    pub(crate) async fn delete(&self, id: &str) -> Result<(), SessionStoreError> {
        self.client
            .delete(&self.key(id))
            .await
            .map(drop)
            .map_err(|source| failed("deleting", id, source))
    }
}

/// The deadline `ttl` after `now_ms` (saturating; at least 1, as 0 means "never").
#[cfg_attr(not(feature = "actix-session"), allow(dead_code))]
pub(crate) fn deadline_after(now_ms: u64, ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ttl_ms).max(1)
}
