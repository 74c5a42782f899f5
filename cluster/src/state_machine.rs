//! The replicated state on a sessiondb store, and its snapshots.
//!
//! The node's directory holds `STATE` (the name of the current state store, replaced
//! atomically), that store `state-<n>/`, and `snapshots/current.snap` (the last snapshot built
//! or installed, [`crate::snapshot_file`]). Keys of the state store (docs/cluster.md, "On
//! disk"): `d` and the user's key → the value's log index (8 bytes little-endian), its deadline
//! (8 bytes, ms since the Unix epoch, 0: never) and the value; `m/applied` and `m/membership` →
//! the last applied log id and the membership, as JSON. An `apply` writes its entries' changes
//! and the new `m/applied` in one batch, ordered and handed to the OS when it returns, and
//! durable with the store's next sync (at the latest when a snapshot is built): the raft log
//! already holds the entries durably, and openraft re-applies what a crash took.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sessiondb::{Batch, Db, Durability, Options};

use crate::error::{io, message, StorageResult};
use crate::{snapshot_file, NodeId, Request, Response, TypeConfig};

const DATA_PREFIX: u8 = b'd';
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
/// Bytes before the value: its log index and its deadline.
const VALUE_HEADER: usize = 16;
/// The largest value the state takes (with its header).
pub const VALUE_BYTES_MAX: usize = 4 << 20;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// A value as the state store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The log index of the value's last write: its version.
    pub version: u64,
    /// Its deadline (ms since the Unix epoch), 0: never.
    pub expires_at_ms: u64,
    pub value: Vec<u8>,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(VALUE_HEADER + self.value.len());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        b.extend_from_slice(&self.value);
        b
    }

    fn decode(b: &[u8]) -> Option<Stored> {
        let version = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let expires_at_ms = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Stored {
            version,
            expires_at_ms,
            value: b[VALUE_HEADER..].to_vec(),
        })
    }

    /// Whether it is live at `now_ms` (the leader's time, in the request).
    fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

fn encode<T: Serialize>(v: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(io(ErrorSubject::StateMachine, ErrorVerb::Write))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> StorageResult<T> {
    serde_json::from_slice(b).map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read))
}

struct State {
    db: Db,
    /// `n` of the current `state-<n>`.
    generation: u64,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// Snapshots built by this process, for their ids.
    built: u64,
}

/// The replicated state machine. Clones share it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

fn state_options() -> Options {
    // A backup for a snapshot carries the store's last segment; its zero tail is not sent
    // (docs/cluster.md, "Snapshot files").
    Options::new()
        .value_size_max(VALUE_BYTES_MAX)
        .batch_size_max(2 * VALUE_BYTES_MAX + APPLY_BATCH_BYTES)
}

/// Writes `bytes` to `path` durably: a temporary file, fsynced, renamed, the directory fsynced.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn store_err(e: io::Error) -> openraft::StorageError<NodeId> {
    io(ErrorSubject::StateMachine, ErrorVerb::Write)(e)
}

