//! Reading a segment back: the recovery decision table of docs/design.md ("The decision
//! table"). At each position the reader names the table's row for what it meets, a [`Row`]
//! ([`judge_header`] for the segment header, [`Scanner::judge_record`] after it), and does what
//! the row's cell says for the log's last segment or an older one ([`Scanner::act`]).
//!
//! In short: damage in the last segment that no later record vouches for is a torn tail and is
//! cut; any other damage is corruption, or in `Salvage` skipped and reported. A record vouches
//! for damage when its `durable_seq` reaches the sequence number expected where the damage is:
//! that write had been fsynced.

// Decoders and recovery read bytes a file may have damaged: no unwrap or expect here, only
// errors that name the damage.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{
    self, Damage, HeaderState, RecordRef, RecordState, SegmentHeader, KIND_OPS, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use crate::limits;
use crate::options::RecoveryMode;
use crate::stats::Skipped;

/// Bytes at the end of a file that must be zero for a damaged header to count as a torn
/// activation of one of our preallocated segments. The log writer keeps it so: it never writes
/// into a segment's last `ZERO_TAIL_MIN` bytes before the segment's header is durable.
pub(crate) const ZERO_TAIL_MIN: usize = 4096;

/// Where the segment header's `preamble_crc` field starts (docs/format.md, "Segment header"):
/// the decoder places damage here when the preamble checksum does not match (row R7b).
const PREAMBLE_CRC_AT: u64 = 12;

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
    /// One past the last non-zero byte of `bytes` (0 if all zero): everything from here on is
    /// zero. The caller finds it without touching the tail through a map
    /// ([`crate::storage::data_end`]), so a file's zero tail, however long it claims to be, costs
    /// no memory here: the reader never reads past it.
    pub data_end: usize,
}

impl ScanInput<'_> {
    /// One past the last non-zero byte at or after `from`, or `from` if there is none.
    fn nonzero_end_from(&self, from: usize) -> usize {
        self.data_end.max(from)
    }
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

/// A row of the decision table (docs/design.md, "The decision table"): what the reader met at
/// a position of a segment. Which column applies, the last segment's or an older one's, is
/// [`Scanner::act`]'s to say. Row R9, a payload that does not decode, is judged after the
/// reader, where recovery decodes a record's ops (`recovery::apply_record`).
#[derive(Debug)]
enum Row<'a> {
    /// A valid record: checksum, length within limits and file, expected sequence, known kind.
    R1Record(RecordRef<'a>),
    /// The end marker (a zero length field), and no record of this segment after it: only zeros,
    /// or a recycled segment's old bytes.
    R2CleanEnd,
    /// Damage that no later record vouches for.
    R3Unvouched(Damage),
    /// Damage that a later valid record vouches for: in a record, or in the segment header of
    /// one of our preallocated segments.
    R4Vouched(Damage),
    /// An all-zero segment header, and only zeros after it, or a recycled spare's old bytes
    /// ([`recycled_spare`]).
    R5UnusedSpare,
    /// An all-zero segment header with data after it, on one of our preallocated segments,
    /// nothing vouching: judged as R6.
    R5bZeroHeaderWithData(Damage),
    /// A damaged segment header on one of our preallocated segments, nothing vouching.
    R6TornActivation(Damage),
    /// A damaged segment header (R5b, R6 or R7b) on any other file: not a segment of ours.
    R6bNotOurs(Damage),
    /// Our magic and an intact preamble checksum, another format version (the one found).
    R7OtherVersion(u32),
    /// Our magic, the preamble checksum wrong (a damaged version field), on one of our
    /// preallocated segments, nothing vouching: judged as R6.
    R7bDamagedVersion(Damage),
    /// The header names another segment, or first sequence number 0: nothing in the file can be
    /// placed in the log.
    R8WrongSegment(Damage),
    /// The header starts at another sequence number than the previous segment ends at.
    R8WrongStart(SegmentHeader, Damage),
}

