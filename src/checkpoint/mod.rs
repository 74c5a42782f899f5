//! Checkpoints: write a snapshot of the live data, then delete the log it covers.
//!
//! 1. Note `S`, the last applied sequence number, and copy the index in chunks (writers go on;
//!    entries changed later may be copied with their newer values, up to `end_seq`).
//! 2. Write the live entries to `S.snap.tmp` in checksummed blocks, then the footer. Entries
//!    expired when `S` was fixed are left out, unless a write to them was already waiting
//!    (a touch ordered after `S` must find its entry when the log is replayed).
//! 3. fsync the temp file; make the log durable through `end_seq`.
//! 4. Rename to `S.snap`; fsync the directory. From here the snapshot is the recovery base.
//! 5. Point index entries at the snapshot; delete segments wholly at or below `S` and older
//!    snapshots; fsync the directories.
//!
//! A crash before 4 leaves the old snapshot and the whole log; after 4, the new snapshot and
//! every record after `S` (docs/design.md, "Checkpoint").

use std::mem::MaybeUninit;
use std::num::NonZeroU64;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::Engine;
use crate::engine::RollPoint;
use crate::error::{Error, Result};
use crate::format::{self, BlockBuilder, HeaderState, SnapshotEntry, SnapshotFooter, SNAPSHOT_HEADER_SIZE};
use crate::index::{BaseEntries, BaseEntry, Entry, FileId, Key, Loc, Slot, Source, SourceData};
use crate::limits;
use crate::storage::{write_all_at, FileBytes, OpenMode, Storage};

/// Entries copied per index lock hold.
const COPY_CHUNK: usize = 1024;
/// Bytes buffered before a write to the snapshot file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// A snapshot loaded by recovery.
pub(crate) struct LoadedSnapshot {
    pub base_seq: u64,
    pub end_seq: u64,
    pub entries: u64,
    pub bytes: Arc<FileBytes>,
    /// Where each block starts.
    pub blocks: Arc<[u64]>,
}

impl LoadedSnapshot {
    /// How the index reads values from it.
    pub(crate) fn source(&self) -> Source {
        Source::snapshot(self.base_seq, self.bytes.clone(), self.blocks.clone())
    }
}

/// Reads and verifies the whole snapshot `base_seq`, returning its entries in key order.
/// Expired entries are kept: a touch later in the log may extend them (recovery drops what is
/// still expired after the replay).
pub(crate) fn load_snapshot(
    storage: &dyn Storage,
    path: &Path,
    base_seq: u64,
    slot: Slot,
) -> Result<(LoadedSnapshot, BaseEntries)> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))?;
    let bytes = Arc::new(FileBytes::load(file.as_ref()).map_err(|e| Error::read(path, e))?);
    decode_snapshot(bytes, path, base_seq, slot)
}

