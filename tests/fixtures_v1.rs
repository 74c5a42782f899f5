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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiondb::internals::format::decode_preamble_version;
use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::session::{SessionId, SessionStore};
use sessiondb::storage::{OpenMode, Storage};
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

// ---------------------------------------------------------------------------------------------
// The upgrade path (docs/format.md, "Changing the format"): a store of format version 1 is read
// as it is, new segments are written as version 2, and a checkpoint rewrites every live value
// into a version 2 snapshot, after which the version 1 files go.

/// Every file of `shape` copied onto `sim` under `to`, durable (as if the store had been there
/// all along).
fn import(sim: &SimStorage, from: &Path, to: &Path) {
    sim.create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            import(sim, &entry.path(), &dst);
        } else {
            let bytes = fs::read(entry.path()).unwrap();
            let f = sim.open(&dst, OpenMode::CreateNew).unwrap();
            let mut at = 0;
            while at < bytes.len() {
                at += f.write_at(&bytes[at..], at as u64).unwrap();
            }
            f.sync_all().unwrap();
        }
    }
    sim.sync_dir(to).unwrap();
}

/// The format versions of the store's segments and snapshots on `sim` (a segment never
/// activated has none).
fn versions_on(sim: &SimStorage) -> BTreeSet<u32> {
    sim.files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal" || e == "snap"))
        .filter_map(|p| decode_preamble_version(&sim.read_file(&p).unwrap()))
        .collect()
}

/// A manifest's entries: hex key → the whole line.
fn manifest_lines(shape: &str) -> BTreeMap<String, String> {
    let manifest = fs::read_to_string(fixtures().join(format!("{shape}.manifest"))).unwrap();
    manifest
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| (l.split(' ').next().unwrap().to_string(), l.to_string()))
        .collect()
}

/// What the upgrade workload does after opening a version 1 store.
#[derive(Clone, Debug)]
enum Step {
    Put(String, Vec<u8>),
    Delete(String),
    Checkpoint,
}

/// Writes, a checkpoint (the upgrade), more writes, a second checkpoint. `victims` are keys of
/// the fixture the workload deletes or overwrites.
fn upgrade_steps(victims: &[String]) -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..6 {
        steps.push(Step::Put(format!("upgrade-{i}"), value(5000 + i)));
    }
    steps.push(Step::Delete(victims[0].clone()));
    steps.push(Step::Put(victims[1].clone(), value(6000)));
    steps.push(Step::Checkpoint);
    for i in 0..4 {
        steps.push(Step::Put(format!("after-{i}"), value(7000 + i)));
    }
    steps.push(Step::Delete(victims[2].clone()));
    steps.push(Step::Checkpoint);
    steps
}

/// The steps acknowledged before one failed.
fn run_steps(db: &Db, steps: &[Step]) -> usize {
    steps
        .iter()
        .take_while(|s| match s {
            Step::Put(k, v) => db.put(k, v).is_ok(),
            Step::Delete(k) => db.delete(k).is_ok(),
            Step::Checkpoint => db.checkpoint().is_ok(),
        })
        .count()
}

/// Hex key → hex value of the fixture after the first `k` steps.
fn model_after(lines: &BTreeMap<String, String>, steps: &[Step], k: usize) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = lines
        .iter()
        .map(|(key, line)| (key.clone(), line.rsplit(' ').next().unwrap().to_string()))
        .collect();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for s in &steps[..k] {
        match s {
            Step::Put(key, v) => {
                m.insert(hexed(key), hex(v));
            }
            Step::Delete(key) => {
                m.remove(&hexed(key));
            }
            Step::Checkpoint => {}
        }
    }
    m
}

/// Opens the store on `sim` and checks it holds the model after some k in `acked..=issued`
/// steps, the fixture's untouched entries with their versions and deadlines; returns k.
fn check_upgraded(sim: &SimStorage, shape: &str, steps: &[Step], (acked, issued): (usize, usize), what: &str) -> usize {
    let lines = manifest_lines(shape);
    let clock = ManualClock::new(OPENED_AT_MS);
    let db = Db::open_with(DIR, options(&clock).sim(sim)).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let got: BTreeMap<String, String> = contents(&db)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), l.to_string())
        })
        .collect();
    let values: BTreeMap<String, String> = got
        .iter()
        .map(|(k, l)| (k.clone(), l.rsplit(' ').next().unwrap().to_string()))
        .collect();
    let k = (acked..=issued.min(steps.len()))
        .find(|&k| model_after(&lines, steps, k) == values)
        .unwrap_or_else(|| panic!("{what}: holds the model after no k in {acked}..={issued} steps"));
    let touched: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Put(key, _) | Step::Delete(key) => Some(hexed(key)),
            Step::Checkpoint => None,
        })
        .collect();
    for (key, line) in lines.iter().filter(|(key, _)| !touched.contains(*key)) {
        assert_eq!(
            got.get(key),
            Some(line),
            "{what}: an untouched entry keeps its version and deadline"
        );
    }
    k
}

/// The store's directory on the simulated storage.
const DIR: &str = "/upgrade";

