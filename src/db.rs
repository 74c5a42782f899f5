//! The public handle: [`Db`].

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{Batch, BatchOp, Expiry};
use crate::checkpoint;
use crate::clock::deadline_ms;
use crate::engine::{Engine, Entries};
use crate::error::{Conflict, Error, Result};
use crate::format::{self, Op, PAYLOAD_COUNT_SIZE};
use crate::limits;
use crate::options::{Durability, Options, RecoveryMode, SyncMode};
use crate::recovery;
use crate::stats::Stats;
use crate::storage::layout::Layout;
use crate::sync::thread::{self, JoinHandle};
use crate::wal::writer::SpareSlot;

/// A live value with its version and expiry, from [`Db::get_versioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Sequence number of the write that set it (see [`Db::get_with_version`]).
    pub version: u64,
    /// Expiry deadline in ms since the Unix epoch (on the store's clock), `None` for never.
    pub expires_at_ms: Option<u64>,
}

/// An open store. `Send + Sync`: share it between threads as `Arc<Db>`.
///
/// Dropping it closes it best-effort; [`Db::close`] reports errors.
pub struct Db {
    engine: Arc<Engine>,
    threads: Vec<JoinHandle<()>>,
    /// The commit thread, started by the first async write ([`Db::write_if_async`]).
    commit_thread: crate::sync::Mutex<Option<JoinHandle<()>>>,
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
        spare.set_pool_max(options.recycle_pool_max());
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
        Ok(Db {
            engine,
            threads,
            commit_thread: crate::sync::Mutex::new(None),
            path,
        })
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
        let op = Op::Put {
            key,
            value,
            expires_at_ms,
        };
        self.engine.write_ops(&[op], Durability::Default)?;
        Ok(())
    }

    /// The value of `key`, or `None` if absent or expired.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.get(key.as_ref())?.map(|(v, _, _)| v))
    }

    /// The value of `key` and its version, or `None` if absent or expired.
    ///
    /// The version is the sequence number of the write that set the value: it changes with
    /// every put of the key (and only then: a touch keeps it), survives reopening, and is what
    /// [`Db::put_if_version`] and [`Batch::expect_version`] compare against.
    pub fn get_with_version(&self, key: impl AsRef<[u8]>) -> Result<Option<(Vec<u8>, u64)>> {
        Ok(self.engine.get(key.as_ref())?.map(|(v, version, _)| (v, version)))
    }

    /// The live value of `key` with its version and expiry deadline.
    pub fn get_versioned(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>> {
        Ok(self
            .engine
            .get(key.as_ref())?
            .map(|(value, version, expires_at_ms)| Versioned {
                value,
                version,
                expires_at_ms: (expires_at_ms != 0).then_some(expires_at_ms),
            }))
    }

    /// The store's clock, in ms since the Unix epoch (what expiry deadlines are measured on).
    pub fn now_ms(&self) -> u64 {
        self.engine.now_ms()
    }

    /// Removes `key` (a no-op write if it is absent).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.check_key(key)?;
        self.engine.write_ops(&[Op::Delete { key }], Durability::Default)?;
        Ok(())
    }

    /// Sets `key` to `value` only if its version is `expected` (`None`: only if `key` is absent
    /// or expired), expiring after `ttl` if given. Returns the new version, or the
    /// [`Conflict`] that stopped the write. The check and the write are one step: no other
    /// write to `key` can come between them.
    pub fn put_if_version(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expected: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<Result<u64, Conflict>> {
        let mut batch = Batch::new();
        match ttl {
            Some(ttl) => batch.put_with_ttl(&key, value, ttl),
            None => batch.put(&key, value),
        };
        batch.expect_version(key, expected);
        self.write_if(batch)
    }

    /// Removes `key` only if its version is `expected`. Returns the sequence number of the
    /// delete, or the [`Conflict`] that stopped it.
    pub fn delete_if_version(&self, key: impl AsRef<[u8]>, expected: u64) -> Result<Result<u64, Conflict>> {
        let mut batch = Batch::new();
        batch.delete(&key).expect_version(key, Some(expected));
        self.write_if(batch)
    }

    /// Makes `key` expire `ttl` from now, without rewriting its value or changing its version:
    /// a small log record. Returns false (and writes nothing) if `key` is absent or expired.
    /// Durable per the store's [`SyncMode`]; see [`Db::touch_with`].
    pub fn touch(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<bool> {
        self.touch_with(key, ttl, Durability::Default)
    }

    /// [`Db::touch`] with its own [`Durability`]: `Durability::Lazy` makes a sliding-expiry
    /// touch cost no `fdatasync` of its own.
    pub fn touch_with(&self, key: impl AsRef<[u8]>, ttl: Duration, durability: Durability) -> Result<bool> {
        let mut batch = Batch::new();
        batch.touch(key, ttl).durability(durability);
        let ops = self.batch_ops(&batch)?;
        let checked = self.engine.write_checked(&ops, &[], durability)?;
        // NOTE: no preconditions, so no conflict can come back.
        Ok(checked.is_ok_and(|c| c.touched == 1))
    }

    /// Applies `batch` atomically: after any crash, all of it or none. An empty batch is a no-op.
    /// If the batch has preconditions ([`Batch::expect_version`]) and one fails, nothing is
    /// written and the error is [`Error::Conflict`]; [`Db::write_if`] returns it as a value.
    pub fn write(&self, batch: Batch) -> Result<()> {
        match self.write_if(batch)? {
            Ok(_) => Ok(()),
            Err(conflict) => Err(Error::Conflict(conflict)),
        }
    }

    /// Applies `batch` atomically if every precondition holds when it is ordered among other
    /// writes; returns the sequence number it took effect at (the version of every key it
    /// put), or the first precondition that failed. Touches of keys that are absent or expired
    /// at that moment are dropped; a batch left empty writes nothing.
    pub fn write_if(&self, batch: Batch) -> Result<Result<u64, Conflict>> {
        if batch.is_empty() && batch.expect.is_empty() {
            return Ok(Ok(self.engine.index.read().applied_seq));
        }
        let ops = self.batch_ops(&batch)?;
        let plain = batch.expect.is_empty() && !ops.iter().any(|op| matches!(op, Op::Touch { .. }));
        if plain && !ops.is_empty() {
            return self.engine.write_ops(&ops, batch.durability).map(Ok);
        }
        for (key, _) in &batch.expect {
            self.check_key(key)?;
        }
        let r = self.engine.write_checked(&ops, &batch.expect, batch.durability)?;
        Ok(r.map(|c| c.seq))
    }

    /// Checks a batch against the limits and turns it into log operations.
    fn batch_ops<'b>(&self, batch: &'b Batch) -> Result<Vec<Op<'b>>> {
        let now = self.engine.now_ms();
        let mut size = PAYLOAD_COUNT_SIZE;
        let mut ops = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            self.check_key(op.key())?;
            let op = match op {
                BatchOp::Put { key, value, expiry } => {
                    self.check_value(value)?;
                    Op::Put {
                        key,
                        value,
                        expires_at_ms: match *expiry {
                            Expiry::Never => 0,
                            Expiry::Ttl(t) => deadline_ms(now, t),
                            Expiry::At(at) => at,
                        },
                    }
                }
                BatchOp::Delete { key } => Op::Delete { key },
                BatchOp::Touch { key, ttl } => Op::Touch {
                    key,
                    version: 0, // decided under the commit lock (Engine::write_checked)
                    expires_at_ms: deadline_ms(now, *ttl),
                },
            };
            size += if self.engine.keyring.is_some() {
                format::op_encoded_size_encrypted(&op)
            } else {
                format::op_encoded_size(&op)
            };
            ops.push(op);
        }
        let max = self.engine.opts.batch_size_max;
        if size > max || batch.ops.len() > limits::BATCH_OPS_MAX {
            return Err(Error::TooLarge {
                what: "batch",
                size: size as u64,
                max: max as u64,
            });
        }
        Ok(ops)
    }

    /// Drops every expired entry from memory now (the background sweeper does this a bounded
    /// amount at a time; see [`Options::sweep_interval`]). Returns how many it dropped.
    pub fn purge_expired(&self) -> u64 {
        let mut dropped = 0;
        let mut from: Option<crate::index::Key> = None;
        loop {
            let lower = from
                .as_ref()
                .map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes()));
            let (_, d, last) = self.engine.sweep_pass(lower, limits::SWEEP_PASS_ENTRIES);
            dropped += d as u64;
            match last {
                Some(k) => from = Some(k),
                None => return dropped,
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        Error::check_size("key", key.len(), limits::KEY_SIZE_MAX)
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        Error::check_size("value", value.len(), self.engine.opts.value_size_max)
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

    /// Seals the keyring of an encrypted store under `new` from now on (durably; no data file
    /// is rewritten): later opens need `new`. Files deleted before the rotation cannot be
    /// decrypted with the keyring afterwards, even by someone who learns the old key (see
    /// docs/design.md, "Encryption at rest", for what the file system may keep).
    /// [`Error::NotEncrypted`] on a store that is not encrypted.
    pub fn rotate_key(&self, new: crate::EncryptionKey) -> Result<()> {
        self.engine.check_poison()?;
        match &self.engine.keyring {
            Some(keyring) => keyring.rotate(new),
            None => Err(Error::NotEncrypted {
                path: self.engine.layout.dir().to_path_buf(),
            }),
        }
    }

    /// Whether the store is encrypted at rest.
    pub fn is_encrypted(&self) -> bool {
        self.engine.keyring.is_some()
    }

    // -----------------------------------------------------------------------------------------
    // Async writes (docs/design.md, "Async writes")

    /// [`Db::put`] for async code. The future completes when the write is durable per the
    /// [`SyncMode`] and visible, as the blocking call returns; meanwhile no thread waits for it
    /// (the commit-group leader, or the store's commit thread, wakes the task). The write is
    /// ordered when the future is first polled; dropping it after that does not cancel the
    /// write.
    pub async fn put_async(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.check_key(key)?;
        self.check_value(value)?;
        let op = Op::Put {
            key,
            value,
            expires_at_ms: 0,
        };
        self.start_commit_thread()?;
        self.engine.write_ops_async(&[op], Durability::Default)?.await?;
        Ok(())
    }

    /// [`Db::delete`] for async code (see [`Db::put_async`]).
    pub async fn delete_async(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.check_key(key)?;
        self.start_commit_thread()?;
        self.engine
            .write_ops_async(&[Op::Delete { key }], Durability::Default)?
            .await?;
        Ok(())
    }

    /// [`Db::touch_with`] for async code (see [`Db::put_async`]).
    pub async fn touch_with_async(&self, key: impl AsRef<[u8]>, ttl: Duration, durability: Durability) -> Result<bool> {
        let mut batch = Batch::new();
        batch.touch(key, ttl).durability(durability);
        let ops = self.batch_ops(&batch)?;
        self.start_commit_thread()?;
        let checked = self.engine.write_checked_async(&ops, &[], durability).await?;
        Ok(checked.is_ok_and(|c| c.touched == 1))
    }

    /// [`Db::write`] for async code (see [`Db::put_async`]).
    pub async fn write_async(&self, batch: Batch) -> Result<()> {
        match self.write_if_async(batch).await? {
            Ok(_) => Ok(()),
            Err(conflict) => Err(Error::Conflict(conflict)),
        }
    }

    /// [`Db::write_if`] for async code (see [`Db::put_async`]): the preconditions are checked
    /// and the batch ordered in one step, as there; a decision that rests on writes not yet
    /// applied waits for them as a task, not as a thread.
    pub async fn write_if_async(&self, batch: Batch) -> Result<Result<u64, Conflict>> {
        if batch.is_empty() && batch.expect.is_empty() {
            return Ok(Ok(self.engine.index.read().applied_seq));
        }
        let ops = self.batch_ops(&batch)?;
        let plain = batch.expect.is_empty() && !ops.iter().any(|op| matches!(op, Op::Touch { .. }));
        self.start_commit_thread()?;
        if plain && !ops.is_empty() {
            return Ok(Ok(self.engine.write_ops_async(&ops, batch.durability)?.await?));
        }
        for (key, _) in &batch.expect {
            self.check_key(key)?;
        }
        let r = self
            .engine
            .write_checked_async(&ops, &batch.expect, batch.durability)
            .await?;
        Ok(r.map(|c| c.seq))
    }

    /// Starts the commit thread if it is not running: it leads the commit groups that async
    /// writers open, so that no executor thread waits for the disk.
    fn start_commit_thread(&self) -> Result<()> {
        let mut slot = self.commit_thread.lock();
        if slot.is_none() {
            let engine = self.engine.clone();
            let name = "sessiondb-commit";
            let spawned = thread::Builder::new()
                .name(name.to_string())
                .spawn(move || engine.run_commit_thread())
                .map_err(|e| Error::io("spawn thread", name, e))?;
            *slot = Some(spawned);
        }
        Ok(())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Syncs, stops the background threads, checkpoints if automatic checkpoints are on and
    /// enough log was written (not on a full disk: that checkpoint is left out, nothing is lost),
    /// and releases the lock.
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
        self.engine.stop_commit_thread();
        let commit_thread = self.commit_thread.lock().take();
        for t in self.threads.drain(..).chain(commit_thread) {
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
            let auto = engine.opts.auto_checkpoint && since >= limits::CLOSE_CHECKPOINT_LOG_BYTES_MIN;
            // With max_retention, a store at rest holds no value that is dead already.
            let dead = engine.opts.max_retention.is_some()
                && engine.retention.dead_since().is_some_and(|at| at <= engine.now_ms());
            if result.is_ok() && (auto || dead) {
                let ran = if dead {
                    retention_checkpoint(engine)
                } else {
                    checkpoint::run(engine)
                };
                result = match ran {
                    // The closing checkpoint only shortens the next open's replay: on a full
                    // disk it is left out (it took no room) and the log, durable, stays.
                    Err(e) if e.is_storage_full() => Ok(()),
                    other => other,
                };
            }
        } else {
            result = engine.check_poison();
        }
        // Segments kept to be recycled go: a closed store holds only its log and snapshots.
        // (Left behind, recovery deletes them at the next open.)
        engine
            .spare
            .remove_pool(engine.storage.as_ref(), engine.layout.wal_dir());
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
        thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|e| Error::io("spawn thread", name, e))
    };
    if engine.opts.preallocate_ahead {
        let e = engine.clone();
        let next = e.log.lock().next_segment_id();
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
    if let Some(every) = engine.opts.sweep_interval {
        let e = engine.clone();
        threads.push(spawn("sessiondb-sweep", Box::new(move || sweep_loop(&e, every)))?);
    }
    if let Some(bound) = engine.opts.max_retention {
        let e = engine.clone();
        threads.push(spawn(
            "sessiondb-retention",
            Box::new(move || retention_loop(&e, bound)),
        )?);
    }
    Ok(threads)
}

