//! Appending commit groups to the active segment; rolling to preallocated segments.
//!
//! Segments are created at full size and zero-filled, then fsynced with their directory entry,
//! before any record goes into them: an `fdatasync` after an append then never has to commit a
//! size change or a new directory entry, and the zeros past the written end read as "end of log"
//! (docs/reliability.md, F9). A background thread prepares the next segment while the current one fills.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::format::{self, SegmentHeader, KIND_OPS, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::storage::layout::Layout;
use crate::storage::{write_all_at, OpenMode, Storage, StorageFile};
use crate::wal::sync::{LogSync, SyncTarget};

/// Zeros are written in chunks of this size when a segment is preallocated. Measured: with 1 MiB
/// writes the page cache holds the file in large folios, and every small append afterwards walks
/// a whole folio's buffers (bulk puts in `SyncMode::Never` ran 1.4-1.8x slower); 64 KiB writes
/// avoid that, and smaller ones gain nothing more (docs/benchmarks.md).
const ZERO_CHUNK_BYTES: usize = 64 * 1024;

/// An open segment file.
#[derive(Clone, Debug)]
pub(crate) struct SegmentFile {
    pub id: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    pub capacity: u64,
}

/// Creates segment `id` at `size` bytes of zeros, durable with its directory entry.
///
/// The file is filled and fsynced under a temporary name and renamed into place, so a file with
/// a segment's name is always a whole preallocated segment: a crash mid-creation leaves only a
/// `.tmp` file, which recovery deletes.
pub(crate) fn create_segment(storage: &dyn Storage, layout: &Layout, id: u64, size: u64) -> Result<SegmentFile> {
    let tmp = layout.segment_tmp(id);
    let path = layout.segment(id);
    if let Err(e) = storage.remove(&tmp) {
        // NOTE: only a leftover from an interrupted preparation can be there.
        if e.kind() != io::ErrorKind::NotFound {
            return Err(Error::io("remove", &tmp, e));
        }
    }
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", &tmp, e))?;
    if let Err(e) = fill_with_zeros(file.as_ref(), &tmp, size) {
        // A segment that could not be filled (a full disk, most likely) must not keep the
        // space it got: that would make the disk fuller with each try (issue 15).
        let _ = storage.remove(&tmp);
        return Err(e);
    }
    storage.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
    storage
        .sync_dir(layout.wal_dir())
        .map_err(|e| Error::io("fsync", layout.wal_dir(), e))?;
    Ok(SegmentFile {
        id,
        path,
        file,
        capacity: size,
    })
}

/// Writes `size` zeros to `file` (at `path`) and makes them durable with the file's size.
fn fill_with_zeros(file: &dyn StorageFile, path: &Path, size: u64) -> Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        write_all_at(file, &zeros[..n], at).map_err(|e| Error::io("write", path, e))?;
        at += n as u64;
    }
    // Size and data durable before the name: then the directory entry, since a segment whose
    // name could vanish in a crash must never hold an acknowledged write (docs/reliability.md, F4).
    file.sync_all().map_err(|e| Error::io("fsync", path, e))
}

/// The hand-off between the writer and the background preparer of the next segment.
///
/// Invariant: once the writer has taken segment `n` (prepared, or to create itself), nobody
/// creates any segment with an id at or below `n` again. Creating an id twice could rename a
/// fresh file over a segment already in use.
#[derive(Default)]
pub(crate) struct SpareSlot {
    state: Mutex<Spare>,
    cv: Condvar,
}

#[derive(Default)]
struct Spare {
    /// The id the writer will need next, if the preparer should make it.
    wanted: Option<u64>,
    /// The id the preparer is creating now.
    preparing: Option<u64>,
    /// A prepared segment.
    ready: Option<SegmentFile>,
    /// The highest id the writer has taken or created itself.
    taken: u64,
    shutdown: bool,
}

impl SpareSlot {
    /// Asks the preparer for segment `id` (ignored if it is taken, prepared or being prepared).
    pub(crate) fn want(&self, id: u64) {
        let mut s = self.state.lock();
        let known = s.ready.as_ref().is_some_and(|r| r.id == id) || s.preparing == Some(id);
        if !known && id > s.taken && !s.shutdown {
            s.wanted = Some(id);
            self.cv.notify_all();
        }
    }

    /// Takes segment `id` if it is prepared or being prepared (waiting for it); `None` when the
    /// caller must create it itself. Either way, no one else will create it.
    pub(crate) fn take(&self, id: u64) -> Option<SegmentFile> {
        let mut s = self.state.lock();
        while s.preparing == Some(id) {
            self.cv.wait(&mut s);
        }
        s.taken = s.taken.max(id);
        if s.wanted.is_some_and(|w| w <= id) {
            s.wanted = None;
        }
        match s.ready.take() {
            Some(seg) if seg.id == id => Some(seg),
            // A spare with a lower id is stale: its file stays as an unused spare on disk, which
            // recovery removes. (A higher id cannot be ready: ids are wanted in order.)
            _ => None,
        }
    }

