//! Target `snapshot_decode`: bytes as a snapshot file through the loader recovery uses, the
//! block-by-block check `verify` uses, and the rebuild `repair` does.
//!
//! Input: a first byte that picks raw bytes (even) or a structured [`SnapshotSpec`] (odd; bit 1
//! picks its format version: set, 1 as older builds wrote; clear, 2); raw inputs take the base
//! sequence number from their header, so real snapshots load.
//! Invariants: no panic, no allocation from a length field; the loader returns the entries or
//! an error naming corruption or an unsupported format; loaded keys ascend strictly, sequence
//! numbers are not 0, the count is the footer's; the loader and `verify` agree on whether the
//! file is intact (except a sealed, format version 3 file, which the loader refuses without its
//! data key and `verify` without the key checks for framing and checksums only); a rebuilt (salvaged) snapshot always loads, holding only entries of the
//! original, all of them when it was intact; a pristine spec loads exactly as written. Every
//! block between a readable header and footer is also decoded entry by entry in both versions'
//! layouts (no panic), and in its own version each entry goes through `check_snapshot_value`,
//! the reader a get uses: it accepts the entry, returning the stored checksum in version 2,
//! exactly when that checksum is `value_crc(key, value, seq)` (always, in version 1). Loading does
//! not check value checksums (reads do) while `verify` does: where they differ, it is over an
//! entry whose checksum `check_snapshot_value` refuses, and nothing else.

use arbitrary::{Arbitrary, Unstructured};
use sessiondb::internals::format::{self, HeaderState, SNAPSHOT_HEADER_SIZE};
use sessiondb::internals::fuzzing::{self, DecodedSnapshot};
use sessiondb::Error;

use super::spec::{version_from, Item, SnapshotSpec};

/// One decoded input: the bytes, the base in the file name, the entries a pristine spec holds.
type Case = (Vec<u8>, u64, Option<Vec<Item>>);

fn decode_input(data: &[u8]) -> Option<Case> {
    let (&sel, rest) = data.split_first()?;
    if sel & 1 == 0 {
        let base = rest
            .get(16..24)
            .map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        // NOTE: a base comes from a file name, which is never above SEQ_MAX (layout.rs).
        let base = base
            .wrapping_add(u64::from(sel >> 6))
            .min(sessiondb::internals::limits::SEQ_MAX);
        return Some((rest.to_vec(), base, None));
    }
    let mut u = Unstructured::new(rest);
    let spec = SnapshotSpec::arbitrary(&mut u).ok()?;
    let base = u64::from(u16::arbitrary(&mut u).unwrap_or(0));
    let built = spec.build(base, version_from(sel & 2 != 0));
    let pristine = built.pristine.then_some(built.entries);
    Some((built.bytes, base, pristine))
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((bytes, base, pristine)) = decode_input(data) else {
        return;
    };
    open_as_version_3(&bytes, base);
    let loaded = fuzzing::decode_snapshot(&bytes, base);
    let problems = fuzzing::snapshot_problems(&bytes, base);
    let bad_value_crcs = check_entries(&bytes);
    // A sealed snapshot (format version 3, an encrypted store's) is salvaged only with its data
    // key (repair_with_key); without it salvage gives up, and loading it is refused, while
    // `verify` without the key checks its framing and checksums only and may find them intact.
    let sealed = sessiondb::internals::format::decode_preamble_version(&bytes) == Some(3);
    match &loaded {
        Ok(s) => {
            check_loaded(&bytes, base, s);
            assert!(
                problems.iter().all(|p| p.reason == "value checksum mismatch"),
                "the loader accepted what verify refuses: {problems:?}"
            );
            assert_eq!(
                problems.len(),
                bad_value_crcs,
                "verify and check_snapshot_value disagree on the value checksums"
            );
        }
        Err(Error::Corruption { .. } | Error::UnsupportedFormat { .. }) => {
            assert!(
                !problems.is_empty() || sealed,
                "verify finds nothing wrong where the loader refuses: {loaded:?}"
            );
        }
        Err(e) => panic!("the loader failed with an error of the wrong kind: {e}"),
    }
    if let Some(entries) = pristine {
        let s = loaded
            .as_ref()
            .unwrap_or_else(|e| panic!("a pristine snapshot was refused: {e}"));
        let got: Vec<_> = s
            .items
            .iter()
            .map(|i| (i.key.clone(), i.value.clone(), i.seq, i.expires_at_ms.unwrap_or(0)))
            .collect();
        assert_eq!(got, entries, "a pristine snapshot loads other entries");
    }
    let unsupported = matches!(loaded, Err(Error::UnsupportedFormat { .. }));
    if sealed {
        assert!(loaded.is_err(), "a sealed snapshot loaded without its data key");
    }
    match fuzzing::salvage_snapshot(&bytes, base) {
        None => assert!(unsupported || sealed, "salvage gave up on a snapshot of our format"),
        Some((rebuilt, kept, _claimed)) => {
            assert!(!unsupported, "salvage rebuilt a snapshot of another format version");
            let again = fuzzing::decode_snapshot(&rebuilt, base)
                .unwrap_or_else(|e| panic!("a snapshot rebuilt by salvage does not load: {e}"));
            assert_eq!(again.items.len() as u64, kept, "salvage miscounts what it kept");
            for i in &again.items {
                let mut pair = i.key.clone();
                pair.extend_from_slice(&i.value);
                assert!(
                    contains(&bytes, &pair),
                    "salvage kept an entry that is not in the original"
                );
            }
            if let Ok(s) = &loaded {
                assert_eq!(
                    again.items, s.items,
                    "salvage of an intact snapshot changed its entries"
                );
            }
        }
    }
}

