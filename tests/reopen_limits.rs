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
