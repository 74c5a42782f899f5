//! The in-memory ordered index: key → where the current value lives. No I/O here.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::storage::{FileBytes, StorageFile};

/// Index entries with their keys, in key order.
pub(crate) type Entries = Vec<(Box<[u8]>, Entry)>;

/// A file values are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum FileId {
    Segment(u64),
    Snapshot(u64),
}

/// Where a value's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: FileId,
    pub offset: u64,
    pub len: u32,
}

/// An index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Sequence number of the write that set the value.
    pub seq: u64,
    /// Expiry deadline (ms since the epoch), 0 for none.
    pub expires_at_ms: u64,
    pub loc: Loc,
}

impl Entry {
    pub(crate) fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

/// How a file's values are read.
#[derive(Clone)]
pub(crate) enum Source {
    /// The whole file in memory or mapped (sealed segments, snapshots).
    Bytes(Arc<FileBytes>),
    /// Positioned reads (the active segment).
    File(Arc<dyn StorageFile>),
}

/// The ordered map plus the table of files its entries point into.
#[derive(Default)]
pub(crate) struct Index {
    map: BTreeMap<Box<[u8]>, Entry>,
    files: HashMap<FileId, Source>,
    live_bytes: u64,
    /// Sequence number of the last write applied.
    pub applied_seq: u64,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    pub(crate) fn source(&self, file: FileId) -> Option<&Source> {
        self.files.get(&file)
    }

    pub(crate) fn set_source(&mut self, file: FileId, source: Source) {
        self.files.insert(file, source);
    }

    pub(crate) fn remove_source(&mut self, file: FileId) {
        self.files.remove(&file);
    }

    pub(crate) fn put(&mut self, key: Box<[u8]>, entry: Entry) {
        let key_len = key.len() as u64;
        if let Some(old) = self.map.insert(key, entry) {
            self.live_bytes -= key_len + u64::from(old.loc.len);
        }
        self.live_bytes += key_len + u64::from(entry.loc.len);
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.live_bytes -= key.len() as u64 + u64::from(old.loc.len);
        }
    }

    /// Builds the map from entries in strictly ascending key order (snapshot load).
    pub(crate) fn extend_sorted(&mut self, entries: impl IntoIterator<Item = (Box<[u8]>, Entry)>) {
        debug_assert!(self.map.is_empty(), "bulk load into an empty index only");
        let mut live = 0u64;
        self.map = entries
            .into_iter()
            .inspect(|(k, e)| live += k.len() as u64 + u64::from(e.loc.len))
            .collect();
        self.live_bytes = live;
    }

    /// Up to `max` entries with keys in `(lower, upper)`, in order.
    pub(crate) fn range_chunk(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, max: usize) -> Vec<(Box<[u8]>, Entry)> {
        self.map
            .range::<[u8], _>((lower, upper))
            .take(max)
            .map(|(k, e)| (k.clone(), *e))
            .collect()
    }

    /// Points `key` at `loc` if its entry is still the one written at `seq`.
    pub(crate) fn repoint(&mut self, key: &[u8], seq: u64, loc: Loc) -> bool {
        match self.map.get_mut(key) {
            Some(e) if e.seq == seq => {
                debug_assert_eq!(e.loc.len, loc.len, "same write, same value length");
                e.loc = loc;
                true
            }
            _ => false,
        }
    }

    /// Removes `key` if its entry is still the one written at `seq`.
    pub(crate) fn remove_if_seq(&mut self, key: &[u8], seq: u64) {
        if self.map.get(key).is_some_and(|e| e.seq == seq) {
            self.delete(key);
        }
    }
}
