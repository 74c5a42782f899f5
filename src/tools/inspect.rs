//! Looking inside a store without changing it: its files, their records and entries, its
//! statistics, its live entries, and [`verify`], which lists every problem it finds.
//!
//! Nothing here writes a byte, removes a file or takes the store's lock, so all of it works on
//! a store that another process has open. Two tools:
//!
//! - **A read-only view** ([`View`]): the real recovery (`src/recovery/`) runs on a copy-on-write
//!   overlay of the store's files (`storage/overlay.rs`), so the view sees exactly what an open
//!   would, while whatever recovery would change (a torn tail cut, temp files removed) changes
//!   only in memory. Segments are copied into memory as they are read, so a segment another
//!   process appends to is judged on one consistent copy.
//! - **A file-by-file check** (part of [`verify`]): every snapshot block and every log record is
//!   read and checked, and damage is reported with the file, the offset, the bytes it covers
//!   and, where the log shows it, the records lost, instead of stopping at the first error.
//!
//! **A store that is open elsewhere** keeps changing: a checkpoint adds a snapshot and deletes
//! segments, a roll starts a segment. Each pass reads the file list, then the files; a pass that
//! fails (or, in `verify`, finds problems) while the file list changed under it is repeated, so
//! what is reported is a consistent prefix of the store, not an artefact of reading it while
//! it moved. Values are read from files that are never truncated, so no read sees a hole.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{EncryptionKey, FileCipher, Keyring};
use crate::db::{prefix_successor, Db};
use crate::engine;
use crate::error::{Error, Result};
use crate::format::{self, HeaderState, SnapshotFooter, SEGMENT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE};
use crate::index::FileId;
use crate::limits;
use crate::options::RecoveryMode;
use crate::stats::Stats;
use crate::storage::layout::{self, FileKind, Layout};
use crate::storage::overlay::Overlay;
use crate::storage::{read_exact_at, FileBytes, FsStorage, OpenMode, Storage, StorageFile};
use crate::wal::reader::{self, ScanInput, SegmentScan};

#[cfg(feature = "sim")]
pub(crate) mod fuzzing;

/// Passes over a store that changed while it was read, before the last result stands.
const PASSES_MAX: usize = 8;

// ---------------------------------------------------------------------------------------------
// Files

/// The files of a store, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inventory {
    /// Log segments `(id, path, size)`, in log order.
    pub segments: Vec<(u64, PathBuf, u64)>,
    /// Snapshots `(base sequence number, path, size)`, oldest first.
    pub snapshots: Vec<(u64, PathBuf, u64)>,
    /// Temporary files of an interrupted or running checkpoint or segment creation (an open
    /// removes them).
    pub temp_files: Vec<PathBuf>,
    /// Damaged files set aside by [`crate::repair`] (`*.broken`).
    pub broken_files: Vec<PathBuf>,
    /// The format version in the headers of the store's segments and snapshots (the highest
    /// one, if they differ); `None` if no file has a readable header yet.
    pub format_version: Option<u32>,
    /// The lowest format version among them: below [`crate::FORMAT_VERSION`], files of an older
    /// version remain, read as they are until the next checkpoint rewrites them. (An encrypted
    /// store's files are of format version 3, `format::FORMAT_VERSION_ENCRYPTED`.)
    pub oldest_format_version: Option<u32>,
    /// Whether the store is encrypted at rest: it has a keyring (`DIR/KEYRING`), and opening,
    /// verifying, backing up or repairing it needs its key (the `*_with_key` tools).
    pub encrypted: bool,
}

impl Inventory {
    /// Bytes in segments and snapshots.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().chain(&self.snapshots).map(|f| f.2).sum()
    }
}

/// Every file (and directory) in the store's directory and its `wal/` directory, sorted: two
/// equal listings mean no file was created, renamed or removed in between.
fn listing(storage: &dyn Storage, layout: &Layout) -> Result<Vec<PathBuf>> {
    let (dir, wal) = (layout.dir(), layout.wal_dir());
    let names = storage.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut paths: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
    match storage.list(wal) {
        Ok(names) => paths.extend(names.into_iter().map(|n| wal.join(n))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("list", wal, e)),
    }
    paths.sort();
    Ok(paths)
}

/// What [`in_passes`] does after a pass.
enum Then {
    /// The result stands.
    Stand,
    /// Read again.
    Again,
    /// Read again if the file list changed during the pass; otherwise the result stands.
    AgainIfMoved,
}

/// Reads the store in `dir` in passes until a result stands (see the module docs): `pass` reads
/// it once, given the pass number and the file list the pass starts from; `then` judges what it
/// read. After [`PASSES_MAX`] passes, the last result stands.
fn in_passes<T>(
    storage: &dyn Storage,
    dir: &Path,
    mut pass: impl FnMut(usize, &[PathBuf]) -> T,
    then: impl Fn(&T, usize) -> Then,
) -> Result<T> {
    let layout = Layout::new(dir);
    check_is_store(storage, &layout)?;
    let mut n = 0;
    loop {
        n += 1;
        let before = listing(storage, &layout)?;
        let result = pass(n, &before);
        let again = n < PASSES_MAX
            && match then(&result, n) {
                Then::Stand => false,
                Then::Again => true,
                Then::AgainIfMoved => listing(storage, &layout)? != before,
            };
        if !again {
            return Ok(result);
        }
    }
}

/// Refuses a directory that holds no store (so nothing reads an empty or unrelated directory
/// as an empty store).
pub(crate) fn check_is_store(storage: &dyn Storage, layout: &Layout) -> Result<()> {
    let dir = layout.dir();
    let not_a_store = |reason: &str| Error::InvalidPath {
        path: dir.to_path_buf(),
        reason: reason.to_string(),
    };
    let names = match storage.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_a_store("no such directory")),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Err(not_a_store("not a directory")),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let ours = names.iter().any(|n| {
        n == layout::LOCK_FILE || n == layout::WAL_DIR || matches!(layout::classify(n), Some(FileKind::Snapshot(_)))
    });
    if !ours {
        return Err(not_a_store(
            "not a sessiondb store (no LOCK file, wal/ directory or snapshot)",
        ));
    }
    Ok(())
}

