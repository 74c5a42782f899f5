//! The operator tools on encrypted stores: backups, restores, verify, inspect and repair.
//!
//! Scenario: encrypted stores (a snapshot and a log after it, several segments) are backed up
//! online and offline, restored, verified with, without and with the wrong key, damaged (a
//! byte of a sealed value changed, with and without its checksum fixed up; a segment, a
//! snapshot or a record taken from another store under the same master key, or from another
//! place in the same file) and repaired.
//! Method: every file of every backup, restore and repaired store is searched for marker keys
//! and values; damage is made where the documented framing (docs/format.md, "Encrypted
//! stores") puts a sealed value, an op or an entry.
//! Invariant: nothing the tools write holds a key or value in clear; a backup opens only with
//! the source's key and holds its state; verify without the key reports no damage for want of
//! it and says what it could not check; verify with the key names the file and the offset of a
//! sealed piece that does not authenticate; a piece from elsewhere is damage, never the other
//! store's value.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sessiondb::inspect::{self, View};
use sessiondb::{Db, EncryptionKey, Error, Options, RecoveryMode, SyncMode};
use support::{
    contents, copy_dir, flip_byte, parse_records, segments_with_records, small_options, snapshot_files, OptionsExt,
    RecordPos, RECORD_HEADER_SIZE,
};

fn key(b: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([b; 32])
}

/// A test store's options under master key `k`: nothing in the background.
fn opts(k: u8) -> Options {
    small_options()
        .quiet()
        .sync_mode(SyncMode::Always)
        .encryption_key(key(k))
}

const MARKER_KEY: &[u8] = b"marker-key-7c1d9e";
const MARKER_VALUE: &[u8] = b"marker-value-of-bob@example.org-2f8e6a";
const FILLER: &[u8] = b"filler-value";
/// Fillers before and after the snapshot: the log after it spans segments.
const N: usize = 120;

/// The markers the files must never hold in clear.
fn needles() -> Vec<&'static [u8]> {
    vec![MARKER_KEY, MARKER_VALUE, FILLER]
}

/// Filler `i`'s key and value: `tag` makes stores of the same shape hold different values
/// (same lengths, so the files line up byte for byte).
fn filler(i: usize, tag: u8) -> (Vec<u8>, Vec<u8>) {
    let key = format!("k{i:04}").into_bytes();
    let mut value = FILLER.to_vec();
    value.extend_from_slice(format!("-{}-{i:04}-", tag as char).as_bytes());
    value.resize(700, tag);
    (key, value)
}

/// Every byte of every file under `dir`.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn assert_no_plaintext(dir: &Path, when: &str) {
    let files = all_files(dir);
    assert!(!files.is_empty(), "{when}: no files in {}", dir.display());
    for (path, bytes) in files {
        for n in needles() {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{when}: {:?} in clear in {}",
                String::from_utf8_lossy(n),
                path.display()
            );
        }
    }
}

/// Writes the test workload into the store at `dir` (open or created with master key `k`):
/// fillers `0..n` and the marker, a checkpoint, then fillers `n..2n` in the log after it.
/// Values carry `tag`.
fn write_workload(db: &Db, n: usize, tag: u8) {
    for i in 0..n {
        let (k, v) = filler(i, tag);
        db.put(k, v).unwrap();
    }
    db.put(MARKER_KEY, MARKER_VALUE).unwrap();
    db.checkpoint().unwrap();
    for i in n..2 * n {
        let (k, v) = filler(i, tag);
        db.put(k, v).unwrap();
    }
}

/// A closed encrypted store (master key 1) with the workload: a snapshot of `n + 1` entries and
/// `n` records after it, over several segments.
fn make_store(dir: &Path, n: usize, tag: u8) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Db::open_with(dir, opts(1)).unwrap();
    write_workload(&db, n, tag);
    let state = contents(&db);
    db.close().unwrap();
    assert_eq!(snapshot_files(dir).len(), 1);
    assert!(
        segments_with_records(dir).len() >= 2,
        "the log after the snapshot spans segments"
    );
    state
}

fn open_contents(dir: &Path, k: u8) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Db::open_with(dir, opts(k)).unwrap();
    let c = contents(&db);
    db.close().unwrap();
    c
}

