//! Stores written by format version 1, kept forever (issue 14): `tests/fixtures/v1/<shape>/` is a
//! store exactly as the version-1 engine left it on disk (commit e101fb5 generated them), and
//! `<shape>.manifest` is what it holds: every live key with its value, version and deadline when
//! opened at the manifest's clock. Whatever the format becomes, each must open and read exactly
//! that, and go on taking writes.
//!
//! Shapes: `log_only` (puts, deletes, batches over several 64 KiB segments, no snapshot);
//! `snapshot_and_log` (a checkpoint, then overwrites and deletes after it); `ttl_touch_sessions`
//! (TTLs expired and live at the manifest's clock, touches, sessions made, changed, touched and
//! destroyed, a checkpoint between); `torn_tail` (a log whose last write was torn: garbage after
//! the last record, cut at open).
//!
//! `generate_v1_fixtures` (ignored) wrote them; run it only with the version-1 engine, into an
//! empty directory: `SESSIONDB_FIXTURES_OUT=DIR cargo test --test fixtures_v1 -- --ignored`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiondb::session::{SessionId, SessionStore};
use sessiondb::{Batch, Db, ManualClock, Options};

mod support;
use support::OptionsExt;

/// The clock when the fixtures were written.
const WRITTEN_AT_MS: u64 = 1_700_000_000_000;
/// The clock the manifests hold for: some TTLs have run out by then, others not.
const OPENED_AT_MS: u64 = WRITTEN_AT_MS + 3_600_000;

