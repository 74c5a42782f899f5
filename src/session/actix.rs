//! A store for [actix-session] 0.11, behind the `actix-session` feature.
//!
//! [`ActixStore`] implements `actix_session::storage::SessionStore`:
//! - session keys are [`SessionId`] strings (22 URL-safe characters, 128 random bits); a key
//!   that does not parse loads as no session;
//! - the state (`HashMap<String, String>`) is kept as a JSON object; the time-to-live as the
//!   entry's deadline, so `load` never returns an expired session; a zero or negative
//!   time-to-live is refused (as Redis refuses it), never written;
//! - `update` replaces the state whatever its version (actix-session's interface carries
//!   none); like actix-session's Redis store, when the session is gone it creates a new one
//!   under a fresh key; `update_ttl` is a [`SessionStore::touch`];
//! - writes go through the engine's async path (docs/design.md, "Async writes"): a worker
//!   never waits for an fsync and no blocking thread is parked per pending save; loads run on
//!   the worker (they never wait for the disk's writes).
//!
//! [actix-session]: https://docs.rs/actix-session/0.11

use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, UpdateError};

use super::{SessionId, SessionStore};

/// actix-session's `SessionStore` over a [`SessionStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ActixStore {
    sessions: SessionStore,
}

impl ActixStore {
    /// The adapter over `sessions`.
    pub fn new(sessions: SessionStore) -> ActixStore {
        ActixStore { sessions }
    }

    /// The session store underneath.
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }
}

type State = HashMap<String, String>;

/// The time-to-live as a positive `Duration`: a zero or negative one is refused, as Redis
/// refuses it ("invalid expire time"), rather than writing a session that never loads.
fn std_ttl(ttl: &time::Duration) -> Result<Duration, anyhow::Error> {
    match Duration::try_from(*ttl) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(anyhow::anyhow!(
            "invalid expire time: the session time-to-live must be positive, got {ttl}"
        )),
    }
}

fn parse(key: &SessionKey) -> Option<SessionId> {
    key.as_ref().parse().ok()
}

fn key_of(id: SessionId) -> Result<SessionKey, anyhow::Error> {
    SessionKey::try_from(id.to_string()).map_err(anyhow::Error::new)
}

impl actix_session::storage::SessionStore for ActixStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
        let Some(id) = parse(key) else { return Ok(None) };
        // On the worker: a load never waits for the disk's writes (docs/design.md, "Async writes").
        let session = self.sessions.load(&id).map_err(|e| LoadError::Other(e.into()))?;
        match session {
            None => Ok(None),
            Some(session) => serde_json::from_slice(&session.data)
                .map(Some)
                .map_err(|e| LoadError::Deserialization(e.into())),
        }
    }

    async fn save(&self, state: State, ttl: &time::Duration) -> Result<SessionKey, SaveError> {
        let ttl = std_ttl(ttl).map_err(SaveError::Other)?;
        let data = serde_json::to_vec(&state).map_err(|e| SaveError::Serialization(e.into()))?;
        let id = self
            .sessions
            .create_async(&data, ttl)
            .await
            .map_err(|e| SaveError::Other(e.into()))?;
        key_of(id).map_err(SaveError::Other)
    }

    async fn update(&self, key: SessionKey, state: State, ttl: &time::Duration) -> Result<SessionKey, UpdateError> {
        let ttl = std_ttl(ttl).map_err(UpdateError::Other)?;
        let data = serde_json::to_vec(&state).map_err(|e| UpdateError::Serialization(e.into()))?;
        let other = |e: crate::Error| UpdateError::Other(e.into());
        if let Some(id) = parse(&key) {
            if self
                .sessions
                .replace_async(&id, &data, ttl, false)
                .await
                .map_err(other)?
                .is_some()
            {
                return Ok(key);
            }
        }
        let fresh = self.sessions.create_async(&data, ttl).await.map_err(other)?;
        key_of(fresh).map_err(UpdateError::Other)
    }

    async fn update_ttl(&self, key: &SessionKey, ttl: &time::Duration) -> Result<(), anyhow::Error> {
        let ttl = std_ttl(ttl)?;
        let Some(id) = parse(key) else { return Ok(()) };
        self.sessions.touch_async(&id, ttl).await?;
        Ok(())
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
        let Some(id) = parse(key) else { return Ok(()) };
        self.sessions.destroy_async(&id).await?;
        Ok(())
    }
}