/// Verifies and decodes the whole snapshot in `bytes`, its entries pointing at `slot`.
pub(crate) fn decode_snapshot(
    bytes: Arc<FileBytes>,
    path: &Path,
    base_seq: u64,
    slot: Slot,
) -> Result<(LoadedSnapshot, BaseEntries)> {
    let b = bytes.bytes();
    match format::decode_snapshot_header(b) {
        HeaderState::Valid(seq) if seq == base_seq => {}
        HeaderState::Valid(seq) => {
            return Err(Error::corruption(
                path,
                0,
                format!("snapshot header says base sequence {seq}"),
            ));
        }
        HeaderState::UnsupportedVersion(found) => {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found,
                supported: format::FORMAT_VERSION,
            })
        }
        HeaderState::Zero => return Err(Error::corruption(path, 0, "snapshot header is zero")),
        HeaderState::Damaged(d) => return Err(Error::corruption(path, d.offset, d.reason)),
    }
    let footer = format::decode_snapshot_footer(b).map_err(|d| Error::corruption(path, d.offset, d.reason))?;
    if footer.base_seq != base_seq {
        return Err(Error::corruption(
            path,
            footer.footer_offset,
            "snapshot footer disagrees with its header",
        ));
    }
    let end = footer.footer_offset as usize;
    let mut frames = Vec::new();
    let mut at = SNAPSHOT_HEADER_SIZE;
    while at < end {
        let frame =
            format::block_frame(&b[at..end]).map_err(|d| Error::corruption(path, at as u64 + d.offset, d.reason))?;
        frames.push((at, frame));
        at += frame.len;
    }
    // The blocks are split in two halves of about equal bytes, each checked and decoded on its
    // own thread (a block is checksummed just before it is decoded, while it is in cache).
    let total: usize = frames.iter().map(|f| f.1.len).sum();
    let mut half = 0;
    let split = frames
        .iter()
        .position(|f| {
            half += f.1.len;
            half > total / 2
        })
        .map_or(frames.len(), |i| i + 1);
    let (first, second) = frames.split_at(split);
    // Both halves decode straight into their parts of one vector: no second copy of a
    // million entries, and each thread takes the page faults of its own part.
    let count_of = |fs: &[(usize, format::BlockFrame)]| fs.iter().map(|f| f.1.count).sum::<usize>();
    let (n1, n2) = (count_of(first), count_of(second));
    let mut out: BaseEntries = Vec::with_capacity(n1 + n2);
    let (slots1, slots2) = out.spare_capacity_mut()[..n1 + n2].split_at_mut(n1);
    let (a, b2) = std::thread::scope(|scope| {
        let other = scope.spawn(|| decode_entries(b, end, second, path, slot, slots2));
        let mine = decode_entries(b, end, first, path, slot, slots1);
        let other = other
            .join()
            .unwrap_or_else(|_| Err(Error::corruption(path, 0, "snapshot decoder thread panicked")));
        (mine, other)
    });
    // An error in one half drops the other half's entries with its `Filling`.
    let (a, b2) = (a?, b2?);
    let (a, b2) = (a.hand_over(), b2.hand_over());
    // SAFETY: decode_entries returns Ok only with every slot of its slice written, and the two
    // slices are slots 0..n1 + n2 of `out`; `hand_over` leaves the entries to `out`.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(n1 + n2)
    };
    if let (Some(l), Some((f, at))) = (a.last, b2.first) {
        if l >= f {
            return Err(Error::corruption(path, at, "snapshot keys are not in ascending order"));
        }
    }
    let count = a.count + b2.count;
    if count != footer.entry_count {
        return Err(Error::corruption(
            path,
            footer.footer_offset,
            format!("snapshot holds {count} entries, its footer says {}", footer.entry_count),
        ));
    }
    let loaded = LoadedSnapshot {
        base_seq,
        end_seq: footer.end_seq,
        entries: count,
        bytes,
        blocks: frames.iter().map(|f| f.0 as u64).collect(),
    };
    Ok((loaded, out))
}

/// One half of a snapshot, decoded.
struct DecodedHalf<'a, 's> {
    /// Its slots, every one written.
    filled: Filling<'s>,
    /// Its entries, expired ones included.
    count: u64,
    /// The last key.
    last: Option<&'a [u8]>,
    /// The first key and its offset.
    first: Option<(&'a [u8], u64)>,
}

impl<'a> DecodedHalf<'a, '_> {
    /// Leaves the entries to the vector; returns (count, first key and its offset, last key).
    fn hand_over(self) -> HalfEnds<'a> {
        self.filled.hand_over();
        HalfEnds {
            count: self.count,
            first: self.first,
            last: self.last,
        }
    }
}

/// What joins two decoded halves: their counts and the keys where they meet.
struct HalfEnds<'a> {
    count: u64,
    first: Option<(&'a [u8], u64)>,
    last: Option<&'a [u8]>,
}

