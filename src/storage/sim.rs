//! A simulated, fault-injecting file system (cargo feature `sim`).
//!
//! It keeps, for every file and every directory entry, what is durable apart from what was only
//! written, and [`SimStorage::crash`] makes a new durable truth under a [`CrashMode`]. Faults from
//! docs/reliability.md are injected from one seed:
//!
//! | fault | how |
//! |---|---|
//! | F1 lost unsynced writes | [`CrashMode::DropUnsynced`]; or each unsynced write kept or lost in [`CrashMode::Torn`] |
//! | F2 torn writes | [`CrashMode::Torn`]: each sector of an unsynced write is new, old, zeros or garbage |
//! | F3 reordered unsynced writes | [`CrashMode::Torn`] keeps sectors independently, so a later one may land without an earlier |
//! | F4 lost directory entries | creates, renames and removes not followed by `sync_dir` may be undone by a crash |
//! | F5 fsync EIO | [`Faults::sync_eio`]: the sync fails and the file's unsynced writes are dropped; the next sync succeeds |
//! | F6 ENOSPC part-way | [`Faults::enospc`]: a write stores a prefix, then fails with `StorageFull`; or a full disk, [`SimStorage::set_capacity`] |
//! | F7 short writes | [`Faults::short_write`]: a write stores and reports a prefix |
//! | F8 bit flips | [`SimStorage::flip_bit`] |
//! | F9 zeroed or cut tails | [`SimStorage::zero_range`], [`SimStorage::set_durable_len`] |
//! | F10 misdirected writes | [`Faults::misdirect`]: a write lands at another offset and reports success |
//! | F11 read EIO | [`Faults::read_eio`] |
//! | F12 lost size changes | `set_len` is an unsynced change like a write; a crash may undo it |
//!
//! Every operation counts toward [`SimStorage::ops`]; [`SimStorage::halt_after`] makes every
//! operation from the n-th on fail, as if the machine stopped there.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::{Condvar, Mutex};

use super::{LockGuard, MappedFile, OpenMode, Storage, StorageFile};

/// The OS error numbers the simulated faults carry, as Linux reports them (an application tells
/// "disk full" from "I/O error" by `raw_os_error`).
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A point in the engine's protocols where the hook of [`crate::Options::on_point`] runs, on
/// the thread that reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Point {
    /// A checkpoint fixed its base and froze the index; leadership is released, writers go
    /// on, and nothing is copied yet.
    CheckpointFrozen,
    /// The checkpoint's snapshot is written and fsynced under its temporary name; the index
    /// is still frozen.
    CheckpointWritten,
    /// The snapshot is the index's base (the frozen layer is gone); the files it covers are
    /// still on disk and open.
    CheckpointRebased,
    /// The checkpoint deleted the files its snapshot covers.
    CheckpointDone,
}

/// Probabilities (0.0 to 1.0) of faults injected on each operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A write stores and reports only a prefix (F7).
    pub short_write: f64,
    /// A write stores a prefix, then fails with `StorageFull` (F6).
    pub enospc: f64,
    /// A sync fails with EIO and drops the file's unsynced writes from what is durable (F5).
    pub sync_eio: f64,
    /// A read fails with EIO (F11).
    pub read_eio: f64,
    /// A write lands at a different offset and reports success (F10).
    pub misdirect: f64,
}

/// What a crash keeps of what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything unsynced is lost (F1), directory entries included.
    DropUnsynced,
    /// Each unsynced write, size change and directory entry change is kept or lost at random;
    /// each `sector`-byte piece of a kept write independently lands whole, or is old, zeros or
    /// garbage (F1, F2, F3, F4, F12).
    Torn {
        /// Sector size: 512 or 4096.
        sector: usize,
    },
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Short writes.
    pub short_writes: u64,
    /// ENOSPC failures.
    pub enospc: u64,
    /// fsync EIO failures.
    pub sync_eio: u64,
    /// Read EIO failures.
    pub read_eio: u64,
    /// Misdirected writes.
    pub misdirects: u64,
    /// Crashes.
    pub crashes: u64,
    /// Unsynced writes lost in crashes.
    pub writes_lost: u64,
    /// Sectors torn (old, zeros or garbage) in crashes.
    pub sectors_torn: u64,
    /// Directory entry changes lost in crashes.
    pub dir_changes_lost: u64,
    /// Bits flipped by [`SimStorage::flip_bit`].
    pub bit_flips: u64,
}

