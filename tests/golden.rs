//! Golden files: sessiondb's on-disk bytes, pinned.
//!
//! Scenario: every structure that `docs/format.md` describes (segment header, record frame, batch
//! payload, snapshot header, snapshot block, snapshot footer, and a small segment and snapshot
//! assembled from them) is encoded from fixed inputs with the public `sessiondb::internals::format` API.
//!
//! Method: each encoding is compared byte for byte with a committed file in `tests/golden/`; a
//! mismatch prints a hex diff. Independently of the encoder, each field is read back at the
//! offset and width the tables in `docs/format.md` give, and each checksum is recomputed with
//! `crc32fast` over exactly the bytes the tables say it covers. Every frame is checked to be as
//! long as its table says, every decoder round-trips its encoder, and hostile bytes (impossible
//! counts and lengths, zeros, single flipped bytes, a garbled version field) are shown to come
//! back as damage rather than a panic; only a future version with an intact preamble checksum
//! reads as that version. The worked examples in `docs/format.md` (the hex blocks marked
//! `<!-- example: NAME -->`) are parsed and compared with the encoder's output.
//!
//! Invariant: the bytes sessiondb writes do not change unless the format version changes, and
//! `docs/format.md` describes them exactly.
//!
//! Regenerating: an intended format change bumps `FORMAT_VERSION`, updates `docs/format.md`,
//! then rewrites the golden files with
//!
//! ```text
//! SESSIONDB_BLESS=1 cargo test --test golden
//! ```
//!
//! With `SESSIONDB_BLESS=1` the golden tests write their files instead of comparing; review the
//! new files' diff before committing them.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use sessiondb::internals::format::{
    decode_block, decode_ops, decode_record, decode_segment_header, decode_snapshot_footer, decode_snapshot_header,
    delete_encoded_size, encode_ops, encode_record, encode_segment_header, encode_snapshot_footer,
    encode_snapshot_header, put_encoded_size, snapshot_entry_size, touch_encoded_size, BlockBuilder, HeaderState, Op,
    RecordState, SegmentHeader, SnapshotEntry, SnapshotFooter, BLOCK_HEADER_SIZE, ENTRY_HEADER_SIZE, FOOTER_MARKER,
    FORMAT_VERSION, KIND_OPS, PAYLOAD_COUNT_SIZE, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
    SNAPSHOT_FOOTER_SIZE, SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC,
};
use sessiondb::internals::format::{
    decode_session_map, decode_session_record, encode_session_map, encode_session_record, SessionMapEntries,
    SessionRecord, SESSION_PAYLOAD_VERSION_UNVERSIONED, SESSION_RECORD_VERSION, SESSION_RECORD_VERSION_UNVERSIONED,
};
use sessiondb::limits::BATCH_OPS_MAX;

// ---------------------------------------------------------------------------------------------
// Fixed inputs. Changing any of them changes the golden files: re-bless deliberately.

const SEGMENT_ID: u64 = 3;
const FIRST_SEQ: u64 = 1001;
const BASE_SEQ: u64 = 1000;
const END_SEQ: u64 = 1002;
/// 2023-11-14T22:13:20Z, in ms since the Unix epoch.
const EXPIRES_AT_MS: u64 = 1_700_000_000_000;
/// A payload bound that never gets in the way of the small records here.
const PAYLOAD_MAX: usize = 1 << 20;

/// The one-put payload of docs/format.md's worked example: key "k", value "v", no expiry.
const ONE_PUT_HEX: &str = "0100000000000000\
                           00000000\
                           0100000000000000 6b\
                           0100000000000000 76\
                           0000000000000000";

fn one_put() -> Vec<Op<'static>> {
    vec![Op::Put {
        key: b"k",
        value: b"v",
        expires_at_ms: 0,
    }]
}

fn batch() -> Vec<Op<'static>> {
    vec![
        Op::Put {
            key: b"user:42",
            value: b"session-blob",
            expires_at_ms: EXPIRES_AT_MS,
        },
        Op::Delete { key: b"user:7" },
    ]
}

/// docs/format.md's touch example: key "k", touched at version 1002 to expire at
/// `EXPIRES_AT_MS`.
fn one_touch() -> Vec<Op<'static>> {
    vec![Op::Touch {
        key: b"k",
        version: FIRST_SEQ + 1,
        expires_at_ms: EXPIRES_AT_MS,
    }]
}

fn payload(ops: &[Op<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_ops(&mut out, ops);
    out
}

fn segment_header() -> [u8; SEGMENT_HEADER_SIZE] {
    encode_segment_header(SegmentHeader {
        segment_id: SEGMENT_ID,
        first_seq: FIRST_SEQ,
    })
}

/// Record `FIRST_SEQ` of segment `SEGMENT_ID`, carrying `batch()`.
fn record() -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(&mut out, SEGMENT_ID, FIRST_SEQ, BASE_SEQ, KIND_OPS, &payload(&batch()));
    out
}

