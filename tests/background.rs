//! The automatic checkpoint thread loses no request (issue 12's review of the concurrency).
//!
//! Scenario: more than `checkpoint_log_bytes` of log written while a background checkpoint
//! runs (held at a protocol point), then no more writes. Invariant: a second checkpoint follows
//! by itself, and the log written during the first counts toward it. The waits end by a
//! deadline; no sleeps.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessiondb::storage::sim::{Point, SimStorage};
use sessiondb::{Db, SyncMode};
use support::{small_options, wait_until, OptionsExt};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn a_checkpoint_requested_while_one_runs_follows_it() {
    let sim = SimStorage::new(12);
    let (reached_tx, reached) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let held = Arc::new(AtomicBool::new(true));
    let h = held.clone();
    let opts = small_options()
        .sim(&sim)
        .sync_mode(SyncMode::Never)
        .checkpoint_log_bytes(32 << 10)
        .sweep_interval(None)
        .on_point(move |p| {
            if p == Point::CheckpointFrozen && h.swap(false, Ordering::SeqCst) {
                reached_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv_timeout(DEADLINE).unwrap();
            }
        });
    let db = Db::open_with("/again", opts).unwrap();
    // Past the threshold: the background checkpoint starts and stops at its freeze.
    for i in 0..10 {
        db.put(format!("a{i}"), [2u8; 4000]).unwrap();
    }
    reached.recv_timeout(DEADLINE).expect("the first checkpoint starts");
    // Past the threshold again while it runs; then no more writes.
    for i in 0..10 {
        db.put(format!("b{i}"), [3u8; 4000]).unwrap();
    }
    go.send(()).unwrap();
    wait_until("a second checkpoint", || db.stats().checkpoints >= 2);
    assert!(db.stats().log_bytes_since_checkpoint < 32 << 10, "{:?}", db.stats());
}
