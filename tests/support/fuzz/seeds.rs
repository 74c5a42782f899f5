//! The seed corpora: files the engine itself writes (`generate_seeds` in
//! `tests/fuzz_regressions.rs` calls [`generate`]).

use std::path::Path;
use std::time::Duration;

use sessiondb::internals::sim::{CrashMode, SimStorage};
use sessiondb::{Batch, Db, ManualClock};

use super::super::{small_options, OptionsExt};
use super::recovery_image::encode_image;

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
