//! Steps 7 and 8 of recovery: the segment appends go into, the files that go, and the active
//! segment made durable.

use std::collections::BTreeMap;

use super::replay::Scanned;
use super::segments::{is_clean, LogSegments, Seg};
use super::snapshot::Base;
use super::Recovery;
use crate::error::{Error, Result};
use crate::index::{FileId, Source};
use crate::options::Options;
use crate::wal::writer::{self, LogStart, SegInfo, SegmentFile};

/// The segments that stay, with the log bytes written in them.
#[derive(Default)]
struct Kept {
    segments: BTreeMap<u64, SegInfo>,
    log_bytes: u64,
    /// The last segment kept: it holds the log's last record.
    last: Option<SegmentFile>,
}

impl Kept {
    /// Records a segment that stays: its first sequence number and the bytes written in it.
    fn keep(&mut self, file: &SegmentFile, first_seq: u64, bytes: u64) {
        self.segments.insert(file.id, SegInfo { first_seq, bytes });
        self.log_bytes += bytes;
        self.last = Some(file.clone());
    }
}

/// The segment appends go into: where, and whether its header is written. No file: there was
/// no room to make one, and the first write makes segment `id`.
struct Active {
    file: Option<SegmentFile>,
    id: u64,
    write_offset: u64,
    activated: bool,
}

/// What step 7 leaves: where the log starts, the log bytes kept, and the segment that holds the
/// log's last record if appends do not go into it (step 8 makes it durable too).
pub(super) struct Chosen {
    pub start: LogStart,
    pub log_bytes: u64,
    pub log_end: Option<SegmentFile>,
}

impl Recovery<'_> {
    /// Step 7: appends go into the last segment if it ends the log, else into a fresh one;
    /// segments whose records all lie at or below the snapshot's `base` go.
    pub(super) fn choose_active(
        &mut self,
        log: LogSegments,
        scanned: Vec<Scanned>,
        last_seq: u64,
        base: u64,
    ) -> Result<Chosen> {
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
                    kept.keep(&seg.file, f, info.valid_end);
                }
                // Appends go no further than a segment of these options reaches (or than what is
                // written, if more): a file longer than that (made under other options, or
                // extended by something else) is not trusted for its length.
                let mut file = self.with_fresh_key(seg.file)?;
                self.index.set_source(
                    Source::file(FileId::Segment(file.id), self.write_version(), file.file.clone())
                        .with_cipher(file.cipher.clone()),
                );
                file.capacity = file.capacity.min(self.opts.segment_size.max(info.valid_end));
                active = Some(Active {
                    id: file.id,
                    file: Some(file),
                    write_offset: info.valid_end,
                    activated: info.first_seq.is_some(),
                });
                continue;
            }
            match info.first_seq {
                Some(f) if info.last_seq.is_some_and(|l| l > base) => kept.keep(&seg.file, f, info.valid_end),
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
        let other_spares = spares.iter().filter(|s| s.file.id != active.id);
        self.doomed.extend(other_spares.map(|s| s.file.path.clone()));
        let log_end = kept.last.filter(|l| Some(l.id) != active.file.as_ref().map(|a| a.id));
        let start = LogStart {
            active: active.file,
            active_id: active.id,
            write_offset: active.write_offset,
            activated: active.activated,
            written_seq: last_seq,
            segments: kept.segments,
        };
        Ok(Chosen {
            start,
            log_bytes: kept.log_bytes,
            log_end,
        })
    }

    /// Whether the log's last segment can take the next appends. Never one of an older format
    /// version: records of this build's format go only into segments whose header says so (a
    /// store written by an older build goes on in a fresh segment, docs/format.md, "Changing the
    /// format").
    fn usable_as_active(&self, file: &SegmentFile, info: &Scanned, last_seq: u64) -> bool {
        if info.version.is_some_and(|v| v != self.write_version()) {
            return false;
        }
        // An encrypted segment's data key seals only in the process that activated it (its
        // nonce counter lives there): the next appends go to a fresh segment with a fresh key.
        if self.keyring.is_some() && info.first_seq.is_some() {
            return false;
        }
        match info.first_seq {
            // Appending continues the sequence only if this segment holds the log's end. It
            // need not have room: the first group that does not fit rolls, and if the disk has
            // no room for the next segment that group gets `StorageFull` and nothing else is
            // lost (an open must not need a segment's worth of free space; issue 15).
            Some(_) => info.last_seq.is_some_and(|l| l == last_seq),
            // Never activated (or a torn activation, now zeroed): usable if full size.
            None => file.capacity >= self.opts.segment_size,
        }
    }

    /// In an encrypted store, `file` with a new data key (durable in the keyring): the segment
    /// that takes this process's appends.
    fn with_fresh_key(&self, mut file: SegmentFile) -> Result<SegmentFile> {
        if let Some(keyring) = &self.keyring {
            file.cipher = Some(keyring.fresh(FileId::Segment(file.id))?);
        }
        Ok(file)
    }

    /// A fresh segment `id`, right after the last one kept, reusing a clean spare of that id.
    /// With no room to make one the store opens without it: the first write makes it.
    fn fresh_segment(&mut self, spares: &mut Vec<Seg>, id: u64) -> Result<Active> {
        let file = match take_clean_spare(spares, id, self.opts)? {
            Some(seg) => seg,
            None => match writer::create_segment(self.storage, self.layout, id, self.opts.segment_size) {
                Ok(seg) => seg,
                Err(e) if e.is_storage_full() => {
                    return Ok(Active {
                        file: None,
                        id,
                        write_offset: 0,
                        activated: false,
                    })
                }
                Err(e) => return Err(e),
            },
        };
        let file = self.with_fresh_key(file)?;
        self.index.set_source(
            Source::file(FileId::Segment(id), self.write_version(), file.file.clone()).with_cipher(file.cipher.clone()),
        );
        Ok(Active {
            file: Some(file),
            id,
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

/// Removes and returns spare `id` if it is exactly `segment_size` and entirely zero (a spare
/// with data in it is a torn activation whose header never landed; one of another size was made
/// under other options, or is not ours: each is deleted, not reused, and never read past
/// `segment_size`).
fn take_clean_spare(spares: &mut Vec<Seg>, id: u64, opts: &Options) -> Result<Option<SegmentFile>> {
    let Some(i) = spares.iter().position(|s| s.file.id == id) else {
        return Ok(None);
    };
    let seg = &spares[i];
    if !seg.zero_header || seg.file.capacity != opts.segment_size {
        return Ok(None);
    }
    if !seg.known_clean && !is_clean(seg, opts)? {
        return Ok(None);
    }
    Ok(Some(spares.remove(i).file))
}

/// Step 8: what recovery read may have been only in the page cache (a killed process in a lazy
/// sync mode): make it durable before new records vouch for it (their `durable_seq` field). That
/// is the active segment, and the segment holding the log's last record if it is another one.
pub(super) fn sync_log_end(chosen: &Chosen) -> Result<()> {
    for seg in chosen.start.active.iter().chain(&chosen.log_end) {
        seg.file.sync_data().map_err(|e| Error::io("fdatasync", &seg.path, e))?;
    }
    Ok(())
}