    /// Stops the preparer.
    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cv.notify_all();
    }

    /// The preparer thread's loop.
    pub(crate) fn run_preparer(&self, storage: &dyn Storage, layout: &Layout, size: u64) {
        let mut s = self.state.lock();
        loop {
            if s.shutdown {
                return;
            }
            let Some(id) = s.wanted.take().filter(|&id| id > s.taken) else {
                self.cv.wait(&mut s);
                continue;
            };
            s.preparing = Some(id);
            drop(s);
            // A panic while preparing (a storage that panics) must not leave `preparing` set:
            // the writer's next roll would wait for it forever, holding the log mutex.
            struct Unmark<'a>(&'a SpareSlot);
            impl Drop for Unmark<'_> {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.state.lock().preparing = None;
                        self.0.cv.notify_all();
                    }
                }
            }
            let unmark = Unmark(self);
            let made = create_segment(storage, layout, id, size);
            drop(unmark);
            s = self.state.lock();
            s.preparing = None;
            // On failure the writer creates the segment itself and reports the error.
            if let Ok(seg) = made {
                if id > s.taken {
                    s.ready = Some(seg);
                } else {
                    // NOTE: cannot happen while ids are wanted in order; if it did, a stray
                    // zero segment below the active one must not stay on disk.
                    let _ = storage.remove(&seg.path);
                }
            }
            self.cv.notify_all();
        }
    }
}

/// An activated segment still on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegInfo {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Bytes written to it (header and records).
    pub bytes: u64,
}

