//! Async writes (issue 17, docs/design.md "Async writes"): `Db::put_async` and the others.
//!
//! Scenario: writers that are tasks, not threads. With every fsync held at the simulated
//! storage's gate, 64 async puts are each polled once on one thread: every poll returns at once
//! (`Pending`), no thread is counted waiting, nothing is visible yet; released, every task is
//! woken and every write is durable and visible. Then: the async calls answer as the blocking
//! ones (conflicts, touches, deletes, batches), async and blocking writers share commit groups,
//! a write fails as a task when the fsync fails (and the store is poisoned), and a store closes
//! with the commit thread running. Histories mixing async and blocking writers on shared keys
//! under checkpoints are checked for linearizability in `linearizability.rs`.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use sessiondb::internals::sim::SimStorage;
use sessiondb::{Batch, Db, Durability, Error, SyncMode};
use support::wait::{block_on, wait_until};
use support::{small_options, OptionsExt};

/// A waker that counts its wakes.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn open(sim: &SimStorage, mode: SyncMode) -> Db {
    Db::open_with("/db", small_options().quiet().sim(sim).sync_mode(mode)).unwrap()
}

type Write<'a> = Pin<Box<dyn Future<Output = sessiondb::Result<()>> + Send + 'a>>;

#[test]
fn async_writes_wait_as_tasks_not_threads() {
    let sim = SimStorage::new(1);
    let db = open(&sim, SyncMode::Always);
    // The first write activates the segment; the held gate then stops the next group's fsync.
    db.put("warm", "up").unwrap();
    sim.hold_syncs(true);
    let keys: Vec<String> = (0..64).map(|i| format!("k{i:02}")).collect();
    // Each write a task of its own, with its own waker.
    let mut writes: Vec<(Write<'_>, Arc<Counting>)> = keys
        .iter()
        .map(|k| (Box::pin(db.put_async(k, k)) as Write<'_>, Arc::new(Counting::default())))
        .collect();
    // A poll that blocked on the held fsync would hang: a watchdog releases the gate after the
    // deadline, and the poll then fails the assertion below.
    let watchdog = support::wait::GateWatchdog::start(&sim);
    for (w, woken) in &mut writes {
        // Each poll orders its write and returns: none waits for the held fsync.
        let waker = Waker::from(woken.clone());
        let pending = w.as_mut().poll(&mut Context::from_waker(&waker)).is_pending();
        assert!(pending, "an async write finished with its fsync held");
    }
    watchdog.done();
    wait_until("the commit thread to reach the held fsync", || sim.syncs_waiting() == 1);
    assert_eq!(db.stats().writers_waiting, 0, "a thread waits for an async write");
    for k in &keys {
        assert_eq!(db.get(k).unwrap(), None, "{k} is visible before it is durable");
    }
    let wakes = |writes: &[(Write<'_>, Arc<Counting>)]| -> usize {
        writes.iter().map(|(_, w)| w.0.load(Ordering::SeqCst)).sum()
    };
    assert_eq!(wakes(&writes), 0, "a task was woken before its fsync");
    sim.hold_syncs(false);
    // Each task is woken once its group is durable and applied (the 64 writes are at most two
    // groups: the one held and the one formed behind it).
    wait_until("every task to be woken", || {
        writes.iter().all(|(_, w)| w.0.load(Ordering::SeqCst) > 0)
    });
    assert_eq!(wakes(&writes), 64, "a task was woken more than once");
    for (w, woken) in &mut writes {
        let waker = Waker::from(woken.clone());
        match w.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("a woken write is not done"),
        }
    }
    for k in &keys {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(k.as_bytes()));
    }
    let stats = db.stats();
    assert!(
        stats.commit_groups <= 1 + 2,
        "64 async writes took {} groups",
        stats.commit_groups
    );
    drop(writes);
    db.close().unwrap();
    // Durable: a power loss keeps them all.
    sim.crash(sessiondb::internals::sim::CrashMode::DropUnsynced);
    let db = open(&sim, SyncMode::Always);
    for k in &keys {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(k.as_bytes()), "{k} lost");
    }
}

#[test]
fn async_calls_answer_as_the_blocking_ones() {
    let sim = SimStorage::new(2);
    let db = open(&sim, SyncMode::Always);
    block_on("put_async", db.put_async("a", "1")).unwrap();
    let (_, v1) = db.get_with_version("a").unwrap().unwrap();
    // A precondition that fails writes nothing and names the version found.
    let mut stale = Batch::new();
    stale.put("a", "2").expect_version("a", Some(v1 + 100));
    let conflict = block_on("write_if_async", db.write_if_async(stale))
        .unwrap()
        .unwrap_err();
    assert_eq!((conflict.expected, conflict.actual), (Some(v1 + 100), Some(v1)));
    let mut fresh = Batch::new();
    fresh.put("a", "2").put("b", "3").expect_version("a", Some(v1));
    let v2 = block_on("write_if_async", db.write_if_async(fresh)).unwrap().unwrap();
    assert_eq!(db.get_with_version("a").unwrap(), Some((b"2".to_vec(), v2)));
    assert_eq!(db.get("b").unwrap().as_deref(), Some(&b"3"[..]));
    // write_async returns a conflict as an error, as write does.
    let mut stale = Batch::new();
    stale.delete("a").expect_version("a", Some(v1));
    assert!(matches!(
        block_on("write_async", db.write_async(stale)),
        Err(Error::Conflict(_))
    ));
    // Touches: a live key is touched (version kept), an absent one is not.
    let touched = block_on(
        "touch_with_async",
        db.touch_with_async("a", Duration::from_secs(60), Durability::Lazy),
    );
    assert!(touched.unwrap());
    let absent = block_on(
        "touch_with_async",
        db.touch_with_async("nope", Duration::from_secs(60), Durability::Immediate),
    );
    assert!(!absent.unwrap());
    let got = db.get_versioned("a").unwrap().unwrap();
    assert_eq!(got.version, v2, "a touch changed the version");
    assert!(got.expires_at_ms.is_some(), "the touch set no deadline");
    block_on("delete_async", db.delete_async("b")).unwrap();
    assert_eq!(db.get("b").unwrap(), None);
    // Limits are checked as the blocking calls check them.
    let huge = vec![0u8; 1 << 20];
    assert!(matches!(
        block_on("put_async", db.put_async("big", &huge)),
        Err(Error::TooLarge { .. })
    ));
    db.close().unwrap();
    sim.crash(sessiondb::internals::sim::CrashMode::DropUnsynced);
    let db = open(&sim, SyncMode::Always);
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("b").unwrap(), None);
}

