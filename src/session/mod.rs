//! Session stores: sessions with ids, expiry, versions that refuse lost updates, map-shaped
//! sessions whose concurrent saves merge, and a per-user index. See docs/sessions.md.
//!
//! Keys (all under a `\0` byte, so they sort apart from an application's own keys):
//! - `\0s` + the 16 id bytes → the session record (`format::SessionRecord`);
//! - `\0u` + user length (`u16`, big-endian) + user + the 16 id bytes → empty: the per-user
//!   index, written, touched and deleted in the same atomic batch as its session, with the same
//!   deadline.
//!
//! Payload versions and migrations (`migrate`): every record carries the application's
//! version of its data's shape; loads migrate older data, saves write the current version.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::sync::{Mutex, MutexGuard};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::Batch;
use crate::db::Db;
use crate::error::Conflict;
use crate::error::{Error, Result};
use crate::format::{self, SessionMapEntries, SessionRecord};
use crate::options::Durability;

mod migrate;

pub use migrate::{data_from_json, data_to_json, JsonForm, MigrationReport, Migrations, StoredSession, FAILURES_KEPT};

const ID_BYTES: usize = format::SESSION_ID_BYTES;
/// Characters of an id's string form: 16 bytes in unpadded URL-safe base64.
const ID_CHARS: usize = 22;
/// Largest user id: its length is stored as a `u16`.
pub const USER_ID_MAX: usize = u16::MAX as usize;

// ---------------------------------------------------------------------------------------------
// Session ids

/// A session id: 128 bits from the operating system's random generator. Its string form is 22
/// URL-safe base64 characters (no padding), fit for a cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// A fresh id from the OS random generator.
    pub fn generate() -> Result<SessionId> {
        let mut b = [0u8; ID_BYTES];
        getrandom::fill(&mut b).map_err(|e| Error::Io {
            path: "getrandom".into(),
            op: "read random bytes",
            offset: None,
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(SessionId(b))
    }

    /// The id with these bytes (for adapters whose framework makes the ids).
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> SessionId {
        SessionId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        format::session_key(&self.0)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|p| p as u32)
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(ID_CHARS);
        for chunk in self.0.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        f.write_str(&out)
    }
}

/// Shows only the first characters: ids are credentials and should not reach logs whole.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.to_string()[..4])
    }
}

impl FromStr for SessionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<SessionId> {
        let bad = || Error::InvalidSessionId(s.chars().take(ID_CHARS + 2).collect());
        let chars = s.as_bytes();
        if chars.len() != ID_CHARS {
            return Err(bad());
        }
        let mut out = [0u8; ID_BYTES];
        let mut at = 0;
        for group in chars.chunks(4) {
            let mut n = 0u32;
            for &c in group {
                n = (n << 6) | b64_value(c).ok_or_else(bad)?;
            }
            n <<= 6 * (4 - group.len() as u32);
            for i in 0..group.len() - 1 {
                out[at] = (n >> (16 - 8 * i)) as u8;
                at += 1;
            }
            // The last group holds 2 chars for one byte: its low 4 bits must be zero, so each
            // id has exactly one string form.
            if group.len() == 2 && n & 0xffff != 0 {
                return Err(bad());
            }
        }
        debug_assert_eq!(at, ID_BYTES);
        Ok(SessionId(out))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// A loaded session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its data, migrated to the store's current payload version
    /// ([`SessionStore::payload_version`]) if it was saved at an older one.
    pub data: Vec<u8>,
    /// The payload version it was saved at (1 for sessions saved before payload versions
    /// existed). When older than the store's, `data` was migrated on this load and the next
    /// save writes it at the current version.
    pub stored_payload_version: u32,
    /// Its version: pass it to [`SessionStore::save`] to refuse overwriting a newer save.
    pub version: u64,
    /// Its expiry deadline in ms since the Unix epoch, on the store's clock.
    pub expires_at_ms: Option<u64>,
    /// The user it was created for, if any.
    pub user: Option<Vec<u8>>,
}