/// What the segment header says: intact and in its place (records follow), or a row of the
/// decision table.
enum Header<'a> {
    Intact(SegmentHeader),
    Row(Row<'a>),
}

/// The decision table's columns.
#[derive(Clone, Copy)]
enum Column {
    /// The log's last segment: the only one that may end in a torn write.
    Last,
    Older,
}

/// Whether the scan reads on at `Scanner::pos` or is done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Read,
    Done,
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
    let end = input.data_end;
    // A later record's sequence number is at most one per header-size of bytes further on;
    // with no known predecessor (after_seq 0), any sequence number is plausible.
    let seq_max = if after_seq == 0 {
        u64::MAX
    } else {
        after_seq.saturating_add((b.len() / RECORD_HEADER_SIZE) as u64 + 1)
    };
    // The sequence number's window first, read straight from the bytes: the test that rejects
    // almost every offset, so a recycled segment's old bytes are passed over at about a
    // nanosecond a byte (their sequence numbers all lie below the window).
    let window = after_seq.saturating_add(1)..=seq_max;
    let seq_at = |p: usize| {
        let at = p + format::RECORD_SEQ_AT;
        b.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut p = from;
    while p + RECORD_HEADER_SIZE <= end {
        if !window.contains(&seq_at(p)) {
            p += 1;
            continue;
        }
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
            // Only a record of the kind the writer writes is one: another kind is damage, never
            // a witness (found by the `record_decode` target: a valid record of a reserved kind
            // taken for the segment's first made the header's damage look unvouched).
            match format::decode_record(&b[p..], input.segment_id, input.payload_max) {
                RecordState::Valid(r) if r.kind == KIND_OPS => return Some((p, r)),
                _ => {}
            }
        }
        p += 1;
    }
    None
}

/// Scans one segment, calling `on_record(offset, record, format version)` for each valid record
/// in order: the header's row, then a record's row at each position after it, each acted on,
/// until a row ends the scan. (A record is only ever read after a header that verifies: the
/// version is the header's.)
pub(crate) fn scan_segment(
    input: &ScanInput<'_>,
    mut on_record: impl FnMut(u64, RecordRef<'_>, u32) -> Result<()>,
) -> Result<SegmentScan> {
    debug_assert!(input.data_end <= input.bytes.len());
    debug_assert!(
        input.data_end == 0 || input.bytes[input.data_end - 1] != 0,
        "data_end is exact"
    );
    let mut scanner = Scanner::new(input);
    let mut flow = match judge_header(input) {
        Header::Intact(header) => scanner.start(header),
        Header::Row(row) => scanner.act(row, &mut on_record)?,
    };
    while flow == Flow::Read {
        let row = scanner.judge_record();
        flow = scanner.act(row, &mut on_record)?;
    }
    Ok(scanner.scan)
}

/// Whether the file is a spare never activated, all zero or recycled (row R5).
pub(crate) fn is_unused_spare(input: &ScanInput<'_>) -> bool {
    matches!(judge_header(input), Header::Row(Row::R5UnusedSpare))
}

/// Judges the segment header: the row it falls under (R4 to R8), or `Intact`.
fn judge_header<'a>(input: &ScanInput<'a>) -> Header<'a> {
    let b = input.bytes;
    let (row, damage): (fn(Damage) -> Row<'a>, Damage) = match format::decode_segment_header(b) {
        HeaderState::Valid(h) => return judge_header_place(input, h),
        HeaderState::UnsupportedVersion(found) => return Header::Row(Row::R7OtherVersion(found)),
        HeaderState::Zero if input.data_end == 0 || recycled_spare(input) => return Header::Row(Row::R5UnusedSpare),
        // A zero header with data after it is no unused spare: the header's sectors of a torn
        // activation stayed zero (or durable bytes were zeroed). Judged as a damaged header:
        // erased only as an unvouched torn activation, never in `Strict`.
        HeaderState::Zero => (
            Row::R5bZeroHeaderWithData,
            Damage {
                offset: 0,
                reason: "segment header is zero but data follows it".to_string(),
            },
        ),
        HeaderState::Damaged(d) if d.offset == PREAMBLE_CRC_AT => (Row::R7bDamagedVersion, d),
        HeaderState::Damaged(d) => (Row::R6TornActivation, d),
    };
    Header::Row(if !preallocated(input) {
        Row::R6bNotOurs(damage)
    } else if header_vouched(input) {
        Row::R4Vouched(damage)
    } else {
        row(damage)
    })
}

