//! Waiting for another thread, always with a deadline: a regression makes a test fail naming
//! what it waited for, never hang until CI's limit.

/// How long a test waits for another thread before it fails instead of hanging.
pub const WAIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Spins (yielding, never sleeping) until `done` holds; fails the test naming `what` if that
/// takes longer than [`WAIT_DEADLINE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT_DEADLINE, "waited {WAIT_DEADLINE:?} for {what}");
        std::thread::yield_now();
    }
}

/// Joins `thread` once it has finished, waiting at most [`WAIT_DEADLINE`] (a thread stuck in
/// the engine fails the test naming `what`); a panic of the thread goes on in this one.
pub fn joined<T>(what: &str, thread: std::thread::JoinHandle<T>) -> T {
    wait_until(what, || thread.is_finished());
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `f(0)` .. `f(threads - 1)` on threads of their own that start together (a barrier);
/// returns their results in that order, each joined with the deadline of [`joined`].
pub fn race<T: Send + 'static>(threads: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (f, start) = (f.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                f(t)
            })
        })
        .collect();
    handles.into_iter().map(|h| joined("a racing thread", h)).collect()
}

/// Runs `fut` to completion on this thread: polls it, parks until its waker is woken, polls
/// again. Fails the test naming `what` if it is not done within [`WAIT_DEADLINE`] (an async
/// write whose waker is never woken fails, never hangs).
pub fn block_on<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let started = std::time::Instant::now();
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        let left = WAIT_DEADLINE.checked_sub(started.elapsed());
        let left = left.unwrap_or_else(|| panic!("waited {WAIT_DEADLINE:?} for {what}"));
        std::thread::park_timeout(left);
    }
}

/// Opens the simulated storage's held fsync gate if [`GateWatchdog::done`] is not called
/// within [`WAIT_DEADLINE`]: a call that waited for the held fsync then returns, late, and the
/// test's assertions fail instead of the test hanging.
pub struct GateWatchdog {
    done: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl GateWatchdog {
    /// Starts watching `sim`'s gate.
    pub fn start(sim: &sessiondb::internals::sim::SimStorage) -> GateWatchdog {
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let sim = sim.clone();
        let thread = std::thread::spawn(move || {
            if watch.recv_timeout(WAIT_DEADLINE).is_err() {
                sim.hold_syncs(false);
            }
        });
        GateWatchdog { done, thread }
    }

    /// What it watched for returned in time (or late: the caller's assertions tell).
    pub fn done(self) {
        let _ = self.done.send(());
        joined("the watchdog", self.thread);
    }
}