/// Settings of a [`SessionStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Largest session data accepted; larger is [`Error::TooLarge`]. Default: 64 KiB.
    pub max_session_bytes: usize,
    /// Durability of creates, saves, regenerates and destroys. Default: the store's sync mode.
    pub write_durability: Durability,
    /// Durability of touches (sliding expiry). Default: [`Durability::Lazy`]: a touch costs
    /// no `fdatasync` of its own; a crash may lose the latest extensions, never data.
    pub touch_durability: Durability,
    /// Attempts [`SessionStore::update`] and merging saves make before giving up with
    /// [`Error::Conflict`]. Default: 64.
    pub retries_max: usize,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            max_session_bytes: 64 * 1024,
            write_durability: Durability::Default,
            touch_durability: Durability::Lazy,
            retries_max: 64,
        }
    }
}

impl SessionOptions {
    /// Sets [`SessionOptions::max_session_bytes`].
    #[must_use]
    pub fn max_session_bytes(mut self, bytes: usize) -> SessionOptions {
        self.max_session_bytes = bytes;
        self
    }

    /// Sets [`SessionOptions::write_durability`].
    #[must_use]
    pub fn write_durability(mut self, d: Durability) -> SessionOptions {
        self.write_durability = d;
        self
    }

    /// Sets [`SessionOptions::touch_durability`].
    #[must_use]
    pub fn touch_durability(mut self, d: Durability) -> SessionOptions {
        self.touch_durability = d;
        self
    }
}

/// A session as the store holds it, with what its writes need.
pub(crate) struct Stored {
    record: Vec<u8>,
    version: u64,
    deadline_ms: u64,
}

impl Stored {
    fn decode(&self, dir: &Path) -> Result<SessionRecord<'_>> {
        format::decode_session_record(&self.record)
            .map_err(|d| Error::corruption(dir, d.offset, format!("session record: {}", d.reason)))
    }
}

/// Sessions over a [`Db`]. `Send + Sync`; cheap to clone (it shares the store).
#[derive(Clone)]
pub struct SessionStore {
    db: Arc<Db>,
    opts: SessionOptions,
    /// Retrying operations on one session queue here (by the id's first bytes), shared by
    /// clones.
    stripes: Arc<[Mutex<()>]>,
    /// The same for the adapters' async operations (`async_ops.rs`): tasks take turns without
    /// blocking a thread.
    #[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
    async_stripes: Arc<[tokio::sync::Mutex<()>]>,
    /// The application's payload version and its migrations (`with_migrations`).
    migrations: Arc<Migrations>,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("db", &self.db)
            .field("opts", &self.opts)
            .field("migrations", &self.migrations)
            .finish_non_exhaustive()
    }
}

/// Stripes of [`SessionStore::stripes`]; ids are random, so their first bytes spread them.
const STRIPES: usize = 1024;

/// The stripe of session `id`.
fn stripe_of(id: &SessionId) -> usize {
    usize::from(u16::from_le_bytes([id.0[0], id.0[1]])) % STRIPES
}

/// The attempts of one operation on one session: at most `retries_max`, all holding the
/// session's stripe lock.
///
/// Optimistic attempts alone can starve: with several threads saving one session, whichever
/// is slowest between its read and its write may lose to another writer every time (seen: 64
/// lost attempts in a row on a loaded 2-core machine, even when only retries queued). Writers
/// of one session through this store take turns instead; the version checks still decide
/// every write (other writers, `save`'s single attempt and other processes' stores are not
/// queued), so the lock orders attempts and never replaces a check. Sessions that share a
/// stripe (1 in 1,024 pairs) queue behind each other too, each write one commit group later.
struct Retry<'a> {
    lock: &'a Mutex<()>,
    guard: Option<MutexGuard<'a, ()>>,
    left: usize,
}

impl Retry<'_> {
    fn next(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        if self.guard.is_none() {
            self.guard = Some(self.lock.lock());
        }
        true
    }
}

/// The key prefix of `user`'s index entries (docs/format.md, "Session keys and values").
fn user_prefix(user: &[u8]) -> Result<Vec<u8>> {
    format::user_index_prefix(user).ok_or(Error::TooLarge {
        what: "user id",
        size: user.len() as u64,
        max: USER_ID_MAX as u64,
    })
}