/// Asserts a store at `dir` opens only with master key 1 and holds `state`.
fn assert_opens_only_with_key(dir: &Path, state: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    assert!(dir.join("KEYRING").is_file(), "{what}: no keyring");
    match Db::open_with(dir, small_options().quiet()) {
        Err(Error::KeyRequired { .. }) => {}
        other => panic!("{what}: opened without a key: {other:?}"),
    }
    match Db::open_with(dir, opts(2)) {
        Err(Error::WrongKey { .. }) => {}
        other => panic!("{what}: opened with another key: {other:?}"),
    }
    assert_eq!(&open_contents(dir, 1), state, "{what}: contents");
}

fn copy_of(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    copy_dir(src, dst.path());
    dst
}

// ---------------------------------------------------------------------------------------------
// Backups and restores

#[test]
fn an_online_backup_of_an_encrypted_store_is_encrypted_under_the_same_key() {
    // Fails without the fix: the backup had no keyring (its copy did not open: the segments had
    // no data keys) and its copy was opened without the key.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let db = Db::open_with(&src, opts(1)).unwrap();
    write_workload(&db, N, b'a');
    let state = contents(&db);

    let report = db.backup(tmp.path().join("b1")).unwrap();
    assert_eq!(report.keys, state.len() as u64);
    assert_no_plaintext(&tmp.path().join("b1"), "online backup");
    assert_opens_only_with_key(&tmp.path().join("b1"), &state, "online backup");
    assert!(inspect::inventory(tmp.path().join("b1")).unwrap().encrypted);

    // After a key rotation the backup is sealed under the new key (the options still name the
    // old one).
    db.rotate_key(key(3)).unwrap();
    db.put(b"after-rotation", b"x").unwrap();
    let state = contents(&db);
    db.backup(tmp.path().join("b2")).unwrap();
    assert_no_plaintext(&tmp.path().join("b2"), "online backup after rotation");
    assert!(matches!(
        Db::open_with(tmp.path().join("b2"), opts(1)),
        Err(Error::WrongKey { .. })
    ));
    assert_eq!(open_contents(&tmp.path().join("b2"), 3), state);
    db.close().unwrap();
}

#[test]
fn online_backups_while_segments_roll_open_with_the_key() {
    // Each roll gives the new segment a fresh data key: the keyring is replaced (and the old
    // one zeroed) while backups copy it.
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open_with(tmp.path().join("src"), opts(1)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = filler(i % 500, b'w');
                db.put(k, v).unwrap();
                i += 1;
            }
            i
        })
    };
    for n in 0..8 {
        let dest = tmp.path().join(format!("b{n}"));
        let report = db.backup(&dest).unwrap();
        let got = open_contents(&dest, 1);
        assert_eq!(got.len() as u64, report.keys, "backup {n}");
        for (k, v) in got {
            let i: usize = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
            assert_eq!(filler(i, b'w'), (k, v), "backup {n}");
        }
        assert_no_plaintext(&dest, "online backup under writes");
    }
    stop.store(true, Ordering::Relaxed);
    let puts = writer.join().unwrap();
    assert!(puts > 0);
}