/// A record waiting in a commit group.
pub(crate) struct PendingRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Which segments a group sealed and activated (where its records landed is in the vector
/// [`LogWriter::append`] fills).
#[derive(Default)]
pub(crate) struct Placement {
    /// Segments sealed by this group (now read-only).
    pub sealed: Vec<SegmentFile>,
    /// Segments activated by this group.
    pub activated: Vec<SegmentFile>,
}

/// The log's writing end. Only the commit-group leader uses it (behind a mutex).
pub(crate) struct LogWriter {
    storage: Arc<dyn Storage>,
    layout: Layout,
    segment_size: u64,
    spare: Arc<SpareSlot>,
    prepare_ahead: bool,
    active: SegmentFile,
    /// Next byte to write in the active segment.
    write_offset: u64,
    /// Whether the active segment's header is written.
    activated: bool,
    /// Last sequence number handed to the OS.
    pub written_seq: u64,
    /// Bytes written since open (framing and headers included).
    pub bytes_written: u64,
    /// Every activated segment still on disk, by id.
    pub segments: BTreeMap<u64, SegInfo>,
    buf: Vec<u8>,
    /// Every fsync of the log goes through it, the seals here and the engine's syncs.
    sync: Arc<LogSync>,
}

/// The state recovery leaves the log in.
pub(crate) struct LogStart {
    pub active: SegmentFile,
    pub write_offset: u64,
    pub activated: bool,
    pub written_seq: u64,
    pub segments: BTreeMap<u64, SegInfo>,
}

impl LogWriter {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        layout: Layout,
        segment_size: u64,
        spare: Arc<SpareSlot>,
        prepare_ahead: bool,
        start: LogStart,
    ) -> LogWriter {
        debug_assert!(start.activated || start.write_offset == 0);
        LogWriter {
            storage,
            layout,
            segment_size,
            spare,
            prepare_ahead,
            active: start.active,
            write_offset: start.write_offset,
            activated: start.activated,
            written_seq: start.written_seq,
            bytes_written: 0,
            segments: start.segments,
            buf: Vec::new(),
            // Recovery fsynced the log it read before handing it over (docs/design.md,
            // "Recovery", step 8): everything written so far is durable.
            sync: Arc::new(LogSync::new(start.written_seq)),
        }
    }

    pub(crate) fn active(&self) -> &SegmentFile {
        &self.active
    }

    /// What every fsync of the log goes through, and what they made durable.
    pub(crate) fn log_sync(&self) -> Arc<LogSync> {
        self.sync.clone()
    }

    /// What an fsync of the active segment would make durable: every record written so far (an
    /// older segment was fsynced when it was sealed).
    pub(crate) fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            file: self.active.file.clone(),
            path: self.active.path.clone(),
            through: self.written_seq,
        }
    }

    /// Bytes used in all segments on disk.
    pub(crate) fn bytes_on_disk(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Writes a commit group with one write call per segment it touches, sealing (fsyncing)
    /// each segment it fills on the way. Each record carries the highest sequence number known
    /// durable as it is framed. `placed` (empty; the caller reuses it from group to group) gets
    /// `(segment id, file offset)` of each record, in order. Nothing is durable by this alone
    /// but what a seal made so ([`LogWriter::sync_target`] for the rest).
    pub(crate) fn append(&mut self, records: &[PendingRecord], placed: &mut Vec<(u64, u64)>) -> Result<Placement> {
        debug_assert!(placed.is_empty());
        let mut placement = Placement::default();
        self.buf.clear();
        let mut buf_at = self.write_offset;
        // Read once per group, and again after a seal (which makes everything before it durable).
        let mut durable_seq = self.sync.durable_seq();
        for rec in records {
            debug_assert_eq!(rec.seq, self.written_seq + 1, "records are appended in sequence");
            let need = RECORD_HEADER_SIZE + rec.payload.len() + if self.activated { 0 } else { SEGMENT_HEADER_SIZE };
            if buf_at + self.buf.len() as u64 + need as u64 > self.active.capacity {
                self.flush(buf_at)?;
                placement.sealed.push(self.roll()?);
                durable_seq = self.sync.durable_seq();
                buf_at = 0;
            }
            if !self.activated {
                debug_assert_eq!(buf_at + self.buf.len() as u64, 0);
                let header = format::encode_segment_header(SegmentHeader {
                    segment_id: self.active.id,
                    first_seq: rec.seq,
                });
                self.buf.extend_from_slice(&header);
                self.activated = true;
                self.segments.insert(
                    self.active.id,
                    SegInfo {
                        first_seq: rec.seq,
                        bytes: 0,
                    },
                );
                placement.activated.push(self.active.clone());
            }
            placed.push((self.active.id, buf_at + self.buf.len() as u64));
            format::encode_record(
                &mut self.buf,
                self.active.id,
                rec.seq,
                durable_seq,
                KIND_OPS,
                &rec.payload,
            );
            self.written_seq = rec.seq;
        }
        self.flush(buf_at)?;
        Ok(placement)
    }

    fn flush(&mut self, at: u64) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(at, self.write_offset);
        debug_assert!(at + self.buf.len() as u64 <= self.active.capacity);
        write_all_at(self.active.file.as_ref(), &self.buf, at).map_err(|e| Error::io("write", &self.active.path, e))?;
        self.write_offset += self.buf.len() as u64;
        self.bytes_written += self.buf.len() as u64;
        if let Some(info) = self.segments.get_mut(&self.active.id) {
            info.bytes = self.write_offset;
        }
        self.buf.clear();
        Ok(())
    }

    /// Seals the active segment (fsync) and switches to the next one, which is durable and
    /// zero-filled before anything is written to it.
    fn roll(&mut self) -> Result<SegmentFile> {
        self.sync()?;
        let next_id = self.active.id + 1;
        let next = match self.spare.take(next_id) {
            Some(seg) => seg,
            None => create_segment(self.storage.as_ref(), &self.layout, next_id, self.segment_size)?,
        };
        if self.prepare_ahead {
            self.spare.want(next_id + 1);
        }
        self.write_offset = 0;
        self.activated = false;
        Ok(std::mem::replace(&mut self.active, next))
    }

    /// For a checkpoint at `written_seq`: seals the active segment and starts the next one with
    /// its header (first sequence `written_seq + 1`), so every segment before it is wholly
    /// covered by the snapshot and recovery never rescans records the snapshot holds. Returns
    /// the sealed and the new segment, or `None` if the active segment holds nothing yet.
    pub(crate) fn roll_for_checkpoint(&mut self) -> Result<Option<(SegmentFile, SegmentFile)>> {
        if !self.activated {
            return Ok(None);
        }
        let sealed = self.roll()?;
        let first_seq = self.written_seq + 1;
        let header = format::encode_segment_header(SegmentHeader {
            segment_id: self.active.id,
            first_seq,
        });
        // The header must be durable before the checkpoint deletes the segments before it:
        // recovery tells a segment that reappears after a lost unlink (F4) from a live one by the
        // first sequence number of the segment after it. A torn, unsynced header here once left
        // a store that could not be opened (tests/faults_checkpoint.rs).
        write_all_at(self.active.file.as_ref(), &header, 0).map_err(|e| Error::io("write", &self.active.path, e))?;
        self.sync()?;
        self.write_offset = SEGMENT_HEADER_SIZE as u64;
        self.bytes_written += SEGMENT_HEADER_SIZE as u64;
        self.activated = true;
        self.segments.insert(
            self.active.id,
            SegInfo {
                first_seq,
                bytes: self.write_offset,
            },
        );
        Ok(Some((sealed, self.active.clone())))
    }

    /// `fdatasync` of the active segment: every record written so far becomes durable.
    fn sync(&self) -> Result<()> {
        self.sync.sync(&self.sync_target())
    }
}
