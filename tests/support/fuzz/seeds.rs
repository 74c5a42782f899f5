//! The seed corpora: files the engine itself writes (`generate_seeds` in
//! `tests/fuzz_regressions.rs` calls [`generate`]), and stores derived from the format version 1
//! fixtures in `tests/fixtures/v1/` (`generate_v1_fixture_seeds` calls [`generate_from_v1`]).

use std::path::Path;
use std::time::Duration;

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Batch, Db, ManualClock};

use super::super::{small_options, OptionsExt};
use super::recovery_image::{encode_image, install};

const DIR: &str = "/store";

/// `n` writes of every kind over 16 keys: puts (some with a TTL), deletes, batches, touches.
fn workload(db: &Db, clock: &ManualClock, from: usize, n: usize) {
    for i in from..from + n {
        let key = format!("key{:02}", i * 7 % 16);
        let value = format!("value-{i:04}-").repeat(1 + i % 9);
        let r = match i % 8 {
            0..=2 => db.put(&key, &value),
            3 => db.put_with_ttl(&key, &value, Duration::from_secs(60)),
            4 => db.delete(&key),
            5 => {
                let mut b = Batch::new();
                b.put(&key, &value)
                    .delete(format!("key{:02}", (i + 3) % 16))
                    .put("batch", &value);
                db.write(b)
            }
            6 => db.touch(&key, Duration::from_secs(120)).map(|_| ()),
            _ => {
                clock.advance(Duration::from_secs(1));
                db.put(&key, value.as_bytes())
            }
        };
        r.unwrap_or_else(|e| panic!("seed workload write {i}: {e}"));
    }
}

/// Every file in the simulator under the store, by its name relative to the store.
fn image(sim: &SimStorage) -> Vec<(String, Vec<u8>)> {
    sim.files()
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(DIR).ok()?.to_str()?.to_string();
            if rel == "LOCK" {
                return None;
            }
            Some((rel, sim.read_file(&p).ok()?))
        })
        .collect()
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the seed directory");
    std::fs::write(d.join(name), bytes).expect("write a seed");
}

