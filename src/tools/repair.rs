//! Repairing a damaged store ([`repair`]): what verifies is salvaged into a new snapshot, every
//! damaged file is set aside as `<name>.broken`, and what was lost is reported.
//!
//! 1. Take the store's lock and hold it throughout: a store open anywhere is refused
//!    ([`Error::Locked`]).
//! 2. [`crate::tools::inspect::verify`]: every problem by file and offset. An intact store is left as
//!    it is.
//! 3. Salvage, without writing: in a read-only view of the store (`inspect::View`), each damaged
//!    snapshot is replaced by one rebuilt from its blocks that verify (same base sequence
//!    number), then the real recovery runs in [`RecoveryMode::Salvage`], which keeps every log
//!    record that verifies and skips damage. The state: the snapshot's readable entries with
//!    the log after it applied.
//! 4. Write that state, as of its last sequence number `S`, to `<S>.snap.tmp`; fsync it.
//! 5. Rename each damaged file to `<name>.broken` (`<name>.<n>.broken` if that exists); fsync
//!    the directories. Store names never end in `.broken`, so an open ignores them.
//! 6. Rename the snapshot to `<S>.snap`; fsync the directory.
//! 7. Delete the other segments and snapshots: everything they hold that verifies is in the new
//!    snapshot. fsync the directories.
//! 8. Open the repaired store read-only in the default recovery mode to check it.
//!
//! A crash part-way leaves either the old files (with the damaged ones possibly already set
//! aside) or the new snapshot in place; running repair again finishes the job.
//!
//! **Encrypted stores** ([`repair_with_key`]) are repaired only with their key (without it
//! nothing can be authenticated, let alone salvaged: [`Error::KeyRequired`]), and nothing is
//! written in clear:
//!
//! - step 2 authenticates every key and value (`inspect::verify_with_key`);
//! - step 3 rebuilds a damaged snapshot from the entries of its blocks that verify and open,
//!   sealed again under a fresh data key in the view's keyring (a sealed entry is bound to its
//!   offset, and the blocks kept move), in memory only;
//! - step 4 seals the new snapshot under a fresh data key, durable in the keyring first. If an
//!   intact snapshot already holds the state (`S` is its base), it is kept instead: its data key
//!   is never replaced;
//! - after step 7 the keyring keeps only the new snapshot's data key (as the next open would):
//!   the files set aside stay sealed and can no longer be decrypted.
//!
//! A crash between step 4 and step 6 when a damaged snapshot has base `S` itself leaves that
//! snapshot under a replaced data key: running repair again salvages nothing more from it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::SnapshotWriter;
use crate::crypto::{EncryptionKey, FileCipher, Keyring};
use crate::error::{Error, Result};
use crate::index::FileId;
use crate::options::RecoveryMode;
use crate::recovery;
use crate::stats::Skipped;
use crate::storage::layout::{self, Layout};
use crate::storage::overlay::Overlay;
use crate::storage::{write_all_at, FsStorage, OpenMode, Storage};
use crate::tools::backup::write_entries;
use crate::tools::inspect::{self, Inventory, Problem, SnapshotCheck, VerifyReport, View};

/// What [`repair`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// The store's directory.
    pub dir: PathBuf,
    /// Whether anything was changed (false: the store verified intact).
    pub repaired: bool,
    /// The problems found before the repair, by file and offset.
    pub problems: Vec<Problem>,
    /// What salvage recovery skipped.
    pub skipped: Vec<Skipped>,
    /// Bytes of damage skipped, over the problems whose extent is known.
    pub bytes_lost: u64,
    /// Log records lost, over the problems where the log shows the gap.
    pub records_lost: u64,
    /// Log damage whose extent in records is not known (damage at the end of a segment loses
    /// what followed it).
    pub losses_unknown: usize,
    /// Entries read from the blocks of damaged snapshots that verify, and kept.
    pub snapshot_entries_kept: u64,
    /// Entries of damaged snapshots that could not be read (from their footers' counts); `None`
    /// when a damaged snapshot's footer is damaged too.
    pub snapshot_entries_lost: Option<u64>,
    /// Bytes of torn tail cut (writes never known durable).
    pub torn_tail_bytes: u64,
    /// Damaged files set aside: `(was, now)`.
    pub broken_files: Vec<(PathBuf, PathBuf)>,
    /// Other files of the old store deleted (their content is in the new snapshot).
    pub removed_files: Vec<PathBuf>,
    /// The new snapshot, if anything was recovered.
    pub snapshot: Option<PathBuf>,
    /// The repaired store's last sequence number.
    pub seq: u64,
    /// Live keys in the repaired store.
    pub keys: u64,
}