/// The store's files. Reads 16 bytes of each segment and snapshot (the format version).
pub fn inventory(dir: impl AsRef<Path>) -> Result<Inventory> {
    inventory_in(&FsStorage, &Layout::new(dir.as_ref()))
}

pub(crate) fn inventory_in(storage: &dyn Storage, layout: &Layout) -> Result<Inventory> {
    check_is_store(storage, layout)?;
    inventory_of(storage, &listing(storage, layout)?)
}

/// The inventory of the files `listed` (a [`listing`]).
fn inventory_of(storage: &dyn Storage, listed: &[PathBuf]) -> Result<Inventory> {
    let mut inv = Inventory::default();
    for path in listed {
        let Some(name) = path.file_name() else {
            continue;
        };
        let size = || file_size(storage, path);
        if name == layout::KEYRING_FILE {
            inv.encrypted = true;
            continue;
        }
        if name == layout::KEYRING_TMP_FILE {
            inv.temp_files.push(path.clone());
            continue;
        }
        match layout::classify(name) {
            Some(FileKind::Segment(id)) => inv.segments.push((id, path.clone(), size()?)),
            Some(FileKind::Snapshot(seq)) => inv.snapshots.push((seq, path.clone(), size()?)),
            Some(FileKind::SnapshotTmp(_) | FileKind::SegmentTmp(_)) => inv.temp_files.push(path.clone()),
            None if layout::is_broken(name) => inv.broken_files.push(path.clone()),
            None => {}
        }
    }
    inv.segments.sort();
    inv.snapshots.sort();
    for (_, path, _) in inv.segments.iter().chain(&inv.snapshots) {
        if let Some(v) = preamble_version(storage, path)? {
            inv.format_version = Some(inv.format_version.map_or(v, |w: u32| w.max(v)));
            inv.oldest_format_version = Some(inv.oldest_format_version.map_or(v, |w: u32| w.min(v)));
        }
    }
    Ok(inv)
}

/// Size of a file; 0 if it vanished since it was listed (a store open elsewhere).
fn file_size(storage: &dyn Storage, path: &Path) -> Result<u64> {
    match storage.open(path, OpenMode::Read) {
        Ok(f) => f.len().map_err(|e| Error::io("stat", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

/// The version in a header's preamble, if the preamble verifies (never trusting a damaged one).
fn preamble_version(storage: &dyn Storage, path: &Path) -> Result<Option<u32>> {
    let file = match storage.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let mut b = [0u8; format::PREAMBLE_BYTES];
    if file.len().map_err(|e| Error::io("stat", path, e))? < b.len() as u64 {
        return Ok(None);
    }
    read_exact_at(file.as_ref(), &mut b, 0).map_err(|e| Error::read(path, e))?;
    Ok(format::decode_preamble_version(&b))
}

// ---------------------------------------------------------------------------------------------
// The read-only view

/// A store opened read-only: the state an open would recover, computed without changing a byte
/// of the store or taking its lock (see the module docs).
#[derive(Debug)]
pub struct View {
    db: Db,
    files: Inventory,
}

/// A live entry, as [`View::entries`] yields it (and, expired ones too, the fuzzing entry points
/// of a snapshot's decoder).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Sequence number of the write that set the value.
    pub seq: u64,
    /// Expiry deadline in milliseconds since the Unix epoch, if the entry expires.
    pub expires_at_ms: Option<u64>,
}

impl LiveEntry {
    /// An entry as the index and the files hold it: an expiry deadline of 0 is none.
    pub(crate) fn new(key: Vec<u8>, value: Vec<u8>, seq: u64, expires_at_ms: u64) -> LiveEntry {
        LiveEntry {
            key,
            value,
            seq,
            expires_at_ms: (expires_at_ms != 0).then_some(expires_at_ms),
        }
    }
}

impl View {
    /// Opens the store in `dir` read-only, as a default open would recover it (a torn tail is
    /// cut in the view; other damage is an error).
    /// An encrypted store needs its key: [`Error::KeyRequired`] (see [`View::open_with_key`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<View> {
        View::open_with_key(dir, None)
    }

    /// [`View::open`] with the master key of an encrypted store (`None`: a store that is not
    /// encrypted). As an open would: another key than the store's is [`Error::WrongKey`], none
    /// for an encrypted store [`Error::KeyRequired`], one for a store with data that is not
    /// encrypted [`Error::NotEncrypted`]. Nothing is written: what recovery changes in the
    /// keyring (a fresh data key for the segment it would append to) stays in the view.
    pub fn open_with_key(dir: impl AsRef<Path>, key: Option<EncryptionKey>) -> Result<View> {
        View::open_in(Arc::new(FsStorage), dir.as_ref(), RecoveryMode::TolerateTornTail, key)
    }

    pub(crate) fn open_in(
        storage: Arc<dyn Storage>,
        dir: &Path,
        mode: RecoveryMode,
        key: Option<EncryptionKey>,
    ) -> Result<View> {
        let opened = in_passes(
            storage.as_ref(),
            dir,
            |_, listed| {
                let files = inventory_of(storage.as_ref(), listed)?;
                View::open_on(Arc::new(Overlay::new(storage.clone())), dir, mode, files, key.clone())
            },
            // A store open elsewhere may have checkpointed or rolled while it was read: a file
            // gone, or a snapshot and a log listed at different moments. Read it again.
            |opened, _| match opened {
                Ok(_) => Then::Stand,
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Then::Again,
                Err(_) => Then::AgainIfMoved,
            },
        );
        opened?
    }

    /// One pass of [`View::open_in`], on an overlay the caller may have changed first (repair
    /// puts salvaged snapshots in it), of a store whose files are `files`.
    pub(crate) fn open_on(
        overlay: Arc<Overlay>,
        dir: &Path,
        mode: RecoveryMode,
        files: Inventory,
        key: Option<EncryptionKey>,
    ) -> Result<View> {
        let db = Db::open_with(dir, super::tool_options(overlay, key).recovery_mode(mode))?;
        Ok(View { db, files })
    }

    /// The store's files, as this view listed them just before its recovery read them.
    pub fn files(&self) -> &Inventory {
        &self.files
    }

    /// Whether the store is encrypted at rest (it was opened with its key).
    pub fn is_encrypted(&self) -> bool {
        self.db.is_encrypted()
    }

    /// The store's statistics as an open would start with them. `recovery.duration` is the
    /// time this view's recovery took: about what opening the store would take.
    pub fn stats(&self) -> Stats {
        self.db.stats()
    }

    /// The value of `key`, or `None` if absent or expired.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.db.get(key)
    }

    /// Live entries whose keys start with `prefix`, in key order, with their expiry.
    pub fn entries(&self, prefix: impl AsRef<[u8]>) -> Entries<'_> {
        let prefix = prefix.as_ref().to_vec();
        let upper = prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        Entries {
            entries: engine::Entries::new(self.db.engine(), Bound::Included(prefix), upper),
        }
    }
}

