//! The in-memory ordered index: key → where the current value lives. No I/O here.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU64;
use std::ops::Bound;
use std::sync::Arc;

use crate::storage::{FileBytes, StorageFile};

mod change;
mod layer;
pub(crate) use change::{Change, RecordAt};
use layer::{Layer, LayerRange};

/// Index entries with their keys, in key order.
pub(crate) type Entries = Vec<(Key, Entry)>;

/// Base entries (values in a snapshot) with their keys, in key order.
pub(crate) type BaseEntries = Vec<(Key, BaseEntry)>;

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

impl Key {
    /// `k` as an inline key, if it is short enough. The bytes after it stay zero: [`Key::cmp`]
    /// relies on that.
    fn inline(k: &[u8]) -> Option<Key> {
        let mut bytes = [0u8; KEY_INLINE_MAX];
        bytes.get_mut(..k.len())?.copy_from_slice(k);
        // NOTE: cannot truncate: k.len() <= KEY_INLINE_MAX < 256.
        Some(Key::Inline {
            len: k.len() as u8,
            bytes,
        })
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Key {
        Key::inline(k).unwrap_or_else(|| Key::Heap(k.into()))
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
    /// Byte-string order (as `<[u8] as Ord>`, which `Borrow<[u8]>` requires).
    ///
    /// Two inline keys compare as their zero-padded bytes, eight at a time, then their lengths:
    /// where the padded bytes first differ, either both keys have a byte there or only the
    /// longer one has, and then it is not zero and the shorter key is its prefix; where they do
    /// not differ, the shorter key is a prefix of the other. A tree search compares about
    /// twenty to forty times; `memcmp` per comparison cost more than the comparison itself
    /// (callgrind, 400k puts of 16-byte keys: `Index::put` 2,540 instructions a put with the
    /// slice order, 1,820 with this).
    #[inline]
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Inline { len: la, bytes: a }, Key::Inline { len: lb, bytes: b }) => {
                let word = |x: &[u8; KEY_INLINE_MAX], at: usize| {
                    let mut w = [0u8; 8];
                    let end = (at + 8).min(KEY_INLINE_MAX);
                    w[..end - at].copy_from_slice(&x[at..end]);
                    u64::from_be_bytes(w)
                };
                for at in [0, 8, 16] {
                    match word(a, at).cmp(&word(b, at)) {
                        Ordering::Equal => {}
                        unequal => return unequal,
                    }
                }
                la.cmp(lb)
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
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

/// A file's number in the index's file table: 4 bytes in every entry instead of a 16-byte
/// [`FileId`]. Numbers are handed out in increasing order and never reused while the store is
/// open, so a location that outlives its file (which a checkpoint checks never happens) finds
/// no file, an error naming the key, instead of another file's bytes. (A number would come
/// round again only after 2^32 files in one process: 256 TiB of log at the smallest segments.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Slot(u32);

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

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
    /// misdirected write, docs/reliability.md F10) are an error, never a value. 0 for snapshot values,
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

/// An entry of the base: a value in a snapshot. It has no record to check on a read (the
/// snapshot's blocks were verified when it was written or loaded), so it keeps 32 bytes where
/// an [`Entry`] takes 40: with its inline key, 56 bytes a key instead of 64. The base holds
/// nearly every key of a store that checkpoints, so this is most of the index's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseEntry {
    pub seq: NonZeroU64,
    /// Expiry deadline (ms since the epoch), 0 for none.
    pub expires_at_ms: u64,
    /// Offset of the value in the snapshot.
    pub offset: u64,
    pub slot: Slot,
    /// Length of the value.
    pub len: u32,
}

const _: () = assert!(std::mem::size_of::<BaseEntry>() == 32);

impl BaseEntry {
    pub(crate) fn entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            expires_at_ms: self.expires_at_ms,
            loc: Loc {
                offset: self.offset,
                slot: self.slot,
                len: self.len,
                record_back: 0,
                record_len: 0,
            },
        }
    }

    fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

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

/// A key being looked up in the layers. A short key searches as an inline [`Key`], whose
/// comparisons take the fast path of [`Key::cmp`]; it is built once per lookup, not per layer.
struct Probe<'a> {
    bytes: &'a [u8],
    inline: Option<Key>,
    /// Its first eight bytes as a [`prefix`].
    prefix: u64,
}

