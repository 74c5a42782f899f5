//! A panic while leading a commit group (a bug, or a storage that panics) poisons the store and
//! fails the group; no writer waits forever for a leader that is gone (issue 12).
//!
//! Scenario: a storage whose write of a log record panics once, under eight writers; then a
//! preallocator whose segment creation panics. Invariant: every other writer returns within
//! the deadline (`Ok` for groups written before, an error after), later writes get
//! `Error::Poisoned`, reads go on, and the store reopens with every acknowledged write.

mod support;

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use sessiondb::internals::sim::SimStorage;
use sessiondb::storage::{LockGuard, MappedFile, OpenMode, Storage, StorageFile};
use sessiondb::{Db, Error, Options};
use support::{small_options, WAIT_DEADLINE};

fn options(storage: &Handle) -> Options {
    small_options()
        .storage(Arc::new(storage.clone()))
        .auto_checkpoint(false)
}

/// The sim, with one panic armed: in a write of records to a log segment, or in the
/// preallocator thread's creation of a segment's temporary file (`.wal.tmp`).
#[derive(Debug)]
struct Panicky {
    sim: SimStorage,
    panic_in_wal_write: AtomicBool,
    panic_in_tmp_create: AtomicBool,
}

#[derive(Debug)]
struct PanickyFile {
    inner: Arc<dyn StorageFile>,
    storage: Arc<Panicky>,
    wal: bool,
}

impl StorageFile for PanickyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        // Records, not the zeros a segment is filled with when it is made.
        let records = buf.iter().any(|&b| b != 0);
        if self.wal && records && self.storage.panic_in_wal_write.swap(false, Ordering::SeqCst) {
            panic!("the storage panics in a write of the log");
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn map(&self) -> io::Result<Option<Arc<dyn MappedFile>>> {
        self.inner.map()
    }
}

/// The storage handed to the store: `Panicky` behind an `Arc` its files can point back to.
#[derive(Debug, Clone)]
struct Handle(Arc<Panicky>);

impl Storage for Handle {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.sim.create_dir_all(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let name = path.to_string_lossy();
        let preallocator = std::thread::current().name() == Some("sessiondb-prealloc");
        if name.ends_with(".wal.tmp") && preallocator && self.0.panic_in_tmp_create.swap(false, Ordering::SeqCst) {
            panic!("the storage panics creating a segment");
        }
        let inner = self.0.sim.open(path, mode)?;
        Ok(Arc::new(PanickyFile {
            inner,
            storage: self.0.clone(),
            wal: name.contains(".wal"),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.sim.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.sim.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.0.sim.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sim.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        self.0.sim.try_lock(path)
    }
}

#[test]
fn a_leader_that_panics_fails_its_group_and_poisons_the_store() {
    let storage = Handle(Arc::new(Panicky {
        sim: SimStorage::new(5),
        panic_in_wal_write: AtomicBool::new(false),
        panic_in_tmp_create: AtomicBool::new(false),
    }));
    let db = Arc::new(Db::open_with("/p", options(&storage)).unwrap());
    db.put("before", "kept").unwrap();
    storage.0.panic_in_wal_write.store(true, Ordering::SeqCst);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (done, finished) = mpsc::channel();
    for t in 0..8 {
        let (db, done, acknowledged) = (db.clone(), done.clone(), acknowledged.clone());
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            for i in 0..20 {
                // A panic in this thread's put (it led the group) ends the thread here.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.put(format!("t{t}-{i}"), "v")));
                match r {
                    Ok(Ok(())) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        outcomes.push(Ok(format!("t{t}-{i}")));
                    }
                    Ok(Err(e)) => outcomes.push(Err(Some(e))),
                    Err(_) => outcomes.push(Err(None)),
                }
            }
            // Its handle goes before it reports, so the last report means the last handle.
            drop(db);
            done.send(outcomes).unwrap();
        });
    }
    let mut written = Vec::new();
    let mut panics = 0;
    for _ in 0..8 {
        let outcomes = finished
            .recv_timeout(WAIT_DEADLINE)
            .expect("every writer returns: none waits for a leader that panicked");
        for o in outcomes {
            match o {
                Ok(k) => written.push(k),
                Err(None) => panics += 1,
                Err(Some(e)) => assert!(
                    matches!(e, Error::Poisoned { .. }),
                    "a write in or after the group whose leader panicked: {e:?}"
                ),
            }
        }
    }
    assert_eq!(panics, 1, "one put led the group whose write panicked");
    assert!(matches!(db.put("after", "x"), Err(Error::Poisoned { .. })));
    assert_eq!(db.get("before").unwrap().as_deref(), Some(&b"kept"[..]), "reads go on");
    drop(db);
    let db = Db::open_with("/p", options(&storage)).unwrap();
    for k in &written {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&b"v"[..]), "{k} was acknowledged");
    }
    db.close().unwrap();
}

#[test]
fn a_preallocator_that_panics_never_stops_a_roll() {
    let storage = Handle(Arc::new(Panicky {
        sim: SimStorage::new(6),
        panic_in_wal_write: AtomicBool::new(false),
        panic_in_tmp_create: AtomicBool::new(true),
    }));
    let db = Arc::new(Db::open_with("/q", options(&storage)).unwrap());
    let (done, finished) = mpsc::channel();
    {
        let (db, storage) = (db.clone(), storage.clone());
        std::thread::spawn(move || {
            // Rolls until the preallocator has panicked, and four segments more: they take the
            // spare it failed to make, or make their own.
            let started = std::time::Instant::now();
            let mut i = 0;
            while storage.0.panic_in_tmp_create.load(Ordering::SeqCst) && started.elapsed() < WAIT_DEADLINE {
                db.put(format!("k{}", i % 64), [1u8; 4000]).unwrap();
                i += 1;
            }
            for j in 0..64 {
                db.put(format!("k{j}"), [1u8; 4000]).unwrap();
            }
            done.send(()).unwrap();
        });
    }
    finished
        .recv_timeout(WAIT_DEADLINE)
        .expect("rolls go on: the writer makes the segment itself");
    assert!(db.stats().segments >= 3, "{:?}", db.stats());
    assert!(
        !storage.0.panic_in_tmp_create.load(Ordering::SeqCst),
        "the preallocator did panic"
    );
}