/// Live entries of a [`View`], in key order.
pub struct Entries<'a> {
    entries: engine::Entries<'a>,
}

impl Iterator for Entries<'_> {
    type Item = Result<LiveEntry>;

    fn next(&mut self) -> Option<Result<LiveEntry>> {
        Some(
            self.entries
                .next()?
                .map(|live| LiveEntry::new(live.key.to_vec(), live.value, live.seq, live.expires_at_ms)),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Verify

/// A problem [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Where the problem starts in it.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// Bytes the damage covers (up to the next thing that verifies), where known.
    pub bytes: Option<u64>,
    /// Log records lost in the damage (the gap in sequence numbers around it), where known.
    pub records_lost: Option<u64>,
}

/// One log segment as [`verify`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentCheck {
    /// The file.
    pub path: PathBuf,
    /// Its id.
    pub id: u64,
    /// Its size.
    pub size: u64,
    /// What it is to the log.
    pub state: SegmentState,
    /// Sequence numbers of its first and last valid record.
    pub seqs: Option<(u64, u64)>,
    /// Valid records read.
    pub records: u64,
    /// End of its last valid record.
    pub valid_end: u64,
}

/// What a segment is to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentState {
    /// Part of the log after the newest snapshot: read and checked.
    Live,
    /// Wholly covered by the newest snapshot (deleted at the next open): not read.
    Covered,
    /// Preallocated and never written.
    Spare,
}

/// One snapshot as [`verify`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotCheck {
    /// The file.
    pub path: PathBuf,
    /// Its base sequence number.
    pub base_seq: u64,
    /// Its size.
    pub size: u64,
    /// Entries read from blocks that verify.
    pub entries: u64,
    /// Whether every byte of it verifies.
    pub intact: bool,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The store's directory.
    pub dir: PathBuf,
    /// Every problem, by file and offset. Empty when the store is intact.
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not damage: a torn tail the next open cuts (writes never
    /// acknowledged as durable), leftover temp files, files set aside by repair.
    pub notes: Vec<String>,
    /// The segments, in log order.
    pub segments: Vec<SegmentCheck>,
    /// The snapshots, oldest first.
    pub snapshots: Vec<SnapshotCheck>,
    /// Live keys an open would find (when it succeeds).
    pub keys: Option<u64>,
    /// The last sequence number an open would find (when it succeeds).
    pub last_seq: Option<u64>,
    /// Passes over the store (more than one when it changed while being read, or when problems
    /// were found and checked again).
    pub passes: usize,
}

impl VerifyReport {
    /// True when nothing is damaged: an open succeeds and every byte verifies.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems grouped by file, for messages.
    pub fn problems_by_file(&self) -> BTreeMap<&Path, Vec<&Problem>> {
        let mut out: BTreeMap<&Path, Vec<&Problem>> = BTreeMap::new();
        for p in &self.problems {
            out.entry(p.path.as_path()).or_default().push(p);
        }
        out
    }
}

/// Checks every file of the store in `dir` without changing anything or taking its lock, and
/// lists every problem by file and offset. Works on a store another process has open (reading a
/// consistent prefix of it). `Err` only when `dir` is not a store or cannot be listed; damage,
/// unreadable files included, is reported in [`VerifyReport::problems`]. An encrypted store is
/// checked as far as it can be without its key: see [`verify_with_key`].
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    verify_with_key(dir, None)
}

/// [`verify`] with the master key of an encrypted store (`None`: no key).
///
/// **With the key**, every log operation and snapshot entry is opened (authenticated) with its
/// file's data key: a byte changed in a sealed key or value, or an operation or entry moved
/// from another place, file or store, is a problem at the offset where that operation or entry
/// starts (damage the record or block checksum catches first is one at the record or block).
/// A sealed file whose data key is not in the keyring is a problem; so is a damaged keyring
/// (naming `DIR/KEYRING`). A key that does not open an intact keyring is not damage:
/// `Err(`[`Error::WrongKey`]`)`, naming the keyring. A key for a store that has data and is
/// not encrypted is `Err(`[`Error::NotEncrypted`]`)`.
///
/// **Without the key**, an encrypted store (format version 3) is checked as far as that goes:
/// file headers, record and block framing and their checksums (which cover the sealed bytes),
/// and the clear-text fields of each operation and entry. Keys and values are not
/// authenticated and the open is not tried ([`VerifyReport::keys`] and
/// [`VerifyReport::last_seq`] are `None`); [`VerifyReport::notes`] says so. Nothing is reported
/// as damage for want of the key.
pub fn verify_with_key(dir: impl AsRef<Path>, key: Option<EncryptionKey>) -> Result<VerifyReport> {
    verify_in(Arc::new(FsStorage), dir.as_ref(), key.as_ref())
}

pub(crate) fn verify_in(storage: Arc<dyn Storage>, dir: &Path, key: Option<&EncryptionKey>) -> Result<VerifyReport> {
    let report = in_passes(
        storage.as_ref(),
        dir,
        |n, listed| {
            let mut report = verify_once(&storage, dir, listed, key)?;
            report.passes = n;
            Ok(report)
        },
        // Problems: real damage stays; what a concurrent writer caused (a file list that moved,
        // a record read while it was being written) does not. One more pass always, more while
        // the file list keeps changing.
        |report: &Result<VerifyReport>, n| match report {
            Ok(r) if !r.is_intact() && n < 2 => Then::Again,
            Ok(r) if !r.is_intact() => Then::AgainIfMoved,
            _ => Then::Stand,
        },
    );
    report?
}

