//! The raft log on a sessiondb store (`DIR/log`, `SyncMode::Always`): every call that changes
//! it returns (or reports through openraft's callback) only once the change is durable.
//!
//! Appends are group-committed by the log's writer thread. `append` puts its entries on the
//! writer's queue (readers see them there at once) and returns; the writer takes everything
//! queued, writes it as one batch with one fsync, and then tells each append's callback, in
//! order. openraft meanwhile goes on taking client writes and replicating, so one fsync covers
//! the appends of many client writes, and openraft's task never waits for the disk (a write
//! into a page the kernel is writing back waits for that I/O; the writer alone touches the
//! log's pages while appends run). The committed log id goes through the same queue, so it is
//! never on disk ahead of the entries it names.
//!
//! Keys (docs/cluster.md, "On disk"): `e` and the entry's index as 8 bytes big-endian (so the
//! store's key order is the log's order) → the entry; `m/vote`, `m/committed`, `m/purged` →
//! the vote, the committed log id and the last purged log id; each encoded by [`crate::codec`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, Vote};
use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sessiondb::{Batch, Db, Durability, Options};

use crate::error::{io, message, StorageResult};
use crate::{codec, NodeId, TypeConfig};

const ENTRY_PREFIX: u8 = b'e';
const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";

/// The largest entry the log takes, encoded (a batch of writes of
/// [`crate::node::WRITE_BYTES_MAX`] in all fits, with room to spare).
pub const ENTRY_BYTES_MAX: usize = 6 << 20;
/// The largest batch the log's store takes; the writer splits a larger group.
const BATCH_BYTES_MAX: usize = 2 * ENTRY_BYTES_MAX;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [ENTRY_PREFIX; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn encode<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> StorageResult<Vec<u8>> {
    codec::encode(v).map_err(|e| message(subject, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned>(b: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<T> {
    codec::decode(b).map_err(|e| message(subject, ErrorVerb::Read, e))
}

/// Work for the writer thread, in the order it was queued.
enum Job {
    /// Entries to write (encoded, by index), then the append's callback to tell.
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// The committed log id, encoded.
    Committed(Vec<u8>),
}

/// What is queued for the writer and not yet written.
#[derive(Default)]
struct Queued {
    /// Entries appended and not yet in the store, by index: readers see them here.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Jobs sent and not yet done.
    jobs: usize,
    /// Set when a write failed: the log is unusable from then on (the store is poisoned).
    failed: Option<String>,
}

/// The writer's shared state: the queue's contents and a condition for "all written".
#[derive(Default)]
struct Shared {
    queued: Mutex<Queued>,
    drained: Condvar,
}

/// The raft log store. Cloned handles share the store; only one is the writer (openraft's).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    shared: Arc<Shared>,
    /// The writer thread.
    writer: Arc<Writer>,
    /// The last entry's log id (none: the log is empty, or purged to its end).
    last: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (creating) the log store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> StorageResult<LogStore> {
        let opts = Options::new()
            .value_size_max(ENTRY_BYTES_MAX)
            .batch_size_max(BATCH_BYTES_MAX);
        let db = Db::open_with(dir, opts).map_err(io(ErrorSubject::Store, ErrorVerb::Read))?;
        let purged = match db.get(PURGED).map_err(io(ErrorSubject::Store, ErrorVerb::Read))? {
            Some(b) => Some(decode(&b, ErrorSubject::Store)?),
            None => None,
        };
        let db = Arc::new(db);
        let shared = Arc::new(Shared::default());
        let writer = Arc::new(spawn_writer(db.clone(), shared.clone())?);
        let mut store = LogStore {
            db,
            shared,
            writer,
            last: None,
            purged,
        };
        // The last entry: the log is short (purged after each snapshot), so one pass over its
        // keys at open is cheap.
        let mut last = None;
        for item in store.db.scan_prefix([ENTRY_PREFIX]) {
            let (_, v) = item.map_err(io(ErrorSubject::Logs, ErrorVerb::Read))?;
            let e: Entry<TypeConfig> = decode(&v, ErrorSubject::Logs)?;
            last = Some(e.log_id);
        }
        store.last = last.or(store.purged);
        Ok(store)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<Option<T>> {
        match self.db.get(key).map_err(io(subject.clone(), ErrorVerb::Read))? {
            Some(b) => Ok(Some(decode(&b, subject)?)),
            None => Ok(None),
        }
    }

    /// The keys of the entries with index in `range`, ascending.
    fn keys_in(&self, range: (Bound<u64>, Bound<u64>)) -> StorageResult<Vec<Vec<u8>>> {
        let bound = |b: Bound<u64>| b.map(|i| entry_key(i).to_vec());
        let (from, to) = (bound(range.0), bound(range.1));
        let from = match from {
            Bound::Unbounded => Bound::Included(vec![ENTRY_PREFIX]),
            b => b,
        };
        let to = match to {
            Bound::Unbounded => Bound::Excluded(vec![ENTRY_PREFIX + 1]),
            b => b,
        };
        let mut keys = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((from, to)) {
            keys.push(item.map_err(io(ErrorSubject::Logs, ErrorVerb::Read))?.0);
        }
        Ok(keys)
    }

    /// Encodes `entries`, each at most [`ENTRY_BYTES_MAX`].
    fn encode_entries(entries: &[Entry<TypeConfig>]) -> StorageResult<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = encode(entry, ErrorSubject::Logs)?;
            if bytes.len() > ENTRY_BYTES_MAX {
                return Err(message(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    format!("entry of {} bytes, more than {ENTRY_BYTES_MAX}", bytes.len()),
                ));
            }
            out.push((entry.log_id.index, bytes));
        }
        Ok(out)
    }

    /// Appends `entries` (consecutive, after the last one) in one batch: all of them durable
    /// when it returns, or none.
    pub fn append_entries(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> StorageResult<()> {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for (index, bytes) in Self::encode_entries(&entries)? {
            batch.put(entry_key(index), bytes);
        }
        self.wait_written()?;
        self.write(batch, ErrorSubject::Logs)?;
        self.last = Some(last);
        Ok(())
    }

    fn write(&self, batch: Batch, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.db.write(batch).map_err(io(subject, ErrorVerb::Write))
    }

    /// Queues `job` for the writer thread.
    fn queue(&self, job: Job, entries: Vec<Entry<TypeConfig>>) -> StorageResult<()> {
        {
            let mut q = self.shared.queued.lock();
            if let Some(f) = &q.failed {
                return Err(message(ErrorSubject::Logs, ErrorVerb::Write, f.clone()));
            }
            q.jobs += 1;
            for e in entries {
                q.entries.insert(e.log_id.index, e);
            }
        }
        let sent = match &*self.writer.jobs.lock() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        {
            let mut q = self.shared.queued.lock();
            q.jobs -= 1;
            q.entries.clear();
        }
        Err(message(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            "the log's writer thread stopped",
        ))
    }

    /// Waits until everything queued is written (before a change that must come after it: a
    /// truncation, a purge).
    fn wait_written(&self) -> StorageResult<()> {
        let mut q = self.shared.queued.lock();
        while q.jobs > 0 && q.failed.is_none() {
            self.shared.drained.wait(&mut q);
        }
        match &q.failed {
            Some(f) => Err(message(ErrorSubject::Logs, ErrorVerb::Write, f.clone())),
            None => Ok(()),
        }
    }
}

/// The log's writer thread and its queue. When the last handle of the log store goes, the
/// queue closes, the thread writes what was queued and ends, and the drop waits for it: the
/// store is closed when the log store's last handle is dropped (a reopen may follow at once).
struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.lock().take());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Starts the log's writer: a thread that writes what is queued in groups, one batch and one
/// fsync each, and tells the appends' callbacks in order.
fn spawn_writer(db: Arc<Db>, shared: Arc<Shared>) -> StorageResult<Writer> {
    let (tx, rx) = mpsc::channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("sessiondb-raft-log".to_string())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                jobs.extend(rx.try_iter());
                // One batch for all of them (more if they pass the store's batch limit).
                let mut batches = vec![(Batch::new(), 0usize)];
                let mut written = Vec::new();
                let mut add = |key: &[u8], bytes: &[u8]| {
                    let size = key.len() + bytes.len() + 64;
                    if batches
                        .last()
                        .is_some_and(|(_, n)| *n > 0 && n + size > BATCH_BYTES_MAX)
                    {
                        batches.push((Batch::new(), 0));
                    }
                    if let Some((batch, n)) = batches.last_mut() {
                        batch.put(key, bytes);
                        *n += size;
                    }
                };
                for job in &jobs {
                    match job {
                        Job::Append(entries, _) => {
                            for (index, bytes) in entries {
                                add(&entry_key(*index), bytes);
                                written.push(*index);
                            }
                        }
                        Job::Committed(bytes) => add(COMMITTED, bytes),
                    }
                }
                // Durable when each returns (the store's SyncMode::Always): usually one fsync
                // for the whole group. A group of committed ids alone needs none of its own: it
                // is durable with the next append (see `save_committed`).
                if written.is_empty() {
                    for (batch, _) in &mut batches {
                        batch.durability(Durability::Lazy);
                    }
                }
                let result = batches
                    .into_iter()
                    .try_for_each(|(batch, _)| db.write(batch))
                    .map_err(|e| e.to_string());
                {
                    let mut q = shared.queued.lock();
                    match &result {
                        Ok(()) => {
                            for index in &written {
                                q.entries.remove(index);
                            }
                        }
                        Err(e) => {
                            q.failed = Some(e.clone());
                            q.entries.clear();
                        }
                    }
                    q.jobs -= jobs.len();
                }
                shared.drained.notify_all();
                for job in jobs {
                    if let Job::Append(_, callback) = job {
                        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                    }
                }
            }
        })
        .map_err(io(ErrorSubject::Logs, ErrorVerb::Write))?;
    Ok(Writer {
        jobs: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        // Entries queued for the writer first, then the store: an entry written meanwhile is
        // in the store by then, and one queued later was appended after this read began.
        let queued: Vec<Entry<TypeConfig>> = self
            .shared
            .queued
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        let bound = |b: Bound<u64>| b.map(|i| entry_key(i).to_vec());
        let from = match bound(range.0) {
            Bound::Unbounded => Bound::Included(vec![ENTRY_PREFIX]),
            b => b,
        };
        let to = match bound(range.1) {
            Bound::Unbounded => Bound::Excluded(vec![ENTRY_PREFIX + 1]),
            b => b,
        };
        let mut entries = BTreeMap::new();
        for item in self.db.range::<Vec<u8>, _>((from, to)) {
            let (_, v) = item.map_err(io(ErrorSubject::Logs, ErrorVerb::Read))?;
            let e: Entry<TypeConfig> = decode(&v, ErrorSubject::Logs)?;
            entries.insert(e.log_id.index, e);
        }
        for e in queued {
            entries.entry(e.log_id.index).or_insert(e);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        Ok(LogState {
            last_purged_log_id: self.purged,
            last_log_id: self.last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut batch = Batch::new();
        batch.put(VOTE, encode(vote, ErrorSubject::Vote)?);
        self.write(batch, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    /// Queued for the writer, after the appends before it: it is durable with them, never
    /// ahead of the entries it names. openraft reads it at start only to re-apply committed
    /// entries the state machine had not made durable; an older value there means it learns
    /// the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let bytes = encode(&committed, ErrorSubject::Store)?;
        self.queue(Job::Committed(bytes), Vec::new())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let queued =
            Self::encode_entries(&entries).and_then(|encoded| self.queue(Job::Append(encoded, callback), entries));
        queued?;
        self.last = Some(last);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.wait_written()?;
        let keys = self.keys_in((Bound::Included(log_id.index), Bound::Unbounded))?;
        if !keys.is_empty() {
            let mut batch = Batch::new();
            for k in keys {
                batch.delete(k);
            }
            self.write(batch, ErrorSubject::Logs)?;
        }
        // The new last entry: the one before `log_id`, or the purged position.
        let mut before = self
            .try_get_log_entries(log_id.index.saturating_sub(1)..log_id.index)
            .await?;
        self.last = if log_id.index > 0 {
            before.pop().map(|e| e.log_id).or(self.purged)
        } else {
            self.purged
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.wait_written()?;
        let mut batch = Batch::new();
        batch.put(PURGED, encode(&log_id, ErrorSubject::Store)?);
        for k in self.keys_in((Bound::Unbounded, Bound::Included(log_id.index)))? {
            batch.delete(k);
        }
        self.write(batch, ErrorSubject::Logs)?;
        self.purged = Some(log_id);
        if self.last.is_none_or(|l| l.index < log_id.index) {
            self.last = Some(log_id);
        }
        Ok(())
    }
}
