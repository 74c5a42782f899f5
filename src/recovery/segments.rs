//! Step 4 of recovery: which segments hold the log to replay, and which are spares after it.

use std::path::Path;

use super::Recovery;
use crate::error::{Error, Result};
use crate::format::{self, SEGMENT_HEADER_SIZE};
use crate::limits;
use crate::options::Options;
use crate::storage::layout;
use crate::storage::{read_exact_at, FileBytes, OpenMode};
use crate::wal::reader::{self, ScanInput};
use crate::wal::writer::SegmentFile;

/// A segment file opened for recovery.
pub(super) struct Seg {
    pub file: SegmentFile,
    /// `Some(first_seq)` if the header verifies; `None` if zero or damaged.
    pub first_seq: Option<u64>,
    pub zero_header: bool,
    /// Read and found to hold nothing of the log: zero from start to end, or a recycled spare
    /// ([`is_unused`]); it need not be read again.
    pub known_clean: bool,
}

/// What step 4 chose: the segments to replay, and the spares after them.
pub(super) struct LogSegments {
    /// From the first segment the snapshot does not cover to the last one in use.
    pub live: Vec<Seg>,
    /// Zero-header segments after the log: preallocated, never activated.
    pub spares: Vec<Seg>,
}

/// Bytes read per call when a spare is checked for zeros.
const ZERO_CHECK_CHUNK: usize = 64 * 1024;