/// Repairs the store in `dir` (see the module docs). Refuses a store that is open
/// ([`Error::Locked`]) and a directory that holds no store ([`Error::InvalidPath`]). An
/// encrypted store needs its key: see [`repair_with_key`].
pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
    repair_with_key(dir, None)
}

/// [`repair`] with the master key of an encrypted store (`None`: a store that is not
/// encrypted). An encrypted store is refused without its key ([`Error::KeyRequired`]) and with
/// another ([`Error::WrongKey`]); with it, every key and value is authenticated, what verifies
/// is salvaged, and the new snapshot is sealed under a fresh data key: nothing is written in
/// clear (see the module docs, "Encrypted stores").
pub fn repair_with_key(dir: impl AsRef<Path>, key: Option<EncryptionKey>) -> Result<RepairReport> {
    repair_in(Arc::new(FsStorage), dir.as_ref(), key)
}

pub(crate) fn repair_in(storage: Arc<dyn Storage>, dir: &Path, key: Option<EncryptionKey>) -> Result<RepairReport> {
    let layout = Layout::new(dir);
    inspect::check_is_store(storage.as_ref(), &layout)?;
    let _lock = recovery::lock(storage.as_ref(), &layout)?;
    let encrypted = inspect::inventory_in(storage.as_ref(), &layout)?.encrypted;
    if encrypted && key.is_none() {
        return Err(Error::KeyRequired {
            path: dir.to_path_buf(),
        });
    }
    let check = inspect::verify_in(storage.clone(), dir, key.as_ref())?;
    let mut report = RepairReport {
        dir: dir.to_path_buf(),
        ..RepairReport::default()
    };
    if check.is_intact() {
        report.seq = check.last_seq.unwrap_or(0);
        report.keys = check.keys.unwrap_or(0);
        return Ok(report);
    }
    report.repaired = true;
    let files = inspect::inventory_in(storage.as_ref(), &layout)?;
    count_losses(&check, &files, &mut report);
    let st = storage.as_ref();

    // The store's keyring (its key opened it in step 2, or step 2 reported it damaged).
    let keyring = match (&key, encrypted) {
        (Some(key), true) => Some(Keyring::load(storage.clone(), layout.clone(), key.clone())?),
        _ => None,
    };

    // Steps 3 and 4: the salvaged state, as of `base`, into a new snapshot's temp file.
    let (view, base) = salvage(&storage, dir, (&check, &files), key.as_ref(), &mut report)?;
    let new_snapshot = (base > 0).then(|| layout.snapshot(base));
    let keep_existing = keyring.is_some() && intact_snapshot(&check, base).is_some();
    let written = base > 0 && !keep_existing;
    if written {
        // Durable in the keyring before anything is sealed with it.
        let cipher = keyring.as_ref().map(|k| k.fresh(FileId::Snapshot(base))).transpose()?;
        write_entries(st, &layout.snapshot_tmp(base), base, view.entries(b""), cipher)?;
    }
    drop(view);
    // Steps 5 to 7: damaged files aside, the new snapshot in place, the rest of the old gone.
    set_aside_damaged(st, &check, &files, &mut report)?;
    sync_dirs(st, &layout)?;
    if let (Some(snap), true) = (&new_snapshot, written) {
        let tmp = layout.snapshot_tmp(base);
        st.rename(&tmp, snap).map_err(|e| Error::io("rename", &tmp, e))?;
        // The new snapshot must be the store's durable base before the old files go.
        st.sync_dir(layout.dir())
            .map_err(|e| Error::io("fsync", layout.dir(), e))?;
    }
    remove_replaced(st, &files, new_snapshot.as_ref(), &mut report)?;
    sync_dirs(st, &layout)?;
    if let Some(keyring) = &keyring {
        // The files set aside or removed are no longer the store's (as the next open would).
        keyring.retain(|id| base > 0 && id == FileId::Snapshot(base))?;
    }
    report.snapshot = new_snapshot;

    // Step 8.
    let repaired = View::open_in(storage.clone(), dir, RecoveryMode::TolerateTornTail, key)?.stats();
    report.seq = repaired.last_seq;
    report.keys = repaired.keys;
    Ok(report)
}