/// How long the retention thread waits, at the longest, before it looks at the store's clock
/// again: the clock may be a `ManualClock`, which moves without waking anyone, or a wall clock
/// that jumps; and nothing wakes it when a value dies.
const RETENTION_LOOK_EVERY: Duration = Duration::from_millis(100);
/// After a retention checkpoint that failed or completed none, the next waits this long,
/// doubling up to [`RETENTION_RETRY_MAX`] (a full disk is not tried in a loop).
const RETENTION_RETRY_MIN: Duration = Duration::from_secs(1);
const RETENTION_RETRY_MAX: Duration = Duration::from_secs(60);

/// `Options::max_retention`: starts a checkpoint once half of `bound` has passed, on the store's
/// clock, since the files first held a dead value (docs/design.md, "Retention"); looks at the
/// clock at least every [`RETENTION_LOOK_EVERY`].
fn retention_loop(engine: &Engine, bound: Duration) {
    let half_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX) / 2;
    note_loaded_deadlines(engine);
    let bg = &engine.background;
    let mut retry = RETENTION_RETRY_MIN;
    let mut not_before: Option<std::time::Instant> = None;
    let mut st = bg.state.lock();
    loop {
        if st.shutdown {
            return;
        }
        let now = engine.now_ms();
        let start_at = engine.retention.dead_since().map(|at| at.saturating_add(half_ms));
        let due = start_at.is_some_and(|at| at <= now);
        let held = engine.is_poisoned() || not_before.is_some_and(|t| std::time::Instant::now() < t);
        if due && !held {
            drop(st);
            let before = engine.counters.checkpoints.load(Ordering::Relaxed);
            let ran = retention_checkpoint(engine);
            if let Err(e) = &ran {
                tracing::warn!(target: "sessiondb", error = %e, "retention checkpoint failed; retrying later");
            }
            // NOTE: a failed checkpoint leaves the old snapshot and the whole log (and gives
            // back what it took from retention); it is retried after a pause.
            if ran.is_ok() && engine.counters.checkpoints.load(Ordering::Relaxed) > before {
                (retry, not_before) = (RETENTION_RETRY_MIN, None);
            } else {
                not_before = Some(std::time::Instant::now() + retry);
                retry = (retry * 2).min(RETENTION_RETRY_MAX);
            }
            engine.retention.checked_ms.store(now, Ordering::Relaxed);
            st = bg.state.lock();
            continue;
        }
        engine.retention.checked_ms.store(now, Ordering::Relaxed);
        let wait = match start_at {
            Some(at) if at > now => Duration::from_millis(at - now).min(RETENTION_LOOK_EVERY),
            _ => RETENTION_LOOK_EVERY,
        };
        bg.cv.wait_for(&mut st, wait);
    }
}

