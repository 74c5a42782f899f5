//! Step 2 of recovery: what files the store holds, and the leftover temp files deleted.

use std::path::Path;

use super::Recovery;
use crate::error::{Error, Result};
use crate::storage::layout::{self, FileKind};
use crate::storage::Storage;

/// The files found in the store's directories.
#[derive(Default)]
pub(super) struct Listing {
    /// Snapshots' base sequence numbers, ascending.
    pub snapshots: Vec<u64>,
    tmps: Vec<u64>,
    /// Segment ids, ascending.
    pub segments: Vec<u64>,
    segment_tmps: Vec<u64>,
}

impl Listing {
    fn add(&mut self, kind: FileKind, in_wal_dir: bool) {
        match (kind, in_wal_dir) {
            (FileKind::Snapshot(s), false) => self.snapshots.push(s),
            (FileKind::SnapshotTmp(s), false) => self.tmps.push(s),
            (FileKind::Segment(id), true) => self.segments.push(id),
            (FileKind::SegmentTmp(id), true) => self.segment_tmps.push(id),
            // A segment's name in the store's directory, or a snapshot's in `wal/`, is no file
            // of ours: left alone.
            _ => {}
        }
    }
}

/// The files in `dir` whose names match one of the store's patterns; other names are ignored.
fn classified(storage: &dyn Storage, dir: &Path) -> Result<impl Iterator<Item = FileKind>> {
    let names = storage.list(dir).map_err(|e| Error::io("list", dir, e))?;
    Ok(names.into_iter().filter_map(|name| layout::classify(&name)))
}

impl Recovery<'_> {
    /// Step 2: lists the store's files and deletes leftover temp files (of a checkpoint or a
    /// segment preparation a crash interrupted).
    pub(super) fn remove_leftovers(&mut self) -> Result<Listing> {
        let listing = self.list()?;
        let tmps = listing.tmps.iter().map(|&t| self.layout.snapshot_tmp(t));
        for p in tmps.chain(listing.segment_tmps.iter().map(|&t| self.layout.segment_tmp(t))) {
            self.storage.remove(&p).map_err(|e| Error::io("remove", &p, e))?;
            self.report.files_removed += 1;
        }
        Ok(listing)
    }

    fn list(&self) -> Result<Listing> {
        let mut l = Listing::default();
        for kind in classified(self.storage, self.layout.dir())? {
            l.add(kind, false);
        }
        for kind in classified(self.storage, self.layout.wal_dir())? {
            l.add(kind, true);
        }
        l.snapshots.sort_unstable();
        l.segments.sort_unstable();
        Ok(l)
    }
}
