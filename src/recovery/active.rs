//! Steps 7 and 8 of recovery: the segment appends go into, the files that go, and the active
//! segment made durable.

use std::collections::BTreeMap;

use super::replay::Scanned;
use super::segments::{is_clean, LogSegments, Seg};
use super::snapshot::Base;
use super::Recovery;
use crate::error::{Error, Result};
use crate::format::RECORD_HEADER_SIZE;
use crate::index::{FileId, Source};
use crate::options::Options;
use crate::wal::writer::{self, LogStart, SegInfo, SegmentFile};

/// The segments that stay, with the log bytes written in them.
#[derive(Default)]
struct Kept {
    segments: BTreeMap<u64, SegInfo>,
    log_bytes: u64,
}

impl Kept {
    /// Records a segment that stays: its first sequence number and the bytes written in it.
    fn keep(&mut self, id: u64, first_seq: u64, bytes: u64) {
        self.segments.insert(id, SegInfo { first_seq, bytes });
        self.log_bytes += bytes;
    }
}

/// The segment appends go into: where, and whether its header is written.
struct Active {
    file: SegmentFile,
    write_offset: u64,
    activated: bool,
}

impl Recovery<'_> {
    /// Step 7: appends go into the last segment if it ends the log and has room, else into a
    /// fresh one; segments whose records all lie at or below the snapshot's `base` go. Returns
    /// where the log starts, and the log bytes kept.
    pub(super) fn choose_active(
        &mut self,
        log: LogSegments,
        scanned: Vec<Scanned>,
        last_seq: u64,
        base: u64,
    ) -> Result<(LogStart, u64)> {
        let LogSegments { live, mut spares } = log;
        let mut kept = Kept::default();
        let mut active = None;
        let n = live.len();
        let mut next_id = live.last().map_or(1, |s| s.file.id + 1);
        for (i, (seg, info)) in live.into_iter().zip(scanned).enumerate() {
            if i + 1 == n && info.first_seq.is_none() && !self.usable_as_active(&seg.file, &info, last_seq) {
                // The last segment holds nothing (never activated, or a torn activation now
                // zeroed) but cannot take appends under these options (smaller than
                // `segment_size`): a fresh segment replaces it under the same id. Deleting it
                // and starting the next id would leave a gap that every later open refuses
                // ("segment N is missing").
                self.index.remove_source(FileId::Segment(seg.file.id));
                let path = &seg.file.path;
                self.storage.remove(path).map_err(|e| Error::io("remove", path, e))?;
                next_id = seg.file.id;
                continue;
            }
            if i + 1 == n && self.usable_as_active(&seg.file, &info, last_seq) {
                if let Some(f) = info.first_seq {
                    kept.keep(seg.file.id, f, info.valid_end);
                }
                self.index
                    .set_source(Source::file(FileId::Segment(seg.file.id), seg.file.file.clone()));
                active = Some(Active {
                    file: seg.file,
                    write_offset: info.valid_end,
                    activated: info.first_seq.is_some(),
                });
                continue;
            }
            match info.first_seq {
                Some(f) if info.last_seq.is_some_and(|l| l > base) => kept.keep(seg.file.id, f, info.valid_end),
                _ => {
                    self.index.remove_source(FileId::Segment(seg.file.id));
                    self.doomed.push(seg.file.path.clone());
                }
            }
        }
        let active = match active {
            Some(a) => a,
            None => self.fresh_segment(&mut spares, next_id)?,
        };
        // Other spares go: checking that one is clean means reading all of it, and the
        // background preparer makes a fresh one without holding up the open.
        let other_spares = spares.iter().filter(|s| s.file.id != active.file.id);
        self.doomed.extend(other_spares.map(|s| s.file.path.clone()));
        let start = LogStart {
            active: active.file,
            write_offset: active.write_offset,
            activated: active.activated,
            written_seq: last_seq,
            segments: kept.segments,
        };
        Ok((start, kept.log_bytes))
    }

    /// Whether the log's last segment can take the next appends.
    fn usable_as_active(&self, file: &SegmentFile, info: &Scanned, last_seq: u64) -> bool {
        let room = info.valid_end + (RECORD_HEADER_SIZE + self.opts.record_payload_max()) as u64 <= file.capacity;
        match info.first_seq {
            // Appending continues the sequence only if this segment holds the log's end.
            Some(_) => info.last_seq.is_some_and(|l| l == last_seq) && room,
            // Never activated (or a torn activation, now zeroed): usable if full size.
            None => file.capacity >= self.opts.segment_size,
        }
    }

    /// A fresh segment `id`, right after the last one kept, reusing a clean spare of that id.
    fn fresh_segment(&mut self, spares: &mut Vec<Seg>, id: u64) -> Result<Active> {
        let file = match take_clean_spare(spares, id, self.opts)? {
            Some(seg) => seg,
            None => writer::create_segment(self.storage, self.layout, id, self.opts.segment_size)?,
        };
        self.index
            .set_source(Source::file(FileId::Segment(id), file.file.clone()));
        Ok(Active {
            file,
            write_offset: 0,
            activated: false,
        })
    }

    /// Step 7's cleanup: deletes the doomed files and the snapshots older than the one loaded,
    /// then makes the deletions durable.
    pub(super) fn remove_doomed(&mut self, snapshots: &[u64], base: &Base) -> Result<()> {
        // Snapshots older than the one loaded are left by a crash between a checkpoint's rename
        // and its deletions; the loaded one (with the log after it) supersedes them.
        if let Some(s) = &base.snapshot {
            let older = snapshots.iter().filter(|&&q| q < s.base_seq);
            self.doomed.extend(older.map(|&q| self.layout.snapshot(q)));
        }
        for p in &self.doomed {
            self.storage.remove(p).map_err(|e| Error::io("remove", p, e))?;
            self.report.files_removed += 1;
        }
        // Leftover temp files (step 2) count too.
        if self.report.files_removed > 0 {
            let (wal, dir) = (self.layout.wal_dir(), self.layout.dir());
            self.storage.sync_dir(wal).map_err(|e| Error::io("fsync", wal, e))?;
            self.storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
        }
        Ok(())
    }
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

/// Step 8: what recovery read may have been only in the page cache (a killed process in a lazy
/// sync mode): make it durable before new records vouch for it (their `durable_seq` field).
pub(super) fn sync_active(start: &LogStart) -> Result<()> {
    let active = &start.active;
    active
        .file
        .sync_data()
        .map_err(|e| Error::io("fdatasync", &active.path, e))
}
