//! One small adapter per engine, all behind [`Engine`] and [`Worker`].
//!
//! A worker is one thread's handle (SQLite needs a connection per thread; the others share
//! one handle). `put(.., durable = true)` returns only once the write is on stable storage
//! (an `fdatasync`/`fsync` covers it); `durable = false` returns once the write is handed to
//! the OS (or, for redb, committed with `Durability::None`), and [`Engine::sync`] makes every
//! such write durable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

/// Every engine the harness knows, by its command-line name.
pub const ALL: &[&str] = &[
    "sessiondb",
    "sessiondb-enc",
    "raw",
    "redb",
    "fjall",
    "sled",
    "sled-flush",
    "sqlite",
    #[cfg(feature = "rocksdb")]
    "rocksdb",
];

/// Whether an engine is a peer (compared against), as opposed to ours, the floor or a
/// configuration that is not durable.
pub fn is_peer(name: &str) -> bool {
    !matches!(name, "sessiondb" | "sessiondb-enc" | "raw" | "sled-flush")
}

/// Whether an engine is sessiondb itself, encrypted or not (gets the checkpoint-only metrics).
pub fn is_sessiondb(name: &str) -> bool {
    matches!(name, "sessiondb" | "sessiondb-enc")
}

/// Whether an engine's "durable" put really is durable.
pub fn is_durable(name: &str) -> bool {
    name != "sled-flush"
}

pub trait Engine: Send + Sync {
    /// A handle for one thread.
    fn worker(&self) -> Box<dyn Worker + '_>;
    /// Makes every write that returned durable.
    fn sync(&self);
    /// Before a close whose reopen is measured: sessiondb writes a checkpoint (W5 measures the
    /// reopen "after a checkpoint"); the others do nothing beyond their own close.
    fn before_close(&self) {}
    /// Only one thread will write (W1): the raw floor then does the simplest durable put,
    /// `pwrite` + `fdatasync` in the caller, instead of handing it to its group committer.
    fn single_writer(&self) {}
    /// Checkpoint / compaction for W6: whatever the engine offers to reclaim dead bytes.
    fn compact(&mut self);
    /// Closes the store (flushing what the engine flushes on close).
    fn close(self: Box<Self>);
}

pub trait Worker {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool);
    fn get(&mut self, key: &[u8]) -> Option<usize>;
    /// A bulk load's batch (W4b): the pairs written together, lazily, the way an import job
    /// would with this engine's batch or transaction. Engines without one put each pair lazily.
    fn put_batch(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        for (k, v) in pairs {
            self.put(k, v, false);
        }
    }
    /// Sliding expiry of a session: sessiondb writes a small touch record (`Durability::Lazy`);
    /// the peers have no TTL, so they rewrite the value with its new deadline, lazily.
    fn touch(&mut self, key: &[u8], value: &[u8]) {
        self.put(key, value, false);
    }
    /// A durable session save (sessiondb: with a TTL, so touches have a deadline to extend).
    fn save(&mut self, key: &[u8], value: &[u8]) {
        self.put(key, value, true);
    }
}

