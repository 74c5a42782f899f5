//! Every on-disk byte of sessiondb is encoded and decoded here, and nowhere else.
//!
//! `docs/format.md` describes the same bytes as tables; `tests/golden.rs` pins them. This module
//! does no I/O. Decoders take bytes that came from a file and never panic or allocate from an
//! unchecked length: they return a [`Damage`] that the caller turns into
//! [`crate::Error::Corruption`] with the file and offset.

// Decoders and recovery read bytes a file may have damaged: no unwrap or expect here, only
// errors that name the damage.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::limits;

mod encrypted;
pub use encrypted::*;

/// The format version this build writes, in every file header it creates.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version this build reads: files of every version from this one to
/// [`FORMAT_VERSION`] are read (docs/format.md, "Changing the format").
pub const FORMAT_VERSION_OLDEST: u32 = 1;

/// The newest format version this build reads: [`FORMAT_VERSION_ENCRYPTED`], the files of an
/// encrypted store (version 2's layout with every key and value sealed).
pub const FORMAT_VERSION_NEWEST: u32 = FORMAT_VERSION_ENCRYPTED;

/// Whether this build reads files of format `version`.
pub fn reads_version(version: u32) -> bool {
    (FORMAT_VERSION_OLDEST..=FORMAT_VERSION_NEWEST).contains(&version)
}

/// First 8 bytes of every log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SDB-WAL\0";
/// First 8 bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SDB-SNP\0";

/// Why bytes failed to decode. Offsets are relative to the slice given to the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the bad bytes within the slice that was decoded.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

