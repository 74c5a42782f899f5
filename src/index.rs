//! The in-memory ordered index: key → where the current value lives. No I/O here.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::ops::Bound;
use std::sync::Arc;

use crate::storage::{FileBytes, StorageFile};

/// Index entries with their keys, in key order.
pub(crate) type Entries = Vec<(Key, Entry)>;

/// Keys up to this long are stored inside the index entry, with no heap allocation of their own.
/// Session ids and most keys fit; a million of them load without a million `malloc`s.
const KEY_INLINE_MAX: usize = 22;

/// A key as the index holds it.
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; KEY_INLINE_MAX] },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Key>() == 24);

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Key {
        if k.len() <= KEY_INLINE_MAX {
            let mut bytes = [0u8; KEY_INLINE_MAX];
            bytes[..k.len()].copy_from_slice(k);
            // NOTE: cannot truncate: k.len() <= KEY_INLINE_MAX < 256.
            Key::Inline {
                len: k.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(k.into())
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

/// A file values are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum FileId {
    Segment(u64),
    Snapshot(u64),
}

/// A file's place in the index's file table: 4 bytes in every entry instead of a 16-byte
/// [`FileId`]. Slots of removed files are reused; no entry points at a removed file (checked in
/// debug builds when a checkpoint removes files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

/// Where a value's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Offset of the value in the file.
    pub offset: u64,
    pub slot: Slot,
    /// Length of the value.
    pub len: u32,
    /// For a value in a log record: how far before the value the record starts. A read checks
    /// the whole record's checksum first, so bytes that never landed where the index says (a
    /// misdirected write, faults.md F10) are an error, never a value. 0 for snapshot values,
    /// whose blocks were verified when the snapshot was written or loaded.
    pub record_back: u32,
    /// Length of that record (header and payload); 0 for snapshot values.
    pub record_len: u32,
}

/// An index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Sequence number of the write that set the value. Never 0 (sequence numbers start at 1),
    /// which lets `Option<Entry>`, the overlay's value, be as small as `Entry`.
    pub seq: NonZeroU64,
    /// Expiry deadline (ms since the epoch), 0 for none.
    pub expires_at_ms: u64,
    pub loc: Loc,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 40);
const _: () = assert!(std::mem::size_of::<Option<Entry>>() == 40);

/// A sequence number as an entry holds it. Sequence numbers start at 1 (the log and the
/// snapshot reader never produce 0), so this is the number itself.
pub(crate) fn entry_seq(seq: u64) -> NonZeroU64 {
    debug_assert!(seq > 0, "sequence numbers start at 1");
    NonZeroU64::MIN.saturating_add(seq.saturating_sub(1))
}

impl Entry {
    pub(crate) fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

/// A file values are read from, and how.
#[derive(Clone)]
pub(crate) struct Source {
    pub file: FileId,
    pub data: SourceData,
}

/// How a file's values are read.
#[derive(Clone)]
pub(crate) enum SourceData {
    /// The whole file in memory or mapped (sealed segments, snapshots).
    Bytes(Arc<FileBytes>),
    /// Positioned reads (the active segment).
    File(Arc<dyn StorageFile>),
}

impl Source {
    pub(crate) fn bytes(file: FileId, bytes: Arc<FileBytes>) -> Source {
        Source {
            file,
            data: SourceData::Bytes(bytes),
        }
    }