/// Whether a file with a zero header is a recycled spare (docs/format.md, "Recycled
/// segments"): an end marker right after the header, its last `ZERO_TAIL_MIN` bytes zero, and no
/// record of this segment in it (the old bytes between are records of other segments, whose
/// checksums are seeded with their ids).
fn recycled_spare(input: &ScanInput<'_>) -> bool {
    let b = input.bytes;
    let marker_at = SEGMENT_HEADER_SIZE..SEGMENT_HEADER_SIZE + format::END_MARKER_SIZE;
    b.len() as u64 >= limits::SEGMENT_SIZE_MIN
        && b.get(marker_at).is_some_and(|m| m.iter().all(|&x| x == 0))
        && input.data_end + ZERO_TAIL_MIN <= b.len()
        && find_record(
            input,
            SEGMENT_HEADER_SIZE,
            input.expected_seq.map_or(0, |e| e.saturating_sub(1)),
            None,
        )
        .is_none()
}

/// Judges where a header that verifies puts the segment: R8, or `Intact`.
fn judge_header_place<'a>(input: &ScanInput<'a>, h: SegmentHeader) -> Header<'a> {
    let at_0 = |reason: String| Damage { offset: 0, reason };
    if h.first_seq == 0 {
        let reason = "segment header has first sequence 0".to_string();
        return Header::Row(Row::R8WrongSegment(at_0(reason)));
    }
    if h.segment_id != input.segment_id {
        let reason = format!("segment header names segment {}", h.segment_id);
        return Header::Row(Row::R8WrongSegment(at_0(reason)));
    }
    match input.expected_seq {
        Some(expected) if h.first_seq != expected => {
            let reason = format!(
                "segment starts at sequence {} where {expected} was expected",
                h.first_seq
            );
            Header::Row(Row::R8WrongStart(h, at_0(reason)))
        }
        _ => Header::Intact(h),
    }
}

/// Whether a later record vouches for a damaged header. The header went to disk with the
/// segment's first records: it was durable iff a later record's durable_seq reaches the
/// segment's first sequence number (known from the previous segment, else the lowest sequence
/// number found in this one).
fn header_vouched(input: &ScanInput<'_>) -> bool {
    let first = input
        .expected_seq
        .or_else(|| find_record(input, SEGMENT_HEADER_SIZE, 0, None).map(|(_, r)| r.seq));
    first.is_some_and(|f| find_record(input, SEGMENT_HEADER_SIZE, f.saturating_sub(1), Some(f)).is_some())
}

/// Whether a file with a damaged header is one of our preallocated segments. A torn activation
/// (the header and the first records were one unsynced write) can only leave a preallocated
/// segment: full size, zeros after what was written. Any other file with a bad header is not a
/// segment of ours and is refused, not erased (R6b). "Zeros after what was written" means at
/// least the last page: random bytes end in a zero byte often enough (1 in 256) to be mistaken
/// for one otherwise. A full-size file written to its last page is ours too if it holds a
/// record whose checksum, seeded with this segment's id, verifies (a torn activation of a
/// segment that filled up before the crash).
fn preallocated(input: &ScanInput<'_>) -> bool {
    let b = input.bytes;
    let full_size = b.len() as u64 >= limits::SEGMENT_SIZE_MIN;
    full_size
        && (input.data_end + ZERO_TAIL_MIN <= b.len() || find_record(input, SEGMENT_HEADER_SIZE, 0, None).is_some())
}

