//! The engine shared by a [`crate::Db`] handle and its background threads: the write path
//! (group commit), reads, sync. Checkpoints live in `checkpoint.rs`, opening in `recovery.rs`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sync::thread::{self, Thread};
use crate::sync::{self, Condvar, Mutex, MutexGuard, RwLock};

use crate::error::Conflict;

use crate::error::{show_key, Error, Result};
use crate::format::{self, Op, RECORD_HEADER_SIZE};
use crate::index::{entry_seq, Entry, FileId, Index, Key, Loc, Source, SourceData};
use crate::limits;
use crate::options::{Durability, Options};
use crate::stats::{RecoveryReport, Stats};
use crate::storage::layout::Layout;
use crate::storage::{read_exact_at, LockGuard, Storage};
use crate::telemetry::Telemetry;
use crate::wal::writer::{FsyncGate, LogWriter, PendingRecord, Placement, SegmentFile, SpareSlot};

/// An index change a record makes once durable.
enum Apply {
    Put {
        key: Key,
        /// Offset of the value within the record's payload.
        value_at: usize,
        value_len: u32,
        expires_at_ms: u64,
    },
    Delete {
        key: Key,
    },
    Touch {
        key: Key,
        version: u64,
        expires_at_ms: u64,
    },
}

/// Payload buffers up to this size are kept for the thread's next write.
const SPARE_PAYLOAD_MAX: usize = 16 * 1024;

thread_local! {
    /// An empty payload buffer for this thread's next write.
    static SPARE_PAYLOAD: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The index changes of one record: a single put or delete needs no list of its own.
enum Applies {
    One(Apply),
    Many(Vec<Apply>),
}

impl Applies {
    fn as_slice(&self) -> &[Apply] {
        match self {
            Applies::One(a) => std::slice::from_ref(a),
            Applies::Many(v) => v,
        }
    }
}

impl IntoIterator for Applies {
    type Item = Apply;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Apply>, std::vec::IntoIter<Apply>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Applies::One(a) => Some(a).into_iter().chain(Vec::new()),
            Applies::Many(v) => None.into_iter().chain(v),
        }
    }
}

/// A record ready to join a commit group.
struct Prepared {
    payload: Vec<u8>,
    applies: Applies,
    /// Its commit group must be synced before it returns (its [`Durability`] under the mode).
    sync: bool,
}

/// A write ordered (given a sequence number) but not yet applied to the index: what version
/// checks and the expiry sweeper must see besides the index.
struct Pending {
    seq: u64,
    key: Key,
    what: PendingWhat,
}

#[derive(Clone, Copy)]
enum PendingWhat {
    Put { expires_at_ms: u64 },
    Delete,
    Touch { version: u64, expires_at_ms: u64 },
}

/// A live value's version and expiry deadline.
type VersionAndExpiry = (u64, u64);

/// What a checked write does, decided under the commit lock.
enum Decision<'o> {
    Conflict(Conflict),
    /// Write these (touches of keys not live left out); `touched` counts the touches kept.
    Write {
        resolved: Vec<Op<'o>>,
        touched: usize,
    },
}

/// What a checked write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Sequence number of its record; with nothing to write, of the last write ordered before it.
    pub seq: u64,
    /// Touches that found their key live (the others were dropped).
    pub touched: usize,
}

/// Where a checkpoint's snapshot starts, and what it may drop as expired.
pub(crate) struct RollPoint {
    /// Every write up to here is in the index and in sealed, synced segments.
    pub base: u64,
    /// The clock when the base was fixed. Every touch ordered after the base was decided at or
    /// after this, so an entry expired by then has no later touch to replay, unless one was
    /// already waiting: those keys are in `pending`.
    pub cut_ms: u64,
    /// Keys with writes ordered but not yet applied at the base (the forming commit group).
    pub pending: Vec<Key>,
    /// Log bytes written since the last checkpoint, at the base (the new segment's header
    /// included): what this checkpoint takes off the count that triggers the next one.
    pub log_bytes: u64,
}

/// The outcome every writer of a group waits for.
///
/// Each waiting writer parks its own thread and the leader unparks them one by one, so the
/// woken writers run at once. (With a mutex and a condition variable they were handed the mutex
/// one after another, each woken only when the previous one let go: on two CPUs the last writer
/// of a group of 16 came back to write its next record long after the first.)
#[derive(Default)]
struct GroupWait {
    /// Set once, by the leader.
    outcome: OnceLock<Result<()>>,
    /// The threads waiting for the outcome.
    waiters: Mutex<Vec<Thread>>,
}

impl GroupWait {
    fn complete(&self, result: &Result<()>) {
        let copy = match result {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        };
        // NOTE: set before the waiters are taken: a writer that registers after that finds the
        // outcome when it looks (its lock of `waiters` follows this one's).
        let first = self.outcome.set(copy).is_ok();
        debug_assert!(first, "a group completes once");
        for waiter in self.waiters.lock().drain(..) {
            waiter.unpark();
        }
    }

    fn wait(&self) -> Result<()> {
        self.waiters.lock().push(thread::current());
        loop {
            match self.outcome.get() {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e.duplicate()),
                // Parks until unparked by `complete` (or spuriously: the loop looks again).
                None => thread::park(),
            }
        }
    }
}