/// A change to a file that a crash may or may not keep.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What a crash keeps for sure.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Change>,
    /// Open handles (of any generation).
    handles: usize,
}

/// A directory entry change not yet made durable by `sync_dir`.
#[derive(Debug, Clone)]
enum DirChange {
    Link { path: PathBuf, inode: usize },
    Unlink { path: PathBuf },
}

struct State {
    rng: u64,
    faults: Faults,
    counts: FaultCounts,
    inodes: Vec<Inode>,
    /// Path → inode, as the running system sees it.
    names: BTreeMap<PathBuf, usize>,
    /// Path → inode, as a crash would leave it (before pending changes).
    durable_names: BTreeMap<PathBuf, usize>,
    /// Changes per directory since its last sync.
    pending_dirs: BTreeMap<PathBuf, Vec<DirChange>>,
    dirs: BTreeSet<PathBuf>,
    locks: HashSet<PathBuf>,
    ops: u64,
    halt_after: Option<u64>,
    /// Bumped by every crash; handles from before a crash stop working.
    generation: u64,
    /// While set, syncs wait (see [`SimStorage::hold_syncs`]).
    syncs_held: bool,
    /// Syncs waiting at the gate.
    syncs_waiting: u64,
    /// Syncs the held gate lets through before it closes again.
    sync_passes: u64,
    /// Syncs still to fail (F5) whatever the fault probabilities, from [`SimStorage::fail_next_syncs`].
    syncs_to_fail: u64,
    /// The disk's size, from [`SimStorage::set_capacity`].
    capacity: Option<u64>,
    /// Bytes returned by reads of files so far.
    bytes_read: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Counts an operation; fails it if the machine has halted.
    fn op(&mut self, generation: Option<u64>) -> io::Result<()> {
        if generation.is_some_and(|g| g != self.generation) {
            return Err(io::Error::other("sim: file handle from before a crash"));
        }
        self.ops += 1;
        if self.halt_after.is_some_and(|h| self.ops > h) {
            return Err(io::Error::other("sim: the machine has halted"));
        }
        Ok(())
    }

    /// Bytes the files hold (the length of every file named or open now, as a file system
    /// counts them: a removed file's space is free once no handle is open, even before the
    /// removal is durable).
    fn used(&self) -> u64 {
        let named: BTreeSet<usize> = self.names.values().copied().collect();
        let live = |(i, inode): &(usize, &Inode)| inode.handles > 0 || named.contains(i);
        self.inodes
            .iter()
            .enumerate()
            .filter(live)
            .map(|(_, i)| i.data.len() as u64)
            .sum()
    }

    fn link(&mut self, path: &Path, inode: usize) {
        if let Some(replaced) = self.names.insert(path.to_path_buf(), inode) {
            self.release_if_unused(replaced);
        }
        let dir = parent(path);
        self.pending_dirs.entry(dir).or_default().push(DirChange::Link {
            path: path.to_path_buf(),
            inode,
        });
    }

    fn unlink(&mut self, path: &Path) {
        let removed = self.names.remove(path);
        let dir = parent(path);
        self.pending_dirs.entry(dir).or_default().push(DirChange::Unlink {
            path: path.to_path_buf(),
        });
        if let Some(i) = removed {
            self.release_if_unused(i);
        }
    }