/// Record `FIRST_SEQ + 1` of segment `SEGMENT_ID`, carrying `one_put()` and vouching that
/// `FIRST_SEQ` is durable: docs/format.md's record example.
fn one_put_record() -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(
        &mut out,
        SEGMENT_ID,
        FIRST_SEQ + 1,
        FIRST_SEQ,
        KIND_OPS,
        &payload(&one_put()),
    );
    out
}

/// The written part of a segment: header, `record()`, `one_put_record()`, and one record
/// header's worth of the zeros that follow the end of the log in a preallocated file.
fn segment() -> Vec<u8> {
    let mut out = segment_header().to_vec();
    out.extend_from_slice(&record());
    out.extend_from_slice(&one_put_record());
    out.extend_from_slice(&[0u8; RECORD_HEADER_SIZE]);
    out
}

fn entries() -> Vec<SnapshotEntry<'static>> {
    vec![
        SnapshotEntry {
            key: b"a",
            value: b"1",
            seq: 5,
            expires_at_ms: 0,
        },
        SnapshotEntry {
            key: b"user:42",
            value: b"session-blob",
            seq: FIRST_SEQ,
            expires_at_ms: EXPIRES_AT_MS,
        },
    ]
}

fn block() -> Vec<u8> {
    let mut b = BlockBuilder::new();
    for e in entries() {
        b.push(e);
    }
    b.finish()
}

fn footer_for(block_len: usize) -> SnapshotFooter {
    SnapshotFooter {
        entry_count: entries().len() as u64,
        base_seq: BASE_SEQ,
        end_seq: END_SEQ,
        footer_offset: (SNAPSHOT_HEADER_SIZE + block_len) as u64,
    }
}

/// A whole snapshot file: header, one block, footer.
fn snapshot() -> Vec<u8> {
    let block = block();
    let mut out = encode_snapshot_header(BASE_SEQ).to_vec();
    out.extend_from_slice(&block);
    out.extend_from_slice(&encode_snapshot_footer(footer_for(block.len())));
    out
}

/// docs/format.md's snapshot example: the snapshot a checkpoint right after `one_put_record()`
/// would write if "k" were the only key: base and end sequence `FIRST_SEQ + 1`, one entry.
fn one_entry_snapshot() -> Vec<u8> {
    let seq = FIRST_SEQ + 1;
    let mut b = BlockBuilder::new();
    b.push(SnapshotEntry {
        key: b"k",
        value: b"v",
        seq,
        expires_at_ms: 0,
    });
    let block = b.finish();
    let mut out = encode_snapshot_header(seq).to_vec();
    out.extend_from_slice(&block);
    out.extend_from_slice(&encode_snapshot_footer(SnapshotFooter {
        entry_count: 1,
        base_seq: seq,
        end_seq: seq,
        footer_offset: (SNAPSHOT_HEADER_SIZE + block.len()) as u64,
    }));
    out
}

// ---------------------------------------------------------------------------------------------
// Golden-file plumbing

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name)
}

fn blessing() -> bool {
    std::env::var_os("SESSIONDB_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with `tests/golden/<name>`, or writes it there when blessing.
fn check_golden(name: &str, actual: &[u8]) {
    let path = golden_path(name);
    if blessing() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with SESSIONDB_BLESS=1 cargo test --test golden",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "the on-disk format changed: {} no longer matches what sessiondb::internals::format encodes.\n\
             If this is intended, bump FORMAT_VERSION, update docs/format.md, and re-bless with\n\
             SESSIONDB_BLESS=1 cargo test --test golden\n{}",
            path.display(),
            hex_diff(&expected, actual)
        );
    }
}

fn hex_row(b: &[u8], at: usize) -> String {
    let end = (at + 16).min(b.len());
    if at >= end {
        return String::from("(none)");
    }
    b[at..end].iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x} ");
        s
    })
}

