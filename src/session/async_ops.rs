//! The session operations the web-framework adapters call, in async form (issue 17), public for
//! other frameworks' stores (with the `tower-sessions` or `actix-session` feature): writes go
//! through the engine's async path (`Db::write_if_async`), so a task waits for its commit group
//! without a thread waiting for it, and the attempts on one session take turns on an async
//! lock. Each gives the answers of its blocking namesake in `mod.rs` and builds the same
//! batches (`insert_batch`, `replace_batch`, `touch_batch`, `destroy_batch`).
//!
//! The blocking and the async operations queue on different locks: a blocking `set` and an
//! async one on the same session do not take turns, and the version checks alone decide
//! between them (as between two processes' stores).

use std::time::Duration;

use crate::batch::Batch;
use crate::error::{Conflict, Result};

use super::{insert_batch, stripe_of, SessionId, SessionStore, Until};

impl SessionStore {
    /// A write of the session layer's, with its durability, through the async path.
    async fn write_async(&self, mut batch: Batch) -> Result<std::result::Result<u64, Conflict>> {
        batch.durability(self.opts.write_durability);
        self.db.write_if_async(batch).await
    }

    /// [`SessionStore::create_with_id`], async.
    pub async fn create_with_id_async(&self, id: &SessionId, data: &[u8], ttl: Duration) -> Result<bool> {
        self.create_with_id_until_async(id, data, Until::Ttl(ttl)).await
    }

    /// [`SessionStore::create_with_id_async`] expiring as `until` says.
    pub(crate) async fn create_with_id_until_async(&self, id: &SessionId, data: &[u8], until: Until) -> Result<bool> {
        self.check_size(data)?;
        let record = self.encode(None, data);
        let batch = insert_batch(None, id, &record, until)?;
        Ok(self.write_async(batch).await?.is_ok())
    }

    /// [`SessionStore::create`], async.
    pub async fn create_async(&self, data: &[u8], ttl: Duration) -> Result<SessionId> {
        self.check_size(data)?;
        let record = self.encode(None, data);
        for _ in 0..self.opts.retries_max {
            let id = SessionId::generate()?;
            if self
                .write_async(insert_batch(None, &id, &record, Until::Ttl(ttl))?)
                .await?
                .is_ok()
            {
                return Ok(id);
            }
        }
        Err(self.no_free_id())
    }

    /// [`SessionStore::set`], async.
    pub async fn set_async(&self, id: &SessionId, data: &[u8], ttl: Duration) -> Result<u64> {
        self.set_until_async(id, data, Until::Ttl(ttl)).await
    }

    /// [`SessionStore::set_async`] expiring as `until` says.
    pub(crate) async fn set_until_async(&self, id: &SessionId, data: &[u8], until: Until) -> Result<u64> {
        match self.replace_until_async(id, data, until, true).await? {
            Some(version) => Ok(version),
            None => Err(self.gave_up(id)),
        }
    }

    /// [`SessionStore::replace`] (`create`: [`SessionStore::set`]), async.
    pub async fn replace_async(&self, id: &SessionId, data: &[u8], ttl: Duration, create: bool) -> Result<Option<u64>> {
        self.replace_until_async(id, data, Until::Ttl(ttl), create).await
    }

    /// [`SessionStore::replace_async`] expiring as `until` says.
    async fn replace_until_async(
        &self,
        id: &SessionId,
        data: &[u8],
        until: Until,
        create: bool,
    ) -> Result<Option<u64>> {
        self.check_size(data)?;
        let _turn = self.async_stripes[stripe_of(id)].lock().await;
        for _ in 0..self.opts.retries_max {
            let stored = self.get(id)?;
            let Some(batch) = self.replace_batch(id, stored.as_ref(), data, until, create)? else {
                return Ok(None);
            };
            if let Ok(version) = self.write_async(batch).await? {
                return Ok(Some(version));
            }
        }
        Err(self.gave_up(id))
    }

    /// Writes what `make` makes of session `id`'s current data (its data migrated as a load
    /// migrates it, or `None` if there is no live session), creating the session if there is
    /// none, expiring as `until` says: a read-modify-write that another save cannot slip into
    /// (a version check; `make` is called again, on what is there then, after a conflict).
    /// Returns the new version. The tower adapter's merge on save.
    #[cfg(feature = "tower-sessions")]
    pub(crate) async fn update_until_async(
        &self,
        id: &SessionId,
        until: Until,
        mut make: impl FnMut(Option<&[u8]>) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let _turn = self.async_stripes[stripe_of(id)].lock().await;
        for _ in 0..self.opts.retries_max {
            let stored = self.get(id)?;
            let current = match &stored {
                Some(s) => {
                    let r = s.decode(self.db.path())?;
                    Some(self.migrations.apply(r.payload_version, r.data.to_vec())?)
                }
                None => None,
            };
            let data = make(current.as_deref())?;
            self.check_size(&data)?;
            let Some(batch) = self.replace_batch(id, stored.as_ref(), &data, until, true)? else {
                break;
            };
            if let Ok(version) = self.write_async(batch).await? {
                return Ok(version);
            }
        }
        Err(self.gave_up(id))
    }

    /// [`SessionStore::touch`], async.
    pub async fn touch_async(&self, id: &SessionId, ttl: Duration) -> Result<bool> {
        let _turn = self.async_stripes[stripe_of(id)].lock().await;
        for _ in 0..self.opts.retries_max {
            let Some(stored) = self.get(id)? else { return Ok(false) };
            if self
                .db
                .write_if_async(self.touch_batch(id, &stored, ttl)?)
                .await?
                .is_ok()
            {
                return Ok(true);
            }
        }
        Err(self.gave_up(id))
    }

    /// [`SessionStore::destroy`], async.
    pub async fn destroy_async(&self, id: &SessionId) -> Result<bool> {
        let _turn = self.async_stripes[stripe_of(id)].lock().await;
        for _ in 0..self.opts.retries_max {
            let Some(stored) = self.get(id)? else { return Ok(false) };
            if self.write_async(self.destroy_batch(id, &stored)?).await?.is_ok() {
                return Ok(true);
            }
        }
        Err(self.gave_up(id))
    }
}