    /// Frees the bytes of inode `i` once nothing can reach it again: no open handle, no name
    /// now or after a crash, no pending directory change that could give it one. (A long run
    /// creates and deletes segments by the million; without this their bytes stayed.)
    fn release_if_unused(&mut self, i: usize) {
        if self.inodes[i].handles > 0
            || self.names.values().any(|&n| n == i)
            || self.durable_names.values().any(|&n| n == i)
            || self
                .pending_dirs
                .values()
                .flatten()
                .any(|c| matches!(c, DirChange::Link { inode, .. } if *inode == i))
        {
            return;
        }
        let inode = &mut self.inodes[i];
        inode.data = Vec::new();
        inode.durable = Vec::new();
        inode.pending = Vec::new();
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data: bytes } => {
            let end = *offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset as usize..end].copy_from_slice(bytes);
        }
        Change::SetLen(n) => data.resize(*n as usize, 0),
    }
}

/// The simulated file system. Clones share it.
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
    gate: Arc<Condvar>,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimStorage")
            .field("ops", &s.ops)
            .field("files", &s.names.len())
            .field("counts", &s.counts)
            .finish_non_exhaustive()
    }
}

impl SimStorage {
    /// An empty file system whose faults and crash outcomes follow `seed`.
    pub fn new(seed: u64) -> SimStorage {
        SimStorage {
            state: Arc::new(Mutex::new(State {
                rng: seed,
                faults: Faults::default(),
                counts: FaultCounts::default(),
                inodes: Vec::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_dirs: BTreeMap::new(),
                dirs: BTreeSet::new(),
                locks: HashSet::new(),
                ops: 0,
                halt_after: None,
                generation: 0,
                syncs_held: false,
                syncs_waiting: 0,
                sync_passes: 0,
                syncs_to_fail: 0,
                capacity: None,
                bytes_read: 0,
            })),
            gate: Arc::new(Condvar::new()),
        }
    }

