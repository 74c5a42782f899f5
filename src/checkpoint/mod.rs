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

mod snapshot;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::Engine;
use crate::engine::RollPoint;
use crate::error::{Error, Result};
use crate::format::{self, SnapshotEntry};
use crate::index::{Entry, FileId, Key, Loc, Slot, Source, SourceData};
use crate::limits;
use crate::storage::{FileBytes, OpenMode};
use crate::wal::writer::Pooled;

pub(crate) use snapshot::{decode_snapshot, load_snapshot, LoadedSnapshot, SnapshotWriter};

/// Entries copied per index lock hold.
const COPY_CHUNK: usize = 1024;

/// Runs one checkpoint. Returns when the snapshot is durable and the files it covers are gone.
/// In span `sessiondb.checkpoint` (its `base_seq` recorded once known); an INFO event when a
/// snapshot was written, WARN (full disk) or ERROR when the checkpoint failed.
pub(crate) fn run(engine: &Engine) -> Result<()> {
    let span = tracing::info_span!(target: "sessiondb", "sessiondb.checkpoint", base_seq = tracing::field::Empty);
    let _in_span = span.enter();
    let started = std::time::Instant::now();
    let before = engine.counters.checkpoints.load(Ordering::Relaxed);
    let ran = run_checkpoint(engine, &span);
    match &ran {
        Ok(()) if engine.counters.checkpoints.load(Ordering::Relaxed) > before => {
            let bytes = engine.snapshots.lock().last().map_or(0, |s| s.1);
            tracing::info!(target: "sessiondb", bytes, duration_ms = started.elapsed().as_millis() as u64, "checkpoint written");
        }
        Ok(()) => {}
        Err(e) if e.is_storage_full() => {
            tracing::warn!(target: "sessiondb", error = %e, "checkpoint failed: storage full")
        }
        Err(e) => tracing::error!(target: "sessiondb", error = %e, "checkpoint failed"),
    }
    ran
}

