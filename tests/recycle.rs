//! Recycled segments (issue 17): the segments a checkpoint covers are reused as new segments
//! instead of zero-filling new files, and their old bytes are never read as records.
//!
//! Scenario: a store on real files with 64 KiB segments writes versions of the same keys
//! through several checkpoints, so the log rolls into files whose old bytes hold older versions
//! of those keys; it is closed and reopened in `Strict` mode (which refuses any torn tail), under
//! the segment size it was written with and another one, as an operator might change it.
//! Invariant: every key reads its last version, never an older one; no open cuts anything.

use std::collections::BTreeMap;

use sessiondb::{Db, EncryptionKey, Options, RecoveryMode, SyncMode};

mod support;
use support::options::{small_options, OptionsExt, SEGMENT_SIZE_SMALL};

/// Writes `rounds` versions of 40 keys (values of 0.6-1.5 KiB, so a round may roll the log), with a
/// checkpoint before each round (so the log ends in records, in a recycled segment); records
/// the last version of each key in `model`.
fn write_rounds(db: &Db, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, rounds: std::ops::Range<u32>) {
    for round in rounds {
        db.checkpoint().unwrap();
        for k in 0..40u32 {
            let key = format!("key-{k:02}").into_bytes();
            let mut value = format!("round {round} key {k} ").into_bytes();
            // Rounds of different lengths: a file's lives end at different offsets.
            value.resize(600 + (round as usize * 337) % 900, b'.');
            db.put(&key, &value).unwrap();
            model.insert(key, value);
        }
    }
}

fn check(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    for (key, value) in model {
        let got = db.get(key).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(value.as_slice()),
            "{what}: {}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(db.stats().keys, model.len() as u64, "{what}");
}

fn strict(opts: Options) -> Options {
    opts.recovery_mode(RecoveryMode::Strict)
}

/// Fails without the end marker after each write (checked): the first `Strict` reopen refuses
/// the old life's first record after this life's last one ("checksum mismatch").
#[test]
fn recycled_segments_hold_only_their_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || small_options().quiet().sync_mode(SyncMode::Always);
    let mut model = BTreeMap::new();
    let db = Db::open_with(dir.path(), opts()).unwrap();
    write_rounds(&db, &mut model, 0..8);
    let recycled = db.stats().segments_recycled;
    assert!(recycled >= 4, "segments recycled: {recycled}");
    check(&db, &model, "before closing");
    // A checkpoint just before the close leaves segments in the pool, unused.
    db.checkpoint().unwrap();
    db.close().unwrap();
    // The segments kept to be recycled go with the close (README, "Checkpoints").
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(kept.is_empty(), "left after close: {kept:?}");

    for (round, segment_size) in [
        (8, SEGMENT_SIZE_SMALL),
        (9, 2 * SEGMENT_SIZE_SMALL),
        (10, SEGMENT_SIZE_SMALL),
    ] {
        let what = format!("reopened with {segment_size}-byte segments");
        let db = Db::open_with(dir.path(), strict(opts().segment_size(segment_size)))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let report = db.stats().recovery;
        assert_eq!(report.torn_tail_bytes, 0, "{what}");
        assert!(report.skipped.is_empty(), "{what}");
        check(&db, &model, &what);
        // Writes go on into recycled segments, or new ones where the covered files are of
        // another size; each reopen after sees the same.
        write_rounds(&db, &mut model, round..round + 1);
        write_rounds(&db, &mut model, round + 100..round + 101);
        check(&db, &model, &what);
    }
}

/// A plain store with `max_retention` never recycles (the old bytes would keep dead values in
/// its files); an encrypted one does (their data keys are gone), and so does a plain store
/// without it. `recycle_segments(false)` turns it off.
#[test]
fn recycling_follows_the_options() {
    let key = EncryptionKey::from_bytes([0x5a; 32]);
    let retention = std::time::Duration::from_secs(3600);
    let cases = [
        ("plain", small_options(), true),
        (
            "plain with max_retention",
            small_options().max_retention(retention),
            false,
        ),
        (
            "encrypted with max_retention",
            small_options().max_retention(retention).encryption_key(key),
            true,
        ),
        (
            "recycle_segments(false)",
            small_options().recycle_segments(false),
            false,
        ),
    ];
    for (what, opts, recycles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts.quiet().sync_mode(SyncMode::Never);
        let mut model = BTreeMap::new();
        let db = Db::open_with(dir.path(), opts.clone()).unwrap();
        write_rounds(&db, &mut model, 0..4);
        assert_eq!(db.stats().segments_recycled > 0, recycles, "{what}");
        drop(db);
        let db = Db::open_with(dir.path(), strict(opts)).unwrap();
        check(&db, &model, what);
    }
}

