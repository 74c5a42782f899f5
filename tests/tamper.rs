//! Damaged and foreign files on disk, on real files.
//!
//! Scenario: a store written with known puts in `SyncMode::Always` and 64 KiB segments is
//! closed, then its files are cut, bit-flipped, replaced or joined by files of our naming
//! pattern that hold garbage, or by files outside it.
//! Method: copy the store to a fresh temp dir per case, damage the copy (record boundaries come
//! from parsing the documented segment framing), reopen it in each recovery mode.
//! Invariant: a torn tail is cut and leaves exactly the writes before it; damage that a later
//! record vouches for, or in an older segment, is `Corruption` naming the segment and an offset
//! inside the damaged record; `Strict` refuses a torn tail; `Salvage` never returns a value that
//! was not written for that key; foreign or garbage files give a typed error, never a panic;
//! files outside the naming pattern are left alone; leftover `*.snap.tmp` files are removed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use sessiondb::{Db, Error, Options, RecoveryMode, SyncMode};
use support::{
    assert_corruption_in, contents, copy_dir, flip_byte, segment_first_seq, segments_with_records, small_options,
    snapshot_files, wal_relative, OptionsExt, Rng,
};

const PUTS: usize = 200;

/// Nothing in the background, so the files are as the test wrote them.
fn opts(mode: RecoveryMode) -> Options {
    small_options().quiet().sync_mode(SyncMode::Always).recovery_mode(mode)
}

fn put_kv(i: usize) -> (Vec<u8>, Vec<u8>) {
    // Keys repeat so a prefix is not the same as a set of keys; values are unique per put and
    // of varying length so record sizes differ.
    let key = format!("key{:02}", i % 37).into_bytes();
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(600 + (i * 7) % 400, b'a' + (i % 26) as u8);
    (key, value)
}

fn state_after(j: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..j).map(put_kv).collect()
}

/// A closed store holding `PUTS` puts, one record each, across several segments.
fn make_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
    for i in 0..PUTS {
        let (k, v) = put_kv(i);
        db.put(k, v).unwrap();
    }
    db.close().unwrap();
    let segs = segments_with_records(dir.path());
    assert!(segs.len() >= 3, "the test needs several segments, got {}", segs.len());
    let records: usize = segs.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(records, PUTS, "one record per put");
    assert!(
        segs.last().unwrap().1.len() >= 3,
        "the last segment needs a few records"
    );
    dir
}