fn check_loaded(bytes: &[u8], base: u64, s: &DecodedSnapshot) {
    assert!(s.end_seq >= base, "end_seq precedes the base");
    for w in s.items.windows(2) {
        assert!(w[0].key < w[1].key, "loaded keys do not ascend strictly");
    }
    for i in &s.items {
        assert_ne!(i.seq, 0, "loaded an entry with sequence number 0");
        let mut pair = i.key.clone();
        pair.extend_from_slice(&i.value);
        assert!(
            contains(bytes, &pair),
            "a loaded entry's key and value are not in the file"
        );
    }
}

/// Decodes every block between the header and the footer, if both read, in both versions'
/// layouts, and checks each entry of the file's own version with `check_snapshot_value`. Returns
/// how many entries it refused.
fn check_entries(bytes: &[u8]) -> usize {
    let HeaderState::Valid(h) = format::decode_snapshot_header(bytes) else {
        return 0;
    };
    let Ok(footer) = format::decode_snapshot_footer(bytes) else {
        return 0;
    };
    let end = footer.footer_offset as usize;
    let mut at = SNAPSHOT_HEADER_SIZE;
    let mut refused = 0;
    while at < end {
        let b = &bytes[at..end];
        let other = 3 - h.version;
        let _ = format::decode_block(b, other);
        let Ok((entries, len)) = format::decode_block(b, h.version) else {
            return refused;
        };
        for d in entries {
            let e = d.entry;
            let start = d.value_at - format::snapshot_value_back(e.key.len(), h.version);
            let entry = &b[start..d.value_at + e.value.len()];
            let want = format::value_crc(e.key, e.value, e.seq);
            match format::check_snapshot_value(entry, e.key, e.value.len(), e.seq, h.version) {
                Ok(crc) => {
                    assert_eq!(crc, e.value_crc, "check_snapshot_value returned another checksum");
                    assert!(crc.is_none_or(|c| c == want), "accepted a wrong value checksum");
                }
                Err(_) => {
                    assert!(
                        e.value_crc.is_some_and(|c| c != want),
                        "refused an entry whose value checksum matches"
                    );
                    refused += 1;
                }
            }
            // Another sequence number never passes the framing check.
            assert!(format::check_snapshot_value(entry, e.key, e.value.len(), e.seq ^ 1, h.version).is_err());
        }
        at += len;
    }
    refused
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The bytes' blocks read as format version 3 (an encrypted store's) and opened under a key
/// that did not seal them: never a panic, never an entry that opens.
fn open_as_version_3(bytes: &[u8], base: u64) {
    let cipher = sessiondb::internals::crypto::FileCipher::new(&[0x3e; 32]);
    let mut at = sessiondb::internals::format::SNAPSHOT_HEADER_SIZE;
    let end = bytes
        .len()
        .saturating_sub(sessiondb::internals::format::SNAPSHOT_FOOTER_SIZE);
    while at < end {
        let Ok(frame) = sessiondb::internals::format::block_frame(&bytes[at..end], 3) else {
            return;
        };
        let mut opened = sessiondb::internals::format::OpenedBlock::default();
        assert!(
            sessiondb::internals::format::open_block(&bytes[at..end], frame, &cipher, base, at as u64, &mut opened)
                .is_err(),
            "a block sealed under no key opened"
        );
        at += frame.len;
    }
}