/// Step 2's problems into the report, with the damage they add up to.
fn count_losses(check: &VerifyReport, files: &Inventory, report: &mut RepairReport) {
    let is_snapshot = |p: &Path| files.snapshots.iter().any(|f| f.1 == p);
    for p in &check.problems {
        report.bytes_lost += p.bytes.unwrap_or(0);
        report.records_lost += p.records_lost.unwrap_or(0);
        if p.records_lost.is_none() && !is_snapshot(&p.path) {
            report.losses_unknown += 1;
        }
    }
    report.problems = check.problems.clone();
}

/// The snapshot with base `base` that verified intact and that no problem names: in an
/// encrypted store, repair keeps it rather than writing the same state again (which would
/// replace its data key).
fn intact_snapshot(check: &VerifyReport, base: u64) -> Option<&SnapshotCheck> {
    check
        .snapshots
        .iter()
        .find(|s| base > 0 && s.base_seq == base && s.intact)
        .filter(|s| !check.problems.iter().any(|p| p.path == s.path))
}

/// Step 3: a read-only view of the store in which each damaged snapshot is replaced by one
/// rebuilt from its blocks that verify, recovered in [`RecoveryMode::Salvage`]; and its last
/// sequence number. `key`: an encrypted store's master key.
fn salvage(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    (check, files): (&VerifyReport, &Inventory),
    key: Option<&EncryptionKey>,
    report: &mut RepairReport,
) -> Result<(View, u64)> {
    let overlay = Arc::new(Overlay::new(storage.clone()));
    // The view's own keyring (in the overlay: nothing of it is written to the store).
    let keyring = match key {
        Some(key) if files.encrypted => Some(Keyring::load(overlay.clone(), Layout::new(dir), key.clone())?),
        _ => None,
    };
    report.snapshot_entries_lost = Some(0);
    for snap in check.snapshots.iter().filter(|s| !s.intact) {
        let Ok(bytes) = inspect::read_whole(storage.as_ref(), &snap.path, u64::MAX) else {
            report.snapshot_entries_lost = None;
            continue;
        };
        let salvaged = match &keyring {
            Some(keyring) => salvage_sealed(&overlay, keyring, &bytes, snap)?,
            None => salvage_plain(&overlay, &bytes, snap)?,
        };
        let Some((kept, total)) = salvaged else {
            continue;
        };
        report.snapshot_entries_kept += kept;
        report.snapshot_entries_lost = match (report.snapshot_entries_lost, total) {
            (Some(lost), Some(total)) => Some(lost + total.saturating_sub(kept)),
            _ => None,
        };
    }
    drop(keyring);
    let view = View::open_on(overlay, dir, RecoveryMode::Salvage, files.clone(), key.cloned())?;
    let salvaged = view.stats();
    report.skipped = salvaged.recovery.skipped.clone();
    report.torn_tail_bytes = salvaged.recovery.torn_tail_bytes;
    Ok((view, salvaged.last_seq))
}

