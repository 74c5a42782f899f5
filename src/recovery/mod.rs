//! Opening a store: lock, load the newest valid snapshot, replay the log after it, cut a torn
//! tail, and leave the log ready for appends (docs/design.md, "Recovery").

// Decoders and recovery read bytes a file may have damaged: no unwrap or expect here, only
// errors that name the damage.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{self, LoadedSnapshot};
use crate::engine::Recovered;
use crate::error::{Error, Result};
use crate::format::{self, Op, RecordRef, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::index::{entry_seq, BaseEntries, Entry, FileId, Index, Loc, Source};
use crate::options::{Options, RecoveryMode};
use crate::stats::{RecoveryReport, Skipped};
use crate::storage::layout::{self, FileKind, Layout};
use crate::storage::{read_exact_at, write_all_at, FileBytes, LockGuard, OpenMode, Storage};
use crate::wal::reader::{self, ScanInput};
use crate::wal::writer::{self, LogStart, LogWriter, SegInfo, SegmentFile, SpareSlot};

/// Creates the directories if needed and takes the store's lock.
pub(crate) fn lock(storage: &dyn Storage, layout: &Layout) -> Result<LockGuard> {
    let dir = layout.dir();
    storage
        .create_dir_all(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    let lock_path = layout.lock_file();
    let guard = storage
        .try_lock(&lock_path)
        .map_err(|e| Error::io("lock", &lock_path, e))?
        .ok_or(Error::Locked { path: lock_path })?;
    let wal = layout.wal_dir();
    storage
        .create_dir_all(wal)
        .map_err(|e| Error::io("create directory", wal, e))?;
    // The log directory's own entry must be durable before any segment in it is relied on.
    storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
    Ok(guard)
}

/// The files found in the store's directories.
#[derive(Default)]
struct Listing {
    snapshots: Vec<u64>,
    tmps: Vec<u64>,
    segments: Vec<u64>,
    segment_tmps: Vec<u64>,
}

fn list(storage: &dyn Storage, layout: &Layout) -> Result<Listing> {
    let mut l = Listing::default();
    let dir = layout.dir();
    for name in storage.list(dir).map_err(|e| Error::io("list", dir, e))? {
        match layout::classify(&name) {
            Some(FileKind::Snapshot(s)) => l.snapshots.push(s),
            Some(FileKind::SnapshotTmp(s)) => l.tmps.push(s),
            _ => {}
        }
    }
    let wal = layout.wal_dir();
    for name in storage.list(wal).map_err(|e| Error::io("list", wal, e))? {
        match layout::classify(&name) {
            Some(FileKind::Segment(id)) => l.segments.push(id),
            Some(FileKind::SegmentTmp(id)) => l.segment_tmps.push(id),
            _ => {}
        }
    }
    l.snapshots.sort_unstable();
    l.segments.sort_unstable();
    Ok(l)
}

/// A segment file opened for recovery.
struct Seg {
    file: SegmentFile,
    /// `Some(first_seq)` if the header verifies; `None` if zero or damaged.
    first_seq: Option<u64>,
    zero_header: bool,
    /// Read and found zero from start to end (so it need not be read again).
    known_clean: bool,
}

fn open_segments(storage: &dyn Storage, layout: &Layout, ids: &[u64]) -> Result<Vec<Seg>> {
    ids.iter()
        .map(|&id| {
            let path = layout.segment(id);
            let file = storage
                .open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
            let mut head = vec![0u8; SEGMENT_HEADER_SIZE.min(len as usize)];
            read_exact_at(file.as_ref(), &mut head, 0).map_err(|e| Error::read(&path, e))?;
            let (first_seq, zero_header) = match format::decode_segment_header(&head) {
                format::HeaderState::Valid(h) if h.segment_id == id => (Some(h.first_seq), false),
                format::HeaderState::Zero => (None, true),
                _ => (None, false),
            };
            Ok(Seg {
                file: SegmentFile {
                    id,
                    path,
                    file,
                    capacity: len,
                },
                first_seq,
                zero_header,
                known_clean: false,
            })
        })
        .collect()
}

/// Opens the store: everything [`crate::engine::Engine`] needs to start.
pub(crate) fn recover(layout: &Layout, opts: &Options, spare: &Arc<SpareSlot>) -> Result<Recovered> {
    let started = Instant::now();
    let storage = opts.storage.as_ref();
    let mut report = RecoveryReport::default();
    let listing = list(storage, layout)?;
    let tmps = listing.tmps.iter().map(|&t| layout.snapshot_tmp(t));
    for p in tmps.chain(listing.segment_tmps.iter().map(|&t| layout.segment_tmp(t))) {
        storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
        report.files_removed += 1;
    }
    let mut segs = open_segments(storage, layout, &listing.segments)?;
    let log_first_seq = segs.iter().find_map(|s| s.first_seq);
    let mut index = Index::default();
    let (snapshot, entries, log_instead_of) =
        choose_snapshot(layout, opts, &listing.snapshots, log_first_seq, &mut index, &mut report)?;
    let base = snapshot.as_ref().map_or(0, |s| s.base_seq);

    if let Some(s) = &snapshot {
        index.set_source(s.source());
        report.snapshot_seq = Some(s.base_seq);
        report.snapshot_entries = s.entries;
    }
    index.extend_sorted(entries);
    index.applied_seq = base;

    // Segments wholly covered by the snapshot are not replayed: segment i is covered when the
    // next one starts at or below base + 1.
    let last_used = segs.iter().rposition(|s| !s.zero_header);
    let mut covered = 0;
    while covered + 1 < segs.len() && segs[covered + 1].first_seq.is_some_and(|f| f <= base + 1) {
        covered += 1;
    }
    let mut doomed: Vec<PathBuf> = segs[..covered].iter().map(|s| s.file.path.clone()).collect();
    let rest = segs.split_off(covered);
    // The live log runs to the last segment with a non-zero header; zero-header segments after
    // it are preallocated spares. With no used segment, the first spare is the log's start.
    let mut live = rest;
    let keep = last_used.map_or(live.len().min(1), |l| l + 1 - covered);
    let mut spares = live.split_off(keep);
    // The spare right after the log may hold a torn activation whose header stayed zero (or
    // durable records whose header was zeroed): only reading it tells. Then it ends the log and
    // the reader judges it like a damaged header, instead of it being deleted as a spare.
    if let (Some(last), Some(spare)) = (live.last(), spares.first()) {
        if last_used.is_some() && spare.file.id == last.file.id + 1 {
            if is_clean(spare)? {
                spares[0].known_clean = true;
            } else {
                live.push(spares.remove(0));
            }
        }
    }

    let replay = replay(opts, &live, base, &mut index, &mut report)?;
    if let Some(e) = log_instead_of {
        // Every snapshot is damaged and the log was to stand in for them from sequence 1: a log
        // with no record says nothing (and the next open could not tell that it starts at 1).
        if replay.last_seq.unwrap_or(0) == 0 {
            if opts.recovery_mode != RecoveryMode::Salvage {
                return Err(e);
            }
            skip(&mut report, &e);
        }
    }
    if let Some(s) = &snapshot {
        if replay.last_seq.unwrap_or(0).max(base) < s.end_seq && opts.recovery_mode != RecoveryMode::Salvage {
            let reason = format!(
                "the log ends at sequence {} but the snapshot holds writes up to {}",
                replay.last_seq.unwrap_or(0),
                s.end_seq
            );
            return Err(Error::corruption(layout.snapshot(s.base_seq), 0, reason));
        }
    }
    let last_seq = replay.last_seq.unwrap_or(0).max(base);
    index.applied_seq = last_seq;
    // Every touch is replayed now: what is still expired can go.
    index.drop_expired(opts.clock.now_ms());

    // Decide the active segment: the last one, if it continues the log and has room; else a
    // fresh one. Segments whose records are all at or below base are covered and go.
    let mut segments = BTreeMap::new();
    let mut log_bytes = 0u64;
    let mut active: Option<(SegmentFile, u64, bool)> = None;
    let n = live.len();
    let last_live_id = live.last().map(|s| s.file.id);
    for (i, (seg, info)) in live.into_iter().zip(replay.per_segment).enumerate() {
        let file = seg.file;
        if i + 1 == n {
            let room = info.valid_end + (RECORD_HEADER_SIZE + opts.record_payload_max()) as u64 <= file.capacity;
            let usable = match info.first_seq {
                // Appending continues the sequence only if this segment holds the log's end.
                Some(_) => info.last_seq.is_some_and(|l| l == last_seq) && room,
                // Never activated (or a torn activation, now zeroed): usable if full size.
                None => file.capacity >= opts.segment_size,
            };
            if usable {
                if let Some(f) = info.first_seq {
                    keep_segment(&mut segments, &mut log_bytes, file.id, f, info.valid_end);
                }
                index.set_source(Source::file(FileId::Segment(file.id), file.file.clone()));
                active = Some((file, info.valid_end, info.first_seq.is_some()));
                continue;
            }
        }
        match info.first_seq {
            Some(f) if info.last_seq.is_some_and(|l| l > base) => {
                keep_segment(&mut segments, &mut log_bytes, file.id, f, info.valid_end);
            }
            _ => {
                index.remove_source(FileId::Segment(file.id));
                doomed.push(file.path.clone());
            }
        }
    }
    let (active, write_offset, activated) = match active {
        Some(a) => a,
        None => {
            // A fresh segment right after the last one kept, reusing a clean spare of that id.
            let id = last_live_id.map_or(1, |l| l + 1);
            let seg = match take_clean_spare(&mut spares, id, opts)? {
                Some(seg) => seg,
                None => writer::create_segment(storage, layout, id, opts.segment_size)?,
            };
            index.set_source(Source::file(FileId::Segment(id), seg.file.clone()));
            (seg, 0, false)
        }
    };
    // Other spares go: checking that one is clean means reading all of it, and the background
    // preparer makes a fresh one without holding up the open.
    doomed.extend(
        spares
            .iter()
            .filter(|s| s.file.id != active.id)
            .map(|s| s.file.path.clone()),
    );
    // Snapshots older than the one loaded are left by a crash between a checkpoint's rename and
    // its deletions; the loaded one (with the log after it) supersedes them.
    if let Some(s) = &snapshot {
        doomed.extend(
            listing
                .snapshots
                .iter()
                .filter(|&&q| q < s.base_seq)
                .map(|&q| layout.snapshot(q)),
        );
    }
    report.torn_tail_bytes = replay.torn_tail_bytes;
    for p in &doomed {
        storage.remove(p).map_err(|e| Error::io("remove", p, e))?;
        report.files_removed += 1;
    }
    if !doomed.is_empty() || report.files_removed > 0 {
        storage
            .sync_dir(layout.wal_dir())
            .map_err(|e| Error::io("fsync", layout.wal_dir(), e))?;
        storage
            .sync_dir(layout.dir())
            .map_err(|e| Error::io("fsync", layout.dir(), e))?;
    }
    // What recovery read may have been only in the page cache (a killed process in a lazy sync
    // mode): make it durable before new records vouch for it (their durable_seq field).
    active
        .file
        .sync_data()
        .map_err(|e| Error::io("fdatasync", &active.path, e))?;
    report.duration = started.elapsed();
    let log = LogWriter::new(
        opts.storage.clone(),
        layout.clone(),
        opts.segment_size,
        spare.clone(),
        opts.preallocate_ahead,
        LogStart {
            active,
            write_offset,
            activated,
            written_seq: last_seq,
            segments,
        },
    );
    Ok(Recovered {
        index,
        log,
        next_seq: last_seq + 1,
        durable_seq: last_seq,
        snapshots: snapshot
            .iter()
            .map(|s| (s.base_seq, s.bytes.bytes().len() as u64))
            .collect(),
        log_bytes_since_checkpoint: log_bytes,
        report,
    })
}

/// Records a segment that stays: its first sequence number and the bytes written in it.
fn keep_segment(segments: &mut BTreeMap<u64, SegInfo>, log_bytes: &mut u64, id: u64, first_seq: u64, bytes: u64) {
    segments.insert(id, SegInfo { first_seq, bytes });
    *log_bytes += bytes;
}

/// Whether a segment file is zero from start to end.
fn is_clean(seg: &Seg) -> Result<bool> {
    let bytes = FileBytes::load(seg.file.file.as_ref()).map_err(|e| Error::read(&seg.file.path, e))?;
    Ok(reader::nonzero_end(bytes.bytes()) == 0)
}

/// Removes and returns spare `id` if it is full size and entirely zero (a spare with data in it
/// is a torn activation whose header never landed; it is deleted, not reused).
fn take_clean_spare(spares: &mut Vec<Seg>, id: u64, opts: &Options) -> Result<Option<SegmentFile>> {
    let Some(i) = spares.iter().position(|s| s.file.id == id) else {
        return Ok(None);
    };
    let seg = &spares[i];
    if !seg.zero_header || seg.file.capacity < opts.segment_size {
        return Ok(None);
    }
    if !seg.known_clean && !is_clean(seg)? {
        return Ok(None);
    }
    Ok(Some(spares.remove(i).file))
}

/// What [`choose_snapshot`] picked: the snapshot and its entries, and, when every snapshot is
/// damaged and the log is to stand in for them from sequence 1, the newest one's error.
type Chosen = (Option<LoadedSnapshot>, BaseEntries, Option<Error>);

/// Picks the newest snapshot that verifies, falling back to an older one only when the log
/// still covers the gap after it.
fn choose_snapshot(
    layout: &Layout,
    opts: &Options,
    snapshots: &[u64],
    log_first_seq: Option<u64>,
    index: &mut Index,
    report: &mut RecoveryReport,
) -> Result<Chosen> {
    let storage = opts.storage.as_ref();
    let mut newest_err: Option<Error> = None;
    for &seq in snapshots.iter().rev() {
        let path = layout.snapshot(seq);
        let slot = index.slot(FileId::Snapshot(seq));
        let loaded = checkpoint::load_snapshot(storage, &path, seq, slot);
        if loaded.is_err() {
            index.remove_source(FileId::Snapshot(seq));
        }
        match loaded {
            Ok((loaded, entries)) => {
                let covered = log_first_seq.is_some_and(|f| f <= seq + 1);
                match newest_err {
                    None => return Ok((Some(loaded), entries, None)),
                    Some(_) if covered => return Ok((Some(loaded), entries, None)),
                    Some(e) if opts.recovery_mode == RecoveryMode::Salvage => {
                        skip(report, &e);
                        return Ok((Some(loaded), entries, None));
                    }
                    Some(e) => return Err(e),
                }
            }
            Err(e @ Error::UnsupportedFormat { .. }) => return Err(e),
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => {
                if newest_err.is_none() {
                    newest_err = Some(e);
                }
            }
        }
    }
    match newest_err {
        None => Ok((None, Vec::new(), None)),
        // Every snapshot is damaged: rebuild from the log only if it starts at the beginning
        // (and, the caller checks, holds a record).
        Some(e) if log_first_seq == Some(1) => Ok((None, Vec::new(), Some(e))),
        Some(e) if opts.recovery_mode == RecoveryMode::Salvage => {
            skip(report, &e);
            Ok((None, Vec::new(), None))
        }
        Some(e) => Err(e),
    }
}

fn skip(report: &mut RecoveryReport, e: &Error) {
    if let Error::Corruption { path, offset, reason } = e {
        report.skipped.push(Skipped {
            path: path.clone(),
            offset: *offset,
            reason: reason.clone(),
        });
    }
}

/// What replay found in each segment.
#[derive(Default, Clone, Copy)]
struct Scanned {
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    valid_end: u64,
}

#[derive(Default)]
struct Replay {
    last_seq: Option<u64>,
    per_segment: Vec<Scanned>,
    torn_tail_bytes: u64,
}

/// Replays the segments after the snapshot into the index.
fn replay(opts: &Options, segs: &[Seg], base: u64, index: &mut Index, report: &mut RecoveryReport) -> Result<Replay> {
    let mut out = Replay::default();
    let mut expected: Option<u64> = None;
    // NOTE: not opts.record_payload_max(): the store may have been written with larger limits.
    let payload_max = crate::limits::RECORD_PAYLOAD_MAX;
    // Whether the log read so far lies wholly at or below the snapshot's base: then a gap in
    // the segment ids after it is segments a checkpoint deleted (with some of its unlinks lost
    // in a crash, F4), and the log starts afresh after the gap.
    let mut covered_so_far = true;
    for (i, seg) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let path = &seg.file.path;
        let after_gap = i > 0 && seg.file.id != segs[i - 1].file.id + 1;
        if after_gap && !covered_so_far && opts.recovery_mode != RecoveryMode::Salvage {
            let reason = format!("segment {} is missing", segs[i - 1].file.id + 1);
            return Err(Error::corruption(path, 0, reason));
        }
        if after_gap {
            expected = None;
        }
        let bytes = Arc::new(FileBytes::load(seg.file.file.as_ref()).map_err(|e| Error::read(path, e))?);
        let b = bytes.bytes();
        let input = ScanInput {
            bytes: b,
            segment_id: seg.file.id,
            path,
            payload_max,
            is_last,
            mode: opts.recovery_mode,
            expected_seq: expected,
        };
        let mut replayed = 0u64;
        let scan = reader::scan_segment(&input, |offset, rec| {
            if rec.seq <= base {
                return Ok(());
            }
            apply_record(index, seg.file.id, offset, rec, path, opts, report)?;
            replayed += 1;
            Ok(())
        })?;
        report.records_replayed += replayed;
        report.skipped.extend(scan.skipped.iter().cloned());
        if i == 0 || after_gap {
            if let Some(h) = scan.header {
                if h.first_seq > base + 1 && opts.recovery_mode != RecoveryMode::Salvage {
                    let reason = format!(
                        "the log starts at sequence {} but the snapshot ends at {base}",
                        h.first_seq
                    );
                    return Err(Error::corruption(path, 0, reason));
                }
            }
        }
        if scan.dirty_end > scan.valid_end && is_last {
            {
                // Cut the torn tail: zero it and make the zeros durable before anything new is
                // appended, so stale bytes can never be parsed as records later (F9).
                let len = (scan.dirty_end - scan.valid_end) as usize;
                write_all_at(seg.file.file.as_ref(), &vec![0u8; len], scan.valid_end)
                    .map_err(|e| Error::io("write", path, e))?;
                seg.file.file.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
                out.torn_tail_bytes += len as u64;
            }
        }
        let last = scan.last_seq.or_else(|| scan.header.map(|h| h.first_seq - 1));
        covered_so_far &= last.is_none_or(|l| l <= base);
        if let Some(l) = last {
            out.last_seq = Some(out.last_seq.map_or(l, |p: u64| p.max(l)));
        }
        index.set_source(Source::bytes(FileId::Segment(seg.file.id), bytes.clone()));
        expected = last.map(|l| l + 1).or(expected);
        out.per_segment.push(Scanned {
            first_seq: scan.header.map(|h| h.first_seq),
            last_seq: last,
            valid_end: if scan.header.is_some() { scan.valid_end } else { 0 },
        });
    }
    Ok(out)
}

fn apply_record(
    index: &mut Index,
    segment_id: u64,
    offset: u64,
    rec: RecordRef<'_>,
    path: &Path,
    opts: &Options,
    report: &mut RecoveryReport,
) -> Result<()> {
    let ops = match format::decode_ops(rec.payload) {
        Ok(ops) => ops,
        Err(d) => {
            let at = offset + RECORD_HEADER_SIZE as u64 + d.offset;
            let e = Error::corruption(path, at, d.reason);
            if opts.recovery_mode == RecoveryMode::Salvage {
                skip(report, &e);
                return Ok(());
            }
            return Err(e);
        }
    };
    let payload_at = offset + RECORD_HEADER_SIZE as u64;
    let base = rec.payload.as_ptr() as usize;
    let slot = index.slot(FileId::Segment(segment_id));
    for op in ops {
        match op {
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => {
                let value_at = value.as_ptr() as usize - base;
                // NOTE: cannot truncate: value.len() < rec.len <= RECORD_PAYLOAD_MAX + header < 1 GiB.
                let loc = Loc {
                    slot,
                    offset: payload_at + value_at as u64,
                    len: value.len() as u32,
                    record_back: (RECORD_HEADER_SIZE + value_at) as u32,
                    record_len: rec.len as u32,
                };
                index.put(
                    key.into(),
                    Entry {
                        seq: entry_seq(rec.seq),
                        expires_at_ms,
                        loc,
                    },
                );
            }
            Op::Delete { key } => index.delete(key),
            Op::Touch {
                key,
                version,
                expires_at_ms,
            } => index.touch(key, version, expires_at_ms),
        }
    }
    index.applied_seq = rec.seq;
    Ok(())
}
