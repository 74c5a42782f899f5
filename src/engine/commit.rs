//! Group commit: ordering writes, leading commit groups, making them durable and applying them
//! to the index (docs/design.md, "Write path").
//!
//! A write is *prepared* (encoded, its index changes worked out) without any lock, then
//! *ordered* under the commit mutex: it gets the next sequence number, its changes go on the
//! pending list, and it joins the forming group. The group's first writer *leads* it once the
//! previous leader is done: it appends the group to the log, makes it durable if any record needs
//! that, applies it to the index, *hands leadership over*, and wakes its group.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::error::{Conflict, Error, Result};
use crate::format::{self, Op, FORMAT_VERSION, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::index::{Change, FileId, Index, Key, RecordAt, Source};
use crate::limits;
use crate::options::Durability;
use crate::sync::thread::{self, Thread};
use crate::sync::{Mutex, MutexGuard};
use crate::wal::sync::SyncTarget;
use crate::wal::writer::{PendingRecord, Placement, SegmentFile};

use super::retention::Watch;
use super::{sealed_source, Engine, Taken};

/// Payload buffers up to this size are kept for the thread's next write.
const SPARE_PAYLOAD_MAX: usize = 16 * 1024;

thread_local! {
    /// An empty payload buffer for this thread's next write.
    static SPARE_PAYLOAD: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The index changes of one record: a single put or delete needs no list of its own.
enum Changes {
    One(Change),
    Many(Vec<Change>),
}

impl Changes {
    fn as_slice(&self) -> &[Change] {
        match self {
            Changes::One(c) => std::slice::from_ref(c),
            Changes::Many(v) => v,
        }
    }
}

impl IntoIterator for Changes {
    type Item = Change;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Change>, std::vec::IntoIter<Change>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Changes::One(c) => Some(c).into_iter().chain(Vec::new()),
            Changes::Many(v) => None.into_iter().chain(v),
        }
    }
}

/// A record ready to join a commit group.
struct Prepared {
    payload: Vec<u8>,
    changes: Changes,
    /// Its commit group must be synced before it returns (its [`Durability`] under the mode).
    sync: bool,
    /// It was decided on writes still pending: a checked write whose precondition or touch read
    /// a key with a write ordered but not applied (a touch of it may even have been dropped, its
    /// key then missing from `changes`). It must not go beside that write's group.
    decided_on_pending: bool,
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

impl Pending {
    fn of(seq: u64, change: &Change) -> Pending {
        let what = match *change {
            Change::Put { expires_at_ms, .. } => PendingWhat::Put { expires_at_ms },
            Change::Delete { .. } => PendingWhat::Delete,
            Change::Touch {
                version, expires_at_ms, ..
            } => PendingWhat::Touch { version, expires_at_ms },
        };
        Pending {
            seq,
            key: change.key().clone(),
            what,
        }
    }
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
    /// The segment the roll sealed, if it rolled.
    pub sealed: Option<SegmentFile>,
    /// The dead values noted before the base (`Options::max_retention`): the checkpoint
    /// removes them, or gives them back if it fails.
    pub dead: Taken,
}

/// The outcome every writer of a group waits for.
///
/// Each waiting writer parks its own thread and the leader unparks them one by one, so the
/// woken writers run at once. (With a mutex and a condition variable they were handed the mutex
/// one after another, each woken only when the previous one let go: on two CPUs the last writer
/// of a group of 16 came back to write its next record long after the first.) An async writer
/// ([`GroupFuture`]) leaves its task's waker instead: no thread waits for it.
#[derive(Default)]
struct GroupWait {
    /// Set once, by the leader.
    outcome: OnceLock<Result<()>>,
    /// The threads and tasks waiting for the outcome.
    waiters: Mutex<Vec<Waiter>>,
}

/// A writer waiting for its group.
enum Waiter {
    Thread(Thread),
    Task(Waker),
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
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waiter in waiters {
            match waiter {
                Waiter::Thread(t) => t.unpark(),
                Waiter::Task(w) => w.wake(),
            }
        }
    }

    fn outcome(&self) -> Option<Result<()>> {
        self.outcome
            .get()
            .map(|r| r.as_ref().map(|_| ()).map_err(Error::duplicate))
    }

    fn wait(&self) -> Result<()> {
        self.waiters.lock().push(Waiter::Thread(thread::current()));
        loop {
            match self.outcome() {
                Some(r) => return r,
                // Parks until unparked by `complete` (or spuriously: the loop looks again).
                None => thread::park(),
            }
        }
    }