/// After the first checkpoint, every file of a version 1 store is of version 2, and it still
/// reads what it held; the store never appended version 2 records to a version 1 segment.
#[test]
fn a_checkpoint_makes_every_v1_fixture_version_2() {
    for shape in SHAPES {
        let sim = SimStorage::new(1);
        import(&sim, &fixtures().join(shape), Path::new(DIR));
        assert_eq!(versions_on(&sim), BTreeSet::from([1]), "{shape}: a version 1 store");
        let lines = manifest_lines(shape);
        let victims: Vec<String> = lines.keys().take(3).map(|h| unhex(h)).collect();
        let steps = upgrade_steps(&victims);
        let clock = ManualClock::new(OPENED_AT_MS);
        let db = Db::open_with(DIR, options(&clock).sim(&sim)).unwrap();
        let first_checkpoint = steps.iter().position(|s| matches!(s, Step::Checkpoint)).unwrap();
        assert_eq!(run_steps(&db, &steps[..first_checkpoint]), first_checkpoint);
        assert_eq!(
            versions_on(&sim),
            BTreeSet::from([1, 2]),
            "{shape}: new writes went into a version 2 segment"
        );
        assert_eq!(
            run_steps(&db, &steps[first_checkpoint..]),
            steps.len() - first_checkpoint
        );
        assert_eq!(
            versions_on(&sim),
            BTreeSet::from([2]),
            "{shape}: all version 2 after the checkpoint"
        );
        drop(db);
        check_upgraded(&sim, shape, &steps, (steps.len(), steps.len()), shape);
    }
}

/// The upgrade is crash-safe at every step: the machine halts at every storage operation of
/// opening a version 1 store, writing to it, checkpointing it (the upgrade), writing and
/// checkpointing again, then loses power (unsynced writes dropped, or torn at 512-byte
/// sectors). Every reopened store holds the fixture plus a prefix of the steps with every
/// acknowledged one, the fixture's untouched entries keep their versions and deadlines, and a
/// second open and a checkpoint of it agree.
#[test]
fn the_upgrade_is_crash_safe_at_every_storage_operation() {
    let (seed, _guard) = support::seeded("the_upgrade_is_crash_safe_at_every_storage_operation");
    let modes = [CrashMode::DropUnsynced, CrashMode::Torn { sector: 512 }];
    let mut figures = Vec::new();
    for shape in ["ttl_touch_sessions", "torn_tail", "snapshot_and_log"] {
        let lines = manifest_lines(shape);
        let victims: Vec<String> = lines.keys().skip(2).step_by(5).take(3).map(|h| unhex(h)).collect();
        let steps = upgrade_steps(&victims);
        let clock = ManualClock::new(OPENED_AT_MS);
        let sim = SimStorage::new(seed);
        import(&sim, &fixtures().join(shape), Path::new(DIR));
        let start = sim.ops();
        let db = Db::open_with(DIR, options(&clock).sim(&sim)).unwrap();
        assert_eq!(run_steps(&db, &steps), steps.len());
        drop(db);
        let total = sim.ops();
        let (mut points, mut open_failed) = (0u64, 0u64);
        let (mut all_v1, mut mixed, mut all_v2) = (0u64, 0u64, 0u64);
        for n in start..=total {
            for (m, mode) in modes.iter().enumerate() {
                let what = format!("{shape}: halt after op {n}, {mode:?}");
                let sim = SimStorage::new(seed ^ (n << 8) ^ m as u64);
                import(&sim, &fixtures().join(shape), Path::new(DIR));
                sim.halt_after(Some(n));
                let acked = match Db::open_with(DIR, options(&clock).sim(&sim)) {
                    Ok(db) => {
                        let acked = run_steps(&db, &steps);
                        sim.crash(*mode);
                        drop(db);
                        acked
                    }
                    Err(_) => {
                        open_failed += 1;
                        sim.crash(*mode);
                        0
                    }
                };
                let issued = acked + 1;
                let k = check_upgraded(&sim, shape, &steps, (acked, issued), &what);
                let versions = versions_on(&sim);
                all_v1 += u64::from(versions == BTreeSet::from([1]));
                mixed += u64::from(versions.len() > 1);
                all_v2 += u64::from(versions == BTreeSet::from([2]));
                // The store goes on: a checkpoint of it, then another open, hold the same.
                let db = Db::open_with(DIR, options(&clock).sim(&sim)).unwrap();
                db.checkpoint()
                    .unwrap_or_else(|e| panic!("{what}: checkpoint after the crash: {e}"));
                drop(db);
                assert_eq!(
                    versions_on(&sim),
                    BTreeSet::from([2]),
                    "{what}: all version 2 after a checkpoint: {:?}",
                    sim.files()
                );
                check_upgraded(&sim, shape, &steps, (k, k), &format!("{what}, checkpointed"));
                points += 1;
            }
        }
        figures.push(format!(
            "{shape}: {points} crash points over {} storage ops ({open_failed} during the open); \
             reopened all v1: {all_v1}, mixed v1/v2: {mixed}, all v2: {all_v2}",
            total - start
        ));
        assert!(
            all_v1 > 0 && mixed > 0 && all_v2 > 0,
            "{shape}: crashes before, during and after the upgrade"
        );
    }
    for f in figures {
        println!("{f}");
    }
}

fn unhex(h: &str) -> String {
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).expect("the fixtures' keys are text")
}