impl Probe<'_> {
    fn new(bytes: &[u8]) -> Probe<'_> {
        Probe {
            bytes,
            inline: Key::inline(bytes),
            prefix: prefix(bytes),
        }
    }

    /// Its item in a tree layer.
    fn in_tree<'m>(&self, m: &'m BTreeMap<Key, Option<Entry>>) -> Option<&'m Option<Entry>> {
        match &self.inline {
            Some(k) => m.get(k),
            None => m.get(self.bytes),
        }
    }

    /// Its place in a sorted array (the base, or a layer's run) with its fences, if it is there.
    /// The fences narrow the search to the blocks whose keys can share its prefix, so the search
    /// of a large array starts in a few cache lines instead of across all of it.
    fn in_sorted<V>(&self, base: &[(Key, V)], fences: &[u64]) -> Option<usize> {
        debug_assert_eq!(fences.len(), base.len().div_ceil(FENCE_EVERY), "fences follow the base");
        // Blocks j with fences[j] <= prefix may hold it; of those, only the ones from the last
        // block starting below the prefix on.
        let upto = fences.partition_point(|&f| f <= self.prefix);
        // The fences just before `upto` that equal the prefix: usually none (no second search
        // then); when keys share their first eight bytes (`session:…`), a binary search for the
        // first of them. Stepping over them one by one made a get O(n / 16) in a store whose
        // keys all share a prefix (found by the CLI's conversion: 15 µs a get at 500,000 keys).
        let from = if upto > 0 && fences[upto - 1] == self.prefix {
            fences[..upto - 1].partition_point(|&f| f < self.prefix)
        } else {
            upto
        };
        let from = from.saturating_sub(1);
        let start = from * FENCE_EVERY;
        let end = (upto * FENCE_EVERY).min(base.len());
        let block = base.get(start..end)?;
        let i = match &self.inline {
            Some(q) if block.len() <= 2 * FENCE_EVERY => {
                // A count of the keys below it, with no branch on any comparison: the loads of
                // the block's keys (a cache line each) do not wait for one another, so the
                // block costs about one memory latency instead of one per halving (a binary
                // search: 4). Measured on gets after a bulk load of 1M keys in 1,000-op
                // batches, all in one layer's run: 715k/s with the binary search, 1.11-1.17M/s
                // with the count (docs/benchmarks.md, issue 14).
                let below = block.iter().map(|(k, _)| usize::from(k < q)).sum::<usize>();
                return (block.get(below).is_some_and(|(k, _)| k == q)).then_some(start + below);
            }
            Some(q) => block.binary_search_by(|(k, _)| k.cmp(q)),
            None => block.binary_search_by(|(k, _)| k.as_bytes().cmp(self.bytes)),
        };
        i.ok().map(|i| start + i)
    }
}

/// The base keeps the [`prefix`] of every `FENCE_EVERY`th key.
const FENCE_EVERY: usize = 16;

