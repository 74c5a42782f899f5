//! Appending commit groups to the active segment; rolling to preallocated segments.
//!
//! Segments are created at full size and zero-filled, then fsynced with their directory entry,
//! before any record goes into them: an `fdatasync` after an append then never has to commit a
//! size change or a new directory entry, and the zeros past the written end read as "end of log"
//! (docs/reliability.md, F9). A background thread prepares the next segment while the current one fills.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::{Condvar, Mutex};

use crate::crypto::{FileCipher, Keyring};
use crate::error::{Error, Result};
use crate::format::{self, SegmentHeader, END_MARKER_SIZE, KIND_OPS, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::index::{FileId, SourceData};
use crate::storage::layout::Layout;
use crate::storage::{write_all_at, OpenMode, Storage, StorageFile};
use crate::wal::reader::ZERO_TAIL_MIN;
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
    /// Its data key, in an encrypted store: made fresh when the segment is taken for appends,
    /// and used by no other process (docs/design.md, "Encryption at rest").
    pub cipher: Option<Arc<FileCipher>>,
}

/// How long the preparer waits before trying again to make a segment it could not make (a full
/// disk, most likely): the first wait, doubled after each failure up to the second.
const PREPARE_RETRY_FIRST: Duration = Duration::from_millis(50);
const PREPARE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Creates segment `id` at `size` bytes of zeros, durable with its directory entry.
///
/// The file is filled and fsynced under a temporary name and renamed into place, so a file with
/// a segment's name is always a whole preallocated segment: a crash mid-creation leaves only a
/// `.tmp` file, which recovery deletes. A full disk is [`Error::StorageFull`] saying it needs
/// `size` bytes; the temporary file is gone by then.
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
        return Err(e.needing(size));
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
        cipher: None,
    })
}

