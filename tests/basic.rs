//! The public API on real files, one call at a time.
//!
//! Scenario: a fresh store in a temp dir; puts, deletes, overwrites, batches, scans, reopen,
//! checkpoints, segment rolls, concurrent writers and option validation.
//! Method: each test drives the public `Db` API and compares what it reads back with what it
//! wrote, before and after a close and reopen.
//! Invariant: what a read returns is exactly the last acknowledged write per key, scans are in
//! ascending key order within their bounds, and closing and reopening changes nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use sessiondb::{Batch, Db, Error, Options, SyncMode};
use support::{contents, segment_files, small_options, snapshot_files};

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Db>();
};

fn open(dir: &std::path::Path) -> Db {
    Db::open_with(dir, small_options()).expect("open")
}

fn scan(iter: impl Iterator<Item = sessiondb::Result<(Vec<u8>, Vec<u8>)>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.map(|r| r.expect("scan item")).collect()
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn put_get_delete_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert_eq!(db.get(b"a").unwrap(), None);
    db.put(b"a", b"1").unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    db.put(b"a", b"2").unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    db.put(b"b", b"").unwrap();
    assert_eq!(
        db.get(b"b").unwrap().as_deref(),
        Some(&b""[..]),
        "an empty value is a value"
    );
    db.delete(b"a").unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    db.delete(b"never-written").unwrap();
    assert_eq!(db.get(b"never-written").unwrap(), None);
    db.close().unwrap();

    let db = open(dir.path());
    assert_eq!(db.get(b"a").unwrap(), None, "delete survives reopen");
    assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(db.stats().keys, 1);
}

#[test]
fn empty_key_is_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.put(b"", b"empty").unwrap();
    db.put(b"x", b"x").unwrap();
    assert_eq!(db.get(b"").unwrap().as_deref(), Some(&b"empty"[..]));
    assert_eq!(scan(db.scan_prefix(b"")), vec![kv("", "empty"), kv("x", "x")]);
    db.close().unwrap();
    let db = open(dir.path());
    assert_eq!(db.get(b"").unwrap().as_deref(), Some(&b"empty"[..]));
    db.delete(b"").unwrap();
    assert_eq!(db.get(b"").unwrap(), None);
    assert_eq!(db.get(b"x").unwrap().as_deref(), Some(&b"x"[..]));
}

#[test]
fn batch_applies_all_ops_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.put(b"gone", b"old").unwrap();
    let mut batch = Batch::new();
    batch
        .put(b"a", b"1")
        .put(b"b", b"2")
        .delete(b"gone")
        .put(b"a", b"3")
        .put(b"c", b"tmp")
        .delete(b"c");
    assert_eq!(batch.len(), 6);
    db.write(batch).unwrap();
    let expect: BTreeMap<Vec<u8>, Vec<u8>> = [kv("a", "3"), kv("b", "2")].into_iter().collect();
    assert_eq!(contents(&db), expect, "later ops on the same key win");
    db.close().unwrap();
    let db = open(dir.path());
    assert_eq!(contents(&db), expect, "the batch survives reopen whole");
}

#[test]
fn scan_prefix_is_ordered_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for k in ["b", "ab", "a", "abc", "b\x00", "aa", "ac", "a\u{7f}", "c"] {
        db.put(k, format!("v-{k}")).unwrap();
    }
    let got = scan(db.scan_prefix(b"a"));
    let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        keys,
        vec![&b"a"[..], b"aa", b"ab", b"abc", b"ac", b"a\x7f"],
        "ascending, only keys starting with the prefix"
    );
    for (k, v) in &got {
        assert_eq!(v, &[b"v-".as_slice(), k].concat());
    }
    assert_eq!(scan(db.scan_prefix(b"ab")), vec![kv("ab", "v-ab"), kv("abc", "v-abc")]);
    assert_eq!(scan(db.scan_prefix(b"b")), vec![kv("b", "v-b"), kv("b\x00", "v-b\x00")]);
    assert!(scan(db.scan_prefix(b"zz")).is_empty());
    assert_eq!(scan(db.scan_prefix(b"")).len(), 9);
}