    /// Sets the fault probabilities for the operations that follow.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// How many faults were injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state.lock().counts
    }

    /// Gives the disk a size (`None`: unbounded, the default): a write that would make the files
    /// hold more stores what fits and reports it (a short write), and with no room at all fails
    /// with `ENOSPC`. Overwrites of a file's existing bytes always succeed.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// Bytes every read of every file returned so far (the engine reads through `read_at`
    /// only: this storage has no maps): what a get costs in reads.
    pub fn bytes_read(&self) -> u64 {
        self.state.lock().bytes_read
    }

    /// Bytes all files hold now (named or still open).
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used()
    }

    /// While `held`, every sync waits at a gate (to line up writers behind a slow fsync);
    /// releasing lets them all go.
    pub fn hold_syncs(&self, held: bool) {
        self.state.lock().syncs_held = held;
        self.gate.notify_all();
    }

    /// Lets `n` syncs through a held gate, which stays held for the ones after.
    pub fn pass_syncs(&self, n: u64) {
        self.state.lock().sync_passes += n;
        self.gate.notify_all();
    }

    /// The next `n` syncs (of any file) fail with EIO and drop the file's unsynced writes, as
    /// [`Faults::sync_eio`] does; the ones after succeed again.
    pub fn fail_next_syncs(&self, n: u64) {
        self.state.lock().syncs_to_fail = n;
    }

    /// Syncs waiting at the gate now.
    pub fn syncs_waiting(&self) -> u64 {
        self.state.lock().syncs_waiting
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Every operation after the first `n` (counted from the start) fails, as if the machine
    /// stopped. `None` resumes.
    pub fn halt_after(&self, n: Option<u64>) {
        self.state.lock().halt_after = n;
    }

    /// The machine loses power: what was synced stays; the rest follows `mode`. Open handles
    /// and locks from before stop working. Resumes a halted machine.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.state.lock();
        let s = &mut *s;
        s.counts.crashes += 1;
        s.generation += 1;
        s.halt_after = None;
        s.locks.clear();
        // Directory entries: durable ones, plus (torn mode) each pending change at random, in order.
        let mut names = s.durable_names.clone();
        let pending: Vec<DirChange> = std::mem::take(&mut s.pending_dirs).into_values().flatten().collect();
        for change in pending {
            let keep = matches!(mode, CrashMode::Torn { .. }) && s.below(2) == 0;
            if !keep {
                s.counts.dir_changes_lost += 1;
                continue;
            }
            match change {
                DirChange::Link { path, inode } => {
                    names.insert(path, inode);
                }
                DirChange::Unlink { path } => {
                    names.remove(&path);
                }
            }
        }
        // File contents.
        for i in 0..s.inodes.len() {
            let pending = std::mem::take(&mut s.inodes[i].pending);
            let mut data = s.inodes[i].durable.clone();
            for change in &pending {
                match mode {
                    CrashMode::DropUnsynced => s.counts.writes_lost += 1,
                    CrashMode::Torn { sector } => crash_change(s, &mut data, change, sector),
                }
            }
            let inode = &mut s.inodes[i];
            inode.durable = data.clone();
            inode.data = data;
        }
        s.names = names.clone();
        s.durable_names = names;
        for i in 0..s.inodes.len() {
            s.release_if_unused(i);
        }
    }

    /// Flips one bit of a file, in what is durable and what reads see (F8).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        self.state.lock().counts.bit_flips += 1;
        self.edit(path, |data| {
            if let Some(b) = data.get_mut(offset as usize) {
                *b ^= 1 << (bit % 8);
            }
        })
    }

    /// Zeroes a byte range of a file, durable and visible (F9).
    pub fn zero_range(&self, path: &Path, start: u64, end: u64) -> io::Result<()> {
        self.edit(path, |data| {
            let end = (end as usize).min(data.len());
            if let Some(r) = data.get_mut(start as usize..end) {
                r.fill(0);
            }
        })
    }

    /// Sets a file's length, durable and visible (F9, F12).
    pub fn set_durable_len(&self, path: &Path, len: u64) -> io::Result<()> {
        self.edit(path, |data| data.resize(len as usize, 0))
    }

    /// Overwrites bytes of a file, durable and visible (a misdirected or stray write found later).
    pub fn write_durable(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.edit(path, |data| {
            apply(
                data,
                &Change::Write {
                    offset,
                    data: bytes.to_vec(),
                },
            )
        })
    }

    /// A file's current (visible) bytes, for tests.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state.lock();
        let i = *s.names.get(path).ok_or_else(not_found)?;
        Ok(s.inodes[i].data.clone())
    }

    /// Paths of all files, for tests.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }

    fn edit(&self, path: &Path, f: impl Fn(&mut Vec<u8>)) -> io::Result<()> {
        let mut s = self.state.lock();
        let i = *s.names.get(path).ok_or_else(not_found)?;
        let inode = &mut s.inodes[i];
        f(&mut inode.durable);
        f(&mut inode.data);
        Ok(())
    }
}

/// Applies one unsynced change to `data` the way a crash might have left it.
fn crash_change(s: &mut State, data: &mut Vec<u8>, change: &Change, sector: usize) {
    match change {
        Change::SetLen(n) => {
            if s.below(2) == 0 {
                data.resize(*n as usize, 0);
            } else {
                s.counts.writes_lost += 1;
            }
        }
        Change::Write { offset, data: bytes } => {
            if s.below(4) == 0 {
                s.counts.writes_lost += 1;
                return;
            }
            // Sector by sector (aligned to the file's sectors): whole, old, zeros or garbage.
            let start = *offset as usize;
            let end = start + bytes.len();
            let mut at = start;
            while at < end {
                let next = ((at / sector) + 1) * sector;
                let piece_end = next.min(end);
                let piece = &bytes[at - start..piece_end - start];
                let outcome = s.below(8);
                if data.len() < piece_end && outcome != 1 {
                    data.resize(piece_end, 0);
                }
                match outcome {
                    // Mostly: the sector landed.
                    0 | 2..=5 => data[at..piece_end].copy_from_slice(piece),
                    // Old bytes stay (the sector never landed).
                    1 => s.counts.sectors_torn += 1,
                    // Zeros.
                    6 => {
                        data[at..piece_end].fill(0);
                        s.counts.sectors_torn += 1;
                    }
                    // Garbage.
                    _ => {
                        for b in &mut data[at..piece_end] {
                            *b = s.next() as u8;
                        }
                        s.counts.sectors_torn += 1;
                    }
                }
                at = piece_end;
            }
        }
    }
}