/// One pass of [`verify_in`] over the files `listed`.
fn verify_once(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    listed: &[PathBuf],
    key: Option<&EncryptionKey>,
) -> Result<VerifyReport> {
    let inv = inventory_of(storage.as_ref(), listed)?;
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        ..VerifyReport::default()
    };
    for p in &inv.temp_files {
        report.notes.push(format!(
            "{}: temporary file of a checkpoint, segment creation or keyring update in progress or interrupted (an open removes it)",
            p.display()
        ));
    }
    for p in &inv.broken_files {
        report
            .notes
            .push(format!("{}: a damaged file set aside by repair", p.display()));
    }
    let keys = open_keys(storage, dir, &inv, key, &mut report)?;
    let mut newest_intact = None;
    for (base, path, size) in &inv.snapshots {
        let opening = keys.opening(FileId::Snapshot(*base));
        let check = check_snapshot_file(storage.as_ref(), path, *base, *size, &opening, &mut report.problems);
        if check.intact {
            newest_intact = Some(*base);
        }
        report.snapshots.push(check);
    }
    check_segments(storage.as_ref(), &inv, newest_intact.unwrap_or(0), &keys, &mut report);
    // The open an application would do, on a read-only view: catches what no single file shows
    // (a missing segment, a log that does not reach a snapshot's end).
    match View::open_in(storage.clone(), dir, RecoveryMode::TolerateTornTail, key.cloned()) {
        Ok(view) => {
            let s = view.stats();
            report.keys = Some(s.keys);
            report.last_seq = Some(s.last_seq);
        }
        // Not damage: the key was not given (the notes say what was checked without it).
        Err(Error::KeyRequired { .. }) if key.is_none() => {}
        Err(e) => {
            let p = problem_of(dir, &e);
            if !report.problems.iter().any(|q| q.path == p.path) {
                report.problems.push(p);
            }
        }
    }
    Ok(report)
}