fn run_checkpoint(engine: &Engine, span: &tracing::Span) -> Result<()> {
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
    span.record("base_seq", base_seq);
    // The index is frozen at the base until the snapshot replaces its lower layers.
    let (snapshot_bytes, deadline) = match write_and_rebase(engine, &roll) {
        Ok(written) => written,
        Err(e) => {
            engine.retention.give_back(roll.dead, None);
            // The store goes on from its current files: the frozen changes go back under the
            // overlay, the new snapshot is forgotten (its number is never reused) and its
            // temporary file removed. (If it was already renamed into place, it stays: it and
            // the whole log, which is still there, recover the same state.)
            let mut index = engine.index.write();
            index.unfreeze();
            index.remove_source(FileId::Snapshot(base_seq));
            drop(index);
            let _ = engine.storage.remove(&engine.layout.snapshot_tmp(base_seq));
            // Its roll is undone too, unless the snapshot is already in place (then the log
            // after it must stay as the snapshot's protocol left it).
            let snapshot_in_place = engine
                .storage
                .open(&engine.layout.snapshot(base_seq), OpenMode::Read)
                .is_ok();
            if let (Some(sealed), false) = (&roll.sealed, snapshot_in_place) {
                engine.unroll(sealed);
            }
            if let (Some(keyring), false) = (&engine.keyring, snapshot_in_place) {
                // Best effort: the next open drops keys of files that are gone anyway.
                let _ = keyring.forget(&[FileId::Snapshot(base_seq)]);
            }
            return Err(e.needing(snapshot_estimate(engine)));
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
    match removed {
        Ok(true) => engine.retention.checkpointed(deadline),
        // Some file it covers is still there, and with it what the roll took from retention.
        Ok(false) | Err(_) => engine.retention.give_back(roll.dead, Some(deadline)),
    }
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

/// About how many bytes a snapshot of the live data takes: each entry's key, value and framing.
/// What a checkpoint that failed on a full disk says it needs.
fn snapshot_estimate(engine: &Engine) -> u64 {
    let index = engine.index.read();
    let framing = (format::SNAPSHOT_HEADER_SIZE + format::SNAPSHOT_FOOTER_SIZE) as u64;
    let entries = index.len() as u64 * format::ENTRY_HEADER_SIZE as u64;
    let blocks =
        (index.live_bytes() / limits::SNAPSHOT_BLOCK_BYTES_TARGET as u64 + 1) * format::BLOCK_HEADER_SIZE as u64;
    framing + index.live_bytes() + entries + blocks
}

/// Steps 2 to 5: writes the snapshot, makes it the recovery base, reads it back and makes its
/// entries the index's base. Returns the snapshot's size and its earliest expiry deadline.
fn write_and_rebase(engine: &Engine, roll: &RollPoint) -> Result<(u64, u64)> {
    let base_seq = roll.base;
    let storage = engine.storage.as_ref();
    let tmp = engine.layout.snapshot_tmp(base_seq);
    let path = engine.layout.snapshot(base_seq);
    // An encrypted store's snapshot gets a new data key, durable in the keyring before the
    // snapshot can become the recovery base.
    let cipher = match &engine.keyring {
        Some(keyring) => Some(keyring.fresh(FileId::Snapshot(base_seq))?),
        None => None,
    };
    let (end_seq, deadline) = write_snapshot(engine, &tmp, roll, cipher.clone())?;
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
    let (loaded, entries) = decode_snapshot(bytes, &path, base_seq, slot, cipher)?;
    let mut index = engine.index.write();
    index.set_source(loaded.source());
    index.rebase(entries, roll.base, roll.cut_ms);
    Ok((size, deadline))
}

/// Writes the snapshot's temp file; returns `end_seq`. Every value copied is checked first
/// ([`Engine::read_checked`]): against its value checksum, which binds it to its key and version
/// (files of format version 2), or against the record or snapshot block it comes from and the
/// key and version around it (version 1). A value that does not verify fails the checkpoint,
/// naming the file and offset it was read from, and never reaches the snapshot. A checksum
/// just checked is written as it is; a version 1 value gets one computed. Also returns the
/// earliest expiry deadline written (`u64::MAX` for none), for `Options::max_retention`.
fn write_snapshot(
    engine: &Engine,
    tmp: &Path,
    roll: &RollPoint,
    cipher: Option<Arc<crate::crypto::FileCipher>>,
) -> Result<(u64, u64)> {
    let mut writer = SnapshotWriter::create(engine.storage.as_ref(), tmp, roll.base, cipher)?;
    let mut lower: Bound<Key> = Bound::Unbounded;
    // The snapshot block verified last: values come from a snapshot in key order, which is the
    // order of its blocks, so each block is checked once.
    let mut verified: Option<(Slot, u64)> = None;
    let mut deadline = u64::MAX;
    let end_seq = loop {
        let (chunk, applied) = copy_chunk(engine, &lower);
        let Some(last) = chunk.last().map(|(k, _, _)| k.clone()) else {
            break applied;
        };
        for (key, entry, source) in chunk {
            // Dropped only if expired at the roll and not about to be touched (RollPoint).
            if !entry.is_live(roll.cut_ms) && !roll.pending.contains(&key) {
                continue;
            }
            let source = source?;
            if matches!(source.file, FileId::Snapshot(_)) && source.version == 1 {
                verify_block_around(engine, &source, entry.loc, &mut verified)?;
            }
            let (value, value_crc) = engine.read_checked(&source, &key, &entry)?;
            if entry.expires_at_ms != 0 {
                deadline = deadline.min(entry.expires_at_ms);
            }
            writer.push(SnapshotEntry {
                key: &key,
                value: &value,
                seq: entry.seq.get(),
                expires_at_ms: entry.expires_at_ms,
                value_crc,
            })?;
        }
        lower = Bound::Excluded(last);
    };
    writer.finish(end_seq)?;
    Ok((end_seq.max(roll.base), deadline))
}

/// Up to [`COPY_CHUNK`] index entries after `lower`, each with the file its value is read from,
/// in one read-lock hold; and the last applied sequence number at that hold.
fn copy_chunk(engine: &Engine, lower: &Bound<Key>) -> (Vec<(Key, Entry, Result<Source>)>, u64) {
    let index = engine.index.read();
    let chunk = index.range_chunk(lower.as_ref().map(|k| &**k), Bound::Unbounded, COPY_CHUNK);
    let with_sources = chunk
        .into_iter()
        .map(|(k, e)| {
            let s = engine.source_of(&index, &k, e.loc);
            (k, e, s)
        })
        .collect();
    (with_sources, index.applied_seq)
}

/// Checks the checksum of the snapshot block (format version 1, whose values have no checksum
/// of their own) that holds the value at `loc`, unless it is the block checked last
/// (`verified`).
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
    let frame = format::block_frame(b, source.version).map_err(damaged)?;
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
/// checkpoint to copy (debug builds stop there instead). Returns whether every file it covers
/// went.
fn remove_covered(engine: &Engine, base_seq: u64, old_snapshots: &[u64]) -> Result<bool> {
    let (segments, readers, snapshots, all) = forget_covered(engine, base_seq, old_snapshots);
    let layout = &engine.layout;
    let doomed = pool_for_recycling(engine, &segments, readers);
    remove_files(engine, doomed, layout.wal_dir())?;
    remove_files(engine, snapshots.iter().map(|&seq| layout.snapshot(seq)), layout.dir())?;
    // The deleted files' data keys go too (after the files: a crash between leaves keys of
    // files that are gone, which the next open drops; never a file without its key).
    if let Some(keyring) = &engine.keyring {
        let gone: Vec<FileId> = segments
            .iter()
            .map(|&id| FileId::Segment(id))
            .chain(snapshots.iter().map(|&seq| FileId::Snapshot(seq)))
            .collect();
        keyring.forget(&gone)?;
    }
    Ok(all)
}

/// Keeps the highest-numbered of the covered `segments` for the log to recycle, renamed to
/// their temporary names (which recovery deletes, so a crash leaves nothing of them to read);
/// returns the paths to delete: the rest, and the pool's oldest files beyond its size. With
/// recycling off the pool's size is 0 and every covered segment goes.
///
/// Each segment goes with how the index read it (`readers`, in the same order): a reader that
/// took it before the checkpoint may still hold it, and the pool recycles no file while one does.
fn pool_for_recycling(engine: &Engine, segments: &[u64], readers: Vec<Option<SourceData>>) -> Vec<PathBuf> {
    let layout = &engine.layout;
    let keep = segments.len().min(engine.spare.pool_max());
    let skip = segments.len() - keep;
    let mut doomed: Vec<PathBuf> = segments[..skip].iter().map(|&id| layout.segment(id)).collect();
    let mut pooled = Vec::with_capacity(keep);
    for (&id, reader) in segments[skip..].iter().zip(readers.into_iter().skip(skip)) {
        let (from, to) = (layout.segment(id), layout.segment_tmp(id));
        match engine.storage.rename(&from, &to) {
            Ok(()) => pooled.push(Pooled { id, path: to, reader }),
            Err(_) => doomed.push(from),
        }
    }
    doomed.extend(engine.spare.offer(pooled));
    doomed
}

/// Takes the files [`remove_covered`] deletes out of the log and the index, under their locks;
/// returns their segment ids with how the index read each, their snapshot base sequence
/// numbers, and whether that is every file covered. An old snapshot still in use goes back
/// into the store's list of snapshots.
#[allow(clippy::type_complexity)]
fn forget_covered(
    engine: &Engine,
    base_seq: u64,
    old_snapshots: &[u64],
) -> (Vec<u64>, Vec<Option<SourceData>>, Vec<u64>, bool) {
    let storage = engine.storage.as_ref();
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
    let active = log.active_id();
    let mut firsts: Vec<(u64, u64)> = log.segments.iter().map(|(&id, s)| (id, s.first_seq)).collect();
    if !log.segments.contains_key(&active) {
        // The active segment was never activated: nothing was written since the open, whose
        // last segment did not take appends (one of format version 1, docs/format.md,
        // "Changing the format"), so the checkpoint did not roll. Its first record will follow
        // the last one written: the segments before it end there, as before a rolled one.
        firsts.push((active, log.written_seq + 1));
    }
    let covered: Vec<u64> = firsts
        .windows(2)
        .filter(|w| w[0].0 != active && w[1].1 <= base_seq + 1)
        .map(|w| w[0].0)
        .collect();
    let doomed: Vec<u64> = covered
        .iter()
        .copied()
        .filter(|&id| unused(FileId::Segment(id)))
        .collect();
    let (old, kept): (Vec<u64>, Vec<u64>) = old_snapshots.iter().partition(|&&seq| unused(FileId::Snapshot(seq)));
    let all = doomed.len() == covered.len() && kept.is_empty();
    let mut readers = Vec::with_capacity(doomed.len());
    for id in &doomed {
        log.segments.remove(id);
        readers.push(index.remove_source(FileId::Segment(*id)).map(|s| s.data));
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
    (doomed, readers, old, all)
}

/// Removes `paths`, files in `dir`, then fsyncs `dir` if there were any.
fn remove_files(engine: &Engine, paths: impl IntoIterator<Item = PathBuf>, dir: &Path) -> Result<()> {
    let storage = engine.storage.as_ref();
    let mut removed = false;
    for p in paths {
        storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
        removed = true;
    }
    if removed {
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
            FileId::Segment(id) => log.segments.contains_key(&id) || id == log.active_id(),
            FileId::Snapshot(seq) => snapshots.iter().any(|s| s.0 == seq),
        };
        assert!(on_disk, "{f:?} is open in the index but no longer the store's");
    }
}
