//! Online backups ([`crate::Db::backup`]) and restoring them ([`restore`]).
//!
//! A backup is a store holding one snapshot and nothing else, the state after some sequence
//! number `S`, fsynced, taken while writers go on:
//!
//! 1. Under the checkpoint lock (so no segment or snapshot is deleted), note each segment's
//!    written length under the log mutex, then make the log durable through what was noted.
//! 2. Copy the newest snapshot and the log after it into a temporary directory next to the
//!    destination: sealed segments whole, the active one only up to its noted length (records
//!    written after the note are not copied, so the copy ends at a record boundary: `S`).
//!    Release the lock.
//! 3. Open the copy as a store (the real recovery), checkpoint it into one snapshot, close it,
//!    and delete its log and lock file.
//! 4. fsync the directories, rename the temporary directory to the destination, fsync its
//!    parent. A crash before the rename leaves only the temporary directory
//!    (`.<name>.tmp-<pid>`), never a partial backup under the destination's name.
//!
//! All file I/O goes through the store's [`Storage`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::SnapshotWriter;
use crate::db::Db;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::format::SnapshotEntry;
use crate::options::{Options, RecoveryMode};
use crate::storage::layout::{self, Layout};
use crate::storage::{read_exact_at, write_all_at, FsStorage, OpenMode, Storage};
use crate::tools::inspect::{self, Entries, View};

/// Bytes copied per read and write.
const COPY_CHUNK_BYTES: usize = 1024 * 1024;

/// What [`crate::Db::backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The backup's directory.
    pub path: PathBuf,
    /// The backup holds the store's state after this sequence number (0: an empty store).
    pub seq: u64,
    /// Live keys in the backup.
    pub keys: u64,
    /// Bytes of the backup's snapshot.
    pub bytes: u64,
    /// Time the backup took.
    pub duration: Duration,
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The restored store's directory.
    pub path: PathBuf,
    /// Live keys in the restored store.
    pub keys: u64,
    /// Its last sequence number.
    pub seq: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// `dest`'s parent, and the layout of a store in a temporary sibling of it (its directories
/// created); refuses a destination that exists (unless `empty_dir_ok` and it is an empty
/// directory).
fn staging(storage: &dyn Storage, dest: &Path, empty_dir_ok: bool) -> Result<(PathBuf, Layout)> {
    let invalid = |reason: &str| Error::InvalidPath {
        path: dest.to_path_buf(),
        reason: reason.to_string(),
    };
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid("the destination needs a UTF-8 file name"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let siblings = match storage.list(&parent) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(invalid("its parent directory does not exist"));
        }
        Err(e) => return Err(Error::io("list", &parent, e)),
    };
    if siblings.iter().any(|n| n == name) {
        let empty = storage.list(dest).is_ok_and(|names| names.is_empty());
        if !(empty_dir_ok && empty) {
            return Err(invalid(if empty_dir_ok {
                "already exists and is not an empty directory"
            } else {
                "already exists"
            }));
        }
    }
    let tmp = layout::staging_dir(&parent, name, std::process::id());
    if siblings.iter().any(|n| tmp.file_name() == Some(n.as_os_str())) {
        return Err(Error::InvalidPath {
            path: tmp,
            reason: "a temporary directory of an interrupted backup or restore is in the way; remove it".into(),
        });
    }
    let tmp = Layout::new(&tmp);
    storage
        .create_dir_all(tmp.wal_dir())
        .map_err(|e| Error::io("create directory", tmp.dir(), e))?;
    Ok((parent, tmp))
}

/// Runs `build` (a backup or restore into the staging directory `tmp`); if it fails, removes
/// what it left there, best effort, so that it takes no room on a full disk and is not in the
/// way of the next try from this process (whose staging directory has the same name).
fn staged<T>(storage: &dyn Storage, tmp: &Layout, build: impl FnOnce() -> Result<T>) -> Result<T> {
    let built = build();
    if built.is_err() {
        for dir in [tmp.wal_dir(), tmp.dir()] {
            for name in storage.list(dir).unwrap_or_default() {
                let _ = storage.remove(&dir.join(name));
            }
            let _ = storage.remove_dir(dir);
        }
    }
    built
}

/// Copies `from` to a new file `to`: its first `len` bytes, or all of it. fsyncs it if `sync`.
fn copy_file(storage: &dyn Storage, from: &Path, to: &Path, len: Option<u64>, sync: bool) -> Result<u64> {
    let src = storage
        .open(from, OpenMode::Read)
        .map_err(|e| Error::io("open", from, e))?;
    let len = match len {
        Some(l) => l,
        None => src.len().map_err(|e| Error::io("stat", from, e))?,
    };
    let dst = storage
        .open(to, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", to, e))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(COPY_CHUNK_BYTES as u64) as usize;
        read_exact_at(src.as_ref(), &mut buf[..n], at).map_err(|e| Error::read(from, e))?;
        write_all_at(dst.as_ref(), &buf[..n], at).map_err(|e| Error::io("write", to, e))?;
        at += n as u64;
    }
    if sync {
        dst.sync_all().map_err(|e| Error::io("fsync", to, e))?;
    }
    Ok(len)
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))
}