/// An error as a problem of the file it names.
fn problem_of(dir: &Path, e: &Error) -> Problem {
    let (path, offset) = match e {
        Error::Corruption { path, offset, .. } => (path.clone(), *offset),
        Error::Io { path, offset, .. } => (path.clone(), offset.unwrap_or(0)),
        Error::UnsupportedFormat { path, .. } => (path.clone(), 0),
        _ => (dir.to_path_buf(), 0),
    };
    let reason = match e {
        Error::Corruption { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    Problem {
        path,
        offset,
        reason,
        bytes: None,
        records_lost: None,
    }
}

fn problem(path: &Path, offset: u64, reason: impl Into<String>) -> Problem {
    Problem {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
        bytes: None,
        records_lost: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Encrypted stores

/// Times [`open_keys`] reads a keyring that does not verify before it is reported damaged: a
/// store open elsewhere replaces its keyring by a rename and then zeroes the old file, so a
/// read that opened the old one just before may see it zeroed.
const KEYRING_READS_MAX: usize = 4;

/// What [`verify`] knows of a store's encryption.
pub(crate) struct Keys {
    /// The store is encrypted: it has a keyring, or files of format version 3.
    encrypted: bool,
    /// Its keyring, opened with the key given.
    keyring: Option<Keyring>,
}

impl Keys {
    /// How the checks treat file `id`'s sealed pieces.
    fn opening(&self, id: FileId) -> Opening {
        match (&self.keyring, self.encrypted) {
            (Some(k), _) => Opening::Keyed(k.cipher(id)),
            (None, true) => Opening::Unkeyed,
            (None, false) => Opening::Plain,
        }
    }
}

/// How a check treats the sealed pieces (format version 3) of one file.
#[derive(Clone)]
pub(crate) enum Opening {
    /// A store that is not encrypted (a sealed file in it is checked as without the key).
    Plain,
    /// An encrypted store checked without its key: framing and checksums only, which cover the
    /// sealed bytes; keys and values are not authenticated.
    Unkeyed,
    /// An encrypted store whose keyring is open: the file's data key, if the keyring has one (a
    /// sealed file without one is damage: recovery could not read it).
    Keyed(Option<Arc<FileCipher>>),
}

impl Opening {
    /// The format version a file with a damaged header is read as.
    fn assumed_version(&self) -> u32 {
        match self {
            Opening::Plain => format::FORMAT_VERSION,
            Opening::Unkeyed | Opening::Keyed(_) => format::FORMAT_VERSION_ENCRYPTED,
        }
    }

    /// The data key of a sealed file (`None`: its pieces are checked without opening them).
    fn cipher(&self) -> Option<&FileCipher> {
        match self {
            Opening::Keyed(Some(c)) => Some(c),
            _ => None,
        }
    }

    /// Whether the file is sealed but its data key is missing from an open keyring.
    fn key_missing(&self) -> bool {
        matches!(self, Opening::Keyed(None))
    }
}

/// Step 0 of a verify pass: the store's keyring, opened with `key` if it is encrypted and a key
/// was given; a note on what is checked. A wrong key (for an intact keyring) or a key for a
/// store with data that is not encrypted is an error; a damaged keyring, or a missing one in a
/// store with sealed files, is a problem.
fn open_keys(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    inv: &Inventory,
    key: Option<&EncryptionKey>,
    report: &mut VerifyReport,
) -> Result<Keys> {
    let layout = Layout::new(dir);
    let sealed_files = inv.format_version == Some(format::FORMAT_VERSION_ENCRYPTED);
    let encrypted = inv.encrypted || sealed_files;
    let has_data = !inv.segments.is_empty() || !inv.snapshots.is_empty();
    let mut keyring = None;
    match (key, inv.encrypted) {
        (None, _) => {}
        (Some(key), true) => keyring = load_keyring(storage, &layout, key, report)?,
        (Some(_), false) if sealed_files => report.problems.push(problem(
            &layout.keyring(),
            0,
            "the keyring is missing: the store has files of format version 3 (encrypted), which cannot be read without it",
        )),
        (Some(_), false) if has_data => {
            return Err(Error::NotEncrypted {
                path: dir.to_path_buf(),
            })
        }
        (Some(_), false) => {}
    }
    if encrypted {
        report.notes.push(match (&keyring, key) {
            (Some(_), _) => "the store is encrypted (format version 3): every key and value was authenticated with its file's data key".to_string(),
            (None, None) => "the store is encrypted (format version 3) and no key was given: file headers, record and block framing and checksums were checked (they cover the sealed bytes), but keys and values were not authenticated and the store was not opened; verify with the key to check them".to_string(),
            (None, Some(_)) => "the store is encrypted (format version 3) and its keyring could not be read: keys and values were not authenticated".to_string(),
        });
    }
    Ok(Keys { encrypted, keyring })
}

/// The keyring opened with `key`, read again if it does not verify (see [`KEYRING_READS_MAX`]);
/// `None`, with a problem, if it stays damaged or cannot be read.
fn load_keyring(
    storage: &Arc<dyn Storage>,
    layout: &Layout,
    key: &EncryptionKey,
    report: &mut VerifyReport,
) -> Result<Option<Keyring>> {
    let mut reads = 0;
    loop {
        reads += 1;
        match Keyring::load(storage.clone(), layout.clone(), key.clone()) {
            Ok(ring) => return Ok(Some(ring)),
            Err(e @ Error::WrongKey { .. }) => return Err(e),
            Err(Error::Corruption { .. }) if reads < KEYRING_READS_MAX => continue,
            Err(e) => {
                report.problems.push(problem_of(&layout.keyring(), &e));
                return Ok(None);
            }
        }
    }
}

/// Opens `path` for reading, with its length: at most `max` bytes, else damage (never read).
fn open_bounded(storage: &dyn Storage, path: &Path, max: u64) -> Result<(Arc<dyn StorageFile>, u64)> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))?;
    let len = file.len().map_err(|e| Error::io("stat", path, e))?;
    if len > max {
        return Err(Error::corruption(
            path,
            max,
            format!("file is {len} bytes, larger than it can be ({max} bytes)"),
        ));
    }
    Ok((file, len))
}

/// Reads a whole file (a copy: a segment may be appended to while it is checked) of at most
/// `max` bytes; a larger one is damage, never read.
pub(crate) fn read_whole(storage: &dyn Storage, path: &Path, max: u64) -> Result<Vec<u8>> {
    let (file, len) = open_bounded(storage, path, max)?;
    let len = usize::try_from(len).map_err(|_| Error::io("read", path, io::Error::other("file too large")))?;
    let mut buf = vec![0u8; len];
    read_exact_at(file.as_ref(), &mut buf, 0).map_err(|e| Error::read(path, e))?;
    Ok(buf)
}

/// A segment's bytes for a check, of at most `max` bytes (a larger file is damage, never read),
/// and where its data ends: only the bytes before that are read (found without reading the zero
/// tail into memory); the rest of the buffer stays untouched zero pages, so a file's claimed
/// length costs no memory.
fn read_data(storage: &dyn Storage, path: &Path, max: u64) -> Result<(Vec<u8>, usize)> {
    let (file, len) = open_bounded(storage, path, max)?;
    let end = crate::storage::data_end(file.as_ref(), len).map_err(|e| Error::read(path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::io("read", path, io::Error::other("file too large")))?;
    // NOTE: a zeroed allocation: pages past `end` are never written, so never resident.
    let mut buf = vec![0u8; len];
    let end = end as usize;
    read_exact_at(file.as_ref(), &mut buf[..end], 0).map_err(|e| Error::read(path, e))?;
    // A segment appended to meanwhile may have grown past `end`: it is read as it was then.
    let end = reader::nonzero_end(&buf[..end]);
    Ok((buf, end))
}

/// Checks a snapshot block by block, going on past a block whose checksum fails.
fn check_snapshot_file(
    storage: &dyn Storage,
    path: &Path,
    base: u64,
    size: u64,
    opening: &Opening,
    problems: &mut Vec<Problem>,
) -> SnapshotCheck {
    let mut check = SnapshotCheck {
        path: path.to_path_buf(),
        base_seq: base,
        size,
        entries: 0,
        intact: false,
    };
    let loaded = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))
        .and_then(|f| FileBytes::load(f.as_ref()).map_err(|e| Error::read(path, e)));
    let bytes = match loaded {
        Ok(b) => b,
        Err(e) => {
            problems.push(problem_of(path, &e));
            return check;
        }
    };
    let found_before = problems.len();
    check.entries = walk_snapshot(bytes.bytes(), path, base, opening, problems).entries;
    check.intact = problems.len() == found_before;
    check
}

/// What a walk over a snapshot's blocks found.
struct SnapshotWalk {
    /// Entries in blocks that verify.
    entries: u64,
    /// Byte ranges of the blocks that verify, in file order.
    verified_blocks: Vec<std::ops::Range<usize>>,
    /// The footer, if it verifies.
    footer: Option<SnapshotFooter>,
    /// The version in the header is not one this build reads (nothing else is read then).
    unsupported: bool,
    /// The format version of its entries.
    version: u32,
}

/// Checks a snapshot's bytes (docs/format.md, "What a reader checks"), going on past a block
/// whose checksum fails. A sealed snapshot's entries are opened with `opening`'s data key (and
/// only then count as verified), or checked without it.
fn walk_snapshot(b: &[u8], path: &Path, base: u64, opening: &Opening, problems: &mut Vec<Problem>) -> SnapshotWalk {
    let mut walk = SnapshotWalk {
        entries: 0,
        verified_blocks: Vec::new(),
        footer: None,
        unsupported: false,
        version: format::FORMAT_VERSION,
    };
    match check_snapshot_header(b, path, base, opening.assumed_version(), problems) {
        Some(version) => walk.version = version,
        None => {
            walk.unsupported = true;
            return walk;
        }
    }
    if walk.version == format::FORMAT_VERSION_ENCRYPTED && opening.key_missing() {
        problems.push(problem(path, 0, "the snapshot has no data key in the keyring"));
    }
    walk.footer = check_snapshot_footer(b, path, base, problems);
    // Without a footer, walk the blocks to where the footer would be.
    let end = walk
        .footer
        .map_or(b.len().saturating_sub(format::SNAPSHOT_FOOTER_SIZE), |f| {
            f.footer_offset as usize
        });
    let all_verified = walk_blocks(b, end, (path, base), opening, problems, &mut walk);
    if let Some(f) = walk.footer {
        if all_verified && walk.entries != f.entry_count {
            problems.push(problem(
                path,
                f.footer_offset,
                format!(
                    "snapshot holds {} entries, its footer says {}",
                    walk.entries, f.entry_count
                ),
            ));
        }
    }
    walk
}