#[test]
fn backup_dir_and_restore_of_an_encrypted_store_need_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let state = make_store(&src, N, b'a');
    let dest = tmp.path().join("backup");

    // Never a backup in clear: without the key, or with another, nothing is written.
    assert!(matches!(
        sessiondb::backup_dir(&src, &dest),
        Err(Error::KeyRequired { .. })
    ));
    assert!(matches!(
        sessiondb::backup_dir_with_key(&src, &dest, Some(key(2))),
        Err(Error::WrongKey { .. })
    ));
    assert!(!dest.exists());

    let report = sessiondb::backup_dir_with_key(&src, &dest, Some(key(1))).unwrap();
    assert_eq!(report.keys, state.len() as u64);
    assert_no_plaintext(&dest, "backup_dir");
    assert_opens_only_with_key(&dest, &state, "backup_dir");
    let check = inspect::verify_with_key(&dest, Some(key(1))).unwrap();
    assert!(check.is_intact(), "{:?}", check.problems);

    // Restore: refused without the key before anything is copied; with it, the store comes
    // back with its keyring.
    let r1 = tmp.path().join("r1");
    assert!(matches!(sessiondb::restore(&dest, &r1), Err(Error::KeyRequired { .. })));
    assert!(!r1.exists());
    assert!(matches!(
        sessiondb::restore_with_key(&dest, &r1, Some(key(2))),
        Err(Error::WrongKey { .. })
    ));
    let restored = sessiondb::restore_with_key(&dest, &r1, Some(key(1))).unwrap();
    assert_eq!(restored.keys, state.len() as u64);
    assert_no_plaintext(&r1, "restore");
    assert_opens_only_with_key(&r1, &state, "restore");

    // A store restored from an online backup too.
    let online = tmp.path().join("online");
    Db::open_with(&src, opts(1)).unwrap().backup(&online).unwrap();
    let r2 = tmp.path().join("r2");
    sessiondb::restore_with_key(&online, &r2, Some(key(1))).unwrap();
    assert_opens_only_with_key(&r2, &state, "restore of an online backup");

    // A key for a store that is not encrypted is refused.
    let plain = tmp.path().join("plain");
    let db = Db::open_with(&plain, small_options().quiet()).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    assert!(matches!(
        sessiondb::backup_dir_with_key(&plain, tmp.path().join("pb"), Some(key(1))),
        Err(Error::NotEncrypted { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Verify and inspect

#[test]
fn verify_without_the_key_reports_no_damage_and_says_what_it_did_not_check() {
    // Fails without the fix: the open that verify tries needs the key, and was reported as a
    // problem (KeyRequired) of an intact store.
    let tmp = tempfile::tempdir().unwrap();
    let state = make_store(tmp.path(), N, b'a');

    let inv = inspect::inventory(tmp.path()).unwrap();
    assert!(inv.encrypted);
    assert_eq!(inv.format_version, Some(3));
    assert_eq!(inv.oldest_format_version, Some(3));

    let r = inspect::verify(tmp.path()).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("encrypted") && n.contains("not authenticated")),
        "{:?}",
        r.notes
    );
    assert_eq!((r.keys, r.last_seq), (None, None));
    assert!(r.snapshots.iter().all(|s| s.intact && s.entries > 0));
    assert!(r.segments.iter().map(|s| s.records).sum::<u64>() >= N as u64);

    // With the key: everything authenticated, and the open tried.
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(r.keys, Some(state.len() as u64));
    assert!(r.notes.iter().any(|n| n.contains("authenticated")), "{:?}", r.notes);

    // The wrong key is an error naming the keyring, not damage.
    match inspect::verify_with_key(tmp.path(), Some(key(2))) {
        Err(e @ Error::WrongKey { .. }) => {
            assert!(
                e.to_string().contains("KEYRING") && e.to_string().contains("wrong encryption key"),
                "{e}"
            )
        }
        other => panic!("wrong key: {other:?}"),
    }

    // The read-only view, likewise.
    assert!(matches!(View::open(tmp.path()), Err(Error::KeyRequired { .. })));
    assert!(matches!(
        View::open_with_key(tmp.path(), Some(key(2))),
        Err(Error::WrongKey { .. })
    ));
    let view = View::open_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(view.is_encrypted());
    assert_eq!(view.get(MARKER_KEY).unwrap().as_deref(), Some(MARKER_VALUE));
    let entries: BTreeMap<_, _> = view
        .entries(b"")
        .map(|e| e.unwrap())
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(entries, state);
    drop(view);
    // Nothing was written by any of it.
    assert_eq!(open_contents(tmp.path(), 1), state);
}

/// The store's last segment holding records, and its records.
fn last_live_segment(dir: &Path) -> (PathBuf, Vec<RecordPos>) {
    segments_with_records(dir).pop().unwrap()
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// Bytes of a version 3 put's clear-text fields: tag, key length, value length, deadline, nonce.
const PUT_CLEAR: usize = 4 + 8 + 8 + 8 + 8;
/// A payload's op count.
const PAYLOAD_COUNT: usize = 8;

/// The range of the first op of record `rec` (a one-put record) and the offset of a byte of
/// its sealed value.
fn sealed_value_in_record(bytes: &[u8], rec: RecordPos) -> (std::ops::Range<u64>, u64) {
    let op = rec.start as usize + RECORD_HEADER_SIZE + PAYLOAD_COUNT;
    let key_len = u64_at(bytes, op + 4);
    let value_at = op + PUT_CLEAR + key_len;
    (op as u64..rec.end(), value_at as u64 + 5)
}

/// Recomputes the checksum of the record at `rec` in the segment `bytes` (as the documented
/// framing defines it: the segment id, the length, and everything after the checksum field).
fn fix_record_crc(bytes: &mut [u8], rec: RecordPos) {
    let segment_id = &bytes[16..24].to_vec();
    let (start, end) = (rec.start as usize, rec.end() as usize);
    let mut h = crc32fast::Hasher::new();
    h.update(segment_id);
    h.update(&bytes[start..start + 4]);
    h.update(&bytes[start + 8..end]);
    let crc = h.finalize();
    bytes[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of a snapshot header, a block header, a version 3 entry header.
const SNAPSHOT_HEADER: usize = 32;
const BLOCK_HEADER: usize = 12;
const ENTRY_HEADER: usize = 40;

/// The first block of a snapshot: its range, the range of its first entry and the offset of a
/// byte of that entry's sealed value.
fn sealed_value_in_snapshot(bytes: &[u8]) -> (std::ops::Range<u64>, std::ops::Range<u64>, u64) {
    let block = SNAPSHOT_HEADER;
    let block_len = BLOCK_HEADER + u32_at(bytes, block);
    let entry = block + BLOCK_HEADER;
    let (key_len, value_len) = (u32_at(bytes, entry), u32_at(bytes, entry + 4));
    let entry_end = entry + ENTRY_HEADER + key_len + value_len;
    let value_at = entry + ENTRY_HEADER + key_len;
    (
        block as u64..(block + block_len) as u64,
        entry as u64..entry_end as u64,
        value_at as u64 + 3,
    )
}

/// Recomputes the checksum of the first block of a snapshot (its header's length and count,
/// then its body).
fn fix_first_block_crc(bytes: &mut [u8]) {
    let block = SNAPSHOT_HEADER;
    let end = block + BLOCK_HEADER + u32_at(bytes, block);
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[block..block + 8]);
    h.update(&bytes[block + BLOCK_HEADER..end]);
    let crc = h.finalize();
    bytes[block + 8..block + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The one problem of `r` in `file`, asserting its offset is in `within`.
fn assert_problem_in(r: &inspect::VerifyReport, file: &Path, within: std::ops::Range<u64>, what: &str) {
    let found: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.path.ends_with(file_tail(file)))
        .collect();
    assert!(
        !found.is_empty(),
        "{what}: no problem names {}: {:?}",
        file.display(),
        r.problems
    );
    assert!(
        found.iter().any(|p| within.contains(&p.offset)),
        "{what}: no problem at an offset in {within:?}: {found:?}"
    );
}

/// A store file's path relative to its store (`wal/<name>` or `<name>`).
fn file_tail(file: &Path) -> PathBuf {
    let name = Path::new(file.file_name().unwrap());
    match file.parent().and_then(|p| p.file_name()) {
        Some(dir) if dir == "wal" => Path::new("wal").join(name),
        _ => name.to_path_buf(),
    }
}

#[test]
fn verify_with_the_key_names_a_changed_sealed_value_in_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), N, b'a');
    let (seg, recs) = last_live_segment(tmp.path());
    let rec = recs[recs.len() / 2];
    let (op, byte) = sealed_value_in_record(&fs::read(&seg).unwrap(), rec);

    // A changed byte: the record checksum catches it, with or without the key.
    let c = copy_of(tmp.path());
    let seg_c = c.path().join(file_tail(&seg));
    flip_byte(&seg_c, byte);
    let r = inspect::verify(c.path()).unwrap();
    assert_problem_in(&r, &seg_c, rec.start..byte + 1, "flip, no key");
    let r = inspect::verify_with_key(c.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &seg_c, rec.start..byte + 1, "flip, key");
    assert!(r.problems.iter().any(|p| p.bytes.is_some_and(|b| p.offset + b > byte)));

    // The checksum made to match: only the op's tag catches it, at the op.
    let c = copy_of(tmp.path());
    let seg_c = c.path().join(file_tail(&seg));
    forge_value(&seg_c, rec);
    // And one in the first segment after the snapshot: the open stops at that one, verify goes
    // on to the next.
    let (first, first_recs) = segments_with_records(c.path()).remove(0);
    assert_ne!(first, seg_c);
    let (first_op, first_byte) = forge_value(&first, first_recs[1]);
    let r = inspect::verify(c.path()).unwrap();
    assert!(
        r.is_intact(),
        "without the key the sealed bytes are not authenticated: {:?}",
        r.problems
    );
    let r = inspect::verify_with_key(c.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &seg_c, op.start..byte + 1, "forged checksum, key");
    assert_problem_in(&r, &first, first_op.start..first_byte + 1, "forged checksum, key");
    assert!(
        r.problems.iter().any(|p| p.reason.contains("authenticate")),
        "{:?}",
        r.problems
    );
    match Db::open_with(c.path(), opts(1)) {
        Err(Error::Corruption { path, offset, .. }) => {
            assert!(path.ends_with(file_tail(&first)));
            assert!(first_op.contains(&offset), "{offset} not in {first_op:?}");
        }
        other => panic!("a forged op opened: {:?}", other.map(|d| d.stats().keys)),
    }
}

/// Changes a byte of the sealed value of the one-put record `rec` in segment `seg` and makes
/// the record's checksum match; returns the op's range and the byte's offset.
fn forge_value(seg: &Path, rec: RecordPos) -> (std::ops::Range<u64>, u64) {
    let mut bytes = fs::read(seg).unwrap();
    let (op, byte) = sealed_value_in_record(&bytes, rec);
    bytes[byte as usize] ^= 0x20;
    fix_record_crc(&mut bytes, rec);
    fs::write(seg, &bytes).unwrap();
    (op, byte)
}

#[test]
fn verify_with_the_key_names_a_changed_sealed_value_in_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), N, b'a');
    let snap = snapshot_files(tmp.path()).pop().unwrap();
    let (block, entry, byte) = sealed_value_in_snapshot(&fs::read(&snap).unwrap());

    let c = copy_of(tmp.path());
    let snap_c = c.path().join(file_tail(&snap));
    flip_byte(&snap_c, byte);
    for k in [None, Some(key(1))] {
        let r = inspect::verify_with_key(c.path(), k.clone()).unwrap();
        assert_problem_in(&r, &snap_c, block.clone(), "flip");
        assert!(r.snapshots.iter().any(|s| !s.intact));
    }

    // The block checksum made to match: only the entry's tag catches it.
    let c = copy_of(tmp.path());
    let snap_c = c.path().join(file_tail(&snap));
    let mut bytes = fs::read(&snap_c).unwrap();
    bytes[byte as usize] ^= 0x20;
    fix_first_block_crc(&mut bytes);
    fs::write(&snap_c, &bytes).unwrap();
    let r = inspect::verify(c.path()).unwrap();
    assert!(
        r.is_intact(),
        "without the key the sealed bytes are not authenticated: {:?}",
        r.problems
    );
    let r = inspect::verify_with_key(c.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &snap_c, entry.start..byte + 1, "forged checksum, key");
    assert!(r.snapshots.iter().any(|s| !s.intact));
}