/// The forming commit group and who leads.
#[derive(Default)]
pub(crate) struct CommitState {
    next_seq: u64,
    records: Vec<PendingRecord>,
    applies: Vec<Applies>,
    group: Option<Arc<GroupWait>>,
    leader_active: bool,
    /// Whether the forming group must be synced (some record in it asked for that).
    group_sync: bool,
    /// Writes ordered but not yet applied, in sequence order: the forming group and the one in
    /// flight. Version checks read it before the index; the leader drains it after applying.
    pending: VecDeque<Pending>,
    /// Emptied buffers of the last group, reused for the next (no allocation per group).
    spare_records: Vec<PendingRecord>,
    spare_applies: Vec<Applies>,
    spare_placed: Vec<(u64, u64)>,
}

impl CommitState {
    /// The live version of `key` and its expiry, as the writes ordered so far leave it: the
    /// pending writes over the index.
    fn current(&self, index: &Index, key: &[u8], now_ms: u64) -> Option<VersionAndExpiry> {
        let live = |version: u64, expires_at_ms: u64| {
            (expires_at_ms == 0 || expires_at_ms > now_ms).then_some((version, expires_at_ms))
        };
        // The newest touch seen so far (scanning newest first) applies to the value under it.
        let mut touch: Option<VersionAndExpiry> = None;
        for p in self.pending.iter().rev().filter(|p| p.key.as_bytes() == key) {
            match p.what {
                PendingWhat::Touch { version, expires_at_ms } => {
                    touch.get_or_insert((version, expires_at_ms));
                }
                PendingWhat::Put { expires_at_ms } => {
                    let expires = touch.filter(|t| t.0 == p.seq).map_or(expires_at_ms, |t| t.1);
                    return live(p.seq, expires);
                }
                PendingWhat::Delete => return None,
            }
        }
        let e = index.get(key)?;
        let seq = e.seq.get();
        let expires = touch.filter(|t| t.0 == seq).map_or(e.expires_at_ms, |t| t.1);
        live(seq, expires)
    }

    fn is_pending(&self, key: &[u8]) -> bool {
        self.pending.iter().any(|p| p.key.as_bytes() == key)
    }
}

/// Counters for [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub commit_groups: AtomicU64,
    pub records: AtomicU64,
    pub commit_group_size_max: AtomicU64,
    pub commit_group_sizes: [AtomicU64; 8],
    pub checkpoints: AtomicU64,
    pub log_bytes_since_checkpoint: AtomicU64,
    pub writers_waiting: AtomicU64,
    pub expired_swept: AtomicU64,
    /// fsync latency, checkpoint durations and bytes.
    pub telemetry: Telemetry,
}

/// Signals to the background threads.
#[derive(Default)]
pub(crate) struct Background {
    pub state: Mutex<BackgroundState>,
    pub cv: Condvar,
}

#[derive(Default)]
pub(crate) struct BackgroundState {
    pub shutdown: bool,
    pub checkpoint_wanted: bool,
}

/// Everything recovery hands to the engine.
pub(crate) struct Recovered {
    pub index: Index,
    pub log: LogWriter,
    pub next_seq: u64,
    pub durable_seq: u64,
    /// `(base_seq, file size)` of each snapshot on disk, oldest first.
    pub snapshots: Vec<(u64, u64)>,
    pub log_bytes_since_checkpoint: u64,
    pub report: RecoveryReport,
}

pub(crate) struct Engine {
    pub layout: Layout,
    pub opts: Options,
    pub storage: Arc<dyn Storage>,
    pub index: RwLock<Index>,
    pub log: Mutex<LogWriter>,
    commit: Mutex<CommitState>,
    leader_cv: Condvar,
    /// Highest sequence number known durable.
    pub durable_seq: sync::AtomicU64,
    poisoned: sync::AtomicBool,
    poison_cause: Mutex<Option<String>>,
    pub spare: Arc<SpareSlot>,
    /// Held for the whole of a checkpoint: one at a time.
    pub checkpoint_lock: Mutex<()>,
    /// `(base_seq, file size)` of each snapshot on disk, oldest first.
    pub snapshots: Mutex<Vec<(u64, u64)>>,
    pub counters: Counters,
    pub background: Background,
    pub lock_guard: Mutex<Option<LockGuard>>,
    pub recovery: RecoveryReport,
    /// The latest time [`Engine::now_ms`] returned (a protocol atomic: expiry decisions on
    /// different threads rest on it).
    clock_floor: sync::AtomicU64,
    /// Every fsync of the log goes through it (the log writer's own seals too).
    fsync: Arc<FsyncGate>,
}

/// Commit leadership taken by [`Engine::lead_alone`]; handed back when dropped (also when the
/// holder fails or panics: a leadership never handed back would stop every writer).
pub(crate) struct Leadership<'e>(&'e Engine);

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the holder was doing is half done (a roll, say): nothing more is written.
            self.0.poison(&Error::Poisoned {
                cause: "a thread holding commit leadership panicked".into(),
            });
        }
        self.0.commit.lock().leader_active = false;
        self.0.leader_cv.notify_all();
    }
}

/// An entry of a scan with the file to read its value from.
pub(crate) type ScanItem = (Key, Entry, Source);

/// Entries fetched per index lock hold in scans.
const SCAN_CHUNK: usize = 256;