/// Renames directory `from` (and everything in it) to `to`, which must not exist. Like the
/// creation of a directory, this is durable at once: the fault model is about the entries of
/// files, and a backup's final rename (the only directory rename) is followed by a directory
/// fsync anyway.
fn rename_dir(s: &mut State, from: &Path, to: &Path) -> io::Result<()> {
    if s.dirs.contains(to) || s.names.contains_key(to) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "sim: the new name exists"));
    }
    let moved = |p: &Path| p.strip_prefix(from).ok().map(|rest| to.join(rest));
    let move_keys = |m: &mut BTreeMap<PathBuf, usize>| {
        let inside: Vec<PathBuf> = m.keys().filter(|p| p.starts_with(from)).cloned().collect();
        for p in inside {
            if let (Some(i), Some(q)) = (m.remove(&p), moved(&p)) {
                m.insert(q, i);
            }
        }
    };
    move_keys(&mut s.names);
    move_keys(&mut s.durable_names);
    let dirs: Vec<PathBuf> = s.dirs.iter().filter(|p| p.starts_with(from)).cloned().collect();
    for d in dirs {
        s.dirs.remove(&d);
        if let Some(q) = moved(&d) {
            s.dirs.insert(q);
        }
    }
    let pending: Vec<PathBuf> = s.pending_dirs.keys().filter(|p| p.starts_with(from)).cloned().collect();
    for d in pending {
        let changes = s.pending_dirs.remove(&d).unwrap_or_default();
        let changes = changes
            .into_iter()
            .map(|c| match c {
                DirChange::Link { path, inode } => DirChange::Link {
                    path: moved(&path).unwrap_or(path),
                    inode,
                },
                DirChange::Unlink { path } => DirChange::Unlink {
                    path: moved(&path).unwrap_or(path),
                },
            })
            .collect();
        if let Some(q) = moved(&d) {
            s.pending_dirs.insert(q, changes);
        }
    }
    Ok(())
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "sim: no such file")
}

struct SimFile {
    state: Arc<Mutex<State>>,
    gate: Arc<Condvar>,
    inode: usize,
    generation: u64,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("inode", &self.inode)
            .finish_non_exhaustive()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        s.inodes[self.inode].handles -= 1;
        s.release_if_unused(self.inode);
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.state.lock();
        s.op(Some(self.generation))?;
        let p = s.faults.read_eio;
        if s.chance(p) {
            s.counts.read_eio += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let data = &s.inodes[self.inode].data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        s.bytes_read += n as u64;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "sim: read-only handle"));
        }
        let mut s = self.state.lock();
        s.op(Some(self.generation))?;
        let faults = s.faults;
        let mut n = buf.len();
        let mut fail = None;
        if buf.len() > 1 && s.chance(faults.enospc) {
            s.counts.enospc += 1;
            n = s.below(buf.len() as u64) as usize;
            fail = Some(io::Error::from_raw_os_error(ENOSPC));
        } else if buf.len() > 1 && s.chance(faults.short_write) {
            s.counts.short_writes += 1;
            n = 1 + s.below(buf.len() as u64 - 1) as usize;
        }
        if let Some(capacity) = s.capacity {
            // A full disk: overwrites within the file always land (its blocks are allocated);
            // what extends it lands only as far as there is room.
            let len = s.inodes[self.inode].data.len() as u64;
            let room = capacity.saturating_sub(s.used());
            let fits = (len + room).saturating_sub(offset).min(n as u64) as usize;
            if fits < n {
                n = fits;
                if n == 0 {
                    fail = Some(io::Error::from_raw_os_error(ENOSPC));
                }
            }
        }
        let mut at = offset;
        if fail.is_none() && s.chance(faults.misdirect) {
            s.counts.misdirects += 1;
            at = offset + 512 * (1 + s.below(8));
        }
        let change = Change::Write {
            offset: at,
            data: buf[..n].to_vec(),
        };
        let inode = &mut s.inodes[self.inode];
        apply(&mut inode.data, &change);
        inode.pending.push(change);
        match fail {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.syncs_waiting += 1;
        while s.syncs_held && s.sync_passes == 0 {
            self.gate.wait(&mut s);
        }
        if s.syncs_held {
            s.sync_passes -= 1;
        }
        s.syncs_waiting -= 1;
        s.op(Some(self.generation))?;
        let p = s.faults.sync_eio;
        let forced = s.syncs_to_fail > 0;
        s.syncs_to_fail = s.syncs_to_fail.saturating_sub(1);
        if forced || s.chance(p) {
            // Linux: the dirty pages are dropped (marked clean) and the error reported once.
            s.counts.sync_eio += 1;
            s.inodes[self.inode].pending.clear();
            return Err(io::Error::from_raw_os_error(EIO));
        }
        // What reaches the disk is the changes since the last sync, not what reads see: after
        // a failed sync, the writes it dropped stay visible (the page cache still holds them,
        // marked clean) but a later successful sync does not write them.
        let inode = &mut s.inodes[self.inode];
        for change in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &change);
        }
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(Some(self.generation))?;
        let inode = &mut s.inodes[self.inode];
        let change = Change::SetLen(len);
        apply(&mut inode.data, &change);
        inode.pending.push(change);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut s = self.state.lock();
        s.op(Some(self.generation))?;
        Ok(s.inodes[self.inode].data.len() as u64)
    }

    fn map(&self) -> io::Result<Option<Arc<dyn MappedFile>>> {
        // NOTE: no maps: the engine then reads through read_at, where read faults apply.
        Ok(None)
    }
}

struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        if s.generation == self.generation {
            s.locks.remove(&self.path);
        }
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(None)?;
        if s.names.contains_key(dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "sim: a file is in the way",
            ));
        }
        // NOTE: directories are durable at once; the entries inside them are what the fault
        // model is about.
        for a in dir.ancestors() {
            s.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.state.lock();
        s.op(None)?;
        if !s.dirs.contains(&parent(path)) {
            return Err(not_found());
        }
        let inode = match (mode, s.names.get(path).copied()) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "sim: file exists"));
            }
            (OpenMode::CreateNew, None) => {
                s.inodes.push(Inode::default());
                let i = s.inodes.len() - 1;
                s.link(path, i);
                i
            }
            (_, Some(i)) => i,
            (_, None) => return Err(not_found()),
        };
        s.inodes[inode].handles += 1;
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            gate: self.gate.clone(),
            inode,
            generation: s.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(None)?;
        if s.dirs.contains(from) {
            return rename_dir(&mut s, from, to);
        }
        let i = *s.names.get(from).ok_or_else(not_found)?;
        s.unlink(from);
        s.link(to, i);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(None)?;
        if !s.names.contains_key(path) {
            return Err(not_found());
        }
        s.unlink(path);
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(None)?;
        if !s.dirs.contains(dir) {
            return Err(not_found());
        }
        let inside = |p: &Path| p.parent() == Some(dir);
        if s.names.keys().any(|p| inside(p)) || s.dirs.iter().any(|p| inside(p)) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "sim: directory not empty",
            ));
        }
        s.dirs.remove(dir);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut s = self.state.lock();
        s.op(None)?;
        if !s.dirs.contains(dir) {
            return Err(not_found());
        }
        let mut out: Vec<OsString> = s
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect();
        out.extend(
            s.dirs
                .iter()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_os_string())),
        );
        Ok(out)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.op(None)?;
        let changes = s.pending_dirs.remove(dir).unwrap_or_default();
        for change in changes {
            let replaced = match change {
                DirChange::Link { path, inode } => s.durable_names.insert(path, inode),
                DirChange::Unlink { path } => s.durable_names.remove(&path),
            };
            if let Some(i) = replaced {
                s.release_if_unused(i);
            }
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let mut s = self.state.lock();
        s.op(None)?;
        if !s.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(LockGuard::new(SimLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
            generation: s.generation,
        })))
    }
}