/// The batch that writes a new session: it fails if `id` is taken.
fn insert_batch(user: Option<&[u8]>, id: &SessionId, record: &[u8], until: Until) -> Result<Batch> {
    let mut batch = Batch::new();
    until.put(&mut batch, &id.key(), record).expect_version(id.key(), None);
    if let Some(user) = user {
        until.put(&mut batch, &user_key(user, id)?, &[]);
    }
    Ok(batch)
}

/// When a session written now expires: a time-to-live from the store's clock when the write is
/// ordered, or a deadline (ms since the Unix epoch on the store's clock).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    Ttl(Duration),
    #[cfg_attr(not(feature = "tower-sessions"), allow(dead_code))]
    At(u64),
}

impl Until {
    fn put<'b>(self, batch: &'b mut Batch, key: &[u8], value: &[u8]) -> &'b mut Batch {
        match self {
            Until::Ttl(ttl) => batch.put_with_ttl(key, value, ttl),
            Until::At(ms) => batch.put_expiring_at(key, value.to_vec(), ms),
        }
    }
}

/// The key of `user`'s index entry for session `id`.
fn user_key(user: &[u8], id: &SessionId) -> Result<Vec<u8>> {
    let mut key = user_prefix(user)?;
    key.extend_from_slice(&id.0);
    Ok(key)
}

impl SessionStore {
    /// Opens (creating if needed) a store in `dir` with default options and sessions over it.
    pub fn open(dir: impl AsRef<Path>) -> Result<SessionStore> {
        Ok(SessionStore::new(Db::open(dir)?))
    }

    /// Opens (creating if needed) a store in `dir` with `options` and sessions over it: an
    /// encrypted store with [`crate::Options::encryption_key`], say, or other limits.
    pub fn open_with(dir: impl AsRef<Path>, options: crate::Options) -> Result<SessionStore> {
        Ok(SessionStore::new(Db::open_with(dir, options)?))
    }

    /// Sessions over an open store (which may hold other data too: session keys start with a
    /// zero byte).
    pub fn new(db: impl Into<Arc<Db>>) -> SessionStore {
        SessionStore {
            db: db.into(),
            opts: SessionOptions::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            #[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
            async_stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            migrations: Arc::new(Migrations::new()),
        }
    }

    /// The same store with other options.
    #[must_use]
    pub fn with_options(mut self, opts: SessionOptions) -> SessionStore {
        self.opts = opts;
        self
    }