/// A scan in progress: where the next record is expected, and what was found so far.
struct Scanner<'i, 'a> {
    input: &'i ScanInput<'a>,
    scan: SegmentScan,
    /// Where the next row is judged: 0 while the header is, then where a record is expected.
    pos: usize,
    /// The sequence number the record at `pos` must have.
    expect: u64,
}

impl<'i, 'a> Scanner<'i, 'a> {
    fn new(input: &'i ScanInput<'a>) -> Self {
        Scanner {
            input,
            scan: SegmentScan::default(),
            pos: 0,
            expect: 0,
        }
    }

    fn column(&self) -> Column {
        if self.input.is_last {
            Column::Last
        } else {
            Column::Older
        }
    }

    /// Judges the bytes at `pos`, where a record with sequence number `expect` should be: R1 to R4.
    fn judge_record(&self) -> Row<'a> {
        let b = self.input.bytes;
        let (pos, expect) = (self.pos, self.expect);
        let reason = match format::decode_record(&b[pos..], self.input.segment_id, self.input.payload_max) {
            RecordState::Valid(r) if r.seq == expect && r.kind == KIND_OPS => return Row::R1Record(r),
            RecordState::Valid(r) if r.kind != KIND_OPS => format!("unknown record kind {}", r.kind),
            RecordState::Valid(r) => format!("sequence number {} where {expect} was expected", r.seq),
            // Bytes after the end marker are a recycled segment's old life (docs/format.md, "The
            // end of the written log") unless a record of this segment is among them: its
            // checksum is seeded with this segment's id, and its sequence number is one this
            // segment could hold next.
            RecordState::End if self.input.data_end <= pos || !self.record_follows(pos) => return Row::R2CleanEnd,
            RecordState::End => "end-of-log marker followed by a record of this segment".to_string(),
            RecordState::Damaged(d) => d.reason,
        };
        let damage = Damage {
            offset: pos as u64,
            reason,
        };
        if find_record(self.input, pos + 1, expect - 1, Some(expect)).is_some() {
            Row::R4Vouched(damage)
        } else {
            Row::R3Unvouched(damage)
        }
    }

    /// Whether a record of this segment, with the sequence number expected at `pos` or a later
    /// one, lies after `pos`.
    fn record_follows(&self, pos: usize) -> bool {
        find_record(self.input, pos + 1, self.expect - 1, None).is_some()
    }

    /// Does what the row's cell in this segment's column says (docs/design.md, "The decision
    /// table"), and says whether the scan reads on.
    fn act(&mut self, row: Row<'a>, on_record: &mut impl FnMut(u64, RecordRef<'_>, u32) -> Result<()>) -> Result<Flow> {
        use Column::{Last, Older};
        let mode = self.input.mode;
        let (strict, salvage) = (mode == RecoveryMode::Strict, mode == RecoveryMode::Salvage);
        match (row, self.column()) {
            (Row::R1Record(r), Last | Older) => self.replay(r, on_record),
            (Row::R2CleanEnd, Last | Older) => Ok(self.clean_end()),
            (Row::R3Unvouched(_), Last) if !strict => Ok(self.cut()),
            (Row::R3Unvouched(d), Last | Older) => self.corruption(d),
            (Row::R4Vouched(d), Last | Older) => self.corruption(d),
            (Row::R5UnusedSpare, Last) => Ok(Flow::Done),
            (Row::R5UnusedSpare, Older) => self.corruption(Damage {
                offset: 0,
                reason: "segment was never written but later segments exist".to_string(),
            }),
            // A torn activation: the whole segment is zeroed.
            (Row::R5bZeroHeaderWithData(_) | Row::R6TornActivation(_) | Row::R7bDamagedVersion(_), Last) if !strict => {
                Ok(self.cut())
            }
            (Row::R5bZeroHeaderWithData(d) | Row::R6TornActivation(d) | Row::R7bDamagedVersion(d), Last | Older) => {
                self.corruption(d)
            }
            (Row::R6bNotOurs(d), Last | Older) => self.corruption(d),
            (Row::R7OtherVersion(found), Last | Older) => Err(Error::UnsupportedFormat {
                path: self.input.path.to_path_buf(),
                found,
                supported: format::FORMAT_VERSION_NEWEST,
            }),
            (Row::R8WrongSegment(d), Last | Older) => self.corruption(d),
            // Salvage reads on from where the header says the segment starts if that is later
            // than expected: the records in between are lost, and reported as skipped. An
            // earlier start would replay sequence numbers already applied over newer writes:
            // the segment is skipped whole, as for any damaged header.
            (Row::R8WrongStart(h, d), Last | Older) if salvage && self.input.expected_seq < Some(h.first_seq) => {
                self.note_skipped(d);
                Ok(self.start(h))
            }
            (Row::R8WrongStart(_, d), Last | Older) => self.corruption(d),
        }
    }

    /// An intact header: records follow it, the first with the header's sequence number.
    fn start(&mut self, header: SegmentHeader) -> Flow {
        self.scan.header = Some(header);
        self.pos = SEGMENT_HEADER_SIZE;
        self.expect = header.first_seq;
        self.scan.valid_end = self.pos as u64;
        Flow::Read
    }

    /// R1: replay the record and read on after it.
    fn replay(
        &mut self,
        r: RecordRef<'a>,
        on_record: &mut impl FnMut(u64, RecordRef<'_>, u32) -> Result<()>,
    ) -> Result<Flow> {
        let version = self.scan.header.map_or(format::FORMAT_VERSION, |h| h.version);
        on_record(self.pos as u64, r, version)?;
        self.scan.last_seq = Some(r.seq);
        self.pos += r.len;
        self.expect = r.seq + 1;
        self.scan.valid_end = self.pos as u64;
        Ok(Flow::Read)
    }

    /// R2: the segment ends here, clean.
    fn clean_end(&mut self) -> Flow {
        self.scan.dirty_end = self.scan.valid_end;
        Flow::Done
    }

    /// A torn tail (R3) or a torn activation (R5b, R6, R7b, at `pos` 0): everything from `pos`
    /// on is to be zeroed.
    fn cut(&mut self) -> Flow {
        self.scan.dirty_end = self.input.nonzero_end_from(self.pos) as u64;
        Flow::Done
    }

    /// A "corruption" cell: the error, or in `Salvage` the damage recorded and skipped: past it
    /// to the next valid record, or, with no header to read records after, the whole file.
    /// Salvage: `d` was skipped; `stats().recovery.skipped` reports it.
    fn note_skipped(&mut self, d: Damage) {
        self.scan.skipped.push(Skipped {
            path: self.input.path.to_path_buf(),
            offset: d.offset,
            reason: d.reason,
        });
    }

    fn corruption(&mut self, d: Damage) -> Result<Flow> {
        if self.input.mode != RecoveryMode::Salvage {
            return Err(Error::corruption(self.input.path, d.offset, d.reason));
        }
        self.note_skipped(d);
        if self.scan.header.is_none() {
            self.scan.dirty_end = self.input.data_end as u64;
            return Ok(Flow::Done);
        }
        match find_record(self.input, self.pos + 1, self.expect - 1, None) {
            Some((p, r)) => {
                self.pos = p;
                self.expect = r.seq;
                Ok(Flow::Read)
            }
            None => Ok(self.cut()),
        }
    }
}

