//! Entry points for the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`): the engine's own segment reader and snapshot decoder, run on
//! bytes in memory. Compiled only with the `sim` feature and hidden from the docs; nothing here
//! is a second copy of any logic, each function only calls what recovery and repair call.

use std::path::Path;
use std::sync::Arc;

use crate::checkpoint;
use crate::error::Result;
use crate::index::{FileId, Index};
use crate::options::RecoveryMode;
use crate::storage::FileBytes;
use crate::wal::reader::{self, ScanInput};

use super::LiveEntry;

/// A valid record the reader accepted, as recovery would replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Offset of the record's first byte in the segment.
    pub offset: u64,
    /// Header plus payload.
    pub len: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its `durable_seq` field.
    pub durable_seq: u64,
}

/// What the reader made of one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentOutcome {
    /// The header's first sequence number, if the header verifies.
    pub first_seq: Option<u64>,
    /// The records replayed, in order.
    pub records: Vec<ScannedRecord>,
    /// End of the last valid record (0 if nothing usable).
    pub valid_end: u64,
    /// End of the non-zero bytes recovery would zero (a torn tail) when `dirty_end > valid_end`.
    pub dirty_end: u64,
    /// Damaged regions skipped (salvage).
    pub skipped: usize,
}

/// Runs the recovery decision table (`wal/reader.rs`) over `bytes` as segment `segment_id`,
/// with the payload bound recovery uses.
pub fn scan_segment(
    bytes: &[u8],
    segment_id: u64,
    is_last: bool,
    mode: RecoveryMode,
    expected_seq: Option<u64>,
) -> Result<SegmentOutcome> {
    let input = ScanInput {
        bytes,
        segment_id,
        path: Path::new("wal/fuzz.wal"),
        payload_max: crate::limits::RECORD_PAYLOAD_MAX,
        is_last,
        mode,
        expected_seq,
        data_end: reader::nonzero_end(bytes),
    };
    let mut records = Vec::new();
    let scan = reader::scan_segment(&input, |offset, r, _version| {
        records.push(ScannedRecord {
            offset,
            len: r.len as u64,
            seq: r.seq,
            durable_seq: r.durable_seq,
        });
        Ok(())
    })?;
    Ok(SegmentOutcome {
        first_seq: scan.header.map(|h| h.first_seq),
        records,
        valid_end: scan.valid_end,
        dirty_end: scan.dirty_end,
        skipped: scan.skipped.len(),
    })
}

/// A snapshot as recovery loads it: its `end_seq` and entries in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSnapshot {
    /// The footer's `end_seq`.
    pub end_seq: u64,
    /// Every entry, expired ones included; each value read where the index would read it.
    pub items: Vec<LiveEntry>,
}

/// Verifies and decodes `bytes` as the snapshot named `<base_seq>.snap`, as recovery does.
pub fn decode_snapshot(bytes: &[u8], base_seq: u64) -> Result<DecodedSnapshot> {
    let owned = Arc::new(FileBytes::Owned(bytes.to_vec()));
    let slot = Index::default().slot(FileId::Snapshot(base_seq));
    let (loaded, entries) = checkpoint::decode_snapshot(owned, Path::new("fuzz.snap"), base_seq, slot, None)?;
    let items = entries
        .into_iter()
        .map(|(key, e)| {
            // NOTE: the decoder checked every value against the file before handing out its
            // location; `get` keeps a wrong one from panicking all the same.
            let at = e.offset as usize;
            let value = bytes.get(at..at + e.len as usize).unwrap_or_default().to_vec();
            LiveEntry::new(key.as_bytes().to_vec(), value, e.seq.get(), e.expires_at_ms)
        })
        .collect();
    Ok(DecodedSnapshot {
        end_seq: loaded.end_seq,
        items,
    })
}

/// The problems `verify` lists for `bytes` as the snapshot `<base_seq>.snap` (block by block).
pub fn snapshot_problems(bytes: &[u8], base_seq: u64) -> Vec<super::Problem> {
    let mut problems = Vec::new();
    super::walk_snapshot(bytes, Path::new("fuzz.snap"), base_seq, &mut problems);
    problems
}

/// What `repair` rebuilds from a damaged snapshot: its bytes, the entries kept, and the entry
/// count the footer claimed. `None` for another format version.
pub fn salvage_snapshot(bytes: &[u8], base_seq: u64) -> Option<(Vec<u8>, u64, Option<u64>)> {
    super::salvage_snapshot(bytes, Path::new("fuzz.snap"), base_seq)
}
