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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::options::RecoveryMode;
use crate::recovery;
use crate::stats::Skipped;
use crate::storage::layout::{self, Layout};
use crate::storage::overlay::Overlay;
use crate::storage::{write_all_at, FsStorage, OpenMode, Storage};
use crate::tools::backup::write_entries;
use crate::tools::inspect::{self, Inventory, Problem, VerifyReport, View};

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
/// ([`Error::Locked`]) and a directory that holds no store ([`Error::InvalidPath`]).
pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport> {
    repair_in(Arc::new(FsStorage), dir.as_ref())
}

pub(crate) fn repair_in(storage: Arc<dyn Storage>, dir: &Path) -> Result<RepairReport> {
    let layout = Layout::new(dir);
    inspect::check_is_store(storage.as_ref(), &layout)?;
    let _lock = recovery::lock(storage.as_ref(), &layout)?;
    let check = inspect::verify_in(storage.clone(), dir, None)?;
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

    // Steps 3 and 4: the salvaged state, as of `base`, into a new snapshot's temp file.
    let (view, base) = salvage(&storage, dir, &check, &files, &mut report)?;
    let new_snapshot = (base > 0).then(|| layout.snapshot(base));
    if base > 0 {
        write_entries(st, &layout.snapshot_tmp(base), base, view.entries(b""), None)?;
    }
    drop(view);
    // Steps 5 to 7: damaged files aside, the new snapshot in place, the rest of the old gone.
    set_aside_damaged(st, &check, &files, &mut report)?;
    sync_dirs(st, &layout)?;
    if let Some(snap) = &new_snapshot {
        let tmp = layout.snapshot_tmp(base);
        st.rename(&tmp, snap).map_err(|e| Error::io("rename", &tmp, e))?;
        // The new snapshot must be the store's durable base before the old files go.
        st.sync_dir(layout.dir())
            .map_err(|e| Error::io("fsync", layout.dir(), e))?;
    }
    remove_replaced(st, &files, new_snapshot.as_ref(), &mut report)?;
    sync_dirs(st, &layout)?;
    report.snapshot = new_snapshot;

    // Step 8.
    let repaired = View::open_in(storage.clone(), dir, RecoveryMode::TolerateTornTail, None)?.stats();
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

/// Step 3: a read-only view of the store in which each damaged snapshot is replaced by one
/// rebuilt from its blocks that verify, recovered in [`RecoveryMode::Salvage`]; and its last
/// sequence number.
fn salvage(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    check: &VerifyReport,
    files: &Inventory,
    report: &mut RepairReport,
) -> Result<(View, u64)> {
    let overlay = Arc::new(Overlay::new(storage.clone()));
    report.snapshot_entries_lost = Some(0);
    for snap in check.snapshots.iter().filter(|s| !s.intact) {
        let Ok(bytes) = inspect::read_whole(storage.as_ref(), &snap.path, u64::MAX) else {
            report.snapshot_entries_lost = None;
            continue;
        };
        let Some((rebuilt, kept, total)) = inspect::salvage_snapshot(&bytes, &snap.path, snap.base_seq) else {
            continue;
        };
        // In the view only: the file on disk is set aside unchanged below.
        overlay
            .open(&snap.path, OpenMode::ReadWrite)
            .and_then(|f| f.set_len(0).and_then(|()| write_all_at(f.as_ref(), &rebuilt, 0)))
            .map_err(|e| Error::io("write", &snap.path, e))?;
        report.snapshot_entries_kept += kept;
        report.snapshot_entries_lost = match (report.snapshot_entries_lost, total) {
            (Some(lost), Some(total)) => Some(lost + total.saturating_sub(kept)),
            _ => None,
        };
    }
    let view = View::open_on(overlay, dir, RecoveryMode::Salvage, files.clone(), None)?;
    let salvaged = view.stats();
    report.skipped = salvaged.recovery.skipped.clone();
    report.torn_tail_bytes = salvaged.recovery.torn_tail_bytes;
    Ok((view, salvaged.last_seq))
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