fn damage(offset: usize, reason: impl Into<String>) -> Damage {
    Damage {
        offset: offset as u64,
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

// Both file headers (docs/format.md, "Segment header", "Snapshot header"): the preamble (magic,
// format version, preamble checksum), then the header's u64 fields, a checksum of everything
// before it, and 4 zero bytes.
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const PREAMBLE_CRC_AT: usize = VERSION_AT + 4;
const FIELDS_AT: usize = PREAMBLE_CRC_AT + 4;

/// Bytes covered by a header's preamble checksum: the magic and the format version. Every
/// format version keeps these 12 bytes and the checksum after them, so a damaged version field
/// reads as damage, never as a newer format.
const PREAMBLE_SIZE: usize = PREAMBLE_CRC_AT;

/// Bytes in a header with `fields` u64 fields.
const fn header_size(fields: usize) -> usize {
    FIELDS_AT + 8 * fields + 4 + 4
}

fn preamble_crc(b: &[u8]) -> u32 {
    crc32fast::hash(&b[..PREAMBLE_SIZE])
}

/// A header of `N` bytes of format `version` for files starting with `magic`, holding `fields`.
fn encode_header<const N: usize>(magic: &[u8; 8], version: u32, fields: &[u64]) -> [u8; N] {
    debug_assert_eq!(N, header_size(fields.len()));
    debug_assert!(reads_version(version), "only versions this build reads are written");
    let mut b = [0u8; N];
    b[MAGIC_AT..VERSION_AT].copy_from_slice(magic);
    b[VERSION_AT..PREAMBLE_CRC_AT].copy_from_slice(&version.to_le_bytes());
    let pre = preamble_crc(&b);
    b[PREAMBLE_CRC_AT..FIELDS_AT].copy_from_slice(&pre.to_le_bytes());
    for (i, field) in fields.iter().enumerate() {
        let at = FIELDS_AT + 8 * i;
        b[at..at + 8].copy_from_slice(&field.to_le_bytes());
    }
    let crc_at = N - 8;
    let crc = crc32fast::hash(&b[..crc_at]);
    b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a header of `F` fields from `b` (at least that long) for files starting with
/// `magic`: preamble, version, checksum, and every field (an id or a sequence number) at most
/// [`limits::SEQ_MAX`]. `what` names the file kind, `fields` the fields, in messages. Returns
/// the fields and the format version.
fn decode_header<const F: usize>(b: &[u8], magic: &[u8; 8], what: &str, fields: &str) -> HeaderState<([u64; F], u32)> {
    debug_assert!(b.len() >= header_size(F));
    let version = match check_preamble(b, magic, what) {
        Ok(version) => version,
        Err(state) => return state,
    };
    let crc_at = header_size(F) - 8;
    if crc32fast::hash(&b[..crc_at]) != u32_at(b, crc_at) {
        return HeaderState::Damaged(damage(crc_at, format!("{what} header checksum mismatch")));
    }
    let values: [u64; F] = std::array::from_fn(|i| u64_at(b, FIELDS_AT + 8 * i));
    if values.iter().any(|&v| v > limits::SEQ_MAX) {
        return HeaderState::Damaged(damage(FIELDS_AT, format!("{what} {fields} above the maximum")));
    }
    HeaderState::Valid((values, version))
}

/// Checks a header's magic and preamble checksum, then its version: the version if this build
/// reads it, else the header's state.
fn check_preamble<H>(b: &[u8], magic: &[u8; 8], what: &str) -> Result<u32, HeaderState<H>> {
    if b[MAGIC_AT..VERSION_AT] != magic[..] {
        return Err(HeaderState::Damaged(damage(MAGIC_AT, format!("bad {what} magic"))));
    }
    if preamble_crc(b) != u32_at(b, PREAMBLE_CRC_AT) {
        return Err(HeaderState::Damaged(damage(
            PREAMBLE_CRC_AT,
            format!("{what} preamble checksum mismatch"),
        )));
    }
    let version = u32_at(b, VERSION_AT);
    if !reads_version(version) {
        return Err(HeaderState::UnsupportedVersion(version));
    }
    Ok(version)
}

/// Bytes [`decode_preamble_version`] reads: the preamble and its checksum.
pub(crate) const PREAMBLE_BYTES: usize = FIELDS_AT;

/// The format version in the preamble at the start of `b`, the first bytes of a segment or a
/// snapshot, if the magic is one of ours and the preamble checksum verifies (a damaged preamble
/// is never trusted). Any version, this build's or not.
pub fn decode_preamble_version(b: &[u8]) -> Option<u32> {
    let pre = b.get(..PREAMBLE_BYTES)?;
    let magic = &pre[MAGIC_AT..VERSION_AT];
    let ours = magic == SEGMENT_MAGIC || magic == SNAPSHOT_MAGIC;
    (ours && preamble_crc(pre) == u32_at(pre, PREAMBLE_CRC_AT)).then(|| u32_at(pre, VERSION_AT))
}

// ---------------------------------------------------------------------------------------------
// Segment header (docs/format.md, "Segment header")

/// Bytes in a segment header: the preamble, segment id, first sequence number, checksum, pad.
pub const SEGMENT_HEADER_SIZE: usize = header_size(2);

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id; its file is named after it.
    pub segment_id: u64,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// The format version of the segment's records: how their payloads are laid out.
    pub version: u32,
}

impl SegmentHeader {
    /// The header of an unencrypted store's segment: format [`FORMAT_VERSION`] (tests and
    /// fixtures; the writer says which version).
    #[cfg(any(test, feature = "sim"))]
    pub fn new(segment_id: u64, first_seq: u64) -> SegmentHeader {
        SegmentHeader {
            segment_id,
            first_seq,
            version: FORMAT_VERSION,
        }
    }

    /// A header of format `version` (3 in an encrypted store).
    pub fn with_version(segment_id: u64, first_seq: u64, version: u32) -> SegmentHeader {
        SegmentHeader {
            segment_id,
            first_seq,
            version,
        }
    }
}

/// What a segment's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState<H> {
    /// A valid header.
    Valid(H),
    /// All zero: a preallocated file that was never activated.
    Zero,
    /// Our magic with a version this build does not read.
    UnsupportedVersion(u32),
    /// Anything else: torn, damaged, or not our file.
    Damaged(Damage),
}

impl<H> HeaderState<H> {
    fn map<T>(self, f: impl FnOnce(H) -> T) -> HeaderState<T> {
        match self {
            HeaderState::Valid(h) => HeaderState::Valid(f(h)),
            HeaderState::Zero => HeaderState::Zero,
            HeaderState::UnsupportedVersion(v) => HeaderState::UnsupportedVersion(v),
            HeaderState::Damaged(d) => HeaderState::Damaged(d),
        }
    }
}

/// Encodes a segment header.
pub fn encode_segment_header(h: SegmentHeader) -> [u8; SEGMENT_HEADER_SIZE] {
    encode_header(&SEGMENT_MAGIC, h.version, &[h.segment_id, h.first_seq])
}

/// Decodes a segment header from the first bytes of a segment file.
pub fn decode_segment_header(b: &[u8]) -> HeaderState<SegmentHeader> {
    let b = &b[..b.len().min(SEGMENT_HEADER_SIZE)];
    if b.iter().all(|&x| x == 0) {
        return HeaderState::Zero;
    }
    if b.len() < SEGMENT_HEADER_SIZE {
        return HeaderState::Damaged(damage(0, "segment header is cut short"));
    }
    decode_header(b, &SEGMENT_MAGIC, "segment", "id or first sequence number").map(
        |([segment_id, first_seq], version)| SegmentHeader {
            segment_id,
            first_seq,
            version,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Record frame (docs/format.md, "Record")

const REC_LEN_AT: usize = 0;
const REC_CRC_AT: usize = REC_LEN_AT + 4;
const REC_SEQ_AT: usize = REC_CRC_AT + 4;
/// Where a record's sequence number lies in its header (for the reader's search).
pub(crate) const RECORD_SEQ_AT: usize = REC_SEQ_AT;
const REC_DURABLE_AT: usize = REC_SEQ_AT + 8;
const REC_KIND_AT: usize = REC_DURABLE_AT + 8;
/// Bytes in a record header; the payload follows.
pub const RECORD_HEADER_SIZE: usize = REC_KIND_AT + 1;
/// The end-of-log marker: a zero length field. The log writer writes it after every write of
/// records (fewer bytes if the segment ends sooner), so the written log ends at a marker even
/// in a recycled segment, whose old bytes follow it (docs/format.md, "The end of the written
/// log").
pub const END_MARKER_SIZE: usize = REC_CRC_AT - REC_LEN_AT;

/// Record kind: a batch of puts and deletes, applied atomically.
pub const KIND_OPS: u8 = 1;

/// A record as read from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The highest sequence number known durable when this record was written.
    pub durable_seq: u64,
    /// The record kind.
    pub kind: u8,
    /// The payload.
    pub payload: &'a [u8],
    /// Header plus payload.
    pub len: usize,
}

fn record_crc(segment_id: u64, header_and_payload: &[u8]) -> u32 {
    // The checksum covers the segment id (not stored in the record), so a valid record written
    // into the wrong segment fails it (docs/reliability.md, F10), then the length and everything after the
    // checksum field.
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&header_and_payload[REC_LEN_AT..REC_CRC_AT]);
    h.update(&header_and_payload[REC_SEQ_AT..]);
    h.finalize()
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, segment_id: u64, seq: u64, durable_seq: u64, kind: u8, payload: &[u8]) {
    debug_assert!(!payload.is_empty(), "every record kind has a non-empty payload");
    debug_assert!(durable_seq < seq, "a record cannot vouch for itself");
    // NOTE: cannot truncate: payloads are bounded by Options::validate (< SEGMENT_SIZE_MAX).
    let len = payload.len() as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&durable_seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = record_crc(segment_id, &out[start..]);
    out[start + REC_CRC_AT..start + REC_SEQ_AT].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, RECORD_HEADER_SIZE + payload.len());
}

/// What the bytes at a record position are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState<'a> {
    /// A record whose checksum verifies.
    Valid(RecordRef<'a>),
    /// A zero length field: the end of the written log (the rest may still hold garbage).
    End,
    /// Not a valid record.
    Damaged(Damage),
}

/// Decodes the record that starts at `b[0]`. `payload_max` bounds the length field, which is
/// checked against it and against the bytes left before anything is read through it.
pub fn decode_record(b: &[u8], segment_id: u64, payload_max: usize) -> RecordState<'_> {
    if b.len() < RECORD_HEADER_SIZE {
        // The end marker is the length field's 4 zero bytes, or as many as there is room for
        // (docs/format.md, "The end of the written log"); what follows it is not read.
        if b[..b.len().min(END_MARKER_SIZE)].iter().all(|&x| x == 0) {
            return RecordState::End;
        }
        return RecordState::Damaged(damage(0, "record header is cut short"));
    }
    let len = u32_at(b, REC_LEN_AT) as usize;
    if len == 0 {
        return RecordState::End;
    }
    if len > payload_max {
        return RecordState::Damaged(damage(
            0,
            format!("record length {len} exceeds the limit {payload_max}"),
        ));
    }
    let total = RECORD_HEADER_SIZE + len;
    if total > b.len() {
        return RecordState::Damaged(damage(0, "record runs past the end of the file"));
    }
    let rec = &b[..total];
    if record_crc(segment_id, rec) != u32_at(rec, REC_CRC_AT) {
        return RecordState::Damaged(damage(0, "checksum mismatch"));
    }
    if u64_at(rec, REC_SEQ_AT) > limits::SEQ_MAX || u64_at(rec, REC_DURABLE_AT) > limits::SEQ_MAX {
        return RecordState::Damaged(damage(REC_SEQ_AT, "sequence number above the maximum"));
    }
    RecordState::Valid(RecordRef {
        seq: u64_at(rec, REC_SEQ_AT),
        durable_seq: u64_at(rec, REC_DURABLE_AT),
        kind: rec[REC_KIND_AT],
        payload: &rec[RECORD_HEADER_SIZE..],
        len: total,
    })
}

// ---------------------------------------------------------------------------------------------
// Record payload: bincode, fixed configuration (docs/format.md, "Payload of an OPS record")

/// One operation of a batch, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::BorrowDecode)]
pub enum Op<'a> {
    /// Set `key` to `value`; `expires_at_ms` is 0 for no expiry, else a wall-clock deadline in
    /// milliseconds since the Unix epoch.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Expiry deadline, or 0.
        expires_at_ms: u64,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Set the expiry of `key` to `expires_at_ms` if its value is still the one written at
    /// sequence number `version`; otherwise nothing. The value is not rewritten.
    Touch {
        /// The key.
        key: &'a [u8],
        /// Sequence number of the write that set the value being touched.
        version: u64,
        /// New expiry deadline, or 0 for none.
        expires_at_ms: u64,
    },
}

impl<'a> Op<'a> {
    /// The key the operation is on.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Touch { key, .. } => key,
        }
    }
}