    pub(crate) fn file(file: FileId, handle: Arc<dyn StorageFile>) -> Source {
        Source {
            file,
            data: SourceData::File(handle),
        }
    }
}

/// The ordered map plus the table of files its entries point into.
///
/// Two layers: `base`, the snapshot's entries as loaded at open (a sorted `Vec`, built without a
/// tree, so a million keys load quickly), and `overlay`, every change since (`None` hides a base
/// entry that was deleted). A key's entry is the overlay's if it has one, else the base's. The
/// base is never grown; stale base entries stay until the next open.
#[derive(Default)]
pub(crate) struct Index {
    base: Vec<(Key, Entry)>,
    overlay: BTreeMap<Key, Option<Entry>>,
    /// Keys present (overlay and base together).
    live: usize,
    /// Slot → the file in it and, once known, how to read it.
    files: Vec<Option<(FileId, Option<Source>)>>,
    slots: HashMap<FileId, Slot>,
    free: Vec<Slot>,
    live_bytes: u64,
    /// Sequence number of the last write applied.
    pub applied_seq: u64,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    fn base_find(&self, key: &[u8]) -> Result<usize, usize> {
        self.base.binary_search_by(|(k, _)| k.as_bytes().cmp(key))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        match self.overlay.get(key) {
            Some(over) => over.as_ref(),
            None => self.base_find(key).ok().map(|i| &self.base[i].1),
        }
    }

    /// The file in `slot` and how to read it.
    pub(crate) fn source(&self, slot: Slot) -> Option<&Source> {
        self.files.get(slot.0 as usize)?.as_ref()?.1.as_ref()
    }

    /// The file in `slot`.
    pub(crate) fn file_of(&self, slot: Slot) -> Option<FileId> {
        self.files.get(slot.0 as usize)?.as_ref().map(|f| f.0)
    }

    /// The slot of `file`, given one if it has none yet.
    pub(crate) fn slot(&mut self, file: FileId) -> Slot {
        if let Some(&s) = self.slots.get(&file) {
            return s;
        }
        let s = self.free.pop().unwrap_or_else(|| {
            // NOTE: slots are reused, so their number is bounded by the files open at once.
            assert!(self.files.len() < u32::MAX as usize, "file table full");
            self.files.push(None);
            Slot((self.files.len() - 1) as u32)
        });
        self.files[s.0 as usize] = Some((file, None));
        self.slots.insert(file, s);
        s
    }

    /// Sets how `source.file` is read; returns its slot.
    pub(crate) fn set_source(&mut self, source: Source) -> Slot {
        let s = self.slot(source.file);
        self.files[s.0 as usize] = Some((source.file, Some(source)));
        s
    }

    /// Forgets `file`; its slot may be given to another file.
    pub(crate) fn remove_source(&mut self, file: FileId) {
        if let Some(s) = self.slots.remove(&file) {
            self.files[s.0 as usize] = None;
            self.free.push(s);
        }
    }

    pub(crate) fn put(&mut self, key: Key, entry: Entry) {
        let key_len = key.len() as u64;
        let in_base = if self.base.is_empty() {
            None
        } else {
            self.base_find(&key).ok().map(|i| self.base[i].1)
        };
        // One search of the overlay: the entry it replaces comes back from the insert (`None`
        // inside: a base key that was deleted).
        let replaced = match self.overlay.insert(key, Some(entry)) {
            Some(over) => over,
            None => in_base,
        };
        match replaced {
            Some(old) => self.live_bytes -= key_len + u64::from(old.loc.len),
            None => self.live += 1,
        }
        self.live_bytes += key_len + u64::from(entry.loc.len);
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        let Some(old) = self.get(key) else { return };
        self.live_bytes -= key.len() as u64 + u64::from(old.loc.len);
        self.live -= 1;
        if self.base_find(key).is_ok() {
            self.overlay.insert(Key::from(key), None);
        } else {
            self.overlay.remove(key);
        }
    }

    /// Makes entries in strictly ascending key order the base (snapshot load, empty index only).
    pub(crate) fn extend_sorted(&mut self, entries: impl IntoIterator<Item = (Key, Entry)>) {
        debug_assert!(
            self.base.is_empty() && self.overlay.is_empty(),
            "bulk load into an empty index only"
        );
        self.base = entries.into_iter().collect();
        debug_assert!(self.base.windows(2).all(|w| w[0].0 < w[1].0), "base keys ascend");
        self.live = self.base.len();
        self.live_bytes = self
            .base
            .iter()
            .map(|(k, e)| k.len() as u64 + u64::from(e.loc.len))
            .sum();
    }