/// Rows of 16 bytes where the two differ, expected (`-`) above actual (`+`).
fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    let mut out = format!("expected {} bytes, encoded {} bytes", expected.len(), actual.len());
    if let Some(i) = expected.iter().zip(actual).position(|(a, b)| a != b) {
        let _ = write!(out, "; first difference at offset {i} (0x{i:x})");
    } else {
        let i = expected.len().min(actual.len());
        let _ = write!(out, "; one is a prefix of the other, up to offset {i}");
    }
    out.push('\n');
    for at in (0..expected.len().max(actual.len())).step_by(16) {
        let (e, a) = (hex_row(expected, at), hex_row(actual, at));
        if e != a {
            let _ = writeln!(out, "{at:08x} - {e}\n{at:08x} + {a}");
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// docs/format.md's session value example: user "ada", data `{"n":1}`, at the application's
/// payload version 3 (record version 2).
fn session_record() -> Vec<u8> {
    encode_session_record(&SessionRecord {
        user: Some(b"ada"),
        data: br#"{"n":1}"#,
        payload_version: 3,
    })
}

/// The same session as builds before payload versions wrote it (record version 1): no encoder
/// writes it any more, so its bytes are the golden file those builds left, read and never
/// rewritten (blessing does not touch it).
fn session_record_v1() -> Vec<u8> {
    let path = golden_path("session_record.bin");
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// docs/format.md's map session example: `cart` = 3 and `theme` = "dark", as JSON values.
fn session_map() -> Vec<u8> {
    let mut m = SessionMapEntries::new();
    m.insert("theme".to_string(), br#""dark""#.to_vec());
    m.insert("cart".to_string(), b"3".to_vec());
    encode_session_map(&m)
}

// ---------------------------------------------------------------------------------------------
// Golden files

#[test]
fn golden_segment_header() {
    check_golden("segment_header.bin", &segment_header());
}

#[test]
fn golden_record() {
    check_golden("record.bin", &record());
}

#[test]
fn golden_payload_one_put() {
    check_golden("payload_one_put.bin", &payload(&one_put()));
}

#[test]
fn golden_payload_batch() {
    check_golden("payload_batch.bin", &payload(&batch()));
}

#[test]
fn golden_payload_touch() {
    let p = payload(&one_touch());
    assert_eq!(p.len(), PAYLOAD_COUNT_SIZE + touch_encoded_size(1));
    assert_eq!(decode_ops(&p).unwrap(), one_touch(), "decodes back");
    check_golden("payload_touch.bin", &p);
}

#[test]
fn golden_session_values() {
    let r = session_record();
    assert_eq!(r[0], SESSION_RECORD_VERSION);
    assert_eq!(le_u32(&r, 1), 3, "payload version after the version byte");
    assert_eq!(
        r.len(),
        1 + 4 + (1 + 8 + 3) + (8 + 7),
        "version, payload version, Some(user), data"
    );
    assert_eq!(
        decode_session_record(&r).unwrap(),
        SessionRecord {
            user: Some(b"ada"),
            data: br#"{"n":1}"#,
            payload_version: 3,
        }
    );
    let anonymous = encode_session_record(&SessionRecord {
        user: None,
        data: b"",
        payload_version: 1,
    });
    assert_eq!(
        anonymous,
        [SESSION_RECORD_VERSION, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "None is one zero byte"
    );
    check_golden("session_record_v2.bin", &r);

    // Record version 1, as older builds wrote it, reads forever, as payload version 1.
    let v1 = session_record_v1();
    assert_eq!(v1[0], SESSION_RECORD_VERSION_UNVERSIONED);
    assert_eq!(
        decode_session_record(&v1).unwrap(),
        SessionRecord {
            user: Some(b"ada"),
            data: br#"{"n":1}"#,
            payload_version: SESSION_PAYLOAD_VERSION_UNVERSIONED,
        }
    );
    assert_eq!(SESSION_PAYLOAD_VERSION_UNVERSIONED, 1);
    assert_eq!(
        decode_session_record(&[&[SESSION_RECORD_VERSION, 1, 0, 0, 0][..], &v1[1..]].concat()).unwrap(),
        decode_session_record(&v1).unwrap(),
        "version 2 is version 1 with the payload version inserted after the version byte"
    );

    let m = session_map();
    assert_eq!(le_u64(&m, 0), 2, "entry count");
    assert_eq!(&m[16..20], b"cart", "names ascending");
    assert_eq!(decode_session_map(&m).unwrap().len(), 2);
    check_golden("session_map.bin", &m);
    // Hostile bytes are damage, never a panic or a huge allocation.
    assert!(decode_session_record(&[3]).is_err(), "unknown version");
    assert!(decode_session_record(&[]).is_err(), "empty");
    for cut in 0..r.len() {
        assert!(
            decode_session_record(&r[..cut]).is_err(),
            "version 2 cut to {cut} bytes"
        );
    }
    for cut in 0..v1.len() {
        assert!(
            decode_session_record(&v1[..cut]).is_err(),
            "version 1 cut to {cut} bytes"
        );
    }
    assert!(
        decode_session_record(&[r.as_slice(), &[0]].concat()).is_err(),
        "trailing byte"
    );
    let mut zero = r.clone();
    zero[1..5].copy_from_slice(&0u32.to_le_bytes());
    let d = decode_session_record(&zero).unwrap_err();
    assert_eq!(d.offset, 1, "payload version 0 is damage at its field: {d:?}");
    let mut long = r.clone();
    long[5 + 1..5 + 9].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_session_record(&long).is_err(), "user length past the end");
    let mut huge = m.clone();
    huge[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_session_map(&huge).is_err(), "impossible count");
    assert!(
        decode_session_map(&[m.as_slice(), &[0]].concat()).is_err(),
        "trailing bytes"
    );
}

#[test]
fn golden_segment() {
    check_golden("segment.bin", &segment());
}

#[test]
fn golden_snapshot_header() {
    check_golden("snapshot_header.bin", &encode_snapshot_header(BASE_SEQ));
}

#[test]
fn golden_snapshot_block() {
    check_golden("snapshot_block.bin", &block());
}

#[test]
fn golden_snapshot_footer() {
    let footer = encode_snapshot_footer(footer_for(block().len()));
    check_golden("snapshot_footer.bin", &footer);
}

#[test]
fn golden_snapshot() {
    check_golden("snapshot.bin", &snapshot());
}

#[test]
fn golden_snapshot_one_entry() {
    check_golden("snapshot_one_entry.bin", &one_entry_snapshot());
}

// ---------------------------------------------------------------------------------------------
// The tables of docs/format.md, read independently of the decoders

#[test]
fn constants_match_the_tables() {
    assert_eq!(FORMAT_VERSION, 1);
    assert_eq!(&SEGMENT_MAGIC, b"SDB-WAL\0");
    assert_eq!(&SNAPSHOT_MAGIC, b"SDB-SNP\0");
    assert_eq!(KIND_OPS, 1);
    assert_eq!(FOOTER_MARKER, 0xFFFF_FFFF);
    assert_eq!(SEGMENT_HEADER_SIZE, 40);
    assert_eq!(RECORD_HEADER_SIZE, 25);
    assert_eq!(PAYLOAD_COUNT_SIZE, 8);
    assert_eq!(SNAPSHOT_HEADER_SIZE, 32);
    assert_eq!(BLOCK_HEADER_SIZE, 12);
    assert_eq!(ENTRY_HEADER_SIZE, 24);
    assert_eq!(SNAPSHOT_FOOTER_SIZE, 48);
}

#[test]
fn crc32_is_ieee() {
    // The standard CRC-32 check value (reflected polynomial 0xEDB88320, init and final XOR
    // 0xFFFFFFFF), so the checksums can be recomputed without crc32fast.
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
}

#[test]
fn segment_header_fields_sit_where_the_table_says() {
    let b = segment_header();
    assert_eq!(b.len(), 40);
    assert_eq!(&b[0..8], b"SDB-WAL\0", "magic");
    assert_eq!(le_u32(&b, 8), 1, "version");
    assert_eq!(
        le_u32(&b, 12),
        crc32fast::hash(&b[0..12]),
        "preamble crc of bytes 0..12"
    );
    assert_eq!(le_u64(&b, 16), SEGMENT_ID, "segment_id");
    assert_eq!(le_u64(&b, 24), FIRST_SEQ, "first_seq");
    assert_eq!(le_u32(&b, 32), crc32fast::hash(&b[0..32]), "crc of bytes 0..32");
    assert_eq!(le_u32(&b, 36), 0, "pad");
}

#[test]
fn record_fields_sit_where_the_table_says() {
    let p = payload(&batch());
    let r = record();
    assert_eq!(r.len(), 25 + p.len(), "a record is 25 bytes of header plus its payload");
    assert_eq!(le_u32(&r, 0) as usize, p.len(), "payload_len");
    assert_eq!(le_u64(&r, 8), FIRST_SEQ, "seq");
    assert_eq!(le_u64(&r, 16), BASE_SEQ, "durable_seq");
    assert_eq!(r[24], 1, "kind");
    assert_eq!(&r[25..], &p[..], "payload");
    // The checksum covers the segment id (not stored), the length, then bytes 8..end.
    let mut h = crc32fast::Hasher::new();
    h.update(&SEGMENT_ID.to_le_bytes());
    h.update(&r[0..4]);
    h.update(&r[8..]);
    assert_eq!(le_u32(&r, 4), h.finalize(), "crc");
}

#[test]
fn segment_is_header_then_records_then_zeros() {
    let s = segment();
    let first = record();
    let second_at = 40 + first.len();
    assert_eq!(&s[..40], &segment_header()[..]);
    assert_eq!(&s[40..second_at], &first[..]);
    let second_len = 25 + payload(&one_put()).len();
    assert_eq!(le_u64(&s, second_at + 8), FIRST_SEQ + 1, "second record's seq");
    assert_eq!(
        le_u64(&s, second_at + 16),
        FIRST_SEQ,
        "second record vouches for the first"
    );
    let end = second_at + second_len;
    assert_eq!(s.len(), end + 25);
    assert!(s[end..].iter().all(|&x| x == 0));
}

/// The bytes of the worked example marked `<!-- example: NAME -->` in docs/format.md: the
/// `text` block after the marker, one field per line, hex bytes then two spaces then a comment.
fn doc_example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/format.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = format!("<!-- example: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/format.md has no {marker}"));
    let mut lines = doc[start + marker.len()..].lines().skip_while(|l| l.trim().is_empty());
    assert_eq!(lines.next(), Some("```text"), "{marker} is followed by a text block");
    let mut bytes = Vec::new();
    for line in lines.take_while(|l| *l != "```") {
        let hex_part = line.split("  ").next().unwrap_or("");
        for tok in hex_part.split_whitespace() {
            let b = u8::from_str_radix(tok, 16)
                .unwrap_or_else(|_| panic!("{marker}: {tok:?} in {line:?} is not a hex byte"));
            bytes.push(b);
        }
    }
    bytes
}

#[test]
fn docs_examples_match_the_encoder() {
    let examples: [(&str, Vec<u8>); 8] = [
        ("segment_header", segment_header().to_vec()),
        ("record_one_put", one_put_record()),
        ("payload_one_put", payload(&one_put())),
        ("payload_one_touch", payload(&one_touch())),
        ("snapshot_one_entry", one_entry_snapshot()),
        ("session_record_v1", session_record_v1()),
        ("session_record", session_record()),
        ("session_map", session_map()),
    ];
    for (name, bytes) in examples {
        let documented = doc_example(name);
        assert!(
            documented == bytes,
            "docs/format.md's example {name} disagrees with the encoder:\n{}",
            hex_diff(&documented, &bytes)
        );
    }
}

#[test]
fn one_put_payload_is_the_documented_hex() {
    let p = payload(&one_put());
    assert_eq!(p, hex(ONE_PUT_HEX), "docs/format.md's worked example");
    assert_eq!(p.len(), 38);
    assert_eq!(p.len(), PAYLOAD_COUNT_SIZE + put_encoded_size(1, 1));
}

#[test]
fn payload_fields_sit_where_the_table_says() {
    let p = payload(&batch());
    assert_eq!(le_u64(&p, 0), 2, "op count");
    // Op 0: Put { key "user:42", value "session-blob", expires_at_ms }.
    assert_eq!(le_u32(&p, 8), 0, "Put tag");
    assert_eq!(le_u64(&p, 12), 7, "key length");
    assert_eq!(&p[20..27], b"user:42");
    assert_eq!(le_u64(&p, 27), 12, "value length");
    assert_eq!(&p[35..47], b"session-blob");
    assert_eq!(le_u64(&p, 47), EXPIRES_AT_MS, "expires_at_ms");
    // Op 1: Delete { key "user:7" }.
    assert_eq!(le_u32(&p, 55), 1, "Delete tag");
    assert_eq!(le_u64(&p, 59), 6, "key length");
    assert_eq!(&p[67..73], b"user:7");
    assert_eq!(p.len(), 73);
    assert_eq!(
        p.len(),
        PAYLOAD_COUNT_SIZE + put_encoded_size(7, 12) + delete_encoded_size(6)
    );
}

#[test]
fn snapshot_header_fields_sit_where_the_table_says() {
    let b = encode_snapshot_header(BASE_SEQ);
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..8], b"SDB-SNP\0", "magic");
    assert_eq!(le_u32(&b, 8), 1, "version");
    assert_eq!(
        le_u32(&b, 12),
        crc32fast::hash(&b[0..12]),
        "preamble crc of bytes 0..12"
    );
    assert_eq!(le_u64(&b, 16), BASE_SEQ, "base_seq");
    assert_eq!(le_u32(&b, 24), crc32fast::hash(&b[0..24]), "crc of bytes 0..24");
    assert_eq!(le_u32(&b, 28), 0, "pad");
}