/// An operation as format version 2 lays it out: a put carries its value's checksum
/// ([`value_crc`]) right after the value. The variants and the other fields are those of
/// [`Op`] (which is format version 1's layout), in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::BorrowDecode)]
enum WireOp<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
        value_crc: u32,
        expires_at_ms: u64,
    },
    Delete {
        key: &'a [u8],
    },
    Touch {
        key: &'a [u8],
        version: u64,
        expires_at_ms: u64,
    },
}

impl<'a> WireOp<'a> {
    /// The operation and, for a put, its value's checksum.
    fn op(self) -> (Op<'a>, Option<u32>) {
        match self {
            WireOp::Put {
                key,
                value,
                value_crc,
                expires_at_ms,
            } => (
                Op::Put {
                    key,
                    value,
                    expires_at_ms,
                },
                Some(value_crc),
            ),
            WireOp::Delete { key } => (Op::Delete { key }, None),
            WireOp::Touch {
                key,
                version,
                expires_at_ms,
            } => (
                Op::Touch {
                    key,
                    version,
                    expires_at_ms,
                },
                None,
            ),
        }
    }
}

/// Bincode's configuration for payloads: little-endian, fixed-width integers (lengths are `u64`,
/// enum tags `u32`), and a decode limit so no length can make the decoder allocate past it.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ 1 << 30 }>()
}

// ---------------------------------------------------------------------------------------------
// Value checksums (docs/format.md, "Value checksums"), format version 2

/// Bytes of a value checksum.
pub const VALUE_CRC_SIZE: usize = 4;

/// The checksum that binds a value to the key and the version it was written for: the crc32 of
/// the key's length (`u32`), the key, the value, and the sequence number of the write (`u64`).
/// Log records and snapshot entries of format version 2 store it with every value, and a read
/// returns a value only if it matches.
pub fn value_crc(key: &[u8], value: &[u8], seq: u64) -> u32 {
    value_crc_with_seq(value_crc_partial(key, value), seq)
}

/// The checksum of a value before its sequence number is known: the crc32 of the key's length,
/// the key and the value. A write computes it as it encodes its payload, before it is ordered;
/// [`value_crc_with_seq`] completes it once the sequence number is known.
fn value_crc_partial(key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    // NOTE: cannot truncate: keys are at most KEY_SIZE_MAX bytes.
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    h.finalize()
}

/// Continues the crc32 `partial` over the sequence number's 8 bytes: the value checksum.
fn value_crc_with_seq(partial: u32, seq: u64) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(partial);
    h.update(&seq.to_le_bytes());
    h.finalize()
}

/// Completes the value checksum of a put whose value ends at `crc_at` in `payload` (where its
/// checksum field is) now that its record's sequence number is known: [`encode_ops`] left the
/// partial checksum there.
pub fn seal_value_crc(payload: &mut [u8], crc_at: usize, seq: u64) {
    let field = &mut payload[crc_at..crc_at + VALUE_CRC_SIZE];
    let mut partial = [0u8; VALUE_CRC_SIZE];
    partial.copy_from_slice(field);
    let crc = value_crc_with_seq(u32::from_le_bytes(partial), seq);
    field.copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Payload layout

/// Smallest encoded op: a delete of an empty key (tag u32 + length u64).
const OP_ENCODED_SIZE_MIN: usize = 4 + 8;

/// Bytes a put of this key and value adds to a payload of this build's format: tag, key length,
/// key, value length, value, value checksum, deadline.
pub fn put_encoded_size(key_len: usize, value_len: usize) -> usize {
    4 + 8 + key_len + 8 + value_len + VALUE_CRC_SIZE + 8
}

/// Bytes a put adds to a payload of format version 1 (no value checksum).
#[cfg(any(test, feature = "sim"))] // used by tests and fuzz targets only
pub fn put_encoded_size_v1(key_len: usize, value_len: usize) -> usize {
    put_encoded_size(key_len, value_len) - VALUE_CRC_SIZE
}

/// Offset of a put's value within the payload, given the offset where the put's encoding starts:
/// after its tag (u32), the key's length (u64), the key and the value's length (u64). The same
/// in both format versions.
pub fn put_value_offset(op_start: usize, key_len: usize) -> usize {
    op_start + log_value_back(key_len)
}

/// Bytes from the start of a put's encoding to its value.
pub fn log_value_back(key_len: usize) -> usize {
    4 + 8 + key_len + 8
}

/// Whether the value of `value_len` bytes at `value_at` in `payload` is the value of a put of
/// `key`: the put's tag, key length, key and value length lie just before it. The bytes around
/// a value name the key they were written for, so a location that points into the wrong place
/// is caught even where a checksum over the surrounding bytes passes. Never panics.
pub fn put_value_is_for(payload: &[u8], value_at: usize, key: &[u8], value_len: usize) -> bool {
    let Some(op_at) = value_at.checked_sub(log_value_back(key.len())) else {
        return false;
    };
    let key_at = op_at + 4 + 8;
    let len_at = key_at + key.len();
    value_at.checked_add(value_len).is_some_and(|end| end <= payload.len())
        && u32_at(payload, op_at) == PUT_TAG
        && u64_at(payload, op_at + 4) == key.len() as u64
        && &payload[key_at..len_at] == key
        && u64_at(payload, len_at) == value_len as u64
}

/// Checks the bytes of one put of format version 2, read from the start of its encoding to the
/// end of its value checksum (`b`, [`log_value_back`] + `value_len` + [`VALUE_CRC_SIZE`] bytes),
/// as the value of `key` written at `seq`: the put's framing names that key and that length, and
/// the value checksum matches ([`value_crc`]). Returns the value's checksum. Never panics.
pub fn check_log_value(b: &[u8], key: &[u8], value_len: usize, seq: u64) -> Result<u32, Damage> {
    let value_at = log_value_back(key.len());
    // A length no slice can hold is not this put's (and must not overflow the sum).
    let crc_at = value_at.saturating_add(value_len);
    if b.len() != crc_at.saturating_add(VALUE_CRC_SIZE) || !put_value_is_for(b, value_at, key, value_len) {
        return Err(damage(0, "the bytes here are not a put of this key"));
    }
    let stored = u32_at(b, crc_at);
    if value_crc(key, &b[value_at..crc_at], seq) != stored {
        return Err(damage(crc_at, "value checksum mismatch"));
    }
    Ok(stored)
}

/// The bincode tags of [`Op`]'s variants (their indices), the same in [`WireOp`].
const PUT_TAG: u32 = 0;
const DELETE_TAG: u32 = 1;
const TOUCH_TAG: u32 = 2;

/// Bytes a delete of this key adds to a payload.
pub fn delete_encoded_size(key_len: usize) -> usize {
    4 + 8 + key_len
}

/// Bytes a touch of this key adds to a payload: tag, key length, key, version, deadline.
pub fn touch_encoded_size(key_len: usize) -> usize {
    4 + 8 + key_len + 8 + 8
}

/// Bytes `op` adds to a payload of this build's format.
pub fn op_encoded_size(op: &Op<'_>) -> usize {
    match op {
        Op::Put { key, value, .. } => put_encoded_size(key.len(), value.len()),
        Op::Delete { key } => delete_encoded_size(key.len()),
        Op::Touch { key, .. } => touch_encoded_size(key.len()),
    }
}

/// Bytes of the payload's leading op count.
pub const PAYLOAD_COUNT_SIZE: usize = 8;

/// Encodes a batch payload of this build's format into `out` (cleared first) and returns where
/// each op's value lies in it ([`value_offsets`]). Each put's checksum field holds the partial
/// checksum of its key and value: the record's sequence number completes it
/// ([`seal_value_crc`]) before the payload is written.
pub fn encode_ops<'a>(out: &mut Vec<u8>, ops: &'a [Op<'a>]) -> ValueOffsets<'a> {
    // Byte for byte what bincode makes of `Vec<WireOp>` in the payload configuration (which
    // `decode_ops` decodes; the writer's debug check and tests/golden.rs pin it), written by
    // hand: one bincode call per op cost about 20 ns a put (measured), the bulk of encoding.
    out.clear();
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match *op {
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => {
                out.extend_from_slice(&PUT_TAG.to_le_bytes());
                bytes(out, key);
                bytes(out, value);
                out.extend_from_slice(&value_crc_partial(key, value).to_le_bytes());
                out.extend_from_slice(&expires_at_ms.to_le_bytes());
            }
            Op::Delete { key } => {
                out.extend_from_slice(&DELETE_TAG.to_le_bytes());
                bytes(out, key);
            }
            Op::Touch {
                key,
                version,
                expires_at_ms,
            } => {
                out.extend_from_slice(&TOUCH_TAG.to_le_bytes());
                bytes(out, key);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&expires_at_ms.to_le_bytes());
            }
        }
    }
    value_offsets(ops)
}