/// Whether a spare segment is zero, read in bounded chunks (never mapped whole) and only as far
/// as a segment of these options reaches: a spare larger than that was made under other options
/// or is not ours, and is deleted, not reused. A torn activation's records start right after
/// its header, so they are within that reach.
pub(super) fn is_clean(seg: &Seg, opts: &Options) -> Result<bool> {
    let end = seg.file.capacity.min(opts.segment_size);
    let mut buf = vec![0u8; ZERO_CHECK_CHUNK];
    let mut at = 0u64;
    while at < end {
        let n = (end - at).min(ZERO_CHECK_CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        read_exact_at(seg.file.file.as_ref(), chunk, at).map_err(|e| Error::read(&seg.file.path, e))?;
        if reader::nonzero_end(chunk) != 0 {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether a spare holds nothing of the log: all zero ([`is_clean`]), or a recycled spare never
/// activated (the reader's row R5; docs/format.md, "Recycled segments"), whatever segment size
/// it was made under (an operator may have changed it since: only a spare of this open's size
/// is reused, the others are deleted). `base` is the snapshot's: a record of this segment would
/// come after it, while a recycled file's old records were covered by a checkpoint, so they lie
/// at or below it and the search for one of ours passes over them without a checksum.
pub(super) fn is_unused(seg: &Seg, opts: &Options, base: u64) -> Result<bool> {
    if is_clean(seg, opts)? {
        return Ok(true);
    }
    let path = &seg.file.path;
    let file = seg.file.file.as_ref();
    let bytes = FileBytes::load(file).map_err(|e| Error::read(path, e))?;
    let data_end = bytes.data_end(file).map_err(|e| Error::read(path, e))?;
    Ok(reader::is_unused_spare(&ScanInput {
        bytes: bytes.bytes(),
        segment_id: seg.file.id,
        path,
        payload_max: limits::RECORD_PAYLOAD_MAX,
        is_last: true,
        mode: opts.recovery_mode,
        // NOTE: a lower bound, not the exact start: only the search for a record of this
        // segment reads it when the header is zero.
        expected_seq: Some(base + 1),
        data_end,
    }))
}

impl Recovery<'_> {
    /// Opens segments `ids` and reads their headers. A file larger than any segment can be
    /// ([`limits::SEGMENT_SIZE_MAX`]) is damage, never read: in `Salvage` it is set aside as
    /// `<name>.broken` and reported as skipped (issue 15: a 4 GB sparse file in place of a
    /// segment once made every command read all of it).
    pub(super) fn open_segments(&mut self, ids: &[u64]) -> Result<Vec<Seg>> {
        let mut segs = Vec::with_capacity(ids.len());
        for &id in ids {
            let path = self.layout.segment(id);
            let file = self
                .storage
                .open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
            if len > limits::SEGMENT_SIZE_MAX {
                let e = Error::corruption(
                    &path,
                    limits::SEGMENT_SIZE_MAX,
                    format!(
                        "segment file is {len} bytes, larger than any segment can be ({} bytes)",
                        limits::SEGMENT_SIZE_MAX
                    ),
                );
                if !self.salvage() {
                    return Err(e);
                }
                self.set_aside(&path, &e)?;
                continue;
            }
            let mut head = vec![0u8; SEGMENT_HEADER_SIZE.min(len as usize)];
            read_exact_at(file.as_ref(), &mut head, 0).map_err(|e| Error::read(&path, e))?;
            let (first_seq, zero_header) = match format::decode_segment_header(&head) {
                format::HeaderState::Valid(h) if h.segment_id == id => (Some(h.first_seq), false),
                format::HeaderState::Zero => (None, true),
                _ => (None, false),
            };
            segs.push(Seg {
                file: SegmentFile {
                    id,
                    path,
                    file,
                    capacity: len,
                    cipher: None,
                },
                first_seq,
                zero_header,
                known_clean: false,
            });
        }
        Ok(segs)
    }

    /// `Salvage`: renames a damaged file to its first free `.broken` name, durably, and reports
    /// it as skipped.
    fn set_aside(&mut self, path: &Path, e: &Error) -> Result<()> {
        let to = layout::free_broken_name(self.storage, path)?;
        self.storage
            .rename(path, &to)
            .map_err(|e| Error::io("rename", path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        self.storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
        super::skip(&mut self.report, e);
        Ok(())
    }

    /// Step 4: leaves out the segments the snapshot covers (to be deleted) and tells the live
    /// log from the spares after it.
    pub(super) fn choose_segments(&mut self, mut segs: Vec<Seg>, base: u64) -> Result<LogSegments> {
        // Segments wholly covered by the snapshot are not replayed: segment i is covered when
        // the next one starts at or below base + 1.
        let last_used = segs.iter().rposition(|s| !s.zero_header);
        let mut covered = 0;
        while covered + 1 < segs.len() && segs[covered + 1].first_seq.is_some_and(|f| f <= base + 1) {
            covered += 1;
        }
        let mut live = segs.split_off(covered);
        self.doomed.extend(segs.iter().map(|s| s.file.path.clone()));
        // The live log runs to the last segment with a non-zero header; zero-header segments
        // after it are preallocated spares. With no used segment, the first spare is the log's
        // start.
        let keep = last_used.map_or(live.len().min(1), |l| l + 1 - covered);
        let mut spares = live.split_off(keep);
        if last_used.is_some() {
            adopt_spare_after_log(&mut live, &mut spares, self.opts, base)?;
        }
        Ok(LogSegments { live, spares })
    }
}

/// The spare right after the log may hold a torn activation whose header stayed zero (or
/// durable records whose header was zeroed): only reading it tells. Then it ends the log and the
/// reader judges it (row R5b), instead of it being deleted as a spare. A recycled spare is a
/// spare (it must not end the log: the segment before it would be judged as an older one, and
/// its torn tail as corruption, found by `syscall_crash.rs`).
fn adopt_spare_after_log(live: &mut Vec<Seg>, spares: &mut Vec<Seg>, opts: &Options, base: u64) -> Result<()> {
    let (Some(last), Some(spare)) = (live.last(), spares.first()) else {
        return Ok(());
    };
    if spare.file.id != last.file.id + 1 {
        return Ok(());
    }
    if is_unused(spare, opts, base)? {
        spares[0].known_clean = true;
    } else {
        live.push(spares.remove(0));
    }
    Ok(())
}