    /// The outcome if the group is done; else `waker` is woken when it is.
    fn poll(&self, waker: &Waker) -> Poll<Result<()>> {
        if let Some(r) = self.outcome() {
            return Poll::Ready(r);
        }
        let mut waiters = self.waiters.lock();
        // Looked at again under the lock: `complete` sets the outcome before it takes the list.
        if let Some(r) = self.outcome() {
            return Poll::Ready(r);
        }
        let known = waiters.iter_mut().find_map(|w| match w {
            Waiter::Task(w) if w.will_wake(waker) => Some(w),
            _ => None,
        });
        if known.is_none() {
            waiters.push(Waiter::Task(waker.clone()));
        }
        Poll::Pending
    }
}

/// A write ordered in a commit group, completed when the group is durable (as its durability
/// asks) and applied: its sequence number. The write happens whether or not this is polled
/// again: dropping it does not cancel the write, only the wait.
#[must_use = "the write is ordered; await this to know it is durable and applied"]
pub(crate) struct GroupFuture {
    wait: Option<Arc<GroupWait>>,
    seq: u64,
}

impl Future for GroupFuture {
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        let seq = self.seq;
        match &self.wait {
            None => Poll::Ready(Ok(seq)),
            Some(wait) => wait.poll(cx.waker()).map(|r| r.map(|()| seq)),
        }
    }
}

/// A commit group taken by its leader: its records, their index changes, and where the log put
/// them. The buffers go back to [`CommitState`] for the next group (no allocation per group).
#[derive(Default)]
struct Group {
    records: Vec<PendingRecord>,
    changes: Vec<Changes>,
    /// `(segment id, file offset)` of each record, filled by the log.
    placed: Vec<(u64, u64)>,
    /// Some record of the group must be durable before it returns.
    sync: bool,
}

/// The forming commit group and who leads.
#[derive(Default)]
pub(crate) struct CommitState {
    next_seq: u64,
    /// The forming group (its `placed` and `sync` unused until a leader takes it).
    forming: Group,
    /// Emptied buffers of the last group, reused for the next.
    spare: Group,
    /// The forming group's outcome, once a writer waits to lead it.
    group: Option<Arc<GroupWait>>,
    leader_active: bool,
    /// Writes ordered but not yet applied, in sequence order: the forming group and the one in
    /// flight. Version checks read it before the index; the leader drains it after applying.
    pending: VecDeque<Pending>,
    /// The forming group was opened by an async writer: the commit thread leads it.
    async_lead: bool,
    /// The commit thread is to stop (the store is closing).
    commit_thread_stop: bool,
    /// Tasks waiting, as threads wait on `leader_cv`, for leadership to change hands (async
    /// checked writes whose keys have writes pending).
    leader_wakers: Vec<Waker>,
    /// The group in flight is written and only waits for its fsync (then its apply): a lazy
    /// write to other keys may go beside it ([`Engine::beside`]).
    syncing: bool,
    /// A lazy write is being written and applied beside the syncing group: the next leader and
    /// the next such write wait for it.
    beside_active: bool,
}

impl CommitState {
    /// Before the first write, whose sequence number will be `next_seq`.
    pub(super) fn new(next_seq: u64) -> CommitState {
        CommitState {
            next_seq,
            ..CommitState::default()
        }
    }

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

    /// Whether a leader, or a lazy write beside it, is at work: the next leader waits.
    fn busy(&self) -> bool {
        self.leader_active || self.beside_active
    }

    /// Whether `prepared` may go beside the group in flight: it needs no fsync, that group
    /// only waits for its fsync, nothing is ordered after that group (so appending it now keeps
    /// the log in sequence order), and no write to its keys is pending (so applying it before
    /// that group changes nothing that group's apply would, and no read can tell the order),
    /// nor to the keys its decision read (a checked write's preconditions and touches, a
    /// dropped touch's key included: returned before that group is applied, its outcome would
    /// rest on a write no read can see yet).
    fn may_go_beside(&self, prepared: &Prepared) -> bool {
        !prepared.sync
            && !prepared.decided_on_pending
            && self.syncing
            && !self.beside_active
            && self.forming.records.is_empty()
            && !prepared
                .changes
                .as_slice()
                .iter()
                .any(|c| self.is_pending(c.key().as_bytes()))
    }

    pub(super) fn is_pending(&self, key: &[u8]) -> bool {
        self.pending.iter().any(|p| p.key.as_bytes() == key)
    }