/// Encodes a batch payload of this build's format for the record with sequence number `seq`,
/// every value checksum sealed (tests and fuzz targets, which frame records by hand).
#[cfg(any(test, feature = "sim"))]
pub fn encode_ops_sealed(out: &mut Vec<u8>, ops: &[Op<'_>], seq: u64) {
    let offsets: Vec<Option<usize>> = encode_ops(out, ops).collect();
    for (op, at) in ops.iter().zip(offsets) {
        if let (Op::Put { value, .. }, Some(at)) = (op, at) {
            seal_value_crc(out, at + value.len(), seq);
        }
    }
}

/// Encodes a batch payload of format version 1 (tests and fixtures only: this build writes
/// version 2).
#[cfg(any(test, feature = "sim"))]
pub fn encode_ops_v1(out: &mut Vec<u8>, ops: &[Op<'_>]) {
    out.clear();
    encode_into(&ops, out);
}

/// Appends `v` in the payload configuration.
#[cfg(any(test, feature = "sim"))]
fn encode_into(v: &impl bincode::Encode, out: &mut Vec<u8>) {
    // NOTE: encoding into a Vec cannot fail: no limit applies to encoding and a Vec grows.
    if let Err(e) = bincode::encode_into_std_write(v, out, bincode_config()) {
        unreachable!("encoding into a Vec failed: {e}");
    }
}

/// Where each op's value lies in the payload of this build's format that encodes `ops`, from the
/// layout (no bytes read): for each op in order, `Some(offset in the payload)` of a put's value,
/// `None` for a delete or a touch. A put's checksum field follows its value.
pub fn value_offsets<'a>(ops: &'a [Op<'a>]) -> ValueOffsets<'a> {
    ValueOffsets {
        ops: ops.iter(),
        at: PAYLOAD_COUNT_SIZE,
    }
}

/// The iterator [`value_offsets`] returns.
#[derive(Debug, Clone)]
pub struct ValueOffsets<'a> {
    ops: std::slice::Iter<'a, Op<'a>>,
    /// Where the next op's encoding starts.
    at: usize,
}

impl Iterator for ValueOffsets<'_> {
    type Item = Option<usize>;

    fn next(&mut self) -> Option<Option<usize>> {
        let op = self.ops.next()?;
        let value_at = match op {
            Op::Put { key, .. } => Some(put_value_offset(self.at, key.len())),
            Op::Delete { .. } | Op::Touch { .. } => None,
        };
        self.at += op_encoded_size(op);
        Some(value_at)
    }
}

/// Decodes a batch payload of format `version`. The op count is checked against the payload's
/// size before the decoder sees it, so a hostile count cannot make it allocate. With `seq` (the
/// record's sequence number), each put's value checksum (version 2) is checked too: one that
/// does not match is damage at its offset. Without it (a payload not yet sealed) they are not.
pub fn decode_ops(payload: &[u8], version: u32, seq: Option<u64>) -> Result<Vec<Op<'_>>, Damage> {
    if payload.len() < PAYLOAD_COUNT_SIZE {
        return Err(damage(0, "payload is shorter than its op count"));
    }
    let count = u64_at(payload, 0);
    let room = (payload.len() - PAYLOAD_COUNT_SIZE) / OP_ENCODED_SIZE_MIN;
    if count == 0 || count > limits::BATCH_OPS_MAX as u64 || count > room as u64 {
        return Err(damage(0, format!("payload op count {count} is impossible")));
    }
    if version == 1 {
        return decode_exact::<Vec<Op<'_>>>(payload).map_err(payload_damage);
    }
    if version == FORMAT_VERSION_ENCRYPTED {
        // An opened payload (`open_ops`): its tags authenticated the keys and values.
        return decode_ops_encrypted(payload);
    }
    if version != FORMAT_VERSION {
        return Err(damage(0, format!("no payload layout for format version {version}")));
    }
    let wire = decode_exact::<Vec<WireOp<'_>>>(payload).map_err(payload_damage)?;
    let mut ops = Vec::with_capacity(wire.len());
    for w in wire {
        let (op, crc) = w.op();
        if let (Op::Put { key, value, .. }, Some(stored), Some(seq)) = (op, crc, seq) {
            if value_crc(key, value, seq) != stored {
                let crc_at = value.as_ptr() as usize - payload.as_ptr() as usize + value.len();
                return Err(damage(crc_at, "value checksum mismatch"));
            }
        }
        ops.push(op);
    }
    Ok(ops)
}

