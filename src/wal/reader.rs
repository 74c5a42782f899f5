//! Reading a segment back: the recovery decision table, cases R1 to R9 of docs/design.md
//! ("The decision table"). In short: damage in the last segment that no later record vouches
//! for is a torn tail and is cut; any other damage is corruption, or in `Salvage` skipped and
//! reported. A record vouches for damage when its `durable_seq` reaches the sequence number
//! expected where the damage is: that write had been fsynced.

// Decoders and recovery read bytes a file may have damaged: no unwrap or expect here, only
// errors that name the damage.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{
    self, HeaderState, RecordRef, RecordState, SegmentHeader, KIND_OPS, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use crate::limits;
use crate::options::RecoveryMode;
use crate::stats::Skipped;

/// Bytes at the end of a file that must be zero for a damaged header to count as a torn
/// activation of one of our preallocated segments.
const ZERO_TAIL_MIN: usize = 4096;

/// What to scan and how.
pub(crate) struct ScanInput<'a> {
    pub bytes: &'a [u8],
    pub segment_id: u64,
    pub path: &'a Path,
    pub payload_max: usize,
    /// The last segment of the log (the only one that may have a torn tail).
    pub is_last: bool,
    pub mode: RecoveryMode,
    /// The sequence number the first record must have, when known (from the previous segment).
    pub expected_seq: Option<u64>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct SegmentScan {
    /// The header, if the segment was activated and its header verifies.
    pub header: Option<SegmentHeader>,
    /// Sequence number of the last valid record.
    pub last_seq: Option<u64>,
    /// End of the last valid record (0 if the segment holds nothing usable).
    pub valid_end: u64,
    /// End of the last non-zero byte at or after `valid_end`; bytes in between must be zeroed
    /// before anything is appended (a stale record must never be parsed later, docs/reliability.md F9).
    pub dirty_end: u64,
    /// Damage skipped (salvage).
    pub skipped: Vec<Skipped>,
}

/// Offset one past the last non-zero byte of `b`, or 0.
pub(crate) fn nonzero_end(b: &[u8]) -> usize {
    const CHUNK: usize = 4096;
    let mut end = b.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &b[start..end];
        // NOTE: a fold, not `any`, so the compiler vectorizes the zero test.
        if chunk.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return start + chunk.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        }
        end = start;
    }
    0
}

/// The first valid record at or after `from` with a sequence number above `after_seq` (and, if
/// `durable_at_least` is set, a `durable_seq` at least that). Searches byte by byte: records are
/// not aligned. Only used on damaged regions.
fn find_record<'a>(
    input: &ScanInput<'a>,
    from: usize,
    after_seq: u64,
    durable_at_least: Option<u64>,
) -> Option<(usize, RecordRef<'a>)> {
    let b = input.bytes;
    let end = nonzero_end(b);
    // A later record's sequence number is at most one per header-size of bytes further on;
    // with no known predecessor (after_seq 0), any sequence number is plausible.
    let seq_max = if after_seq == 0 {
        u64::MAX
    } else {
        after_seq.saturating_add((b.len() / RECORD_HEADER_SIZE) as u64 + 1)
    };
    let mut p = from;
    while p + RECORD_HEADER_SIZE <= end {
        let Some(peek) = format::peek_record(&b[p..]) else {
            break;
        };
        let plausible = peek.payload_len != 0
            && (peek.payload_len as usize) <= input.payload_max
            && peek.seq > after_seq
            && peek.seq <= seq_max
            && peek.durable_seq < peek.seq
            && durable_at_least.is_none_or(|d| peek.durable_seq >= d);
        if plausible {
            if let RecordState::Valid(r) = format::decode_record(&b[p..], input.segment_id, input.payload_max) {
                return Some((p, r));
            }
        }
        p += 1;
    }
    None
}