fn fresh_copy(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    copy_dir(src, dst.path());
    dst
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn torn_tail_leaves_a_prefix() {
    let store = make_store();
    let segs = segments_with_records(store.path());
    let before_last: usize = segs[..segs.len() - 1].iter().map(|(_, r)| r.len()).sum();
    let (last_path, last_recs) = segs.last().unwrap().clone();
    let rel = last_path.strip_prefix(store.path()).unwrap().to_path_buf();
    let last_bytes = fs::read(&last_path).unwrap();

    // (cut offset, intact records in the last segment, bytes of the cut record kept)
    let mut cuts: Vec<(u64, usize, Option<u64>)> = vec![(40, 0, None)];
    for (n, rec) in last_recs.iter().enumerate() {
        cuts.push((rec.end(), n + 1, None));
        for inside in [1, 4, 12, 24, 25, rec.len / 2, rec.len - 1] {
            cuts.push((rec.start + inside, n, Some(inside)));
        }
    }
    for (cut, intact, kept) in cuts {
        let what = format!("cut at {cut} (record {intact} of the last segment, {kept:?} of its bytes kept)");
        let copy = fresh_copy(store.path());
        let seg = copy.path().join(&rel);
        truncate(&seg, cut);
        let expected = state_after(before_last + intact);
        let db = Db::open_with(copy.path(), opts(RecoveryMode::TolerateTornTail))
            .unwrap_or_else(|e| panic!("{what}: default recovery must cut a torn tail, got {e}"));
        assert_eq!(
            contents(&db),
            expected,
            "{what}: contents are not the first {} puts",
            before_last + intact
        );
        if let Some(kept) = kept {
            // Writes after the cut land where the torn record was, and survive the next reopen.
            db.put(b"after-cut", b"new").unwrap();
            db.close().unwrap();
            let db = Db::open_with(copy.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
            let mut expected = expected.clone();
            expected.insert(b"after-cut".to_vec(), b"new".to_vec());
            assert_eq!(contents(&db), expected, "{what}: the write after recovery is lost");
            drop(db);

            // A kept part that is all zero reads as a clean end of log, not as damage.
            let kept_bytes = &last_bytes[(cut - kept) as usize..cut as usize];
            if kept_bytes.iter().all(|&b| b == 0) {
                continue;
            }
            let strict_copy = fresh_copy(store.path());
            truncate(&strict_copy.path().join(&rel), cut);
            match Db::open_with(strict_copy.path(), opts(RecoveryMode::Strict)) {
                Err(Error::Corruption { path, .. }) => {
                    assert!(path.ends_with(wal_relative(&last_path)), "{what}: {}", path.display())
                }
                Err(e) => panic!("{what}: Strict expected Corruption, got {e:?}"),
                Ok(_) => panic!("{what}: Strict opened a store with a torn record"),
            }
        }
    }
}

/// Every value each key was ever given.
fn written() -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut m: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for i in 0..PUTS {
        let (k, v) = put_kv(i);
        m.entry(k).or_default().insert(v);
    }
    m
}

#[test]
fn bitflip_in_older_segment_is_corruption_and_salvage_returns_no_wrong_value() {
    let store = make_store();
    let segs = segments_with_records(store.path());
    let written = written();
    for (seg_index, (seg_path, recs)) in segs[..segs.len() - 1].iter().enumerate() {
        let rel = seg_path.strip_prefix(store.path()).unwrap().to_path_buf();
        for rec in [recs[0], recs[recs.len() / 2], *recs.last().unwrap()] {
            for inside in [0, 5, 9, 17, 24, 30, rec.len / 2, rec.len - 1] {
                let what = format!("segment {seg_index}, record at {}, byte +{inside}", rec.start);
                let copy = fresh_copy(store.path());
                let seg = copy.path().join(&rel);
                flip_byte(&seg, rec.start + inside);
                assert_corruption_in(
                    Db::open_with(copy.path(), opts(RecoveryMode::TolerateTornTail)),
                    seg_path,
                    rec,
                    &what,
                );
                let strict = Db::open_with(copy.path(), opts(RecoveryMode::Strict));
                assert!(
                    matches!(strict, Err(Error::Corruption { .. })),
                    "{what}: Strict refuses a damaged store as corruption: {:?}",
                    strict.map(|_| ())
                );

                let db = Db::open_with(copy.path(), opts(RecoveryMode::Salvage))
                    .unwrap_or_else(|e| panic!("{what}: Salvage must open, got {e}"));
                assert!(
                    !db.stats().recovery.skipped.is_empty(),
                    "{what}: Salvage reports what it skipped"
                );
                let got = contents(&db);
                for (k, v) in &got {
                    assert!(
                        written.get(k).is_some_and(|vs| vs.contains(v)),
                        "{what}: Salvage returned a value never written for {:?}",
                        String::from_utf8_lossy(k)
                    );
                    assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{what}: get and scan disagree");
                }
                for k in written.keys() {
                    if let Some(v) = db.get(k).unwrap() {
                        assert!(written[k].contains(&v), "{what}: get returned a value never written");
                    }
                }
            }
        }
    }
}

#[test]
fn bitflip_in_last_segment_before_acknowledged_records_is_corruption() {
    let store = make_store();
    let segs = segments_with_records(store.path());
    let (last_path, recs) = segs.last().unwrap().clone();
    let rel = last_path.strip_prefix(store.path()).unwrap().to_path_buf();
    // Every record but the last is followed by a record written after it was acknowledged.
    for (n, rec) in recs[..recs.len() - 1].iter().enumerate() {
        assert!(
            recs[n + 1].durable_seq >= rec.seq,
            "SyncMode::Always: the next record vouches for this one"
        );
        for inside in [0, 5, 9, 30, rec.len - 1] {
            let copy = fresh_copy(store.path());
            flip_byte(&copy.path().join(&rel), rec.start + inside);
            let what = format!("last segment, record {n} at {}, byte +{inside}", rec.start);
            assert_corruption_in(
                Db::open_with(copy.path(), opts(RecoveryMode::TolerateTornTail)),
                &last_path,
                *rec,
                &what,
            );
        }
    }
}

fn expect_error(dir: &Path, what: &str) -> Error {
    match Db::open_with(dir, opts(RecoveryMode::TolerateTornTail)) {
        Err(e) => {
            // Typed errors read as sentences.
            assert!(!e.to_string().is_empty());
            e
        }
        Ok(db) => panic!("{what}: opened, with {} keys", db.stats().keys),
    }
}

#[test]
fn garbage_segment_is_an_error() {
    let (seed, _guard) = support::seeded("garbage_segment_is_an_error");
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    for len in [1usize, 39, 40, 41, 64, 4096, 64 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("wal")).unwrap();
        let mut bytes = rng.bytes(len);
        bytes[0] |= 1; // never all zero
        let seg = dir.path().join("wal/00000000000000000001.wal");
        fs::write(&seg, &bytes).unwrap();
        let result = Db::open_with(dir.path(), opts(RecoveryMode::TolerateTornTail));
        if len < 40 {
            // Shorter than a header: could be a torn activation; either answer, but no panic.
            continue;
        }
        // A whole header's worth of bytes without our magic is not our file: refuse it, and
        // do not rewrite it (readers never write).
        if let Ok(db) = result {
            failures.push(format!(
                "{len} random bytes as the only segment: opened, with {} keys",
                db.stats().keys
            ));
        }
        match fs::read(&seg) {
            Ok(now) if now == bytes => {}
            Ok(_) => failures.push(format!("{len} random bytes as the only segment: the file was modified")),
            Err(e) => failures.push(format!(
                "{len} random bytes as the only segment: the file is gone ({e})"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn garbage_snapshot_is_an_error() {
    let (seed, _guard) = support::seeded("garbage_snapshot_is_an_error");
    let mut rng = Rng::new(seed);
    for len in [1usize, 8, 64, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = rng.bytes(len);
        bytes[0] |= 1;
        fs::write(dir.path().join("00000000000000000005.snap"), &bytes).unwrap();
        expect_error(dir.path(), &format!("{len} random bytes as a snapshot"));
    }
}

#[test]
fn zero_length_last_segment_opens_with_data_intact() {
    // A crash right after a new segment's file was created leaves it empty: nothing depends
    // on it, so the store must open with everything before it.
    let store = make_store();
    let segs = segments_with_records(store.path());
    let last_name = segs.last().unwrap().0.file_name().unwrap().to_str().unwrap().to_owned();
    let next_id: u64 = last_name.trim_end_matches(".wal").parse::<u64>().unwrap() + 1;
    fs::write(store.path().join("wal").join(format!("{next_id:020}.wal")), b"").unwrap();
    let db = Db::open_with(store.path(), opts(RecoveryMode::TolerateTornTail))
        .unwrap_or_else(|e| panic!("an empty newest segment must not stop recovery: {e}"));
    assert_eq!(contents(&db), state_after(PUTS));
}

#[test]
fn zero_length_segment_in_a_fresh_dir_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("wal")).unwrap();
    fs::write(dir.path().join("wal/00000000000000000001.wal"), b"").unwrap();
    // Either answer is defensible; a panic is not. If it opens, it is an empty, working store.
    if let Ok(db) = Db::open_with(dir.path(), opts(RecoveryMode::TolerateTornTail)) {
        assert!(contents(&db).is_empty());
        db.put(b"k", b"v").unwrap();
        db.close().unwrap();
        let db = Db::open_with(dir.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn truncated_snapshot_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open_with(dir.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
        for i in 0..PUTS {
            let (k, v) = put_kv(i);
            db.put(k, v).unwrap();
        }
        db.checkpoint().unwrap();
        db.close().unwrap();
    }
    let snaps = snapshot_files(dir.path());
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    // The log no longer covers the start, so nothing can stand in for the snapshot.
    let segs = support::segment_files(dir.path());
    assert!(
        segs.iter().all(|p| {
            let b = fs::read(p).unwrap();
            !support::has_segment_header(&b) || segment_first_seq(&b) > 1
        }),
        "checkpoint left the first segment in place"
    );
    let full = fs::read(&snaps[0]).unwrap();
    for len in [0, 8, full.len() / 2, full.len() - 1] {
        let copy = fresh_copy(dir.path());
        let snap = copy.path().join(snaps[0].file_name().unwrap());
        fs::write(&snap, &full[..len]).unwrap();
        let err = expect_error(copy.path(), &format!("snapshot cut to {len} of {} bytes", full.len()));
        if let Error::Corruption { path, .. } = &err {
            assert!(path.ends_with(snaps[0].file_name().unwrap()), "{err}");
        }
    }
}

#[test]
fn foreign_files_are_ignored_and_snapshot_tmp_removed() {
    let store = make_store();
    let notes = store.path().join("notes.txt");
    let wal_notes = store.path().join("wal/notes.txt");
    let odd_name = store.path().join("wal/42.wal");
    let tmp = store.path().join("00000000000000000007.snap.tmp");
    fs::write(&notes, b"mine").unwrap();
    fs::write(&wal_notes, b"mine too").unwrap();
    fs::write(&odd_name, b"not twenty digits").unwrap();
    fs::write(&tmp, b"half a snapshot").unwrap();
    let db = Db::open_with(store.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
    assert_eq!(contents(&db), state_after(PUTS));
    assert!(!tmp.exists(), "a leftover .snap.tmp is removed on open");
    db.put(b"more", b"data").unwrap();
    db.checkpoint().unwrap();
    db.close().unwrap();
    assert_eq!(fs::read(&notes).unwrap(), b"mine");
    assert_eq!(fs::read(&wal_notes).unwrap(), b"mine too");
    assert_eq!(fs::read(&odd_name).unwrap(), b"not twenty digits");
    let db = Db::open_with(store.path(), opts(RecoveryMode::TolerateTornTail)).unwrap();
    assert_eq!(db.get(b"more").unwrap().as_deref(), Some(&b"data"[..]));
}

/// Sets the version field of the segment header in `bytes` to `version`; with `fix_preamble`,
/// also rewrites the preamble checksum (crc32 of bytes 0..12, at offset 12) to match, as a
/// genuine header of that version would carry it.
fn patch_segment_version(bytes: &mut [u8], version: u32, fix_preamble: bool) {
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    if fix_preamble {
        let crc = crc32fast::hash(&bytes[0..12]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn newer_segment_version_is_unsupported_format() {
    let store = make_store();
    let segs = segments_with_records(store.path());
    for (seg_path, _) in [segs.first().unwrap(), segs.last().unwrap()] {
        let copy = fresh_copy(store.path());
        let seg: PathBuf = copy.path().join(seg_path.strip_prefix(store.path()).unwrap());
        let mut bytes = fs::read(&seg).unwrap();
        // Version 4: the newest this build reads is 3 (an encrypted store's files).
        patch_segment_version(&mut bytes, 4, true);
        fs::write(&seg, &bytes).unwrap();
        match Db::open_with(copy.path(), opts(RecoveryMode::TolerateTornTail)) {
            Err(Error::UnsupportedFormat { path, found, supported }) => {
                assert_eq!((found, supported), (4, sessiondb::FORMAT_VERSION_NEWEST));
                assert!(path.ends_with(wal_relative(seg_path)), "names {}", path.display());
            }
            Err(e) => panic!("expected UnsupportedFormat, got {e:?}"),
            Ok(_) => panic!("a segment of format version 4 was accepted"),
        }
    }
}

#[test]
fn damaged_segment_version_is_not_unsupported_format() {
    // The version changed but the preamble checksum still covers the old one: a garbled
    // version field (a torn write, a bit flip), not a newer format. What recovery makes of the
    // damage depends on where it is (a torn activation on the last segment, corruption
    // elsewhere); it must never be reported as an unsupported format, nor panic.
    let store = make_store();
    let segs = segments_with_records(store.path());
    for (seg_path, _) in [segs.first().unwrap(), segs.last().unwrap()] {
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Strict,
            RecoveryMode::Salvage,
        ] {
            let what = format!("{} with version 3 and a stale preamble, {mode:?}", seg_path.display());
            let copy = fresh_copy(store.path());
            let seg: PathBuf = copy.path().join(seg_path.strip_prefix(store.path()).unwrap());
            let mut bytes = fs::read(&seg).unwrap();
            patch_segment_version(&mut bytes, 3, false);
            fs::write(&seg, &bytes).unwrap();
            if let Err(e @ Error::UnsupportedFormat { .. }) = Db::open_with(copy.path(), opts(mode)) {
                panic!("{what}: damage read as a newer format: {e}");
            }
        }
    }
}