/// A payload's decoding error in the words the docs use.
fn payload_damage(d: Damage) -> Damage {
    match d.reason.as_str() {
        "trailing bytes" => damage(d.offset as usize, "payload has trailing bytes"),
        reason => damage(d.offset as usize, format!("payload {reason}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot (docs/format.md, "Snapshot")

/// Bytes in a snapshot header: the preamble, base sequence number, checksum, pad.
pub const SNAPSHOT_HEADER_SIZE: usize = header_size(1);

const BLOCK_LEN_AT: usize = 0;
const BLOCK_COUNT_AT: usize = BLOCK_LEN_AT + 4;
const BLOCK_CRC_AT: usize = BLOCK_COUNT_AT + 4;
/// Bytes in a snapshot block header; the block's entries follow.
pub const BLOCK_HEADER_SIZE: usize = BLOCK_CRC_AT + 4;

const ENTRY_KEY_LEN_AT: usize = 0;
const ENTRY_VALUE_LEN_AT: usize = ENTRY_KEY_LEN_AT + 4;
const ENTRY_SEQ_AT: usize = ENTRY_VALUE_LEN_AT + 4;
const ENTRY_EXPIRES_AT: usize = ENTRY_SEQ_AT + 8;
/// Format version 2 only: the value's checksum ([`value_crc`]).
const ENTRY_VALUE_CRC_AT: usize = ENTRY_EXPIRES_AT + 8;
/// Bytes in a snapshot entry header of format version 1; the key, then the value, follow.
pub const ENTRY_HEADER_SIZE_V1: usize = ENTRY_VALUE_CRC_AT;
/// Bytes in a snapshot entry header of this build's format (the value checksum included); the
/// key, then the value, follow.
pub const ENTRY_HEADER_SIZE: usize = ENTRY_VALUE_CRC_AT + VALUE_CRC_SIZE;

/// Bytes in a snapshot entry header of format `version`.
pub fn entry_header_size(version: u32) -> usize {
    match version {
        1 => ENTRY_HEADER_SIZE_V1,
        FORMAT_VERSION_ENCRYPTED => ENTRY_HEADER_SIZE_ENCRYPTED,
        _ => ENTRY_HEADER_SIZE,
    }
}

/// The block-length value that marks the footer.
pub const FOOTER_MARKER: u32 = u32::MAX;
const FOOT_MARKER_AT: usize = 0;
const FOOT_RESERVED_AT: usize = FOOT_MARKER_AT + 4;
const FOOT_COUNT_AT: usize = FOOT_RESERVED_AT + 4;
const FOOT_BASE_SEQ_AT: usize = FOOT_COUNT_AT + 8;
const FOOT_END_SEQ_AT: usize = FOOT_BASE_SEQ_AT + 8;
const FOOT_OFFSET_AT: usize = FOOT_END_SEQ_AT + 8;
const FOOT_CRC_AT: usize = FOOT_OFFSET_AT + 8;
const FOOT_PAD_AT: usize = FOOT_CRC_AT + 4;
/// Bytes in a snapshot footer.
pub const SNAPSHOT_FOOTER_SIZE: usize = FOOT_PAD_AT + 4;

/// Encodes a snapshot header of this build's format. `base_seq`: every write with a sequence
/// number at or below it is reflected in the snapshot.
#[cfg(any(test, feature = "sim"))]
pub fn encode_snapshot_header(base_seq: u64) -> [u8; SNAPSHOT_HEADER_SIZE] {
    encode_snapshot_header_version(base_seq, FORMAT_VERSION)
}

/// Encodes a snapshot header of format `version` (a repair that keeps a damaged snapshot's
/// blocks keeps their version).
pub fn encode_snapshot_header_version(base_seq: u64, version: u32) -> [u8; SNAPSHOT_HEADER_SIZE] {
    encode_header(&SNAPSHOT_MAGIC, version, &[base_seq])
}

/// A decoded snapshot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Every write with a sequence number at or below it is reflected in the snapshot; the file
    /// is named after it.
    pub base_seq: u64,
    /// The format version of the snapshot's entries.
    pub version: u32,
}

/// Decodes a snapshot header.
pub fn decode_snapshot_header(b: &[u8]) -> HeaderState<SnapshotHeader> {
    if b.len() < SNAPSHOT_HEADER_SIZE {
        return HeaderState::Damaged(damage(0, "snapshot header is cut short"));
    }
    decode_header(b, &SNAPSHOT_MAGIC, "snapshot", "base sequence number")
        .map(|([base_seq], version)| SnapshotHeader { base_seq, version })
}

/// One live entry of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Sequence number of the write that set this value.
    pub seq: u64,
    /// Expiry deadline in ms since the Unix epoch, or 0.
    pub expires_at_ms: u64,
    /// The value's checksum ([`value_crc`]): stored in entries of format version 2 (`None` when
    /// decoding version 1, which has none). A writer may give it, already checked against the
    /// value (a checkpoint copying a value it verified), or leave it to the block builder.
    pub value_crc: Option<u32>,
}

/// Bytes an entry of this build's format takes in a block.
#[cfg(any(test, feature = "sim"))] // used by tests and fuzz targets only
pub fn snapshot_entry_size(key_len: usize, value_len: usize) -> usize {
    ENTRY_HEADER_SIZE + key_len + value_len
}

/// Whether the value of `value_len` bytes at `value_at` in the snapshot `file` (of format
/// `version`) is the value of `key` written at `seq`: the entry's header and key lie just before
/// it (see [`put_value_is_for`] for why). The framing only; [`check_snapshot_value`] checks a
/// version 2 value's checksum too. Never panics.
pub fn snapshot_value_is_for(
    file: &[u8],
    value_at: usize,
    key: &[u8],
    seq: u64,
    value_len: usize,
    version: u32,
) -> bool {
    let header = entry_header_size(version);
    let Some(entry_at) = value_at.checked_sub(header + key.len()) else {
        return false;
    };
    let key_at = entry_at + header;
    value_at.checked_add(value_len).is_some_and(|end| end <= file.len())
        && u32_at(file, entry_at + ENTRY_KEY_LEN_AT) as usize == key.len()
        && u32_at(file, entry_at + ENTRY_VALUE_LEN_AT) as usize == value_len
        && u64_at(file, entry_at + ENTRY_SEQ_AT) == seq
        && &file[key_at..value_at] == key
}

/// Checks the bytes of one snapshot entry of format `version`, from its start to the end of its
/// value (`b`, [`snapshot_value_back`] + `value_len` bytes), as the value of `key` written at
/// `seq`: the entry's header names that key, length and version, and (format version 2) the
/// value checksum matches. Returns the value checksum (`None` for version 1, which stores none).
/// Never panics.
pub fn check_snapshot_value(
    b: &[u8],
    key: &[u8],
    value_len: usize,
    seq: u64,
    version: u32,
) -> Result<Option<u32>, Damage> {
    let value_at = snapshot_value_back(key.len(), version);
    if b.len() != value_at.saturating_add(value_len)
        || !snapshot_value_is_for(b, value_at, key, seq, value_len, version)
    {
        return Err(damage(0, "the bytes here are not a snapshot entry of this key"));
    }
    if version == 1 {
        return Ok(None);
    }
    let stored = u32_at(b, ENTRY_VALUE_CRC_AT);
    if value_crc(key, &b[value_at..], seq) != stored {
        return Err(damage(ENTRY_VALUE_CRC_AT, "value checksum mismatch"));
    }
    Ok(Some(stored))
}

/// Bytes from the start of a snapshot entry of format `version` to its value.
pub fn snapshot_value_back(key_len: usize, version: u32) -> usize {
    entry_header_size(version) + key_len
}

/// Builds snapshot blocks: entries go in with [`BlockBuilder::push`]; [`BlockBuilder::finish`]
/// frames them.
#[derive(Debug)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    count: u32,
    version: u32,
    /// A version 3 block's directory and values ([`SealedBlock`]).
    sealed: SealedBlock,
}

impl Default for BlockBuilder {
    fn default() -> BlockBuilder {
        BlockBuilder::new()
    }
}

impl BlockBuilder {
    /// An empty block of this build's format.
    pub fn new() -> BlockBuilder {
        BlockBuilder {
            buf: vec![0u8; BLOCK_HEADER_SIZE],
            count: 0,
            version: FORMAT_VERSION,
            sealed: SealedBlock::default(),
        }
    }

    /// An empty block of format `version`: 2, or [`FORMAT_VERSION_ENCRYPTED`] (finished with
    /// [`BlockBuilder::finish_sealed`]); 1 in tests and fixtures.
    pub fn with_version(version: u32) -> BlockBuilder {
        assert!(reads_version(version));
        BlockBuilder {
            version,
            ..BlockBuilder::new()
        }
    }

    /// Entries so far.
    #[cfg(any(test, feature = "sim"))] // used by tests and fuzz targets only
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes so far, header included.
    pub fn len(&self) -> usize {
        if self.version == FORMAT_VERSION_ENCRYPTED {
            return BLOCK_HEADER_SIZE + self.sealed.body_len();
        }
        self.buf.len()
    }

    /// True when no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends an entry; returns the offset of its value within the block (versions 1 and 2;
    /// in version 3 values follow the directory, whose length is known only at the end: 0).
    pub fn push(&mut self, e: SnapshotEntry<'_>) -> usize {
        if self.version == FORMAT_VERSION_ENCRYPTED {
            self.sealed.push(e.key, e.value, e.seq, e.expires_at_ms);
            self.count += 1;
            return 0;
        }
        // NOTE: cannot truncate: key_len <= KEY_SIZE_MAX, value_len <= VALUE_SIZE_MAX_LIMIT.
        self.buf.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&e.seq.to_le_bytes());
        self.buf.extend_from_slice(&e.expires_at_ms.to_le_bytes());
        if self.version != 1 {
            let crc = e.value_crc.unwrap_or_else(|| value_crc(e.key, e.value, e.seq));
            debug_assert_eq!(crc, value_crc(e.key, e.value, e.seq), "a checksum given is the value's");
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
        self.buf.extend_from_slice(e.key);
        let value_at = self.buf.len();
        self.buf.extend_from_slice(e.value);
        self.count += 1;
        value_at
    }

    /// Seals and frames a version 3 block whose header will be at `block_offset` in the
    /// snapshot with base sequence number `base_seq`, and returns its bytes; the builder is
    /// empty again afterwards.
    pub(crate) fn finish_sealed(
        &mut self,
        cipher: &crate::crypto::FileCipher,
        base_seq: u64,
        block_offset: u64,
    ) -> Vec<u8> {
        debug_assert_eq!(self.version, FORMAT_VERSION_ENCRYPTED);
        debug_assert!(self.count > 0, "empty blocks are never written");
        debug_assert_eq!(self.buf.len(), BLOCK_HEADER_SIZE);
        self.sealed.seal_into(&mut self.buf, cipher, base_seq, block_offset);
        self.frame()
    }

    /// Frames the block and returns its bytes; the builder is empty again afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        debug_assert!(self.count > 0, "empty blocks are never written");
        debug_assert_ne!(self.version, FORMAT_VERSION_ENCRYPTED, "sealed blocks finish sealed");
        self.frame()
    }

    /// Writes the header of the block in `buf` and hands the bytes over.
    fn frame(&mut self) -> Vec<u8> {
        let body_len = (self.buf.len() - BLOCK_HEADER_SIZE) as u32;
        self.buf[BLOCK_LEN_AT..BLOCK_COUNT_AT].copy_from_slice(&body_len.to_le_bytes());
        self.buf[BLOCK_COUNT_AT..BLOCK_CRC_AT].copy_from_slice(&self.count.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&self.buf[..BLOCK_CRC_AT]);
        h.update(&self.buf[BLOCK_HEADER_SIZE..]);
        let crc = h.finalize();
        self.buf[BLOCK_CRC_AT..BLOCK_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
        self.count = 0;
        std::mem::replace(&mut self.buf, vec![0u8; BLOCK_HEADER_SIZE])
    }
}

/// A snapshot's footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFooter {
    /// Entries in all blocks.
    pub entry_count: u64,
    /// As in the header.
    pub base_seq: u64,
    /// Highest sequence number whose write may be reflected (a checkpoint copies the index
    /// while writers go on): the log must reach at least this far for the snapshot to be used.
    pub end_seq: u64,
    /// Offset of the footer in the file (= file length − footer size).
    pub footer_offset: u64,
}

