//! Payload versions and migrations: how sessions saved by an older release of an application
//! read in a newer one (docs/sessions.md, "Changing what a session holds").
//!
//! Every session record carries the application's payload version (docs/format.md, section 10);
//! records written before payload versions existed read as version 1. [`Migrations`] declares
//! the application's current version and the steps from each older version to the next.
//! [`SessionStore::load`] (and everything built on it) applies the steps to what it reads, and
//! the next save writes the current version; [`SessionStore::migrate_all`] rewrites every
//! session now, with compare-and-swap, for operators who want no old data left.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::format::{self, SessionRecord};

use super::{SessionId, SessionStore};

/// One migration step: the data at payload version `n` in, the data at `n + 1` out, or why not.
type Step = Arc<dyn Fn(Vec<u8>) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

/// The application's payload version and the steps that bring older session data up to it.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sessiondb::session::Migrations;
///
/// #[derive(Deserialize)]
/// struct CartV1 { items: Vec<String> }
/// #[derive(Serialize)]
/// struct Line { sku: String, qty: u32 }
/// #[derive(Serialize)]
/// struct CartV2 { lines: Vec<Line> }
///
/// let migrations = Migrations::new()
///     .payload_version(3)
///     // Typed: release 1's struct in, release 2's out.
///     .migrate_as(1, |old: CartV1| {
///         Ok(CartV2 { lines: old.items.into_iter().map(|sku| Line { sku, qty: 1 }).collect() })
///     })
///     // Over JSON values: rename a field.
///     .migrate_json(2, |mut v| {
///         let lines = v.get_mut("lines").map(serde_json::Value::take).ok_or("no lines")?;
///         v["cart_lines"] = lines;
///         Ok(v)
///     });
/// assert_eq!(migrations.current(), 3);
/// ```
///
/// Give it to a store with [`SessionStore::with_migrations`], which checks it.
#[derive(Clone, Default)]
pub struct Migrations {
    current: Option<u32>,
    steps: BTreeMap<u32, Step>,
    /// Versions given a second step: refused by [`Migrations::validate`].
    twice: Vec<u32>,
}