/// Opens (creating) the store of engine `name` in `dir`. `bulk`: the store is used for bulk
/// loading (W3–W6): sessiondb opens in `SyncMode::Never` (its writes are handed to the OS and
/// made durable by `sync()`), the raw floor sizes its preallocated file for `bulk_keys`.
pub fn open(name: &str, dir: &Path, bulk: Option<u64>) -> Box<dyn Engine> {
    fs::create_dir_all(dir).expect("create store dir");
    match name {
        "sessiondb" => Box::new(SessionDb::open(dir, bulk.is_some(), false)),
        "sessiondb-enc" => Box::new(SessionDb::open(dir, bulk.is_some(), true)),
        "raw" => Box::new(Raw::open(dir, bulk)),
        "redb" => Box::new(Redb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        "sled" => Box::new(Sled::open(dir, true)),
        "sled-flush" => Box::new(Sled::open(dir, false)),
        "sqlite" => Box::new(Sqlite::open(dir)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocks::Rocks::open(dir)),
        other => panic!("unknown engine {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// sessiondb, and "sessiondb-enc": the same adapter on an encrypted store (format version 3,
// `Options::encryption_key` with the fixed key below), for issue 16's encrypted ÷ unencrypted
// ratios in one run.

/// The master key of every "sessiondb-enc" store (fixed, so a reopen in a fresh process
/// finds the store's key).
pub const BENCH_KEY: [u8; 32] = *b"sessiondb-compare bench key 0016";

pub struct SessionDb {
    db: Option<sessiondb::Db>,
    /// Opened in `SyncMode::Never`: a plain put is already lazy.
    bulk: bool,
}

impl SessionDb {
    fn open(dir: &Path, bulk: bool, encrypted: bool) -> SessionDb {
        let mode = if bulk {
            sessiondb::SyncMode::Never
        } else {
            sessiondb::SyncMode::Always
        };
        let mut opts = sessiondb::Options::new().sync_mode(mode);
        // Experiments only (issue 17's 4 KiB tail): another segment size.
        if let Some(bytes) = std::env::var("SESSIONDB_BENCH_SEGMENT_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            opts = opts.segment_size(bytes);
        }
        // Experiments only: no spare segment zero-filled ahead (the next one is made by the
        // group that rolls into it).
        if std::env::var_os("SESSIONDB_BENCH_NO_PREALLOC").is_some() {
            opts = opts.preallocate_ahead(false);
        }
        // Experiments only: no checkpoint started by the log's size (W2 at 64 writers of 4 KiB
        // writes 256 MiB of log, the default trigger, in about four seconds).
        if std::env::var_os("SESSIONDB_BENCH_NO_AUTO_CHECKPOINT").is_some() {
            opts = opts.auto_checkpoint(false);
        }
        // Experiments only: the log bytes that start a checkpoint, in MiB.
        if let Some(mb) = std::env::var("SESSIONDB_BENCH_CHECKPOINT_LOG_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            opts = opts.checkpoint_log_bytes(mb << 20);
        }
        if encrypted {
            opts = opts.encryption_key(sessiondb::EncryptionKey::from_bytes(BENCH_KEY));
        }
        let db = sessiondb::Db::open_with(dir, opts).expect("open sessiondb");
        SessionDb { db: Some(db), bulk }
    }

    fn db(&self) -> &sessiondb::Db {
        self.db.as_ref().expect("sessiondb is open")
    }
}

struct SessionDbWorker<'a> {
    db: &'a sessiondb::Db,
    /// A plain put is lazy (the store is in `SyncMode::Never`).
    bulk: bool,
}

const SESSION_TTL: Duration = Duration::from_secs(1800);

impl Worker for SessionDbWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        if durable || self.bulk {
            // Durability::Default: Always in the durable profile; Never in bulk (W3-W6), where
            // no put is asked to be durable: the plain put a bulk loader would call.
            self.db.put(key, value).expect("sessiondb put");
        } else {
            // A lazy put in a durable store (W7's prefill): a batch marked Lazy.
            let mut b = sessiondb::Batch::new();
            b.put(key, value).durability(sessiondb::Durability::Lazy);
            self.db.write(b).expect("sessiondb lazy put");
        }
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.db.get(key).expect("sessiondb get").map(|v| v.len())
    }
    fn put_batch(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = sessiondb::Batch::new();
        for (k, v) in pairs {
            b.put(k, v);
        }
        if !self.bulk {
            b.durability(sessiondb::Durability::Lazy);
        }
        self.db.write(b).expect("sessiondb batch");
    }
    fn save(&mut self, key: &[u8], value: &[u8]) {
        self.db.put_with_ttl(key, value, SESSION_TTL).expect("sessiondb save");
    }
    fn touch(&mut self, key: &[u8], _value: &[u8]) {
        self.db
            .touch_with(key, SESSION_TTL, sessiondb::Durability::Lazy)
            .expect("sessiondb touch");
    }
}

impl Engine for SessionDb {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(SessionDbWorker {
            db: self.db(),
            bulk: self.bulk,
        })
    }
    fn sync(&self) {
        self.db().sync().expect("sessiondb sync");
    }
    fn before_close(&self) {
        self.db().checkpoint().expect("sessiondb checkpoint");
    }
    fn compact(&mut self) {
        self.db().checkpoint().expect("sessiondb checkpoint");
    }
    fn close(mut self: Box<Self>) {
        if let Some(db) = self.db.take() {
            // Experiments only: what the store did (checkpoints, segments recycled, fsyncs).
            if std::env::var_os("SESSIONDB_BENCH_STATS").is_some() {
                let s = db.stats();
                eprintln!(
                    "sessiondb stats: checkpoints {}, segments recycled {}, fsyncs {}, commit groups {}, checkpoint bytes {}",
                    s.checkpoints, s.segments_recycled, s.fsyncs, s.commit_groups, s.checkpoint_bytes_total
                );
            }
            db.close().expect("sessiondb close");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// raw floor: records appended into one preallocated, zero-filled, fsynced file. Durable puts
// use an ideal group commit: a dedicated committer thread takes every record queued, writes
// them with one `pwrite`, `fdatasync`s once, and wakes each writer of the group in turn
// (writers woken first are often queued again before it takes the next group). Lazy puts
// `pwrite` their record directly. A hash index of key -> value offset serves reads by `pread`.

pub struct Raw {
    file: Arc<File>,
    path: PathBuf,
    capacity: u64,
    /// Next free offset in the file, shared by the committer and lazy puts.
    tail: Arc<Mutex<u64>>,
    queue: Mutex<Option<mpsc::Sender<Commit>>>,
    committer: Mutex<Option<thread::JoinHandle<()>>>,
    index: RwLock<RawIndex>,
    inline: std::sync::atomic::AtomicBool,
}

/// Key -> (value offset, value length).
type RawIndex = HashMap<Box<[u8]>, (u64, u32)>;

/// A durable put for the committer: its encoded record, and where to send the record's offset
/// once it is written and synced.
struct Commit {
    record: Vec<u8>,
    reply: mpsc::Sender<u64>,
}

/// Record header: value length (u32 LE), key length (u16 LE).
const RAW_HEADER: u64 = 6;
/// The preallocated part of a durable workload's store (W2 at 64 writers fills ~150 MB; a fast
/// W7 can write more, and the file then grows).
const RAW_FILE_BYTES: u64 = 512 << 20;

/// The preallocated part of a durable workload's raw log: [`RAW_FILE_BYTES`], or
/// `SESSIONDB_BENCH_RAW_FILE_MB` MiB (a W2 with a warm-up writes past 512 MiB, and the floor
/// must not grow its file while timed, or it is no floor).
fn raw_file_bytes() -> u64 {
    std::env::var("SESSIONDB_BENCH_RAW_FILE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(RAW_FILE_BYTES, |mb| mb << 20)
}

impl Raw {
    fn open(dir: &Path, bulk: Option<u64>) -> Raw {
        let path = dir.join("raw.log");
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open raw log");
        let capacity = if exists {
            file.metadata().expect("raw log metadata").len()
        } else {
            // Bulk: room for the load and one overwrite of every key (W6), 16 B keys, 256 B values.
            let cap = bulk.map_or_else(raw_file_bytes, |n| n * 2 * (RAW_HEADER + 16 + 256) + (1 << 20));
            zero_fill(&file, cap);
            sync_dir(dir);
            cap
        };
        let file = Arc::new(file);
        let tail = Arc::new(Mutex::new(0));
        let (tx, rx) = mpsc::channel();
        let committer = {
            let (file, tail) = (file.clone(), tail.clone());
            thread::spawn(move || commit_loop(&file, &tail, capacity, rx))
        };
        let raw = Raw {
            file,
            path,
            capacity,
            tail,
            queue: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
            index: RwLock::new(HashMap::new()),
            inline: Default::default(),
        };
        if exists {
            raw.replay();
        }
        raw
    }

    /// Rebuilds the index by scanning the log up to the first zero header (the reopen cost of
    /// a log without checkpoints).
    fn replay(&self) {
        use std::io::{BufReader, Read};
        let mut r = BufReader::with_capacity(1 << 20, File::open(&self.path).expect("open raw log"));
        let mut index = self.index.write().expect("raw index lock");
        let mut off = 0u64;
        let mut header = [0u8; RAW_HEADER as usize];
        let mut kv = Vec::new();
        while off + RAW_HEADER <= self.capacity {
            r.read_exact(&mut header).expect("read raw log");
            let vlen = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let klen = u16::from_le_bytes(header[4..].try_into().expect("2 bytes"));
            if vlen == 0 && klen == 0 {
                break;
            }
            kv.resize(klen as usize + vlen as usize, 0);
            r.read_exact(&mut kv).expect("read raw log");
            let voff = off + RAW_HEADER + u64::from(klen);
            index.insert(kv[..klen as usize].into(), (voff, vlen));
            off = voff + u64::from(vlen);
        }
        *self.tail.lock().expect("raw tail lock") = off;
    }

    fn index_put(&self, key: &[u8], off: u64, vlen: usize) {
        let voff = off + RAW_HEADER + key.len() as u64;
        self.index
            .write()
            .expect("raw index lock")
            .insert(key.into(), (voff, vlen as u32));
    }

    fn shut_down(&self) {
        drop(self.queue.lock().expect("raw queue lock").take());
        if let Some(h) = self.committer.lock().expect("raw committer lock").take() {
            h.join().expect("raw committer thread");
        }
    }
}

fn reserve(tail: &Mutex<u64>, len: u64, capacity: u64) -> u64 {
    let mut t = tail.lock().expect("raw tail lock");
    let off = *t;
    // Past the preallocated part the file grows (only a fast W7 gets there): slower writes,
    // never wrong ones.
    let _ = capacity;
    *t += len;
    off
}

fn commit_loop(file: &File, tail: &Mutex<u64>, capacity: u64, rx: mpsc::Receiver<Commit>) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut group: Vec<(u64, mpsc::Sender<u64>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.clear();
        group.clear();
        let mut next = Some(first);
        while let Some(c) = next {
            group.push((buf.len() as u64, c.reply));
            buf.extend_from_slice(&c.record);
            next = rx.try_recv().ok();
        }
        let off = reserve(tail, buf.len() as u64, capacity);
        file.write_all_at(&buf, off).expect("raw pwrite");
        file.sync_data().expect("raw fdatasync");
        for (rel, reply) in group.drain(..) {
            let _ = reply.send(off + rel);
        }
    }
}

fn encode_raw(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RAW_HEADER as usize + key.len() + value.len());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn zero_fill(file: &File, bytes: u64) {
    // Experiments only (issue 17): allocate without writing (ext4 "unwritten" extents, which
    // read as zeros; each fdatasync into them also commits their conversion).
    if std::env::var_os("SESSIONDB_BENCH_RAW_FALLOCATE").is_some() {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open file descriptor; no memory is shared.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        assert_eq!(r, 0, "fallocate raw log: {}", std::io::Error::last_os_error());
        file.sync_all().expect("fsync raw log");
        return;
    }
    let chunk = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < bytes {
        let n = chunk.len().min((bytes - off) as usize);
        file.write_all_at(&chunk[..n], off).expect("zero-fill raw log");
        off += n as u64;
    }
    file.sync_all().expect("fsync raw log");
}

fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync dir");
}

struct RawWorker<'a> {
    raw: &'a Raw,
    queue: mpsc::Sender<Commit>,
    reply: mpsc::Sender<u64>,
    replies: mpsc::Receiver<u64>,
}

impl Worker for RawWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        let record = encode_raw(key, value);
        let inline = self.raw.inline.load(std::sync::atomic::Ordering::Relaxed);
        let off = if durable && !inline {
            let reply = self.reply.clone();
            self.queue
                .send(Commit { record, reply })
                .expect("raw committer is running");
            self.replies.recv().expect("raw committer reply")
        } else {
            let off = reserve(&self.raw.tail, record.len() as u64, self.raw.capacity);
            self.raw.file.write_all_at(&record, off).expect("raw pwrite");
            if durable {
                self.raw.file.sync_data().expect("raw fdatasync");
            }
            off
        };
        self.raw.index_put(key, off, value.len());
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        let (off, len) = *self.raw.index.read().expect("raw index lock").get(key)?;
        let mut buf = vec![0u8; len as usize];
        self.raw.file.read_exact_at(&mut buf, off).expect("raw pread");
        Some(buf.len())
    }
}

