//! Reads: point lookups, scans a chunk at a time, and reading a value back from the file the
//! index points into, checked to be the value of that key at that version
//! (docs/design.md, "Index and reads").

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use crate::error::{show_key, Error, Result};
use crate::format::{self, RECORD_HEADER_SIZE};
use crate::index::{Entry, FileId, Index, Key, Loc, Source, SourceData};
use crate::storage::read_exact_at;

use super::Engine;

/// An entry of a scan with the file to read its value from.
pub(crate) type ScanItem = (Key, Entry, Source);

/// Entries fetched per index lock hold in scans.
const SCAN_CHUNK: usize = 256;

impl Engine {
    /// The live value of `key`, its version and its expiry deadline (0: none).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64, u64)>> {
        let now = self.now_ms();
        let found = {
            let index = self.index.read();
            match index.get(key) {
                Some(e) if e.is_live(now) => Some((e, self.source_of(&index, key, e.loc)?)),
                _ => None,
            }
        };
        match found {
            Some((entry, source)) => Ok(Some((
                self.read_value(&source, key, &entry)?,
                entry.seq.get(),
                entry.expires_at_ms,
            ))),
            None => Ok(None),
        }
    }

    /// One bounded pass of the expiry sweeper over up to `max` entries after `from`: drops the
    /// expired ones from the index (their bytes go at the next checkpoint). Holds the commit
    /// lock, so no touch can be decided meanwhile, and skips keys with a write pending, so a
    /// touch ordered before the pass still finds its entry. Returns `(examined, dropped, last
    /// key examined)`; `None` when the pass reached the end of the index.
    pub(crate) fn sweep_pass(&self, from: Bound<&[u8]>, max: usize) -> (usize, usize, Option<Key>) {
        let st = self.commit.lock();
        let now = self.now_ms();
        let mut index = self.index.write();
        let chunk = index.range_chunk(from, Bound::Unbounded, max);
        let mut dropped = 0;
        for (key, e) in &chunk {
            if !e.is_live(now) && !st.is_pending(key) {
                index.delete(key);
                dropped += 1;
            }
        }
        drop(index);
        drop(st);
        self.counters.expired_swept.fetch_add(dropped as u64, Ordering::Relaxed);
        let examined = chunk.len();
        let last = if examined < max {
            None
        } else {
            chunk.into_iter().next_back().map(|(k, _)| k)
        };
        (examined, dropped, last)
    }

    /// The file `key`'s entry `loc` points into. Every entry's file is in the index's table
    /// (apply and recovery add it first, a checkpoint removes a file only once no entry points
    /// into it, and file numbers are never reused): a miss is a bug of ours, reported with the
    /// key rather than read from another file or panicking.
    pub(crate) fn source_of(&self, index: &Index, key: &[u8], loc: Loc) -> Result<Source> {
        index.source(loc.slot).cloned().ok_or_else(|| {
            let path = index
                .file_of(loc.slot)
                .map_or_else(|| self.layout.dir().to_path_buf(), |f| self.file_path(f));
            Error::corruption(
                path,
                loc.offset,
                format!(
                    "the entry of key {} points into file {}, which is not open",
                    show_key(key),
                    loc.slot
                ),
            )
        })
    }

    pub(crate) fn file_path(&self, file: FileId) -> std::path::PathBuf {
        match file {
            FileId::Segment(id) => self.layout.segment(id),
            FileId::Snapshot(seq) => self.layout.snapshot(seq),
        }
    }

    /// The value `entry` of `key` points at, from `source`, returned only once the bytes around
    /// it show that it is `key`'s value of that version ([`Engine::read_checked`]).
    pub(crate) fn read_value(&self, source: &Source, key: &[u8], entry: &Entry) -> Result<Vec<u8>> {
        self.read_checked(source, key, entry).map(|(value, _)| value)
    }

    /// The value `entry` of `key` points at, from `source`, once it is shown to be `key`'s value
    /// of that version, with its value checksum if the file stores one. In a file of format
    /// version 2 (docs/format.md, "Value checksums"), the bytes read are the value and what
    /// frames it (the put or the snapshot entry, which name the key and the length), and the
    /// value checksum binds them to the key and the version: O(key + value) bytes, whatever the
    /// record around them. In a file of version 1: in a log record, the whole record's checksum
    /// (seeded with its segment's id), its sequence number and the put's key; in a snapshot, the
    /// entry's key, sequence number and length. A location into the wrong place, or bytes
    /// damaged since they were written, are `Corruption` naming the file, the offset and the
    /// key, never a value.
    pub(crate) fn read_checked(&self, source: &Source, key: &[u8], entry: &Entry) -> Result<(Vec<u8>, Option<u32>)> {
        let loc = entry.loc;
        let seq = entry.seq.get();
        let not_its = |at: u64, why: &str| self.not_the_value(source, key, seq, at, why);
        let value_len = loc.len as usize;
        if source.version == format::FORMAT_VERSION_ENCRYPTED {
            return self.read_sealed_value(source, key, entry).map(|v| (v, None));
        }
        let (back, tail) = match source.file {
            FileId::Snapshot(_) => (format::snapshot_value_back(key.len(), source.version), 0),
            FileId::Segment(_) if source.version == 1 => return self.read_v1_record_value(source, key, entry),
            FileId::Segment(_) => (format::log_value_back(key.len()), format::VALUE_CRC_SIZE),
        };
        let Some(start) = loc.offset.checked_sub(back as u64) else {
            return Err(not_its(loc.offset, "it lies at the start of the file"));
        };
        let len = back + value_len + tail;
        let check = |b: &[u8]| match source.file {
            FileId::Snapshot(_) => format::check_snapshot_value(b, key, value_len, seq, source.version),
            FileId::Segment(_) => format::check_log_value(b, key, value_len, seq).map(Some),
        };
        match &source.data {
            SourceData::Bytes(bytes) => {
                // Checked where it lies; only the value is copied.
                let b = self.slice(source, bytes.bytes(), start, len)?;
                let crc = check(b).map_err(|d| not_its(start + d.offset, &d.reason))?;
                Ok((b[back..back + value_len].to_vec(), crc))
            }
            SourceData::File(_) => {
                let b = self.read_bytes(source, start, len)?;
                let crc = check(&b).map_err(|d| not_its(start + d.offset, &d.reason))?;
                Ok((cut_to(b, back..back + value_len), crc))
            }
        }
    }

    /// The error for bytes at `at` of `source` that are not `key`'s value at version `seq`.
    fn not_the_value(&self, source: &Source, key: &[u8], seq: u64, at: u64, why: &str) -> Error {
        Error::corruption(
            self.file_path(source.file),
            at,
            format!(
                "the bytes here are not the value of key {} at version {seq}: {why}",
                show_key(key)
            ),
        )
    }

    /// A value in a file of an encrypted store (format version 3): the sealed put or snapshot
    /// entry is read (O(key + value) bytes), its framing checked against the index entry, and
    /// opened with the file's data key, its placement (file, offset, version) as associated
    /// data: bytes damaged, moved from another place, file or store, or of another version,
    /// do not authenticate and are `Corruption`, never a value.
    fn read_sealed_value(&self, source: &Source, key: &[u8], entry: &Entry) -> Result<Vec<u8>> {
        let loc = entry.loc;
        let seq = entry.seq.get();
        let value_len = loc.len as usize;
        let not_its = |at: u64, why: &str| self.not_the_value(source, key, seq, at, why);
        let Some(cipher) = &source.cipher else {
            return Err(not_its(loc.offset, "the file has no data key in the keyring"));
        };
        let (back, tail) = match source.file {
            // A value and its tag: its place came from the block's authenticated directory.
            FileId::Snapshot(_) => (0, crate::crypto::TAG_BYTES),
            FileId::Segment(_) => (format::log_value_back_encrypted(key.len()), crate::crypto::TAG_BYTES),
        };
        let Some(start) = loc.offset.checked_sub(back as u64) else {
            return Err(not_its(loc.offset, "it lies at the start of the file"));
        };
        let mut b = self.read_bytes(source, start, back + value_len + tail)?;
        let opened = match source.file {
            FileId::Snapshot(base) => {
                format::check_snapshot_value_encrypted(&mut b, value_len, seq, cipher, base, start)
            }
            FileId::Segment(id) => format::check_log_value_encrypted(&mut b, key, value_len, seq, cipher, id, start),
        };
        opened.map_err(|d| not_its(start + d.offset, &d.reason))?;
        Ok(cut_to(b, back..back + value_len))
    }

    /// A value in a log record of format version 1, which has no value checksum: the whole
    /// record is read and its checksum checked before a byte of it is trusted.
    fn read_v1_record_value(&self, source: &Source, key: &[u8], entry: &Entry) -> Result<(Vec<u8>, Option<u32>)> {
        let loc = entry.loc;
        let seq = entry.seq.get();
        let path = || self.file_path(source.file);
        let start = loc.offset.checked_sub(u64::from(loc.record_back));
        let (FileId::Segment(segment_id), Some(start), true) = (source.file, start, loc.record_len > 0) else {
            return Err(Error::corruption(path(), loc.offset, "index entry names no log record"));
        };
        let back = loc.record_back as usize;
        let end = back + loc.len as usize;
        let check = |record: &[u8]| match format::decode_record(record, segment_id, crate::limits::RECORD_PAYLOAD_MAX) {
            format::RecordState::Valid(r) if r.len == record.len() && end <= record.len() => {
                let in_payload = back.checked_sub(RECORD_HEADER_SIZE);
                match in_payload {
                    Some(at) if r.seq == seq && format::put_value_is_for(r.payload, at, key, loc.len as usize) => {
                        Ok(())
                    }
                    _ => Err(Error::corruption(
                        path(),
                        start,
                        format!(
                            "the bytes here are not the value of key {} at version {seq}",
                            show_key(key)
                        ),
                    )),
                }
            }
            _ => Err(Error::corruption(path(), start, "record read back does not verify")),
        };
        match &source.data {
            SourceData::Bytes(bytes) => {
                let record = self.slice(source, bytes.bytes(), start, loc.record_len as usize)?;
                check(record)?;
                Ok((record[back..end].to_vec(), None))
            }
            SourceData::File(_) => {
                let record = self.read_bytes(source, start, loc.record_len as usize)?;
                check(&record)?;
                Ok((cut_to(record, back..end), None))
            }
        }
    }

    /// `len` bytes at `offset` of `b`, the bytes of `source`.
    fn slice<'b>(&self, source: &Source, b: &'b [u8], offset: u64, len: usize) -> Result<&'b [u8]> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        start.checked_add(len).and_then(|end| b.get(start..end)).ok_or_else(|| {
            Error::corruption(
                self.file_path(source.file),
                offset,
                "value lies past the end of the file",
            )
        })
    }

    fn read_bytes(&self, source: &Source, offset: u64, len: usize) -> Result<Vec<u8>> {
        match &source.data {
            SourceData::Bytes(bytes) => self.slice(source, bytes.bytes(), offset, len).map(<[u8]>::to_vec),
            SourceData::File(file) => {
                let mut v = vec![0u8; len];
                read_exact_at(file.as_ref(), &mut v, offset)
                    .map_err(|e| Error::read(self.file_path(source.file), e))?;
                Ok(v)
            }
        }
    }

    /// The next chunk of entries in `(lower, upper)`: the live ones with their sources, and the
    /// last key examined (live or not), where the next chunk starts; `None` when the chunk
    /// reached the end of the range. One hold of the index lock, liveness judged at one time
    /// read just before it: a chunk is the store's state at one moment, and so is a whole scan
    /// of a range that holds fewer entries than a chunk.
    fn scan_chunk(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> Result<(Vec<ScanItem>, Option<Key>)> {
        let now = self.now_ms();
        let index = self.index.read();
        let chunk = index.range_chunk(lower, upper, SCAN_CHUNK);
        // NOTE: a chunk shorter than asked for ends the range; fetching another one later could
        // add keys written after this one was read (a scan that shows half a batch).
        let last = if chunk.len() < SCAN_CHUNK {
            None
        } else {
            chunk.last().map(|(k, _)| k.clone())
        };
        let live = chunk
            .into_iter()
            .filter(|(_, e)| e.is_live(now))
            .map(|(k, e)| {
                let source = self.source_of(&index, &k, e.loc)?;
                Ok((k, e, source))
            })
            .collect::<Result<_>>()?;
        Ok((live, last))
    }
}