    /// Keys with writes ordered but not yet applied.
    pub(super) fn pending_keys(&self) -> Vec<Key> {
        self.pending.iter().map(|p| p.key.clone()).collect()
    }
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
        let mut st = self.0.commit.lock();
        st.leader_active = false;
        self.0.leadership_changed(st);
    }
}

impl Engine {
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

    /// Writes a record that changes nothing: a touch of the empty key at version 0, which no
    /// value has (sequence numbers start at 1), so neither the commit path nor replay applies
    /// it (docs/format.md, "Op, variant 2: Touch"). Gives a checkpoint a sequence number to
    /// cover when nothing was written since the last one (a retention checkpoint that must
    /// drop an expired entry from the snapshot). Costs no fsync of its own.
    pub(crate) fn write_nothing(&self) -> Result<u64> {
        let ops = [Op::Touch {
            key: b"",
            version: 0,
            expires_at_ms: 0,
        }];
        let prepared = self.prepare(&ops, Durability::Lazy);
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
                    let mut prepared = self.prepare(&resolved, durability);
                    prepared.decided_on_pending = involves_pending(&st, ops, expect);
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
            if !involves_pending(&st, ops, expect) {
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
        if self.keyring.is_some() {
            return self.prepare_encrypted(ops, durability);
        }
        let size = ops
            .iter()
            .fold(format::PAYLOAD_COUNT_SIZE, |n, op| n + format::op_encoded_size(op));
        let mut payload = SPARE_PAYLOAD.with(Cell::take);
        payload.reserve(size);
        let mut value_offsets = format::encode_ops(&mut payload, ops);
        let changes = match ops {
            [op] => Changes::One(Change::of(op, value_offsets.next().flatten())),
            _ => Changes::Many(
                ops.iter()
                    .zip(value_offsets)
                    .map(|(op, at)| Change::of(op, at))
                    .collect(),
            ),
        };
        debug_assert_eq!(size, payload.len(), "the payload is as long as its layout says");
        debug_assert!(
            payload_decodes_to(&payload, ops, FORMAT_VERSION, format::value_offsets(ops)),
            "the payload decodes to what was asked"
        );
        Prepared {
            payload,
            changes,
            sync: durability.needs_sync(self.opts.sync_mode),
            decided_on_pending: false,
        }
    }

    /// [`Engine::prepare`] in an encrypted store: the payload of format version 3, in clear
    /// until the log writer seals it where it lands.
    fn prepare_encrypted(&self, ops: &[Op<'_>], durability: Durability) -> Prepared {
        let size = ops.iter().fold(format::PAYLOAD_COUNT_SIZE, |n, op| {
            n + format::op_encoded_size_encrypted(op)
        });
        let mut payload = SPARE_PAYLOAD.with(Cell::take);
        payload.reserve(size);
        let offsets = format::encode_ops_encrypted(&mut payload, ops);
        debug_assert_eq!(size, payload.len(), "the payload is as long as its layout says");
        debug_assert!(
            payload_decodes_to(&payload, ops, format::FORMAT_VERSION_ENCRYPTED, offsets.iter().copied()),
            "the payload decodes to what was asked"
        );
        let changes = match ops {
            [op] => Changes::One(Change::of(op, offsets[0])),
            _ => Changes::Many(ops.iter().zip(offsets).map(|(op, at)| Change::of(op, at)).collect()),
        };
        Prepared {
            payload,
            changes,
            sync: durability.needs_sync(self.opts.sync_mode),
            decided_on_pending: false,
        }
    }

    /// Orders `prepared` in the forming commit group and waits for it: as a member, until its
    /// leader is done; as the group's first writer, by leading it once the previous group is.
    fn join(&self, mut st: MutexGuard<'_, CommitState>, prepared: Prepared) -> Result<u64> {
        if st.may_go_beside(&prepared) {
            return self.beside(st, prepared);
        }
        let seq = Self::order(&mut st, prepared)?;
        if let Some(group) = &st.group {
            let group = group.clone();
            drop(st);
            return self.waiting(|| group.wait()).map(|()| seq);
        }
        let (wait, group) = self.take_leadership(st);
        let (result, panicked) = self.lead_group(wait, group);
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        result.map(|()| seq)
    }

    /// Writes and applies a lazy record beside the group in flight while that group waits for
    /// its fsync ([`CommitState::may_go_beside`]), so a sliding-expiry touch does not wait for
    /// an fsync it does not need (issue 17). It takes the next sequence number and appends
    /// after that group, as the next group would; it is applied before that group, which is
    /// sound because no write to its keys is pending: every key ends as in sequence order, a
    /// read sees the lazy write (acknowledged) and not yet the syncing group's (not
    /// acknowledged), and recovery replays both in log order. Checkpoints and the next leader
    /// wait for it (`CommitState::busy`).
    fn beside(&self, mut st: MutexGuard<'_, CommitState>, prepared: Prepared) -> Result<u64> {
        let seq = Self::order(&mut st, prepared)?;
        let mut group = std::mem::take(&mut st.forming);
        if let Err(e) = self.reserve(&group) {
            Self::unorder(&mut st, &mut group);
            return Err(e);
        }
        st.beside_active = true;
        drop(st);
        self.counters.writes_beside.fetch_add(1, Ordering::Relaxed);
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.lead(&mut group)));
        let result = match &led {
            Ok(r) => r.as_ref().map(|_| ()).map_err(Error::duplicate),
            Err(_) => {
                let e = Error::Poisoned {
                    cause: "a lazy write beside a commit group panicked".into(),
                };
                self.poison(&e);
                Err(e)
            }
        };
        let mut st = self.commit.lock();
        st.beside_active = false;
        if result.is_ok() {
            // Applied: the index answers for it. (Out of sequence order: not at the front.)
            st.pending.retain(|p| p.seq != seq);
        }
        self.leadership_changed(st);
        if let Err(panic) = led {
            std::panic::resume_unwind(panic);
        }
        result.map(|()| seq)
    }