#[test]
fn block_fields_sit_where_the_table_says() {
    let b = block();
    let es = entries();
    let body_len: usize = es.iter().map(|e| 24 + e.key.len() + e.value.len()).sum();
    assert_eq!(b.len(), 12 + body_len);
    assert_eq!(le_u32(&b, 0) as usize, body_len, "body_len");
    assert_eq!(le_u32(&b, 4) as usize, es.len(), "entry_count");
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..8]);
    h.update(&b[12..]);
    assert_eq!(le_u32(&b, 8), h.finalize(), "crc of bytes 0..8 then the body");
    let mut at = 12;
    for e in &es {
        let (k, v) = (e.key.len(), e.value.len());
        assert_eq!(le_u32(&b, at) as usize, k, "key_len");
        assert_eq!(le_u32(&b, at + 4) as usize, v, "value_len");
        assert_eq!(le_u64(&b, at + 8), e.seq, "seq");
        assert_eq!(le_u64(&b, at + 16), e.expires_at_ms, "expires_at_ms");
        assert_eq!(&b[at + 24..at + 24 + k], e.key, "key");
        assert_eq!(&b[at + 24 + k..at + 24 + k + v], e.value, "value");
        assert_eq!(snapshot_entry_size(k, v), 24 + k + v);
        at += 24 + k + v;
    }
    assert_eq!(at, b.len());
}