/// Makes segment `id` out of `old`, a segment file a checkpoint covered, instead of writing
/// `size` zeros: its blocks are allocated and written already, so appends into it cost the same
/// `fdatasync` as into a zero-filled one, with no zeros to write first (issue 17: zero-filling
/// each new segment while writers run owned the 99th percentile of 4 KiB writes).
///
/// `old` (a covered segment under its temporary name) is renamed to `id`'s temporary name; its
/// header and the end marker after it are zeroed, and so is its last `ZERO_TAIL_MIN` (the rule a
/// torn activation is known by, docs/design.md, row R6); durable, then renamed into place with a
/// directory fsync. Its old bytes stay between: records of other segments, whose checksums never
/// verify in this one, behind an end marker (docs/format.md, "Recycled segments"). A crash
/// part-way leaves a `.tmp` file (which recovery deletes) or the recycled spare. `None` (and
/// the file removed) if `old` is not exactly `size` bytes or cannot be used. The caller makes
/// sure nobody reads `old` any more ([`Pooled`]).
fn recycle_segment(storage: &dyn Storage, layout: &Layout, old: &Path, id: u64, size: u64) -> Option<SegmentFile> {
    let tmp = layout.segment_tmp(id);
    let path = layout.segment(id);
    let _ = storage.remove(&tmp);
    storage.rename(old, &tmp).ok()?;
    let made = (|| -> io::Result<SegmentFile> {
        let file = storage.open(&tmp, OpenMode::ReadWrite)?;
        if file.len()? != size || size < (SEGMENT_HEADER_SIZE + END_MARKER_SIZE + ZERO_TAIL_MIN) as u64 {
            return Err(io::Error::other("not a segment of this size"));
        }
        write_all_at(file.as_ref(), &[0; SEGMENT_HEADER_SIZE + END_MARKER_SIZE], 0)?;
        write_all_at(file.as_ref(), &[0; ZERO_TAIL_MIN], size - ZERO_TAIL_MIN as u64)?;
        file.sync_data()?;
        storage.rename(&tmp, &path)?;
        storage.sync_dir(layout.wal_dir())?;
        Ok(SegmentFile {
            id,
            path: path.clone(),
            file,
            capacity: size,
            cipher: None,
        })
    })();
    match made {
        Ok(seg) => Some(seg),
        Err(e) => {
            tracing::debug!(target: "sessiondb", segment = id, error = %e, "segment not recycled; making a new one");
            let _ = storage.remove(&tmp);
            None
        }
    }
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

/// A segment file a checkpoint covered, waiting to be recycled.
pub(crate) struct Pooled {
    pub id: u64,
    /// Its temporary name.
    pub path: PathBuf,
    /// How the index read it, when it was forgotten. A reader that took it before (a scan's
    /// chunk, a get in flight) holds a clone: the file is not recycled, so not overwritten,
    /// until this is the last one (issue 17: a scan read another segment's bytes where its
    /// values had been, `tests/recycle.rs`).
    pub reader: Option<SourceData>,
}

impl Pooled {
    /// Whether someone besides the pool may still read the file.
    fn still_read(&self) -> bool {
        match &self.reader {
            Some(SourceData::Bytes(b)) => Arc::strong_count(b) > 1,
            Some(SourceData::File(f)) => Arc::strong_count(f) > 1,
            None => false,
        }
    }
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
    /// Segment files a checkpoint covered, kept to be recycled ([`recycle_segment`]), by id;
    /// at most `pool_max`. They wait under their temporary names (`<id>.wal.tmp`): a crash
    /// leaves them to recovery, which deletes them.
    pool: VecDeque<Pooled>,
    pool_max: usize,
    /// Segments recycled since open.
    recycled: u64,
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

    /// Gives back segment `id`, which the writer took with [`SpareSlot::take`] but could not
    /// create (a full disk): the preparer makes it, retrying until it can.
    pub(crate) fn give_back(&self, id: u64) {
        let mut s = self.state.lock();
        if s.taken == id {
            s.taken = id - 1;
            if !s.shutdown {
                s.wanted = Some(id);
                self.cv.notify_all();
            }
        }
    }

    /// Sets how many covered segments are kept to be recycled (0: none).
    pub(crate) fn set_pool_max(&self, max: usize) {
        self.state.lock().pool_max = max;
    }

    /// How many covered segments are kept to be recycled.
    pub(crate) fn pool_max(&self) -> usize {
        self.state.lock().pool_max
    }

    /// Offers segment files a checkpoint covered (`(id, path)`: no longer part of the log, under
    /// their temporary names) to be recycled; returns the paths to delete: those beyond the
    /// pool's size, the oldest ids first.
    pub(crate) fn offer(&self, covered: impl IntoIterator<Item = Pooled>) -> Vec<PathBuf> {
        let mut s = self.state.lock();
        s.pool.extend(covered);
        s.pool.make_contiguous().sort_unstable_by_key(|p| p.id);
        let excess = s.pool.len().saturating_sub(s.pool_max);
        s.pool.drain(..excess).map(|p| p.path).collect()
    }

    /// Deletes the files kept to be recycled (at close), then fsyncs `wal_dir`; best effort:
    /// recovery deletes what is left.
    pub(crate) fn remove_pool(&self, storage: &dyn Storage, wal_dir: &Path) {
        let pool = std::mem::take(&mut self.state.lock().pool);
        for p in &pool {
            let _ = storage.remove(&p.path);
        }
        if !pool.is_empty() {
            let _ = storage.sync_dir(wal_dir);
        }
    }

    /// Segments recycled since open.
    pub(crate) fn recycled(&self) -> u64 {
        self.state.lock().recycled
    }

    /// Makes segment `id` of `size` bytes: a recycled one from the pool if it has one of that
    /// size that nobody reads any more, else a new zero-filled one ([`create_segment`]).
    pub(crate) fn make_segment(
        &self,
        storage: &dyn Storage,
        layout: &Layout,
        id: u64,
        size: u64,
    ) -> Result<SegmentFile> {
        loop {
            let free = {
                let mut s = self.state.lock();
                let at = s.pool.iter().position(|p| !p.still_read());
                at.and_then(|at| s.pool.remove(at))
            };
            let Some(free) = free else {
                break;
            };
            // The last handle on the old file's bytes goes before they are overwritten.
            let Pooled { path: old, reader, .. } = free;
            drop(reader);
            if let Some(seg) = recycle_segment(storage, layout, &old, id, size) {
                self.state.lock().recycled += 1;
                return Ok(seg);
            }
            // Not usable (another size, made under other options): it goes.
            let _ = storage.remove(&old);
        }
        create_segment(storage, layout, id, size)
    }

    /// Stops the preparer.
    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cv.notify_all();
    }

    /// The preparer thread's loop.
    pub(crate) fn run_preparer(&self, storage: &dyn Storage, layout: &Layout, size: u64) {
        let mut s = self.state.lock();
        let mut retry = PREPARE_RETRY_FIRST;
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
            let made = self.make_segment(storage, layout, id, size);
            drop(unmark);
            s = self.state.lock();
            s.preparing = None;
            match made {
                Ok(seg) if id > s.taken => {
                    s.ready = Some(seg);
                    retry = PREPARE_RETRY_FIRST;
                }
                Ok(seg) => {
                    // NOTE: cannot happen while ids are wanted in order; if it did, a stray
                    // zero segment below the active one must not stay on disk.
                    let _ = storage.remove(&seg.path);
                }
                Err(e) => {
                    tracing::warn!(target: "sessiondb", segment = id, error = %e, retry_ms = retry.as_millis() as u64, "spare segment preparation failed; retrying");
                    // The writer creates the segment itself if it needs it first (and reports
                    // the error if it fails too); meanwhile this tries again, less and less
                    // often, until the disk has room (issue 15).
                    if s.wanted.is_none() && id > s.taken {
                        s.wanted = Some(id);
                    }
                    self.cv.notify_all();
                    if !s.shutdown {
                        self.cv.wait_for(&mut s, retry);
                    }
                    retry = (retry * 2).min(PREPARE_RETRY_MAX);
                    continue;
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
    /// The segment appends go into. `None` after an open that had no room to make one: the
    /// first append makes segment `active_id` (or gets [`Error::StorageFull`]).
    active: Option<SegmentFile>,
    /// The active segment's id, or the id of the one the next append makes.
    active_id: u64,
    /// Segments made ready for the next group by [`LogWriter::reserve`], in id order after the
    /// active one.
    reserved: VecDeque<SegmentFile>,
    /// A full disk was logged (WARN) and no reservation has succeeded since: one event per
    /// transition to full, not one per refused write.
    full_logged: bool,
    /// Next byte to write in the active segment.
    write_offset: u64,
    /// Whether the active segment's header is written.
    activated: bool,
    /// Whether the active segment's header was made durable on its own (see
    /// [`LogWriter::header_durable`]).
    header_synced: bool,
    /// Last sequence number handed to the OS.
    pub written_seq: u64,
    /// Bytes written since open (framing and headers included).
    pub bytes_written: u64,
    /// Every activated segment still on disk, by id.
    pub segments: BTreeMap<u64, SegInfo>,
    buf: Vec<u8>,
    /// Every fsync of the log goes through it, the seals here and the engine's syncs.
    sync: Arc<LogSync>,
    /// An encrypted store's keyring: every segment taken for appends gets a fresh data key.
    keyring: Option<Arc<Keyring>>,
}

/// The state recovery leaves the log in.
pub(crate) struct LogStart {
    /// `None`: no room for a fresh segment at open; the first write makes segment `active_id`.
    pub active: Option<SegmentFile>,
    pub active_id: u64,
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
        keyring: Option<Arc<Keyring>>,
    ) -> LogWriter {
        debug_assert!(start.activated || start.write_offset == 0);
        debug_assert!(start.active.as_ref().is_none_or(|a| a.id == start.active_id));
        debug_assert!(start.active.is_some() || !start.activated);
        LogWriter {
            storage,
            layout,
            segment_size,
            spare,
            prepare_ahead,
            active: start.active,
            active_id: start.active_id,
            reserved: VecDeque::new(),
            full_logged: false,
            write_offset: start.write_offset,
            activated: start.activated,
            // Recovery made the active segment durable (its step 8).
            header_synced: start.activated,
            written_seq: start.written_seq,
            bytes_written: 0,
            segments: start.segments,
            buf: Vec::new(),
            // Recovery fsynced the log it read before handing it over (docs/design.md,
            // "Recovery", step 8): everything written so far is durable.
            sync: Arc::new(LogSync::new(start.written_seq)),
            keyring,
        }
    }

    /// The format version of the records this writer appends: 3 in an encrypted store, else 2.
    pub(crate) fn version(&self) -> u32 {
        if self.keyring.is_some() {
            format::FORMAT_VERSION_ENCRYPTED
        } else {
            format::FORMAT_VERSION
        }
    }

    /// The active segment's id, or the id of the one the next append makes.
    pub(crate) fn active_id(&self) -> u64 {
        self.active_id
    }

    /// The id of the next segment the log will need: the one after the active segment, or the
    /// active one itself if it is not made yet.
    pub(crate) fn next_segment_id(&self) -> u64 {
        if self.active.is_some() {
            self.active_id + 1
        } else {
            self.active_id
        }
    }

    /// What every fsync of the log goes through, and what they made durable.
    pub(crate) fn log_sync(&self) -> Arc<LogSync> {
        self.sync.clone()
    }

    /// What an fsync of the active segment would make durable: every record written so far (an
    /// older segment was fsynced when it was sealed). With no active segment nothing was written
    /// since recovery made the log durable: there is nothing to fsync.
    pub(crate) fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            file: self.active.as_ref().map(|a| (a.file.clone(), a.path.clone())),
            through: self.written_seq,
        }
    }

    /// Makes ready every segment a group of records with these payload sizes will roll into,
    /// before any of it is written: a full disk fails the group here, with nothing written and
    /// nothing to undo ([`Error::StorageFull`], saying how much room a segment needs).
    pub(crate) fn reserve(&mut self, payload_lens: impl Iterator<Item = usize>) -> Result<()> {
        let new = self.segments_needed(payload_lens);
        let first = self.next_segment_id();
        for id in first..first + new {
            if self.reserved.iter().any(|s| s.id == id) {
                continue;
            }
            let seg = match self.make(id) {
                Ok(seg) => seg,
                Err(e) => {
                    if e.is_storage_full() && !self.full_logged {
                        self.full_logged = true;
                        tracing::warn!(target: "sessiondb", error = %e, "storage full: writes refused until there is room");
                    }
                    return Err(e);
                }
            };
            self.reserved.push_back(seg);
        }
        self.full_logged = false;
        Ok(())
    }

    /// How many new segments appending records of these payload sizes rolls into; the same
    /// decisions [`LogWriter::append`] makes.
    fn segments_needed(&self, payload_lens: impl Iterator<Item = usize>) -> u64 {
        let (mut at, mut activated, mut capacity) = match &self.active {
            Some(a) => (self.write_offset, self.activated, a.capacity),
            None => (0, false, 0),
        };
        let mut new = 0;
        for len in payload_lens {
            let header = |activated: bool| if activated { 0 } else { SEGMENT_HEADER_SIZE };
            let mut need = (RECORD_HEADER_SIZE + len + header(activated)) as u64;
            if at + need > capacity {
                new += 1;
                (at, capacity) = (0, self.segment_size);
                need = (RECORD_HEADER_SIZE + len + SEGMENT_HEADER_SIZE) as u64;
            }
            at += need;
            activated = true;
        }
        new
    }

    /// Segment `id`: reserved, prepared by the background preparer, or created now. If it
    /// cannot be created the preparer is asked to keep trying.
    fn make(&mut self, id: u64) -> Result<SegmentFile> {
        if self.reserved.front().is_some_and(|s| s.id == id) {
            if let Some(seg) = self.reserved.pop_front() {
                return Ok(seg);
            }
        }
        let seg = match self.spare.take(id) {
            Some(seg) => seg,
            None => self
                .spare
                .make_segment(self.storage.as_ref(), &self.layout, id, self.segment_size)
                .inspect_err(|_| {
                    if self.prepare_ahead {
                        self.spare.give_back(id);
                    }
                })?,
        };
        self.with_fresh_key(seg)
    }

    /// In an encrypted store, `seg` with a new data key, durable in the keyring before anything
    /// is sealed with it. A segment is given a key only here, when it is taken for appends.
    pub(crate) fn with_fresh_key(&self, mut seg: SegmentFile) -> Result<SegmentFile> {
        if let Some(keyring) = &self.keyring {
            seg.cipher = Some(keyring.fresh(FileId::Segment(seg.id))?);
        }
        Ok(seg)
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
    pub(crate) fn append(&mut self, records: &mut [PendingRecord], placed: &mut Vec<(u64, u64)>) -> Result<Placement> {
        debug_assert!(placed.is_empty());
        let mut placement = Placement::default();
        self.buf.clear();
        let mut buf_at = self.write_offset;
        // Read once per group, and again after a seal (which makes everything before it durable).
        let mut durable_seq = self.sync.durable_seq();
        if self.active.is_none() {
            // An open without room for a segment: the first group makes it.
            let first = self.make(self.active_id)?;
            self.active = Some(first);
        }
        if self.rolls_whole(records, durable_seq) {
            placement.sealed.extend(self.roll()?);
            buf_at = 0;
        }
        for rec in records {
            debug_assert_eq!(rec.seq, self.written_seq + 1, "records are appended in sequence");
            let need = RECORD_HEADER_SIZE + rec.payload.len() + if self.activated { 0 } else { SEGMENT_HEADER_SIZE };
            if buf_at + self.buf.len() as u64 + need as u64 > self.capacity() {
                self.flush(buf_at)?;
                placement.sealed.extend(self.roll()?);
                durable_seq = self.sync.durable_seq();
                buf_at = 0;
            }
            if !self.activated {
                debug_assert_eq!(buf_at + self.buf.len() as u64, 0);
                let header =
                    format::encode_segment_header(SegmentHeader::with_version(self.active_id, rec.seq, self.version()));
                self.buf.extend_from_slice(&header);
                self.activated = true;
                self.header_synced = false;
                self.segments.insert(
                    self.active_id,
                    SegInfo {
                        first_seq: rec.seq,
                        bytes: 0,
                    },
                );
                placement.activated.extend(self.active.clone());
            }
            let end = buf_at + (self.buf.len() + RECORD_HEADER_SIZE + rec.payload.len()) as u64;
            if end + ZERO_TAIL_MIN as u64 > self.capacity() && !self.header_durable() {
                // Recovery tells a torn activation (header and records lost or torn together,
                // nothing synced) from damage by the segment's last 4 KiB being zero: so they
                // are not written until the header is durable (docs/design.md, row R6).
                self.flush(buf_at)?;
                buf_at = self.write_offset;
                self.sync()?;
                self.header_synced = true;
                durable_seq = self.sync.durable_seq();
            }
            let offset = buf_at + self.buf.len() as u64;
            placed.push((self.active_id, offset));
            if let Some(cipher) = self.active.as_ref().and_then(|a| a.cipher.as_ref()) {
                let payload_at = offset + RECORD_HEADER_SIZE as u64;
                format::seal_ops(&mut rec.payload, cipher, self.active_id, payload_at, rec.seq);
            }
            format::encode_record(
                &mut self.buf,
                self.active_id,
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

    /// Whether `records` go whole into the next segment: they do not fit in the rest of the
    /// active one, they fit in a fresh one (with room to spare for the segment's last 4 KiB),
    /// and everything in the active segment is durable already, so the roll seals it without an
    /// fsync and the group waits for its own fsync alone instead of the seal's and its own
    /// (issue 17: at 64 writers of 4 KiB, one group in 60 rolled and owned the 99th percentile).
    /// The rest of the active segment stays zero, as after a record that did not fit. Either way
    /// the group takes one new segment, so [`LogWriter::reserve`] counts the same.
    fn rolls_whole(&self, records: &[PendingRecord], durable_seq: u64) -> bool {
        if !self.activated || durable_seq < self.written_seq || !self.header_durable() {
            return false;
        }
        let total: u64 = records
            .iter()
            .map(|r| (RECORD_HEADER_SIZE + r.payload.len()) as u64)
            .sum();
        self.write_offset + total > self.capacity()
            && total + (SEGMENT_HEADER_SIZE + ZERO_TAIL_MIN) as u64 <= self.segment_size
    }

    /// The active segment's size (0 with none: the first append makes one).
    fn capacity(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.capacity)
    }

    fn flush(&mut self, at: u64) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(at, self.write_offset);
        debug_assert!(at + self.buf.len() as u64 <= self.capacity());
        let Some(active) = &self.active else {
            // NOTE: append makes a segment before it frames anything.
            return Err(Error::Poisoned {
                cause: "records framed with no segment to write them to".into(),
            });
        };
        // The end marker goes in the same write, after the records: the next write overwrites
        // it. In a recycled segment the old bytes after it are not read (docs/format.md, "The
        // end of the written log"); in a zero-filled one it was zero already.
        let len = self.buf.len();
        let marker = (active.capacity - (at + len as u64)).min(END_MARKER_SIZE as u64) as usize;
        self.buf.resize(len + marker, 0);
        write_all_at(active.file.as_ref(), &self.buf, at).map_err(|e| Error::io("write", &active.path, e))?;
        self.write_offset += len as u64;
        self.bytes_written += len as u64;
        if let Some(info) = self.segments.get_mut(&self.active_id) {
            info.bytes = self.write_offset;
        }
        self.buf.clear();
        Ok(())
    }

    /// Seals the active segment (fsync) and switches to the next one, which is durable and
    /// zero-filled before anything is written to it. Returns the sealed segment (`None` if there
    /// was no active one).
    fn roll(&mut self) -> Result<Option<SegmentFile>> {
        // Nothing to seal when every record written is durable (its header with them).
        let sealed = self.sync.durable_seq() >= self.written_seq && self.header_durable();
        if self.active.is_some() && !sealed {
            self.sync()?;
        }
        let next_id = self.next_segment_id();
        let next = self.make(next_id)?;
        if self.prepare_ahead {
            let ahead = self.reserved.back().map_or(next_id, |s| s.id) + 1;
            self.spare.want(ahead);
        }
        self.write_offset = 0;
        self.activated = false;
        self.active_id = next_id;
        Ok(self.active.replace(next))
    }

    /// For a checkpoint at `written_seq`: seals the active segment and starts the next one with
    /// its header (first sequence `written_seq + 1`), so every segment before it is wholly
    /// covered by the snapshot and recovery never rescans records the snapshot holds. Returns
    /// the sealed and the new segment, or `None` if the active segment holds nothing yet.
    /// A segment that holds only such a header (a checkpoint that failed after its roll, with
    /// no write since) already starts where this one would: it is not rolled again, so retrying
    /// a checkpoint on a full disk does not take one more segment of room each time (issue 15).
    pub(crate) fn roll_for_checkpoint(&mut self) -> Result<Option<(SegmentFile, SegmentFile)>> {
        if !self.activated || self.holds_only_header() {
            return Ok(None);
        }
        let Some(sealed) = self.roll()? else {
            return Ok(None);
        };
        let first_seq = self.written_seq + 1;
        let mut header =
            format::encode_segment_header(SegmentHeader::with_version(self.active_id, first_seq, self.version()))
                .to_vec();
        header.extend_from_slice(&[0; END_MARKER_SIZE]);
        let Some(active) = self.active.clone() else {
            return Ok(None);
        };
        // The header must be durable before the checkpoint deletes the segments before it:
        // recovery tells a segment that reappears after a lost unlink (F4) from a live one by the
        // first sequence number of the segment after it. A torn, unsynced header here once left
        // a store that could not be opened (tests/faults_checkpoint.rs).
        write_all_at(active.file.as_ref(), &header, 0).map_err(|e| Error::io("write", &active.path, e))?;
        self.sync()?;
        self.write_offset = SEGMENT_HEADER_SIZE as u64;
        self.bytes_written += SEGMENT_HEADER_SIZE as u64;
        self.activated = true;
        self.header_synced = true;
        self.segments.insert(
            self.active_id,
            SegInfo {
                first_seq,
                bytes: self.write_offset,
            },
        );
        Ok(Some((sealed, active)))
    }

    /// Undoes a checkpoint's roll that sealed `sealed`, if the segment it started still holds
    /// only its header: removes that segment (durably) and makes `sealed` the active segment
    /// again. Returns the removed segment's id; `None` if there was nothing to undo or its
    /// removal failed (the log then stays as it is). An error is a failed directory fsync after
    /// the removal: nothing may be appended then.
    pub(crate) fn unroll(&mut self, sealed: &SegmentFile) -> Result<Option<u64>> {
        let undo = self
            .active
            .as_ref()
            .filter(|a| a.id == sealed.id + 1 && self.holds_only_header());
        let (Some(active), Some(info)) = (undo, self.segments.get(&sealed.id).copied()) else {
            return Ok(None);
        };
        let (gone, path) = (active.id, active.path.clone());
        if self.storage.remove(&path).is_err() {
            return Ok(None);
        }
        let wal = self.layout.wal_dir();
        self.storage.sync_dir(wal).map_err(|e| Error::io("fsync", wal, e))?;
        self.segments.remove(&gone);
        self.active = Some(sealed.clone());
        self.active_id = sealed.id;
        self.write_offset = info.bytes;
        self.activated = true;
        self.bytes_written -= SEGMENT_HEADER_SIZE as u64;
        if self.prepare_ahead {
            self.spare.give_back(gone);
        }
        Ok(Some(gone))
    }

    /// Whether the active segment holds a header and no record: it starts right after the last
    /// record written.
    fn holds_only_header(&self) -> bool {
        self.activated
            && self.write_offset == SEGMENT_HEADER_SIZE as u64
            && self
                .segments
                .get(&self.active_id)
                .is_some_and(|s| s.first_seq == self.written_seq + 1)
    }

    /// Whether the active segment's header is known durable: synced on its own (a checkpoint's
    /// roll, or before the segment's last bytes), or a record of the segment is.
    fn header_durable(&self) -> bool {
        self.header_synced
            || self
                .segments
                .get(&self.active_id)
                .is_some_and(|s| self.sync.durable_seq() >= s.first_seq)
    }

    /// `fdatasync` of the active segment: every record written so far becomes durable.
    fn sync(&self) -> Result<()> {
        self.sync.sync(&self.sync_target())
    }
}