    /// The underlying store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn retry(&self, id: &SessionId) -> Retry<'_> {
        Retry {
            lock: &self.stripes[stripe_of(id)],
            guard: None,
            left: self.opts.retries_max,
        }
    }

    /// A record of `data` at the current payload version.
    fn encode(&self, user: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
        format::encode_session_record(&SessionRecord {
            user,
            data,
            payload_version: self.payload_version(),
        })
    }

    /// The stored record, unless a newer release saved it: this one must not overwrite it.
    fn decode_writable<'a>(&self, stored: &'a Stored) -> Result<SessionRecord<'a>> {
        let r = stored.decode(self.db.path())?;
        self.migrations.check_not_newer(r.payload_version)?;
        Ok(r)
    }

    fn check_size(&self, data: &[u8]) -> Result<()> {
        Error::check_size("session", data.len(), self.opts.max_session_bytes)
    }

    fn check_user(user: &[u8]) -> Result<()> {
        Error::check_size("user id", user.len(), USER_ID_MAX)
    }

    fn get(&self, id: &SessionId) -> Result<Option<Stored>> {
        Ok(self.db.get_versioned(id.key())?.map(|v| Stored {
            record: v.value,
            version: v.version,
            deadline_ms: v.expires_at_ms.unwrap_or(0),
        }))
    }

    fn write(&self, mut batch: Batch) -> Result<Result<u64, Conflict>> {
        batch.durability(self.opts.write_durability);
        self.db.write_if(batch)
    }

    /// Creates a session holding `data`, expiring after `ttl`. Never overwrites an existing
    /// session: on the (astronomically unlikely) collision of a fresh id, it draws another.
    pub fn create(&self, data: &[u8], ttl: Duration) -> Result<SessionId> {
        self.create_inner(None, data, ttl)
    }

    /// Creates a session for `user`: also listed by [`SessionStore::sessions_of`] and removed by
    /// [`SessionStore::destroy_all_of`].
    pub fn create_for_user(&self, user: &[u8], data: &[u8], ttl: Duration) -> Result<SessionId> {
        Self::check_user(user)?;
        self.create_inner(Some(user), data, ttl)
    }

    fn create_inner(&self, user: Option<&[u8]>, data: &[u8], ttl: Duration) -> Result<SessionId> {
        self.check_size(data)?;
        let record = self.encode(user, data);
        for _ in 0..self.opts.retries_max {
            let id = SessionId::generate()?;
            if self.insert(user, &id, &record, ttl)? {
                return Ok(id);
            }
        }
        Err(self.no_free_id())
    }

    /// Every fresh id drawn was taken (astronomically unlikely).
    fn no_free_id(&self) -> Error {
        Error::Conflict(Conflict {
            key: format::SESSION_KEY_PREFIX.to_vec(),
            expected: None,
            actual: None,
        })
    }

    /// Creates session `id` (an id the caller chose, as a web framework's store must) holding
    /// `data`, expiring after `ttl`, unless a live session already has that id: then it writes
    /// nothing and returns false.
    pub fn create_with_id(&self, id: &SessionId, data: &[u8], ttl: Duration) -> Result<bool> {
        self.check_size(data)?;
        let record = self.encode(None, data);
        self.insert(None, id, &record, ttl)
    }

    /// Writes a new session in one atomic batch that fails if `id` is taken.
    fn insert(&self, user: Option<&[u8]>, id: &SessionId, record: &[u8], ttl: Duration) -> Result<bool> {
        Ok(self.write(insert_batch(user, id, record, Until::Ttl(ttl))?)?.is_ok())
    }

    /// Writes `data` to session `id` whatever its version (the last writer wins), creating the
    /// session if it does not exist, and makes it expire `ttl` from now; a session of a user
    /// stays that user's. For web frameworks whose store interface carries no versions; an
    /// application that can should use [`SessionStore::save`] or [`SessionStore::update`],
    /// which never lose an update. Returns the new version.
    pub fn set(&self, id: &SessionId, data: &[u8], ttl: Duration) -> Result<u64> {
        match self.replace_inner(id, data, ttl, true)? {
            Some(version) => Ok(version),
            None => Err(self.gave_up(id)),
        }
    }

    /// Like [`SessionStore::set`], but only if session `id` exists: returns `None`, writing
    /// nothing, if it does not (or has expired).
    pub fn replace(&self, id: &SessionId, data: &[u8], ttl: Duration) -> Result<Option<u64>> {
        self.replace_inner(id, data, ttl, false)
    }

    fn replace_inner(&self, id: &SessionId, data: &[u8], ttl: Duration, create: bool) -> Result<Option<u64>> {
        self.check_size(data)?;
        let mut retry = self.retry(id);
        while retry.next() {
            let stored = self.get(id)?;
            let Some(batch) = self.replace_batch(id, stored.as_ref(), data, Until::Ttl(ttl), create)? else {
                return Ok(None);
            };
            if let Ok(version) = self.write(batch)? {
                return Ok(Some(version));
            }
        }
        Err(self.gave_up(id))
    }

    /// The batch that replaces session `id`'s data, as `stored` (`None`: absent) holds it, or
    /// `None` if it is absent and not to be created.
    fn replace_batch(
        &self,
        id: &SessionId,
        stored: Option<&Stored>,
        data: &[u8],
        until: Until,
        create: bool,
    ) -> Result<Option<Batch>> {
        let (user, expected) = match stored {
            Some(s) => (self.decode_writable(s)?.user, Some(s.version)),
            None if create => (None, None),
            None => return Ok(None),
        };
        let record = self.encode(user, data);
        let mut batch = Batch::new();
        // The version check makes the session and its index entry one unit against a
        // concurrent regenerate or destroy; losing it to another write means reading again.
        until
            .put(&mut batch, &id.key(), &record)
            .expect_version(id.key(), expected);
        if let Some(user) = user {
            until.put(&mut batch, &user_key(user, id)?, &[]);
        }
        Ok(Some(batch))
    }

    /// The session `id`, or `None` if it does not exist or has expired. Data saved at an
    /// older payload version is returned migrated to the current one
    /// ([`SessionStore::with_migrations`]); data saved at a newer one is
    /// [`Error::SessionPayloadTooNew`], and a missing or failing step
    /// [`Error::SessionMigrationMissing`] or [`Error::SessionMigrationFailed`].
    pub fn load(&self, id: &SessionId) -> Result<Option<Session>> {
        let Some(stored) = self.get(id)? else { return Ok(None) };
        let r = stored.decode(self.db.path())?;
        Ok(Some(Session {
            id: *id,
            data: self.migrations.apply(r.payload_version, r.data.to_vec())?,
            stored_payload_version: r.payload_version,
            version: stored.version,
            expires_at_ms: (stored.deadline_ms != 0).then_some(stored.deadline_ms),
            user: r.user.map(<[u8]>::to_vec),
        }))
    }

    /// Replaces the data of session `id` if its version is still `expected_version` (the one
    /// [`SessionStore::load`] returned); keeps its deadline. Returns the new version, or the
    /// [`Conflict`] (with the session's current version, `None` if it is gone) instead of
    /// overwriting a newer save. The conflict's key is the id's string form. `data` is written
    /// at the current payload version; a session saved at a newer one is not overwritten
    /// ([`Error::SessionPayloadTooNew`]).
    pub fn save(&self, id: &SessionId, data: &[u8], expected_version: u64) -> Result<Result<u64, Conflict>> {
        self.check_size(data)?;
        self.swap_record(id, expected_version, |stored| {
            let user = self.decode_writable(stored)?.user;
            Ok(self.encode(user, data))
        })
    }

    /// Replaces session `id`'s record with the one `record` makes of the stored one, if its
    /// version is still `expected_version`, keeping its deadline: [`SessionStore::save`] and
    /// the migrations' writes. Returns the new version or the [`Conflict`] (the key is the id's
    /// string form, `actual` the session's current version, `None` if it is gone).
    pub(crate) fn swap_record(
        &self,
        id: &SessionId,
        expected_version: u64,
        record: impl FnOnce(&Stored) -> Result<Vec<u8>>,
    ) -> Result<Result<u64, Conflict>> {
        let conflict = |actual| Conflict {
            key: id.to_string().into_bytes(),
            expected: Some(expected_version),
            actual,
        };
        let Some(stored) = self.get(id)? else {
            return Ok(Err(conflict(None)));
        };
        if stored.version != expected_version {
            return Ok(Err(conflict(Some(stored.version))));
        }
        let record = record(&stored)?;
        let mut batch = Batch::new();
        batch
            .put_expiring_at(&id.key(), record, stored.deadline_ms)
            .expect_version(id.key(), Some(expected_version));
        Ok(self.write(batch)?.map_err(|c| conflict(c.actual)))
    }

    /// Loads session `id`, lets `f` change its data, and saves it, retrying from a fresh load
    /// when another save came in between. Returns the new version, or `None` if the session
    /// does not exist.
    ///
    /// `f` runs while this store's other retrying operations on the same session (`replace`,
    /// `update`, `touch`, `destroy`, `regenerate`, `save_map`, and those of sessions that share
    /// its lock stripe, 1 in 1,024) wait their turn: it must not call them itself, which would
    /// wait for itself. Loads and `save` are fine.
    pub fn update(&self, id: &SessionId, mut f: impl FnMut(&mut Vec<u8>)) -> Result<Option<u64>> {
        let mut retry = self.retry(id);
        while retry.next() {
            let Some(mut s) = self.load(id)? else { return Ok(None) };
            f(&mut s.data);
            match self.save(id, &s.data, s.version)? {
                Ok(v) => return Ok(Some(v)),
                Err(c) if c.actual.is_none() => return Ok(None),
                Err(_) => continue,
            }
        }
        Err(self.gave_up(id))
    }

    fn gave_up(&self, id: &SessionId) -> Error {
        Error::Conflict(Conflict {
            key: id.to_string().into_bytes(),
            expected: None,
            actual: None,
        })
    }

    /// Makes session `id` expire `ttl` from now (sliding expiry), without rewriting its data or
    /// changing its version. Returns false if it does not exist or has expired.
    pub fn touch(&self, id: &SessionId, ttl: Duration) -> Result<bool> {
        let mut retry = self.retry(id);
        while retry.next() {
            let Some(stored) = self.get(id)? else { return Ok(false) };
            if self.db.write_if(self.touch_batch(id, &stored, ttl)?)?.is_ok() {
                return Ok(true);
            }
        }
        Err(self.gave_up(id))
    }

    /// The batch that touches session `id` as `stored` holds it.
    fn touch_batch(&self, id: &SessionId, stored: &Stored, ttl: Duration) -> Result<Batch> {
        let user = stored.decode(self.db.path())?.user;
        let mut batch = Batch::new();
        batch.touch(id.key(), ttl);
        if let Some(user) = user {
            batch.touch(user_key(user, id)?, ttl);
        }
        // The session must still be the one read, so its index entry is touched with it (a
        // regenerate in between moves both); a save in between only means reading again.
        batch
            .expect_version(id.key(), Some(stored.version))
            .durability(self.opts.touch_durability);
        Ok(batch)
    }

    /// Removes session `id` (and its index entry). Returns false if it did not exist.
    pub fn destroy(&self, id: &SessionId) -> Result<bool> {
        let mut retry = self.retry(id);
        while retry.next() {
            let Some(stored) = self.get(id)? else { return Ok(false) };
            if self.write(self.destroy_batch(id, &stored)?)?.is_ok() {
                return Ok(true);
            }
        }
        Err(self.gave_up(id))
    }

    /// The batch that removes session `id` (and its index entry) as `stored` holds it.
    fn destroy_batch(&self, id: &SessionId, stored: &Stored) -> Result<Batch> {
        let user = stored.decode(self.db.path())?.user;
        let mut batch = Batch::new();
        batch.delete(id.key()).expect_version(id.key(), Some(stored.version));
        if let Some(user) = user {
            batch.delete(user_key(user, id)?);
        }
        Ok(batch)
    }

    /// Moves session `id` to a fresh id in one atomic write (data, deadline and user kept; the
    /// old id stops working), to defend against session fixation. Returns the new id, or
    /// `None` if the session does not exist.
    pub fn regenerate(&self, id: &SessionId) -> Result<Option<SessionId>> {
        let mut retry = self.retry(id);
        while retry.next() {
            let Some(stored) = self.get(id)? else { return Ok(None) };
            let user = stored.decode(self.db.path())?.user.map(<[u8]>::to_vec);
            let new = SessionId::generate()?;
            let mut batch = Batch::new();
            batch
                .delete(id.key())
                .put_expiring_at(&new.key(), stored.record, stored.deadline_ms)
                .expect_version(id.key(), Some(stored.version))
                .expect_version(new.key(), None);
            if let Some(user) = &user {
                batch.delete(user_key(user, id)?).put_expiring_at(
                    &user_key(user, &new)?,
                    Vec::new(),
                    stored.deadline_ms,
                );
            }
            if self.write(batch)?.is_ok() {
                return Ok(Some(new));
            }
        }
        Err(self.gave_up(id))
    }

    /// The live sessions of `user`.
    pub fn sessions_of(&self, user: &[u8]) -> Result<Vec<SessionId>> {
        Self::check_user(user)?;
        let prefix = user_prefix(user)?;
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, _) = item?;
            let Some(bytes) = format::user_index_id(&key, &prefix) else {
                return Err(Error::corruption(
                    self.db.path(),
                    0,
                    "user index key of the wrong length",
                ));
            };
            out.push(SessionId(bytes));
        }
        Ok(out)
    }

    /// Removes every session of `user` ("log out everywhere"), each with its index entry in one
    /// atomic write. Repeats until none is left, so a session regenerated meanwhile goes too.
    /// Returns how many it removed.
    pub fn destroy_all_of(&self, user: &[u8]) -> Result<u64> {
        let mut removed = 0;
        for _ in 0..self.opts.retries_max {
            let ids = self.sessions_of(user)?;
            if ids.is_empty() {
                return Ok(removed);
            }
            for chunk in ids.chunks(self.sessions_per_batch(user)?) {
                let mut batch = Batch::new();
                for id in chunk {
                    batch.delete(id.key()).delete(user_key(user, id)?);
                }
                self.write(batch)?.map_err(Error::Conflict)?;
                removed += chunk.len() as u64;
            }
        }
        Err(Error::Conflict(Conflict {
            key: user_prefix(user)?,
            expected: None,
            actual: None,
        }))
    }

    /// How many sessions of `user` one batch may remove (each takes two deletes) within the
    /// store's `batch_size_max`, at most 256; at least 1 (a store whose batches cannot hold
    /// even that refuses the write with `TooLarge`).
    fn sessions_per_batch(&self, user: &[u8]) -> Result<usize> {
        let id = SessionId([0; ID_BYTES]);
        let per_session =
            format::delete_encoded_size(id.key().len()) + format::delete_encoded_size(user_key(user, &id)?.len());
        let room = self
            .db
            .engine()
            .opts
            .batch_size_max
            .saturating_sub(format::PAYLOAD_COUNT_SIZE);
        Ok((room / per_session).clamp(1, 256))
    }

    /// Drops expired sessions (and index entries) from memory now; the background sweeper
    /// does this a little at a time anyway. Returns how many entries it dropped.
    pub fn purge_expired(&self) -> u64 {
        self.db.purge_expired()
    }

    /// Live sessions.
    pub fn count(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.scan_prefix(format::SESSION_KEY_PREFIX) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    // -----------------------------------------------------------------------------------------
    // Typed sessions

    /// Creates a session holding `value` as JSON.
    pub fn create_as<T: Serialize>(&self, value: &T, ttl: Duration) -> Result<SessionId> {
        self.create(&to_json(value)?, ttl)
    }

    /// Loads session `id` as a `T` (from JSON), with its version.
    pub fn load_as<T: DeserializeOwned>(&self, id: &SessionId) -> Result<Option<(T, u64)>> {
        let Some(s) = self.load(id)? else { return Ok(None) };
        let value = serde_json::from_slice(&s.data).map_err(|e| Error::SessionData(e.to_string()))?;
        Ok(Some((value, s.version)))
    }

    /// Saves `value` as JSON over version `expected_version` ([`SessionStore::save`]).
    pub fn save_as<T: Serialize>(
        &self,
        id: &SessionId,
        value: &T,
        expected_version: u64,
    ) -> Result<Result<u64, Conflict>> {
        self.save(id, &to_json(value)?, expected_version)
    }

    // -----------------------------------------------------------------------------------------
    // Map-shaped sessions

    /// Creates a map-shaped session.
    pub fn create_map(&self, map: &SessionMap, ttl: Duration) -> Result<SessionId> {
        self.create(&format::encode_session_map(&map.0), ttl)
    }

    /// Loads a map-shaped session for editing; save it with [`SessionStore::save_map`].
    pub fn load_map(&self, id: &SessionId) -> Result<Option<MapSession>> {
        let Some(s) = self.load(id)? else { return Ok(None) };
        let map = SessionMap(self.decode_map(&s.data)?);
        Ok(Some(MapSession {
            id: *id,
            version: s.version,
            stored_payload_version: s.stored_payload_version,
            loaded: map.clone(),
            map,
        }))
    }

    fn decode_map(&self, data: &[u8]) -> Result<SessionMapEntries> {
        format::decode_session_map(data)
            .map_err(|d| Error::SessionData(format!("session map at byte {}: {}", d.offset, d.reason)))
    }

    /// Saves the changes made to `session.map` since it was loaded, merging them with saves
    /// that came in between: entries changed only by them are kept, entries changed only here
    /// are written. Returns the new version, or a [`Conflict`] when another save changed an
    /// entry this one changed too (or removed the session): nothing is written then. On
    /// success `session` is up to date with the new version.
    pub fn save_map(&self, session: &mut MapSession) -> Result<Result<u64, Conflict>> {
        let changes: Vec<(&String, Option<&Vec<u8>>)> = session
            .loaded
            .0
            .keys()
            .chain(session.map.0.keys())
            .filter(|k| session.loaded.0.get(*k) != session.map.0.get(*k))
            .map(|k| (k, session.map.0.get(k)))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        if changes.is_empty() {
            return Ok(Ok(session.version));
        }
        let id = session.id;
        let mut current = session.loaded.0.clone();
        let mut version = session.version;
        let mut retry = self.retry(&id);
        while retry.next() {
            let mut merged = current.clone();
            for (k, v) in &changes {
                match v {
                    Some(v) => merged.insert((*k).clone(), (*v).clone()),
                    None => merged.remove(*k),
                };
            }
            let data = format::encode_session_map(&merged);
            match self.save(&id, &data, version)? {
                Ok(v) => {
                    session.version = v;
                    session.stored_payload_version = self.payload_version();
                    session.loaded = SessionMap(merged.clone());
                    session.map = SessionMap(merged);
                    return Ok(Ok(v));
                }
                Err(c) => {
                    let Some(now) = self.load(&id)? else { return Ok(Err(c)) };
                    let theirs = self.decode_map(&now.data)?;
                    // Another save touched an entry this one changes: a real conflict.
                    if let Some((k, _)) = changes.iter().find(|(k, _)| theirs.get(*k) != session.loaded.0.get(*k)) {
                        return Ok(Err(Conflict {
                            key: format!("{id}/{k}").into_bytes(),
                            expected: Some(session.version),
                            actual: Some(now.version),
                        }));
                    }
                    current = theirs;
                    version = now.version;
                }
            }
        }
        Err(self.gave_up(&id))
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::SessionData(e.to_string()))
}