#[test]
fn range_respects_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for k in ["a", "b", "c", "d", "e"] {
        db.put(k, k).unwrap();
    }
    let keys =
        |v: Vec<(Vec<u8>, Vec<u8>)>| -> String { v.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect() };
    assert_eq!(keys(scan(db.range(b"b".to_vec()..b"d".to_vec()))), "bc");
    assert_eq!(keys(scan(db.range(b"b".to_vec()..=b"d".to_vec()))), "bcd");
    assert_eq!(keys(scan(db.range(b"c".to_vec()..))), "cde");
    assert_eq!(keys(scan(db.range(..b"c".to_vec()))), "ab");
    assert_eq!(keys(scan(db.range(..=b"c".to_vec()))), "abc");
    assert_eq!(keys(scan(db.range::<&[u8], _>(..))), "abcde");
    assert_eq!(keys(scan(db.range(b"bb".to_vec()..b"dd".to_vec()))), "cd");
    assert_eq!(keys(scan(db.range(b"x".to_vec()..))), "");
    assert_eq!(
        keys(scan(db.range(b"c".to_vec()..b"c".to_vec()))),
        "",
        "an empty range is empty"
    );
    db.delete(b"c").unwrap();
    assert_eq!(
        keys(scan(db.range(b"b".to_vec()..=b"d".to_vec()))),
        "bd",
        "deleted keys are skipped"
    );
}

#[test]
fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut expect = BTreeMap::new();
    {
        let db = open(dir.path());
        for i in 0..200u32 {
            let (k, v) = (format!("key{:03}", i % 70), format!("value-{i}"));
            db.put(&k, &v).unwrap();
            expect.insert(k.into_bytes(), v.into_bytes());
        }
        db.close().unwrap();
    }
    {
        // Drop, not close: also closes.
        let db = open(dir.path());
        assert_eq!(contents(&db), expect);
        db.put(b"dropped", b"yes").unwrap();
        expect.insert(b"dropped".to_vec(), b"yes".to_vec());
    }
    let db = open(dir.path());
    assert_eq!(contents(&db), expect);
    assert_eq!(db.stats().keys, expect.len() as u64);
}

#[test]
fn checkpoint_then_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut expect = BTreeMap::new();
    {
        let db = Db::open_with(dir.path(), small_options().auto_checkpoint(false)).unwrap();
        for i in 0..100u32 {
            let (k, v) = (format!("k{:02}", i % 40), format!("v{i}"));
            db.put(&k, &v).unwrap();
            expect.insert(k.into_bytes(), v.into_bytes());
        }
        db.delete(b"k00").unwrap();
        expect.remove(&b"k00"[..]);
        db.checkpoint().unwrap();
        let stats = db.stats();
        assert!(stats.snapshots >= 1, "a snapshot after checkpoint: {stats:?}");
        assert!(stats.checkpoints >= 1, "{stats:?}");
        assert_eq!(
            stats.last_checkpoint_seq, stats.last_seq,
            "nothing written after it: {stats:?}"
        );
        assert!(!snapshot_files(dir.path()).is_empty(), "a .snap file on disk");
        db.put(b"after", b"checkpoint").unwrap();
        expect.insert(b"after".to_vec(), b"checkpoint".to_vec());
        db.close().unwrap();
    }
    let db = Db::open_with(dir.path(), small_options().auto_checkpoint(false)).unwrap();
    let stats = db.stats();
    assert!(stats.snapshots >= 1, "{stats:?}");
    assert!(
        stats.recovery.snapshot_seq.is_some(),
        "recovery loaded the snapshot: {stats:?}"
    );
    assert_eq!(stats.recovery.snapshot_entries, 39, "{stats:?}");
    assert!(
        stats.recovery.records_replayed >= 1,
        "the put after the checkpoint came from the log"
    );
    assert_eq!(contents(&db), expect);
}

#[test]
fn segments_roll_and_checkpoint_deletes_covered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || small_options().auto_checkpoint(false).preallocate_ahead(false);
    let db = Db::open_with(dir.path(), opts()).unwrap();
    let first = db.stats().segments;
    let value = vec![b'v'; 1000];
    for i in 0..300u32 {
        db.put(format!("k{:03}", i % 50), &value).unwrap();
    }
    let rolled = db.stats();
    assert!(
        rolled.segments >= first + 3,
        "300 KB of log in 64 KiB segments rolls: {first} -> {}",
        rolled.segments
    );
    assert!(segment_files(dir.path()).len() as u64 >= 4);
    db.checkpoint().unwrap();
    let after = db.stats();
    assert!(
        after.segments < rolled.segments,
        "checkpoint deletes covered segments: {} -> {}",
        rolled.segments,
        after.segments
    );
    assert!(segment_files(dir.path()).len() < 4, "{:?}", segment_files(dir.path()));
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts()).unwrap();
    assert_eq!(db.stats().keys, 50);
    for i in 0..50u32 {
        assert_eq!(db.get(format!("k{i:03}")).unwrap().as_deref(), Some(&value[..]));
    }
}

