//! The automatic checkpoint thread loses no request (issue 12's review of the concurrency).
//!
//! Scenario: more than `checkpoint_log_bytes` of log written while a background checkpoint
//! runs (held at a protocol point), then no more writes. Invariant: a second checkpoint follows
//! by itself, and the log written during the first counts toward it. The waits end by a
//! deadline; no sleeps.

mod support;

use sessiondb::internals::sim::{Point, SimStorage};
use sessiondb::{Db, SyncMode};
use support::hold::PointGate;
use support::{small_options, wait_until, OptionsExt};

#[test]
fn a_checkpoint_requested_while_one_runs_follows_it() {
    let sim = SimStorage::new(12);
    let opts = small_options()
        .sim(&sim)
        .sync_mode(SyncMode::Never)
        .checkpoint_log_bytes(32 << 10)
        .sweep_interval(None);
    let (opts, gate) = PointGate::at(Point::CheckpointFrozen, opts);
    let db = Db::open_with("/again", opts).unwrap();
    gate.arm();
    // Past the threshold: the background checkpoint starts and stops at its freeze.
    for i in 0..10 {
        db.put(format!("a{i}"), [2u8; 4000]).unwrap();
    }
    gate.wait_reached("the first checkpoint at its freeze");
    // Past the threshold again while it runs; then no more writes.
    for i in 0..10 {
        db.put(format!("b{i}"), [3u8; 4000]).unwrap();
    }
    gate.release();
    wait_until("a second checkpoint", || db.stats().checkpoints >= 2);
    assert!(db.stats().log_bytes_since_checkpoint < 32 << 10, "{:?}", db.stats());
}