/// Writes every corpus under `dir` (`fuzz/seeds`).
pub fn generate(dir: &Path) {
    // A closed store: segments rolled, no snapshot.
    let (sim, clock) = (SimStorage::new(1), ManualClock::new(1_700_000_000_000));
    let db = Db::open_with(DIR, small_options().quiet().sim(&sim).manual_clock(&clock)).expect("open");
    workload(&db, &clock, 0, 160);
    db.close().expect("close");
    let plain = image(&sim);
    write(dir, "recovery_image", "log-only.img", &encode_image(&plain));

    // A checkpoint, then more writes: a snapshot and the log after it.
    let db = Db::open_with(DIR, small_options().quiet().sim(&sim).manual_clock(&clock)).expect("open");
    db.checkpoint().expect("checkpoint");
    workload(&db, &clock, 160, 40);
    db.close().expect("close");
    let checkpointed = image(&sim);
    write(
        dir,
        "recovery_image",
        "snapshot-and-log.img",
        &encode_image(&checkpointed),
    );

    // Power losses inside a checkpoint: halted after each of several storage operations.
    let (sim0, clock0) = (SimStorage::new(2), ManualClock::new(1_700_000_000_000));
    let db = Db::open_with(DIR, small_options().quiet().sim(&sim0).manual_clock(&clock0)).expect("open");
    workload(&db, &clock0, 0, 60);
    let before = sim0.ops();
    db.checkpoint().expect("checkpoint");
    let ops = sim0.ops() - before;
    drop(db);
    for (i, at) in [1, ops / 4, ops / 2, ops * 3 / 4, ops - 1].into_iter().enumerate() {
        let (sim, clock) = (SimStorage::new(2), ManualClock::new(1_700_000_000_000));
        let db = Db::open_with(DIR, small_options().quiet().sim(&sim).manual_clock(&clock)).expect("open");
        workload(&db, &clock, 0, 60);
        sim.halt_after(Some(sim.ops() + at));
        let _ = db.checkpoint();
        let mode = if i % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Torn { sector: 512 }
        };
        sim.crash(mode);
        drop(db);
        write(
            dir,
            "recovery_image",
            &format!("checkpoint-crash-{i}.img"),
            &encode_image(&image(&sim)),
        );
    }

    // The files alone, for the decoders.
    let mut segments = 0;
    let mut snapshots = 0;
    for (name, bytes) in plain.iter().chain(&checkpointed) {
        let nonzero = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if name.ends_with(".wal") && segments < 4 && nonzero > 0 {
            segments += 1;
            // Raw bytes (even), the log's last segment (2), zeros back to 64 KiB (8).
            let mut seed = vec![2 | 8];
            seed.extend_from_slice(&bytes[..nonzero]);
            write(dir, "record_decode", &format!("segment-{segments}.seed"), &seed);
        }
        if name.ends_with(".snap") && snapshots < 2 {
            snapshots += 1;
            let mut seed = vec![0];
            seed.extend_from_slice(bytes);
            write(dir, "snapshot_decode", &format!("snapshot-{snapshots}.seed"), &seed);
        }
    }
    // ops_vs_model reads only structured input: a few fixed byte strings to start from.
    for i in 0..4u64 {
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
        let bytes: Vec<u8> = (0..400 + i * 300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write(dir, "ops_vs_model", &format!("start-{i}.seed"), &bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds from the format version 1 fixtures

/// The clock the v1 fixtures' manifests hold for (`tests/fixtures_v1.rs`).
const V1_OPENED_AT_MS: u64 = 1_700_000_000_000 + 3_600_000;
/// A derived image that must fit `recovery_image`'s `-max_len` (32 KiB, fuzz/run.sh): the log
/// prefix kept is at most this many bytes.
const PREFIX_BYTES: usize = 24 * 1024;

/// Every file of the fixture store `shape` (LOCK aside), by its name relative to the store.
fn fixture_files(fixtures: &Path, shape: &str) -> Vec<(String, Vec<u8>)> {
    let root = fixtures.join(shape);
    let mut out = Vec::new();
    for sub in ["", "wal"] {
        let dir = root.join(sub);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("list a fixture").path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "LOCK"))
            .collect();
        names.sort();
        for p in names {
            let name = p.file_name().and_then(|n| n.to_str()).expect("a fixture's name");
            let rel = if sub.is_empty() {
                name.to_string()
            } else {
                format!("wal/{name}")
            };
            out.push((rel, std::fs::read(&p).expect("read a fixture")));
        }
    }
    out
}

/// The first segment of a log, cut after the last whole record that ends within
/// `PREFIX_BYTES`, zeros after it as in a preallocated file: the store as it was earlier.
fn log_prefix(segment: &[u8], id: u64) -> Vec<u8> {
    use sessiondb::internals::format::{decode_record, RecordState, SEGMENT_HEADER_SIZE};
    let mut end = SEGMENT_HEADER_SIZE;
    while let RecordState::Valid(r) = decode_record(&segment[end..], id, 1 << 20) {
        if end + r.len > PREFIX_BYTES {
            break;
        }
        end += r.len;
    }
    let mut out = segment[..end].to_vec();
    out.resize(segment.len(), 0);
    out
}

/// `files` (a version 1 store) opened by this build, a few writes of every kind made, closed:
/// the mixed store an upgrade leaves (its version 1 files, a fresh version 2 segment). With
/// `checkpoint`, then checkpointed too: all version 2.
fn continued(files: &[(String, Vec<u8>)], checkpoint: bool) -> Vec<(String, Vec<u8>)> {
    let sim = SimStorage::new(3);
    let abs: Vec<_> = files.iter().map(|(n, b)| (Path::new(DIR).join(n), b.clone())).collect();
    install(&sim, &abs);
    let clock = ManualClock::new(V1_OPENED_AT_MS);
    let db = Db::open_with(DIR, small_options().quiet().sim(&sim).manual_clock(&clock)).expect("open a v1 fixture");
    workload(&db, &clock, 0, 16);
    if checkpoint {
        db.checkpoint().expect("checkpoint a v1 fixture");
    }
    db.close().expect("close");
    image(&sim)
}

/// Writes `recovery_image` seeds derived from the v1 fixture stores in `fixtures`
/// (`tests/fixtures/v1`) under `dir` (`fuzz/seeds`): for each shape, the store as it is
/// (`v1-<shape>.img`) and as this build leaves it after a few writes (`v1-<shape>-then-v2.img`,
/// a mixed store). These are larger than the fuzzer's `-max_len`: libFuzzer starts from their
/// first 32 KiB, `tests/fuzz_regressions.rs` replays them whole. So that whole v1 and mixed
/// stores also reach the fuzzer, `log_only`'s log is also cut to its first records
/// (`v1-log_only-prefix.img`), then continued (`-then-v2`) and checkpointed
/// (`-checkpointed`), each under 32 KiB.
pub fn generate_from_v1(fixtures: &Path, dir: &Path) {
    for shape in ["log_only", "snapshot_and_log", "ttl_touch_sessions", "torn_tail"] {
        let files = fixture_files(fixtures, shape);
        write(dir, "recovery_image", &format!("v1-{shape}.img"), &encode_image(&files));
        let mixed = continued(&files, false);
        write(
            dir,
            "recovery_image",
            &format!("v1-{shape}-then-v2.img"),
            &encode_image(&mixed),
        );
    }
    let files = fixture_files(fixtures, "log_only");
    let (name, first) = &files[0];
    assert_eq!(name, "wal/00000000000000000001.wal", "log_only's first segment");
    let prefix = vec![(name.clone(), log_prefix(first, 1))];
    for (suffix, image_files) in [
        ("prefix", prefix.clone()),
        ("prefix-then-v2", continued(&prefix, false)),
        ("prefix-checkpointed", continued(&prefix, true)),
    ] {
        let bytes = encode_image(&image_files);
        assert!(
            bytes.len() <= 32 * 1024,
            "v1-log_only-{suffix}.img is {} bytes",
            bytes.len()
        );
        write(dir, "recovery_image", &format!("v1-log_only-{suffix}.img"), &bytes);
    }
}
