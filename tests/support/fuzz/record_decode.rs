//! Target `record_decode`: bytes as a log segment through the recovery decision table
//! (`wal/reader.rs`), in all three recovery modes.
//!
//! Input: a first byte that picks raw bytes (even) or a structured [`SegmentSpec`] (odd), and
//! whether the segment is the log's last and its expected first sequence number is known; for a
//! structured one, bit 3 picks its format version (set: 1, as older builds wrote; clear: 2).
//! Invariants: the reader never panics and never allocates from a length field (the capped
//! allocator); it ends in a clean end, a torn tail or an error naming corruption or an
//! unsupported format; what it replays are valid, consecutive records inside the file; only
//! the last segment outside `Strict` may have bytes cut; a cut is never vouched for by a later
//! record (docs/design.md, "Vouching"); `Strict` ⊆ `TolerateTornTail` ⊆ `Salvage` in what they
//! accept, agreeing where they both accept; a pristine spec reads back whole. Every replayed
//! payload goes through `decode_ops` in both versions, with and without the record's sequence
//! number: checking value checksums only ever refuses more, and refuses exactly when some put's
//! stored checksum is not `value_crc(key, value, seq)`, which `check_log_value` (the reader a get
//! uses) agrees with put by put. The input's bytes also go to `check_log_value` and
//! `check_snapshot_value` as they are: no panic, and whatever they accept is what they claim.

use arbitrary::{Arbitrary, Unstructured};
use sessiondb::internals::format::{self, Op, RecordState, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, VALUE_CRC_SIZE};
use sessiondb::internals::fuzzing::{self, SegmentOutcome};
use sessiondb::internals::limits::RECORD_PAYLOAD_MAX;
use sessiondb::{Error, RecoveryMode};

use super::spec::{version_from, SegmentSpec, SEGMENT_BYTES};

