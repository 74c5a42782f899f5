//! Size limits on keys, values and batches.
//!
//! Scenario: writes exactly at each limit and one byte over it, through `put`, `put_with_ttl`
//! and `write(Batch)`.
//! Method: compare the error with the expected `TooLarge { what, size, max }`, and compare
//! `stats()` and the bytes of every file in the store before and after each rejected call.
//! Invariant: a write at the limit succeeds; a write over it fails with `TooLarge` before any
//! I/O, so a rejected write leaves no trace in the store.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiondb::limits::KEY_SIZE_MAX;
use sessiondb::{Batch, Db, Error, SyncMode};
use support::small_options;

const VALUE_MAX: usize = 4096;
const BATCH_MAX: usize = 16 * 1024;

fn open(dir: &Path) -> Db {
    let opts = small_options()
        .value_size_max(VALUE_MAX)
        .batch_size_max(BATCH_MAX)
        .sync_mode(SyncMode::Always)
        .preallocate_ahead(false)
        .auto_checkpoint(false);
    Db::open_with(dir, opts).expect("open")
}

/// Every file under `dir` (LOCK excluded) with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "LOCK" {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Runs `f`, which must be rejected as too large, and checks that nothing was written.
fn assert_rejected(db: &Db, dir: &Path, what: &'static str, f: impl FnOnce(&Db) -> sessiondb::Result<()>) -> Error {
    let stats_before = db.stats();
    let files_before = files(dir);
    let err = f(db).expect_err("an oversize write must fail");
    match &err {
        Error::TooLarge { what: w, size, max } => {
            assert_eq!(*w, what, "{err}");
            assert!(size > max, "{err}");
        }
        other => panic!("expected TooLarge {{ what: {what:?} }}, got {other:?}"),
    }
    let stats_after = db.stats();
    assert_eq!(stats_after.records, stats_before.records, "no record written");
    assert_eq!(stats_after.last_seq, stats_before.last_seq, "no sequence number used");
    assert_eq!(stats_after.fsyncs, stats_before.fsyncs, "no fsync");
    assert_eq!(stats_after.commit_groups, stats_before.commit_groups, "no commit group");
    assert!(files(dir) == files_before, "a rejected write changed the files on disk");
    err
}

#[test]
fn key_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let at = vec![b'k'; KEY_SIZE_MAX];
    db.put(&at, b"v").unwrap();
    assert_eq!(db.get(&at).unwrap().as_deref(), Some(&b"v"[..]));

    let over = vec![b'k'; KEY_SIZE_MAX + 1];
    let err = assert_rejected(&db, dir.path(), "key", |db| db.put(&over, b"v"));
    assert!(
        matches!(err, Error::TooLarge { size, max, .. } if size == KEY_SIZE_MAX as u64 + 1 && max == KEY_SIZE_MAX as u64),
        "{err:?}"
    );
    assert_rejected(&db, dir.path(), "key", |db| {
        db.put_with_ttl(&over, b"v", Duration::from_secs(1))
    });
    assert_rejected(&db, dir.path(), "key", |db| db.delete(&over));
    assert_rejected(&db, dir.path(), "key", |db| {
        let mut b = Batch::new();
        b.put(b"fine", b"fine").put(&over, b"v");
        db.write(b)
    });
    // Reads of an oversize key find nothing (or refuse); they never write.
    match db.get(&over) {
        Ok(None) | Err(Error::TooLarge { .. }) => {}
        other => panic!("get of an oversize key: {other:?}"),
    }
    assert_eq!(db.get(b"fine").unwrap(), None, "the rejected batch applied nothing");
    db.close().unwrap();
    let db = open(dir.path());
    assert_eq!(
        db.get(&at).unwrap().as_deref(),
        Some(&b"v"[..]),
        "a max-size key survives reopen"
    );
}

#[test]
fn value_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let at = vec![7u8; VALUE_MAX];
    db.put(b"at", &at).unwrap();
    db.put_with_ttl(b"at-ttl", &at, Duration::from_secs(3600)).unwrap();
    let over = vec![7u8; VALUE_MAX + 1];
    let err = assert_rejected(&db, dir.path(), "value", |db| db.put(b"over", &over));
    assert!(
        matches!(err, Error::TooLarge { size, max, .. } if size == VALUE_MAX as u64 + 1 && max == VALUE_MAX as u64),
        "{err:?}"
    );
    assert_rejected(&db, dir.path(), "value", |db| {
        db.put_with_ttl(b"over", &over, Duration::from_secs(1))
    });
    assert_rejected(&db, dir.path(), "value", |db| {
        let mut b = Batch::new();
        b.put(b"small", b"x").put(b"over", &over);
        db.write(b)
    });
    assert_eq!(db.get(b"over").unwrap(), None);
    assert_eq!(db.get(b"small").unwrap(), None);
    db.close().unwrap();
    let db = open(dir.path());
    assert_eq!(db.get(b"at").unwrap().as_deref(), Some(&at[..]));
    assert_eq!(db.get(b"at-ttl").unwrap().as_deref(), Some(&at[..]));
}

#[test]
fn batch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let value = vec![1u8; 4000];
    // Three 4000-byte puts plus framing are well under 16 KiB.
    let mut fits = Batch::new();
    for i in 0..3 {
        fits.put(format!("fit{i}"), &value);
    }
    db.write(fits).unwrap();

    // Five are 20000 bytes of values alone: over 16 KiB although each value is within its limit.
    let mut over = Batch::new();
    for i in 0..5 {
        over.put(format!("over{i}"), &value);
    }
    let err = assert_rejected(&db, dir.path(), "batch", |db| db.write(over));
    assert!(
        matches!(err, Error::TooLarge { max, .. } if max == BATCH_MAX as u64),
        "{err:?}"
    );

    // Many small deletes add up too.
    let mut deletes = Batch::new();
    for i in 0..2000 {
        deletes.delete(format!("d{i:05}"));
    }
    assert_rejected(&db, dir.path(), "batch", |db| db.write(deletes));

    for i in 0..5 {
        assert_eq!(
            db.get(format!("over{i}")).unwrap(),
            None,
            "nothing of the rejected batch applied"
        );
    }
    db.close().unwrap();
    let db = open(dir.path());
    for i in 0..3 {
        assert_eq!(db.get(format!("fit{i}")).unwrap().as_deref(), Some(&value[..]));
    }
    for i in 0..5 {
        assert_eq!(db.get(format!("over{i}")).unwrap(), None);
    }
}