/// Scans one segment, calling `on_record(offset, record)` for each valid record in order.
pub(crate) fn scan_segment(
    input: &ScanInput<'_>,
    mut on_record: impl FnMut(u64, RecordRef<'_>) -> Result<()>,
) -> Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    let b = input.bytes;
    let header = match format::decode_segment_header(b) {
        HeaderState::Valid(h) => h,
        HeaderState::UnsupportedVersion(found) => {
            return Err(Error::UnsupportedFormat {
                path: input.path.to_path_buf(),
                found,
                supported: format::FORMAT_VERSION,
            })
        }
        HeaderState::Zero if nonzero_end(b) == 0 => {
            if input.is_last {
                return Ok(scan);
            }
            return damaged_file(input, 0, "segment was never written but later segments exist", scan);
        }
        // A zero header with data after it is no unused spare: the header's sectors of a torn
        // activation stayed zero (or durable bytes were zeroed). Judged as a damaged header:
        // erased only as an unvouched torn activation, never in `Strict`.
        state @ (HeaderState::Zero | HeaderState::Damaged(_)) => {
            let d = match state {
                HeaderState::Damaged(d) => d,
                _ => format::Damage {
                    offset: 0,
                    reason: "segment header is zero but data follows it".to_string(),
                },
            };
            // The header went to disk with the segment's first records: it was durable iff a
            // later record's durable_seq reaches the segment's first sequence number (known from
            // the previous segment, else the lowest sequence number found in this one).
            let first = input
                .expected_seq
                .or_else(|| find_record(input, SEGMENT_HEADER_SIZE, 0, None).map(|(_, r)| r.seq));
            let vouched =
                first.is_some_and(|f| find_record(input, SEGMENT_HEADER_SIZE, f.saturating_sub(1), Some(f)).is_some());
            // A torn activation (the header and the first records were one unsynced write) can
            // only leave a preallocated segment: full size, zeros after what was written. Any
            // other file with a bad header is not a segment of ours and is refused, not erased.
            // "Zeros after what was written" means at least the last page: random bytes end in a
            // zero byte often enough (1 in 256) to be mistaken for one otherwise. A full-size file
            // written to its last page is ours too if it holds a record whose checksum, seeded
            // with this segment's id, verifies (a torn activation of a segment that filled up
            // before the crash); else it is refused, never erased.
            let dirty_end = nonzero_end(b);
            let full_size = b.len() as u64 >= limits::SEGMENT_SIZE_MIN;
            let preallocated = full_size
                && (dirty_end + ZERO_TAIL_MIN <= b.len() || find_record(input, SEGMENT_HEADER_SIZE, 0, None).is_some());
            if input.is_last && !vouched && preallocated && input.mode != RecoveryMode::Strict {
                scan.dirty_end = dirty_end as u64;
                return Ok(scan);
            }
            return damaged_file(input, d.offset, &d.reason, scan);
        }
    };
    if header.first_seq == 0 {
        return damaged_file(input, 0, "segment header has first sequence 0", scan);
    }
    if header.segment_id != input.segment_id {
        let reason = format!("segment header names segment {}", header.segment_id);
        return damaged_file(input, 0, &reason, scan);
    }
    if let Some(expected) = input.expected_seq {
        if header.first_seq != expected && input.mode != RecoveryMode::Salvage {
            let reason = format!(
                "segment starts at sequence {} where {expected} was expected",
                header.first_seq
            );
            return Err(Error::corruption(input.path, 0, reason));
        }
    }
    scan.header = Some(header);
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut expect = header.first_seq;
    scan.valid_end = pos as u64;
    loop {
        let reason = match format::decode_record(&b[pos..], input.segment_id, input.payload_max) {
            RecordState::Valid(r) if r.seq == expect && r.kind == KIND_OPS => {
                on_record(pos as u64, r)?;
                scan.last_seq = Some(r.seq);
                pos += r.len;
                expect = r.seq + 1;
                scan.valid_end = pos as u64;
                continue;
            }
            RecordState::Valid(r) if r.kind != KIND_OPS => format!("unknown record kind {}", r.kind),
            RecordState::Valid(r) => format!("sequence number {} where {expect} was expected", r.seq),
            RecordState::End => {
                if nonzero_end(&b[pos..]) == 0 {
                    scan.dirty_end = scan.valid_end;
                    return Ok(scan);
                }
                "end-of-log marker followed by data".to_string()
            }
            RecordState::Damaged(d) => d.reason,
        };
        // Damage at `pos`. Is it a torn tail, corruption, or (salvage) something to skip?
        let vouched = find_record(input, pos + 1, expect - 1, Some(expect)).is_some();
        if input.is_last && !vouched && input.mode != RecoveryMode::Strict {
            scan.dirty_end = (pos + nonzero_end(&b[pos..])) as u64;
            return Ok(scan);
        }
        if input.mode != RecoveryMode::Salvage {
            return Err(Error::corruption(input.path, pos as u64, reason));
        }
        scan.skipped.push(Skipped {
            path: input.path.to_path_buf(),
            offset: pos as u64,
            reason,
        });
        match find_record(input, pos + 1, expect - 1, None) {
            Some((p, r)) => {
                pos = p;
                expect = r.seq;
            }
            None => {
                scan.dirty_end = (pos + nonzero_end(&b[pos..])) as u64;
                return Ok(scan);
            }
        }
    }
}

/// The whole segment is unusable: corruption, or in salvage a skipped file.
fn damaged_file(input: &ScanInput<'_>, offset: u64, reason: &str, mut scan: SegmentScan) -> Result<SegmentScan> {
    if input.mode != RecoveryMode::Salvage {
        return Err(Error::corruption(input.path, offset, reason));
    }
    scan.skipped.push(Skipped {
        path: input.path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    });
    scan.dirty_end = nonzero_end(input.bytes) as u64;
    Ok(scan)
}