impl Engine for Raw {
    fn worker(&self) -> Box<dyn Worker + '_> {
        let queue = self
            .queue
            .lock()
            .expect("raw queue lock")
            .clone()
            .expect("raw store is open");
        let (reply, replies) = mpsc::channel();
        Box::new(RawWorker {
            raw: self,
            queue,
            reply,
            replies,
        })
    }
    fn sync(&self) {
        self.file.sync_data().expect("raw fdatasync");
    }
    fn single_writer(&self) {
        self.inline.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn compact(&mut self) {}
    fn close(self: Box<Self>) {
        self.shut_down();
        self.file.sync_data().expect("raw fdatasync");
    }
}

// ---------------------------------------------------------------------------------------------
// redb: one write transaction per put; `Durability::Immediate` (its default) for a durable
// put, `Durability::None` otherwise; `sync` commits an empty immediate transaction.

use redb::{ReadableDatabase, TableDefinition};

const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

pub struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Redb {
        let db = redb::Database::create(dir.join("redb.db")).expect("open redb");
        let tx = db.begin_write().expect("redb begin");
        tx.open_table(REDB_TABLE).expect("redb table");
        tx.commit().expect("redb commit");
        Redb { db }
    }

    fn commit(&self, durable: bool, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>)) {
        let mut tx = self.db.begin_write().expect("redb begin");
        if !durable {
            tx.set_durability(redb::Durability::None).expect("redb durability");
        }
        {
            let mut t = tx.open_table(REDB_TABLE).expect("redb table");
            f(&mut t);
        }
        tx.commit().expect("redb commit");
    }
}