/// One input, decoded.
struct Case {
    bytes: Vec<u8>,
    segment_id: u64,
    is_last: bool,
    expected_seq: Option<u64>,
    /// Records a pristine spec wrote (all must be read back), if pristine.
    pristine_records: Option<usize>,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_input(data: &[u8]) -> Option<Case> {
    let (&sel, rest) = data.split_first()?;
    let is_last = sel & 2 != 0;
    if sel & 1 == 0 {
        // Raw bytes (the seed corpus holds real segments): the id the header names, so a real
        // segment's records verify; the expected first sequence number, its header's.
        let id = u64_at(rest, 16).unwrap_or(1);
        // NOTE: recovery never expects sequence number 0 (the log starts at 1).
        let expected_seq =
            (sel & 4 != 0).then(|| u64_at(rest, 24).unwrap_or(1).wrapping_add(u64::from(sel >> 6)).max(1));
        let mut bytes = rest.to_vec();
        if sel & 8 != 0 && bytes.len() < SEGMENT_BYTES {
            // Seeds keep a segment's non-zero prefix; the zeros of its preallocation come back.
            bytes.resize(SEGMENT_BYTES, 0);
        }
        return Some(Case {
            bytes,
            segment_id: id,
            is_last,
            expected_seq,
            pristine_records: None,
        });
    }
    let mut u = Unstructured::new(rest);
    let spec = SegmentSpec::arbitrary(&mut u).ok()?;
    let id = 1 + u64::from(sel >> 4);
    let next = 1 + u64::from(u8::arbitrary(&mut u).unwrap_or(0));
    let built = spec.build(id, next, version_from(sel & 8 != 0));
    let expected_seq = (sel & 4 != 0).then_some(next);
    Some(Case {
        bytes: built.bytes,
        segment_id: id,
        is_last,
        expected_seq,
        // A never-activated segment is pristine only as the log's last (a spare).
        pristine_records: (built.pristine && (is_last || built.first_seq.is_some())).then_some(built.records),
    })
}

/// The target.
pub fn run(data: &[u8]) {
    probe_value_readers(data);
    let Some(case) = decode_input(data) else {
        return;
    };
    let scan = |mode| fuzzing::scan_segment(&case.bytes, case.segment_id, case.is_last, mode, case.expected_seq);
    let strict = scan(RecoveryMode::Strict);
    let tolerant = scan(RecoveryMode::TolerateTornTail);
    let salvage = scan(RecoveryMode::Salvage);
    for (mode, r) in [("strict", &strict), ("tolerant", &tolerant), ("salvage", &salvage)] {
        match r {
            Ok(o) => check_outcome(&case, o, mode == "salvage"),
            Err(Error::Corruption { .. }) if mode != "salvage" => {}
            Err(Error::UnsupportedFormat { .. }) => {}
            Err(e) => panic!("{mode}: the reader failed with an error of the wrong kind: {e}"),
        }
    }
    if let Ok(o) = &strict {
        assert_eq!(
            o.dirty_end, o.valid_end,
            "strict accepted a segment and would cut bytes"
        );
        assert_eq!(
            tolerant.as_ref().ok(),
            Some(o),
            "strict accepted what tolerant did not, or read it otherwise"
        );
    }
    if let Ok(o) = &tolerant {
        if !case.is_last {
            assert_eq!(
                o.dirty_end, o.valid_end,
                "tolerant would cut bytes from a segment that is not the last"
            );
        }
        assert_eq!(o.skipped, 0);
        assert_eq!(
            salvage.as_ref().ok(),
            Some(o),
            "salvage read what tolerant accepted otherwise"
        );
        if o.dirty_end > o.valid_end {
            check_unvouched(&case, o);
        }
    }
    let unsupported = |r: &Result<SegmentOutcome, Error>| matches!(r, Err(Error::UnsupportedFormat { .. }));
    assert_eq!(
        unsupported(&strict),
        unsupported(&salvage),
        "modes disagree on the format version"
    );
    assert_eq!(
        unsupported(&tolerant),
        unsupported(&salvage),
        "modes disagree on the format version"
    );
    if let Some(n) = case.pristine_records {
        let o = strict
            .as_ref()
            .unwrap_or_else(|e| panic!("a pristine segment was refused: {e}"));
        assert_eq!(o.records.len(), n, "a pristine segment lost records");
    }
    for o in [&strict, &tolerant, &salvage].into_iter().flatten() {
        for r in &o.records {
            let at = r.offset as usize;
            let payload = &case.bytes[at + RECORD_HEADER_SIZE..at + r.len as usize];
            check_payload(payload);
            check_values(payload, r.seq);
        }
    }
}

/// An accepted outcome: valid records, in order, inside the file.
fn check_outcome(case: &Case, o: &SegmentOutcome, salvage: bool) {
    let len = case.bytes.len() as u64;
    assert!(o.valid_end <= len && o.dirty_end <= len, "ends past the file: {o:?}");
    assert!(
        o.valid_end <= o.dirty_end || o.dirty_end == 0 && o.valid_end == 0,
        "{o:?}"
    );
    let mut end = SEGMENT_HEADER_SIZE as u64;
    let mut prev: Option<u64> = None;
    for r in &o.records {
        assert!(r.offset >= end, "records overlap or precede the header: {o:?}");
        let at = r.offset as usize;
        match format::decode_record(&case.bytes[at..], case.segment_id, RECORD_PAYLOAD_MAX) {
            RecordState::Valid(v) => {
                assert_eq!(
                    (v.seq, v.len as u64),
                    (r.seq, r.len),
                    "replayed record differs from its bytes"
                )
            }
            other => panic!("replayed a record that does not verify: {other:?}"),
        }
        match prev {
            Some(p) if salvage => assert!(r.seq > p, "salvage replayed sequence numbers out of order"),
            Some(p) => assert_eq!(r.seq, p + 1, "replayed sequence numbers are not consecutive"),
            None if !salvage => {
                assert_eq!(Some(r.seq), o.first_seq, "the first record is not the header's first");
                if let Some(e) = case.expected_seq {
                    assert_eq!(r.seq, e, "the first record is not the expected one");
                }
            }
            None => {}
        }
        prev = Some(r.seq);
        end = r.offset + r.len;
    }
    if !salvage {
        match (o.first_seq, o.records.last()) {
            (Some(_), Some(r)) => assert_eq!(o.valid_end, r.offset + r.len),
            (Some(_), None) => assert_eq!(o.valid_end, SEGMENT_HEADER_SIZE as u64),
            (None, _) => assert!(o.records.is_empty() && o.valid_end == 0),
        }
    }
}

/// A torn tail was cut: no later valid record may say the damaged position had been fsynced.
fn check_unvouched(case: &Case, o: &SegmentOutcome) {
    let b = &case.bytes;
    let nonzero = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    // Records of the one kind the engine writes (others are reserved: damage, never a witness).
    let valid_at = |p: usize| match format::decode_record(&b[p..], case.segment_id, RECORD_PAYLOAD_MAX) {
        RecordState::Valid(r) if r.durable_seq < r.seq && r.kind == format::KIND_OPS => Some(r),
        _ => None,
    };
    // The sequence number expected where the damage is, and where later records start.
    let (expect, from) = match (o.records.last(), o.first_seq) {
        (Some(r), _) => (r.seq + 1, o.valid_end as usize + 1),
        (None, Some(f)) => (f, o.valid_end as usize + 1),
        // No usable header: the segment's first record is the expected one, else the first
        // valid record in it.
        (None, None) => {
            let first = case
                .expected_seq
                .or_else(|| (SEGMENT_HEADER_SIZE..nonzero).find_map(|p| valid_at(p).map(|r| r.seq)));
            match first {
                Some(f) => (f, SEGMENT_HEADER_SIZE),
                None => return,
            }
        }
    };
    // The reader's plausibility bound (`find_record`): within a segment, sequence numbers grow
    // by one per record, so a record claiming one further ahead than records fit is not ours.
    let seq_max = if expect <= 1 {
        u64::MAX
    } else {
        (expect - 1).saturating_add((b.len() / RECORD_HEADER_SIZE) as u64 + 1)
    };
    for p in from..nonzero {
        if let Some(r) = valid_at(p) {
            assert!(
                !(r.seq >= expect && r.seq <= seq_max && r.durable_seq >= expect),
                "cut a torn tail at {} (expecting {expect}, header {:?}, given {:?}) that the record at {p} (seq {}, durable {}) vouches for",
                o.valid_end,
                o.first_seq,
                case.expected_seq,
                r.seq,
                r.durable_seq
            );
        }
    }
}

/// A payload that decodes, as either format version, re-encodes to the same bytes (the encoding
/// is canonical). Version 2's value checksums are not checked here (no sequence number is
/// known): the re-encoding takes them from the payload.
pub fn check_payload(payload: &[u8]) {
    if let Ok(ops) = format::decode_ops(payload, 1, None) {
        let mut again = Vec::new();
        format::encode_ops_v1(&mut again, &ops);
        assert_eq!(again, payload, "a version 1 payload decoded but re-encodes differently");
    }
    if let Ok(ops) = format::decode_ops(payload, format::FORMAT_VERSION, None) {
        let mut again = Vec::new();
        let offsets: Vec<Option<usize>> = format::encode_ops(&mut again, &ops).collect();
        for (op, at) in ops.iter().zip(offsets) {
            if let (format::Op::Put { value, .. }, Some(at)) = (op, at) {
                let crc = at + value.len()..at + value.len() + format::VALUE_CRC_SIZE;
                again[crc.clone()].copy_from_slice(&payload[crc]);
            }
        }
        assert_eq!(again, payload, "a version 2 payload decoded but re-encodes differently");
    }
}

/// `decode_ops` in both versions with and without `seq` (the record's sequence number), and
/// `check_log_value` on every put of a version 2 reading: see the module's invariants.
pub fn check_values(payload: &[u8], seq: u64) {
    let v1 = format::decode_ops(payload, 1, None);
    assert_eq!(
        format::decode_ops(payload, 1, Some(seq)).ok(),
        v1.ok(),
        "a version 1 payload has no value checksum: the sequence number changes nothing"
    );
    let unsealed = format::decode_ops(payload, 2, None);
    let sealed = format::decode_ops(payload, 2, Some(seq));
    if let Ok(ops) = &sealed {
        assert_eq!(
            unsealed.as_ref().ok(),
            Some(ops),
            "checking value checksums changed the ops"
        );
    }
    let Ok(ops) = &unsealed else {
        assert!(
            sealed.is_err(),
            "a payload decoded only once its checksums were checked"
        );
        return;
    };
    let mut every_crc_ok = true;
    for op in ops {
        let Op::Put { key, value, .. } = *op else {
            continue;
        };
        let value_at = value.as_ptr() as usize - payload.as_ptr() as usize;
        let start = value_at - format::log_value_back(key.len());
        let crc_at = value_at + value.len();
        let b = &payload[start..crc_at + VALUE_CRC_SIZE];
        let stored = u32::from_le_bytes(payload[crc_at..crc_at + VALUE_CRC_SIZE].try_into().unwrap_or([0; 4]));
        let crc_ok = stored == format::value_crc(key, value, seq);
        match format::check_log_value(b, key, value.len(), seq) {
            Ok(c) => assert!(crc_ok && c == stored, "check_log_value accepted a wrong checksum"),
            Err(_) => assert!(!crc_ok, "check_log_value refused a put whose checksum matches"),
        }
        // Another length or a key one byte longer never passes the framing check.
        assert!(format::check_log_value(b, key, value.len() + 1, seq).is_err());
        let longer = [key, b"x"].concat();
        assert!(format::check_log_value(b, &longer, value.len(), seq).is_err());
        every_crc_ok &= crc_ok;
    }
    assert_eq!(
        sealed.is_ok(),
        every_crc_ok,
        "decode_ops with the sequence number disagrees with the puts' checksums"
    );
}

/// The value readers on the input's own bytes: a key, a length and a sequence number taken from
/// its first bytes. No panic; an accepted put or entry is exactly what the reader claims.
fn probe_value_readers(data: &[u8]) {
    let k = usize::from(data.first().copied().unwrap_or(0) % 8);
    let key = data.get(1..1 + k).unwrap_or_default();
    let seq = u64_at(data, 1 + k).unwrap_or(1);
    let back = format::log_value_back(k);
    let lens = [
        0,
        1,
        data.len().saturating_sub(back + VALUE_CRC_SIZE),
        data.len().saturating_sub(format::snapshot_value_back(k, 1)),
        data.len().saturating_sub(format::snapshot_value_back(k, 2)),
        u32::MAX as usize,
        usize::MAX,
    ];
    for len in lens {
        if let Ok(stored) = format::check_log_value(data, key, len, seq) {
            assert_eq!(data.len(), back + len + VALUE_CRC_SIZE);
            assert_eq!(&data[12..12 + k], key);
            assert_eq!(stored, format::value_crc(key, &data[back..back + len], seq));
        }
        // Format version 3 (an encrypted store's): hostile bytes as a payload to open and
        // decode, and as a sealed put to check, never panic; nothing opens under another key.
        let cipher = sessiondb::internals::crypto::FileCipher::new(&[0x3e; 32]);
        let mut copy = data.to_vec();
        assert!(
            format::open_ops(&mut copy, &cipher, 3, 65, seq).is_err()
                || format::decode_ops(&copy, 3, Some(seq)).is_ok(),
            "an opened payload decodes"
        );
        let _ = format::decode_ops(data, 3, Some(seq));
        let mut copy = data.to_vec();
        let _ = format::check_log_value_encrypted(&mut copy, key, len, seq, &cipher, 3, 65);
        let mut copy = data.to_vec();
        let _ = format::check_snapshot_value_encrypted(&mut copy, len, seq, &cipher, 1002, 44);
        for version in [1, 2] {
            let _ = format::decode_ops(data, version, Some(seq));
            if let Ok(crc) = format::check_snapshot_value(data, key, len, seq, version) {
                let back = format::snapshot_value_back(k, version);
                assert_eq!(data.len(), back + len);
                assert_eq!(&data[back - k..back], key);
                assert_eq!(u64_at(data, 8), Some(seq));
                let want = (version != 1).then(|| format::value_crc(key, &data[back..], seq));
                assert_eq!(crc, want);
            }
        }
    }
}

pub fn debug(data: &[u8]) {
    let case = decode_input(data).unwrap();
    eprintln!(
        "id {} last {} expected {:?} len {}",
        case.segment_id,
        case.is_last,
        case.expected_seq,
        case.bytes.len()
    );
    eprintln!("{:02x?}", &case.bytes[..case.bytes.len().min(200)]);
    for m in [
        RecoveryMode::Strict,
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Salvage,
    ] {
        eprintln!(
            "{m:?}: {:?}",
            fuzzing::scan_segment(&case.bytes, case.segment_id, case.is_last, m, case.expected_seq)
        );
    }
}