#[cfg(test)]
mod tests {
    // Each row of the decision table named by the judgement, and its cells in both columns.
    use super::*;
    use crate::format::{encode_record, encode_segment_header};

    const ID: u64 = 3;

    /// Segment `ID`, preallocated: its header (first sequence 1), then records 1, 2, ... with
    /// the `durable_seq` fields given. Returns the bytes and each record's offset.
    fn segment(durable: &[u64]) -> (Vec<u8>, Vec<usize>) {
        segment_from(1, durable)
    }

    /// The same, starting at sequence number `first`.
    fn segment_from(first: u64, durable: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut b = encode_segment_header(SegmentHeader::new(ID, first)).to_vec();
        let mut at = Vec::new();
        for (seq, &d) in (first..).zip(durable) {
            at.push(b.len());
            encode_record(&mut b, ID, seq, d, KIND_OPS, b"payload");
        }
        b.resize(limits::SEGMENT_SIZE_MIN as usize, 0);
        (b, at)
    }

    fn input(bytes: &[u8], is_last: bool, mode: RecoveryMode, expected_seq: Option<u64>) -> ScanInput<'_> {
        ScanInput {
            bytes,
            segment_id: ID,
            path: Path::new("wal/test.wal"),
            payload_max: limits::RECORD_PAYLOAD_MAX,
            is_last,
            mode,
            expected_seq,
            data_end: nonzero_end(bytes),
        }
    }

    /// The header's row, as its variant's name (`Intact` for an intact header).
    fn header_row(bytes: &[u8], expected_seq: Option<u64>) -> String {
        match judge_header(&input(bytes, true, RecoveryMode::TolerateTornTail, expected_seq)) {
            Header::Intact(_) => "Intact".to_string(),
            Header::Row(row) => format!("{row:?}"),
        }
    }

    fn row_id(row: &str) -> &str {
        row.split('(').next().unwrap_or(row)
    }

    #[test]
    fn header_rows() {
        let (good, _) = segment(&[0, 1]);
        assert_eq!(header_row(&good, Some(1)), "Intact");
        let zero = vec![0u8; good.len()];
        assert_eq!(header_row(&zero, None), "R5UnusedSpare");

        let mut zeroed = good.clone();
        zeroed[..SEGMENT_HEADER_SIZE].fill(0);
        // Record 2 vouches for record 1, so for the header written with it.
        assert_eq!(row_id(&header_row(&zeroed, None)), "R4Vouched");
        let (mut unvouched, _) = segment(&[0, 0]);
        unvouched[..SEGMENT_HEADER_SIZE].fill(0);
        assert_eq!(row_id(&header_row(&unvouched, None)), "R5bZeroHeaderWithData");

        let (mut torn, _) = segment(&[0, 0]);
        torn[33] ^= 1; // the header's checksum
        assert_eq!(row_id(&header_row(&torn, None)), "R6TornActivation");
        assert_eq!(row_id(&header_row(&torn[..200], None)), "R6bNotOurs");

        let (mut version, _) = segment(&[0]);
        version[8] = 4;
        assert_eq!(row_id(&header_row(&version, None)), "R7bDamagedVersion");
        let preamble_crc = crc32fast::hash(&version[..12]);
        version[12..16].copy_from_slice(&preamble_crc.to_le_bytes());
        assert_eq!(header_row(&version, None), "R7OtherVersion(4)");

        assert_eq!(row_id(&header_row(&good, Some(5))), "R8WrongStart");
        let mut other = encode_segment_header(SegmentHeader::new(ID + 1, 1)).to_vec();
        other.resize(good.len(), 0);
        assert_eq!(row_id(&header_row(&other, None)), "R8WrongSegment");
    }

    /// The rows met after the header, in order, and how the scan ended.
    fn record_rows(bytes: &[u8]) -> Vec<String> {
        let scan_input = input(bytes, true, RecoveryMode::TolerateTornTail, None);
        let mut scanner = Scanner::new(&scan_input);
        let Header::Intact(h) = judge_header(&scan_input) else {
            panic!("the header is damaged");
        };
        scanner.start(h);
        let mut rows = Vec::new();
        loop {
            let row = scanner.judge_record();
            let name = row_id(&format!("{row:?}")).to_string();
            let more = matches!(row, Row::R1Record(_));
            rows.push(name);
            if !more {
                return rows;
            }
            assert!(matches!(scanner.act(row, &mut |_, _, _| Ok(())), Ok(Flow::Read)));
        }
    }

    #[test]
    fn record_rows_r1_to_r4() {
        let (clean, _) = segment(&[0, 1, 2]);
        assert_eq!(record_rows(&clean), ["R1Record", "R1Record", "R1Record", "R2CleanEnd"]);
        let (mut torn, at) = segment(&[0, 1, 1]);
        torn[at[1] + RECORD_HEADER_SIZE] ^= 1;
        assert_eq!(record_rows(&torn), ["R1Record", "R3Unvouched"]);
        let (mut vouched, at) = segment(&[0, 1, 2]);
        vouched[at[1] + RECORD_HEADER_SIZE] ^= 1;
        assert_eq!(record_rows(&vouched), ["R1Record", "R4Vouched"]);
    }

    /// A recycled segment `ID`: the old life of the file (segment `ID - 2`, records from 1 on,
    /// filling it), then this life's header (first sequence `first`, unless `None`: a recycled
    /// spare, header zero) and records, each write followed by its end marker, the last 4 KiB zero.
    fn recycled(first: Option<u64>, durable: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut b = encode_segment_header(SegmentHeader::new(ID - 2, 1)).to_vec();
        let size = limits::SEGMENT_SIZE_MIN as usize;
        for seq in 1.. {
            let mut rec = Vec::new();
            encode_record(&mut rec, ID - 2, seq, seq - 1, KIND_OPS, b"an old life's payload");
            if b.len() + rec.len() > size {
                break;
            }
            b.extend_from_slice(&rec);
        }
        b.resize(size, 0);
        b[..SEGMENT_HEADER_SIZE + format::END_MARKER_SIZE].fill(0);
        b[size - ZERO_TAIL_MIN..].fill(0);
        let mut at = Vec::new();
        if let Some(first) = first {
            let mut new = encode_segment_header(SegmentHeader::new(ID, first)).to_vec();
            for (seq, &d) in (first..).zip(durable) {
                at.push(new.len());
                encode_record(&mut new, ID, seq, d, KIND_OPS, b"payload");
            }
            new.extend_from_slice(&[0; format::END_MARKER_SIZE]);
            b[..new.len()].copy_from_slice(&new);
        }
        (b, at)
    }

    /// A recycled segment: the old life's records after the end marker are not read (R2), and
    /// a recycled spare never activated is an unused spare (R5), in `Strict` too; a record of
    /// this segment after the marker is damage as before.
    #[test]
    fn recycled_segments() {
        use RecoveryMode::{Strict, TolerateTornTail as Tolerate};
        let (active, _) = recycled(Some(100), &[99, 100, 101]);
        assert_eq!(record_rows(&active), ["R1Record", "R1Record", "R1Record", "R2CleanEnd"]);
        assert_eq!(outcome(&active, true, Strict), "clean");
        assert_eq!(outcome(&active, false, Strict), "clean");

        let (spare, _) = recycled(None, &[]);
        assert_eq!(header_row(&spare, Some(100)), "R5UnusedSpare");
        assert_eq!(header_row(&spare, None), "R5UnusedSpare");
        assert_eq!(outcome(&spare, true, Strict), "clean");
        assert_eq!(outcome(&spare, false, Tolerate), "corruption");

        // Without its zero tail the file is not known for a recycled spare.
        let mut tailless = spare.clone();
        let last = tailless.len() - 1;
        tailless[last] = 1;
        assert_eq!(row_id(&header_row(&tailless, None)), "R6bNotOurs");

        // A marker zeroed over record 101: record 102 follows it (vouching for it, or not).
        let (mut vouched, at) = recycled(Some(100), &[99, 100, 101]);
        vouched[at[1]..at[1] + format::END_MARKER_SIZE].fill(0);
        assert_eq!(record_rows(&vouched), ["R1Record", "R4Vouched"]);
        let (mut unvouched, at) = recycled(Some(100), &[99, 100, 100]);
        unvouched[at[1]..at[1] + format::END_MARKER_SIZE].fill(0);
        assert_eq!(record_rows(&unvouched), ["R1Record", "R3Unvouched"]);
        assert_eq!(outcome(&unvouched, true, Strict), "corruption");

        // A torn write of this life (its first bytes landed, not the rest, nor a marker): a torn
        // tail, the old bytes after it zeroed with it.
        let (mut torn, at) = recycled(Some(100), &[99, 100, 101]);
        torn[at[2] + RECORD_HEADER_SIZE] ^= 1;
        assert_eq!(record_rows(&torn), ["R1Record", "R1Record", "R3Unvouched"]);
        assert!(outcome(&torn, true, Tolerate).starts_with("cut "));
        assert_eq!(outcome(&torn, true, Strict), "corruption");
    }

    /// What a scan ends in: `cut N` (bytes to zero after the valid ones), `clean`, `skipped N`
    /// or the error's kind.
    fn outcome(bytes: &[u8], is_last: bool, mode: RecoveryMode) -> String {
        match scan_segment(&input(bytes, is_last, mode, None), |_, _, _| Ok(())) {
            Ok(s) if !s.skipped.is_empty() => format!("skipped {}", s.skipped.len()),
            Ok(s) if s.dirty_end > s.valid_end => format!("cut {}", s.dirty_end - s.valid_end),
            Ok(_) => "clean".to_string(),
            Err(Error::Corruption { .. }) => "corruption".to_string(),
            Err(e) => format!("{e}"),
        }
    }

    #[test]
    fn both_columns() {
        use RecoveryMode::{Salvage, Strict, TolerateTornTail as Tolerate};
        let (mut torn, at) = segment(&[0, 1, 1]);
        torn[at[1] + RECORD_HEADER_SIZE] ^= 1;
        let tail = (2 * (at[1] - at[0])) as u64;
        // R3: a torn tail in the last segment (not in `Strict`), corruption in an older one.
        assert_eq!(outcome(&torn, true, Tolerate), format!("cut {tail}"));
        assert_eq!(outcome(&torn, true, Strict), "corruption");
        assert_eq!(outcome(&torn, false, Tolerate), "corruption");
        assert_eq!(outcome(&torn, false, Salvage), "skipped 1");
        // R5: an unused spare last, corruption before another segment.
        let zero = vec![0u8; torn.len()];
        assert_eq!(outcome(&zero, true, Strict), "clean");
        assert_eq!(outcome(&zero, false, Tolerate), "corruption");
        // R6: a torn activation last (not in `Strict`), corruption in an older segment.
        let (mut activation, _) = segment(&[0]);
        activation[33] ^= 1;
        let written = (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + b"payload".len()) as u64;
        assert_eq!(outcome(&activation, true, Tolerate), format!("cut {written}"));
        assert_eq!(outcome(&activation, true, Strict), "corruption");
        assert_eq!(outcome(&activation, false, Tolerate), "corruption");
        // R6b: refused in both columns, never cut.
        assert_eq!(outcome(&activation[..200], true, Tolerate), "corruption");
    }

    /// R8, a header starting at another sequence number than expected (5): corruption, and in
    /// `Salvage` never silent. A later start reads on and reports the records in between; an
    /// earlier one (sequence numbers already applied) skips the segment.
    #[test]
    fn salvage_reports_a_segment_that_starts_at_the_wrong_sequence() {
        let scan = |first: u64, mode| {
            let (b, _) = segment_from(first, &[0, 0]);
            scan_segment(&input(&b, false, mode, Some(5)), |_, _, _| Ok(()))
        };
        for first in [3, 9] {
            assert!(matches!(
                scan(first, RecoveryMode::TolerateTornTail),
                Err(Error::Corruption { .. })
            ));
            let salvaged = match scan(first, RecoveryMode::Salvage) {
                Ok(s) => s,
                Err(e) => panic!("salvage refused a segment of ours: {e}"),
            };
            assert_eq!(salvaged.skipped.len(), 1, "starting at {first}: {:?}", salvaged.skipped);
            assert!(salvaged.skipped[0].reason.contains("where 5 was expected"));
            let replayed = if first > 5 { Some(first + 1) } else { None };
            assert_eq!(salvaged.last_seq, replayed, "starting at {first}");
        }
    }
}