struct RedbWorker<'a>(&'a Redb);

impl Worker for RedbWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        self.0.commit(durable, |t| {
            t.insert(key, value).expect("redb insert");
        });
    }
    fn put_batch(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        self.0.commit(false, |t| {
            for (k, v) in pairs {
                t.insert(k.as_slice(), v.as_slice()).expect("redb insert");
            }
        });
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        let tx = self.0.db.begin_read().expect("redb read");
        let t = tx.open_table(REDB_TABLE).expect("redb table");
        let v = t.get(key).expect("redb get")?;
        Some(v.value().len())
    }
}

impl Engine for Redb {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(RedbWorker(self))
    }
    fn sync(&self) {
        self.commit(true, |_| {});
    }
    fn compact(&mut self) {
        while self.db.compact().expect("redb compact") {}
    }
    fn close(self: Box<Self>) {}
}

// ---------------------------------------------------------------------------------------------
// fjall: `insert` (its journal is flushed to the OS on every write, `PersistMode::Buffer`),
// then `persist(PersistMode::SyncData)` for a durable put.

pub struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let db = fjall::Database::builder(dir).open().expect("open fjall");
        let ks = db
            .keyspace("kv", fjall::KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        Fjall { db, ks }
    }
}

struct FjallWorker<'a>(&'a Fjall);