// ---------------------------------------------------------------------------------------------
// Pieces from elsewhere

/// Two closed stores of the same shape under the same master key, values tagged `a` and `b`.
fn twin_stores() -> (tempfile::TempDir, tempfile::TempDir, BTreeMap<Vec<u8>, Vec<u8>>) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_store(a.path(), N, b'a');
    let state_b = make_store(b.path(), N, b'b');
    let names = |d: &Path| {
        all_files(d)
            .into_iter()
            .map(|(p, _)| p.strip_prefix(d).unwrap().to_path_buf())
            .collect::<Vec<_>>()
    };
    let (mut na, mut nb) = (names(a.path()), names(b.path()));
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "the twins have the same files");
    (a, b, state_b)
}

/// Opens `dir` in salvage mode and checks that no value is one of store A's (tag `a`).
fn assert_no_value_of_a(dir: &Path, what: &str) {
    if let Ok(db) = Db::open_with(dir, opts(1).recovery_mode(RecoveryMode::Salvage)) {
        for (k, v) in contents(&db) {
            assert!(
                !v.ends_with(b"aaaa"),
                "{what}: {:?} has store A's value",
                String::from_utf8_lossy(&k)
            );
        }
    }
}

#[test]
fn a_segment_or_snapshot_from_another_store_with_the_same_key_is_damage() {
    let (a, b, _) = twin_stores();

    // A's segment over B's segment of the same name.
    let (seg_a, _) = last_live_segment(a.path());
    let c = copy_of(b.path());
    let seg_c = c.path().join(file_tail(&seg_a));
    fs::copy(&seg_a, &seg_c).unwrap();
    match Db::open_with(c.path(), opts(1)) {
        Err(Error::Corruption { path, reason, .. }) => {
            assert!(path.ends_with(file_tail(&seg_a)), "{} ({reason})", path.display())
        }
        other => panic!("another store's segment: {:?}", other.map(|d| contents(&d))),
    }
    let r = inspect::verify_with_key(c.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &seg_c, 0..u64::MAX, "segment swap");
    assert_no_value_of_a(c.path(), "segment swap");

    // A's snapshot over B's.
    let snap_a = snapshot_files(a.path()).pop().unwrap();
    let c = copy_of(b.path());
    let snap_c = c.path().join(file_tail(&snap_a));
    fs::copy(&snap_a, &snap_c).unwrap();
    match Db::open_with(c.path(), opts(1)) {
        Err(Error::Corruption { path, reason, .. }) => {
            assert!(path.ends_with(file_tail(&snap_a)), "{} ({reason})", path.display())
        }
        other => panic!("another store's snapshot: {:?}", other.map(|d| contents(&d))),
    }
    let r = inspect::verify_with_key(c.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &snap_c, 0..u64::MAX, "snapshot swap");
    assert!(r.snapshots.iter().any(|s| !s.intact));
    assert_no_value_of_a(c.path(), "snapshot swap");
}