/// Checks a snapshot's header; returns the format version of its entries (`assumed` if the
/// header is damaged), or `None` if it is a version this build does not read (nothing else can
/// be read then).
fn check_snapshot_header(b: &[u8], path: &Path, base: u64, assumed: u32, problems: &mut Vec<Problem>) -> Option<u32> {
    match format::decode_snapshot_header(b) {
        HeaderState::Valid(h) if h.base_seq == base => return Some(h.version),
        HeaderState::Valid(h) => {
            let reason = format!("snapshot header says base sequence {}", h.base_seq);
            problems.push(problem(path, 0, reason));
            return Some(h.version);
        }
        HeaderState::UnsupportedVersion(v) => {
            let e = Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found: v,
                supported: format::FORMAT_VERSION_NEWEST,
            };
            problems.push(problem_of(path, &e));
            return None;
        }
        HeaderState::Zero => problems.push(problem(path, 0, "snapshot header is zero")),
        HeaderState::Damaged(d) => problems.push(problem(path, d.offset, d.reason)),
    }
    Some(assumed)
}

/// A snapshot's footer, if it verifies.
fn check_snapshot_footer(b: &[u8], path: &Path, base: u64, problems: &mut Vec<Problem>) -> Option<SnapshotFooter> {
    match format::decode_snapshot_footer(b) {
        Ok(f) => {
            if f.base_seq != base {
                problems.push(problem(
                    path,
                    f.footer_offset,
                    "snapshot footer disagrees with its header",
                ));
            }
            Some(f)
        }
        Err(d) => {
            problems.push(problem(path, d.offset, d.reason));
            None
        }
    }
}

/// Checks the blocks between the header and `end` of snapshot `base` in `path`, block by block,
/// adding the entries and ranges of those that verify to `walk`. Returns whether every block
/// did.
fn walk_blocks(
    b: &[u8],
    end: usize,
    (path, base): (&Path, u64),
    opening: &Opening,
    problems: &mut Vec<Problem>,
    walk: &mut SnapshotWalk,
) -> bool {
    let mut at = SNAPSHOT_HEADER_SIZE.min(end);
    // A sealed snapshot without its data key does not verify, whatever its blocks hold.
    let mut all_verified = !(walk.version == format::FORMAT_VERSION_ENCRYPTED && opening.key_missing());
    // The last key of the last block kept: a kept block's keys must all come after it, so the
    // blocks a salvage keeps always form a loadable snapshot.
    let mut prev_key: Option<Vec<u8>> = None;
    while at < end {
        let frame = match format::block_frame(&b[at..end], walk.version) {
            Ok(f) => f,
            Err(d) => {
                // The length is damaged: where the next block starts is unknown.
                let mut p = problem(path, at as u64 + d.offset, d.reason);
                p.bytes = Some((end - at) as u64);
                problems.push(p);
                return false;
            }
        };
        let opened = format::verify_block(&b[at..end], frame)
            .and_then(|()| open_sealed_block(&b[at..at + frame.len], frame, walk.version, base, at, opening));
        let sealed = walk.version == format::FORMAT_VERSION_ENCRYPTED;
        // Keys are compared only in clear: a sealed block read without its key is not.
        let keys_clear = !sealed || matches!(opened, Ok(Some(_)));
        let verified = opened.and_then(|opened| {
            let decoded: Vec<format::DecodedEntry<'_>> = match &opened {
                Some(values) => values
                    .iter()
                    .map(|v| format::DecodedEntry {
                        entry: format::SnapshotEntry {
                            key: &v.key,
                            value: &v.value,
                            seq: v.seq,
                            expires_at_ms: v.expires_at_ms,
                            value_crc: None,
                        },
                        value_at: v.value_at,
                    })
                    .collect(),
                // A sealed block without its key: its checksum is all that can be checked.
                None if sealed => return Ok(Some((frame.count as u64, None))),
                None => format::decode_block_entries(&b[at..at + frame.len], frame, walk.version)?,
            };
            let passed = check_block_entries(&decoded, (at, keys_clear), prev_key.as_deref(), path, problems);
            Ok(passed.then(|| (decoded.len() as u64, decoded.last().map(|d| d.entry.key.to_vec()))))
        });
        match verified {
            Ok(Some((count, last_key))) => {
                walk.entries += count;
                walk.verified_blocks.push(at..at + frame.len);
                if keys_clear {
                    prev_key = last_key.or(prev_key);
                }
            }
            Ok(None) => all_verified = false,
            Err(d) => {
                all_verified = false;
                let mut p = problem(path, at as u64 + d.offset, d.reason);
                p.bytes = Some(frame.len as u64);
                problems.push(p);
            }
        }
        at += frame.len;
    }
    all_verified
}

/// A framed, checksummed block of a snapshot (`block`, at `at` in snapshot `base`), opened if
/// it is sealed and `opening` has its data key: its directory and every value opened (a piece
/// that does not authenticate is damage at its offset in the block); `None` when it is read as
/// it is (not sealed, or sealed and checked without its key).
fn open_sealed_block(
    block: &[u8],
    frame: format::BlockFrame,
    version: u32,
    base: u64,
    at: usize,
    opening: &Opening,
) -> Result<Option<Vec<format::OpenedValue>>, format::Damage> {
    match opening.cipher() {
        Some(cipher) if version == format::FORMAT_VERSION_ENCRYPTED => {
            format::open_block_values(block, frame, cipher, base, at as u64).map(Some)
        }
        _ => Ok(None),
    }
}