/// A recycled spare after the log's last segment is a spare, not part of the log: a torn tail
/// in the segment before it is cut as the last segment's, never taken for damage in an older
/// one. Found by `syscall_crash.rs` (a spare the preparer had recycled made the open refuse the
/// torn tail as corruption); fails without `recovery::segments::is_unused` (checked).
#[test]
fn a_torn_tail_before_a_recycled_spare_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || small_options().quiet().sync_mode(SyncMode::Never);
    let mut model = BTreeMap::new();
    let db = Db::open_with(dir.path(), opts()).unwrap();
    write_rounds(&db, &mut model, 0..4);
    assert!(db.stats().segments_recycled > 0);
    let last_value = vec![0xab; 1000];
    db.put(b"the last write", &last_value).unwrap();
    db.sync().unwrap();
    drop(db);

    // The last segment, and after it a recycled spare made of its bytes (as the preparer makes
    // one: header and the 4 bytes after it zero, last 4 KiB zero, old records between).
    let wal = dir.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap().clone();
    let mut bytes = std::fs::read(&last).unwrap();
    let id: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut spare = bytes.clone();
    spare[..44].fill(0);
    let len = spare.len();
    spare[len - 4096..].fill(0);
    std::fs::write(wal.join(format!("{:020}.wal", id + 1)), &spare).unwrap();

    // The last record torn: a byte of its value changed.
    let at = bytes
        .windows(last_value.len())
        .position(|w| w == last_value.as_slice())
        .expect("the last value is in the last segment");
    bytes[at + 10] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();

    let db = Db::open_with(dir.path(), opts()).unwrap_or_else(|e| panic!("open: {e}"));
    assert!(db.stats().recovery.torn_tail_bytes > 0, "the torn tail is cut");
    assert_eq!(db.get(b"the last write").unwrap(), None);
    check(&db, &model, "after the cut");
    write_rounds(&db, &mut model, 4..5);
    drop(db);
    let db = Db::open_with(dir.path(), strict(opts())).unwrap();
    check(&db, &model, "reopened");
}

/// A scan holds the files its current chunk of entries points into; a checkpoint that covers
/// them must not hand them to be recycled (and overwritten) while the scan can still read them.
/// The scan reads its first entry, a checkpoint covers every segment, and new writes roll the
/// log through more segments than the pool holds; the scan then reads on: every value is the
/// one it had. Fails without the pool's check that nobody reads a file any more (checked: a
/// value checksum mismatch, `Corruption`, on the first read after the writes).
#[test]
fn a_scan_in_progress_keeps_its_files_from_being_recycled() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), small_options().quiet().sync_mode(SyncMode::Never)).unwrap();
    let value = |i: u32, round: u32| {
        let mut v = format!("key {i} round {round} ").into_bytes();
        v.resize(1000, b'.');
        v
    };
    for i in 0..200u32 {
        db.put(format!("k{i:03}"), value(i, 0)).unwrap();
    }
    let mut scan = db.range::<&[u8], _>(..);
    let (k, v) = scan.next().unwrap().unwrap();
    assert_eq!((k.as_slice(), v), (&b"k000"[..], value(0, 0)));

    db.checkpoint().unwrap();
    for round in 1..4u32 {
        for i in 0..200u32 {
            db.put(format!("other{i:03}"), value(i, round)).unwrap();
        }
        db.checkpoint().unwrap();
    }
    assert!(db.stats().segments_recycled > 0, "the writes recycled segments");

    for i in 1..200u32 {
        let (k, v) = scan.next().unwrap().unwrap_or_else(|e| panic!("k{i:03}: {e}"));
        assert_eq!(k, format!("k{i:03}").into_bytes());
        assert_eq!(v, value(i, 0), "k{i:03}");
    }
}