#[test]
fn options_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (
            "segment below 64 KiB",
            Options::new()
                .segment_size(1024)
                .value_size_max(100)
                .batch_size_max(200),
        ),
        (
            "segment too small for the default 1 MiB value",
            Options::new().segment_size(64 * 1024),
        ),
        ("zero checkpoint threshold", Options::new().checkpoint_log_bytes(0)),
        // Issue 15: both were accepted, and then every value or every batch was refused.
        ("zero value_size_max", small_options().value_size_max(0)),
        ("zero batch_size_max", small_options().batch_size_max(0)),
        (
            "batch_size_max below the smallest batch",
            small_options().batch_size_max(8),
        ),
    ];
    for (what, opts) in bad {
        match Db::open_with(dir.path(), opts) {
            Err(Error::InvalidOptions(msg)) => assert!(!msg.is_empty(), "{what}"),
            Err(e) => panic!("{what}: expected InvalidOptions, got {e:?}"),
            Ok(_) => panic!("{what}: expected InvalidOptions, the store opened"),
        }
    }
    // The same directory opens fine with valid options afterwards.
    Db::open_with(dir.path(), small_options()).unwrap().close().unwrap();
}

#[test]
fn concurrent_writers_all_visible() {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open_with(dir.path(), small_options().sync_mode(SyncMode::Always)).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = Arc::clone(&db);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    db.put(format!("t{t}-{i:04}"), format!("{t}:{i}")).unwrap();
                    if i % 10 == 9 {
                        db.delete(format!("t{t}-{:04}", i - 1)).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let check = |db: &Db| {
        for t in 0..THREADS {
            for i in 0..PER_THREAD {
                let got = db.get(format!("t{t}-{i:04}")).unwrap();
                if i % 10 == 8 {
                    assert_eq!(got, None, "t{t}-{i} was deleted");
                } else {
                    assert_eq!(got, Some(format!("{t}:{i}").into_bytes()), "t{t}-{i}");
                }
            }
        }
    };
    check(&db);
    let stats = db.stats();
    let writes = u64::from(THREADS * PER_THREAD + THREADS * PER_THREAD / 10);
    assert_eq!(stats.records, writes, "one record per put/delete: {stats:?}");
    assert!(stats.fsyncs > 0, "SyncMode::Always fsyncs: {stats:?}");
    assert!(
        stats.commit_groups >= 1 && stats.commit_groups <= stats.records,
        "{stats:?}"
    );
    assert!(stats.commit_group_size_max >= 1, "{stats:?}");
    assert_eq!(
        stats.commit_group_sizes.iter().sum::<u64>(),
        stats.commit_groups,
        "every group lands in one bucket: {stats:?}"
    );
    assert_eq!(stats.keys, u64::from(THREADS * PER_THREAD - THREADS * PER_THREAD / 10));
    Arc::try_unwrap(db).expect("all threads joined").close().unwrap();
    let db = open(dir.path());
    check(&db);
}

#[test]
fn stats_count_fsyncs_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), small_options().sync_mode(SyncMode::Always)).unwrap();
    let before = db.stats();
    for i in 0..10u32 {
        db.put(format!("k{i}"), b"v").unwrap();
    }
    let after = db.stats();
    assert_eq!(after.records - before.records, 10, "{after:?}");
    assert!(
        after.fsyncs - before.fsyncs >= 10,
        "one thread, SyncMode::Always: every put waits for its own fsync: {after:?}"
    );
    assert_eq!(
        after.commit_groups - before.commit_groups,
        10,
        "a lone writer is a group of one: {after:?}"
    );
    assert!(after.last_seq >= before.last_seq + 10, "{after:?}");
    assert!(after.log_bytes_since_checkpoint > before.log_bytes_since_checkpoint);
}