/// Encodes a snapshot footer.
pub fn encode_snapshot_footer(f: SnapshotFooter) -> [u8; SNAPSHOT_FOOTER_SIZE] {
    let mut b = [0u8; SNAPSHOT_FOOTER_SIZE];
    b[FOOT_MARKER_AT..FOOT_RESERVED_AT].copy_from_slice(&FOOTER_MARKER.to_le_bytes());
    b[FOOT_COUNT_AT..FOOT_BASE_SEQ_AT].copy_from_slice(&f.entry_count.to_le_bytes());
    b[FOOT_BASE_SEQ_AT..FOOT_END_SEQ_AT].copy_from_slice(&f.base_seq.to_le_bytes());
    b[FOOT_END_SEQ_AT..FOOT_OFFSET_AT].copy_from_slice(&f.end_seq.to_le_bytes());
    b[FOOT_OFFSET_AT..FOOT_CRC_AT].copy_from_slice(&f.footer_offset.to_le_bytes());
    let crc = crc32fast::hash(&b[..FOOT_CRC_AT]);
    b[FOOT_CRC_AT..FOOT_PAD_AT].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the footer from a whole snapshot file's bytes. Offsets in the error are file offsets.
pub fn decode_snapshot_footer(file: &[u8]) -> Result<SnapshotFooter, Damage> {
    if file.len() < SNAPSHOT_HEADER_SIZE + SNAPSHOT_FOOTER_SIZE {
        return Err(damage(0, "snapshot is too short to hold a header and a footer"));
    }
    let at = file.len() - SNAPSHOT_FOOTER_SIZE;
    let b = &file[at..];
    if u32_at(b, FOOT_MARKER_AT) != FOOTER_MARKER || crc32fast::hash(&b[..FOOT_CRC_AT]) != u32_at(b, FOOT_CRC_AT) {
        return Err(damage(at, "snapshot footer is missing or damaged"));
    }
    let f = SnapshotFooter {
        entry_count: u64_at(b, FOOT_COUNT_AT),
        base_seq: u64_at(b, FOOT_BASE_SEQ_AT),
        end_seq: u64_at(b, FOOT_END_SEQ_AT),
        footer_offset: u64_at(b, FOOT_OFFSET_AT),
    };
    if f.footer_offset != at as u64 {
        return Err(damage(at, "snapshot footer offset disagrees with the file length"));
    }
    if f.end_seq < f.base_seq {
        return Err(damage(at, "snapshot footer end sequence precedes its base"));
    }
    if f.end_seq > limits::SEQ_MAX {
        return Err(damage(at, "snapshot footer end sequence above the maximum"));
    }
    Ok(f)
}

/// An entry decoded from a block, with the value's offset within the block's slice.
#[derive(Debug, Clone, Copy)]
pub struct DecodedEntry<'a> {
    /// The entry.
    pub entry: SnapshotEntry<'a>,
    /// Offset of the value within the bytes given to [`decode_block`].
    pub value_at: usize,
}

/// A snapshot block's framing, checked against the bytes available but not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFrame {
    /// Header plus body.
    pub len: usize,
    /// Entries in the body.
    pub count: usize,
}

