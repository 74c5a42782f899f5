//! The public handle: [`Db`].

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::batch::{Batch, BatchOp};
use crate::checkpoint;
use crate::clock::deadline_ms;
use crate::engine::{Engine, ScanItem};
use crate::error::{Error, Result};
use crate::format::{self, Op, PAYLOAD_COUNT_SIZE};
use crate::layout::Layout;
use crate::limits;
use crate::options::{Options, RecoveryMode, SyncMode};
use crate::recovery;
use crate::stats::Stats;
use crate::wal::writer::SpareSlot;

/// An open store. `Send + Sync`: share it between threads as `Arc<Db>`.
///
/// Dropping it closes it best-effort; [`Db::close`] reports errors.
pub struct Db {
    engine: Arc<Engine>,
    threads: Vec<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the store in `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(dir, Options::default())
    }

    /// Opens (creating if needed) the store in `dir`: takes its lock, loads the newest snapshot
    /// and replays the log after it.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        options.validate()?;
        let path = dir.as_ref().to_path_buf();
        let layout = Layout::new(&path);
        let guard = recovery::lock(options.storage.as_ref(), &layout)?;
        let spare = Arc::new(SpareSlot::default());
        let recovered = recovery::recover(&layout, &options, &spare)?;
        crate::telemetry::recovered(recovered.report.duration);
        let engine = Arc::new(Engine::new(layout, options, spare, guard, recovered));
        if engine.opts.recovery_mode == RecoveryMode::Salvage && !engine.recovery.skipped.is_empty() {
            // What salvage recovered becomes the new truth before anyone reads it: a later open
            // loads this snapshot instead of judging the damaged log again (cutting a torn tail
            // can erase the later records that made salvage skip, rather than cut, earlier
            // damage, and the next reading would then differ).
            checkpoint::run(&engine)?;
        }
        let threads = start_background(&engine)?;
        Ok(Db { engine, threads, path })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets `key` to `value`. Returns once the write is durable per the [`SyncMode`].
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put_expiring(key.as_ref(), value.as_ref(), 0)
    }

    /// Sets `key` to `value`, expiring `ttl` from now: afterwards it reads as absent.
    pub fn put_with_ttl(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, ttl: Duration) -> Result<()> {
        let deadline = deadline_ms(self.engine.now_ms(), ttl);
        self.put_expiring(key.as_ref(), value.as_ref(), deadline)
    }

    fn put_expiring(&self, key: &[u8], value: &[u8], expires_at_ms: u64) -> Result<()> {
        self.check_key(key)?;
        self.check_value(value)?;
        self.engine.write_ops(&[Op::Put {
            key,
            value,
            expires_at_ms,
        }])?;
        Ok(())
    }

    /// The value of `key`, or `None` if absent or expired.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.engine.get(key.as_ref())
    }

    /// Removes `key` (a no-op write if it is absent).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.check_key(key)?;
        self.engine.write_ops(&[Op::Delete { key }])?;
        Ok(())
    }

    /// Applies `batch` atomically: after any crash, all of it or none. An empty batch is a no-op.
    pub fn write(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = self.engine.now_ms();
        let mut size = PAYLOAD_COUNT_SIZE;
        for op in &batch.ops {
            match op {
                BatchOp::Put { key, value, .. } => {
                    self.check_key(key)?;
                    self.check_value(value)?;
                    size += format::put_encoded_size(key.len(), value.len());
                }
                BatchOp::Delete { key } => {
                    self.check_key(key)?;
                    size += format::delete_encoded_size(key.len());
                }
            }
        }
        let max = self.engine.opts.batch_size_max;
        if size > max || batch.ops.len() > limits::BATCH_OPS_MAX {
            return Err(Error::TooLarge {
                what: "batch",
                size: size as u64,
                max: max as u64,
            });
        }
        let ops: Vec<Op<'_>> = batch
            .ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value, ttl } => Op::Put {
                    key,
                    value,
                    expires_at_ms: ttl.map_or(0, |t| deadline_ms(now, t)),
                },
                BatchOp::Delete { key } => Op::Delete { key },
            })
            .collect();
        self.engine.write_ops(&ops)?;
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() > limits::KEY_SIZE_MAX {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len() as u64,
                max: limits::KEY_SIZE_MAX as u64,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.engine.opts.value_size_max;
        if value.len() > max {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len() as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// Live entries whose keys start with `prefix`, in ascending key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter<'_> {
        let prefix = prefix.as_ref().to_vec();
        let upper = prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        Iter::new(&self.engine, Bound::Included(prefix), upper)
    }

    /// Live entries with keys in `range`, in ascending key order.
    /// `db.range::<&[u8], _>(..)` scans everything.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter<'_> {
        let own = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Iter::new(&self.engine, own(range.start_bound()), own(range.end_bound()))
    }

    /// Makes every write that returned before this call durable.
    pub fn sync(&self) -> Result<()> {
        self.engine.sync()
    }

    /// Writes a snapshot of the live data and deletes the log it covers. Returns when the
    /// snapshot is durable and the covered segments are gone. One checkpoint runs at a time.
    pub fn checkpoint(&self) -> Result<()> {
        checkpoint::run(&self.engine)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Writes an online, consistent backup of the store to `dest`, a directory that must not
    /// exist yet, while writers go on: one fsynced snapshot of the state at some sequence
    /// number, which opens as a store ([`crate::restore`] copies it back). See `src/backup.rs`.
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<crate::BackupReport> {
        crate::backup::run(&self.engine, dest.as_ref())
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Syncs, stops the background threads, checkpoints if automatic checkpoints are on and
    /// enough log was written, and releases the lock.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        {
            let mut bg = self.engine.background.state.lock();
            bg.shutdown = true;
            self.engine.background.cv.notify_all();
        }
        self.engine.spare.shutdown();
        for t in self.threads.drain(..) {
            // NOTE: a panicked background thread has already reported through the panic hook.
            let _ = t.join();
        }
        let engine = &self.engine;
        let mut result = Ok(());
        if engine.lock_guard.lock().is_none() {
            return result;
        }
        if !engine.is_poisoned() {
            result = engine.sync();
            let since = engine.counters.log_bytes_since_checkpoint.load(Ordering::Relaxed);
            if result.is_ok() && engine.opts.auto_checkpoint && since >= limits::CLOSE_CHECKPOINT_LOG_BYTES_MIN {
                result = checkpoint::run(engine);
            }
        } else {
            result = engine.check_poison();
        }
        // Release the lock last: nothing of ours touches the files after this.
        engine.lock_guard.lock().take();
        result
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // NOTE: best effort; close() is the way to see the error.
        let _ = self.shutdown();
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < u8::MAX {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

fn start_background(engine: &Arc<Engine>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|e| Error::io("spawn thread", name, e))
    };
    if engine.opts.preallocate_ahead {
        let e = engine.clone();
        let next = e.log.lock().active().id + 1;
        e.spare.want(next);
        threads.push(spawn(
            "sessiondb-prealloc",
            Box::new(move || e.spare.run_preparer(e.storage.as_ref(), &e.layout, e.opts.segment_size)),
        )?);
    }
    if engine.opts.auto_checkpoint {
        let e = engine.clone();
        threads.push(spawn("sessiondb-checkpoint", Box::new(move || checkpoint_loop(&e)))?);
    }
    if let SyncMode::Interval(every) = engine.opts.sync_mode {
        let e = engine.clone();
        threads.push(spawn("sessiondb-sync", Box::new(move || sync_loop(&e, every)))?);
    }
    Ok(threads)
}

fn checkpoint_loop(engine: &Engine) {
    let bg = &engine.background;
    let mut st = bg.state.lock();
    loop {
        if st.shutdown {
            return;
        }
        if st.checkpoint_wanted {
            drop(st);
            // NOTE: a failed background checkpoint leaves the old snapshot and the whole log;
            // the next trigger tries again. Log failures poison the store through sync.
            let _ = checkpoint::run(engine);
            st = bg.state.lock();
            st.checkpoint_wanted = false;
            continue;
        }
        bg.cv.wait(&mut st);
    }
}

fn sync_loop(engine: &Engine, every: Duration) {
    let bg = &engine.background;
    let mut st = bg.state.lock();
    loop {
        if st.shutdown {
            return;
        }
        let timed_out = bg.cv.wait_for(&mut st, every).timed_out();
        if timed_out && !st.shutdown {
            drop(st);
            let _ = engine.sync();
            st = bg.state.lock();
        }
    }
}

/// An iterator over live entries in key order, reading the index a chunk at a time so writers
/// are never blocked for long. Entries written during the scan may or may not be seen.
pub struct Iter<'a> {
    engine: &'a Engine,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    buffer: std::collections::VecDeque<ScanItem>,
    done: bool,
}

impl<'a> Iter<'a> {
    fn new(engine: &'a Engine, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Iter<'a> {
        let empty = match (&lower, &upper) {
            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
                l > u || (l == u && !(matches!(lower, Bound::Included(_)) && matches!(upper, Bound::Included(_))))
            }
            _ => false,
        };
        Iter {
            engine,
            lower,
            upper,
            buffer: Default::default(),
            done: empty,
        }
    }

    fn refill(&mut self) -> Result<()> {
        let chunk = self
            .engine
            .scan_chunk(as_ref_bound(&self.lower), as_ref_bound(&self.upper))?;
        match chunk.last() {
            Some((k, _, _)) => self.lower = Bound::Excluded(k.to_vec()),
            None => self.done = true,
        }
        self.buffer.extend(chunk);
        Ok(())
    }
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((key, entry, source)) = self.buffer.pop_front() {
                if !entry.is_live(self.engine.now_ms()) {
                    continue;
                }
                return Some(self.engine.read_value(&source, entry.loc).map(|v| (key.to_vec(), v)));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.refill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
