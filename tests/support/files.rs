//! The files of a store: its segments and snapshots, their contents as the documented framing
//! lays them out (a parser used only to find record boundaries for the tamper tests; the
//! engine's own parser is what is under test), directory copies and damage.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sessiondb::{Db, Error};

/// Every live entry, through a full range scan (which must not fail).
pub fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut last: Option<Vec<u8>> = None;
    for item in db.range::<&[u8], _>(..) {
        let (k, v) = item.expect("full range scan failed");
        if let Some(prev) = &last {
            assert!(prev < &k, "range scan is not strictly ascending: {prev:?} then {k:?}");
        }
        last = Some(k.clone());
        out.insert(k, v);
    }
    out
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dst);
        } else if ty.is_file() {
            fs::copy(entry.path(), &dst).unwrap();
        }
    }
}

/// Paths of files in `dir` whose names end in `ext`, sorted by name.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(ext)))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Segment files of the store in `dir`, in log order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(&dir.join("wal"), ".wal")
}

/// Snapshot files of the store in `dir`, in order.
pub fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, ".snap")
}

// ---------------------------------------------------------------------------------------------
// Segment framing, from the documented format: a 40-byte header (magic at 0, version u32 at 8,
// segment id u64 at 16, first seq u64 at 24), then records back to back, each a 25-byte header
// [len u32][crc32 u32][seq u64][durable_seq u64][kind u8] and `len` payload bytes; a zero
// length (or the end of the file) ends the log.

pub const SEGMENT_HEADER_SIZE: usize = 40;
pub const RECORD_HEADER_SIZE: usize = 25;
pub const SEGMENT_MAGIC: &[u8; 8] = b"SDB-WAL\0";

/// One record's place in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// Offset of the record's first byte.
    pub start: u64,
    /// Header plus payload.
    pub len: u64,
    pub seq: u64,
    pub durable_seq: u64,
}

impl RecordPos {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// True when the file starts with our segment magic (a spare preallocated segment may be all
/// zero).
pub fn has_segment_header(bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_SIZE && &bytes[..8] == SEGMENT_MAGIC
}

/// The first sequence number a segment's header declares.
pub fn segment_first_seq(bytes: &[u8]) -> u64 {
    assert!(has_segment_header(bytes), "not a segment");
    u64_at(bytes, 24)
}

/// Record positions in a segment's bytes (no checksum verification: test-written files only).
pub fn parse_records(bytes: &[u8]) -> Vec<RecordPos> {
    let mut out = Vec::new();
    if !has_segment_header(bytes) {
        return out;
    }
    let mut at = SEGMENT_HEADER_SIZE;
    while at + RECORD_HEADER_SIZE <= bytes.len() {
        let len = u32_at(bytes, at) as usize;
        if len == 0 || at + RECORD_HEADER_SIZE + len > bytes.len() {
            break;
        }
        out.push(RecordPos {
            start: at as u64,
            len: (RECORD_HEADER_SIZE + len) as u64,
            seq: u64_at(bytes, at + 8),
            durable_seq: u64_at(bytes, at + 16),
        });
        at += RECORD_HEADER_SIZE + len;
    }
    out
}

/// Segments that hold at least one record, with their records, in log order.
pub fn segments_with_records(dir: &Path) -> Vec<(PathBuf, Vec<RecordPos>)> {
    segment_files(dir)
        .into_iter()
        .filter_map(|p| {
            let recs = parse_records(&fs::read(&p).unwrap());
            (!recs.is_empty()).then_some((p, recs))
        })
        .collect()
}

/// Asserts that `result` is a `Corruption` naming `segment` (by its `wal/<name>`, wherever the
/// store is) at an offset inside the damaged record `rec`.
pub fn assert_corruption_in(result: sessiondb::Result<Db>, segment: &Path, rec: RecordPos, what: &str) {
    match result {
        Err(Error::Corruption { path, offset, reason }) => {
            assert!(
                path.ends_with(wal_relative(segment)),
                "{what}: Corruption names {} instead of {} ({reason})",
                path.display(),
                segment.display()
            );
            assert!(
                (rec.start..rec.end()).contains(&offset),
                "{what}: offset {offset} is outside the damaged record {}..{} ({reason})",
                rec.start,
                rec.end()
            );
        }
        Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
        Ok(db) => panic!("{what}: the damaged store opened; it holds {} keys", db.stats().keys),
    }
}

/// Flips every bit of the byte at `offset` in `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xFF;
    fs::write(path, bytes).unwrap();
}

/// `wal/<name>` for a segment path.
pub fn wal_relative(segment: &Path) -> PathBuf {
    Path::new("wal").join(segment.file_name().unwrap())
}