/// Options to open a copy with: a tool's (the copy is only checkpointed), on the source's
/// storage, with its clock (expiry is judged by the same time).
fn copy_options(storage: Arc<dyn Storage>, source: &Options) -> Options {
    super::tool_options(storage).clock(source.clock.clone())
}

/// Step 1 and 2: copies the newest snapshot and the log after it into `tmp`.
fn copy_consistent_prefix(engine: &Engine, tmp: &Layout) -> Result<()> {
    let storage = engine.storage.as_ref();
    // No checkpoint runs while this is held: no segment or snapshot is deleted under the copy.
    let _no_checkpoint = engine.checkpoint_lock.lock();
    engine.check_poison()?;
    // Noted with no commit group in flight: every record noted is applied, so the backup holds
    // only writes that readers can already see (a group written but not yet applied, in
    // `SyncMode::Always` waiting for its fsync, is not in it). Otherwise a backup could show a
    // write that a read after it does not (found by schedules/: backup against checkpoint).
    let (segments, snapshot) = {
        let (_leading, ()) = engine.lead_alone(|_| ());
        let log = engine.log.lock();
        let segments: Vec<(u64, u64)> = log.segments.iter().map(|(&id, s)| (id, s.bytes)).collect();
        (segments, engine.snapshots.lock().last().map(|s| s.0))
    };
    // What was noted was handed to the OS; make it durable, so the backup never holds a write
    // that the store could still lose.
    engine.sync()?;
    if let Some(base) = snapshot {
        copy_file(storage, &engine.layout.snapshot(base), &tmp.snapshot(base), None, true)?;
    }
    for (id, bytes) in segments {
        // A sealed segment never changes; the active one is copied only up to what was noted.
        copy_file(
            storage,
            &engine.layout.segment(id),
            &tmp.segment(id),
            Some(bytes),
            false,
        )?;
    }
    Ok(())
}

/// Removes every file of the store in `tmp` but its snapshots: the log and the lock file
/// ([`put_in_place`] fsyncs the directories).
fn remove_log(storage: &dyn Storage, tmp: &Layout) -> Result<()> {
    let wal = tmp.wal_dir();
    for name in storage.list(wal).map_err(|e| Error::io("list", wal, e))? {
        let p = wal.join(&name);
        storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
    }
    let lock = tmp.lock_file();
    match storage.remove(&lock) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &lock, e)),
    }
}

/// The last step of a backup or restore: fsyncs the store built in the staging directory
/// `tmp`, renames it to `dest` and fsyncs `dest`'s parent.
fn put_in_place(storage: &dyn Storage, tmp: &Layout, dest: &Path, parent: &Path) -> Result<()> {
    sync_dir(storage, tmp.wal_dir())?;
    sync_dir(storage, tmp.dir())?;
    storage
        .rename(tmp.dir(), dest)
        .map_err(|e| Error::io("rename", tmp.dir(), e))?;
    sync_dir(storage, parent)
}

// `Db::backup` is defined here, with the rest of backups: the operator tools depend on `Db`,
// never the reverse.
impl Db {
    /// Writes an online, consistent backup of the store to `dest`, a directory that must not
    /// exist yet, while writers go on: one fsynced snapshot of the state at some sequence
    /// number, which opens as a store ([`crate::restore`] copies it back). See
    /// `src/tools/backup.rs`.
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        let engine = self.engine();
        let dest = dest.as_ref();
        let started = Instant::now();
        let storage = engine.storage.clone();
        let (parent, tmp) = staging(storage.as_ref(), dest, false)?;
        let stats = staged(storage.as_ref(), &tmp, || {
            copy_consistent_prefix(engine, &tmp)?;

            // Step 3: the copy becomes one snapshot, through the real recovery and checkpoint.
            let db = Db::open_with(tmp.dir(), copy_options(storage.clone(), &engine.opts))?;
            db.checkpoint()?;
            let stats = db.stats();
            db.close()?;
            remove_log(storage.as_ref(), &tmp)?;

            // Step 4: in place, durably.
            put_in_place(storage.as_ref(), &tmp, dest, &parent)?;
            Ok(stats)
        })?;
        let bytes = match stats.last_checkpoint_seq {
            0 => 0,
            seq => storage
                .open(&Layout::new(dest).snapshot(seq), OpenMode::Read)
                .and_then(|f| f.len())
                .unwrap_or(0),
        };
        Ok(BackupReport {
            path: dest.to_path_buf(),
            seq: stats.last_seq,
            keys: stats.keys,
            bytes,
            duration: started.elapsed(),
        })
    }
}