/// A key's first eight bytes, zero-padded, as a big-endian number: keys in byte-string order
/// have prefixes in order (not strictly: keys can share one).
fn prefix(k: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = k.len().min(8);
    w[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(w)
}

/// The fences of a sorted array: the prefix of every `FENCE_EVERY`th key, from the first.
fn fences_of<V>(base: &[(Key, V)]) -> Vec<u64> {
    base.iter().step_by(FENCE_EVERY).map(|(k, _)| prefix(k)).collect()
}

/// A file values are read from, and how.
#[derive(Clone)]
pub(crate) struct Source {
    pub file: FileId,
    /// The file's format version: how the bytes around a value are laid out.
    pub version: u32,
    pub data: SourceData,
    /// For a snapshot: where each of its blocks starts, ascending. A checkpoint verifies the
    /// block around every value it copies from a snapshot.
    pub blocks: Option<Arc<[u64]>>,
    /// The file's data key (format version 3: an encrypted store).
    pub cipher: Option<Arc<crate::crypto::FileCipher>>,
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
    pub(crate) fn bytes(file: FileId, version: u32, bytes: Arc<FileBytes>) -> Source {
        Source {
            file,
            version,
            data: SourceData::Bytes(bytes),
            blocks: None,
            cipher: None,
        }
    }

    pub(crate) fn snapshot(seq: u64, version: u32, bytes: Arc<FileBytes>, blocks: Arc<[u64]>) -> Source {
        Source {
            file: FileId::Snapshot(seq),
            version,
            data: SourceData::Bytes(bytes),
            blocks: Some(blocks),
            cipher: None,
        }
    }

    /// The same source with its file's data key (an encrypted store's file).
    pub(crate) fn with_cipher(mut self, cipher: Option<Arc<crate::crypto::FileCipher>>) -> Source {
        self.cipher = cipher;
        self
    }

    pub(crate) fn file(file: FileId, version: u32, handle: Arc<dyn StorageFile>) -> Source {
        Source {
            file,
            version,
            data: SourceData::File(handle),
            blocks: None,
            cipher: None,
        }
    }
}

/// The ordered map plus the table of files its entries point into.
///
/// Layers, newest first: `overlay`, every change since the last checkpoint began (`None` hides
/// an entry below that was deleted); `frozen`, the overlay as it was when that checkpoint fixed
/// its base (empty outside a checkpoint); `base`, the entries of the newest snapshot (a sorted
/// `Vec`, built without a tree, so a million keys load quickly). A key's entry is the one of the
/// newest layer that has it. When a checkpoint's snapshot is durable, the snapshot's entries
/// become the base and the frozen layer goes ([`Index::rebase`]), so memory holds each live key
/// about once, in the compact base, plus what changed since the checkpoint began.
#[derive(Default)]
pub(crate) struct Index {
    base: BaseEntries,
    /// The prefix of every `FENCE_EVERY`th base key (0.5 bytes a key): where a lookup of the
    /// base starts. Rebuilt whenever the base changes.
    fences: Vec<u64>,
    frozen: Layer,
    overlay: Layer,
    /// A checkpoint is between its roll ([`Index::freeze`]) and [`Index::rebase`]: the base
    /// will be replaced by a snapshot copied fuzzily meanwhile, so changes must stay visible
    /// in the overlay (a delete leaves a tombstone, a touch copies its entry up).
    frozen_active: bool,
    /// Keys present (all layers together).
    live: usize,
    /// The files by number, from `first_slot` on: the file and, once known, how to read it;
    /// `None` for a number whose file was removed. Leading `None`s are dropped.
    files: VecDeque<Option<(FileId, Option<Source>)>>,
    /// The number of `files[0]`.
    first_slot: u32,
    slots: HashMap<FileId, Slot>,
    /// The last file [`Index::slot`] was asked for, and its slot: nearly every write goes to
    /// the active segment, so this saves a hash lookup per write.
    last_slot: Option<(FileId, Slot)>,
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

    /// The entry below the overlay: the frozen layer's, else the base's.
    fn below(&self, key: &[u8]) -> Option<Entry> {
        self.below_probe(&Probe::new(key))
    }

    fn below_probe(&self, p: &Probe<'_>) -> Option<Entry> {
        match self.frozen.get(p) {
            Some(f) => *f,
            None if self.base.is_empty() => None,
            None => p.in_sorted(&self.base, &self.fences).map(|i| self.base[i].1.entry()),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Entry> {
        let p = Probe::new(key);
        match self.overlay.get(&p) {
            Some(over) => *over,
            None => self.below_probe(&p),
        }
    }

    /// The table's place of `slot`, if the number was handed out and is still in the table.
    fn table_at(&self, slot: Slot) -> Option<&Option<(FileId, Option<Source>)>> {
        self.files.get(slot.0.wrapping_sub(self.first_slot) as usize)
    }

    /// The file in `slot` and how to read it.
    pub(crate) fn source(&self, slot: Slot) -> Option<&Source> {
        self.table_at(slot)?.as_ref()?.1.as_ref()
    }

    /// The file in `slot`.
    pub(crate) fn file_of(&self, slot: Slot) -> Option<FileId> {
        self.table_at(slot)?.as_ref().map(|f| f.0)
    }

    /// The slot of `file`, given a new number if it has none yet.
    pub(crate) fn slot(&mut self, file: FileId) -> Slot {
        if let Some((f, s)) = self.last_slot {
            if f == file {
                debug_assert_eq!(self.slots.get(&file), Some(&s));
                return s;
            }
        }
        if let Some(&s) = self.slots.get(&file) {
            self.last_slot = Some((file, s));
            return s;
        }
        // NOTE: the table spans the numbers from the oldest open file to the newest, which a
        // checkpoint bounds (it removes the files it covers); more than 2^32 of them would
        // make numbers ambiguous.
        assert!(self.files.len() < u32::MAX as usize, "file table full");
        // NOTE: cannot truncate: the length is below u32::MAX (checked above).
        let s = Slot(self.first_slot.wrapping_add(self.files.len() as u32));
        self.files.push_back(Some((file, None)));
        self.slots.insert(file, s);
        s
    }

    /// Sets how `source.file` is read; returns its slot.
    pub(crate) fn set_source(&mut self, source: Source) -> Slot {
        let s = self.slot(source.file);
        let at = s.0.wrapping_sub(self.first_slot) as usize;
        self.files[at] = Some((source.file, Some(source)));
        s
    }

    /// Forgets `file`, returning how it was read (the caller may need to know when the last
    /// reader lets go of it). Its number is never given to another file.
    pub(crate) fn remove_source(&mut self, file: FileId) -> Option<Source> {
        if self.last_slot.is_some_and(|(f, _)| f == file) {
            self.last_slot = None;
        }
        let s = self.slots.remove(&file)?;
        let at = s.0.wrapping_sub(self.first_slot) as usize;
        let source = self.files[at].take().and_then(|(_, source)| source);
        while self.files.front().is_some_and(Option::is_none) {
            self.files.pop_front();
            self.first_slot = self.first_slot.wrapping_add(1);
        }
        source
    }

    /// The slot of `file`, if it is in the table.
    pub(crate) fn slot_of(&self, file: FileId) -> Option<Slot> {
        self.slots.get(&file).copied()
    }

    /// The slots some entry points into. Base entries all point into the newest snapshot, so
    /// only the first is looked at (debug builds check the rest).
    pub(crate) fn files_in_use(&self) -> std::collections::HashSet<Slot> {
        let mut used: std::collections::HashSet<Slot> = self
            .overlay
            .iter()
            .chain(self.frozen.iter())
            .filter_map(|(_, e)| e.map(|e| e.loc.slot))
            .collect();
        if let Some((_, first)) = self.base.first() {
            debug_assert!(self.base.iter().all(|(_, e)| e.slot == first.slot), "one base file");
            used.insert(first.slot);
        }
        used
    }

    /// For a failed check: the overlay's and frozen layer's entries in `slot`, each with the base
    /// entry of its key.
    pub(crate) fn describe_entries_in(&self, slot: Slot) -> String {
        let mut out = String::new();
        for (layer, m) in [("overlay", &self.overlay), ("frozen", &self.frozen)] {
            for (k, e) in m.iter().filter_map(|(k, e)| e.map(|e| (k, e))) {
                if e.loc.slot == slot {
                    let under = Probe::new(k)
                        .in_sorted(&self.base, &self.fences)
                        .map(|i| self.base[i].1);
                    out.push_str(&format!("\n  {layer} {k:?}: {e:?}; base: {under:?}"));
                }
            }
        }
        out
    }

    /// Every file in the table (with its slot), for checks.
    #[cfg(any(debug_assertions, test))]
    pub(crate) fn open_files(&self) -> impl Iterator<Item = (Slot, FileId)> + '_ {
        self.files.iter().enumerate().filter_map(|(i, f)| {
            // NOTE: cannot truncate: the table holds fewer than u32::MAX files (Index::slot).
            f.as_ref().map(|f| (Slot(self.first_slot.wrapping_add(i as u32)), f.0))
        })
    }

    pub(crate) fn put(&mut self, key: Key, entry: Entry) {
        let key_len = key.len() as u64;
        let below = if self.base.is_empty() && self.frozen.is_empty() {
            None
        } else {
            self.below(&key)
        };
        // One search of the overlay: the entry it replaces comes back from the insert (`None`
        // inside: a key below that was deleted).
        let replaced = match self.overlay.insert(key, Some(entry)) {
            Some(over) => over,
            None => below,
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
        if self.frozen_active || self.below(key).is_some() {
            self.overlay.insert(Key::from(key), None);
        } else {
            self.overlay.forget(key);
        }
    }

    /// Makes entries in strictly ascending key order the base (snapshot load, empty index only).
    pub(crate) fn extend_sorted(&mut self, entries: BaseEntries) {
        debug_assert!(
            self.base.is_empty() && self.overlay.is_empty() && self.frozen.is_empty(),
            "bulk load into an empty index only"
        );
        self.base = entries;
        self.fences = fences_of(&self.base);
        debug_assert!(self.base.windows(2).all(|w| w[0].0 < w[1].0), "base keys ascend");
        self.live = self.base.len();
        self.live_bytes = self.base.iter().map(|(k, e)| k.len() as u64 + u64::from(e.len)).sum();
    }

    /// A checkpoint fixed its base: what changed so far is frozen (the snapshot will hold it),
    /// and later changes gather in a fresh overlay. Call with no write in flight.
    pub(crate) fn freeze(&mut self) {
        debug_assert!(
            !self.frozen_active && self.frozen.is_empty(),
            "one checkpoint at a time"
        );
        self.frozen = std::mem::take(&mut self.overlay);
        self.frozen_active = true;
    }

    /// The checkpoint failed: the frozen changes go back under the overlay.
    pub(crate) fn unfreeze(&mut self) {
        for (k, e) in std::mem::take(&mut self.frozen).into_sorted() {
            self.overlay.insert_if_absent(k, e);
        }
        self.frozen_active = false;
    }

    /// The checkpoint's snapshot is durable and holds `entries` (in key order, pointing into
    /// it): they become the base and the frozen layer goes. Every change since the freeze is in
    /// the overlay, which stays, except:
    /// - where the snapshot holds the very write the overlay names (the same sequence number):
    ///   the base entry takes the overlay's deadline and the overlay's entry goes. That is
    ///   always so for an entry a touch copied up from below during the checkpoint, whose value
    ///   lies in a file the checkpoint is about to delete, when the snapshot kept it;
    /// - an entry a touch copied up whose key the snapshot left out: the snapshot left it out
    ///   as expired at the cut (`cut_ms`), so the touch gave it a deadline at or before the cut
    ///   (a touch decided after the cut found the entry live, and the snapshot copied either
    ///   the entry then or the touched one), and it goes too.
    ///
    /// Tombstones that hide nothing any more are dropped. Afterwards no entry of a write at or
    /// below `base_seq` is left outside the base.
    pub(crate) fn rebase(&mut self, entries: BaseEntries, base_seq: u64, cut_ms: u64) {
        debug_assert!(self.frozen_active, "rebase follows freeze");
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "base keys ascend");
        self.base = entries;
        self.fences = fences_of(&self.base);
        self.frozen = Layer::default();
        self.frozen_active = false;
        let mut live = self.base.len();
        let mut live_bytes: u64 = self.base.iter().map(|(k, e)| k.len() as u64 + u64::from(e.len)).sum();
        let (base, fences) = (&mut self.base, &self.fences);
        self.overlay.retain(|k, over| {
            let Some(i) = Probe::new(k).in_sorted(base, fences) else {
                return match over {
                    Some(e) if e.seq.get() <= base_seq && !e.is_live(cut_ms) => false,
                    Some(e) => {
                        debug_assert!(e.seq.get() > base_seq, "{k:?}: {e:?} is older than the snapshot");
                        live += 1;
                        live_bytes += k.len() as u64 + u64::from(e.loc.len);
                        true
                    }
                    None => false,
                };
            };
            let under = &mut base[i].1;
            match over {
                Some(e) if e.seq == under.seq => {
                    debug_assert_eq!(e.loc.len, under.len, "one write, one value length");
                    under.expires_at_ms = e.expires_at_ms;
                    false
                }
                Some(e) => {
                    live_bytes -= u64::from(under.len);
                    live_bytes += u64::from(e.loc.len);
                    true
                }
                None => {
                    live -= 1;
                    live_bytes -= k.len() as u64 + u64::from(under.len);
                    true
                }
            }
        });
        self.live = live;
        self.live_bytes = live_bytes;
    }

    /// Up to `max` entries with keys in `(lower, upper)`, in order: the layers merged, the
    /// newest winning on equal keys.
    pub(crate) fn range_chunk(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, max: usize) -> Entries {
        let bi = match lower {
            Bound::Unbounded => 0,
            Bound::Included(l) => self.base.partition_point(|(k, _)| k.as_bytes() < l),
            Bound::Excluded(l) => self.base.partition_point(|(k, _)| k.as_bytes() <= l),
        };
        let below_upper = |k: &[u8]| match upper {
            Bound::Unbounded => true,
            Bound::Included(u) => k <= u,
            Bound::Excluded(u) => k < u,
        };
        let mut base = self.base[bi..]
            .iter()
            .take_while(|(k, _)| below_upper(k))
            .map(|(k, e)| (k, Some(e.entry())))
            .peekable();
        let mut frozen: LayerRange<'_> = self.frozen.range(lower, upper);
        let mut over: LayerRange<'_> = self.overlay.range(lower, upper);
        let mut out = Vec::new();
        while out.len() < max {
            // The smallest key at the head of any layer; the newest layer holding it decides.
            let heads = [over.peek(), frozen.peek(), base.peek()];
            let Some(key) = heads.iter().flatten().map(|(k, _)| *k).min() else {
                break;
            };
            let mut winner: Option<Option<Entry>> = None;
            if over.peek().is_some_and(|(k, _)| *k == key) {
                winner.get_or_insert(over.next().and_then(|(_, e)| e));
            }
            if frozen.peek().is_some_and(|(k, _)| *k == key) {
                let e = frozen.next().and_then(|(_, e)| e);
                winner.get_or_insert(e);
            }
            if base.peek().is_some_and(|(k, _)| *k == key) {
                let e = base.next().and_then(|(_, e)| e);
                winner.get_or_insert(e);
            }
            if let Some(Some(e)) = winner {
                out.push((key.clone(), e));
            }
        }
        out
    }

    /// Sets the expiry of `key` if its entry is still the one written at `version` (a touch).
    /// During a checkpoint an entry below the overlay is copied up rather than changed in place,
    /// since the snapshot that replaces the layers below may have copied it before the touch.
    pub(crate) fn touch(&mut self, key: &[u8], version: u64, expires_at_ms: u64) {
        if let Some(over) = self.overlay.get_mut(key) {
            if let Some(e) = over.as_mut().filter(|e| e.seq.get() == version) {
                e.expires_at_ms = expires_at_ms;
            }
            return;
        }
        if self.frozen_active {
            if let Some(e) = self.below(key).filter(|e| e.seq.get() == version) {
                let touched = Entry { expires_at_ms, ..e };
                self.overlay.insert(Key::from(key), Some(touched));
            }
            return;
        }
        debug_assert!(self.frozen.is_empty());
        if let Some(i) = Probe::new(key).in_sorted(&self.base, &self.fences) {
            let e = &mut self.base[i].1;
            if e.seq.get() == version {
                e.expires_at_ms = expires_at_ms;
            }
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
                    bytes -= k.len() as u64 + u64::from(e.len);
                }
                keep
            });
            self.fences = fences_of(&self.base);
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

#[cfg(test)]
mod tests {
    //! The layers around a checkpoint: what the fuzzy snapshot may hold must never undo a change
    //! made after the freeze.

    use super::*;

    /// The trees' key order is exactly the byte-string order, for inline and heap keys alike:
    /// random keys with shared prefixes, every length around the 8-byte steps and the inline
    /// limit, `0x00` and `0xff` bytes. Replays from `SESSIONDB_SEED`; a failure prints it.
    /// A seed (from `SESSIONDB_SEED`, else the clock) and a generator (splitmix64) from it.
    pub(super) fn seeded() -> (u64, impl FnMut() -> u64) {
        let seed = std::env::var("SESSIONDB_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        let mut state = seed;
        let next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (seed, next)
    }

    /// The fenced search of the base finds every key and nothing else: keys of 0 to 30 bytes
    /// from a two-letter alphabet (so many share their first eight bytes and fences repeat),
    /// inline and on the heap, bases of every size around the fence spacing. Replays from
    /// `SESSIONDB_SEED`; a failure prints it.
    #[test]
    fn the_fenced_base_search_finds_exactly_the_base_keys() {
        let (seed, mut next) = seeded();
        let key = |next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            let len = next() % 31;
            (0..len).map(|_| b'a' + (next() % 2) as u8).collect()
        };
        for case in 0..300 {
            let n = (next() % (4 * FENCE_EVERY as u64 + 3)) as usize + if case % 10 == 0 { 2_000 } else { 0 };
            let mut keys: Vec<Vec<u8>> = (0..n).map(|_| key(&mut next)).collect();
            keys.sort();
            keys.dedup();
            let mut index = Index::default();
            let base = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Key::from(&k[..]), base_entry(i as u64 + 1, 0, 1)))
                .collect();
            index.extend_sorted(base);
            let why = |k: &[u8]| format!("SESSIONDB_SEED={seed}, case {case}, {} keys, key {k:?}", keys.len());
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(index.get(k).map(|e| e.seq.get()), Some(i as u64 + 1), "{}", why(k));
            }
            for _ in 0..200 {
                let probe = key(&mut next);
                let expected = keys.binary_search(&probe).ok().map(|i| i as u64 + 1);
                assert_eq!(index.get(&probe).map(|e| e.seq.get()), expected, "{}", why(&probe));
            }
        }
    }

    #[test]
    fn key_order_is_byte_string_order() {
        let (seed, mut next) = seeded();
        let bytes = |n: u64, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            (0..n)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => 255,
                    _ => next() as u8,
                })
                .collect()
        };
        for case in 0..50_000 {
            let (lp, la, lb) = (next() % 24, next() % 10, next() % 10);
            let prefix = bytes(lp, &mut next);
            let a = [prefix.clone(), bytes(la, &mut next)].concat();
            let b = [prefix, bytes(lb, &mut next)].concat();
            let (ka, kb) = (Key::from(&a[..]), Key::from(&b[..]));
            let why = || format!("SESSIONDB_SEED={seed}, case {case}: {a:?} vs {b:?}");
            assert_eq!(ka.cmp(&kb), a.cmp(&b), "{}", why());
            assert_eq!(ka == kb, a == b, "{}", why());
            assert_eq!(ka.as_bytes(), &a[..], "{}", why());
        }
    }

    #[test]
    fn lookups_find_short_and_long_keys_in_every_layer() {
        let mut index = Index::default();
        let short = b"\0s0123456789abcdef".to_vec();
        let long = vec![7u8; 40];
        index.extend_sorted(vec![(Key::from(&short[..]), base_entry(1, 0, 1))]);
        index.freeze();
        index.put(Key::from(&long[..]), entry(2, 0, 1));
        assert_eq!(index.get(&short).map(|e| e.seq.get()), Some(1), "in the base");
        assert_eq!(index.get(&long).map(|e| e.seq.get()), Some(2), "in the overlay");
        assert!(index.get(&short[..5]).is_none() && index.get(&long[..30]).is_none());
    }

    fn entry(seq: u64, expires_at_ms: u64, len: u32) -> Entry {
        Entry {
            seq: entry_seq(seq),
            expires_at_ms,
            loc: Loc {
                offset: 0,
                slot: Slot(0),
                len,
                record_back: 0,
                record_len: 0,
            },
        }
    }

    /// An entry whose value lies in the file at `slot`.
    fn entry_in(slot: Slot, seq: u64, expires_at_ms: u64, len: u32) -> Entry {
        let e = entry(seq, expires_at_ms, len);
        Entry {
            loc: Loc { slot, ..e.loc },
            ..e
        }
    }

    fn base_entry(seq: u64, expires_at_ms: u64, len: u32) -> BaseEntry {
        BaseEntry {
            seq: entry_seq(seq),
            expires_at_ms,
            offset: 0,
            slot: Slot(0),
            len,
        }
    }

    fn keys(index: &Index) -> Vec<(Vec<u8>, u64)> {
        index
            .range_chunk(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .into_iter()
            .map(|(k, e)| (k.to_vec(), e.seq.get()))
            .collect()
    }

    /// Each key's version and deadline.
    type Versions = BTreeMap<Vec<u8>, (u64, u64)>;

    /// Puts, deletes and touches of a few thousand keys (so the overlay and the frozen layer are
    /// sorted runs with trees on top, merged many times) across checkpoints that rebase or fail,
    /// against a map of key to (version, deadline): every key's entry, the whole range in order
    /// and the live count agree after every checkpoint. The snapshot a rebase gets is the state
    /// at its freeze (a checkpoint that copied before any later change). Replays from
    /// `SESSIONDB_SEED`; a failure prints it.
    #[test]
    fn layers_with_runs_keep_every_change_across_checkpoints() {
        let (seed, mut next) = seeded();
        let run = std::panic::AssertUnwindSafe(|| {
            let mut index = Index::default();
            let mut model: Versions = BTreeMap::new();
            let mut seq = 0u64;
            // The base sequence number and the state at the freeze of a checkpoint in progress.
            let mut frozen_at: Option<(u64, Versions)> = None;
            let mut runs_seen = (0, 0);
            for step in 0..30_000u64 {
                let key = format!("k{:05}", next() % 4_000).into_bytes();
                match next() % 1_000 {
                    0..=599 => {
                        seq += 1;
                        index.put(Key::from(&key[..]), entry(seq, 0, 8));
                        model.insert(key, (seq, 0));
                    }
                    600..=799 => {
                        index.delete(&key);
                        model.remove(&key);
                    }
                    800..=996 => {
                        if let Some(&(version, _)) = model.get(&key) {
                            index.touch(&key, version, step + 1);
                            model.insert(key, (version, step + 1));
                        }
                    }
                    _ => match frozen_at.take() {
                        None => {
                            index.freeze();
                            frozen_at = Some((seq, model.clone()));
                        }
                        Some((base_seq, snapshot)) if next() % 4 != 0 => {
                            let entries = snapshot
                                .iter()
                                .map(|(k, &(v, d))| (Key::from(&k[..]), base_entry(v, d, 8)))
                                .collect();
                            index.rebase(entries, base_seq, 0);
                        }
                        Some(_) => index.unfreeze(),
                    },
                }
                runs_seen.0 = runs_seen.0.max(index.overlay.run_len());
                runs_seen.1 = runs_seen.1.max(index.frozen.run_len());
                if step % 2_000 == 1_999 || (frozen_at.is_none() && next() % 500 == 0) {
                    let got: Vec<(Vec<u8>, (u64, u64))> = index
                        .range_chunk(Bound::Unbounded, Bound::Unbounded, usize::MAX)
                        .into_iter()
                        .map(|(k, e)| (k.to_vec(), (e.seq.get(), e.expires_at_ms)))
                        .collect();
                    let want: Vec<(Vec<u8>, (u64, u64))> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
                    assert!(
                        got.len() == want.len() && first_difference.is_none(),
                        "step {step}: the whole index: {} keys, the model {}; first difference: {:?}",
                        got.len(),
                        want.len(),
                        first_difference.map(|i| (&got[i], &want[i]))
                    );
                    assert_eq!(index.len(), model.len(), "step {step}: live keys");
                    for (k, &(v, d)) in model.iter().step_by(37) {
                        let e = index.get(k).expect("a model key is in the index");
                        assert_eq!((e.seq.get(), e.expires_at_ms), (v, d), "step {step}: get");
                    }
                }
            }
            assert!(
                runs_seen.0 > 200 && runs_seen.1 > 200,
                "runs in both layers: {runs_seen:?}"
            );
        });
        if let Err(panic) = std::panic::catch_unwind(run) {
            eprintln!("layers_with_runs_keep_every_change_across_checkpoints failed with SESSIONDB_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_key_created_and_deleted_during_a_checkpoint_stays_deleted_after_the_rebase() {
        let mut index = Index::default();
        index.put(Key::from(&b"a"[..]), entry(1, 0, 10));
        index.freeze();
        index.put(Key::from(&b"k"[..]), entry(2, 0, 10));
        // The fuzzy copy saw k; then k is deleted.
        let snapshot = vec![
            (Key::from(&b"a"[..]), base_entry(1, 0, 10)),
            (Key::from(&b"k"[..]), base_entry(2, 0, 10)),
        ];
        index.delete(b"k");
        index.rebase(snapshot, 1, 0);
        assert!(index.get(b"k").is_none(), "the delete after the freeze holds");
        assert_eq!(keys(&index), vec![(b"a".to_vec(), 1)]);
        assert_eq!((index.len(), index.live_bytes()), (1, 11));
    }

    #[test]
    fn a_touch_during_a_checkpoint_survives_a_snapshot_copied_before_it() {
        let mut index = Index::default();
        index.extend_sorted(vec![(Key::from(&b"s"[..]), base_entry(5, 1000, 10))]);
        index.freeze();
        let copied = vec![(Key::from(&b"s"[..]), base_entry(5, 1000, 10))];
        index.touch(b"s", 5, 9000);
        index.touch(b"s", 4, 1); // another version: ignored
        index.rebase(copied, 5, 0);
        assert_eq!(index.get(b"s").map(|e| e.expires_at_ms), Some(9000));
        assert_eq!(index.len(), 1);
    }

    /// The touched entry lives on in the new base, with the touch's deadline, and nothing points
    /// into the old snapshot's or an old segment's file any more (issue 12: the checkpoint then
    /// deletes those files).
    #[test]
    fn a_touch_during_a_checkpoint_leaves_nothing_in_the_files_it_covers() {
        let mut index = Index::default();
        let old_snapshot = index.slot(FileId::Snapshot(1));
        let old_segment = index.slot(FileId::Segment(1));
        let new_snapshot = index.slot(FileId::Snapshot(9));
        let at = |slot, seq, expires| BaseEntry {
            slot,
            ..base_entry(seq, expires, 10)
        };
        index.extend_sorted(vec![(Key::from(&b"in-snapshot"[..]), at(old_snapshot, 1, 1000))]);
        index.put(Key::from(&b"in-segment"[..]), entry_in(old_segment, 5, 1000, 10));
        index.freeze();
        index.touch(b"in-snapshot", 1, 7000);
        index.touch(b"in-segment", 5, 8000);
        // The fuzzy copy saw neither touch.
        index.rebase(
            vec![
                (Key::from(&b"in-segment"[..]), at(new_snapshot, 5, 1000)),
                (Key::from(&b"in-snapshot"[..]), at(new_snapshot, 1, 1000)),
            ],
            5,
            0,
        );
        assert_eq!(index.get(b"in-snapshot").map(|e| e.expires_at_ms), Some(7000));
        assert_eq!(index.get(b"in-segment").map(|e| e.expires_at_ms), Some(8000));
        assert_eq!(index.files_in_use(), [new_snapshot].into_iter().collect());
        assert_eq!((index.len(), index.live_bytes()), (2, 2 * 10 + 21));
    }

    /// A touch whose deadline was already past at the cut (its TTL counted from before a
    /// delay): the snapshot left the key out as expired, and the touched copy goes with it
    /// rather than stay pointing into a file the checkpoint deletes.
    #[test]
    fn a_touch_to_a_past_deadline_during_a_checkpoint_goes_with_the_snapshots_choice() {
        let mut index = Index::default();
        let old = index.slot(FileId::Segment(1));
        index.put(Key::from(&b"s"[..]), entry_in(old, 4, 5000, 10));
        index.freeze(); // the cut: 3000
        index.touch(b"s", 4, 2500); // decided at 3000 or later, its deadline from before
        index.rebase(Vec::new(), 4, 3000); // the copy saw the touched entry, expired at 3000
        assert!(index.get(b"s").is_none());
        assert!(index.files_in_use().is_empty(), "nothing points into segment 1");
        assert_eq!((index.len(), index.live_bytes()), (0, 0));
    }

    #[test]
    fn a_removed_files_number_is_never_given_again() {
        let mut index = Index::default();
        let a = index.slot(FileId::Segment(1));
        let b = index.slot(FileId::Segment(2));
        index.remove_source(FileId::Segment(1));
        assert_eq!((index.file_of(a), index.file_of(b)), (None, Some(FileId::Segment(2))));
        let c = index.slot(FileId::Segment(3));
        index.remove_source(FileId::Segment(2));
        let d = index.slot(FileId::Snapshot(3));
        assert!([b, c, d].iter().all(|s| *s != a) && c != b && d != b && d != c);
        assert_eq!(index.file_of(a), None);
        assert_eq!(index.file_of(b), None);
        assert_eq!(index.file_of(c), Some(FileId::Segment(3)));
        assert_eq!(index.file_of(d), Some(FileId::Snapshot(3)));
        assert_eq!(index.open_files().count(), 2);
    }

    #[test]
    fn overwrites_and_deletes_on_every_layer_count_right() {
        let mut index = Index::default();
        index.extend_sorted(vec![
            (Key::from(&b"a"[..]), base_entry(1, 0, 1)),
            (Key::from(&b"b"[..]), base_entry(2, 0, 1)),
        ]);
        index.put(Key::from(&b"c"[..]), entry(3, 0, 1));
        index.delete(b"a");
        index.freeze();
        index.put(Key::from(&b"b"[..]), entry(4, 0, 5)); // over the base
        index.delete(b"c"); // a frozen entry
        index.put(Key::from(&b"d"[..]), entry(5, 0, 1)); // new
        assert_eq!(keys(&index), vec![(b"b".to_vec(), 4), (b"d".to_vec(), 5)]);
        assert_eq!(index.len(), 2);
        // The snapshot copied b before its overwrite, c before its delete, not d.
        index.rebase(
            vec![
                (Key::from(&b"b"[..]), base_entry(2, 0, 1)),
                (Key::from(&b"c"[..]), base_entry(3, 0, 1)),
            ],
            3,
            0,
        );
        assert_eq!(keys(&index), vec![(b"b".to_vec(), 4), (b"d".to_vec(), 5)]);
        assert_eq!((index.len(), index.live_bytes()), (2, 8));
    }

    #[test]
    fn a_failed_checkpoint_unfreezes_without_losing_a_change() {
        let mut index = Index::default();
        index.put(Key::from(&b"a"[..]), entry(1, 0, 1));
        index.put(Key::from(&b"b"[..]), entry(2, 0, 1));
        index.freeze();
        index.put(Key::from(&b"a"[..]), entry(3, 0, 1));
        index.delete(b"b");
        index.unfreeze();
        assert_eq!(keys(&index), vec![(b"a".to_vec(), 3)]);
        assert_eq!(index.len(), 1);
        index.freeze(); // and the next checkpoint can freeze again
        index.rebase(vec![(Key::from(&b"a"[..]), base_entry(3, 0, 1))], 3, 0);
        assert_eq!(keys(&index), vec![(b"a".to_vec(), 3)]);
    }
}
