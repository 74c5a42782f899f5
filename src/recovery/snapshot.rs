//! Step 3 of recovery: the newest snapshot that verifies, loaded into the index.

use super::segments::Seg;
use super::{skip, Recovery};
use crate::checkpoint::{self, LoadedSnapshot};
use crate::error::{Error, Result};
use crate::index::{BaseEntries, FileId};

/// What step 3 loaded: the snapshot, if any, whose entries are now in the index.
pub(super) struct Base {
    pub snapshot: Option<LoadedSnapshot>,
    /// The snapshot's base sequence number (`S`), 0 without one: the log is replayed above it.
    pub seq: u64,
    /// When every snapshot is damaged and the log is to stand in for them from sequence 1, the
    /// newest one's error (step 6 checks that the log holds a record).
    pub log_instead_of: Option<Error>,
}

/// What [`Recovery::choose_snapshot`] picked: the snapshot and its entries, and, when every
/// snapshot is damaged and the log is to stand in for them from sequence 1, the newest one's
/// error.
type Chosen = (Option<LoadedSnapshot>, BaseEntries, Option<Error>);

impl Recovery<'_> {
    /// Step 3: loads the snapshot to start from into the index.
    pub(super) fn load_snapshot(&mut self, snapshots: &[u64], segs: &[Seg]) -> Result<Base> {
        let log_first_seq = segs.iter().find_map(|s| s.first_seq);
        let (snapshot, entries, log_instead_of) = self.choose_snapshot(snapshots, log_first_seq)?;
        let seq = snapshot.as_ref().map_or(0, |s| s.base_seq);
        if let Some(s) = &snapshot {
            self.index.set_source(s.source());
            self.report.snapshot_seq = Some(s.base_seq);
            self.report.snapshot_entries = s.entries;
        }
        self.index.extend_sorted(entries);
        self.index.applied_seq = seq;
        Ok(Base {
            snapshot,
            seq,
            log_instead_of,
        })
    }

    /// Picks the newest snapshot that verifies, falling back to an older one only when the log
    /// still covers the gap after it.
    fn choose_snapshot(&mut self, snapshots: &[u64], log_first_seq: Option<u64>) -> Result<Chosen> {
        let mut newest_err: Option<Error> = None;
        for &seq in snapshots.iter().rev() {
            let path = self.layout.snapshot(seq);
            let slot = self.index.slot(FileId::Snapshot(seq));
            let cipher = self.cipher(FileId::Snapshot(seq));
            let loaded = checkpoint::load_snapshot(self.storage, &path, seq, slot, cipher);
            if loaded.is_err() {
                self.index.remove_source(FileId::Snapshot(seq));
            }
            match loaded {
                Ok((loaded, entries)) => {
                    let covered = log_first_seq.is_some_and(|f| f <= seq + 1);
                    match newest_err {
                        None => return Ok((Some(loaded), entries, None)),
                        Some(_) if covered => return Ok((Some(loaded), entries, None)),
                        Some(e) if self.salvage() => {
                            skip(&mut self.report, &e);
                            return Ok((Some(loaded), entries, None));
                        }
                        Some(e) => return Err(e),
                    }
                }
                Err(e @ Error::UnsupportedFormat { .. }) => return Err(e),
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => {
                    if newest_err.is_none() {
                        newest_err = Some(e);
                    }
                }
            }
        }
        match newest_err {
            None => Ok((None, Vec::new(), None)),
            // Every snapshot is damaged: rebuild from the log only if it starts at the beginning
            // (and, step 6 checks, holds a record).
            Some(e) if log_first_seq == Some(1) => Ok((None, Vec::new(), Some(e))),
            Some(e) if self.salvage() => {
                skip(&mut self.report, &e);
                Ok((None, Vec::new(), None))
            }
            Some(e) => Err(e),
        }
    }
}
