//! Histories of concurrent operations on one store, and a checker of their linearizability.
//!
//! Threads issue operations of every kind on a few keys; each call is recorded with the order
//! of its invocation and response (one global counter) and the store clock's reading before and
//! after it (a `ManualClock` that only moves forward). The checker then decides, key by key,
//! whether some order of the calls that respects real time (a call that returned before another
//! was invoked comes first) explains every result by a sequential model of one key: value,
//! version and expiry deadline. That is Wing and Gong's search with Lowe's memoisation of
//! (calls linearized, model state), as Knossos and Porcupine do it. Keys are independent
//! objects, so a history is linearizable if each key's part is (Herlihy and Wing's locality);
//! a batch or a scan touches several keys, and each key sees its part of it.
//!
//! What a key's model knows:
//! - Every value written is unique (`ValId`) and carries its id in its bytes; a read of bytes
//!   that are not exactly some written value is a violation by itself.
//! - Versions are the store's sequence numbers, unknown to the model in advance. They are learnt
//!   from every call that reports one (a checked write's sequence number, `get_with_version`,
//!   `get_versioned`): one value must always show one version, two values of a key never the
//!   same one, and along the order the search chooses, the versions of a key's writes rise.
//!   A compare-and-swap on a value whose version no call reported is accepted if no other value
//!   of the key has that version and it is above every version known before.
//! - Time: a call's store time lies between its two clock readings, and a deadline set with a
//!   TTL between the readings plus the TTL. Whether an entry is live at a call is therefore
//!   "surely", "surely not" or "either": each result must be possible, and a state where both
//!   are possible splits the search (Porcupine's sets of states).
//! - The sweeper, checkpoints, syncs and backups change nothing a read can see: any effect of
//!   theirs shows up as a violation.
//!
//! Scans read every key of their range as one moment's state when they hold fewer entries than
//! a chunk (256; always here); each key checks its part as a read at some point of the scan's
//! window. A backup is read back (its copy opened with the clock at the backup's return) and
//! checked the same way. Across keys, a scan or backup must show one moment: a time after
//! every write it shows was invoked and before any of those values was surely replaced, and no
//! value of a batch without the batch's other values.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sessiondb::{Batch, Db, Durability, Error, ManualClock};

use super::{mix64 as mix, small_options, OptionsExt, Rng};

/// Keys are `k0`, `k1`, ...: few, so that threads collide on them.
pub type Key = u8;

pub fn key_name(k: Key) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn key_of(name: &[u8]) -> Option<Key> {
    std::str::from_utf8(name.strip_prefix(b"k")?).ok()?.parse().ok()
}

/// A written value: `(round * 256 + thread + 1) << 32 | n`, unique across the rounds of a campaign.
pub type ValId = u64;

/// The bytes of value `id`: its id, then up to 300 bytes that follow from it (so values of
/// many sizes, and a value damaged anywhere is noticed).
pub fn value_bytes(id: ValId) -> Vec<u8> {
    let len = (mix(id) % 300) as usize;
    let mut v = id.to_le_bytes().to_vec();
    v.extend((0..len).map(|i| (mix(id ^ i as u64) >> 7) as u8));
    v
}

/// The id of `bytes` if they are exactly a written value's bytes.
pub fn parse_value(bytes: &[u8]) -> Result<ValId, String> {
    let id = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("a value of {} bytes, not one written", bytes.len()))?;
    if value_bytes(id) != bytes {
        return Err(format!(
            "bytes that are no written value (they start like value {id:#x})"
        ));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Operations and their outcomes

/// An expiry of a put in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    TtlMs(u64),
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put { key: Key, val: ValId, expiry: Expiry },
    Delete { key: Key },
    Touch { key: Key, ttl_ms: u64 },
}

impl BatchOp {
    fn key(&self) -> Key {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } | BatchOp::Touch { key, .. } => *key,
        }
    }
}

/// A call on the store's public API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `put` (no TTL) or `put_with_ttl`.
    Put {
        key: Key,
        val: ValId,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: Key,
    },
    /// `write` when it has no preconditions and no touches, else `write_if`.
    Write {
        ops: Vec<BatchOp>,
        expect: Vec<(Key, Option<u64>)>,
        durability: Durability,
    },
    PutIfVersion {
        key: Key,
        val: ValId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
    },
    DeleteIfVersion {
        key: Key,
        expected: u64,
    },
    /// `touch` (`durability: None`) or `touch_with`.
    Touch {
        key: Key,
        ttl_ms: u64,
        durability: Option<Durability>,
    },
    Get {
        key: Key,
    },
    GetWithVersion {
        key: Key,
    },
    GetVersioned {
        key: Key,
    },
    /// `scan_prefix(b"k")`.
    ScanAll,
    /// `range(lo..=hi)` over key names.
    Range {
        lo: Key,
        hi: Key,
    },
    /// `Db::backup`, then the backup read back.
    Backup,
}