/// Map-shaped session data: named entries, each a JSON value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionMap(SessionMapEntries);

impl SessionMap {
    /// An empty map.
    pub fn new() -> SessionMap {
        SessionMap::default()
    }

    /// The entry `name` as a `T`, if present.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.0
            .get(name)
            .map(|v| serde_json::from_slice(v).map_err(|e| Error::SessionData(format!("{name}: {e}"))))
            .transpose()
    }

    /// Sets entry `name` to `value` (as JSON).
    pub fn insert<T: Serialize>(&mut self, name: impl Into<String>, value: &T) -> Result<()> {
        self.0.insert(name.into(), to_json(value)?);
        Ok(())
    }

    /// Sets entry `name` to raw JSON bytes (adapters that already hold JSON).
    pub fn insert_json(&mut self, name: impl Into<String>, json: Vec<u8>) {
        self.0.insert(name.into(), json);
    }

    /// Entry `name` as raw JSON bytes.
    pub fn get_json(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// Removes entry `name`; true if it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// Entry names, ascending.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A map-shaped session loaded for editing: change `map`, then [`SessionStore::save_map`].
#[derive(Debug, Clone)]
pub struct MapSession {
    id: SessionId,
    version: u64,
    stored_payload_version: u32,
    /// The map as loaded (what the changes are measured against).
    loaded: SessionMap,
    /// The map to edit.
    pub map: SessionMap,
}

impl MapSession {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The version it was loaded (or last saved) at.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The payload version it was stored at when loaded ([`Session::stored_payload_version`]);
    /// the map holds the data migrated to the store's current one.
    pub fn stored_payload_version(&self) -> u32 {
        self.stored_payload_version
    }
}

// ---------------------------------------------------------------------------------------------
// Web-framework adapters

#[cfg(feature = "actix-session")]
pub mod actix;
#[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
mod async_ops;
#[cfg(feature = "tower-sessions")]
pub mod tower;

/// Runs long engine work (`delete_expired`'s sweep of the whole index) on the async runtime's
/// blocking pool, so no executor worker thread stalls on it.
#[cfg(feature = "tower-sessions")]
async fn off_executor<T: Send + 'static>(
    sessions: &SessionStore,
    f: impl FnOnce(&SessionStore) -> Result<T> + Send + 'static,
) -> std::result::Result<T, AdapterError> {
    let sessions = sessions.clone();
    match tokio::task::spawn_blocking(move || f(&sessions)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(AdapterError::Engine(e)),
        Err(join) => Err(AdapterError::Task(join.to_string())),
    }
}

/// Why an adapter call failed: the engine's error, or the blocking task that ran it died.
#[cfg(any(feature = "tower-sessions", feature = "actix-session"))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(Error),
    /// The blocking task running the engine call panicked or was cancelled.
    #[error("session store task failed: {0}")]
    Task(String),
}
