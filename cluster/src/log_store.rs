//! The raft log on a sessiondb store (`DIR/log`, `SyncMode::Always`): every call that changes
//! it returns (or reports through openraft's callback) only once the change is durable.
//!
//! Keys (docs/cluster.md, "On disk"): `e` and the entry's index as 8 bytes big-endian (so the
//! store's key order is the log's order) → the entry as JSON; `m/vote`, `m/committed`,
//! `m/purged` → the vote, the committed log id and the last purged log id, as JSON.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sessiondb::{Batch, Db, Options};

use crate::error::{io, message, StorageResult};
use crate::{NodeId, TypeConfig};

const ENTRY_PREFIX: u8 = b'e';
const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";

/// The largest entry the log takes, encoded.
pub const ENTRY_BYTES_MAX: usize = 4 << 20;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [ENTRY_PREFIX; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn encode<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(io(subject, ErrorVerb::Write))
}

fn decode<T: DeserializeOwned>(b: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<T> {
    serde_json::from_slice(b).map_err(io(subject, ErrorVerb::Read))
}

/// The raft log store. Cloned handles share the store; only one is the writer (openraft's).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// The last entry's log id (none: the log is empty, or purged to its end).
    last: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (creating) the log store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> StorageResult<LogStore> {
        let opts = Options::new()
            .value_size_max(ENTRY_BYTES_MAX)
            .batch_size_max(2 * ENTRY_BYTES_MAX);
        let db = Db::open_with(dir, opts).map_err(io(ErrorSubject::Store, ErrorVerb::Read))?;
        let purged = match db.get(PURGED).map_err(io(ErrorSubject::Store, ErrorVerb::Read))? {
            Some(b) => Some(decode(&b, ErrorSubject::Store)?),
            None => None,
        };
        let mut store = LogStore {
            db: Arc::new(db),
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

    /// Appends `entries` (consecutive, after the last one) in one batch: all of them durable
    /// when it returns, or none. What openraft's `append` does before it reports.
    pub fn append_entries(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> StorageResult<()> {
        let mut batch = Batch::new();
        let mut last = None;
        for entry in entries {
            let bytes = encode(&entry, ErrorSubject::Logs)?;
            if bytes.len() > ENTRY_BYTES_MAX {
                return Err(message(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    format!("entry of {} bytes, more than {ENTRY_BYTES_MAX}", bytes.len()),
                ));
            }
            batch.put(entry_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch, ErrorSubject::Logs)?;
        self.last = last;
        Ok(())
    }

    fn write(&self, batch: Batch, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.db.write(batch).map_err(io(subject, ErrorVerb::Write))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let bound = |b: Bound<u64>| b.map(|i| entry_key(i).to_vec());
        let from = match bound(range.0) {
            Bound::Unbounded => Bound::Included(vec![ENTRY_PREFIX]),
            b => b,
        };
        let to = match bound(range.1) {
            Bound::Unbounded => Bound::Excluded(vec![ENTRY_PREFIX + 1]),
            b => b,
        };
        let mut entries = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((from, to)) {
            let (_, v) = item.map_err(io(ErrorSubject::Logs, ErrorVerb::Read))?;
            entries.push(decode(&v, ErrorSubject::Logs)?);
        }
        Ok(entries)
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

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut batch = Batch::new();
        batch.put(COMMITTED, encode(&committed, ErrorSubject::Store)?);
        self.write(batch, ErrorSubject::Store)
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
        match self.append_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
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