/// Reads the block header at the start of `b` (which runs to the footer) of a snapshot of format
/// `version` and checks its length and count against `b` and the limits. Offsets in errors are
/// relative to `b`.
pub fn block_frame(b: &[u8], version: u32) -> Result<BlockFrame, Damage> {
    if b.len() < BLOCK_HEADER_SIZE {
        return Err(damage(0, "snapshot block header is cut short"));
    }
    let body_len = u32_at(b, BLOCK_LEN_AT) as usize;
    let count = u32_at(b, BLOCK_COUNT_AT) as usize;
    if body_len > limits::SNAPSHOT_BLOCK_BYTES_MAX || BLOCK_HEADER_SIZE + body_len > b.len() {
        return Err(damage(0, format!("snapshot block length {body_len} is impossible")));
    }
    if count == 0 || count > body_len / entry_header_size(version) {
        return Err(damage(
            BLOCK_COUNT_AT,
            format!("snapshot block entry count {count} is impossible"),
        ));
    }
    Ok(BlockFrame {
        len: BLOCK_HEADER_SIZE + body_len,
        count,
    })
}

/// Checks a framed block's checksum.
pub fn verify_block(b: &[u8], frame: BlockFrame) -> Result<(), Damage> {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..BLOCK_CRC_AT]);
    h.update(&b[BLOCK_HEADER_SIZE..frame.len]);
    if h.finalize() != u32_at(b, BLOCK_CRC_AT) {
        return Err(damage(0, "snapshot block checksum mismatch"));
    }
    Ok(())
}

/// Decodes the block at the start of `b` (which runs to the footer): framing, checksum,
/// entries. Returns the entries and the block's total length. Offsets in errors are relative
/// to `b`.
#[cfg(any(test, feature = "sim"))] // used by tests and fuzz targets only
pub fn decode_block(b: &[u8], version: u32) -> Result<(Vec<DecodedEntry<'_>>, usize), Damage> {
    let frame = block_frame(b, version)?;
    verify_block(b, frame)?;
    Ok((decode_block_entries(b, frame, version)?, frame.len))
}

/// Decodes a framed block's entries without checking its checksum (the caller verifies it,
/// possibly on another thread, before using any of them). Never panics on any bytes.
pub fn decode_block_entries(b: &[u8], frame: BlockFrame, version: u32) -> Result<Vec<DecodedEntry<'_>>, Damage> {
    let BlockFrame { len: total, count } = frame;
    let header = entry_header_size(version);
    let mut entries = Vec::with_capacity(count);
    let mut at = BLOCK_HEADER_SIZE;
    for _ in 0..count {
        if total - at < header {
            return Err(damage(at, "snapshot entry header runs past its block"));
        }
        let key_len = u32_at(b, at + ENTRY_KEY_LEN_AT) as usize;
        let value_len = u32_at(b, at + ENTRY_VALUE_LEN_AT) as usize;
        let key_at = at + header;
        if key_len > limits::KEY_SIZE_MAX
            || value_len > limits::VALUE_SIZE_MAX_LIMIT
            || total - key_at < key_len + value_len
        {
            return Err(damage(at, "snapshot entry runs past its block"));
        }
        let value_at = key_at + key_len;
        entries.push(DecodedEntry {
            entry: SnapshotEntry {
                key: &b[key_at..value_at],
                value: &b[value_at..value_at + value_len],
                seq: u64_at(b, at + ENTRY_SEQ_AT),
                expires_at_ms: u64_at(b, at + ENTRY_EXPIRES_AT),
                value_crc: (version == FORMAT_VERSION).then(|| u32_at(b, at + ENTRY_VALUE_CRC_AT)),
            },
            value_at,
        });
        at = value_at + value_len;
    }
    if at != total {
        return Err(damage(at, "snapshot block has bytes after its last entry"));
    }
    Ok(entries)
}

/// A record header's raw fields, unverified: for the cheap pre-check when searching damaged
/// bytes for a later valid record. Never trust these without [`decode_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPeek {
    /// The length field.
    pub payload_len: u32,
    /// The sequence field.
    pub seq: u64,
    /// The durable-sequence field.
    pub durable_seq: u64,
}

/// Reads a record header's fields without checking anything; `None` if too few bytes.
pub fn peek_record(b: &[u8]) -> Option<RecordPeek> {
    if b.len() < RECORD_HEADER_SIZE {
        return None;
    }
    Some(RecordPeek {
        payload_len: u32_at(b, REC_LEN_AT),
        seq: u64_at(b, REC_SEQ_AT),
        durable_seq: u64_at(b, REC_DURABLE_AT),
    })
}

// ---------------------------------------------------------------------------------------------
// Session keys (docs/format.md, "Session keys and values"): the keys the session layer chooses

/// Every session's key begins with this.
pub const SESSION_KEY_PREFIX: &[u8] = b"\0s";
/// Every per-user index entry's key begins with this.
const USER_INDEX_PREFIX: &[u8] = b"\0u";
/// Bytes of a session id.
pub const SESSION_ID_BYTES: usize = 16;

/// The key of the session with id `id`.
pub fn session_key(id: &[u8; SESSION_ID_BYTES]) -> Vec<u8> {
    [SESSION_KEY_PREFIX, id].concat()
}

/// The key prefix of `user`'s per-user index entries: the user's length as a big-endian `u16`
/// (so one user's entries form one prefix and sort by length, then user), then the user. `None`
/// for a user id longer than `u16::MAX` bytes.
pub fn user_index_prefix(user: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(user.len()).ok()?.to_be_bytes();
    Some([USER_INDEX_PREFIX, &len, user].concat())
}

/// The session id of a per-user index entry's key that begins with `prefix`
/// ([`user_index_prefix`]); `None` if what follows is not one id.
pub fn user_index_id(key: &[u8], prefix: &[u8]) -> Option<[u8; SESSION_ID_BYTES]> {
    key.strip_prefix(prefix)?.try_into().ok()
}

// ---------------------------------------------------------------------------------------------
// Session records (docs/format.md, "Session keys and values"): values the session layer stores

/// First byte of every session record's value: the layout version of what follows. This build
/// writes [`SESSION_RECORD_VERSION`] and reads it and [`SESSION_RECORD_VERSION_UNVERSIONED`].
pub const SESSION_RECORD_VERSION: u8 = 2;
/// The first session record layout: no payload version. Read forever, as payload version
/// [`SESSION_PAYLOAD_VERSION_UNVERSIONED`]; never written.
pub const SESSION_RECORD_VERSION_UNVERSIONED: u8 = 1;
/// The payload version of a record written before payload versions existed (record version 1).
pub const SESSION_PAYLOAD_VERSION_UNVERSIONED: u32 = 1;

// Record version 2: the version byte, the application's payload version, then the same body as
// version 1 (user and data, in the payload configuration).
const SESSION_RECORD_VERSION_AT: usize = 0;
const SESSION_PAYLOAD_VERSION_AT: usize = SESSION_RECORD_VERSION_AT + 1;
const SESSION_BODY_V2_AT: usize = SESSION_PAYLOAD_VERSION_AT + 4;
const SESSION_BODY_V1_AT: usize = SESSION_RECORD_VERSION_AT + 1;

/// A session as stored under its key: the user it belongs to, if any, its data, and the
/// application's version of the data's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord<'a> {
    /// The user id the session was created for (`SessionStore::create_for_user`).
    pub user: Option<&'a [u8]>,
    /// The session's data, as the application gave it.
    pub data: &'a [u8],
    /// The application's payload version of `data` (at least 1); record version 1 reads as
    /// [`SESSION_PAYLOAD_VERSION_UNVERSIONED`].
    pub payload_version: u32,
}

/// What follows the version byte (and, in version 2, the payload version): the same in both
/// record versions.
#[derive(bincode::Encode, bincode::BorrowDecode)]
struct SessionRecordBody<'a> {
    user: Option<&'a [u8]>,
    data: &'a [u8],
}