#[test]
fn footer_fields_sit_where_the_table_says() {
    let s = snapshot();
    let at = s.len() - 48;
    let f = &s[at..];
    assert_eq!(le_u32(f, 0), 0xFFFF_FFFF, "marker");
    assert_eq!(le_u32(f, 4), 0, "reserved");
    assert_eq!(le_u64(f, 8), entries().len() as u64, "entry_count");
    assert_eq!(le_u64(f, 16), BASE_SEQ, "base_seq");
    assert_eq!(le_u64(f, 24), END_SEQ, "end_seq");
    assert_eq!(le_u64(f, 32), at as u64, "footer_offset = file length - 48");
    assert_eq!(le_u32(f, 40), crc32fast::hash(&f[0..40]), "crc of bytes 0..40");
    assert_eq!(le_u32(f, 44), 0, "pad");
    assert_eq!(s.len(), 32 + block().len() + 48);
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn segment_header_round_trips() {
    let h = SegmentHeader {
        segment_id: SEGMENT_ID,
        first_seq: FIRST_SEQ,
    };
    assert_eq!(decode_segment_header(&encode_segment_header(h)), HeaderState::Valid(h));
    // A header followed by the rest of the segment decodes the same.
    assert_eq!(decode_segment_header(&segment()), HeaderState::Valid(h));
}

#[test]
fn records_round_trip() {
    for n in [1usize, 2, 38, 1000] {
        let p = vec![0xA5u8; n];
        let mut r = Vec::new();
        encode_record(&mut r, SEGMENT_ID, 9, 8, KIND_OPS, &p);
        assert_eq!(r.len(), 25 + n, "a record with an {n}-byte payload");
        let RecordState::Valid(got) = decode_record(&r, SEGMENT_ID, PAYLOAD_MAX) else {
            panic!("record with a {n}-byte payload does not decode");
        };
        assert_eq!(
            (got.seq, got.durable_seq, got.kind, got.payload, got.len),
            (9, 8, KIND_OPS, &p[..], 25 + n)
        );
    }
}

#[test]
fn a_segment_reads_back_record_by_record() {
    let s = segment();
    let mut at = 40;
    let mut seqs = Vec::new();
    loop {
        match decode_record(&s[at..], SEGMENT_ID, PAYLOAD_MAX) {
            RecordState::Valid(r) => {
                assert!(decode_ops(r.payload).is_ok());
                seqs.push((r.seq, r.durable_seq));
                at += r.len;
            }
            RecordState::End => break,
            RecordState::Damaged(d) => panic!("damage at {}: {}", at as u64 + d.offset, d.reason),
        }
    }
    assert_eq!(seqs, [(FIRST_SEQ, BASE_SEQ), (FIRST_SEQ + 1, FIRST_SEQ)]);
}

#[test]
fn payloads_round_trip() {
    for ops in [one_put(), batch()] {
        let p = payload(&ops);
        assert_eq!(decode_ops(&p).unwrap(), ops);
    }
    let empty_key_delete = [Op::Delete { key: b"" }];
    let p = payload(&empty_key_delete);
    assert_eq!(p.len(), 8 + delete_encoded_size(0));
    assert_eq!(decode_ops(&p).unwrap(), empty_key_delete);
}

#[test]
fn the_op_count_may_reach_batch_ops_max() {
    let ops = vec![Op::Delete { key: b"" }; BATCH_OPS_MAX];
    let p = payload(&ops);
    assert_eq!(p.len(), 8 + 12 * BATCH_OPS_MAX);
    assert_eq!(decode_ops(&p).unwrap().len(), BATCH_OPS_MAX);
}

#[test]
fn snapshot_round_trips() {
    let s = snapshot();
    assert_eq!(decode_snapshot_header(&s), HeaderState::Valid(BASE_SEQ), "header");
    let footer = decode_snapshot_footer(&s).unwrap();
    assert_eq!(footer, footer_for(block().len()));
    let blocks = &s[32..footer.footer_offset as usize];
    let (decoded, len) = decode_block(blocks).unwrap();
    assert_eq!(len, blocks.len());
    let got: Vec<SnapshotEntry<'_>> = decoded.iter().map(|d| d.entry).collect();
    assert_eq!(got, entries());
    for d in &decoded {
        let v = d.entry.value;
        assert_eq!(&blocks[d.value_at..d.value_at + v.len()], v, "value_at");
    }
}

#[test]
fn block_builder_reports_value_offsets_and_resets() {
    let mut b = BlockBuilder::new();
    assert!(b.is_empty());
    assert_eq!(b.len(), 12);
    let es = entries();
    let first = b.push(es[0]);
    assert_eq!(first, 12 + 24 + es[0].key.len());
    assert_eq!(b.count(), 1);
    let bytes = b.finish();
    assert!(b.is_empty());
    assert_eq!(b.len(), 12);
    assert_eq!(&bytes[first..first + es[0].value.len()], es[0].value);
}

#[test]
fn an_empty_snapshot_is_header_and_footer() {
    let mut s = encode_snapshot_header(7).to_vec();
    s.extend_from_slice(&encode_snapshot_footer(SnapshotFooter {
        entry_count: 0,
        base_seq: 7,
        end_seq: 7,
        footer_offset: 32,
    }));
    assert_eq!(s.len(), 80);
    assert_eq!(decode_snapshot_footer(&s).unwrap().entry_count, 0);
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes come back as damage, never a panic

#[test]
fn hostile_payloads_are_damage() {
    let mut count_max = u64::MAX.to_le_bytes().to_vec();
    count_max.extend_from_slice(&payload(&one_put())[8..]);
    assert!(decode_ops(&count_max).is_err(), "count u64::MAX");

    let mut count_zero = payload(&one_put());
    count_zero[..8].copy_from_slice(&0u64.to_le_bytes());
    assert!(decode_ops(&count_zero).is_err(), "count 0");

    let mut count_too_big = payload(&one_put());
    count_too_big[..8].copy_from_slice(&4u64.to_le_bytes());
    assert!(decode_ops(&count_too_big).is_err(), "count > (len - 8) / 12");

    let mut over_ops_max = vec![0u8; 8 + 12 * (BATCH_OPS_MAX + 1)];
    over_ops_max[..8].copy_from_slice(&(BATCH_OPS_MAX as u64 + 1).to_le_bytes());
    assert!(decode_ops(&over_ops_max).is_err(), "count > BATCH_OPS_MAX");

    let mut key_len_max = payload(&one_put());
    key_len_max[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_ops(&key_len_max).is_err(), "key length u64::MAX");

    let mut bad_tag = payload(&one_put());
    bad_tag[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert!(decode_ops(&bad_tag).is_err(), "variant tag 2");

    let mut trailing = payload(&one_put());
    trailing.push(0);
    assert!(decode_ops(&trailing).is_err(), "a trailing byte");

    let short = payload(&one_put());
    for cut in 0..short.len() {
        assert!(decode_ops(&short[..cut]).is_err(), "cut to {cut} bytes");
    }
}

#[test]
fn hostile_records_are_damage_or_end() {
    let r = record();

    let mut len_max = r.clone();
    len_max[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        matches!(
            decode_record(&len_max, SEGMENT_ID, PAYLOAD_MAX),
            RecordState::Damaged(_)
        ),
        "length u32::MAX over the payload limit"
    );
    assert!(
        matches!(decode_record(&len_max, SEGMENT_ID, usize::MAX), RecordState::Damaged(_)),
        "length u32::MAX past the end of the bytes"
    );

    let mut len_zero = r.clone();
    len_zero[0..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(decode_record(&len_zero, SEGMENT_ID, PAYLOAD_MAX), RecordState::End);
    assert_eq!(
        decode_record(&[0u8; 24], SEGMENT_ID, PAYLOAD_MAX),
        RecordState::End,
        "fewer than 25 bytes left, all zero"
    );
    assert_eq!(decode_record(&[], SEGMENT_ID, PAYLOAD_MAX), RecordState::End);
    assert!(matches!(
        decode_record(&r[..24], SEGMENT_ID, PAYLOAD_MAX),
        RecordState::Damaged(_)
    ));
    assert!(
        matches!(
            decode_record(&r[..r.len() - 1], SEGMENT_ID, PAYLOAD_MAX),
            RecordState::Damaged(_)
        ),
        "a record cut short"
    );
    assert!(
        matches!(decode_record(&r, SEGMENT_ID + 1, PAYLOAD_MAX), RecordState::Damaged(_)),
        "a record copied into another segment fails its checksum"
    );

    for i in 0..r.len() {
        let mut flipped = r.clone();
        flipped[i] ^= 0x01;
        assert!(
            matches!(
                decode_record(&flipped, SEGMENT_ID, PAYLOAD_MAX),
                RecordState::Damaged(_)
            ),
            "byte {i} flipped"
        );
    }
}

/// `header` with its version field set to `version`; with `fix_preamble`, the preamble checksum
/// (bytes 12..16) is rewritten to match, as a genuine header of that version would carry it.
fn with_version<const N: usize>(header: &[u8; N], version: u32, fix_preamble: bool) -> [u8; N] {
    let mut b = *header;
    b[8..12].copy_from_slice(&version.to_le_bytes());
    if fix_preamble {
        let crc = crc32fast::hash(&b[0..12]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

#[test]
fn hostile_segment_headers() {
    assert_eq!(decode_segment_header(&[0u8; 40]), HeaderState::Zero);
    assert_eq!(decode_segment_header(&[0u8; 4096]), HeaderState::Zero);
    assert_eq!(decode_segment_header(&[0u8; 10]), HeaderState::Zero);
    assert_eq!(decode_segment_header(&[]), HeaderState::Zero);

    let h = segment_header();
    assert!(matches!(decode_segment_header(&h[..39]), HeaderState::Damaged(_)));

    // A genuine newer version keeps the preamble intact: it reads as that version.
    assert_eq!(
        decode_segment_header(&with_version(&h, 2, true)),
        HeaderState::UnsupportedVersion(2)
    );
    // The same version with the old preamble checksum is damage, not a newer format.
    assert!(matches!(
        decode_segment_header(&with_version(&h, 2, false)),
        HeaderState::Damaged(_)
    ));

    // Every byte before the checksum's end is covered, and the preamble checksum is checked
    // before the version, so no single flipped byte reads as another version.
    for i in 0..36 {
        let mut flipped = h;
        flipped[i] ^= 0x01;
        assert!(
            matches!(decode_segment_header(&flipped), HeaderState::Damaged(_)),
            "byte {i} flipped"
        );
    }
    // The pad is neither covered nor checked.
    let mut pad = h;
    pad[36] = 0xFF;
    assert!(matches!(decode_segment_header(&pad), HeaderState::Valid(_)));
}

#[test]
fn hostile_snapshot_headers() {
    let h = encode_snapshot_header(BASE_SEQ);
    assert!(matches!(decode_snapshot_header(&[0u8; 32]), HeaderState::Damaged(_)));
    assert!(matches!(decode_snapshot_header(&h[..31]), HeaderState::Damaged(_)));
    assert_eq!(
        decode_snapshot_header(&with_version(&h, 2, true)),
        HeaderState::UnsupportedVersion(2)
    );
    assert!(matches!(
        decode_snapshot_header(&with_version(&h, 2, false)),
        HeaderState::Damaged(_)
    ));
    for i in 0..28 {
        let mut flipped = h;
        flipped[i] ^= 0x01;
        assert!(
            matches!(decode_snapshot_header(&flipped), HeaderState::Damaged(_)),
            "byte {i} flipped"
        );
    }
}

#[test]
fn a_damaged_version_field_is_never_another_version() {
    // Every single-byte corruption of the version field (bytes 8..12) of a valid header, the
    // preamble checksum left as written: a torn or garbled version must read as damage.
    let seg = segment_header();
    let snap = encode_snapshot_header(BASE_SEQ);
    for i in 8..12 {
        for x in 0..=255u8 {
            if x == seg[i] {
                continue;
            }
            let mut b = seg;
            b[i] = x;
            assert!(
                matches!(decode_segment_header(&b), HeaderState::Damaged(_)),
                "segment header byte {i} set to {x:#04x}: {:?}",
                decode_segment_header(&b)
            );
            let mut b = snap;
            b[i] = x;
            assert!(
                matches!(decode_snapshot_header(&b), HeaderState::Damaged(_)),
                "snapshot header byte {i} set to {x:#04x}: {:?}",
                decode_snapshot_header(&b)
            );
        }
    }
}

#[test]
fn hostile_blocks_are_damage() {
    let b = block();
    assert!(decode_block(&b[..11]).is_err(), "header cut short");
    assert!(decode_block(&b[..b.len() - 1]).is_err(), "body cut short");

    let mut len_max = b.clone();
    len_max[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_block(&len_max).is_err(), "body_len u32::MAX");

    let mut count_zero = b.clone();
    count_zero[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert!(decode_block(&count_zero).is_err(), "entry_count 0");

    let mut count_max = b.clone();
    count_max[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_block(&count_max).is_err(), "entry_count u32::MAX");

    for i in 0..b.len() {
        let mut flipped = b.clone();
        flipped[i] ^= 0x01;
        assert!(decode_block(&flipped).is_err(), "byte {i} flipped");
    }
}

#[test]
fn hostile_footers_are_damage() {
    let s = snapshot();
    let at = s.len() - 48;
    for i in at..at + 44 {
        let mut flipped = s.clone();
        flipped[i] ^= 0x01;
        assert!(decode_snapshot_footer(&flipped).is_err(), "byte {i} flipped");
    }
    assert!(decode_snapshot_footer(&s[..79]).is_err(), "too short");
    assert!(decode_snapshot_footer(&s[..s.len() - 1]).is_err(), "cut short");

    let mut extra = s.clone();
    extra.truncate(at);
    extra.push(0);
    extra.extend_from_slice(&s[at..]);
    assert!(
        decode_snapshot_footer(&extra).is_err(),
        "footer_offset disagrees with the file length"
    );

    let mut backwards = s[..at].to_vec();
    backwards.extend_from_slice(&encode_snapshot_footer(SnapshotFooter {
        end_seq: BASE_SEQ - 1,
        ..footer_for(block().len())
    }));
    assert!(decode_snapshot_footer(&backwards).is_err(), "end_seq < base_seq");
}

/// The identity checks a read makes around a value (`put_value_is_for`,
/// `snapshot_value_is_for`): true exactly for the key, version and length the value was written
/// with, false for any other, and no panic at any offset of the bytes.
#[test]
fn the_bytes_around_a_value_name_its_key_and_version() {
    use sessiondb::internals::format::{put_value_is_for, put_value_offset, snapshot_value_is_for};

    let p = payload(&batch());
    let at = put_value_offset(PAYLOAD_COUNT_SIZE, b"user:42".len());
    assert_eq!(&p[at..at + 12], b"session-blob");
    assert!(put_value_is_for(&p, at, b"user:42", 12));
    assert!(!put_value_is_for(&p, at, b"user:43", 12), "another key");
    assert!(!put_value_is_for(&p, at, b"user:4", 12), "a shorter key");
    assert!(!put_value_is_for(&p, at, b"user:42", 11), "another length");
    let s = snapshot();
    let entry_value_at = SNAPSHOT_HEADER_SIZE + BLOCK_HEADER_SIZE + ENTRY_HEADER_SIZE + entries()[0].key.len();
    let e = entries()[0];
    assert_eq!(&s[entry_value_at..entry_value_at + e.value.len()], e.value);
    assert!(snapshot_value_is_for(&s, entry_value_at, e.key, e.seq, e.value.len()));
    assert!(
        !snapshot_value_is_for(&s, entry_value_at, e.key, e.seq + 1, e.value.len()),
        "another version"
    );
    assert!(
        !snapshot_value_is_for(&s, entry_value_at, b"other", e.seq, e.value.len()),
        "another key"
    );
    for bytes in [&p[..], &s[..], &[][..], &[0xff; 7][..]] {
        for at in 0..bytes.len() + 2 {
            for len in [0, 1, 12, usize::MAX] {
                let _ = put_value_is_for(bytes, at, b"user:42", len);
                let _ = snapshot_value_is_for(bytes, at, e.key, e.seq, len);
            }
        }
    }
    assert!(!put_value_is_for(&p, usize::MAX, b"k", 1));
    assert!(!snapshot_value_is_for(&s, usize::MAX, b"k", 1, 1));
}