#[test]
fn a_record_moved_to_another_place_is_damage() {
    let tmp = tempfile::tempdir().unwrap();
    make_store(tmp.path(), N, b'a');
    let (seg, recs) = last_live_segment(tmp.path());
    let (from, to) = (recs[0], recs[recs.len() - 2]);
    assert_eq!(from.len, to.len, "the workload's records are of one size");
    let mut bytes = fs::read(&seg).unwrap();
    // Record `from` copied over record `to`, carrying `to`'s sequence numbers and a checksum
    // that matches: only the placement in its ops' associated data tells them apart.
    let moved = bytes[from.start as usize..from.end() as usize].to_vec();
    bytes[to.start as usize..to.end() as usize].copy_from_slice(&moved);
    let at = to.start as usize;
    bytes[at + 8..at + 16].copy_from_slice(&to.seq.to_le_bytes());
    bytes[at + 16..at + 24].copy_from_slice(&to.durable_seq.to_le_bytes());
    fix_record_crc(&mut bytes, to);
    fs::write(&seg, &bytes).unwrap();
    assert_eq!(parse_records(&bytes).len(), recs.len());

    match Db::open_with(tmp.path(), opts(1)) {
        Err(Error::Corruption { path, offset, reason }) => {
            assert!(path.ends_with(file_tail(&seg)), "{}", path.display());
            assert!((to.start..to.end()).contains(&offset), "{offset} ({reason})");
        }
        other => panic!("a moved record: {:?}", other.map(|d| contents(&d))),
    }
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert_problem_in(&r, &seg, to.start..to.end(), "moved record");
}