const SHAPES: [&str; 4] = ["log_only", "snapshot_and_log", "ttl_touch_sessions", "torn_tail"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn options(clock: &ManualClock) -> Options {
    support::small_options().quiet().manual_clock(clock)
}

fn value(i: usize) -> Vec<u8> {
    let len = 20 + (i * 97) % 1500;
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn log_ops(db: &Db, rounds: usize) {
    for i in 0..rounds {
        let key = format!("key-{:03}", i % 40);
        match i % 10 {
            3 => db.delete(&key).unwrap(),
            7 => {
                let mut b = Batch::new();
                b.put(&key, value(i))
                    .put(format!("batch-{i}"), value(i + 1))
                    .delete(format!("key-{:03}", (i + 3) % 40));
                db.write(b).unwrap();
            }
            _ => db.put(&key, value(i)).unwrap(),
        }
    }
}

fn write_shape(shape: &str, dir: &Path) {
    let clock = ManualClock::new(WRITTEN_AT_MS);
    let db = Db::open_with(dir, options(&clock)).unwrap();
    match shape {
        "log_only" => log_ops(&db, 300),
        "snapshot_and_log" => {
            log_ops(&db, 250);
            db.checkpoint().unwrap();
            for i in 0..100 {
                let key = format!("key-{:03}", (i * 7) % 40);
                if i % 4 == 0 {
                    db.delete(&key).unwrap();
                } else {
                    db.put(&key, value(1000 + i)).unwrap();
                }
            }
        }
        "ttl_touch_sessions" => {
            let hour = Duration::from_secs(3600);
            for i in 0..60 {
                let ttl = Duration::from_secs(60 * (1 + i as u64 % 120));
                db.put_with_ttl(format!("ttl-{i:02}"), value(i), ttl).unwrap();
            }
            for i in (0..60).step_by(3) {
                db.touch(format!("ttl-{i:02}"), 2 * hour).unwrap();
            }
            let sessions = SessionStore::new(db);
            let id = |n: u8| SessionId::from_bytes([n; 16]);
            for n in 1..=20u8 {
                assert!(sessions
                    .create_with_id(&id(n), &value(n as usize), hour / 2 + hour * (n as u32 % 3))
                    .unwrap());
            }
            sessions.db().checkpoint().unwrap();
            for n in 1..=20u8 {
                match n % 4 {
                    0 => assert!(sessions.destroy(&id(n)).unwrap()),
                    1 => {
                        sessions.set(&id(n), b"changed after the checkpoint", 3 * hour).unwrap();
                    }
                    2 => assert!(sessions.touch(&id(n), 4 * hour).unwrap()),
                    _ => {}
                }
            }
            for i in 0..5 {
                sessions.create_for_user(b"user-7", &value(i), 2 * hour).unwrap();
            }
            sessions.db().delete("ttl-05").unwrap();
            let mut b = Batch::new();
            b.put_with_ttl("batch-ttl", b"in a batch", hour * 5)
                .touch("ttl-10", hour * 6)
                .delete("ttl-11");
            sessions.db().write(b).unwrap();
            return drop(sessions);
        }
        "torn_tail" => log_ops(&db, 200),
        _ => unreachable!(),
    }
    db.close().unwrap();
    if shape == "torn_tail" {
        tear_the_last_write(dir);
    }
}

/// Garbage where the next record would go, as a torn write leaves it (not a record).
fn tear_the_last_write(dir: &Path) {
    let (seg, _) = support::segments_with_records(dir)
        .into_iter()
        .rfind(|(_, records)| !records.is_empty())
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    for (k, b) in bytes[end..end + 700].iter_mut().enumerate() {
        *b = (k * 13 + 5) as u8 | 1;
    }
    fs::write(&seg, bytes).unwrap();
}

/// Every live key with its version, deadline and value, one line each, in key order.
fn contents(db: &Db) -> String {
    let mut out = String::new();
    for item in db.range::<&[u8], _>(..) {
        let (key, _) = item.unwrap();
        let v = db.get_versioned(&key).unwrap().unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let deadline = v.expires_at_ms.map_or("-".to_string(), |d| d.to_string());
        writeln!(out, "{} {} {} {}", hex(&key), v.version, deadline, hex(&v.value)).unwrap();
    }
    out
}

/// Opens a copy of the fixture (an open may cut a torn tail or remove files: never in place).
fn open_copy(shape: &str, opts: impl Fn(&ManualClock) -> Options) -> (tempfile::TempDir, Db) {
    let tmp = tempfile::tempdir().unwrap();
    support::copy_dir(&fixtures().join(shape), tmp.path());
    let clock = ManualClock::new(OPENED_AT_MS);
    let db = Db::open_with(tmp.path(), opts(&clock)).unwrap_or_else(|e| panic!("{shape}: open: {e}"));
    (tmp, db)
}

#[test]
#[ignore = "writes the version-1 fixtures; run only with the version-1 engine"]
fn generate_v1_fixtures() {
    let out = PathBuf::from(std::env::var("SESSIONDB_FIXTURES_OUT").expect("SESSIONDB_FIXTURES_OUT=DIR"));
    for shape in SHAPES {
        let dir = out.join(shape);
        assert!(!dir.exists(), "{} exists: fixtures are never rewritten", dir.display());
        write_shape(shape, &dir);
        let tmp = tempfile::tempdir().unwrap();
        support::copy_dir(&dir, tmp.path());
        let clock = ManualClock::new(OPENED_AT_MS);
        let db = Db::open_with(tmp.path(), options(&clock)).unwrap();
        let manifest = format!(
            "# key version deadline value (hex), at {OPENED_AT_MS} ms\n{}",
            contents(&db)
        );
        fs::write(out.join(format!("{shape}.manifest")), manifest).unwrap();
    }
}

/// Every fixture opens, with its options and with the defaults, and reads exactly its manifest;
/// then takes a write and reads it back after another open.
#[test]
fn every_v1_fixture_opens_and_reads_what_it_held() {
    for shape in SHAPES {
        let manifest = fs::read_to_string(fixtures().join(format!("{shape}.manifest")))
            .unwrap_or_else(|e| panic!("{shape}: manifest: {e}"));
        let expected: String = manifest
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(expected.lines().count() > 10, "{shape}: a manifest with entries");
        let defaults = |clock: &ManualClock| Options::new().clock(std::sync::Arc::new(clock.clone()));
        for (what, opts) in [
            ("its options", &options as &dyn Fn(&ManualClock) -> Options),
            ("defaults", &defaults),
        ] {
            let (tmp, db) = open_copy(shape, opts);
            assert_eq!(contents(&db), expected, "{shape} with {what}: reads what it held");
            db.put("written-after", b"by a later version").unwrap();
            db.close().unwrap();
            let clock = ManualClock::new(OPENED_AT_MS);
            let db = Db::open_with(tmp.path(), opts(&clock)).unwrap();
            assert_eq!(
                db.get("written-after").unwrap().as_deref(),
                Some(&b"by a later version"[..])
            );
            assert_eq!(
                contents(&db)
                    .lines()
                    .filter(|l| !l.starts_with(&hexed("written-after")))
                    .count(),
                expected.lines().count(),
                "{shape} with {what}: after a write"
            );
        }
    }
}

fn hexed(s: &str) -> String {
    s.bytes().map(|x| format!("{x:02x}")).collect()
}