#[test]
fn async_and_blocking_writers_share_groups() {
    let sim = SimStorage::new(3);
    let db = Arc::new(open(&sim, SyncMode::Always));
    db.put("warm", "up").unwrap();
    sim.hold_syncs(true);
    let counter = Arc::new(Counting::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    // An async write opens a group for the commit thread, which leads it into the held fsync.
    let mut first: Write<'_> = Box::pin(db.put_async("first", "1"));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    wait_until("the first group's fsync", || sim.syncs_waiting() == 1);
    // Behind it: an async write opens the next group, and a blocking writer joins it.
    let mut second: Write<'_> = Box::pin(db.put_async("second", "2"));
    assert!(second.as_mut().poll(&mut cx).is_pending());
    let blocking = {
        let db = db.clone();
        std::thread::spawn(move || db.put("third", "3"))
    };
    wait_until("the blocking writer to wait", || db.stats().writers_waiting == 1);
    let groups_before = db.stats().commit_groups;
    sim.hold_syncs(false);
    support::wait::joined("the blocking writer", blocking).unwrap();
    block_on("the first write", first).unwrap();
    block_on("the second write", second).unwrap();
    assert_eq!(
        db.stats().commit_groups - groups_before,
        1,
        "the async write and the blocking one did not share the second group"
    );
    for (k, v) in [("first", "1"), ("second", "2"), ("third", "3")] {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_bytes()));
    }
}

#[test]
fn a_failed_fsync_fails_the_async_write_and_poisons() {
    let sim = SimStorage::new(4);
    let db = open(&sim, SyncMode::Always);
    db.put("warm", "up").unwrap();
    sim.fail_next_syncs(1);
    let r = block_on("put_async", db.put_async("k", "v"));
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    let r = block_on("put_async", db.put_async("k2", "v"));
    assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
    assert!(matches!(db.put("k3", "v"), Err(Error::Poisoned { .. })));
}

#[test]
fn async_futures_are_send_and_a_store_closes_with_the_commit_thread() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    let sim = SimStorage::new(5);
    let db = open(&sim, SyncMode::Always);
    block_on("put_async", send(db.put_async("a", "1"))).unwrap();
    block_on("write_if_async", send(db.write_if_async(Batch::new())))
        .unwrap()
        .unwrap();
    block_on(
        "touch_with_async",
        send(db.touch_with_async("a", Duration::from_secs(1), Durability::Default)),
    )
    .unwrap();
    // The commit thread is running; close stops it (a hang here would be CI's limit: the
    // test's own thread joins with a deadline).
    let closing = std::thread::spawn(move || db.close());
    support::wait::joined("close with the commit thread running", closing).unwrap();
}