/// Step 3 for a snapshot that is not sealed: replaced in the view by one rebuilt from its blocks
/// that verify. Returns the entries kept and those the original held (if its footer says).
fn salvage_plain(overlay: &Arc<Overlay>, bytes: &[u8], snap: &SnapshotCheck) -> Result<Option<(u64, Option<u64>)>> {
    let Some((rebuilt, kept, total)) = inspect::salvage_snapshot(bytes, &snap.path, snap.base_seq) else {
        return Ok(None);
    };
    // In the view only: the file on disk is set aside unchanged below.
    overlay
        .open(&snap.path, OpenMode::ReadWrite)
        .and_then(|f| f.set_len(0).and_then(|()| write_all_at(f.as_ref(), &rebuilt, 0)))
        .map_err(|e| Error::io("write", &snap.path, e))?;
    Ok(Some((kept, total)))
}

/// Step 3 for a snapshot of an encrypted store: replaced in the view by one holding the entries
/// of its blocks that verify and open with its data key, sealed again under a fresh data key in
/// the view's `keyring` (all in memory). Returns the entries kept and those the original held
/// (if its footer says); `None` if nothing of it can be read (no data key, another format).
fn salvage_sealed(
    overlay: &Arc<Overlay>,
    keyring: &Keyring,
    bytes: &[u8],
    snap: &SnapshotCheck,
) -> Result<Option<(u64, Option<u64>)>> {
    let id = FileId::Snapshot(snap.base_seq);
    let Some(cipher): Option<Arc<FileCipher>> = keyring.cipher(id) else {
        return Ok(None);
    };
    let tmp = Layout::new(snap.path.parent().unwrap_or(Path::new("."))).snapshot_tmp(snap.base_seq);
    let mut writer = SnapshotWriter::create(overlay.as_ref(), &tmp, snap.base_seq, Some(keyring.fresh(id)?))?;
    let salvaged = inspect::salvage_sealed_snapshot(bytes, &snap.path, snap.base_seq, &cipher, |e| writer.push(e))?;
    let Some(salvaged) = salvaged else {
        drop(writer);
        let _ = overlay.remove(&tmp);
        return Ok(None);
    };
    writer.finish(salvaged.end_seq)?;
    overlay
        .rename(&tmp, &snap.path)
        .map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(Some((salvaged.kept, salvaged.total)))
}

/// Step 5: renames each damaged segment and snapshot to a `.broken` name.
fn set_aside_damaged(
    st: &dyn Storage,
    check: &VerifyReport,
    files: &Inventory,
    report: &mut RepairReport,
) -> Result<()> {
    let mut damaged: Vec<PathBuf> = check.problems.iter().map(|p| p.path.clone()).collect();
    damaged.sort();
    damaged.dedup();
    let is_store_file = |p: &Path| files.segments.iter().chain(&files.snapshots).any(|f| f.1 == p);
    for path in damaged.into_iter().filter(|p| is_store_file(p)) {
        let to = layout::free_broken_name(st, &path)?;
        st.rename(&path, &to).map_err(|e| Error::io("rename", &path, e))?;
        report.broken_files.push((path, to));
    }
    Ok(())
}

/// Step 7: deletes the segments and snapshots that were neither set aside nor the new snapshot.
fn remove_replaced(
    st: &dyn Storage,
    files: &Inventory,
    new_snapshot: Option<&PathBuf>,
    report: &mut RepairReport,
) -> Result<()> {
    let set_aside = |p: &Path| report.broken_files.iter().any(|b| b.0 == p);
    let mut removed = Vec::new();
    for (_, path, _) in files.segments.iter().chain(&files.snapshots) {
        if set_aside(path) || Some(path) == new_snapshot {
            continue;
        }
        match st.remove(path) {
            Ok(()) => removed.push(path.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", path, e)),
        }
    }
    report.removed_files = removed;
    Ok(())
}

fn sync_dirs(storage: &dyn Storage, layout: &Layout) -> Result<()> {
    for d in [layout.wal_dir(), layout.dir()] {
        match storage.sync_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("fsync", d, e)),
        }
    }
    Ok(())
}
