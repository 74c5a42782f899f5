//! Online backups (`Db::backup`), restores, and the statistics added with them.
//!
//! Scenario: writer threads write batches `{w<t>/<i> = v, w<t>/counter = i}` into a store with
//! 64 KiB segments and a 64 KiB checkpoint threshold (segments roll and background checkpoints
//! run throughout) while the main thread takes backups at seeded moments.
//! Method: the keys `w<t>/<i>` are written once, so in the source store, after the writers
//! stop, each key's entry carries the sequence number of its batch. A backup that claims the
//! state after sequence number `S` must hold exactly the batches numbered `S` or less.
//! Invariant: a backup equals the store's state at some sequence number (a prefix of the global
//! acknowledged order, each batch whole); it holds every write acknowledged before it started;
//! it is one snapshot and an empty log, and opens as a store that takes writes.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sessiondb::inspect::View;
use sessiondb::{Batch, Db, Error, SyncMode};
use support::{contents, seeded, small_options, snapshot_files, Rng, WAIT_DEADLINE};

const WRITERS: usize = 4;

fn key(t: usize, i: u64) -> Vec<u8> {
    format!("w{t}/{i:08}").into_bytes()
}

fn counter(t: usize) -> Vec<u8> {
    format!("w{t}/counter").into_bytes()
}

/// Sequence number of every entry, through the read-only view.
fn seqs(dir: &Path) -> BTreeMap<Vec<u8>, u64> {
    let view = View::open(dir).unwrap();
    view.entries(b"").map(|e| e.unwrap()).map(|e| (e.key, e.seq)).collect()
}

/// Progress of the writers, for the main thread to wait on without sleeping.
#[derive(Default)]
struct Progress {
    acked: Mutex<Vec<u64>>,
    cv: Condvar,
}

impl Progress {
    fn snapshot(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }

    /// Returns once the writers have acknowledged `total` batches; fails the test after
    /// [`WAIT_DEADLINE`].
    fn wait_for_total(&self, total: u64) {
        let acked = self.acked.lock().unwrap();
        let (acked, waited) = self
            .cv
            .wait_timeout_while(acked, WAIT_DEADLINE, |a| a.iter().sum::<u64>() < total)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "waited {WAIT_DEADLINE:?} for {total} acknowledged batches; the writers have {:?}",
            *acked
        );
    }
}

#[test]
fn backups_under_concurrent_writes_are_prefixes() {
    let (seed, _guard) = seeded("backups_under_concurrent_writes_are_prefixes");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let opts = small_options()
        .sync_mode(SyncMode::Never)
        .checkpoint_log_bytes(64 * 1024);
    let db = Arc::new(Db::open_with(&src, opts.clone()).unwrap());
    let progress = Arc::new(Progress {
        acked: Mutex::new(vec![0; WRITERS]),
        cv: Condvar::new(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (db, progress, stop) = (db.clone(), progress.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut b = Batch::new();
                    b.put(key(t, i), format!("v{i}")).put(counter(t), i.to_string());
                    db.write(b).unwrap();
                    i += 1;
                    progress.acked.lock().unwrap()[t] = i;
                    progress.cv.notify_all();
                }
            })
        })
        .collect();

    let mut backups = Vec::new();
    let mut target = 0;
    for n in 0..3 {
        target += rng.range(100, 1500);
        progress.wait_for_total(target);
        let before = progress.snapshot();
        let dest = tmp.path().join(format!("backup-{n}"));
        let report = db.backup(&dest).unwrap();
        let after = progress.snapshot();
        backups.push((dest, report, before, after));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let db = Arc::try_unwrap(db).unwrap();
    let final_acked = progress.snapshot();
    db.close().unwrap();

    let source = seqs(&src);
    for (dest, report, before, after) in &backups {
        let what = dest.display();
        assert_eq!(
            snapshot_files(dest).len(),
            usize::from(report.seq > 0),
            "{what}: one snapshot"
        );
        assert_eq!(fs::read_dir(dest.join("wal")).unwrap().count(), 0, "{what}: no log");
        assert!(!dest.join("LOCK").exists(), "{what}: no lock file");
        let backed_up = seqs(dest);
        let got = {
            let b = Db::open_with(dest, small_options()).unwrap();
            let c = contents(&b);
            assert_eq!(
                b.stats().last_seq,
                report.seq,
                "{what}: opens at the sequence it reports"
            );
            b.close().unwrap();
            c
        };
        for t in 0..WRITERS {
            // The state after sequence number S: exactly the batches numbered S or less.
            let n = (0..final_acked[t])
                .filter(|&i| source[&key(t, i)] <= report.seq)
                .count() as u64;
            for i in 0..final_acked[t] {
                let in_backup = got.contains_key(&key(t, i));
                assert_eq!(
                    in_backup,
                    i < n,
                    "{what}: writer {t} batch {i} (seq {})",
                    source[&key(t, i)]
                );
                if in_backup {
                    assert_eq!(backed_up[&key(t, i)], source[&key(t, i)], "{what}: same write");
                    assert_eq!(got[&key(t, i)], format!("v{i}").into_bytes());
                }
            }
            let want = n.checked_sub(1).map(|c| c.to_string().into_bytes());
            assert_eq!(got.get(&counter(t)).cloned(), want, "{what}: writer {t}: batches whole");
            assert!(
                n >= before[t],
                "{what}: writer {t}: {n} batches, {} acknowledged before",
                before[t]
            );
            assert!(
                n <= after[t] + 1,
                "{what}: writer {t}: {n} batches, {} acknowledged after",
                after[t]
            );
        }
        assert_eq!(report.keys, got.len() as u64, "{what}: report");
    }
}