/// Slots of a vector being filled; on an early return, the entries written so far are dropped
/// (a long key owns heap memory).
struct Filling<'s> {
    slots: &'s mut [MaybeUninit<(Key, BaseEntry)>],
    filled: usize,
}

impl Filling<'_> {
    fn push(&mut self, item: (Key, BaseEntry)) -> bool {
        let Some(slot) = self.slots.get_mut(self.filled) else {
            return false;
        };
        slot.write(item);
        self.filled += 1;
        true
    }

    fn is_full(&self) -> bool {
        self.filled == self.slots.len()
    }

    /// The vector owns the entries from now on. Its length is set to cover every slot next, so
    /// a slot left unwritten would be read as an entry: checked in every build.
    fn hand_over(self) {
        assert!(
            self.is_full(),
            "a snapshot half handed over before all its slots were written"
        );
        std::mem::forget(self);
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        for slot in &mut self.slots[..self.filled] {
            // SAFETY: slots before `filled` were written by `push`, and not handed to the
            // vector (`hand_over` forgets the `Filling` instead of dropping it).
            #[allow(unsafe_code)]
            unsafe {
                slot.assume_init_drop()
            };
        }
    }
}

/// Checks and decodes the framed blocks into `slots`, which must be exactly as many as their
/// entries; keys must ascend. Returns Ok only with every slot written.
fn decode_entries<'a, 's>(
    b: &'a [u8],
    end: usize,
    frames: &[(usize, format::BlockFrame)],
    path: &Path,
    slot: Slot,
    slots: &'s mut [MaybeUninit<(Key, BaseEntry)>],
) -> Result<DecodedHalf<'a, 's>> {
    let mut out = Filling { slots, filled: 0 };
    let mut count = 0u64;
    let mut first: Option<(&[u8], u64)> = None;
    let mut prev_key: Option<&[u8]> = None;
    for &(at, frame) in frames {
        let block = &b[at..end];
        let corrupt = |d: format::Damage| Error::corruption(path, at as u64 + d.offset, d.reason);
        format::verify_block(block, frame).map_err(corrupt)?;
        let entries = format::decode_block_entries(block, frame).map_err(corrupt)?;
        for d in entries {
            let e = d.entry;
            let offset = (at + d.value_at) as u64;
            if prev_key.is_some_and(|p| p >= e.key) {
                return Err(Error::corruption(
                    path,
                    offset,
                    "snapshot keys are not in ascending order",
                ));
            }
            prev_key = Some(e.key);
            first.get_or_insert((e.key, offset));
            count += 1;
            let Some(seq) = NonZeroU64::new(e.seq) else {
                return Err(Error::corruption(path, offset, "snapshot entry has sequence number 0"));
            };
            let entry = BaseEntry {
                seq,
                expires_at_ms: e.expires_at_ms,
                offset,
                slot,
                // NOTE: cannot truncate: decode_block_entries bounds value_len by VALUE_SIZE_MAX_LIMIT.
                len: e.value.len() as u32,
            };
            if !out.push((e.key.into(), entry)) {
                return Err(Error::corruption(
                    path,
                    offset,
                    "snapshot block holds more entries than it says",
                ));
            }
        }
    }
    if !out.is_full() {
        let at = frames.last().map_or(0, |f| f.0 as u64);
        return Err(Error::corruption(
            path,
            at,
            "snapshot blocks hold fewer entries than they say",
        ));
    }
    Ok(DecodedHalf {
        filled: out,
        count,
        last: prev_key,
        first,
    })
}