impl Op {
    /// `write` (plain) or `write_if`.
    fn is_plain_write(ops: &[BatchOp], expect: &[(Key, Option<u64>)]) -> bool {
        expect.is_empty() && !ops.iter().any(|o| matches!(o, BatchOp::Touch { .. }))
    }
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The sequence number of a checked write.
    Seq(u64),
    Conflict {
        key: Key,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    Touched(bool),
    Value(Option<ValId>),
    Versioned(Option<(ValId, u64)>),
    /// Value, version, deadline.
    Full(Option<(ValId, u64, Option<u64>)>),
    /// Live keys with their values.
    Entries(Vec<(Key, ValId)>),
    /// An error, or bytes that are no written value: a violation by itself.
    Failed(String),
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub thread: usize,
    pub invoke: u64,
    pub response: u64,
    /// The store clock before the invocation and after the response.
    pub clock_lo: u64,
    pub clock_hi: u64,
    pub op: Op,
    pub outcome: Outcome,
}

/// Where a call runs: the store's storage (backups go through it too) and a directory for
/// backups.
#[derive(Clone)]
pub struct Env {
    pub storage: std::sync::Arc<dyn sessiondb::storage::Storage>,
    pub backups: std::path::PathBuf,
    /// Whether `storage` is the real file system (backups' directories are then removed too).
    pub real_files: bool,
    /// The store's encryption key, if it is encrypted (its backups are too).
    pub key: Option<sessiondb::EncryptionKey>,
}

/// Records calls from many threads.
pub struct Recorder {
    tick: AtomicU64,
    clock: ManualClock,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    pub fn new(clock: ManualClock) -> Recorder {
        Recorder {
            tick: AtomicU64::new(0),
            clock,
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Runs `op` on `db` as `thread` and records it.
    pub fn call(&self, db: &Db, thread: usize, op: Op, env: &Env) -> Outcome {
        let clock_lo = self.clock.now_ms_for_test();
        let invoke = self.tick.fetch_add(1, Ordering::SeqCst);
        let outcome = execute(db, &op, env, &self.clock);
        let response = self.tick.fetch_add(1, Ordering::SeqCst);
        let clock_hi = self.clock.now_ms_for_test();
        self.calls.lock().unwrap().push(Call {
            thread,
            invoke,
            response,
            clock_lo,
            clock_hi,
            op,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// The calls recorded since the last take.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// `ManualClock::now_ms` through the trait.
trait NowMs {
    fn now_ms_for_test(&self) -> u64;
}

impl NowMs for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        sessiondb::Clock::now_ms(self)
    }
}

fn failed(e: Error) -> Outcome {
    Outcome::Failed(e.to_string())
}

fn read_value(r: sessiondb::Result<Option<Vec<u8>>>) -> Outcome {
    match r {
        Ok(None) => Outcome::Value(None),
        Ok(Some(b)) => parse_value(&b).map_or_else(Outcome::Failed, |v| Outcome::Value(Some(v))),
        Err(e) => failed(e),
    }
}

fn entries(it: impl Iterator<Item = sessiondb::Result<(Vec<u8>, Vec<u8>)>>) -> Outcome {
    let mut out = Vec::new();
    for item in it {
        match item {
            Ok((k, v)) => {
                let Some(key) = key_of(&k) else {
                    return Outcome::Failed(format!("a key never written: {:?}", k.escape_ascii().to_string()));
                };
                match parse_value(&v) {
                    Ok(id) => out.push((key, id)),
                    Err(e) => return Outcome::Failed(format!("key k{key}: {e}")),
                }
            }
            Err(e) => return failed(e),
        }
    }
    Outcome::Entries(out)
}

fn checked(r: sessiondb::Result<Result<u64, sessiondb::Conflict>>) -> Outcome {
    match r {
        Ok(Ok(seq)) => Outcome::Seq(seq),
        Ok(Err(c)) => match key_of(&c.key) {
            Some(key) => Outcome::Conflict {
                key,
                expected: c.expected,
                actual: c.actual,
            },
            None => Outcome::Failed(format!("a conflict on a key never written: {c}")),
        },
        Err(e) => failed(e),
    }
}

static BACKUPS: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    /// This thread's writes go through the async API (`Db::write_if_async` and the others),
    /// run to completion with `support::wait::block_on`.
    static ASYNC_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes this thread's calls of [`execute`] write through the async API (`on`) or the blocking
/// one: histories mixing both are checked as one.
pub fn use_async_writes(on: bool) {
    ASYNC_WRITES.with(|a| a.set(on));
}

/// Whether this thread writes through the async API.
fn async_writes() -> bool {
    ASYNC_WRITES.with(std::cell::Cell::get)
}

/// `fut`, run to completion on this thread.
fn done<T>(fut: impl std::future::Future<Output = T>) -> T {
    super::wait::block_on("an async write", fut)
}

/// Removes the files of a store that was read back (a backup), through its storage.
fn remove_store(env: &Env, dir: &std::path::Path) {
    for d in [dir.join("wal"), dir.to_path_buf()] {
        for name in env.storage.list(&d).unwrap_or_default() {
            let _ = env.storage.remove(&d.join(name));
        }
        // Durable, so the simulated storage lets go of the files' bytes.
        let _ = env.storage.sync_dir(&d);
    }
    if env.real_files {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `op` on `db`.
pub fn execute(db: &Db, op: &Op, env: &Env, clock: &ManualClock) -> Outcome {
    let ms = Duration::from_millis;
    match op {
        Op::Put { key, val, ttl_ms } => {
            let r = match ttl_ms {
                None if async_writes() => done(db.put_async(key_name(*key), value_bytes(*val))),
                None => db.put(key_name(*key), value_bytes(*val)),
                Some(t) => db.put_with_ttl(key_name(*key), value_bytes(*val), ms(*t)),
            };
            r.map_or_else(failed, |()| Outcome::Done)
        }
        Op::Delete { key } if async_writes() => {
            done(db.delete_async(key_name(*key))).map_or_else(failed, |()| Outcome::Done)
        }
        Op::Delete { key } => db.delete(key_name(*key)).map_or_else(failed, |()| Outcome::Done),
        Op::Write {
            ops,
            expect,
            durability,
        } => {
            let mut b = Batch::new();
            for o in ops {
                match o {
                    BatchOp::Put { key, val, expiry } => match expiry {
                        Expiry::Never => b.put(key_name(*key), value_bytes(*val)),
                        Expiry::TtlMs(t) => b.put_with_ttl(key_name(*key), value_bytes(*val), ms(*t)),
                    },
                    BatchOp::Delete { key } => b.delete(key_name(*key)),
                    BatchOp::Touch { key, ttl_ms } => b.touch(key_name(*key), ms(*ttl_ms)),
                };
            }
            for (key, v) in expect {
                b.expect_version(key_name(*key), *v);
            }
            b.durability(*durability);
            match (Op::is_plain_write(ops, expect), async_writes()) {
                (true, false) => db.write(b).map_or_else(failed, |()| Outcome::Done),
                (true, true) => done(db.write_async(b)).map_or_else(failed, |()| Outcome::Done),
                (false, false) => checked(db.write_if(b)),
                (false, true) => checked(done(db.write_if_async(b))),
            }
        }
        Op::PutIfVersion {
            key,
            val,
            expected,
            ttl_ms,
        } => checked(db.put_if_version(key_name(*key), value_bytes(*val), *expected, ttl_ms.map(ms))),
        Op::DeleteIfVersion { key, expected } => checked(db.delete_if_version(key_name(*key), *expected)),
        Op::Touch {
            key,
            ttl_ms,
            durability,
        } => {
            let r = match durability {
                None => db.touch(key_name(*key), ms(*ttl_ms)),
                Some(d) if async_writes() => done(db.touch_with_async(key_name(*key), ms(*ttl_ms), *d)),
                Some(d) => db.touch_with(key_name(*key), ms(*ttl_ms), *d),
            };
            r.map_or_else(failed, Outcome::Touched)
        }
        Op::Get { key } => read_value(db.get(key_name(*key))),
        Op::GetWithVersion { key } => match db.get_with_version(key_name(*key)) {
            Ok(None) => Outcome::Versioned(None),
            Ok(Some((b, v))) => parse_value(&b).map_or_else(Outcome::Failed, |id| Outcome::Versioned(Some((id, v)))),
            Err(e) => failed(e),
        },
        Op::GetVersioned { key } => match db.get_versioned(key_name(*key)) {
            Ok(None) => Outcome::Full(None),
            Ok(Some(x)) => parse_value(&x.value).map_or_else(Outcome::Failed, |id| {
                Outcome::Full(Some((id, x.version, x.expires_at_ms)))
            }),
            Err(e) => failed(e),
        },
        Op::ScanAll => entries(db.scan_prefix(b"k")),
        Op::Range { lo, hi } => entries(db.range(key_name(*lo)..=key_name(*hi))),
        Op::Backup => {
            let n = BACKUPS.fetch_add(1, Ordering::Relaxed);
            let dest = env.backups.join(format!("backup-{}-{n}", std::process::id()));
            if let Err(e) = db.backup(&dest) {
                return failed(e);
            }
            // Read back with the clock as it was when the backup returned.
            let at = ManualClock::new(clock.now_ms_for_test());
            let mut opts = small_options().quiet().storage(env.storage.clone()).manual_clock(&at);
            if let Some(key) = &env.key {
                opts = opts.encryption_key(key.clone());
            }
            let read = sessiondb::Db::open_with(&dest, opts).map_or_else(failed, |copy| {
                let out = entries(copy.scan_prefix(b"k"));
                copy.close().map_or_else(failed, |()| out)
            });
            remove_store(env, &dest);
            read
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generating operations

/// Shapes what a worker issues.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub keys: u8,
    /// Percent of calls that move the clock first.
    pub clock_moves: u64,
    /// Percent of calls that are backups.
    pub backups: u64,
}

/// A worker's generator: ids for its values, versions it saw (for realistic compare-and-swap).
pub struct Worker {
    pub thread: usize,
    pub rng: Rng,
    /// The high half of this worker's value ids.
    id_base: u64,
    next: u64,
    seen: HashMap<Key, u64>,
    mix: Mix,
}

impl Worker {
    /// Worker `thread` of `round` (rounds of one campaign must differ: value ids stay unique).
    pub fn new(thread: usize, round: u64, seed: u64, mix: Mix) -> Worker {
        assert!(thread < 255, "value ids have room for 255 threads");
        Worker {
            thread,
            rng: Rng::new(seed ^ mix_seed(thread)),
            id_base: (round * 256 + thread as u64 + 1) << 32,
            next: 0,
            seen: HashMap::new(),
            mix,
        }
    }

    fn val(&mut self) -> ValId {
        self.next += 1;
        self.id_base | self.next
    }

    fn key(&mut self) -> Key {
        self.rng.below(u64::from(self.mix.keys)) as Key
    }

    fn ttl(&mut self) -> u64 {
        [50, 200, 1_000, 5_000][self.rng.below(4) as usize] + self.rng.below(50)
    }

    fn maybe_ttl(&mut self) -> Option<u64> {
        self.rng.chance(50).then(|| self.ttl())
    }

    fn durability(&mut self) -> Durability {
        [Durability::Default, Durability::Lazy, Durability::Immediate][self.rng.below(3) as usize]
    }

    /// A version to expect for `key`: mostly the last one this worker saw, else absent or a
    /// stale guess.
    fn expected(&mut self, key: Key) -> Option<u64> {
        match (self.rng.below(10), self.seen.get(&key)) {
            (0..=5, Some(&v)) => Some(v),
            (6..=7, _) => None,
            (_, Some(&v)) => Some(v.saturating_sub(1 + self.rng.below(3)).max(1)),
            (_, None) => Some(1 + self.rng.below(50)),
        }
    }

    /// The next call.
    pub fn next_op(&mut self) -> Op {
        if self.rng.chance(self.mix.backups) {
            return Op::Backup;
        }
        let key = self.key();
        match self.rng.below(100) {
            0..=13 => Op::Get { key },
            14..=21 => Op::GetWithVersion { key },
            22..=26 => Op::GetVersioned { key },
            27..=35 => Op::Put {
                key,
                val: self.val(),
                ttl_ms: self.maybe_ttl(),
            },
            36..=40 => Op::Delete { key },
            41..=49 => {
                let n = 1 + self.rng.below(3);
                let mut ops = Vec::new();
                for _ in 0..n {
                    let key = self.key();
                    ops.push(match self.rng.below(4) {
                        0 | 1 => BatchOp::Put {
                            key,
                            val: self.val(),
                            expiry: if self.rng.chance(50) {
                                Expiry::TtlMs(self.ttl())
                            } else {
                                Expiry::Never
                            },
                        },
                        2 => BatchOp::Delete { key },
                        _ => BatchOp::Touch {
                            key,
                            ttl_ms: self.ttl(),
                        },
                    });
                }
                let mut expect = Vec::new();
                if self.rng.chance(50) {
                    let mut keys: Vec<Key> = ops.iter().map(BatchOp::key).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    for k in keys {
                        if self.rng.chance(60) {
                            let e = self.expected(k);
                            expect.push((k, e));
                        }
                    }
                }
                Op::Write {
                    ops,
                    expect,
                    durability: self.durability(),
                }
            }
            50..=61 => Op::PutIfVersion {
                key,
                val: self.val(),
                expected: self.expected(key),
                ttl_ms: self.maybe_ttl(),
            },
            62..=66 => match self.expected(key) {
                Some(expected) => Op::DeleteIfVersion { key, expected },
                None => Op::Delete { key },
            },
            67..=74 => Op::Touch {
                key,
                ttl_ms: self.ttl(),
                durability: None,
            },
            75..=87 => Op::Touch {
                key,
                ttl_ms: self.ttl(),
                durability: Some(self.durability()),
            },
            88..=93 => Op::ScanAll,
            _ => {
                let a = self.key();
                let b = self.key();
                Op::Range {
                    lo: a.min(b),
                    hi: a.max(b),
                }
            }
        }
    }

    /// Learns versions from an outcome.
    pub fn saw(&mut self, op: &Op, outcome: &Outcome) {
        match (op, outcome) {
            (Op::GetWithVersion { key }, Outcome::Versioned(Some((_, v))))
            | (Op::GetVersioned { key }, Outcome::Full(Some((_, v, _))))
            | (Op::PutIfVersion { key, .. }, Outcome::Seq(v)) => {
                self.seen.insert(*key, *v);
            }
            (
                _,
                Outcome::Conflict {
                    key, actual: Some(v), ..
                },
            ) => {
                self.seen.insert(*key, *v);
            }
            (Op::Write { ops, .. }, Outcome::Seq(v)) => {
                for o in ops {
                    if let BatchOp::Put { key, .. } = o {
                        self.seen.insert(*key, *v);
                    }
                }
            }
            _ => {}
        }
    }

    /// Maybe moves the clock forward before a call.
    pub fn maybe_move_clock(&mut self, clock: &ManualClock) {
        if self.rng.chance(self.mix.clock_moves) {
            clock.advance(Duration::from_millis(1 + self.rng.below(400)));
        }
    }
}

fn mix_seed(thread: usize) -> u64 {
    mix(0x5e55_10db ^ thread as u64)
}

// ---------------------------------------------------------------------------------------------
// The model of one key

/// A deadline: none, or somewhere in `[lo, hi]` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Deadline {
    Never,
    Within(u64, u64),
}

/// One key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyState {
    val: Option<ValId>,
    /// The value's version, where known.
    ver: Option<u64>,
    deadline: Deadline,
    /// The highest known version of the writes to this key so far.
    max_known: u64,
}

impl KeyState {
    pub fn absent(max_known: u64) -> KeyState {
        KeyState {
            val: None,
            ver: None,
            deadline: Deadline::Never,
            max_known,
        }
    }

    /// Whether the value (`Some`) can have version `x`.
    fn can_have(&self, key: Key, x: u64, versions: &Versions) -> bool {
        let Some(v) = self.val else { return false };
        match self.ver.or_else(|| versions.version(v)) {
            Some(known) => known == x,
            None => x > self.max_known && versions.owner.get(&(key, x)).is_none_or(|&o| o == v),
        }
    }
}

/// The store time of a call lies in `[lo, hi]`.
#[derive(Debug, Clone, Copy)]
struct Window {
    lo: u64,
    hi: u64,
}

/// Part of a call that concerns one key, in the order the call makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sub {
    /// A put (`Some`) or delete (`None`); the version if the call reported it.
    Write {
        val: Option<ValId>,
        deadline: Deadline,
        version: Option<u64>,
    },
    /// A touch and, for a single touch, what it returned.
    Touch {
        ttl_ms: u64,
        result: Option<bool>,
    },
    /// A precondition that held, or failed finding `actual`.
    Expect {
        expected: Option<u64>,
        failed_with: Option<Option<u64>>,
    },
    /// A read of the value (and version, and deadline, when the call returns them).
    Read(Option<ValId>),
    ReadVersioned(Option<(ValId, u64)>),
    ReadFull(Option<(ValId, u64, Option<u64>)>),
}

/// One call as one key sees it.
#[derive(Debug, Clone)]
struct KeyOp {
    call: usize,
    invoke: u64,
    response: u64,
    window: Window,
    subs: Vec<Sub>,
}

/// What every call of the history told about versions.
struct Versions {
    of: HashMap<ValId, u64>,
    /// (key, version) → the value that has it.
    owner: HashMap<(Key, u64), ValId>,
}

impl Versions {
    fn version(&self, v: ValId) -> Option<u64> {
        self.of.get(&v).copied()
    }
}

fn live_possible(s: &KeyState, w: Window) -> bool {
    s.val.is_some()
        && match s.deadline {
            Deadline::Never => true,
            Deadline::Within(_, hi) => hi > w.lo,
        }
}

fn dead_possible(s: &KeyState, w: Window) -> bool {
    s.val.is_none()
        || match s.deadline {
            Deadline::Never => false,
            Deadline::Within(lo, _) => lo <= w.hi,
        }
}

fn ttl_deadline(w: Window, ttl_ms: u64) -> Deadline {
    Deadline::Within((w.lo + ttl_ms).max(1), (w.hi + ttl_ms).max(1))
}

/// The states one sub-step can lead to from `s`.
fn step_sub(key: Key, s: KeyState, sub: &Sub, w: Window, versions: &Versions, out: &mut Vec<KeyState>) {
    match sub {
        Sub::Write { val, deadline, version } => {
            let version = version.or_else(|| val.and_then(|v| versions.version(v)));
            if version.is_some_and(|x| x <= s.max_known) {
                return; // versions of a key's writes rise
            }
            out.push(KeyState {
                val: *val,
                ver: version.filter(|_| val.is_some()),
                deadline: *deadline,
                max_known: s.max_known.max(version.unwrap_or(0)),
            });
        }
        Sub::Touch { ttl_ms, result } => {
            if result != &Some(false) && live_possible(&s, w) {
                out.push(KeyState {
                    deadline: ttl_deadline(w, *ttl_ms),
                    ..s
                });
            }
            if result != &Some(true) && dead_possible(&s, w) {
                out.push(s);
            }
        }
        Sub::Expect { expected, failed_with } => {
            let found = match failed_with {
                None => *expected,
                Some(actual) => *actual,
            };
            let ok = match found {
                None => dead_possible(&s, w),
                Some(x) => live_possible(&s, w) && s.can_have(key, x, versions),
            };
            if ok {
                out.push(s);
            }
        }
        Sub::Read(r) => {
            let ok = match r {
                None => dead_possible(&s, w),
                Some(v) => s.val == Some(*v) && live_possible(&s, w),
            };
            if ok {
                out.push(s);
            }
        }
        Sub::ReadVersioned(r) => {
            let ok = match r {
                None => dead_possible(&s, w),
                Some((v, x)) => s.val == Some(*v) && live_possible(&s, w) && s.can_have(key, *x, versions),
            };
            if ok {
                out.push(s);
            }
        }
        Sub::ReadFull(r) => match r {
            None => {
                if dead_possible(&s, w) {
                    out.push(s);
                }
            }
            Some((v, x, d)) => {
                if s.val != Some(*v) || !s.can_have(key, *x, versions) {
                    return;
                }
                match (s.deadline, d) {
                    (Deadline::Never, None) => out.push(s),
                    (Deadline::Within(lo, hi), Some(d)) if lo <= *d && *d <= hi && *d > w.lo => out.push(KeyState {
                        deadline: Deadline::Within(*d, *d),
                        ..s
                    }),
                    _ => {}
                }
            }
        },
    }
}

/// The set of states a whole key-op can lead to from any of `states`.
fn step(key: Key, states: &[KeyState], op: &KeyOp, versions: &Versions) -> Vec<KeyState> {
    let mut cur: Vec<KeyState> = states.to_vec();
    for sub in &op.subs {
        let mut next = Vec::new();
        for s in &cur {
            step_sub(key, *s, sub, op.window, versions, &mut next);
        }
        next.sort_unstable();
        next.dedup();
        if next.is_empty() {
            return next;
        }
        cur = next;
    }
    cur
}

// ---------------------------------------------------------------------------------------------
// Projecting calls onto keys

fn window(c: &Call) -> Window {
    Window {
        lo: c.clock_lo,
        hi: c.clock_hi,
    }
}

/// Each key's part of each call.
fn project(calls: &[Call], keys: u8) -> BTreeMap<Key, Vec<KeyOp>> {
    let mut per_key: BTreeMap<Key, Vec<KeyOp>> = (0..keys).map(|k| (k, Vec::new())).collect();
    for (i, c) in calls.iter().enumerate() {
        let w = window(c);
        let mut subs: BTreeMap<Key, Vec<Sub>> = BTreeMap::new();
        let mut add = |k: Key, s: Sub| subs.entry(k).or_default().push(s);
        match (&c.op, &c.outcome) {
            (Op::Put { key, val, ttl_ms }, Outcome::Done) => add(
                *key,
                Sub::Write {
                    val: Some(*val),
                    deadline: ttl_ms.map_or(Deadline::Never, |t| ttl_deadline(w, t)),
                    version: None,
                },
            ),
            (Op::Delete { key }, Outcome::Done) => add(
                *key,
                Sub::Write {
                    val: None,
                    deadline: Deadline::Never,
                    version: None,
                },
            ),
            (Op::Write { ops, expect, .. }, outcome) => {
                batch_subs(ops, expect, outcome, w, &mut add);
            }
            (
                Op::PutIfVersion {
                    key,
                    val,
                    expected,
                    ttl_ms,
                },
                outcome,
            ) => {
                let expiry = ttl_ms.map_or(Expiry::Never, Expiry::TtlMs);
                let ops = [BatchOp::Put {
                    key: *key,
                    val: *val,
                    expiry,
                }];
                batch_subs(&ops, &[(*key, *expected)], outcome, w, &mut add);
            }
            (Op::DeleteIfVersion { key, expected }, outcome) => {
                batch_subs(
                    &[BatchOp::Delete { key: *key }],
                    &[(*key, Some(*expected))],
                    outcome,
                    w,
                    &mut add,
                );
            }
            (Op::Touch { key, ttl_ms, .. }, Outcome::Touched(t)) => add(
                *key,
                Sub::Touch {
                    ttl_ms: *ttl_ms,
                    result: Some(*t),
                },
            ),
            (Op::Get { key }, Outcome::Value(v)) => add(*key, Sub::Read(*v)),
            (Op::GetWithVersion { key }, Outcome::Versioned(v)) => add(*key, Sub::ReadVersioned(*v)),
            (Op::GetVersioned { key }, Outcome::Full(v)) => add(*key, Sub::ReadFull(*v)),
            (Op::ScanAll | Op::Backup, Outcome::Entries(found)) => {
                for k in 0..keys {
                    add(k, Sub::Read(found.iter().find(|e| e.0 == k).map(|e| e.1)));
                }
            }
            (Op::Range { lo, hi }, Outcome::Entries(found)) => {
                for k in *lo..=*hi {
                    add(k, Sub::Read(found.iter().find(|e| e.0 == k).map(|e| e.1)));
                }
            }
            (op, outcome) => panic!("call {i}: {op:?} cannot return {outcome:?}"),
        }
        for (k, subs) in subs {
            per_key.entry(k).or_default().push(KeyOp {
                call: i,
                invoke: c.invoke,
                response: c.response,
                window: w,
                subs,
            });
        }
    }
    per_key
}

/// A batch's parts, key by key: its preconditions (those checked before a conflict held), then
/// its operations if it was written.
fn batch_subs(
    ops: &[BatchOp],
    expect: &[(Key, Option<u64>)],
    outcome: &Outcome,
    w: Window,
    add: &mut impl FnMut(Key, Sub),
) {
    let written_at = match outcome {
        Outcome::Done => None,
        Outcome::Seq(s) => Some(*s),
        Outcome::Conflict { key, expected, actual } => {
            for (k, e) in expect {
                if k == key && e == expected {
                    add(
                        *k,
                        Sub::Expect {
                            expected: *e,
                            failed_with: Some(*actual),
                        },
                    );
                    return;
                }
                add(
                    *k,
                    Sub::Expect {
                        expected: *e,
                        failed_with: None,
                    },
                );
            }
            panic!("a conflict on a key the batch did not expect: {outcome:?}");
        }
        other => panic!("a batch cannot return {other:?}"),
    };
    for (k, e) in expect {
        add(
            *k,
            Sub::Expect {
                expected: *e,
                failed_with: None,
            },
        );
    }
    // A batch of touches only, all dropped, reports the sequence number before it: versions
    // are taken only from batches that wrote something.
    let wrote = ops.iter().any(|o| !matches!(o, BatchOp::Touch { .. }));
    let version = written_at.filter(|_| wrote);
    for (i, o) in ops.iter().enumerate() {
        // Of several writes to one key in a batch, the last is the one with the version.
        let version = version.filter(|_| is_last_write(ops, i));
        match o {
            BatchOp::Put { key, val, expiry } => add(
                *key,
                Sub::Write {
                    val: Some(*val),
                    deadline: match expiry {
                        Expiry::Never => Deadline::Never,
                        Expiry::TtlMs(t) => ttl_deadline(w, *t),
                    },
                    version,
                },
            ),
            BatchOp::Delete { key } => add(
                *key,
                Sub::Write {
                    val: None,
                    deadline: Deadline::Never,
                    version,
                },
            ),
            BatchOp::Touch { key, ttl_ms } => add(
                *key,
                Sub::Touch {
                    ttl_ms: *ttl_ms,
                    result: None,
                },
            ),
        }
    }
}

/// Whether `ops[i]` is the batch's last put or delete of its key.
fn is_last_write(ops: &[BatchOp], i: usize) -> bool {
    let key = ops[i].key();
    !ops[i + 1..]
        .iter()
        .any(|o| o.key() == key && !matches!(o, BatchOp::Touch { .. }))
}

// ---------------------------------------------------------------------------------------------
// Checking

/// Figures of a check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub calls: u64,
    pub key_histories: u64,
    /// States the searches visited.
    pub states: u64,
}

/// Checks a history: every call's own result, versions, each key's linearizability from
/// `init`, and that scans and backups never show part of a batch. `keys`: the keyspace.
/// Returns each key's states after the history, if its last call was a read of everything.
pub fn check(calls: &[Call], init: &BTreeMap<Key, KeyState>, keys: u8) -> Result<Checked, String> {
    for c in calls {
        if let Outcome::Failed(e) = &c.outcome {
            return Err(format!("{:?} by thread {} failed: {e}", c.op, c.thread));
        }
    }
    let versions = learn_versions(calls)?;
    check_batches_whole(calls)?;
    check_scans_at_one_moment(calls)?;
    let mut figures = Checked {
        calls: calls.len() as u64,
        ..Checked::default()
    };
    for (key, ops) in project(calls, keys) {
        let start = init.get(&key).copied().unwrap_or(KeyState::absent(0));
        match linearize(key, &ops, start, &versions) {
            Ok(states) => {
                figures.key_histories += 1;
                figures.states += states;
            }
            Err(()) => return Err(explain(key, &ops, calls, start, &versions)),
        }
    }
    Ok(figures)
}

/// The state of each key as the quiescent reads at the end of a history report it (a
/// `GetVersioned` of each key after every other call): where the next history starts.
pub fn state_after(calls: &[Call], keys: u8, versions_max: &mut BTreeMap<Key, u64>) -> BTreeMap<Key, KeyState> {
    for c in calls {
        for (k, v) in written_versions(c) {
            let m = versions_max.entry(k).or_default();
            *m = (*m).max(v);
        }
    }
    let mut out = BTreeMap::new();
    for k in 0..keys {
        let last = calls
            .iter()
            .filter(|c| c.op == Op::GetVersioned { key: k })
            .max_by_key(|c| c.invoke)
            .expect("a final read of every key");
        let max_known = versions_max.get(&k).copied().unwrap_or(0);
        let state = match last.outcome {
            Outcome::Full(Some((v, x, d))) => KeyState {
                val: Some(v),
                ver: Some(x),
                deadline: d.map_or(Deadline::Never, |d| Deadline::Within(d, d)),
                max_known: max_known.max(x),
            },
            _ => KeyState::absent(max_known),
        };
        out.insert(k, state);
    }
    out
}

/// The (key, version) pairs of the writes a call reports.
fn written_versions(c: &Call) -> Vec<(Key, u64)> {
    match (&c.op, &c.outcome) {
        (Op::Write { ops, .. }, Outcome::Seq(s)) if ops.iter().any(|o| !matches!(o, BatchOp::Touch { .. })) => ops
            .iter()
            .filter(|o| !matches!(o, BatchOp::Touch { .. }))
            .map(|o| (o.key(), *s))
            .collect(),
        (Op::PutIfVersion { key, .. } | Op::DeleteIfVersion { key, .. }, Outcome::Seq(s)) => vec![(*key, *s)],
        (Op::GetWithVersion { key }, Outcome::Versioned(Some((_, x)))) => vec![(*key, *x)],
        (Op::GetVersioned { key }, Outcome::Full(Some((_, x, _)))) => vec![(*key, *x)],
        _ => Vec::new(),
    }
}

/// Every version any call reports, checked for consistency: a value has one version, a version
/// belongs to one value of a key.
fn learn_versions(calls: &[Call]) -> Result<Versions, String> {
    let mut of: HashMap<ValId, u64> = HashMap::new();
    let mut owner: HashMap<(Key, u64), ValId> = HashMap::new();
    let mut learn = |key: Key, v: ValId, x: u64, c: &Call| -> Result<(), String> {
        if let Some(&old) = of.get(&v) {
            if old != x {
                return Err(format!(
                    "value {v:#x} of k{key} shows version {x} in {c:?}, and {old} elsewhere"
                ));
            }
        }
        of.insert(v, x);
        if let Some(&o) = owner.get(&(key, x)) {
            if o != v {
                return Err(format!(
                    "k{key}: values {o:#x} and {v:#x} both have version {x} ({c:?})"
                ));
            }
        }
        owner.insert((key, x), v);
        Ok(())
    };
    for c in calls {
        match (&c.op, &c.outcome) {
            (Op::Write { ops, .. }, Outcome::Seq(s)) => {
                for (i, o) in ops.iter().enumerate() {
                    if let BatchOp::Put { key, val, .. } = o {
                        if is_last_write(ops, i) {
                            learn(*key, *val, *s, c)?;
                        }
                    }
                }
            }
            (Op::PutIfVersion { key, val, .. }, Outcome::Seq(s)) => learn(*key, *val, *s, c)?,
            (Op::GetWithVersion { key }, Outcome::Versioned(Some((v, x)))) => learn(*key, *v, *x, c)?,
            (Op::GetVersioned { key }, Outcome::Full(Some((v, x, _)))) => learn(*key, *v, *x, c)?,
            _ => {}
        }
    }
    Ok(Versions { of, owner })
}

/// A scan or backup shows the store at one moment: some time T in its window at which every
/// value it shows was current. A value's write took effect after its invocation, and stopped
/// being current before any write of that key invoked after it returned had itself returned;
/// so T lies after the latest invocation of the writes shown, and before the earliest
/// response of a write that surely replaced one of them. If those bounds cross, no moment
/// explains the scan, even though each key's part of it is explained on its own.
fn check_scans_at_one_moment(calls: &[Call]) -> Result<(), String> {
    // The calls that wrote something, per key: (invoke, response, value written or None).
    let mut writes: HashMap<Key, Vec<(u64, u64, Option<ValId>)>> = HashMap::new();
    for c in calls {
        let wrote = matches!(c.outcome, Outcome::Done | Outcome::Seq(_));
        if !wrote {
            continue;
        }
        let mut add = |k: Key, v: Option<ValId>| writes.entry(k).or_default().push((c.invoke, c.response, v));
        match &c.op {
            Op::Put { key, val, .. } | Op::PutIfVersion { key, val, .. } => add(*key, Some(*val)),
            Op::Delete { key } | Op::DeleteIfVersion { key, .. } => add(*key, None),
            Op::Write { ops, .. } => {
                for (i, o) in ops.iter().enumerate() {
                    match o {
                        BatchOp::Put { key, val, .. } if is_last_write(ops, i) => add(*key, Some(*val)),
                        BatchOp::Delete { key } if is_last_write(ops, i) => add(*key, None),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    for c in calls {
        let Outcome::Entries(found) = &c.outcome else { continue };
        let (mut after, mut before) = (c.invoke, c.response);
        let mut why = (String::from("its invocation"), String::from("its response"));
        for &(k, v) in found {
            let Some(w) = writes.get(&k).and_then(|ws| ws.iter().find(|w| w.2 == Some(v))) else {
                continue; // written before this history began
            };
            if w.0 > after {
                after = w.0;
                why.0 = format!("k{k}'s value {v:#x} was written");
            }
            for x in writes[&k].iter().filter(|x| x.0 > w.1) {
                if x.1 < before {
                    before = x.1;
                    why.1 = format!(
                        "k{k}'s value {v:#x} was surely replaced (by a write returned at {})",
                        x.1
                    );
                }
            }
        }
        if after >= before {
            return Err(format!(
                "{:?} [{} .. {}] shows no one moment of the store: it must come after {} (at {after}), \
                 but before {} (at {before}); it returned {found:?}",
                c.op, c.invoke, c.response, why.0, why.1
            ));
        }
    }
    Ok(())
}

/// A scan or backup that shows one key's value from a batch shows, for every other key the
/// batch put, nothing written before the batch began.
fn check_batches_whole(calls: &[Call]) -> Result<(), String> {
    // Which call wrote each value, and which keys each batch put.
    let mut writer: HashMap<ValId, usize> = HashMap::new();
    for (i, c) in calls.iter().enumerate() {
        match &c.op {
            Op::Put { val, .. } | Op::PutIfVersion { val, .. } => {
                writer.insert(*val, i);
            }
            Op::Write { ops, .. } => {
                for o in ops {
                    if let BatchOp::Put { val, .. } = o {
                        writer.insert(*val, i);
                    }
                }
            }
            _ => {}
        }
    }
    for c in calls {
        let Outcome::Entries(found) = &c.outcome else { continue };
        let seen: HashMap<Key, ValId> = found.iter().copied().collect();
        for &(_, v) in found {
            let Some(&b) = writer.get(&v) else { continue };
            let batch = &calls[b];
            let Op::Write { ops, .. } = &batch.op else { continue };
            for (i, o) in ops.iter().enumerate() {
                let BatchOp::Put { key, val, .. } = o else { continue };
                if !is_last_write(ops, i) {
                    continue; // overwritten in the batch itself
                }
                let Some(&other) = seen.get(key) else { continue };
                if other == *val {
                    continue;
                }
                if let Some(&w) = writer.get(&other) {
                    if calls[w].response < batch.invoke {
                        let mut s = format!(
                            "{:?} shows part of a batch: {v:#x} from {:?}, but for k{key} {other:#x}, written before \
                             that batch began\n",
                            c.op, batch.op
                        );
                        let mut around: Vec<&Call> = calls
                            .iter()
                            .filter(|x| x.invoke >= calls[w].invoke && x.invoke <= c.response)
                            .filter(|x| touches_key(&x.op, *key) || std::ptr::eq(*x, c))
                            .collect();
                        around.sort_by_key(|x| x.invoke);
                        for x in around {
                            let _ = writeln!(
                                s,
                                "  [{:>6} .. {:>6}] t{} clock {}..{} {:?} -> {:?}",
                                x.invoke, x.response, x.thread, x.clock_lo, x.clock_hi, x.op, x.outcome
                            );
                        }
                        return Err(s);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether a call writes, touches or expects `key`.
fn touches_key(op: &Op, key: Key) -> bool {
    match op {
        Op::Put { key: k, .. }
        | Op::Delete { key: k }
        | Op::PutIfVersion { key: k, .. }
        | Op::DeleteIfVersion { key: k, .. }
        | Op::Touch { key: k, .. } => *k == key,
        Op::Write { ops, expect, .. } => ops.iter().any(|o| o.key() == key) || expect.iter().any(|e| e.0 == key),
        _ => false,
    }
}

/// Wing and Gong's search with Lowe's memoisation over one key's calls. Returns the number of
/// (linearized set, states) pairs visited.
fn linearize(key: Key, ops: &[KeyOp], start: KeyState, versions: &Versions) -> Result<u64, ()> {
    let n = ops.len();
    if n == 0 {
        return Ok(0);
    }
    // Events in time order: (time, op, is_call), linked as a list the search lifts calls from.
    let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.invoke, i, true));
        events.push((o.response, i, false));
    }
    events.sort_unstable();
    let len = events.len();
    // Node 0 is the head, event j is node j + 1, and node len + 1 is the end.
    let end = len + 1;
    let mut next: Vec<usize> = (0..=len).map(|j| j + 1).collect();
    let mut prev: Vec<usize> = (0..=len).map(|j| j.saturating_sub(1)).collect();
    let mut ret_node = vec![0usize; n];
    for (j, e) in events.iter().enumerate() {
        if !e.2 {
            ret_node[e.1] = j + 1;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = node;
        if nx != end {
            prev[nx] = node;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Vec<KeyState>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<KeyState>)> = Vec::new();
    let mut state = vec![start];
    let mut cur = next[0];
    loop {
        if next[0] == end {
            return Ok(cache.len() as u64);
        }
        let (_, op, is_call) = events[cur - 1];
        if is_call {
            let after = step(key, &state, &ops[op], versions);
            if !after.is_empty() {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), after.clone())) {
                    stack.push((cur, std::mem::replace(&mut state, after)));
                    lift(&mut next, &mut prev, cur);
                    lift(&mut next, &mut prev, ret_node[op]);
                    cur = next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cur = next[cur];
        } else {
            // A call that returned before any order explained it: undo the last choice.
            let Some((node, before)) = stack.pop() else {
                return Err(());
            };
            let (_, op, _) = events[node - 1];
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut next, &mut prev, ret_node[op]);
            unlift(&mut next, &mut prev, node);
            cur = next[node];
        }
    }
}

/// Whether a key-op changes nothing (reads, preconditions, a touch that found nothing): leaving
/// it out of a linearizable history leaves a linearizable history.
fn only_observes(op: &KeyOp) -> bool {
    op.subs.iter().all(|s| match s {
        Sub::Read(_) | Sub::ReadVersioned(_) | Sub::ReadFull(_) => true,
        Sub::Touch { result, .. } => *result == Some(false),
        // A precondition that failed stops the batch: nothing of it was written.
        Sub::Expect { failed_with, .. } => failed_with.is_some(),
        Sub::Write { .. } => false,
    })
}

/// A smaller history that no order explains either: calls that only observe are left out one by
/// one while the rest still fails (writes all stay: without one, a later read could fail for
/// that reason alone).
fn minimize(key: Key, ops: &[KeyOp], start: KeyState, versions: &Versions) -> Vec<KeyOp> {
    let mut keep: Vec<KeyOp> = ops.to_vec();
    let mut i = keep.len();
    while i > 0 {
        i -= 1;
        if !only_observes(&keep[i]) {
            continue;
        }
        let mut fewer = keep.clone();
        fewer.remove(i);
        if linearize(key, &fewer, start, versions).is_err() {
            keep = fewer;
        }
    }
    keep
}

/// A readable account of one key's history that no order explains: a smallest failing part
/// of it, then the whole of it.
fn explain(key: Key, ops: &[KeyOp], calls: &[Call], start: KeyState, versions: &Versions) -> String {
    let line = |o: &KeyOp| {
        let c = &calls[o.call];
        format!(
            "  [{:>6} .. {:>6}] t{} clock {}..{} {:?} -> {:?}\n",
            o.invoke, o.response, c.thread, c.clock_lo, c.clock_hi, c.op, c.outcome
        )
    };
    let mut s = format!(
        "k{key}: no order of its {} calls explains their results (linearizability violated)\nstart: {start:?}\n",
        ops.len()
    );
    let core = minimize(key, ops, start, versions);
    let _ = writeln!(
        s,
        "these {} of them (every write, and the reads no order explains) already cannot be ordered:",
        core.len()
    );
    for o in &core {
        s.push_str(&line(o));
    }
    let _ = writeln!(s, "all of them:");
    let mut sorted: Vec<&KeyOp> = ops.iter().collect();
    sorted.sort_by_key(|o| o.invoke);
    for o in sorted {
        s.push_str(&line(o));
    }
    s
}

/// A `GetVersioned` of every key, one after another: the quiescent end of a history.
pub fn final_reads(recorder: &Recorder, db: &Db, keys: u8, env: &Env) {
    for k in 0..keys {
        recorder.call(db, usize::MAX, Op::GetVersioned { key: k }, env);
    }
}

/// What `state_after` returns for a store nobody wrote.
pub fn empty_states(keys: u8) -> BTreeMap<Key, KeyState> {
    (0..keys).map(|k| (k, KeyState::absent(0))).collect()
}

/// Keys of `set` as a sorted list, for messages.
pub fn sorted<T: Ord + Copy>(set: &BTreeSet<T>) -> Vec<T> {
    set.iter().copied().collect()
}