impl Worker for FjallWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        self.0.ks.insert(key, value).expect("fjall insert");
        if durable {
            self.0.db.persist(fjall::PersistMode::SyncData).expect("fjall persist");
        }
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.ks.get(key).expect("fjall get").map(|v| v.len())
    }
}

impl Engine for Fjall {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(FjallWorker(self))
    }
    fn sync(&self) {
        self.db.persist(fjall::PersistMode::SyncAll).expect("fjall persist");
    }
    fn compact(&mut self) {
        self.ks.rotate_memtable_and_wait().expect("fjall flush memtable");
        self.ks.major_compact().expect("fjall major compaction");
    }
    fn close(self: Box<Self>) {
        self.db.persist(fjall::PersistMode::SyncAll).expect("fjall persist");
    }
}

// ---------------------------------------------------------------------------------------------
// sled 0.34.7: `flush()` writes its log with `sync_file_range`, never `fsync`/`fdatasync`
// (see docs/benchmarks.md, strace), so "sled" adds an explicit `fdatasync` of its data file
// after each flush; "sled-flush" is the plain flush, NOT durable against a power loss.

pub struct Sled {
    db: sled::Db,
    data: File,
    fdatasync: bool,
}

impl Sled {
    fn open(dir: &Path, fdatasync: bool) -> Sled {
        let db = sled::Config::new().path(dir).open().expect("open sled");
        let data = File::open(dir.join("db")).expect("open sled's data file");
        Sled { db, data, fdatasync }
    }

    fn flush(&self) {
        self.db.flush().expect("sled flush");
        if self.fdatasync {
            self.data.sync_data().expect("fdatasync sled data file");
        }
    }
}

struct SledWorker<'a>(&'a Sled);

impl Worker for SledWorker<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        self.0.db.insert(key, value).expect("sled insert");
        if durable {
            self.0.flush();
        }
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.db.get(key).expect("sled get").map(|v| v.len())
    }
}