/// Runs one checkpoint. Returns when the snapshot is durable and the files it covers are gone.
pub(crate) fn run(engine: &Engine) -> Result<()> {
    let _one_at_a_time = engine.checkpoint_lock.lock();
    let started = std::time::Instant::now();
    engine.check_poison()?;
    let applied = engine.index.read().applied_seq;
    let last = engine.snapshots.lock().last().map(|s| s.0);
    if last == Some(applied) || applied == 0 {
        // Nothing written since the last checkpoint (or ever).
        return Ok(());
    }
    let roll = engine.roll_for_checkpoint()?;
    point!(engine, CheckpointFrozen);
    let base_seq = roll.base;
    // The index is frozen at the base until the snapshot replaces its lower layers.
    let snapshot_bytes = match write_and_rebase(engine, &roll) {
        Ok(bytes) => bytes,
        Err(e) => {
            // The store goes on from its current files: the frozen changes go back under the
            // overlay, the new snapshot is forgotten (its number is never reused) and its
            // temporary file removed. (If it was already renamed into place, it stays: it and
            // the whole log, which is still there, recover the same state.)
            let mut index = engine.index.write();
            index.unfreeze();
            index.remove_source(FileId::Snapshot(base_seq));
            drop(index);
            let _ = engine.storage.remove(&engine.layout.snapshot_tmp(base_seq));
            return Err(e);
        }
    };
    point!(engine, CheckpointRebased);
    let old: Vec<u64> = {
        let mut snapshots = engine.snapshots.lock();
        let old = snapshots.drain(..).map(|s| s.0).collect();
        snapshots.push((base_seq, snapshot_bytes));
        old
    };
    let removed = remove_covered(engine, base_seq, &old);
    #[cfg(debug_assertions)]
    check_every_entry(engine);
    removed?;
    point!(engine, CheckpointDone);
    engine.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    engine.counters.telemetry.checkpoint(started.elapsed(), snapshot_bytes);
    engine
        .counters
        .log_bytes_since_checkpoint
        .fetch_sub(roll.log_bytes, Ordering::Relaxed);
    Ok(())
}

/// Steps 2 to 5: writes the snapshot, makes it the recovery base, reads it back and makes its
/// entries the index's base. Returns the snapshot's size.
fn write_and_rebase(engine: &Engine, roll: &RollPoint) -> Result<u64> {
    let base_seq = roll.base;
    let storage = engine.storage.as_ref();
    let tmp = engine.layout.snapshot_tmp(base_seq);
    let path = engine.layout.snapshot(base_seq);
    let end_seq = write_snapshot(engine, &tmp, roll)?;
    point!(engine, CheckpointWritten);
    // The snapshot may hold writes up to end_seq; they must be durable in the log before the
    // snapshot becomes the recovery base, or a crash could leave a state no prefix produced.
    if engine.log_sync.durable_seq() < end_seq {
        engine.sync()?;
    }
    storage.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
    // The rename must be durable before the segments it replaces are deleted (docs/reliability.md, F4).
    storage
        .sync_dir(engine.layout.dir())
        .map_err(|e| Error::io("fsync", engine.layout.dir(), e))?;

    let file = storage
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open", &path, e))?;
    let bytes = Arc::new(FileBytes::load(file.as_ref()).map_err(|e| Error::read(&path, e))?);
    let size = bytes.bytes().len() as u64;
    // Pair the checks: the snapshot is read back and verified before the log it replaces goes.
    let slot = engine.index.write().slot(FileId::Snapshot(base_seq));
    let (loaded, entries) = decode_snapshot(bytes, &path, base_seq, slot)?;
    let mut index = engine.index.write();
    index.set_source(loaded.source());
    index.rebase(entries, roll.base, roll.cut_ms);
    Ok(size)
}