// ---------------------------------------------------------------------------------------------
// Repair

/// Every value in `got` is the one `state` has for its key (salvage loses, never invents).
fn assert_subset(got: &BTreeMap<Vec<u8>, Vec<u8>>, state: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    for (k, v) in got {
        assert_eq!(state.get(k), Some(v), "{what}: {:?}", String::from_utf8_lossy(k));
    }
}

#[test]
fn repair_of_an_encrypted_store_needs_its_key_and_writes_nothing_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let state = make_store(tmp.path(), N, b'a');
    let (seg, recs) = last_live_segment(tmp.path());
    forge_value(&seg, recs[recs.len() / 2]);

    assert!(matches!(sessiondb::repair(tmp.path()), Err(Error::KeyRequired { .. })));
    assert!(matches!(
        sessiondb::repair_with_key(tmp.path(), Some(key(2))),
        Err(Error::WrongKey { .. })
    ));
    let report = sessiondb::repair_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(report.repaired);
    assert!(report
        .broken_files
        .iter()
        .any(|(was, _)| was.ends_with(file_tail(&seg))));
    assert_no_plaintext(tmp.path(), "repair");
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    let got = open_contents(tmp.path(), 1);
    assert_subset(&got, &state, "repaired");
    assert_eq!(got.get(MARKER_KEY).map(|v| &v[..]), Some(MARKER_VALUE));
    assert_eq!(got.len() as u64, report.keys);
    assert!(got.len() >= state.len() - 1);
}

