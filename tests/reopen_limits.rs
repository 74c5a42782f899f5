//! Reopening a store with smaller limits than it was written with keeps every record.
//!
//! Scenario: a 200 KB value is written under default limits; the store is reopened with
//! `value_size_max` 16 KiB and `batch_size_max` 64 KiB. Method: real files, reopen twice.
//! Invariant: recovery bounds record lengths by format limits, not by the options of the
//! current open, so nothing acknowledged is taken for a torn tail. (Found while writing
//! docs/format.md: the reader used the current options and cut the record.)

use sessiondb::{Db, Options};

#[test]
fn smaller_limits_on_reopen_keep_large_records() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 200_000];
    let opts = || Options::new().segment_size(8 << 20).auto_checkpoint(false);
    let db = Db::open_with(dir.path(), opts()).unwrap();
    db.put("big", &big).unwrap();
    db.put("after", "x").unwrap();
    db.close().unwrap();

    let small = opts().value_size_max(16 * 1024).batch_size_max(64 * 1024);
    let db = Db::open_with(dir.path(), small).unwrap();
    assert_eq!(db.stats().recovery.torn_tail_bytes, 0, "nothing may be cut");
    assert_eq!(db.get("big").unwrap().as_deref(), Some(&big[..]));
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]));
    db.close().unwrap();

    let db = Db::open_with(dir.path(), opts()).unwrap();
    assert_eq!(db.get("big").unwrap().as_deref(), Some(&big[..]));
}

#[test]
fn batch_size_max_over_the_decoder_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new()
        .segment_size(2 << 30)
        .batch_size_max(sessiondb::limits::BATCH_SIZE_MAX_LIMIT + 1);
    let err = Db::open_with(dir.path(), opts).unwrap_err();
    assert!(matches!(err, sessiondb::Error::InvalidOptions(_)), "{err}");
}

/// Issue 15 (found from recorded system calls): the first write into segment 2 torn so that its
/// header's sectors stayed zero while later ones landed, then the store reopened with a larger
/// `segment_size`. That open zeroed segment 2 (a torn activation), found it too small to append
/// to, deleted it and started segment 3; after one more write every open failed with
/// "segment 2 is missing". A store must stay openable after a successful recovery, whatever
/// options the next open uses.
#[test]
fn a_torn_activation_then_a_larger_segment_size_keeps_the_store_openable() {
    let dir = tempfile::tempdir().unwrap();
    let small = || {
        Options::new()
            .segment_size(64 * 1024)
            .value_size_max(4096)
            .batch_size_max(16 * 1024)
            .auto_checkpoint(false)
            .preallocate_ahead(false)
    };
    let db = Db::open_with(dir.path(), small()).unwrap();
    let mut i = 0u32;
    let wal = dir.path().join("wal");
    let segment2 = wal.join("00000000000000000002.wal");
    // Fill segment 1 until a write lands in segment 2.
    while !segment2.exists() || std::fs::read(&segment2).unwrap()[..40].iter().all(|&b| b == 0) {
        db.put(format!("k{i:05}"), vec![b'v'; 1000]).unwrap();
        i += 1;
    }
    db.close().unwrap();
    // The crash state: segment 2's header sectors never landed; the records after them did.
    let mut bytes = std::fs::read(&segment2).unwrap();
    bytes[..512].fill(0);
    std::fs::write(&segment2, &bytes).unwrap();

    // Reopened with the default segment size: segment 2 is a torn activation.
    let db = Db::open_with(dir.path(), Options::new()).unwrap();
    let kept = db.stats().keys;
    assert!(
        kept > 0 && kept < u64::from(i),
        "segment 1's writes stay, segment 2's go: {kept}"
    );
    db.put("after", "x").unwrap();
    db.close().unwrap();

    for opts in [Options::new(), small()] {
        let db = Db::open_with(dir.path(), opts).expect("the store stays openable");
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(db.stats().keys, kept + 1);
        db.close().unwrap();
    }
}