impl fmt::Debug for Migrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrations")
            .field("current", &self.current())
            .field("steps_from", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Migrations {
    /// Payload version 1 and no steps: what a store without migrations uses.
    pub fn new() -> Migrations {
        Migrations::default()
    }

    /// The application's current payload version: what saves write and loads migrate to.
    /// Versions start at 1. Default: 1.
    #[must_use]
    pub fn payload_version(mut self, version: u32) -> Migrations {
        self.current = Some(version);
        self
    }

    /// The current payload version.
    pub fn current(&self) -> u32 {
        self.current.unwrap_or(format::SESSION_PAYLOAD_VERSION_UNVERSIONED)
    }

    /// Registers the step from payload version `from` to `from + 1`, over the session's bytes.
    /// Its error (a message) fails the load or the bulk migration of that session with
    /// [`Error::SessionMigrationFailed`] naming the step; nothing is written.
    #[must_use]
    pub fn migrate(
        mut self,
        from: u32,
        step: impl Fn(Vec<u8>) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Migrations {
        if self.steps.insert(from, Arc::new(step)).is_some() {
            self.twice.push(from);
        }
        self
    }

    /// Registers the step from `from` to `from + 1` over the data as a JSON value: typed
    /// sessions' JSON, the adapters' maps (tower-sessions: an object of JSON values;
    /// actix-session: an object of strings), and map sessions as an object of their entries
    /// ([`data_to_json`]). The value is written back in the same form.
    #[must_use]
    pub fn migrate_json(
        self,
        from: u32,
        step: impl Fn(serde_json::Value) -> std::result::Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Migrations {
        self.migrate(from, move |data| {
            let (value, form) = data_to_json(&data).map_err(|e| e.to_string())?;
            data_from_json(&step(value)?, form).map_err(|e| e.to_string())
        })
    }

    /// Registers the step from `from` to `from + 1` for typed sessions
    /// ([`SessionStore::create_as`]): the data read as the older release's `Old`, written as
    /// the newer one's `New`.
    #[must_use]
    pub fn migrate_as<Old, New>(
        self,
        from: u32,
        step: impl Fn(Old) -> std::result::Result<New, String> + Send + Sync + 'static,
    ) -> Migrations
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        self.migrate(from, move |data| {
            let old: Old = serde_json::from_slice(&data).map_err(|e| format!("reading the old data: {e}"))?;
            serde_json::to_vec(&step(old)?).map_err(|e| format!("writing the new data: {e}"))
        })
    }

    /// Checks what can be checked before any session is read: the current version is at least
    /// 1; every step goes from a version below the current one (and at least 1); no version
    /// has two steps; and the steps form one chain up to the current version (a step from 1
    /// and one from 3 with current version 4 miss the one from 2:
    /// [`Error::SessionMigrationMissing`]). Steps below the oldest registered one cannot be
    /// checked here: a session at such a version fails its load with the same error.
    pub fn validate(&self) -> Result<()> {
        let current = self.current();
        if current == 0 {
            return Err(Error::InvalidOptions(
                "session payload version 0 is not valid: versions start at 1".into(),
            ));
        }
        if let Some(&from) = self.twice.first() {
            return Err(Error::InvalidOptions(format!(
                "two session migrations from payload version {from} are registered"
            )));
        }
        if let Some(&from) = self.steps.keys().find(|&&from| from == 0 || from >= current) {
            return Err(Error::InvalidOptions(format!(
                "a session migration from payload version {from} is registered, but steps go from 1 up to \
                 the current payload version {current}"
            )));
        }
        if let Some(&oldest) = self.steps.keys().next() {
            if let Some(from) = (oldest..current).find(|v| !self.steps.contains_key(v)) {
                return Err(missing(from, current));
            }
        }
        Ok(())
    }

    /// `data`, saved at payload version `from`, brought to the current version.
    pub(crate) fn apply(&self, from: u32, mut data: Vec<u8>) -> Result<Vec<u8>> {
        let current = self.current();
        if from > current {
            return Err(Error::SessionPayloadTooNew {
                found: from,
                known: current,
            });
        }
        for v in from..current {
            let step = self.steps.get(&v).ok_or_else(|| missing(v, current))?;
            data = step(data).map_err(|reason| Error::SessionMigrationFailed {
                from: v,
                to: v + 1,
                reason,
            })?;
        }
        Ok(data)
    }

    /// `Ok` unless a session at payload version `found` is newer than this application knows.
    pub(crate) fn check_not_newer(&self, found: u32) -> Result<()> {
        let known = self.current();
        if found > known {
            return Err(Error::SessionPayloadTooNew { found, known });
        }
        Ok(())
    }
}

fn missing(from: u32, current: u32) -> Error {
    Error::SessionMigrationMissing {
        from,
        to: from + 1,
        current,
    }
}

// ---------------------------------------------------------------------------------------------
// Session data as JSON

/// How session data was held, so a JSON value can be written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonForm {
    /// The data is one JSON value (typed sessions, the web-framework adapters).
    Json,
    /// The data is a map session ([`SessionStore::create_map`]), shown as a JSON object of its
    /// entries.
    Map,
}

/// Session data as a JSON value: data that is JSON as it is; a map session's data as an object
/// of its entries. Other bytes are [`Error::SessionData`].
pub fn data_to_json(data: &[u8]) -> Result<(serde_json::Value, JsonForm)> {
    if let Ok(value) = serde_json::from_slice(data) {
        return Ok((value, JsonForm::Json));
    }
    // A map session's data starts with its entry count as a u64: never a JSON text.
    let entries = format::decode_session_map(data)
        .map_err(|_| Error::SessionData("the session's data is neither JSON nor a map session's entries".into()))?;
    let mut object = serde_json::Map::new();
    for (name, value) in entries {
        let value =
            serde_json::from_slice(&value).map_err(|e| Error::SessionData(format!("map session entry {name}: {e}")))?;
        object.insert(name, value);
    }
    Ok((serde_json::Value::Object(object), JsonForm::Map))
}

/// The session data for `value`, held as `form` ([`data_to_json`]'s inverse). A map session
/// must be given an object.
pub fn data_from_json(value: &serde_json::Value, form: JsonForm) -> Result<Vec<u8>> {
    let to_vec = |v: &serde_json::Value| serde_json::to_vec(v).map_err(|e| Error::SessionData(e.to_string()));
    match form {
        JsonForm::Json => to_vec(value),
        JsonForm::Map => {
            let serde_json::Value::Object(object) = value else {
                return Err(Error::SessionData(
                    "a map session's data must be a JSON object of its entries".into(),
                ));
            };
            let mut entries = format::SessionMapEntries::new();
            for (name, value) in object {
                entries.insert(name.clone(), to_vec(value)?);
            }
            Ok(format::encode_session_map(&entries))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk migration

/// What [`SessionStore::migrate_all`] did. Every session it saw is counted once, in `migrated`,
/// `already_current`, `newer`, `failed` or `gone`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The payload version sessions were migrated to.
    pub payload_version: u32,
    /// Sessions seen, by the payload version they were stored at when the scan reached them.
    pub found: BTreeMap<u32, u64>,
    /// Sessions migrated and written back.
    pub migrated: u64,
    /// Sessions already at the current version (also those another writer saved meanwhile).
    pub already_current: u64,
    /// Sessions at a newer version than the application's: left as they are.
    pub newer: u64,
    /// Sessions whose migration failed (a step returned an error, or is missing): left as they
    /// are. The first few errors are in `failures`.
    pub failed: u64,
    /// Sessions that expired or were removed while the migration ran.
    pub gone: u64,
    /// The first [`FAILURES_KEPT`] failures: the session's id (its first characters) and the
    /// error.
    pub failures: Vec<String>,
}

/// How many failure messages a [`MigrationReport`] keeps.
pub const FAILURES_KEPT: usize = 16;

/// Sessions written back per atomic batch by [`SessionStore::migrate_all`] (fewer when their
/// bytes would pass the store's `batch_size_max`).
const SESSIONS_PER_BATCH_MAX: usize = 256;

/// A migrated session waiting for its batch.
struct Pending {
    id: SessionId,
    version: u64,
    deadline_ms: u64,
    record: Vec<u8>,
}

/// What became of one session.
enum Outcome {
    Migrated,
    Current,
    Newer,
    Failed(Error),
    Gone,
}

impl MigrationReport {
    fn count(&mut self, id: &SessionId, outcome: Outcome) {
        match outcome {
            Outcome::Migrated => self.migrated += 1,
            Outcome::Current => self.already_current += 1,
            Outcome::Newer => self.newer += 1,
            Outcome::Gone => self.gone += 1,
            Outcome::Failed(e) => {
                self.failed += 1;
                if self.failures.len() < FAILURES_KEPT {
                    self.failures.push(format!("{id:?}: {e}"));
                }
            }
        }
    }
}

impl SessionStore {
    /// The store with payload versions and migrations ([`Migrations`]): loads return data
    /// migrated to the current version, saves write it. Checks them first
    /// ([`Migrations::validate`]).
    pub fn with_migrations(mut self, migrations: Migrations) -> Result<SessionStore> {
        migrations.validate()?;
        self.migrations = Arc::new(migrations);
        Ok(self)
    }

    /// The application's payload version: what saves write and loads migrate to (1 unless
    /// [`SessionStore::with_migrations`] said otherwise).
    pub fn payload_version(&self) -> u32 {
        self.migrations.current()
    }

    /// Brings every session to the current payload version now, instead of on its next load
    /// and save. Scans the sessions in key order; each one below the current version is
    /// migrated and written back over the version it was read at (compare-and-swap), so a save
    /// by the application meanwhile is never overwritten: the session is read again and, if
    /// still old, migrated again. Sessions whose migration fails, or that are newer than the
    /// application, are counted and left as they are. Memory holds one batch of sessions at a
    /// time. Damaged session records stop it with [`Error::Corruption`].
    pub fn migrate_all(&self) -> Result<MigrationReport> {
        let mut report = MigrationReport {
            payload_version: self.payload_version(),
            ..MigrationReport::default()
        };
        let mut pending: Vec<Pending> = Vec::new();
        let mut pending_bytes = format::PAYLOAD_COUNT_SIZE;
        let batch_max = self.db.engine().opts.batch_size_max;
        for item in self.db.scan_prefix(format::SESSION_KEY_PREFIX) {
            let (key, value) = item?;
            let id = session_id_of(&key)
                .ok_or_else(|| Error::corruption(self.db.path(), 0, "session key of the wrong length"))?;
            let r = decode(self, &value)?;
            *report.found.entry(r.payload_version).or_insert(0) += 1;
            match r.payload_version.cmp(&report.payload_version) {
                std::cmp::Ordering::Equal => report.count(&id, Outcome::Current),
                std::cmp::Ordering::Greater => report.count(&id, Outcome::Newer),
                std::cmp::Ordering::Less => match self.migrated_record(&id)? {
                    Ok(p) => {
                        let size = format::put_encoded_size(key.len(), p.record.len());
                        if !pending.is_empty() && pending_bytes + size > batch_max {
                            self.write_back(std::mem::take(&mut pending), &mut report)?;
                            pending_bytes = format::PAYLOAD_COUNT_SIZE;
                        }
                        pending_bytes += size;
                        pending.push(p);
                        if pending.len() >= SESSIONS_PER_BATCH_MAX {
                            self.write_back(std::mem::take(&mut pending), &mut report)?;
                            pending_bytes = format::PAYLOAD_COUNT_SIZE;
                        }
                    }
                    Err(outcome) => report.count(&id, outcome),
                },
            }
        }
        self.write_back(pending, &mut report)?;
        Ok(report)
    }

    /// Session `id` read now and migrated, ready to write over the version read; or what else
    /// became of it.
    fn migrated_record(&self, id: &SessionId) -> Result<std::result::Result<Pending, Outcome>> {
        let Some(stored) = self.get(id)? else {
            return Ok(Err(Outcome::Gone));
        };
        let r = stored.decode(self.db.path())?;
        let current = self.payload_version();
        if r.payload_version == current {
            return Ok(Err(Outcome::Current));
        }
        if r.payload_version > current {
            return Ok(Err(Outcome::Newer));
        }
        let data = match self.migrations.apply(r.payload_version, r.data.to_vec()) {
            Ok(data) => data,
            Err(e) => return Ok(Err(Outcome::Failed(e))),
        };
        if let Err(e) = self.check_size(&data) {
            return Ok(Err(Outcome::Failed(e)));
        }
        let record = format::encode_session_record(&SessionRecord {
            user: r.user,
            data: &data,
            payload_version: current,
        });
        Ok(Ok(Pending {
            id: *id,
            version: stored.version,
            deadline_ms: stored.deadline_ms,
            record,
        }))
    }

    /// Writes `pending` in one atomic batch over the versions read; when another write came in
    /// between (the batch then writes nothing), session by session instead.
    fn write_back(&self, mut pending: Vec<Pending>, report: &mut MigrationReport) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for p in &mut pending {
            let key = p.id.key();
            batch
                .put_expiring_at(&key, std::mem::take(&mut p.record), p.deadline_ms)
                .expect_version(key, Some(p.version));
        }
        if self.write(batch)?.is_ok() {
            for p in &pending {
                report.count(&p.id, Outcome::Migrated);
            }
            return Ok(());
        }
        for p in pending {
            let outcome = self.write_back_one(&p.id)?;
            report.count(&p.id, outcome);
        }
        Ok(())
    }

    /// Reads session `id` again, migrates it and writes it over the version read, again while
    /// other writes get in between (at most `retries_max` times, taking turns with this
    /// store's other retrying operations on the session).
    fn write_back_one(&self, id: &SessionId) -> Result<Outcome> {
        let mut retry = self.retry(id);
        while retry.next() {
            let p = match self.migrated_record(id)? {
                Ok(p) => p,
                Err(outcome) => return Ok(outcome),
            };
            let mut batch = Batch::new();
            let key = id.key();
            batch
                .put_expiring_at(&key, p.record, p.deadline_ms)
                .expect_version(key, Some(p.version));
            if self.write(batch)?.is_ok() {
                return Ok(Outcome::Migrated);
            }
        }
        Ok(Outcome::Failed(self.gave_up(id)))
    }
}

// ---------------------------------------------------------------------------------------------
// For tools that migrate with programs of their own (the command-line tool's
// `migrate-sessions`): sessions as stored, and writing one back at a given payload version.

/// A session as stored: its data not migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredSession {
    /// Its id.
    pub id: SessionId,
    /// Its version (for [`SessionStore::write_migrated`]'s compare-and-swap).
    pub version: u64,
    /// The payload version its data was saved at.
    pub payload_version: u32,
    /// Its data, as saved.
    pub data: Vec<u8>,
}

impl SessionStore {
    /// Up to `max` sessions (at least 1) after `after` in key order (from the first when
    /// `None`), as stored: nothing migrated. To walk every session in bounded memory, pass
    /// the last id of each page to get the next; an empty page is the end.
    pub fn stored_sessions(&self, after: Option<&SessionId>, max: usize) -> Result<Vec<StoredSession>> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(id.key()),
            None => Bound::Included(format::SESSION_KEY_PREFIX.to_vec()),
        };
        let end = Bound::Excluded(session_keys_end());
        let mut out = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((start, end)) {
            if out.len() >= max.max(1) {
                break;
            }
            let (key, _) = item?;
            let id = session_id_of(&key)
                .ok_or_else(|| Error::corruption(self.db.path(), 0, "session key of the wrong length"))?;
            // Read again for the version (a scan gives none); gone meanwhile means skipped.
            let Some(stored) = self.get(&id)? else { continue };
            let r = stored.decode(self.db.path())?;
            out.push(StoredSession {
                id,
                version: stored.version,
                payload_version: r.payload_version,
                data: r.data.to_vec(),
            });
        }
        Ok(out)
    }

    /// Writes `data` to session `id` as payload version `payload_version`, over version
    /// `expected_version` (compare-and-swap, as [`SessionStore::save`]), keeping its user and
    /// deadline. For migrations run outside the application; the data must be what the
    /// application expects at that payload version. Returns the new version or the
    /// [`crate::Conflict`].
    pub fn write_migrated(
        &self,
        id: &SessionId,
        expected_version: u64,
        data: &[u8],
        payload_version: u32,
    ) -> Result<std::result::Result<u64, crate::Conflict>> {
        if payload_version == 0 {
            return Err(Error::InvalidOptions(
                "session payload version 0 is not valid: versions start at 1".into(),
            ));
        }
        self.check_size(data)?;
        self.swap_record(id, expected_version, |stored| {
            let r = stored.decode(self.db.path())?;
            Ok(format::encode_session_record(&SessionRecord {
                user: r.user,
                data,
                payload_version,
            }))
        })
    }
}

/// The first key after every session key: the prefix with its last byte incremented.
fn session_keys_end() -> Vec<u8> {
    let mut end = format::SESSION_KEY_PREFIX.to_vec();
    if let Some(last) = end.last_mut() {
        // NOTE: cannot overflow: the prefix is "\0s".
        *last += 1;
    }
    end
}

/// The id of a session key (`\0s` + 16 bytes).
fn session_id_of(key: &[u8]) -> Option<SessionId> {
    let bytes = key.strip_prefix(format::SESSION_KEY_PREFIX)?;
    Some(SessionId::from_bytes(bytes.try_into().ok()?))
}

fn decode<'a>(store: &SessionStore, value: &'a [u8]) -> Result<SessionRecord<'a>> {
    format::decode_session_record(value)
        .map_err(|d| Error::corruption(store.db.path(), d.offset, format!("session record: {}", d.reason)))
}