/// A checkpoint for `Options::max_retention`. When nothing was written since the last
/// checkpoint, the dead values are expired entries of its snapshot, which only a new snapshot
/// drops, and a checkpoint needs a write to cover: a record that changes nothing.
fn retention_checkpoint(engine: &Engine) -> Result<()> {
    engine.retention.checkpoints.fetch_add(1, Ordering::Relaxed);
    let applied = engine.index.read().applied_seq;
    let last = engine.snapshots.lock().last().map(|s| s.0);
    if last == Some(applied) {
        engine.write_nothing()?;
    }
    checkpoint::run(engine)
}

/// Notes the earliest expiry deadline among the entries the open loaded (an expired entry is
/// dead from its deadline on), reading the index a chunk at a time as a checkpoint copies it.
fn note_loaded_deadlines(engine: &Engine) {
    let mut lower: Bound<crate::index::Key> = Bound::Unbounded;
    let mut deadline = u64::MAX;
    loop {
        let chunk = engine
            .index
            .read()
            .range_chunk(lower.as_ref().map(|k| k.as_bytes()), Bound::Unbounded, 1024);
        let Some(last) = chunk.last().map(|(k, _)| k.clone()) else {
            break;
        };
        for (_, e) in &chunk {
            if e.expires_at_ms != 0 {
                deadline = deadline.min(e.expires_at_ms);
            }
        }
        lower = Bound::Excluded(last);
        if engine.background.state.lock().shutdown {
            return;
        }
    }
    engine.retention.loaded_deadline(deadline);
}

