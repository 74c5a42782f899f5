//! Nonces never repeat under one data key (docs/design.md, "Encryption at rest"): a long run on
//! the simulated storage, with rolls, checkpoints (some failing on a full disk), crashes that
//! tear the log and reopens, records every nonce sealed under every data key and fails on the
//! first one used twice. Seeded: `SESSIONDB_SEED` replays a run.

mod support;

use std::time::Duration;

use sessiondb::internals::nonce_audit;
use sessiondb::internals::sim::{CrashMode, Faults, SimStorage};
use sessiondb::{Batch, Db, EncryptionKey, Error, ManualClock, SyncMode};
use support::{small_options, OptionsExt, Rng};

const DIR: &str = "/nonces";

#[test]
fn no_nonce_is_used_twice_under_one_data_key() {
    let (seed, _guard) = support::seeded("no_nonce_is_used_twice_under_one_data_key");
    let mut rng = Rng::new(seed);
    let sim = SimStorage::new(seed);
    let clock = ManualClock::new(1_000_000);
    let opts = small_options()
        .sync_mode(SyncMode::Always)
        .checkpoint_log_bytes(256 * 1024)
        .sweep_interval(None)
        .preallocate_ahead(false)
        .manual_clock(&clock)
        .encryption_key(EncryptionKey::from_bytes([9; 32]))
        .sim(&sim);
    nonce_audit::start();
    let (mut opens, mut failed_writes) = (0, 0);
    for round in 0..12 {
        let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("round {round}: open: {e}"));
        opens += 1;
        let faulty = rng.chance(40);
        if faulty {
            sim.set_faults(Faults {
                enospc: 0.02,
                short_write: 0.1,
                ..Faults::default()
            });
        }
        for i in 0..1_500u64 {
            let key = format!("k{:03}", rng.below(300));
            let len = rng.range(1, 600) as usize;
            let value = rng.bytes(len);
            let result = match rng.below(10) {
                0 => db.delete(&key),
                1 => db.touch(&key, Duration::from_secs(60)).map(|_| ()),
                2 => {
                    let mut b = Batch::new();
                    for j in 0..rng.range(2, 20) {
                        b.put(format!("b{}-{j}", rng.below(50)), &value);
                    }
                    db.write(b)
                }
                3 if i % 97 == 0 => db.checkpoint(),
                _ => db.put(&key, &value),
            };
            if let Err(e) = result {
                failed_writes += 1;
                if matches!(e, Error::Poisoned { .. }) {
                    break;
                }
            }
        }
        sim.set_faults(Faults::default());
        if rng.chance(50) {
            sim.crash(CrashMode::Torn { sector: 512 });
            drop(db);
        } else {
            let _ = db.close();
        }
    }
    let (sealed, keys) = nonce_audit::stop();
    println!("{opens} opens, {failed_writes} failed writes, {sealed} pieces sealed under {keys} data keys");
    assert!(sealed > 10_000, "the run sealed {sealed} pieces");
    assert!(keys > 24, "the run used {keys} data keys (segments and snapshots)");
}