#[test]
fn repair_salvages_a_damaged_encrypted_snapshot_under_a_fresh_key() {
    let tmp = tempfile::tempdir().unwrap();
    // Enough entries for several blocks.
    let db = Db::open_with(tmp.path(), opts(1)).unwrap();
    write_workload(&db, 300, b'a');
    let state = contents(&db);
    db.close().unwrap();
    let snap = snapshot_files(tmp.path()).pop().unwrap();
    let bytes = fs::read(&snap).unwrap();
    let (block, _, byte) = sealed_value_in_snapshot(&bytes);
    assert!(
        block.end + 1000 < bytes.len() as u64,
        "the snapshot has more than one block"
    );
    flip_byte(&snap, byte);

    let report = sessiondb::repair_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(report.repaired);
    assert!(report.snapshot_entries_kept > 0, "{report:?}");
    assert!(report.snapshot_entries_lost.is_some_and(|l| l > 0), "{report:?}");
    assert_no_plaintext(tmp.path(), "snapshot repair");
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    let got = open_contents(tmp.path(), 1);
    assert_subset(&got, &state, "repaired");
    assert_eq!(got.len() as u64, report.keys);
    // The log after the snapshot is all there.
    for i in 300..600 {
        let (k, v) = filler(i, b'a');
        assert_eq!(got.get(&k), Some(&v));
    }
}

#[test]
fn repair_of_a_damaged_snapshot_with_no_log_after_it() {
    // The new snapshot has the damaged one's base: its data key is replaced.
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open_with(tmp.path(), opts(1)).unwrap();
    for i in 0..300 {
        let (k, v) = filler(i, b'a');
        db.put(k, v).unwrap();
    }
    db.checkpoint().unwrap();
    let state = contents(&db);
    db.close().unwrap();
    let snap = snapshot_files(tmp.path()).pop().unwrap();
    let (_, _, byte) = sealed_value_in_snapshot(&fs::read(&snap).unwrap());
    flip_byte(&snap, byte);

    let report = sessiondb::repair_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(report.repaired);
    assert_eq!(report.snapshot.as_deref(), Some(snap.as_path()));
    assert_no_plaintext(tmp.path(), "same-base repair");
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    let got = open_contents(tmp.path(), 1);
    assert_subset(&got, &state, "repaired");
    assert!(!got.is_empty() && got.len() < state.len());
}

#[test]
fn repair_keeps_an_intact_snapshot_that_holds_the_state() {
    // An older snapshot put back (damaged, its data key long gone) next to the intact newest
    // one, which already holds the salvaged state: repair sets the old one aside and keeps the
    // newest as it is (never replacing its data key).
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open_with(tmp.path(), opts(1)).unwrap();
    write_workload(&db, N, b'a');
    let old = snapshot_files(tmp.path()).pop().unwrap();
    let old_bytes = fs::read(&old).unwrap();
    db.checkpoint().unwrap();
    let state = contents(&db);
    db.close().unwrap();
    let newest = snapshot_files(tmp.path()).pop().unwrap();
    assert_ne!(newest, old);
    let newest_bytes = fs::read(&newest).unwrap();
    fs::write(&old, &old_bytes).unwrap();
    flip_byte(&old, 100);

    let report = sessiondb::repair_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(report.repaired);
    assert!(report.broken_files.iter().any(|(was, _)| was == &old));
    assert_eq!(report.snapshot.as_deref(), Some(newest.as_path()));
    assert_eq!(fs::read(&newest).unwrap(), newest_bytes);
    assert_no_plaintext(tmp.path(), "repair keeping a snapshot");
    assert_eq!(open_contents(tmp.path(), 1), state);
    let r = inspect::verify_with_key(tmp.path(), Some(key(1))).unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
}