#[test]
fn a_backup_opens_as_a_store_that_takes_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let db = Db::open_with(&src, small_options()).unwrap();
    let empty = tmp.path().join("empty");
    let r = db.backup(&empty).unwrap();
    assert_eq!((r.seq, r.keys), (0, 0));
    for i in 0..300u32 {
        db.put(format!("k{i:04}"), vec![b'x'; 500]).unwrap();
    }
    db.delete("k0001").unwrap();
    let dest = tmp.path().join("dest");
    let r = db.backup(&dest).unwrap();
    assert_eq!((r.seq, r.keys), (301, 299));
    assert_eq!(r.bytes, fs::metadata(&snapshot_files(&dest)[0]).unwrap().len());
    match db.backup(&dest) {
        Err(Error::InvalidPath { path, .. }) => assert_eq!(path, dest),
        other => panic!("a backup over an existing directory: {other:?}"),
    }
    // Issue 15: a destination whose parent does not exist failed with op "list".
    let orphan = tmp.path().join("no-such-parent").join("dest");
    match db.backup(&orphan) {
        Err(e @ Error::InvalidPath { .. }) => assert!(e.to_string().contains("parent directory does not exist"), "{e}"),
        other => panic!("a backup into a missing parent: {other:?}"),
    }
    let expected = contents(&db);
    db.close().unwrap();

    // A snapshot and no log: recovery starts a fresh log after the snapshot.
    let b = Db::open_with(&dest, small_options()).unwrap();
    assert_eq!(contents(&b), expected);
    b.put("after", "restore").unwrap();
    b.close().unwrap();
    let b = Db::open_with(&dest, small_options()).unwrap();
    assert_eq!(b.get("after").unwrap().as_deref(), Some(&b"restore"[..]));
    assert_eq!(b.stats().keys, 300);
    b.close().unwrap();
    let e = Db::open_with(&empty, small_options()).unwrap();
    assert_eq!(e.stats().keys, 0);
    e.close().unwrap();
}

#[test]
fn restore_copies_an_intact_backup_and_refuses_a_damaged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let db = Db::open_with(&src, small_options()).unwrap();
    for i in 0..200u32 {
        db.put(format!("k{i:04}"), format!("value {i}")).unwrap();
    }
    let backup = tmp.path().join("backup");
    db.backup(&backup).unwrap();
    let expected = contents(&db);
    db.close().unwrap();

    let restored = tmp.path().join("restored");
    fs::create_dir(&restored).unwrap();
    let r = sessiondb::restore(&backup, &restored).unwrap();
    assert_eq!((r.keys, r.seq), (200, 200));
    let db = Db::open_with(&restored, small_options()).unwrap();
    assert_eq!(contents(&db), expected);
    db.close().unwrap();
    assert!(matches!(
        sessiondb::restore(&backup, &restored),
        Err(Error::InvalidPath { .. })
    ));

    let snap = snapshot_files(&backup).pop().unwrap();
    support::flip_byte(&snap, 100);
    match sessiondb::restore(&backup, tmp.path().join("from-damaged")) {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, snap),
        other => panic!("restoring a damaged backup: {other:?}"),
    }
    assert!(!tmp.path().join("from-damaged").exists());
}

#[test]
fn stats_measure_fsyncs_checkpoints_and_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open_with(tmp.path(), small_options().sync_mode(SyncMode::Always)).unwrap();
    for i in 0..50u32 {
        db.put(format!("k{i}"), "v").unwrap();
    }
    let s = db.stats();
    assert!(
        s.fsync_latency.count >= 50,
        "one fsync per commit group: {:?}",
        s.fsync_latency
    );
    assert_eq!(s.fsync_latency.buckets.iter().sum::<u64>(), s.fsync_latency.count);
    assert!(s.fsync_latency.max > std::time::Duration::ZERO);
    assert!(s.fsync_latency.quantile(0.99).unwrap() <= s.fsync_latency.max);
    assert_eq!(s.checkpoint_bytes_total, 0);
    assert_eq!(s.expired_swept, 0);
    db.checkpoint().unwrap();
    let s = db.stats();
    let snap = snapshot_files(tmp.path()).pop().unwrap();
    assert_eq!(s.checkpoint_bytes_last, fs::metadata(&snap).unwrap().len());
    assert_eq!(s.checkpoint_bytes_total, s.checkpoint_bytes_last);
    assert!(s.checkpoint_duration_last > std::time::Duration::ZERO);
    assert_eq!(s.checkpoint_duration_total, s.checkpoint_duration_last);
    db.close().unwrap();
    let db = Db::open_with(tmp.path(), small_options()).unwrap();
    assert!(db.stats().recovery.duration > std::time::Duration::ZERO);
    db.close().unwrap();
}