/// The bytes of `range` in `b`, in `b`'s own allocation (a positioned read's buffer cut down to
/// the value it holds: one allocation per read).
fn cut_to(mut b: Vec<u8>, range: std::ops::Range<usize>) -> Vec<u8> {
    b.truncate(range.end);
    b.drain(..range.start);
    b
}

/// A scan's position: live entries in `(lower, upper)`, fetched a chunk at a time so writers
/// are never blocked for long ([`Engine::scan_chunk`]). Entries written during the scan may or
/// may not be seen; each chunk is the state at one moment.
struct Cursor {
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    buffer: VecDeque<ScanItem>,
    done: bool,
}

impl Cursor {
    fn new(lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Cursor {
        let empty = match (&lower, &upper) {
            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
                l > u || (l == u && !(matches!(lower, Bound::Included(_)) && matches!(upper, Bound::Included(_))))
            }
            _ => false,
        };
        Cursor {
            lower,
            upper,
            buffer: VecDeque::new(),
            done: empty,
        }
    }

    /// The next live entry with the file to read its value from; an error ends the scan.
    fn next(&mut self, engine: &Engine) -> Option<Result<ScanItem>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            match engine.scan_chunk(as_slice_bound(&self.lower), as_slice_bound(&self.upper)) {
                Ok((live, last)) => {
                    match last {
                        Some(k) => self.lower = Bound::Excluded(k.to_vec()),
                        None => self.done = true,
                    }
                    self.buffer.extend(live);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// A live entry with its value, as scans return it.
pub(crate) struct Live {
    pub key: Key,
    pub value: Vec<u8>,
    /// Its version: the sequence number of the write that set it.
    pub seq: u64,
    /// Its deadline (ms since the epoch), 0 for none.
    pub expires_at_ms: u64,
}

/// Live entries in a key range with their values, in key order: the one iterator behind
/// [`crate::Db::scan`] and the inspection tools' entries. The index is read a chunk at a time
/// ([`Cursor`]); each value is read back and checked as [`Engine::read_value`] does.
pub(crate) struct Entries<'e> {
    engine: &'e Engine,
    cursor: Cursor,
}

impl<'e> Entries<'e> {
    pub(crate) fn new(engine: &'e Engine, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Entries<'e> {
        Entries {
            engine,
            cursor: Cursor::new(lower, upper),
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Live>;

    fn next(&mut self) -> Option<Result<Live>> {
        let item = self.cursor.next(self.engine)?;
        Some(item.and_then(|(key, entry, source)| {
            let value = self.engine.read_value(&source, &key, &entry)?;
            Ok(Live {
                key,
                value,
                seq: entry.seq.get(),
                expires_at_ms: entry.expires_at_ms,
            })
        }))
    }
}