/// Writes a consistent backup of the store in `dir` to `dest` (a directory that must not exist)
/// without opening the store: it takes no lock and changes nothing in `dir`, so it works while
/// another process has the store open. The backup holds the state an open would recover at
/// the moment the files were read (a prefix of the log: the state after some sequence number),
/// as one fsynced snapshot. It may include writes that the other process had handed to the OS
/// but not yet fsynced. In-process, prefer [`crate::Db::backup`], which makes what it copies
/// durable first.
pub fn backup_dir(dir: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<BackupReport> {
    backup_dir_in(Arc::new(FsStorage), dir.as_ref(), dest.as_ref())
}

pub(crate) fn backup_dir_in(storage: Arc<dyn Storage>, dir: &Path, dest: &Path) -> Result<BackupReport> {
    let started = Instant::now();
    inspect::check_is_store(storage.as_ref(), &Layout::new(dir))?;
    let (parent, tmp) = staging(storage.as_ref(), dest, false)?;
    let (stats, seq, bytes) = staged(storage.as_ref(), &tmp, || {
        let view = View::open_in(storage.clone(), dir, RecoveryMode::TolerateTornTail)?;
        let stats = view.stats();
        let seq = stats.last_seq;
        let mut bytes = 0;
        if seq > 0 {
            bytes = write_entries(storage.as_ref(), &tmp.snapshot_tmp(seq), seq, view.entries(b""))?;
            storage
                .rename(&tmp.snapshot_tmp(seq), &tmp.snapshot(seq))
                .map_err(|e| Error::io("rename", tmp.snapshot_tmp(seq), e))?;
        }
        drop(view);
        put_in_place(storage.as_ref(), &tmp, dest, &parent)?;
        Ok((stats, seq, bytes))
    })?;
    Ok(BackupReport {
        path: dest.to_path_buf(),
        seq,
        keys: stats.keys,
        bytes,
        duration: started.elapsed(),
    })
}

/// Restores the backup (or any closed, intact store) in `backup` to `dir`, which must not exist
/// or be an empty directory. The backup is verified first and left unchanged; its files are
/// copied and fsynced under a temporary name next to `dir`, then renamed into place.
pub fn restore(backup: impl AsRef<Path>, dir: impl AsRef<Path>) -> Result<RestoreReport> {
    restore_in(Arc::new(FsStorage), backup.as_ref(), dir.as_ref())
}

pub(crate) fn restore_in(storage: Arc<dyn Storage>, backup: &Path, dir: &Path) -> Result<RestoreReport> {
    let check = inspect::verify_in(storage.clone(), backup)?;
    if let Some(p) = check.problems.first() {
        return Err(Error::Corruption {
            path: p.path.clone(),
            offset: p.offset,
            reason: format!("the backup is damaged: {}", p.reason),
        });
    }
    let files = inspect::inventory_in(storage.as_ref(), &Layout::new(backup))?;
    let (parent, tmp) = staging(storage.as_ref(), dir, true)?;
    let bytes = staged(storage.as_ref(), &tmp, || {
        let mut bytes = 0;
        for (seq, path, _) in &files.snapshots {
            bytes += copy_file(storage.as_ref(), path, &tmp.snapshot(*seq), None, true)?;
        }
        for (id, path, _) in &files.segments {
            bytes += copy_file(storage.as_ref(), path, &tmp.segment(*id), None, true)?;
        }
        put_in_place(storage.as_ref(), &tmp, dir, &parent)?;
        Ok(bytes)
    })?;
    let view = View::open_in(storage, dir, RecoveryMode::TolerateTornTail)?;
    let stats = view.stats();
    Ok(RestoreReport {
        path: dir.to_path_buf(),
        keys: stats.keys,
        seq: stats.last_seq,
        bytes,
    })
}

/// Writes the entries as a snapshot with base (and end) sequence number `base` to `tmp`
/// (docs/format.md, "Snapshots"), fsynced. Returns its size.
pub(crate) fn write_entries(storage: &dyn Storage, tmp: &Path, base: u64, entries: Entries<'_>) -> Result<u64> {
    let mut writer = SnapshotWriter::create(storage, tmp, base, None)?;
    for e in entries {
        let e = e?;
        debug_assert!(e.seq <= base, "an entry is no newer than the state it is part of");
        writer.push(SnapshotEntry {
            key: &e.key,
            value: &e.value,
            seq: e.seq,
            expires_at_ms: e.expires_at_ms.unwrap_or(0),
            value_crc: None,
        })?;
    }
    writer.finish(base)
}