/// Checks the entries of a block that verifies (at `at`; `prev_key`: the last key before it):
/// keys ascend (when `keys_clear`: not sealed keys read without the key), no sequence number is
/// 0, each value checksum stored (format version 2) matches. Returns whether they passed.
fn check_block_entries(
    decoded: &[format::DecodedEntry<'_>],
    (at, keys_clear): (usize, bool),
    prev_key: Option<&[u8]>,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> bool {
    let before = problems.len();
    let mut last = prev_key;
    for d in decoded {
        let offset = (at + d.value_at) as u64;
        if keys_clear && last.is_some_and(|p| p >= d.entry.key) {
            problems.push(problem(path, offset, "snapshot keys are not in ascending order"));
        }
        if d.entry.seq == 0 {
            problems.push(problem(path, offset, "snapshot entry has sequence number 0"));
        }
        let e = d.entry;
        if e.value_crc
            .is_some_and(|crc| crc != format::value_crc(e.key, e.value, e.seq))
        {
            problems.push(problem(path, offset, "value checksum mismatch"));
        }
        last = Some(d.entry.key);
    }
    problems.len() == before
}

/// A damaged snapshot rebuilt from its blocks that verify, for [`crate::repair`]: a valid
/// snapshot with the same base sequence number holding every entry that could be read. Returns
/// its bytes, the entries it holds, and the entries the footer says the original held (when the
/// footer verifies). `None` if nothing of it can be used (another format version, or a sealed
/// snapshot: its entries are bound to their offsets, see [`salvage_sealed_snapshot`]).
pub(crate) fn salvage_snapshot(b: &[u8], path: &Path, base: u64) -> Option<(Vec<u8>, u64, Option<u64>)> {
    let walk = walk_snapshot(b, path, base, &Opening::Plain, &mut Vec::new());
    if walk.unsupported || walk.version == format::FORMAT_VERSION_ENCRYPTED {
        return None;
    }
    // The blocks kept keep their format version, and so does the header before them.
    let mut out = format::encode_snapshot_header_version(base, walk.version).to_vec();
    for r in &walk.verified_blocks {
        out.extend_from_slice(&b[r.clone()]);
    }
    // The entries kept were written no later than the original's end_seq, which recovery then
    // expects the log to reach; without a footer, the base is all that is known.
    let end_seq = walk.footer.map_or(base, |f| f.end_seq.max(base));
    let footer = format::encode_snapshot_footer(SnapshotFooter {
        entry_count: walk.entries,
        base_seq: base,
        end_seq,
        footer_offset: out.len() as u64,
    });
    out.extend_from_slice(&footer);
    Some((out, walk.entries, walk.footer.map(|f| f.entry_count)))
}

/// What [`salvage_sealed_snapshot`] kept of a damaged sealed snapshot.
pub(crate) struct SealedSalvage {
    /// Entries kept.
    pub kept: u64,
    /// Entries the original held, if its footer verifies.
    pub total: Option<u64>,
    /// The end sequence number the rebuilt snapshot's footer takes.
    pub end_seq: u64,
}

/// The entries of a damaged sealed snapshot (format version 3) that verify, for
/// [`crate::repair`]: every block whose checksum verifies and whose entries all open with
/// `cipher` (the snapshot's data key), in key order, each entry handed to `push` in clear (the
/// caller seals them again under a fresh data key: a sealed entry is bound to its offset, and
/// the blocks kept move). `None` if the snapshot is not sealed or of a version this build does
/// not read.
pub(crate) fn salvage_sealed_snapshot(
    b: &[u8],
    path: &Path,
    base: u64,
    cipher: &Arc<FileCipher>,
    mut push: impl FnMut(format::SnapshotEntry<'_>) -> Result<()>,
) -> Result<Option<SealedSalvage>> {
    let opening = Opening::Keyed(Some(cipher.clone()));
    let walk = walk_snapshot(b, path, base, &opening, &mut Vec::new());
    if walk.unsupported || walk.version != format::FORMAT_VERSION_ENCRYPTED {
        return Ok(None);
    }
    let damaged = |at: usize, d: format::Damage| Error::corruption(path, at as u64 + d.offset, d.reason);
    for r in &walk.verified_blocks {
        let block = &b[r.clone()];
        let frame = format::block_frame(block, walk.version).map_err(|d| damaged(r.start, d))?;
        let values = open_sealed_block(block, frame, walk.version, base, r.start, &opening)
            .map_err(|d| damaged(r.start, d))?
            .ok_or_else(|| {
                damaged(
                    r.start,
                    format::Damage {
                        offset: 0,
                        reason: "a sealed block that verified did not open".into(),
                    },
                )
            })?;
        for v in &values {
            push(format::SnapshotEntry {
                key: &v.key,
                value: &v.value,
                seq: v.seq,
                expires_at_ms: v.expires_at_ms,
                value_crc: None,
            })?;
        }
    }
    Ok(Some(SealedSalvage {
        kept: walk.entries,
        total: walk.footer.map(|f| f.entry_count),
        end_seq: walk.footer.map_or(base, |f| f.end_seq.max(base)),
    }))
}

/// What a segment's header says, read from its first bytes.
fn header_first_seq(storage: &dyn Storage, path: &Path, id: u64) -> (Option<u64>, bool) {
    let Ok(file) = storage.open(path, OpenMode::Read) else {
        return (None, false);
    };
    let len = file.len().unwrap_or(0);
    let mut head = vec![0u8; SEGMENT_HEADER_SIZE.min(len as usize)];
    if read_exact_at(file.as_ref(), &mut head, 0).is_err() {
        return (None, false);
    }
    match format::decode_segment_header(&head) {
        HeaderState::Valid(h) if h.segment_id == id => (Some(h.first_seq), false),
        HeaderState::Zero => (None, true),
        _ => (None, false),
    }
}

/// Scans every segment of the live log (as recovery chooses them: after the covered ones, up to
/// the last one written), listing damage with the bytes and records it covers.
fn check_segments(storage: &dyn Storage, inv: &Inventory, base: u64, keys: &Keys, report: &mut VerifyReport) {
    let heads: Vec<(Option<u64>, bool)> = inv
        .segments
        .iter()
        .map(|(id, path, _)| header_first_seq(storage, path, *id))
        .collect();
    let last_used = heads.iter().rposition(|h| !h.1);
    let mut covered = 0;
    while covered + 1 < heads.len() && heads[covered + 1].0.is_some_and(|f| f <= base + 1) {
        covered += 1;
    }
    let mut expected: Option<u64> = None;
    for (i, (id, path, size)) in inv.segments.iter().enumerate() {
        let state = if i < covered {
            SegmentState::Covered
        } else if last_used.is_none_or(|l| i > l) {
            SegmentState::Spare
        } else {
            SegmentState::Live
        };
        let mut check = SegmentCheck {
            path: path.clone(),
            id: *id,
            size: *size,
            state,
            seqs: None,
            records: 0,
            valid_end: 0,
        };
        if state == SegmentState::Live {
            if i > 0 && inv.segments[i - 1].0 + 1 != *id {
                // A gap in the ids: recovery judges whether it is a checkpoint's leftover.
                expected = None;
            }
            let is_last = last_used == Some(i);
            let opening = keys.opening(FileId::Segment(*id));
            expected = scan_one((path, *id, &opening), is_last, expected, storage, &mut check, report);
        }
        report.segments.push(check);
    }
}

/// Scans one segment in salvage mode (which goes on past damage and lists it), opening its
/// sealed operations with `opening`'s data key; returns the sequence number the next segment
/// must start at.
fn scan_one(
    (path, id, opening): (&Path, u64, &Opening),
    is_last: bool,
    expected: Option<u64>,
    storage: &dyn Storage,
    check: &mut SegmentCheck,
    report: &mut VerifyReport,
) -> Option<u64> {
    let (bytes, data_end) = match read_data(storage, path, limits::SEGMENT_SIZE_MAX) {
        Ok(b) => b,
        Err(e) => {
            report.problems.push(problem_of(path, &e));
            return None;
        }
    };
    let input = ScanInput {
        bytes: &bytes,
        segment_id: id,
        path,
        payload_max: limits::RECORD_PAYLOAD_MAX,
        is_last,
        mode: RecoveryMode::Salvage,
        expected_seq: expected,
        data_end,
    };
    // (offset, seq) of every valid record, to measure the damage between them.
    let mut records: Vec<(u64, u64)> = Vec::new();
    let mut undecodable = Vec::new();
    let mut key_missing_reported = false;
    let scanned = reader::scan_segment(&input, |offset, rec, version| {
        records.push((offset, rec.seq));
        // Other record kinds are the reader's and recovery's to judge (R9 for this one).
        if rec.kind != format::KIND_OPS {
            return Ok(());
        }
        let payload_at = offset + format::RECORD_HEADER_SIZE as u64;
        let sealed = version == format::FORMAT_VERSION_ENCRYPTED;
        if sealed && opening.key_missing() {
            if !std::mem::replace(&mut key_missing_reported, true) {
                undecodable.push(problem(path, payload_at, "the segment has no data key in the keyring"));
            }
            return Ok(());
        }
        if let Err(d) = check_payload(rec, version, (id, payload_at), opening) {
            undecodable.push(problem(path, payload_at + d.offset, d.reason));
        }
        Ok(())
    });
    let scan = match scanned {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(problem_of(path, &e));
            return None;
        }
    };
    check.records = records.len() as u64;
    check.valid_end = scan.valid_end;
    check.seqs = records.first().zip(records.last()).map(|(f, l)| (f.1, l.1));
    let first_expected = scan.header.map(|h| h.first_seq).or(expected);
    report
        .problems
        .extend(skipped_damage(path, &scan, &records, first_expected));
    report.problems.extend(undecodable);
    if is_last && scan.dirty_end > scan.valid_end {
        report.notes.push(format!(
            "{}: torn tail of {} bytes at offset {} (writes never known durable; the next open cuts it)",
            path.display(),
            scan.dirty_end - scan.valid_end,
            scan.valid_end
        ));
    }
    scan.last_seq
        .map(|l| l + 1)
        .or_else(|| scan.header.map(|h| h.first_seq))
}

/// Checks a record's payload (found at `payload_at` in segment `segment_id`) of format
/// `version`: decodes it, and first opens every sealed operation (format version 3) with
/// `opening`'s data key; without it, only the operations' clear-text framing is checked.
fn check_payload(
    rec: format::RecordRef<'_>,
    version: u32,
    (segment_id, payload_at): (u64, u64),
    opening: &Opening,
) -> Result<(), format::Damage> {
    match opening.cipher() {
        Some(cipher) if version == format::FORMAT_VERSION_ENCRYPTED => {
            let mut copy = rec.payload.to_vec();
            format::open_ops(&mut copy, cipher, segment_id, payload_at, rec.seq)?;
            format::decode_ops(&copy, version, Some(rec.seq)).map(drop)
        }
        _ => format::decode_ops(rec.payload, version, Some(rec.seq)).map(drop),
    }
}

/// The damage a salvage scan skipped, each region with the bytes it covers (up to the next valid
/// record, or the end of the written bytes) and the records lost in it (the gap in sequence
/// numbers around it, from `records`: `(offset, seq)` of every valid record).
fn skipped_damage(
    path: &Path,
    scan: &SegmentScan,
    records: &[(u64, u64)],
    first_expected: Option<u64>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for s in &scan.skipped {
        let before = records.iter().rev().find(|r| r.0 < s.offset).map(|r| r.1 + 1);
        let after = records.iter().find(|r| r.0 > s.offset);
        let mut p = problem(path, s.offset, s.reason.clone());
        match after {
            Some(&(at, seq)) => {
                p.bytes = Some(at - s.offset);
                p.records_lost = before.or(first_expected).map(|want| seq.saturating_sub(want));
            }
            None => p.bytes = Some(scan.dirty_end.saturating_sub(s.offset)),
        }
        problems.push(p);
    }
    problems
}