    /// Leads a group taken with [`Engine::take_group`] (or the error that failed it) and tells
    /// its writers. Returns the outcome and the leader's panic, if it panicked.
    fn lead_group(&self, wait: Option<Arc<GroupWait>>, group: Result<Group>) -> (Result<()>, Option<Panic>) {
        let (result, panicked) = match group {
            Ok(group) => self.lead_caught(group),
            Err(e) => (Err(e), None),
        };
        if let Some(wait) = wait {
            wait.complete(&result);
        }
        (result, panicked)
    }

    // -----------------------------------------------------------------------------------------
    // Async writes (docs/design.md, "Async writes")

    /// Orders `ops` as one record now and returns the future of its commit group. No thread
    /// waits for it: it joins the forming group, or opens one for the commit thread
    /// ([`Engine::run_commit_thread`]) to lead; threads that write meanwhile join that group as
    /// they would any other. Limits are checked by the caller; touches go through
    /// [`Engine::write_checked_async`].
    pub(crate) fn write_ops_async(&self, ops: &[Op<'_>], durability: Durability) -> Result<GroupFuture> {
        debug_assert!(!ops.iter().any(|op| matches!(op, Op::Touch { .. })));
        let prepared = self.prepare(ops, durability);
        let mut st = self.commit.lock();
        self.check_poison()?;
        let seq = Self::order(&mut st, prepared)?;
        Ok(self.attach(st, seq))
    }

    /// [`Engine::write_checked`] for async callers: decided and ordered under the commit lock
    /// as it is; a decision that must wait for pending writes to its keys waits as a task
    /// (woken when leadership changes hands), not as a thread.
    pub(crate) async fn write_checked_async(
        &self,
        ops: &[Op<'_>],
        expect: &[(Vec<u8>, Option<u64>)],
        durability: Durability,
    ) -> Result<Result<Checked, Conflict>> {
        let step = std::future::poll_fn(|cx| self.poll_checked(cx.waker(), ops, expect, durability)).await?;
        match step {
            CheckedStep::Decided(outcome) => Ok(outcome),
            CheckedStep::Ordered(group, touched) => Ok(Ok(Checked {
                seq: group.await?,
                touched,
            })),
        }
    }

    /// One attempt of [`Engine::write_checked_async`]'s decision.
    fn poll_checked(
        &self,
        waker: &Waker,
        ops: &[Op<'_>],
        expect: &[(Vec<u8>, Option<u64>)],
        durability: Durability,
    ) -> Poll<Result<CheckedStep>> {
        let mut st = self.commit.lock();
        if let Err(e) = self.check_poison() {
            return Poll::Ready(Err(e));
        }
        let seq = st.next_seq;
        let outcome = match self.decide(&st, ops, expect) {
            Decision::Write { resolved, touched } if !resolved.is_empty() => {
                let prepared = self.prepare(&resolved, durability);
                let ordered = Self::order(&mut st, prepared);
                return Poll::Ready(ordered.map(|seq| CheckedStep::Ordered(self.attach(st, seq), touched)));
            }
            Decision::Write { touched, .. } => Ok(Checked { seq: seq - 1, touched }),
            Decision::Conflict(c) => Err(c),
        };
        // As in `write_checked`: a decision without a write is returned once no write to its
        // keys is pending, and taken again after leadership changes hands.
        if !involves_pending(&st, ops, expect) {
            return Poll::Ready(Ok(CheckedStep::Decided(outcome)));
        }
        st.leader_wakers.push(waker.clone());
        Poll::Pending
    }

    /// The future of the write just ordered as `seq` (under `st`): its group's.
    fn attach(&self, mut st: MutexGuard<'_, CommitState>, seq: u64) -> GroupFuture {
        let wait = match &st.group {
            Some(wait) => wait.clone(),
            None => {
                let wait = Arc::new(GroupWait::default());
                st.group = Some(wait.clone());
                st.async_lead = true;
                drop(st);
                self.commit_cv.notify_all();
                wait
            }
        };
        GroupFuture { wait: Some(wait), seq }
    }

    /// The commit thread (`sessiondb-commit`, started by the first async write): leads each
    /// group an async writer opened, once the leader before it is done, so that no executor
    /// thread ever waits for the disk. Returns once told to stop with no such group left.
    pub(crate) fn run_commit_thread(&self) {
        let mut st = self.commit.lock();
        loop {
            if st.async_lead {
                while st.busy() {
                    self.leader_cv.wait(&mut st);
                }
                st.async_lead = false;
                let wait = st.group.take();
                debug_assert!(wait.is_some(), "an async writer opened the forming group");
                let (wait, group) = self.take_group(st, wait);
                // NOTE: a panic while leading poisoned the store and its writers got the error;
                // the panic hook reported it. The thread goes on, to fail later groups too.
                drop(self.lead_group(wait, group));
                st = self.commit.lock();
                continue;
            }
            if st.commit_thread_stop {
                return;
            }
            self.commit_cv.wait(&mut st);
        }
    }

    /// Tells the commit thread to stop once no group needs it.
    pub(crate) fn stop_commit_thread(&self) {
        self.commit.lock().commit_thread_stop = true;
        self.commit_cv.notify_all();
    }

    /// Gives `prepared` the next sequence number and puts it in the forming group, its changes
    /// on the pending list.
    fn order(st: &mut CommitState, prepared: Prepared) -> Result<u64> {
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
        for change in prepared.changes.as_slice() {
            st.pending.push_back(Pending::of(seq, change));
        }
        st.forming.sync |= prepared.sync;
        st.forming.records.push(PendingRecord {
            seq,
            payload: prepared.payload,
        });
        st.forming.changes.push(prepared.changes);
        Ok(seq)
    }

    /// `wait`, counted in [`crate::Stats::writers_waiting`].
    fn waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.counters.writers_waiting.fetch_add(1, Ordering::Relaxed);
        let r = wait();
        self.counters.writers_waiting.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// Makes this writer the forming group's leader once the previous leader is done, and takes
    /// the group (the next writers form a new one), with room for it in the log. Returns what
    /// the group's other writers wait on (`None`: nobody can have joined), and the group, or the
    /// error that failed it before any of it was written.
    fn take_leadership(&self, mut st: MutexGuard<'_, CommitState>) -> (Option<Arc<GroupWait>>, Result<Group>) {
        let wait = if st.busy() {
            // A group is in flight: this writer opens the next one and leads it when the
            // previous leader is done; meanwhile others join it.
            let wait = Arc::new(GroupWait::default());
            st.group = Some(wait.clone());
            self.waiting(|| {
                while st.busy() {
                    self.leader_cv.wait(&mut st);
                }
            });
            st.group = None;
            Some(wait)
        } else {
            // Nothing in flight: lead at once. The commit lock is held from `order` to taking
            // leadership, so nobody joined and there is nobody to wake (a lone writer, as in a
            // bulk load, allocates no group).
            debug_assert_eq!(st.forming.records.len(), 1);
            None
        };
        self.take_group(st, wait)
    }

    /// Takes leadership (free, under `st`) and the forming group, with room for it in the log.
    fn take_group(
        &self,
        mut st: MutexGuard<'_, CommitState>,
        wait: Option<Arc<GroupWait>>,
    ) -> (Option<Arc<GroupWait>>, Result<Group>) {
        debug_assert!(!st.busy());
        st.leader_active = true;
        let spare = std::mem::take(&mut st.spare);
        let mut group = std::mem::replace(&mut st.forming, spare);
        if let Err(e) = self.reserve(&group) {
            Self::unorder(&mut st, &mut group);
            st.spare = group;
            st.leader_active = false;
            self.leadership_changed(st);
            return (wait, Err(e));
        }
        (wait, Ok(group))
    }

    /// Makes ready the segments `group` rolls into (a roll's new segment, or the first one
    /// after an open that had no room for it), under the commit lock. A full disk fails the
    /// group here, before any byte of it is written: the store is not poisoned and takes writes
    /// again once there is room (issue 15). A panic in the storage poisons it, as in `lead`.
    fn reserve(&self, group: &Group) -> Result<()> {
        let sizes = group.records.iter().map(|r| r.payload.len());
        let reserved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.log.lock().reserve(sizes)));
        reserved.unwrap_or_else(|_| {
            let e = Error::Poisoned {
                cause: "the storage panicked while making a log segment".into(),
            };
            self.poison(&e);
            Err(e)
        })
    }

    /// Takes back a group that was never written: its sequence numbers are reused and its
    /// writes leave the pending list. Only sound under the commit lock that ordered it, with
    /// the group the last ordered: nobody can have ordered after it or seen its numbers.
    fn unorder(st: &mut CommitState, group: &mut Group) {
        let Some(first) = group.records.first().map(|r| r.seq) else {
            return;
        };
        debug_assert_eq!(st.next_seq, group.records.last().map_or(first, |r| r.seq) + 1);
        debug_assert!(st.forming.records.is_empty(), "nobody ordered after the group");
        st.next_seq = first;
        st.pending.retain(|p| p.seq < first);
        group.records.clear();
        group.changes.clear();
        group.sync = false;
    }

    /// Leads `group` and hands leadership over. A panic while leading (a bug, or a storage that
    /// panics) must not leave leadership taken and the group waiting forever: the store is
    /// poisoned, leadership handed back, and the panic returned, for the caller to tell the group
    /// and then go on with it.
    fn lead_caught(&self, mut group: Group) -> (Result<()>, Option<Panic>) {
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.lead(&mut group)));
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
        self.hand_over(group, result.is_ok());
        (result, panicked)
    }

    /// The leader's work: one write (per segment touched), one fsync if any record of the group
    /// needs it, then the index. Any failure poisons the store; the group's writers all get the
    /// error.
    fn lead(&self, group: &mut Group) -> Result<()> {
        self.check_poison()?;
        let (placement, target) = self.append(group)?;
        self.count_group(group.records.len());
        // NOTE: the fsync runs without the log mutex, so stats() and sync() never wait behind a
        // slow disk; leadership alone keeps groups in order, and a segment is only ever sealed
        // by the leader.
        if group.sync {
            if self.log_sync.durable_seq() < target.through {
                // Written: a lazy write to other keys may now go beside this group.
                self.commit.lock().syncing = true;
            }
            self.make_durable(&target)?;
        }
        self.apply(group, placement);
        self.maybe_request_checkpoint();
        Ok(())
    }

    /// Writes the group to the log; returns where it went and what an fsync would make durable.
    fn append(&self, group: &mut Group) -> Result<(Placement, SyncTarget)> {
        if self.keyring.is_none() {
            // (An encrypted store's payloads are sealed by the log writer, which knows where
            // each record lands.)
            seal_value_crcs(group);
        }
        let mut log = self.log.lock();
        let bytes_before = log.bytes_written;
        let placement = log
            .append(&mut group.records, &mut group.placed)
            .inspect_err(|e| self.poison(e))?;
        let written = log.bytes_written - bytes_before;
        self.counters
            .log_bytes_since_checkpoint
            .fetch_add(written, Ordering::Relaxed);
        Ok((placement, log.sync_target()))
    }

    /// Applies the group to the index, in sequence order, with the segments it sealed and
    /// activated.
    fn apply(&self, group: &mut Group, placement: Placement) {
        debug_assert_eq!(group.records.len(), group.placed.len());
        let mut index = self.index.write();
        for seg in placement.sealed {
            index.set_source(sealed_source(&seg, self.write_version()));
        }
        for seg in placement.activated {
            index.set_source(
                Source::file(FileId::Segment(seg.id), self.write_version(), seg.file.clone())
                    .with_cipher(seg.cipher.clone()),
            );
        }
        let retention = self.opts.max_retention.is_some();
        let (mut killed, mut deadline) = (false, u64::MAX);
        let records = group.records.iter().zip(group.placed.iter().copied());
        for ((rec, (segment, offset)), changes) in records.zip(group.changes.drain(..)) {
            let at = RecordAt {
                slot: index.slot(FileId::Segment(segment)),
                offset,
                // NOTE: cannot truncate: payloads are at most RECORD_PAYLOAD_MAX < 1 GiB.
                len: (RECORD_HEADER_SIZE + rec.payload.len()) as u32,
                seq: rec.seq,
            };
            let watch = retention.then(|| Watch::of(changes.as_slice(), index.len()));
            index.apply_record(&at, changes);
            if let Some(w) = watch {
                killed |= w.killed(index.len());
                deadline = deadline.min(w.deadline());
            }
        }
        if retention {
            self.retention.applied(killed, deadline, || self.now_ms());
        }
    }

    /// Hands leadership to the next group's leader (before this group's writers are woken: the
    /// next group starts its I/O at once), dropping the applied writes from the pending list,
    /// and keeps the group's buffers for the next one.
    fn hand_over(&self, mut group: Group, applied: bool) {
        let last_seq = group.records.last().map_or(0, |r| r.seq);
        // A lone writer's payload buffer goes back to it for its next put (no allocation per
        // put in a bulk load); in a group, the leader keeps one.
        SPARE_PAYLOAD.with(|spare| {
            let mut kept = spare.take();
            for rec in group.records.drain(..) {
                if kept.capacity() == 0 && rec.payload.capacity() <= SPARE_PAYLOAD_MAX {
                    kept = rec.payload;
                    kept.clear();
                }
            }
            spare.set(kept);
        });
        group.changes.clear();
        group.placed.clear();
        group.sync = false;
        let mut st = self.commit.lock();
        st.leader_active = false;
        st.syncing = false;
        st.spare = group;
        if applied {
            // Applied: the index now answers for these writes.
            while st.pending.front().is_some_and(|p| p.seq <= last_seq) {
                st.pending.pop_front();
            }
        }
        self.leadership_changed(st);
    }

    /// After leadership was handed back or writes applied (under `st`, released here): wakes
    /// the threads and tasks waiting for that.
    fn leadership_changed(&self, mut st: MutexGuard<'_, CommitState>) {
        let wakers = std::mem::take(&mut st.leader_wakers);
        drop(st);
        self.leader_cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Takes commit leadership, so no commit group is in flight until the returned guard is
    /// dropped: every record in the log is applied to the index, and the log ends at a record
    /// boundary that readers already see. `read` runs under the commit lock as leadership is
    /// taken (the forming group's writes are in `pending`, ordered after everything in the log);
    /// the lock is released before this returns, and writers queue behind the leadership.
    pub(crate) fn lead_alone<T>(&self, read: impl FnOnce(&CommitState) -> T) -> (Leadership<'_>, T) {
        let mut st = self.commit.lock();
        while st.busy() {
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
        let (_leading, (cut_ms, pending)) = self.lead_alone(|st| (self.now_ms(), st.pending_keys()));
        self.check_poison()?;
        let mut log = self.log.lock();
        let base = log.written_seq;
        // Seals (fsyncs) the active segment and makes the next one's header durable. A failure
        // that is not an fsync's (no room for the next segment, say) leaves the log as it was
        // or on a fresh segment not yet activated, and loses nothing: the checkpoint fails, the
        // store goes on. A failed fsync poisons, as everywhere (the gate fails every later one).
        let rolled = log.roll_for_checkpoint().inspect_err(|e| {
            if self.log_sync.has_failed() {
                self.poison(e);
            }
        })?;
        drop(log);
        let mut index = self.index.write();
        // The sealed segment keeps its positioned-read source, never a map: it is deleted when
        // the checkpoint succeeds, and if the checkpoint fails it may take appends again
        // (`Engine::unroll`), which a mapped file must never do.
        let sealed = rolled.map(|(sealed, active)| {
            index.set_source(
                Source::file(FileId::Segment(active.id), self.write_version(), active.file.clone())
                    .with_cipher(active.cipher.clone()),
            );
            sealed
        });
        debug_assert_eq!(index.applied_seq, base, "no group is in flight");
        // Everything up to the base is in the index now and will be in the snapshot.
        index.freeze();
        // The log the snapshot will cover, read before any writer goes on.
        let log_bytes = self.counters.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        // Still leading: every dead value noted so far lies at or below the base.
        let dead = match self.opts.max_retention {
            Some(_) => self.retention.take(),
            None => Taken::NOTHING,
        };
        Ok(RollPoint {
            base,
            cut_ms,
            pending,
            log_bytes,
            sealed,
            dead,
        })
    }

    /// After a checkpoint that failed before its snapshot replaced anything: if the segment its
    /// roll started holds nothing but its header, it goes and appends continue in `sealed`, so
    /// the failed checkpoint leaves the disk as it found it (issue 15). A removal that fails
    /// changes nothing; once removed, the directory's fsync must succeed before anything is
    /// appended to `sealed` (a crash could otherwise bring the header back after records that
    /// contradict it), so its failure poisons the store.
    pub(crate) fn unroll(&self, sealed: &SegmentFile) {
        let (_leading, ()) = self.lead_alone(|_| ());
        if self.is_poisoned() {
            return;
        }
        let mut log = self.log.lock();
        match log.unroll(sealed) {
            Ok(Some(gone)) => {
                drop(log);
                self.index.write().remove_source(FileId::Segment(gone));
                self.counters
                    .log_bytes_since_checkpoint
                    .fetch_sub(SEGMENT_HEADER_SIZE as u64, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => self.poison(&e),
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
        // NOTE: no lock of the engine is held across the fsync (only the log's, which orders
        // fsyncs of the log); a segment sealed meanwhile was fsynced by the roll, so syncing the
        // segment that was active covers everything up to the target.
        let target = self.log.lock().sync_target();
        self.make_durable(&target)
    }

    /// Makes the log durable through `target.through` (nothing to do if it already is); an
    /// error poisons the store.
    fn make_durable(&self, target: &SyncTarget) -> Result<()> {
        if self.log_sync.durable_seq() >= target.through {
            return Ok(());
        }
        self.log_sync.sync(target).inspect_err(|e| self.poison(e))
    }
}

/// A leader's panic, caught to be resumed once its group is told.
type Panic = Box<dyn std::any::Any + Send>;

/// Where [`Engine::write_checked_async`]'s decision left it.
enum CheckedStep {
    /// Decided without a write.
    Decided(std::result::Result<Checked, Conflict>),
    /// Ordered: its group's future, and how many touches it kept.
    Ordered(GroupFuture, usize),
}

/// Whether a write to a key of `ops` or `expect` is ordered but not yet applied.
fn involves_pending(st: &CommitState, ops: &[Op<'_>], expect: &[(Vec<u8>, Option<u64>)]) -> bool {
    let involved = |k: &[u8]| expect.iter().any(|(e, _)| e == k) || ops.iter().any(|op| op.key() == k);
    st.pending.iter().any(|p| involved(p.key.as_bytes()))
}

/// Completes the value checksum of every put of the group's records with its record's sequence
/// number, known since the record was ordered (`format::seal_value_crc`). Outside the commit lock:
/// the leader's work, one short crc per put. Debug builds decode each sealed payload with every
/// checksum checked.
fn seal_value_crcs(group: &mut Group) {
    for (rec, changes) in group.records.iter_mut().zip(&group.changes) {
        for change in changes.as_slice() {
            if let Change::Put {
                value_at, value_len, ..
            } = change
            {
                format::seal_value_crc(&mut rec.payload, (value_at + value_len) as usize, rec.seq);
            }
        }
        debug_assert!(
            format::decode_ops(&rec.payload, FORMAT_VERSION, Some(rec.seq)).is_ok(),
            "a sealed payload's value checksums verify"
        );
    }
}

/// Pair the checks (debug builds; the hot path skips it): an encoded payload decodes back to the
/// operations it was made from, each value where the layout puts it.
fn payload_decodes_to(
    payload: &[u8],
    ops: &[Op<'_>],
    version: u32,
    offsets: impl Iterator<Item = Option<usize>>,
) -> bool {
    let Ok(decoded) = format::decode_ops(payload, version, None) else {
        return false;
    };
    decoded.len() == ops.len()
        && decoded.iter().zip(ops).zip(offsets).all(|((d, o), at)| {
            let value_ok = match (d, at) {
                (Op::Put { value, .. }, Some(at)) => value.as_ptr() as usize - payload.as_ptr() as usize == at,
                (Op::Put { .. }, None) => false,
                (_, at) => at.is_none(),
            };
            value_ok && d == o
        })
}