/// The expiry sweeper: every `every`, a round of bounded passes that walks the index a chunk at
/// a time (resuming where the last pass stopped), dropping expired entries. A round goes on
/// while a quarter or more of what a pass saw had expired, up to a bound, like Redis's active
/// expiry; the cursor wraps at the end of the index.
fn sweep_loop(engine: &Engine, every: Duration) {
    let mut cursor: Option<crate::index::Key> = None;
    every_interval(engine, every, || {
        for _ in 0..limits::SWEEP_ROUND_PASSES_MAX {
            let lower = cursor
                .as_ref()
                .map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes()));
            let (examined, dropped, last) = engine.sweep_pass(lower, limits::SWEEP_PASS_ENTRIES);
            cursor = last;
            if cursor.is_none() || dropped * 4 < examined.max(1) {
                break;
            }
        }
    });
}

/// Runs `work` every `every` until shutdown, skipping rounds while the store is poisoned. The
/// rounds keep to their times whatever else wakes the thread (the background threads share one
/// condition variable, which checkpoint requests notify too).
fn every_interval(engine: &Engine, every: Duration, mut work: impl FnMut()) {
    let bg = &engine.background;
    let mut next = std::time::Instant::now() + every;
    let mut st = bg.state.lock();
    loop {
        if st.shutdown {
            return;
        }
        let now = std::time::Instant::now();
        if now < next {
            bg.cv.wait_for(&mut st, next - now);
            continue;
        }
        next = now + every;
        if engine.is_poisoned() {
            continue;
        }
        drop(st);
        work();
        st = bg.state.lock();
    }
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
            let before = engine.counters.checkpoints.load(Ordering::Relaxed);
            let ran = checkpoint::run(engine);
            if let Err(e) = &ran {
                tracing::warn!(target: "sessiondb", error = %e, "background checkpoint failed");
            }
            let wrote = engine.counters.checkpoints.load(Ordering::Relaxed) > before;
            st = bg.state.lock();
            // A request made while this one ran found it wanted already and was dropped: if
            // the log is still over the threshold, go again (only after a checkpoint that wrote
            // a snapshot: a failure is retried by the next write's request, not in a loop).
            let since = engine.counters.log_bytes_since_checkpoint.load(Ordering::Relaxed);
            st.checkpoint_wanted = ran.is_ok() && wrote && since >= engine.opts.checkpoint_log_bytes;
            continue;
        }
        bg.cv.wait(&mut st);
    }
}

fn sync_loop(engine: &Engine, every: Duration) {
    every_interval(engine, every, || {
        let _ = engine.sync();
    });
}

/// An iterator over live entries in key order, reading the index a chunk at a time so writers
/// are never blocked for long. Entries written during the scan may or may not be seen; 256
/// entries at a time are read at one moment, so a scan of a range that holds fewer sees the
/// store as it was at one moment (never half of a batch).
pub struct Iter<'a> {
    entries: Entries<'a>,
}

impl<'a> Iter<'a> {
    fn new(engine: &'a Engine, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Iter<'a> {
        Iter {
            entries: Entries::new(engine, lower, upper),
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.entries.next()?.map(|live| (live.key.to_vec(), live.value)))
    }
}