impl Engine {
    pub(crate) fn new(layout: Layout, opts: Options, spare: Arc<SpareSlot>, guard: LockGuard, r: Recovered) -> Engine {
        let counters = Counters::default();
        counters
            .log_bytes_since_checkpoint
            .store(r.log_bytes_since_checkpoint, Ordering::Relaxed);
        let fsync = r.log.fsync_gate();
        Engine {
            fsync,
            storage: opts.storage.clone(),
            layout,
            opts,
            index: RwLock::new(r.index),
            log: Mutex::new(r.log),
            commit: Mutex::new(CommitState {
                next_seq: r.next_seq,
                ..CommitState::default()
            }),
            leader_cv: Condvar::new(),
            durable_seq: sync::AtomicU64::new(r.durable_seq),
            poisoned: sync::AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            spare,
            checkpoint_lock: Mutex::new(()),
            snapshots: Mutex::new(r.snapshots),
            counters,
            background: Background::default(),
            lock_guard: Mutex::new(Some(guard)),
            recovery: r.report,
            clock_floor: sync::AtomicU64::new(0),
        }
    }

    /// The store's time for expiry: the clock, except that it never goes back. Expiry
    /// decisions lean on that: a touch decided after a checkpoint fixed its cut finds its entry
    /// live at the cut too, so the snapshot holds it (docs/design.md, "Concurrency"); and a
    /// wall clock stepped back must not revive entries already read as expired.
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.opts.clock.now_ms();
        let floor = self.clock_floor.load(Ordering::Acquire);
        if now <= floor {
            return floor;
        }
        self.clock_floor.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// Runs the test hook at `point` (builds with the `sim` feature; nothing otherwise).
    #[cfg(feature = "sim")]
    pub(crate) fn point(&self, point: crate::storage::sim::Point) {
        if let Some(hook) = &self.opts.on_point {
            hook(point);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Poisoning

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let cause = self.poison_cause.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    pub(crate) fn poison(&self, err: &Error) {
        let mut cause = self.poison_cause.lock();
        if cause.is_none() {
            *cause = Some(err.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    // -----------------------------------------------------------------------------------------
    // Write path

    /// Writes `ops` as one record and returns its sequence number once it is durable (per
    /// `durability` and the sync mode) and applied to the index. Limits are checked by the
    /// caller. Touches need a decision under the commit lock: they go through [`Engine::write_checked`].
    pub(crate) fn write_ops(&self, ops: &[Op<'_>], durability: Durability) -> Result<u64> {
        debug_assert!(!ops.iter().any(|op| matches!(op, Op::Touch { .. })));
        let prepared = self.prepare(ops, durability);
        let st = self.commit.lock();
        self.check_poison()?;
        self.join(st, prepared)
    }

    /// Writes `ops` as one record if every precondition in `expect` holds when the record is
    /// ordered; touches (`Op::Touch`, whose `version` is filled in here) are kept only for keys
    /// live at that moment. Decided and encoded under the commit lock, so no write can come
    /// between the check and the record.
    pub(crate) fn write_checked(
        &self,
        ops: &[Op<'_>],
        expect: &[(Vec<u8>, Option<u64>)],
        durability: Durability,
    ) -> Result<Result<Checked, Conflict>> {
        let mut st = self.commit.lock();
        loop {
            self.check_poison()?;
            let seq = st.next_seq;
            let outcome = match self.decide(&st, ops, expect) {
                Decision::Write { resolved, touched } if !resolved.is_empty() => {
                    let prepared = self.prepare(&resolved, durability);
                    // Returns once its group is applied, and so every write ordered before it.
                    return self.join(st, prepared).map(|seq| Ok(Checked { seq, touched }));
                }
                Decision::Write { touched, .. } => Ok(Checked { seq: seq - 1, touched }),
                Decision::Conflict(c) => Err(c),
            };
            // Decided without writing: the outcome rests on the writes ordered so far, some
            // perhaps not yet applied (in `SyncMode::Always` not before their fsync). Returned
            // now, a conflict could name a version that no read can see yet, and a touch could
            // find nothing where a read still finds the value. So it is returned only once no
            // write to its keys is pending, and decided again after each wait (the writes
            // applied meanwhile may change it): linearizable.
            let involved = |k: &[u8]| expect.iter().any(|(e, _)| e == k) || ops.iter().any(|op| op.key() == k);
            if !st.pending.iter().any(|p| involved(p.key.as_bytes())) {
                return Ok(outcome);
            }
            self.leader_cv.wait(&mut st);
        }
    }

    /// What a checked write does if ordered now: the first precondition that fails, or the
    /// operations to write (touches of keys that are not live left out).
    fn decide<'o>(&self, st: &CommitState, ops: &[Op<'o>], expect: &[(Vec<u8>, Option<u64>)]) -> Decision<'o> {
        let now = self.now_ms();
        let seq = st.next_seq;
        let mut resolved: Vec<Op<'o>> = Vec::with_capacity(ops.len());
        let mut touched = 0;
        let index = self.index.read();
        for (key, expected) in expect {
            let actual = st.current(&index, key, now).map(|c| c.0);
            if actual != *expected {
                return Decision::Conflict(Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }
        // Keys this batch already wrote, newest last: a touch after a put in the same batch
        // touches that put (version = this record's sequence number).
        let mut mine: Vec<(&[u8], Option<VersionAndExpiry>)> = Vec::new();
        for op in ops {
            match *op {
                Op::Put { key, expires_at_ms, .. } => mine.push((key, Some((seq, expires_at_ms)))),
                Op::Delete { key } => mine.push((key, None)),
                Op::Touch { key, expires_at_ms, .. } => {
                    let before = match mine.iter().rev().find(|m| m.0 == key) {
                        Some(m) => m.1.filter(|&(_, e)| e == 0 || e > now),
                        None => st.current(&index, key, now),
                    };
                    let Some((version, _)) = before else { continue };
                    mine.push((key, Some((version, expires_at_ms))));
                    touched += 1;
                    resolved.push(Op::Touch {
                        key,
                        version,
                        expires_at_ms,
                    });
                    continue;
                }
            }
            resolved.push(*op);
        }
        Decision::Write { resolved, touched }
    }

    /// Encodes `ops` as a record payload and works out the index changes it makes.
    fn prepare(&self, ops: &[Op<'_>], durability: Durability) -> Prepared {
        let size = ops
            .iter()
            .fold(format::PAYLOAD_COUNT_SIZE, |n, op| n + format::op_encoded_size(op));
        let mut payload = SPARE_PAYLOAD.with(Cell::take);
        payload.reserve(size);
        format::encode_ops(&mut payload, ops);
        // Each value's offset within the payload follows from the layout (format.rs).
        let mut at = format::PAYLOAD_COUNT_SIZE;
        let mut apply = |op: &Op<'_>| {
            let apply = match *op {
                Op::Put {
                    key,
                    value,
                    expires_at_ms,
                } => Apply::Put {
                    key: key.into(),
                    value_at: format::put_value_offset(at, key.len()),
                    // NOTE: cannot truncate: value_len <= VALUE_SIZE_MAX_LIMIT (limits.rs).
                    value_len: value.len() as u32,
                    expires_at_ms,
                },
                Op::Delete { key } => Apply::Delete { key: key.into() },
                Op::Touch {
                    key,
                    version,
                    expires_at_ms,
                } => Apply::Touch {
                    key: key.into(),
                    version,
                    expires_at_ms,
                },
            };
            at += format::op_encoded_size(op);
            apply
        };
        let applies = match ops {
            [op] => Applies::One(apply(op)),
            _ => Applies::Many(ops.iter().map(apply).collect()),
        };
        debug_assert_eq!(at, payload.len(), "the payload is as long as its layout says");
        debug_assert!(
            payload_decodes_to(&payload, ops),
            "the payload decodes to what was asked"
        );
        Prepared {
            payload,
            applies,
            sync: durability.needs_sync(self.opts.sync_mode),
        }
    }

    /// Orders `prepared` (gives it the next sequence number) in the forming commit group and
    /// waits for it; the group's first writer leads it once the previous group is done.
    fn join(&self, mut st: MutexGuard<'_, CommitState>, prepared: Prepared) -> Result<u64> {
        let seq = st.next_seq;
        if seq > limits::SEQ_MAX {
            // Recovery reads no sequence number above SEQ_MAX, so none is ever written.
            return Err(Error::TooLarge {
                what: "sequence number",
                size: seq,
                max: limits::SEQ_MAX,
            });
        }
        st.next_seq += 1;
        for a in prepared.applies.as_slice() {
            let (key, what) = match a {
                Apply::Put { key, expires_at_ms, .. } => (
                    key,
                    PendingWhat::Put {
                        expires_at_ms: *expires_at_ms,
                    },
                ),
                Apply::Delete { key } => (key, PendingWhat::Delete),
                Apply::Touch {
                    key,
                    version,
                    expires_at_ms,
                } => (
                    key,
                    PendingWhat::Touch {
                        version: *version,
                        expires_at_ms: *expires_at_ms,
                    },
                ),
            };
            st.pending.push_back(Pending {
                seq,
                key: key.clone(),
                what,
            });
        }
        st.group_sync |= prepared.sync;
        st.records.push(PendingRecord {
            seq,
            payload: prepared.payload,
        });
        st.applies.push(prepared.applies);
        if let Some(group) = &st.group {
            let group = group.clone();
            drop(st);
            self.counters.writers_waiting.fetch_add(1, Ordering::Relaxed);
            let r = group.wait().map(|()| seq);
            self.counters.writers_waiting.fetch_sub(1, Ordering::Relaxed);
            return r;
        }
        let group = if st.leader_active {
            // A group is in flight: this writer opens the next one and leads it when the
            // previous leader is done; meanwhile others join it.
            let group = Arc::new(GroupWait::default());
            st.group = Some(group.clone());
            self.counters.writers_waiting.fetch_add(1, Ordering::Relaxed);
            while st.leader_active {
                self.leader_cv.wait(&mut st);
            }
            self.counters.writers_waiting.fetch_sub(1, Ordering::Relaxed);
            st.group = None;
            Some(group)
        } else {
            // Nothing in flight: lead at once. The commit lock is held from the push above to
            // taking leadership, so nobody joined and there is nobody to wake (a lone writer, as
            // in a bulk load, allocates no group).
            debug_assert_eq!(st.records.len(), 1);
            None
        };
        st.leader_active = true;
        let sync = std::mem::take(&mut st.group_sync);
        let spare_records = std::mem::take(&mut st.spare_records);
        let spare_applies = std::mem::take(&mut st.spare_applies);
        let mut records = std::mem::replace(&mut st.records, spare_records);
        let mut applies = std::mem::replace(&mut st.applies, spare_applies);
        let mut placed = std::mem::take(&mut st.spare_placed);
        drop(st);

        // A panic while leading (a bug, or a storage that panics) must not leave leadership
        // taken and the group waiting forever: the store is poisoned, leadership handed back,
        // the group told, and then the panic goes on in this thread.
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.lead(&records, &mut applies, &mut placed, sync)
        }));
        let (result, panicked) = match led {
            Ok(result) => (result, None),
            Err(panic) => {
                let e = Error::Poisoned {
                    cause: "a commit group's leader panicked".into(),
                };
                self.poison(&e);
                (Err(e), Some(panic))
            }
        };
        let last_seq = records.last().map_or(0, |r| r.seq);
        // A lone writer's payload buffer goes back to it for its next put (no allocation per
        // put in a bulk load); in a group, the leader keeps one.
        SPARE_PAYLOAD.with(|spare| {
            let mut kept = spare.take();
            for rec in records.drain(..) {
                if kept.capacity() == 0 && rec.payload.capacity() <= SPARE_PAYLOAD_MAX {
                    kept = rec.payload;
                    kept.clear();
                }
            }
            spare.set(kept);
        });
        applies.clear();
        placed.clear();
        // Hand over leadership before waking this group: the next group starts its I/O at once.
        {
            let mut st = self.commit.lock();
            st.leader_active = false;
            st.spare_records = records;
            st.spare_applies = applies;
            st.spare_placed = placed;
            if result.is_ok() {
                // Applied: the index now answers for these writes.
                while st.pending.front().is_some_and(|p| p.seq <= last_seq) {
                    st.pending.pop_front();
                }
            }
        }
        self.leader_cv.notify_all();
        if let Some(group) = group {
            group.complete(&result);
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        result.map(|()| seq)
    }

    /// The leader's work: one write (per segment touched), one fsync if any record of the group
    /// needs it (`sync`), then the index. Any failure poisons the store; the group's writers all
    /// get the error.
    fn lead(
        &self,
        records: &[PendingRecord],
        applies: &mut Vec<Applies>,
        placed: &mut Vec<(u64, u64)>,
        sync: bool,
    ) -> Result<()> {
        self.check_poison()?;
        let last_seq = records.last().map_or(0, |r| r.seq);
        let (placement, active) = {
            let mut log = self.log.lock();
            let durable = self.durable_seq.load(Ordering::Acquire);
            let bytes_before = log.bytes_written;
            let appended = log.append(records, durable, placed, |sealed_through| {
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.durable_seq.fetch_max(sealed_through, Ordering::AcqRel);
            });
            let placement = appended.inspect_err(|e| self.poison(e))?;
            let written = log.bytes_written - bytes_before;
            self.counters
                .log_bytes_since_checkpoint
                .fetch_add(written, Ordering::Relaxed);
            (placement, (log.active().id, log.active().file.clone()))
        };
        self.count_group(records.len());
        // NOTE: the fsync runs without the log mutex, so stats() and sync() never wait behind a
        // slow disk; leadership alone keeps groups in order, and a segment is only ever sealed
        // by the leader.
        if sync {
            let (active_id, active_file) = active;
            let started = std::time::Instant::now();
            let path = self.layout.segment(active_id);
            self.fsync
                .sync_data(active_file.as_ref(), &path)
                .inspect_err(|e| self.poison(e))?;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.counters.telemetry.fsync(started.elapsed());
            self.durable_seq.fetch_max(last_seq, Ordering::AcqRel);
        }
        self.apply(records, applies, placement, placed);
        self.maybe_request_checkpoint();
        Ok(())
    }

    /// Takes commit leadership, so no commit group is in flight until the returned guard is
    /// dropped: every record in the log is applied to the index, and the log ends at a record
    /// boundary that readers already see. `read` runs under the commit lock as leadership is
    /// taken (the forming group's writes are in `pending`, ordered after everything in the log);
    /// the lock is released before this returns, and writers queue behind the leadership.
    pub(crate) fn lead_alone<T>(&self, read: impl FnOnce(&CommitState) -> T) -> (Leadership<'_>, T) {
        let mut st = self.commit.lock();
        while st.leader_active {
            self.leader_cv.wait(&mut st);
        }
        st.leader_active = true;
        let read = read(&st);
        (Leadership(self), read)
    }

    /// Rolls the log at a quiet point for a checkpoint and returns the sequence number it ends
    /// at, which becomes the snapshot's base. Holds leadership so no group is in flight: the
    /// index reflects exactly the writes up to the returned sequence number.
    pub(crate) fn roll_for_checkpoint(&self) -> Result<RollPoint> {
        // With no leader, what is pending is the forming group, ordered after the base.
        let (_leading, (cut_ms, pending)) = self.lead_alone(|st| {
            let pending: Vec<Key> = st.pending.iter().map(|p| p.key.clone()).collect();
            (self.now_ms(), pending)
        });
        self.check_poison()?;
        let mut log = self.log.lock();
        let base = log.written_seq;
        let rolled = log.roll_for_checkpoint().inspect_err(|e| self.poison(e))?;
        drop(log);
        let mut index = self.index.write();
        if let Some((sealed, active)) = rolled {
            self.counters.fsyncs.fetch_add(2, Ordering::Relaxed);
            self.durable_seq.fetch_max(base, Ordering::AcqRel);
            index.set_source(sealed_source(&sealed));
            index.set_source(Source::file(FileId::Segment(active.id), active.file.clone()));
        }
        debug_assert_eq!(index.applied_seq, base, "no group is in flight");
        // Everything up to the base is in the index now and will be in the snapshot.
        index.freeze();
        // The log the snapshot will cover, read before any writer goes on.
        let log_bytes = self.counters.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        Ok(RollPoint {
            base,
            cut_ms,
            pending,
            log_bytes,
        })
    }

    fn apply(
        &self,
        records: &[PendingRecord],
        applies: &mut Vec<Applies>,
        placement: Placement,
        placed: &[(u64, u64)],
    ) {
        debug_assert_eq!(records.len(), placed.len());
        let mut index = self.index.write();
        for seg in placement.sealed {
            index.set_source(sealed_source(&seg));
        }
        for seg in placement.activated {
            index.set_source(Source::file(FileId::Segment(seg.id), seg.file.clone()));
        }
        for ((rec, ops), (segment, offset)) in records.iter().zip(applies.drain(..)).zip(placed.iter().copied()) {
            let payload_at = offset + RECORD_HEADER_SIZE as u64;
            let slot = index.slot(FileId::Segment(segment));
            for op in ops {
                match op {
                    Apply::Put {
                        key,
                        value_at,
                        value_len,
                        expires_at_ms,
                    } => {
                        // NOTE: cannot truncate: records are bounded by RECORD_PAYLOAD_MAX < 1 GiB.
                        let loc = Loc {
                            offset: payload_at + value_at as u64,
                            slot,
                            len: value_len,
                            record_back: (RECORD_HEADER_SIZE + value_at) as u32,
                            record_len: (RECORD_HEADER_SIZE + rec.payload.len()) as u32,
                        };
                        index.put(
                            key,
                            Entry {
                                seq: entry_seq(rec.seq),
                                expires_at_ms,
                                loc,
                            },
                        );
                    }
                    Apply::Delete { key } => index.delete(&key),
                    Apply::Touch {
                        key,
                        version,
                        expires_at_ms,
                    } => index.touch(&key, version, expires_at_ms),
                }
            }
            debug_assert!(rec.seq > index.applied_seq);
            index.applied_seq = rec.seq;
        }
    }

    fn count_group(&self, size: usize) {
        let c = &self.counters;
        c.commit_groups.fetch_add(1, Ordering::Relaxed);
        c.records.fetch_add(size as u64, Ordering::Relaxed);
        c.commit_group_size_max.fetch_max(size as u64, Ordering::Relaxed);
        let bucket = (usize::BITS - 1 - size.max(1).leading_zeros()) as usize;
        c.commit_group_sizes[bucket.min(7)].fetch_add(1, Ordering::Relaxed);
        c.telemetry.commit_group(size);
    }

    fn maybe_request_checkpoint(&self) {
        if !self.opts.auto_checkpoint {
            return;
        }
        let since = self.counters.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        if since >= self.opts.checkpoint_log_bytes {
            let mut bg = self.background.state.lock();
            if !bg.checkpoint_wanted {
                bg.checkpoint_wanted = true;
                self.background.cv.notify_all();
            }
        }
    }

    /// Makes every write handed to the OS so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.check_poison()?;
        let (file, path, target) = {
            let log = self.log.lock();
            let active = log.active();
            (active.file.clone(), active.path.clone(), log.written_seq)
        };
        if self.durable_seq.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        // NOTE: no lock of the engine is held across the fsync (only the fsync gate, which
        // orders fsyncs of the log); a segment sealed meanwhile was fsynced by the roll, so
        // syncing the segment that was active covers everything up to `target`.
        let started = std::time::Instant::now();
        self.fsync
            .sync_data(file.as_ref(), &path)
            .inspect_err(|e| self.poison(e))?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.counters.telemetry.fsync(started.elapsed());
        self.durable_seq.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    /// The live value of `key`, its version and its expiry deadline (0: none).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64, u64)>> {
        let now = self.now_ms();
        let found = {
            let index = self.index.read();
            match index.get(key) {
                Some(e) if e.is_live(now) => Some((e, self.source_of(&index, key, e.loc)?)),
                _ => None,
            }
        };
        match found {
            Some((entry, source)) => Ok(Some((
                self.read_value(&source, key, &entry)?,
                entry.seq.get(),
                entry.expires_at_ms,
            ))),
            None => Ok(None),
        }
    }

    /// One bounded pass of the expiry sweeper over up to `max` entries after `from`: drops the
    /// expired ones from the index (their bytes go at the next checkpoint). Holds the commit
    /// lock, so no touch can be decided meanwhile, and skips keys with a write pending, so a
    /// touch ordered before the pass still finds its entry. Returns `(examined, dropped, last
    /// key examined)`; `None` when the pass reached the end of the index.
    pub(crate) fn sweep_pass(&self, from: Bound<&[u8]>, max: usize) -> (usize, usize, Option<Key>) {
        let st = self.commit.lock();
        let now = self.now_ms();
        let mut index = self.index.write();
        let chunk = index.range_chunk(from, Bound::Unbounded, max);
        let mut dropped = 0;
        for (key, e) in &chunk {
            if !e.is_live(now) && !st.is_pending(key) {
                index.delete(key);
                dropped += 1;
            }
        }
        drop(index);
        drop(st);
        self.counters.expired_swept.fetch_add(dropped as u64, Ordering::Relaxed);
        let examined = chunk.len();
        let last = if examined < max {
            None
        } else {
            chunk.into_iter().next_back().map(|(k, _)| k)
        };
        (examined, dropped, last)
    }

    /// The file `key`'s entry `loc` points into. Every entry's file is in the index's table
    /// (apply and recovery add it first, a checkpoint removes a file only once no entry points
    /// into it, and file numbers are never reused): a miss is a bug of ours, reported with the
    /// key rather than read from another file or panicking.
    pub(crate) fn source_of(&self, index: &Index, key: &[u8], loc: Loc) -> Result<Source> {
        index.source(loc.slot).cloned().ok_or_else(|| {
            let path = index
                .file_of(loc.slot)
                .map_or_else(|| self.layout.dir().to_path_buf(), |f| self.file_path(f));
            Error::corruption(
                path,
                loc.offset,
                format!(
                    "the entry of key {} points into file {}, which is not open",
                    show_key(key),
                    loc.slot
                ),
            )
        })
    }

    pub(crate) fn file_path(&self, file: FileId) -> std::path::PathBuf {
        match file {
            FileId::Segment(id) => self.layout.segment(id),
            FileId::Snapshot(seq) => self.layout.snapshot(seq),
        }
    }

    /// The value `entry` of `key` points at, from `source`, returned only once the bytes around
    /// it show that it is `key`'s value of that version: in a log record, the whole record's
    /// checksum (seeded with its segment's id), its sequence number and the put's key; in a
    /// snapshot, the entry's key, sequence number and length. A location into the wrong place
    /// is `Corruption` naming the file, the offset and the key, never another value.
    pub(crate) fn read_value(&self, source: &Source, key: &[u8], entry: &Entry) -> Result<Vec<u8>> {
        let loc = entry.loc;
        let seq = entry.seq.get();
        let path = || self.file_path(source.file);
        let not_its = |at: u64| {
            Error::corruption(
                path(),
                at,
                format!(
                    "the bytes here are not the value of key {} at version {seq}",
                    show_key(key)
                ),
            )
        };
        if loc.record_len == 0 {
            // A snapshot value: its entry's header and key lie just before it.
            let back = format::snapshot_value_back(key.len());
            let Some(start) = loc.offset.checked_sub(back as u64) else {
                return Err(not_its(loc.offset));
            };
            let mut entry_bytes = self.read_bytes(source, start, back + loc.len as usize)?;
            if !format::snapshot_value_is_for(&entry_bytes, back, key, seq, loc.len as usize) {
                return Err(not_its(start));
            }
            entry_bytes.drain(..back);
            return Ok(entry_bytes);
        }
        // A value in a log record: read the whole record and check it before trusting a byte.
        let start = loc.offset.checked_sub(u64::from(loc.record_back));
        let (FileId::Segment(segment_id), Some(start)) = (source.file, start) else {
            return Err(Error::corruption(path(), loc.offset, "index entry names no log record"));
        };
        let back = loc.record_back as usize;
        let end = back + loc.len as usize;
        let bad = || Error::corruption(path(), start, "record read back does not verify");
        let check = |record: &[u8]| match format::decode_record(record, segment_id, crate::limits::RECORD_PAYLOAD_MAX) {
            format::RecordState::Valid(r) if r.len == record.len() && end <= record.len() => {
                let in_payload = back.checked_sub(RECORD_HEADER_SIZE);
                match in_payload {
                    Some(at) if r.seq == seq && format::put_value_is_for(r.payload, at, key, loc.len as usize) => {
                        Ok(())
                    }
                    _ => Err(not_its(start)),
                }
            }
            _ => Err(bad()),
        };
        match &source.data {
            SourceData::Bytes(bytes) => {
                let at = usize::try_from(start).unwrap_or(usize::MAX);
                let record = at
                    .checked_add(loc.record_len as usize)
                    .and_then(|end| bytes.bytes().get(at..end))
                    .ok_or_else(|| Error::corruption(path(), start, "record lies past the end of the file"))?;
                check(record)?;
                Ok(record[back..end].to_vec())
            }
            SourceData::File(_) => {
                // One allocation: the record is read, checked, then cut down to its value.
                let mut record = self.read_bytes(source, start, loc.record_len as usize)?;
                check(&record)?;
                record.truncate(end);
                record.drain(..back);
                Ok(record)
            }
        }
    }

    fn read_bytes(&self, source: &Source, offset: u64, len: usize) -> Result<Vec<u8>> {
        match &source.data {
            SourceData::Bytes(bytes) => {
                let b = bytes.bytes();
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                match start.checked_add(len).and_then(|end| b.get(start..end)) {
                    Some(v) => Ok(v.to_vec()),
                    None => Err(Error::corruption(
                        self.file_path(source.file),
                        offset,
                        "value lies past the end of the file",
                    )),
                }
            }
            SourceData::File(file) => {
                let mut v = vec![0u8; len];
                read_exact_at(file.as_ref(), &mut v, offset)
                    .map_err(|e| Error::read(self.file_path(source.file), e))?;
                Ok(v)
            }
        }
    }

    /// The next chunk of entries in `(lower, upper)`: the live ones with their sources, and the
    /// last key examined (live or not), where the next chunk starts; `None` when the chunk
    /// reached the end of the range. One hold of the index lock, liveness judged at one time
    /// read just before it: a chunk is the store's state at one moment, and so is a whole scan
    /// of a range that holds fewer entries than a chunk.
    fn scan_chunk(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> Result<(Vec<ScanItem>, Option<Key>)> {
        let now = self.now_ms();
        let index = self.index.read();
        let chunk = index.range_chunk(lower, upper, SCAN_CHUNK);
        // NOTE: a chunk shorter than asked for ends the range; fetching another one later could
        // add keys written after this one was read (a scan that shows half a batch).
        let last = if chunk.len() < SCAN_CHUNK {
            None
        } else {
            chunk.last().map(|(k, _)| k.clone())
        };
        let live = chunk
            .into_iter()
            .filter(|(_, e)| e.is_live(now))
            .map(|(k, e)| {
                let source = self.source_of(&index, &k, e.loc)?;
                Ok((k, e, source))
            })
            .collect::<Result<_>>()?;
        Ok((live, last))
    }

    // -----------------------------------------------------------------------------------------
    // Stats

    pub(crate) fn stats(&self) -> Stats {
        let (keys, live_bytes, last_seq) = {
            let index = self.index.read();
            (index.len() as u64, index.live_bytes(), index.applied_seq)
        };
        let (segments, log_bytes) = {
            let log = self.log.lock();
            (log.segments.len() as u64, log.bytes_on_disk())
        };
        let snapshots = self.snapshots.lock().clone();
        let snapshot_bytes: u64 = snapshots.iter().map(|s| s.1).sum();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut sizes = [0u64; 8];
        for (s, a) in sizes.iter_mut().zip(&c.commit_group_sizes) {
            *s = load(a);
        }
        let mut stats = Stats {
            keys,
            live_bytes,
            dead_bytes: (log_bytes + snapshot_bytes).saturating_sub(live_bytes),
            log_bytes_since_checkpoint: load(&c.log_bytes_since_checkpoint),
            segments,
            snapshots: snapshots.len() as u64,
            last_checkpoint_seq: snapshots.last().map_or(0, |s| s.0),
            last_seq,
            fsyncs: load(&c.fsyncs),
            commit_groups: load(&c.commit_groups),
            writers_waiting: load(&c.writers_waiting),
            records: load(&c.records),
            commit_group_size_max: load(&c.commit_group_size_max),
            commit_group_sizes: sizes,
            checkpoints: load(&c.checkpoints),
            expired_swept: load(&c.expired_swept),
            recovery: self.recovery.clone(),
            ..Stats::default()
        };
        c.telemetry.fill(&mut stats);
        stats
    }
}

/// A scan's position: live entries in `(lower, upper)`, fetched a chunk at a time so writers
/// are never blocked for long ([`Engine::scan_chunk`]). Entries written during the scan may or
/// may not be seen; each chunk is the state at one moment.
pub(crate) struct Cursor {
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    buffer: VecDeque<ScanItem>,
    done: bool,
}

impl Cursor {
    pub(crate) fn new(lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Cursor {
        let empty = match (&lower, &upper) {
            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
                l > u || (l == u && !(matches!(lower, Bound::Included(_)) && matches!(upper, Bound::Included(_))))
            }
            _ => false,
        };
        Cursor {
            lower,
            upper,
            buffer: VecDeque::new(),
            done: empty,
        }
    }

    /// The next live entry with the file to read its value from; an error ends the scan.
    pub(crate) fn next(&mut self, engine: &Engine) -> Option<Result<ScanItem>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            match engine.scan_chunk(as_slice_bound(&self.lower), as_slice_bound(&self.upper)) {
                Ok((live, last)) => {
                    match last {
                        Some(k) => self.lower = Bound::Excluded(k.to_vec()),
                        None => self.done = true,
                    }
                    self.buffer.extend(live);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// Pair the checks (debug builds; the hot path skips it): an encoded payload decodes back to the
/// operations it was made from, each value where the layout puts it.
fn payload_decodes_to(payload: &[u8], ops: &[Op<'_>]) -> bool {
    let Ok(decoded) = format::decode_ops(payload) else {
        return false;
    };
    let mut at = format::PAYLOAD_COUNT_SIZE;
    decoded.len() == ops.len()
        && decoded.iter().zip(ops).all(|(d, o)| {
            let value_ok = match d {
                Op::Put { key, value, .. } => {
                    let ok =
                        value.as_ptr() as usize - payload.as_ptr() as usize == format::put_value_offset(at, key.len());
                    at += format::put_encoded_size(key.len(), value.len());
                    ok
                }
                other => {
                    at += format::op_encoded_size(other);
                    true
                }
            };
            value_ok && d == o
        })
}

/// How values in a segment that no longer changes are read: mapped when the storage can.
pub(crate) fn sealed_source(seg: &SegmentFile) -> Source {
    let file = FileId::Segment(seg.id);
    match seg.file.map() {
        Ok(Some(map)) => Source::bytes(file, Arc::new(crate::storage::FileBytes::Mapped(map))),
        _ => Source::file(file, seg.file.clone()),
    }
}