    /// Up to `max` entries with keys in `(lower, upper)`, in order: the two layers merged, the
    /// overlay winning on equal keys.
    pub(crate) fn range_chunk(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, max: usize) -> Entries {
        let mut bi = match lower {
            Bound::Unbounded => 0,
            Bound::Included(l) => self.base.partition_point(|(k, _)| k.as_bytes() < l),
            Bound::Excluded(l) => self.base.partition_point(|(k, _)| k.as_bytes() <= l),
        };
        let below_upper = |k: &[u8]| match upper {
            Bound::Unbounded => true,
            Bound::Included(u) => k <= u,
            Bound::Excluded(u) => k < u,
        };
        let mut over = self.overlay.range::<[u8], _>((lower, upper)).peekable();
        let mut out = Vec::new();
        while out.len() < max {
            let base = self.base.get(bi).filter(|(k, _)| below_upper(k));
            let take_base = match (base, over.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((bk, _)), Some((ok, _))) => {
                    if bk == *ok {
                        bi += 1; // shadowed by the overlay
                    }
                    bk < *ok
                }
            };
            if take_base {
                if let Some((k, e)) = base {
                    out.push((k.clone(), *e));
                }
                bi += 1;
            } else if let Some((k, Some(e))) = over.next() {
                out.push((k.clone(), *e));
            }
        }
        out
    }

    /// Points `key` at `loc` if its entry is still the one written at `seq`.
    pub(crate) fn repoint(&mut self, key: &[u8], seq: u64, loc: Loc) -> bool {
        let entry = match self.overlay.get_mut(key) {
            Some(over) => over.as_mut(),
            None => match self.base_find(key) {
                Ok(i) => Some(&mut self.base[i].1),
                Err(_) => None,
            },
        };
        match entry {
            Some(e) if e.seq.get() == seq => {
                debug_assert_eq!(e.loc.len, loc.len, "same write, same value length");
                e.loc = loc;
                true
            }
            _ => false,
        }
    }

    /// Sets the expiry of `key` if its entry is still the one written at `version` (a touch).
    pub(crate) fn touch(&mut self, key: &[u8], version: u64, expires_at_ms: u64) {
        let entry = match self.overlay.get_mut(key) {
            Some(over) => over.as_mut(),
            None => match self.base_find(key) {
                Ok(i) => Some(&mut self.base[i].1),
                Err(_) => None,
            },
        };
        if let Some(e) = entry.filter(|e| e.seq.get() == version) {
            e.expires_at_ms = expires_at_ms;
        }
    }

    /// Removes `key` if its entry is still exactly `(seq, expires_at_ms)`: not rewritten and not
    /// touched since it was seen expired.
    pub(crate) fn remove_if_unchanged(&mut self, key: &[u8], seq: u64, expires_at_ms: u64) {
        if self
            .get(key)
            .is_some_and(|e| e.seq.get() == seq && e.expires_at_ms == expires_at_ms)
        {
            self.delete(key);
        }
    }

    /// Drops every entry expired at `now_ms` (the end of recovery, once every touch in the log
    /// has been replayed).
    pub(crate) fn drop_expired(&mut self, now_ms: u64) -> u64 {
        let before = self.live;
        if self.base.iter().any(|(_, e)| !e.is_live(now_ms)) {
            let (mut live, mut bytes) = (self.live, self.live_bytes);
            let overlay = &self.overlay;
            self.base.retain(|(k, e)| {
                // A base entry the overlay shadows is not counted in `live`.
                let keep = e.is_live(now_ms) || overlay.contains_key(k.as_bytes());
                if !keep {
                    live -= 1;
                    bytes -= k.len() as u64 + u64::from(e.loc.len);
                }
                keep
            });
            (self.live, self.live_bytes) = (live, bytes);
        }
        let expired: Vec<Key> = self
            .overlay
            .iter()
            .filter(|(_, e)| e.is_some_and(|e| !e.is_live(now_ms)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.delete(&k);
        }
        (before - self.live) as u64
    }
}
