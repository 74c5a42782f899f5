//! Holding the engine where a test wants it: an fsync at the simulated storage's gate with a
//! commit group lined up behind it, or a thread stopped at a protocol point
//! (`Options::on_point`). Channels and the engine's own gauges, never sleeps; every wait has
//! the deadline of [`super::WAIT_DEADLINE`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use sessiondb::internals::sim::{Point, SimStorage};
use sessiondb::{Db, Options};

use super::{wait_until, WAIT_DEADLINE};

/// A writer's thread; joining it gives what its write returned.
pub type Writer = JoinHandle<sessiondb::Result<()>>;

/// Writers held by [`hold_fsync_and_line_up`].
pub struct LinedUp {
    /// The writer inside its commit group's fsync, at the gate.
    pub first: Writer,
    /// The writers lined up behind it: the next commit group, once the first one's fsync
    /// returns.
    pub group: Vec<Writer>,
}

/// Holds every fsync of `sim` at its gate; one writer puts `first` and stops there, in its
/// commit group's fsync; then one writer a pair of `group` starts, and they line up behind it
/// (this returns once `stats().writers_waiting` counts them all). The gate stays closed: the
/// test opens it (`sim.hold_syncs(false)`, `sim.pass_syncs(n)`) when it has arranged what the
/// fsync meets: a fault, a crash point, a read that must not see the write yet.
pub fn hold_fsync_and_line_up(
    sim: &SimStorage,
    db: &Arc<Db>,
    first: (impl Into<Vec<u8>>, impl Into<Vec<u8>>),
    group: Vec<(Vec<u8>, Vec<u8>)>,
) -> LinedUp {
    sim.hold_syncs(true);
    let (key, value) = (first.0.into(), first.1.into());
    let first = {
        let db = db.clone();
        thread::spawn(move || db.put(key, value))
    };
    wait_until("an fsync at the gate", || sim.syncs_waiting() > 0);
    let n = group.len() as u64;
    let group = group
        .into_iter()
        .map(|(key, value)| {
            let db = db.clone();
            thread::spawn(move || db.put(key, value))
        })
        .collect();
    wait_until("the group to line up", || db.stats().writers_waiting >= n);
    LinedUp { first, group }
}

/// Stops the first thread that reaches a protocol point after [`PointGate::arm`], until the
/// test lets it go.
pub struct PointGate {
    armed: Arc<AtomicBool>,
    reached: Receiver<()>,
    go: Sender<()>,
}

impl PointGate {
    /// `opts` with a hook that stops the thread at `at` once the gate is armed, and the gate.
    pub fn at(at: Point, opts: Options) -> (Options, PointGate) {
        let armed = Arc::new(AtomicBool::new(false));
        let (reached_tx, reached) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let a = armed.clone();
        let opts = opts.on_point(move |p| {
            if p == at && a.swap(false, Ordering::SeqCst) {
                reached_tx.send(()).expect("the test waits for the gate");
                go_rx
                    .lock()
                    .expect("one thread at the gate at a time")
                    .recv_timeout(WAIT_DEADLINE)
                    .expect("the test lets the thread go");
            }
        });
        (opts, PointGate { armed, reached, go })
    }

    /// The next thread to reach the point stops there.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Returns once a thread has stopped at the point; fails the test naming `what` after
    /// [`WAIT_DEADLINE`].
    pub fn wait_reached(&self, what: &str) {
        self.reached
            .recv_timeout(WAIT_DEADLINE)
            .unwrap_or_else(|e| panic!("waited {WAIT_DEADLINE:?} for {what}: {e}"));
    }

    /// Lets the stopped thread go on.
    pub fn release(&self) {
        self.go.send(()).expect("the stopped thread waits for the go");
    }
}