/// Writes the snapshot's temp file; returns `end_seq`. Every value copied is checked first
/// against the record or snapshot block it comes from, and against its key and version
/// ([`Engine::read_value`]): a value that does not verify fails the checkpoint, naming the file
/// and offset it was read from, and never reaches the snapshot.
fn write_snapshot(engine: &Engine, tmp: &Path, roll: &RollPoint) -> Result<u64> {
    let base_seq = roll.base;
    let storage = engine.storage.as_ref();
    // A leftover from an interrupted checkpoint with the same base would make create fail.
    let _ = storage.remove(tmp);
    let file = storage
        .open(tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", tmp, e))?;
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BUFFER_BYTES + limits::SNAPSHOT_BLOCK_BYTES_TARGET);
    out.extend_from_slice(&format::encode_snapshot_header(base_seq));
    let mut written = 0u64;
    let mut block = BlockBuilder::new();
    let mut count = 0u64;
    let mut lower: Bound<Key> = Bound::Unbounded;
    let mut end_seq;
    // The snapshot block verified last: values come from a snapshot in key order, which is the
    // order of its blocks, so each block is checked once.
    let mut verified: Option<(Slot, u64)> = None;
    loop {
        let (chunk, applied) = {
            let index = engine.index.read();
            let chunk = index.range_chunk(lower.as_ref().map(|k| &**k), Bound::Unbounded, COPY_CHUNK);
            let with_sources: Vec<(Key, Entry, Result<Source>)> = chunk
                .into_iter()
                .map(|(k, e)| {
                    let s = engine.source_of(&index, &k, e.loc);
                    (k, e, s)
                })
                .collect();
            (with_sources, index.applied_seq)
        };
        end_seq = applied;
        let Some(last) = chunk.last().map(|(k, _, _)| k.clone()) else {
            break;
        };
        for (key, entry, source) in chunk {
            // Dropped only if expired at the roll and not about to be touched (RollPoint).
            if !entry.is_live(roll.cut_ms) && !roll.pending.contains(&key) {
                continue;
            }
            let source = source?;
            if entry.loc.record_len == 0 {
                verify_block_around(engine, &source, entry.loc, &mut verified)?;
            }
            let value = engine.read_value(&source, &key, &entry)?;
            block.push(SnapshotEntry {
                key: &key,
                value: &value,
                seq: entry.seq.get(),
                expires_at_ms: entry.expires_at_ms,
            });
            count += 1;
            if block.len() >= limits::SNAPSHOT_BLOCK_BYTES_TARGET {
                out.extend_from_slice(&block.finish());
            }
        }
        if out.len() >= WRITE_BUFFER_BYTES {
            write_all_at(file.as_ref(), &out, written).map_err(|e| Error::io("write", tmp, e))?;
            written += out.len() as u64;
            out.clear();
        }
        lower = Bound::Excluded(last);
    }
    if !block.is_empty() {
        out.extend_from_slice(&block.finish());
    }
    let footer = format::encode_snapshot_footer(SnapshotFooter {
        entry_count: count,
        base_seq,
        end_seq,
        footer_offset: written + out.len() as u64,
    });
    out.extend_from_slice(&footer);
    write_all_at(file.as_ref(), &out, written).map_err(|e| Error::io("write", tmp, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
    Ok(end_seq.max(base_seq))
}

/// Checks the checksum of the snapshot block that holds the value at `loc`, unless it is the
/// block checked last (`verified`).
fn verify_block_around(engine: &Engine, source: &Source, loc: Loc, verified: &mut Option<(Slot, u64)>) -> Result<()> {
    let path = || engine.file_path(source.file);
    let (Some(blocks), SourceData::Bytes(bytes)) = (&source.blocks, &source.data) else {
        return Err(Error::corruption(
            path(),
            loc.offset,
            "index entry names no snapshot block",
        ));
    };
    let Some(start) = blocks
        .partition_point(|&b| b <= loc.offset)
        .checked_sub(1)
        .map(|i| blocks[i])
    else {
        return Err(Error::corruption(
            path(),
            loc.offset,
            "value lies before the snapshot's first block",
        ));
    };
    if *verified == Some((loc.slot, start)) {
        return Ok(());
    }
    let b = usize::try_from(start)
        .ok()
        .and_then(|at| bytes.bytes().get(at..))
        .ok_or_else(|| Error::corruption(path(), start, "snapshot block lies past the end of the file"))?;
    let damaged = |d: format::Damage| Error::corruption(path(), start + d.offset, d.reason);
    let frame = format::block_frame(b).map_err(damaged)?;
    format::verify_block(b, frame).map_err(damaged)?;
    if loc.offset + u64::from(loc.len) > start + frame.len as u64 {
        return Err(Error::corruption(
            path(),
            loc.offset,
            "value runs past its snapshot block",
        ));
    }
    *verified = Some((loc.slot, start));
    Ok(())
}

/// Deletes segments wholly at or below `base_seq` (never the active one) and older snapshots,
/// each only once no index entry points into it. After the rebase none does (the snapshot holds
/// every live value of those files, and `Index::rebase` folded into it the entries a touch
/// copied up meanwhile); if one ever did, that file is kept, with its entry, for a later
/// checkpoint to copy (debug builds stop there instead).
fn remove_covered(engine: &Engine, base_seq: u64, old_snapshots: &[u64]) -> Result<()> {
    let storage = engine.storage.as_ref();
    let (doomed, old_snapshots): (Vec<u64>, Vec<u64>) = {
        let mut log = engine.log.lock();
        let mut index = engine.index.write();
        let in_use = index.files_in_use();
        let unused = |file: FileId| {
            let slot = index.slot_of(file);
            let used = slot.is_some_and(|s| in_use.contains(&s));
            debug_assert!(
                !used,
                "{file:?} is still in use after the checkpoint at {base_seq}:{}",
                slot.map(|s| index.describe_entries_in(s)).unwrap_or_default()
            );
            !used
        };
        let active = log.active().id;
        let firsts: Vec<(u64, u64)> = log.segments.iter().map(|(&id, s)| (id, s.first_seq)).collect();
        let doomed: Vec<u64> = firsts
            .windows(2)
            .filter(|w| w[0].0 != active && w[1].1 <= base_seq + 1)
            .map(|w| w[0].0)
            .filter(|&id| unused(FileId::Segment(id)))
            .collect();
        let (old, kept): (Vec<u64>, Vec<u64>) = old_snapshots.iter().partition(|&&seq| unused(FileId::Snapshot(seq)));
        for id in &doomed {
            log.segments.remove(id);
            index.remove_source(FileId::Segment(*id));
        }
        for seq in &old {
            index.remove_source(FileId::Snapshot(*seq));
        }
        if !kept.is_empty() {
            let mut snapshots = engine.snapshots.lock();
            for seq in kept {
                let size = storage
                    .open(&engine.layout.snapshot(seq), OpenMode::Read)
                    .and_then(|f| f.len())
                    .unwrap_or(0);
                snapshots.insert(0, (seq, size));
            }
        }
        (doomed, old)
    };
    for id in &doomed {
        let p = engine.layout.segment(*id);
        storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
    }
    if !doomed.is_empty() {
        let wal = engine.layout.wal_dir();
        storage.sync_dir(wal).map_err(|e| Error::io("fsync", wal, e))?;
    }
    for seq in &old_snapshots {
        let p = engine.layout.snapshot(*seq);
        storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
    }
    if !old_snapshots.is_empty() {
        let dir = engine.layout.dir();
        storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
    }
    Ok(())
}

/// Debug builds, after every checkpoint: every index entry points into a file that is open
/// and on disk, and the bytes there are that key's value at that version (the identity checks
/// of [`Engine::read_value`]); every open file is one the store still has.
#[cfg(debug_assertions)]
fn check_every_entry(engine: &Engine) {
    let files: Vec<FileId> = {
        let index = engine.index.read();
        for (key, entry) in index.range_chunk(Bound::Unbounded, Bound::Unbounded, usize::MAX) {
            let read = engine
                .source_of(&index, &key, entry.loc)
                .and_then(|source| engine.read_value(&source, &key, &entry));
            if let Err(e) = read {
                // NOTE: a read error of the storage is not the bug this looks for (the fault
                // tests inject them); anything else is.
                assert!(matches!(e, Error::Io { .. }), "after a checkpoint: {e}");
            }
        }
        index.open_files().map(|(_, f)| f).collect()
    };
    // Only checkpoints remove files, and this one still holds the checkpoint lock.
    let log = engine.log.lock();
    let snapshots = engine.snapshots.lock();
    for f in files {
        let on_disk = match f {
            FileId::Segment(id) => log.segments.contains_key(&id) || id == log.active().id,
            FileId::Snapshot(seq) => snapshots.iter().any(|s| s.0 == seq),
        };
        assert!(on_disk, "{f:?} is open in the index but no longer the store's");
    }
}

#[cfg(test)]
mod tests {
    //! The snapshot decoder fills one vector from two threads; these check what it hands back,
    //! and that damage in either half is an error (the entries already decoded are dropped, not
    //! kept or freed twice: run under valgrind, this test reports no leak and no invalid free).

    use super::*;
    use crate::index::Index;

    const BASE: u64 = 9;

    /// A snapshot of `n` entries with 40-byte keys (on the heap, not inline) in many blocks, and
    /// where each block starts.
    fn snapshot(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut out = format::encode_snapshot_header(BASE).to_vec();
        let mut starts = Vec::new();
        let mut block = BlockBuilder::new();
        for i in 0..n {
            let key = format!("session-key-that-is-long-enough-{i:08}");
            block.push(SnapshotEntry {
                key: key.as_bytes(),
                value: &[i as u8; 100],
                seq: i + 1,
                expires_at_ms: 0,
            });
            if block.len() >= limits::SNAPSHOT_BLOCK_BYTES_TARGET || i + 1 == n {
                starts.push(out.len());
                out.extend_from_slice(&block.finish());
            }
        }
        let footer = format::encode_snapshot_footer(SnapshotFooter {
            entry_count: n,
            base_seq: BASE,
            end_seq: n,
            footer_offset: out.len() as u64,
        });
        out.extend_from_slice(&footer);
        (out, starts)
    }

    fn decode(bytes: Vec<u8>) -> Result<BaseEntries> {
        let slot = Index::default().slot(FileId::Snapshot(BASE));
        decode_snapshot(Arc::new(FileBytes::Owned(bytes)), Path::new("t.snap"), BASE, slot).map(|(_, e)| e)
    }

    #[test]
    fn both_halves_land_in_order() {
        let (bytes, starts) = snapshot(3_000);
        assert!(starts.len() >= 4, "several blocks per half: {}", starts.len());
        let entries = decode(bytes.clone()).expect("decodes");
        assert_eq!(entries.len(), 3_000);
        for (i, (k, e)) in entries.iter().enumerate() {
            assert_eq!(
                k.as_bytes(),
                format!("session-key-that-is-long-enough-{i:08}").as_bytes()
            );
            assert_eq!(e.seq.get(), i as u64 + 1);
            let value = &bytes[e.offset as usize..][..e.len as usize];
            assert_eq!(value, &[i as u8; 100][..], "entry {i}'s value");
        }
    }

    #[test]
    fn damage_in_either_half_or_both_is_an_error_at_its_block() {
        let (bytes, starts) = snapshot(3_000);
        let last = *starts.last().expect("blocks");
        for damaged in [vec![starts[0]], vec![last], vec![starts[0], last]] {
            let mut b = bytes.clone();
            for &at in &damaged {
                // A byte inside the block's first entry's value: only its checksum can tell.
                b[at + 100] ^= 0x40;
            }
            match decode(b) {
                Err(Error::Corruption { offset, reason, .. }) => {
                    assert!(
                        damaged.contains(&(offset as usize)),
                        "{reason} at {offset}, damaged {damaged:?}"
                    );
                    assert!(reason.contains("checksum"), "{reason}");
                }
                other => panic!("damage at {damaged:?}: {:?}", other.map(|e| e.len())),
            }
        }
    }
}