/// Encodes a session record in the current layout (version 2): the version byte, the payload
/// version, then user and data in the payload configuration.
pub fn encode_session_record(r: &SessionRecord<'_>) -> Vec<u8> {
    debug_assert!(r.payload_version >= 1, "the session layer refuses payload version 0");
    let mut out = Vec::with_capacity(SESSION_BODY_V2_AT + 17 + r.data.len());
    out.push(SESSION_RECORD_VERSION);
    out.extend_from_slice(&r.payload_version.to_le_bytes());
    debug_assert_eq!(out.len(), SESSION_BODY_V2_AT);
    let body = SessionRecordBody {
        user: r.user,
        data: r.data,
    };
    // NOTE: encoding into a Vec cannot fail: no limit applies to encoding and a Vec grows.
    if let Err(e) = bincode::encode_into_std_write(&body, &mut out, bincode_config()) {
        unreachable!("encoding into a Vec failed: {e}");
    }
    out
}

/// Decodes a session record of either layout version; lengths are bounded by the bytes present,
/// never trusted. A version 1 record reads as payload version 1.
pub fn decode_session_record(b: &[u8]) -> Result<SessionRecord<'_>, Damage> {
    let (payload_version, body_at) = match b.first() {
        Some(&SESSION_RECORD_VERSION_UNVERSIONED) => (SESSION_PAYLOAD_VERSION_UNVERSIONED, SESSION_BODY_V1_AT),
        Some(&SESSION_RECORD_VERSION) => {
            let Some(pv) = b.get(SESSION_PAYLOAD_VERSION_AT..SESSION_BODY_V2_AT) else {
                return Err(damage(b.len(), "session record is shorter than its payload version"));
            };
            let pv = u32_at(pv, 0);
            if pv == 0 {
                return Err(damage(
                    SESSION_PAYLOAD_VERSION_AT,
                    "session payload version 0 is not valid",
                ));
            }
            (pv, SESSION_BODY_V2_AT)
        }
        Some(v) => return Err(damage(0, format!("session record version {v} is not supported"))),
        None => return Err(damage(0, "session record is empty")),
    };
    let body = b.get(body_at..).unwrap_or_default();
    // Both fields borrow from `b`, so decoding allocates nothing; the decode limit bounds the
    // lengths it reads, and each must fit in the bytes present.
    let body: SessionRecordBody<'_> = decode_exact(body).map_err(|d| Damage {
        offset: d.offset + body_at as u64,
        reason: d.reason,
    })?;
    Ok(SessionRecord {
        user: body.user,
        data: body.data,
        payload_version,
    })
}

/// Map-shaped session data: entry names to their (JSON) values, in name order.
pub type SessionMapEntries = std::collections::BTreeMap<String, Vec<u8>>;

/// Encodes map-shaped session data (a `u64` count, then name and value pairs, names ascending).
pub fn encode_session_map(m: &SessionMapEntries) -> Vec<u8> {
    let mut out = Vec::new();
    // NOTE: encoding into a Vec cannot fail: no limit applies to encoding and a Vec grows.
    if let Err(e) = bincode::encode_into_std_write(m, &mut out, bincode_config()) {
        unreachable!("encoding into a Vec failed: {e}");
    }
    out
}

/// Decodes map-shaped session data.
pub fn decode_session_map(b: &[u8]) -> Result<SessionMapEntries, Damage> {
    // The smallest entry is two empty byte strings: 16 bytes. A count that cannot fit is damage
    // before the decoder sees it.
    if b.len() < 8 {
        return Err(damage(0, "session map is shorter than its count"));
    }
    let count = u64_at(b, 0);
    if count > ((b.len() - 8) / 16) as u64 {
        return Err(damage(0, format!("session map count {count} is impossible")));
    }
    match bincode::decode_from_slice::<SessionMapEntries, _>(b, bincode_config()) {
        Ok((m, used)) if used == b.len() => Ok(m),
        Ok((_, used)) => Err(damage(used, "session map has trailing bytes")),
        Err(e) => Err(damage(0, format!("session map does not decode: {e}"))),
    }
}

fn decode_exact<'a, T: bincode::BorrowDecode<'a, ()>>(b: &'a [u8]) -> Result<T, Damage> {
    match bincode::borrow_decode_from_slice::<T, _>(b, bincode_config()) {
        Ok((v, used)) if used == b.len() => Ok(v),
        Ok((_, used)) => Err(damage(used, "trailing bytes")),
        Err(e) => Err(damage(0, format!("does not decode: {e}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// The format version of a file, for the operator tools (docs/format.md, "Magic, version and
// preamble checksum")

#[cfg(test)]
mod preamble_version_tests {
    use super::*;

    /// The hand-written version 2 encoder writes exactly what bincode makes of the same ops as
    /// `WireOp`s (what `decode_ops` decodes): every kind of op, empty and long keys and values.
    #[test]
    fn the_v2_encoder_is_bincodes_layout() {
        let long = vec![7u8; 300];
        let ops = [
            Op::Put {
                key: b"k",
                value: b"v",
                expires_at_ms: 0,
            },
            Op::Delete { key: b"" },
            Op::Touch {
                key: b"touched",
                version: 9,
                expires_at_ms: u64::MAX,
            },
            Op::Put {
                key: &long[..40],
                value: &long,
                expires_at_ms: 1_700_000_000_000,
            },
            Op::Put {
                key: b"",
                value: b"",
                expires_at_ms: 3,
            },
        ];
        for n in 1..=ops.len() {
            let ops = &ops[..n];
            let mut mine = Vec::new();
            let _ = encode_ops(&mut mine, ops);
            let wire: Vec<WireOp<'_>> = ops
                .iter()
                .map(|op| match *op {
                    Op::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => WireOp::Put {
                        key,
                        value,
                        value_crc: value_crc_partial(key, value),
                        expires_at_ms,
                    },
                    Op::Delete { key } => WireOp::Delete { key },
                    Op::Touch {
                        key,
                        version,
                        expires_at_ms,
                    } => WireOp::Touch {
                        key,
                        version,
                        expires_at_ms,
                    },
                })
                .collect();
            let mut theirs = Vec::new();
            encode_into(&wire, &mut theirs);
            assert_eq!(mine, theirs, "{n} ops");
            assert_eq!(decode_ops(&mine, FORMAT_VERSION, None).as_deref(), Ok(ops));
        }
    }

    #[test]
    fn reads_the_version_of_an_intact_preamble_only() {
        let seg = encode_segment_header(SegmentHeader::new(3, 9));
        let snap = encode_snapshot_header(9);
        assert_eq!(decode_preamble_version(&seg), Some(FORMAT_VERSION));
        assert_eq!(decode_preamble_version(&snap[..PREAMBLE_BYTES]), Some(FORMAT_VERSION));
        assert_eq!(decode_preamble_version(&snap[..PREAMBLE_BYTES - 1]), None, "cut short");
        for i in 0..PREAMBLE_BYTES {
            let mut b = seg;
            b[i] ^= 1;
            assert_eq!(decode_preamble_version(&b), None, "byte {i} flipped");
        }
        // Another version, with its preamble checksum: read, not judged.
        let mut other = snap;
        other[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = preamble_crc(&other);
        other[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_preamble_version(&other), Some(2));
    }
}