impl StateMachine {
    /// Opens (creating) the state machine of the node whose directory is `dir`.
    pub fn open(dir: impl AsRef<Path>) -> StorageResult<StateMachine> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("snapshots")).map_err(store_err)?;
        let generation = match fs::read_to_string(dir.join("STATE")) {
            Ok(s) => s
                .trim()
                .strip_prefix("state-")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    message(
                        ErrorSubject::StateMachine,
                        ErrorVerb::Read,
                        format!("STATE holds {s:?}"),
                    )
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                replace_file(&dir.join("STATE"), b"state-0").map_err(store_err)?;
                0
            }
            Err(e) => return Err(store_err(e)),
        };
        // Leftovers of an install or a build a crash interrupted.
        for e in fs::read_dir(&dir).map_err(store_err)? {
            let e = e.map_err(store_err)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("state-") && name != format!("state-{generation}") {
                fs::remove_dir_all(e.path()).map_err(store_err)?;
            }
        }
        for e in fs::read_dir(dir.join("snapshots")).map_err(store_err)? {
            let e = e.map_err(store_err)?;
            if e.file_name() != "current.snap" {
                let p = e.path();
                let gone = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                gone.map_err(store_err)?;
            }
        }
        let db = Db::open_with(dir.join(format!("state-{generation}")), state_options())
            .map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        let (applied, membership) = read_applied(&db)?;
        Ok(StateMachine {
            dir,
            state: Arc::new(Mutex::new(State {
                db,
                generation,
                applied,
                membership,
                built: 0,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` on this node, as last applied here, if live on this node's clock.
    pub fn get(&self, key: &[u8]) -> StorageResult<Option<Stored>> {
        let state = self.lock();
        let got = state
            .db
            .get(data_key(key))
            .map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        Ok(got.and_then(|b| Stored::decode(&b)))
    }

    /// Up to `limit` live keys that start with `prefix` and come after `after` (all from the
    /// first, if `None`), in key order, with their values: one page of a scan.
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> StorageResult<Vec<(Vec<u8>, Stored)>> {
        let state = self.lock();
        let from = match after {
            Some(a) => Bound::Excluded(data_key(a)),
            None => Bound::Included(data_key(prefix)),
        };
        let mut out = Vec::new();
        for item in state.db.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let (k, v) = item.map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read))?;
            let Some(user_key) = k.strip_prefix(&[DATA_PREFIX][..]) else {
                break;
            };
            if !user_key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if let Some(s) = Stored::decode(&v) {
                out.push((user_key.to_vec(), s));
            }
        }
        Ok(out)
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.lock().applied
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshots").join("current.snap")
    }
}

fn read_applied(db: &Db) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
    let read = |k: &[u8]| db.get(k).map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read));
    let applied = match read(APPLIED)? {
        Some(b) => decode::<Option<LogId<NodeId>>>(&b)?,
        None => None,
    };
    let membership = match read(MEMBERSHIP)? {
        Some(b) => decode(&b)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

/// Applies `req` at log index `index` over `db`, seeing the changes of earlier entries of the
/// same batch in `pending`; adds its changes to `batch`.
fn apply_request(
    db: &Db,
    pending: &mut HashMap<Vec<u8>, Option<Stored>>,
    batch: &mut Batch,
    index: u64,
    req: &Request,
) -> StorageResult<Response> {
    let Request::Batch(reqs) = req else {
        return apply_one(db, pending, batch, index, req);
    };
    let mut each = Vec::with_capacity(reqs.len());
    for r in reqs {
        each.push(apply_one(db, pending, batch, index, r)?);
    }
    Ok(Response {
        applied: true,
        version: None,
        batch: each,
    })
}

/// Applies one request of an entry (not a batch).
fn apply_one(
    db: &Db,
    pending: &mut HashMap<Vec<u8>, Option<Stored>>,
    batch: &mut Batch,
    index: u64,
    req: &Request,
) -> StorageResult<Response> {
    let current = |key: &[u8]| -> StorageResult<Option<Stored>> {
        if let Some(p) = pending.get(key) {
            return Ok(p.clone());
        }
        let got = db
            .get(data_key(key))
            .map_err(io(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        Ok(got.and_then(|b| Stored::decode(&b)))
    };
    let mut put = |pending: &mut HashMap<Vec<u8>, Option<Stored>>, key: &[u8], s: Stored| -> StorageResult<Response> {
        let bytes = s.encode();
        if bytes.len() > VALUE_BYTES_MAX {
            return Err(message(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                format!("value of {} bytes, more than {VALUE_BYTES_MAX}", bytes.len()),
            ));
        }
        batch.put_expiring_at(&data_key(key), bytes, s.expires_at_ms);
        pending.insert(key.to_vec(), Some(s));
        Ok(Response {
            applied: true,
            version: Some(index),
            ..Response::default()
        })
    };
    // A value this entry writes: its version is the entry's index.
    let written = |value: &[u8], expires_at_ms: u64| Stored {
        version: index,
        expires_at_ms,
        value: value.to_vec(),
    };
    match req {
        Request::Put {
            key,
            value,
            expires_at_ms,
        } => put(pending, key, written(value, *expires_at_ms)),
        Request::Delete { key } => {
            batch.delete(data_key(key));
            pending.insert(key.clone(), None);
            Ok(Response {
                applied: true,
                version: None,
                ..Response::default()
            })
        }
        Request::Touch {
            key,
            now_ms,
            expires_at_ms,
        } => match current(key)?.filter(|s| s.live_at(*now_ms)) {
            // The value keeps its version: a touch changes when it expires, not what it is.
            Some(s) => {
                let version = s.version;
                put(
                    pending,
                    key,
                    Stored {
                        expires_at_ms: *expires_at_ms,
                        ..s
                    },
                )?;
                Ok(Response {
                    applied: true,
                    version: Some(version),
                    ..Response::default()
                })
            }
            None => Ok(Response::default()),
        },
        Request::CompareAndSwap {
            key,
            now_ms,
            expected,
            value,
            expires_at_ms,
        } => {
            let live = current(key)?.filter(|s| s.live_at(*now_ms));
            let version = live.as_ref().map(|s| s.version);
            if version != *expected {
                return Ok(Response {
                    applied: false,
                    version,
                    ..Response::default()
                });
            }
            put(pending, key, written(value, *expires_at_ms))
        }
        // The leader never nests batches: a log that holds one is not this program's.
        Request::Batch(_) => Err(message(
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            format!("entry {index}: a batch within a batch"),
        )),
    }
}

/// Entries applied in one batch, at most (their keys and values).
const APPLY_BATCH_BYTES: usize = VALUE_BYTES_MAX;

/// A batch of applied entries. No fsync of its own: the entries are durable in the raft log,
/// and openraft re-applies the committed entries after the last applied id this store kept
/// when it starts again. A snapshot syncs this store first, so the log is never purged past
/// what it holds durably (docs/cluster.md, "Durability").
fn new_apply_batch() -> Batch {
    let mut batch = Batch::new();
    batch.durability(Durability::Lazy);
    batch
}

/// About how many bytes applying `req` adds to a batch.
fn request_size(req: &Request) -> usize {
    64 + match req {
        Request::Put { key, value, .. } | Request::CompareAndSwap { key, value, .. } => key.len() + value.len(),
        Request::Delete { key } | Request::Touch { key, .. } => key.len(),
        Request::Batch(reqs) => reqs.iter().map(request_size).sum(),
    }
}

/// Writes `batch` with the applied log id and membership it reaches: applied entries and
/// the id that names them go together.
fn write_applied(
    db: &Db,
    mut batch: Batch,
    applied: Option<LogId<NodeId>>,
    membership: &Membership,
) -> StorageResult<()> {
    batch.put(APPLIED, encode(&applied)?);
    batch.put(MEMBERSHIP, encode(membership)?);
    db.write(batch)
        .map_err(io(ErrorSubject::StateMachine, ErrorVerb::Write))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let state = self.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let state = &mut *state;
        let mut pending = HashMap::new();
        let mut responses = Vec::new();
        let (mut applied, mut membership) = (state.applied, state.membership.clone());
        let mut batch = new_apply_batch();
        // Bytes the batch holds, roughly: a batch reaching APPLY_BATCH_BYTES is written (with
        // the applied id it reaches) before the next entry, so no batch passes the store's limit.
        let mut size = 0usize;
        for entry in entries {
            let entry_size = match &entry.payload {
                EntryPayload::Normal(req) => request_size(req),
                _ => 0,
            };
            if size > 0 && size + entry_size > APPLY_BATCH_BYTES {
                write_applied(&state.db, batch, applied, &membership)?;
                batch = new_apply_batch();
                size = 0;
            }
            size += entry_size;
            applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => {
                    apply_request(&state.db, &mut pending, &mut batch, entry.log_id.index, req)?
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::default()
                }
            };
            responses.push(response);
        }
        if applied != state.applied {
            write_applied(&state.db, batch, applied, &membership)?;
        }
        state.applied = applied;
        state.membership = membership;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let n = {
            let mut state = self.lock();
            state.built += 1;
            state.built
        };
        let path = self.dir.join("snapshots").join(format!("incoming-{n}.snap"));
        // Readable too: openraft writes the chunks into this handle, then gives the same handle
        // back to `install_snapshot`, which reads it (a write-only file failed there with EBADF,
        // a storage error that stopped the node for good).
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(io(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let sig = Some(meta.signature());
        let werr = |e: io::Error| io(ErrorSubject::Snapshot(sig.clone()), ErrorVerb::Write)(e);
        // The snapshot's bytes, copied from the start of the handle openraft gives back (the
        // one `begin_receiving_snapshot` made, or any other) into a file of ours, durable.
        let snapshots = self.dir.join("snapshots");
        let incoming = {
            let n = {
                let mut state = self.lock();
                state.built += 1;
                state.built
            };
            let path = snapshots.join(format!("received-{n}.snap"));
            let mut src = snapshot.into_std().await;
            src.seek(SeekFrom::Start(0)).map_err(werr)?;
            let mut dst = fs::File::create(&path).map_err(werr)?;
            io::copy(&mut src, &mut dst).map_err(werr)?;
            dst.sync_all().map_err(werr)?;
            path
        };
        remove_incoming(&snapshots).map_err(werr)?;
        let extracted = snapshots.join("extracted");
        let _ = fs::remove_dir_all(&extracted);
        let meta_bytes = snapshot_file::extract(&incoming, &extracted).map_err(werr)?;
        let file_meta: SnapshotMeta<NodeId, openraft::BasicNode> = decode(&meta_bytes)?;
        if file_meta.last_log_id != meta.last_log_id {
            return Err(message(
                ErrorSubject::Snapshot(sig),
                ErrorVerb::Write,
                format!(
                    "the snapshot file is of {:?}, openraft installs {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ),
            ));
        }
        let mut state = self.lock();
        let next = state.generation + 1;
        let new_dir = self.dir.join(format!("state-{next}"));
        let _ = fs::remove_dir_all(&new_dir);
        sessiondb::restore(&extracted, &new_dir).map_err(io(ErrorSubject::Snapshot(sig.clone()), ErrorVerb::Write))?;
        let db = Db::open_with(&new_dir, state_options())
            .map_err(io(ErrorSubject::Snapshot(sig.clone()), ErrorVerb::Write))?;
        let (applied, membership) = read_applied(&db)?;
        // The switch: STATE names the new store (durably) before the old one goes.
        replace_file(&self.dir.join("STATE"), format!("state-{next}").as_bytes()).map_err(werr)?;
        fs::rename(&incoming, self.current_snapshot_path()).map_err(werr)?;
        sync_dir(&snapshots).map_err(werr)?;
        let old = std::mem::replace(&mut state.db, db);
        let old_dir = self.dir.join(format!("state-{}", state.generation));
        drop(old);
        let _ = fs::remove_dir_all(&old_dir);
        let _ = fs::remove_dir_all(&extracted);
        state.generation = next;
        state.applied = applied;
        state.membership = membership;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.current_snapshot_path();
        if !path.exists() {
            return Ok(None);
        }
        let rerr = io(ErrorSubject::Snapshot(None), ErrorVerb::Read);
        let meta = snapshot_file::read_meta(&path).map_err(rerr)?;
        let meta: SnapshotMeta<NodeId, openraft::BasicNode> = decode(&meta)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(io(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

/// Removes the files `begin_receiving_snapshot` made in `dir`.
fn remove_incoming(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("incoming-") {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshots = self.dir.join("snapshots");
        let werr = |e: io::Error| io(ErrorSubject::Snapshot(None), ErrorVerb::Write)(e);
        // Under the lock: the backup holds exactly the state `applied` names (apply waits).
        let (meta, path) = {
            let mut state = self.lock();
            state.built += 1;
            let n = state.built;
            let backup = snapshots.join(format!("backup-{n}"));
            let _ = fs::remove_dir_all(&backup);
            // The applies up to here become durable before openraft, told of the snapshot,
            // purges the log that holds them.
            state
                .db
                .sync()
                .map_err(io(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
            state
                .db
                .backup(&backup)
                .map_err(io(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
            let snapshot_id = match state.applied {
                Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
                None => format!("none-{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            let path = snapshots.join(format!("building-{n}.snap"));
            snapshot_file::write(&path, &encode(&meta)?, &backup).map_err(werr)?;
            let _ = fs::remove_dir_all(&backup);
            (meta, path)
        };
        fs::rename(&path, self.current_snapshot_path()).map_err(werr)?;
        sync_dir(&snapshots).map_err(werr)?;
        let f = tokio::fs::File::open(self.current_snapshot_path())
            .await
            .map_err(io(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}