impl Engine for Sled {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(SledWorker(self))
    }
    fn sync(&self) {
        self.db.flush().expect("sled flush");
        self.data.sync_all().expect("fsync sled data file");
    }
    fn compact(&mut self) {
        // sled has no explicit compaction; its flush lets the page cache rewrite segments.
        self.sync();
    }
    fn close(self: Box<Self>) {
        self.sync();
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite (bundled) in WAL mode: one connection per thread, one autocommit
// `INSERT OR REPLACE` per put. Durable puts run with `synchronous=FULL` (the WAL is fsynced at
// every commit), lazy ones with `synchronous=OFF`; `sync` runs a full WAL checkpoint.

pub struct Sqlite {
    path: PathBuf,
    main: Mutex<rusqlite::Connection>,
}

fn sqlite_conn(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).expect("open sqlite");
    c.busy_timeout(Duration::from_secs(60)).expect("sqlite busy timeout");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
    )
    .expect("sqlite setup");
    c
}

impl Sqlite {
    fn open(dir: &Path) -> Sqlite {
        let path = dir.join("sqlite.db");
        let main = Mutex::new(sqlite_conn(&path));
        Sqlite { path, main }
    }
}

struct SqliteWorker {
    conn: rusqlite::Connection,
    synchronous_full: bool,
}

impl Worker for SqliteWorker {
    fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
        if durable != self.synchronous_full {
            let pragma = if durable {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=OFF"
            };
            self.conn.execute_batch(pragma).expect("sqlite pragma");
            self.synchronous_full = durable;
        }
        let mut st = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
            .expect("sqlite prepare");
        st.execute(rusqlite::params![key, value]).expect("sqlite insert");
    }
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        use rusqlite::OptionalExtension;
        let mut st = self
            .conn
            .prepare_cached("SELECT length(v) FROM kv WHERE k = ?1")
            .expect("sqlite prepare");
        st.query_row([key], |r| r.get::<_, i64>(0))
            .optional()
            .expect("sqlite get")
            .map(|n| n as usize)
    }
}

impl Engine for Sqlite {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(SqliteWorker {
            conn: sqlite_conn(&self.path),
            synchronous_full: true,
        })
    }
    fn sync(&self) {
        let c = self.main.lock().expect("sqlite lock");
        c.execute_batch("PRAGMA wal_checkpoint(FULL)")
            .expect("sqlite checkpoint");
        // The checkpoint fsyncs the database file; the WAL itself was written with
        // synchronous=OFF, so fsync it too.
        File::open(self.path.with_extension("db-wal"))
            .and_then(|f| f.sync_all())
            .ok();
    }
    fn compact(&mut self) {
        let c = self.main.lock().expect("sqlite lock");
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("sqlite vacuum");
    }
    fn close(self: Box<Self>) {}
}

// ---------------------------------------------------------------------------------------------
// RocksDB (feature `rocksdb`, manual runs only): `WriteOptions::set_sync(true)` for a durable
// put (fsyncs its WAL), the default (WAL written, not synced) otherwise.

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::{Engine, Worker};
    use std::path::Path;

    pub struct Rocks {
        db: rocksdb::DB,
    }

    impl Rocks {
        pub fn open(dir: &Path) -> Rocks {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            Rocks {
                db: rocksdb::DB::open(&opts, dir).expect("open rocksdb"),
            }
        }
    }

    struct RocksWorker<'a>(&'a Rocks);

    impl Worker for RocksWorker<'_> {
        fn put(&mut self, key: &[u8], value: &[u8], durable: bool) {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(durable);
            self.0.db.put_opt(key, value, &wo).expect("rocksdb put");
        }
        fn get(&mut self, key: &[u8]) -> Option<usize> {
            self.0.db.get_pinned(key).expect("rocksdb get").map(|v| v.len())
        }
    }

    impl Engine for Rocks {
        fn worker(&self) -> Box<dyn Worker + '_> {
            Box::new(RocksWorker(self))
        }
        fn sync(&self) {
            self.db.flush_wal(true).expect("rocksdb sync wal");
        }
        fn compact(&mut self) {
            self.db.flush().expect("rocksdb flush");
            self.db.compact_range::<&[u8], &[u8]>(None, None);
        }
        fn close(self: Box<Self>) {
            self.db.flush_wal(true).expect("rocksdb sync wal");
        }
    }
}
