//! Opening a store: lock, load the newest valid snapshot, replay the log after it, cut a torn
//! tail, and leave the log ready for appends (docs/design.md, "Recovery"). [`recover`] runs the
//! numbered steps of that section in order, one function each:
//!
//! 1. [`lock`] (the caller takes the lock before [`recover`]);
//! 2. `listing.rs`: `remove_leftovers`;
//! 3. `snapshot.rs`: `load_snapshot`;
//! 4. `segments.rs`: `choose_segments`;
//! 5. and 6. `replay.rs`: `replay`, `cut_torn_tail`, `check_log_reaches_snapshot`;
//! 7. and 8. `active.rs`: `choose_active`, `remove_doomed`, `sync_log_end`.
//!
//! How a segment's bytes are judged (the decision table) is `wal/reader.rs`.

// Decoders and recovery read bytes a file may have damaged: no unwrap or expect here, only
// errors that name the damage.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod active;
mod listing;
mod replay;
mod segments;
mod snapshot;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::crypto::Keyring;
use crate::engine::Recovered;
use crate::error::{Error, Result};
use crate::format::{self, Op, RecordRef, RECORD_HEADER_SIZE};
use crate::index::{Change, FileId, Index, RecordAt};
use crate::options::{Options, RecoveryMode};
use crate::stats::{RecoveryReport, Skipped};
use crate::storage::layout::Layout;
use crate::storage::{LockGuard, Storage};
use crate::wal::writer::{LogStart, LogWriter, SpareSlot};

use self::snapshot::Base;

/// Step 1: creates the directories if needed and takes the store's lock.
pub(crate) fn lock(storage: &dyn Storage, layout: &Layout) -> Result<LockGuard> {
    let dir = layout.dir();
    create_store_dir(storage, dir)?;
    let lock_path = layout.lock_file();
    let guard = storage
        .try_lock(&lock_path)
        .map_err(|e| Error::io("lock", &lock_path, e))?
        .ok_or(Error::Locked { path: lock_path })?;
    let wal = layout.wal_dir();
    storage
        .create_dir_all(wal)
        .map_err(|e| Error::io("create directory", wal, e))?;
    // The log directory's own entry must be durable before any segment in it is relied on.
    storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
    Ok(guard)
}

/// Creates `dir` and any missing parents, durably: each new directory's entry is fsynced in its
/// parent, or a power cut after acknowledged writes could take the whole new store with it on a
/// file system that does not order metadata (XFS, Btrfs; issue 15). A file in the way is
/// `InvalidPath`.
fn create_store_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    loop {
        match storage.list(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(Error::InvalidPath {
                    path: dir.to_path_buf(),
                    reason: format!("{} is a file, not a directory", at.display()),
                })
            }
            Err(e) => return Err(Error::io("list", at, e)),
        }
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    storage
        .create_dir_all(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    for created in missing {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        storage.sync_dir(parent).map_err(|e| Error::io("fsync", parent, e))?;
    }
    Ok(())
}

/// Opens the store, the lock already taken (step 1): everything [`crate::engine::Engine`]
/// needs to start.
pub(crate) fn recover(layout: &Layout, opts: &Options, spare: &Arc<SpareSlot>) -> Result<Recovered> {
    let started = Instant::now();
    let span = tracing::info_span!(target: "sessiondb", "sessiondb.open", dir = %layout.dir().display());
    let _in_span = span.enter();
    let mut r = Recovery::new(layout, opts);
    let listing = r.remove_leftovers()?;
    r.keyring = open_keyring(layout, opts, &listing)?;
    tracing::debug!(target: "sessiondb", encrypted = r.keyring.is_some(), "store encryption");
    let segs = r.open_segments(&listing.segments)?;
    let mut base = r.load_snapshot(&listing.snapshots, &segs)?;
    let log = r.choose_segments(segs, base.seq)?;
    let replayed = r.replay(&log.live, base.seq)?;
    r.cut_torn_tail(&log.live, &replayed)?;
    let last_seq = r.check_log_reaches_snapshot(&mut base, &replayed)?;
    r.index_ready(last_seq);
    let chosen = r.choose_active(log, replayed.per_segment, last_seq, base.seq)?;
    r.remove_doomed(&listing.snapshots, &base)?;
    active::sync_log_end(&chosen)?;
    r.forget_gone_keys(&chosen, &base)?;
    r.report.duration = started.elapsed();
    let rep = &r.report;
    tracing::debug!(target: "sessiondb", snapshot_seq = rep.snapshot_seq, entries = rep.snapshot_entries, "snapshot loaded");
    tracing::debug!(target: "sessiondb", records = rep.records_replayed, "log replayed");
    if rep.files_removed > 0 {
        tracing::info!(target: "sessiondb", files = rep.files_removed, "files removed");
    }
    tracing::info!(
        target: "sessiondb",
        encrypted = r.keyring.is_some(),
        snapshot_seq = rep.snapshot_seq,
        records_replayed = rep.records_replayed,
        torn_tail_bytes = rep.torn_tail_bytes,
        skipped = rep.skipped.len() as u64,
        duration_ms = rep.duration.as_millis() as u64,
        "store opened"
    );
    Ok(r.finish(chosen.start, chosen.log_bytes, &base, spare))
}

/// What recovery carries from one step to the next.
struct Recovery<'a> {
    layout: &'a Layout,
    opts: &'a Options,
    storage: &'a dyn Storage,
    /// Filled from the snapshot (step 3) and the log (step 5).
    index: Index,
    report: RecoveryReport,
    /// Files to delete in step 7: covered segments, unusable spares, superseded snapshots.
    doomed: Vec<PathBuf>,
    /// An encrypted store's keyring.
    keyring: Option<Arc<Keyring>>,
}

impl<'a> Recovery<'a> {
    fn new(layout: &'a Layout, opts: &'a Options) -> Self {
        Recovery {
            layout,
            opts,
            storage: opts.storage.as_ref(),
            index: Index::default(),
            report: RecoveryReport::default(),
            doomed: Vec::new(),
            keyring: None,
        }
    }

    /// The data key of file `id`, in an encrypted store.
    fn cipher(&self, id: FileId) -> Option<Arc<crate::crypto::FileCipher>> {
        self.keyring.as_ref().and_then(|k| k.cipher(id))
    }

    /// The format version new records and snapshots get: 3 in an encrypted store, else 2.
    fn write_version(&self) -> u32 {
        if self.keyring.is_some() {
            format::FORMAT_VERSION_ENCRYPTED
        } else {
            format::FORMAT_VERSION
        }
    }

    /// Drops from the keyring the data keys of files no longer in the store (a crash between a
    /// checkpoint's deletions and its keyring update leaves some).
    fn forget_gone_keys(&self, chosen: &active::Chosen, base: &Base) -> Result<()> {
        let Some(keyring) = &self.keyring else {
            return Ok(());
        };
        let segments = &chosen.start.segments;
        let active = chosen.start.active.as_ref().map(|a| a.id);
        let snapshot = base.snapshot.as_ref().map(|s| s.base_seq);
        keyring.retain(|id| match id {
            FileId::Segment(n) => segments.contains_key(&n) || Some(n) == active,
            FileId::Snapshot(n) => Some(n) == snapshot,
        })
    }

    fn salvage(&self) -> bool {
        self.opts.recovery_mode == RecoveryMode::Salvage
    }

    /// The log writer over the active segment, and the index, ready for the engine.
    fn finish(self, start: LogStart, log_bytes: u64, base: &Base, spare: &Arc<SpareSlot>) -> Recovered {
        let last_seq = start.written_seq;
        let log = LogWriter::new(
            self.opts.storage.clone(),
            self.layout.clone(),
            self.opts.segment_size,
            spare.clone(),
            self.opts.preallocate_ahead,
            start,
            self.keyring.clone(),
        );
        Recovered {
            index: self.index,
            log,
            next_seq: last_seq + 1,
            durable_seq: last_seq,
            snapshots: base
                .snapshot
                .iter()
                .map(|s| (s.base_seq, s.bytes.bytes().len() as u64))
                .collect(),
            log_bytes_since_checkpoint: log_bytes,
            report: self.report,
            keyring: self.keyring,
        }
    }
}

/// Records damage that `Salvage` skipped.
fn skip(report: &mut RecoveryReport, e: &Error) {
    if let Error::Corruption { path, offset, reason } = e {
        skipped(
            report,
            Skipped {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
        );
    }
}

/// Reports a region `Salvage` skipped: in the recovery report and as a WARN event.
fn skipped(report: &mut RecoveryReport, s: Skipped) {
    tracing::warn!(target: "sessiondb", file = %s.path.display(), offset = s.offset, reason = %s.reason, "salvage skipped damage");
    report.skipped.push(s);
}

/// Applies one replayed record of a segment of format `version` to the index (step 5). A
/// payload that does not decode, or (version 2) a value whose checksum does not match, is row R9
/// of the decision table: corruption, or in `Salvage` skipped.
#[allow(clippy::too_many_arguments)]
fn apply_record(
    index: &mut Index,
    (segment_id, version): (u64, u32),
    cipher: Option<&crate::crypto::FileCipher>,
    offset: u64,
    rec: RecordRef<'_>,
    path: &Path,
    opts: &Options,
    report: &mut RecoveryReport,
) -> Result<()> {
    // An encrypted store's payload is opened in a copy (same layout, so the same offsets).
    let mut opened = Vec::new();
    let payload = if version == format::FORMAT_VERSION_ENCRYPTED {
        opened.extend_from_slice(rec.payload);
        let payload_at = offset + RECORD_HEADER_SIZE as u64;
        let result = match cipher {
            Some(c) => format::open_ops(&mut opened, c, segment_id, payload_at, rec.seq),
            None => Err(format::Damage {
                offset: 0,
                reason: "the segment is encrypted (format version 3) and the keyring has no data key for it (KEYRING missing or damaged?)".into(),
            }),
        };
        if let Err(d) = result {
            let e = Error::corruption(path, payload_at + d.offset, d.reason);
            if opts.recovery_mode == RecoveryMode::Salvage {
                skip(report, &e);
                return Ok(());
            }
            return Err(e);
        }
        &opened[..]
    } else {
        rec.payload
    };
    let ops = match format::decode_ops(payload, version, Some(rec.seq)) {
        Ok(ops) => ops,
        Err(d) => {
            let at = offset + RECORD_HEADER_SIZE as u64 + d.offset;
            let e = Error::corruption(path, at, d.reason);
            if opts.recovery_mode == RecoveryMode::Salvage {
                skip(report, &e);
                return Ok(());
            }
            return Err(e);
        }
    };
    let at = RecordAt {
        slot: index.slot(FileId::Segment(segment_id)),
        offset,
        // NOTE: cannot truncate: rec.len <= RECORD_PAYLOAD_MAX + header < 1 GiB.
        len: rec.len as u32,
        seq: rec.seq,
    };
    // Each value's offset is where the decoder found it in the payload (debug builds check the
    // layout puts it there too: the commit path takes its offsets from the layout).
    let payload_at = payload.as_ptr() as usize;
    let changes = ops.iter().map(|op| {
        let value_at = match op {
            Op::Put { value, .. } => Some(value.as_ptr() as usize - payload_at),
            Op::Delete { .. } | Op::Touch { .. } => None,
        };
        Change::of(op, value_at)
    });
    debug_assert!(
        version != format::FORMAT_VERSION
            || ops
                .iter()
                .map(|op| match op {
                    Op::Put { value, .. } => Some(value.as_ptr() as usize - payload_at),
                    _ => None,
                })
                .eq(format::value_offsets(&ops)),
        "the layout puts each value where the decoder found it"
    );
    index.apply_record(&at, changes);
    Ok(())
}

/// The keyring of the store being opened, if it is encrypted: opened with the options' key
/// (another key is [`Error::WrongKey`]); created for a new store given a key. A key for a store
/// that has data but no keyring is [`Error::NotEncrypted`]; no key for a store with a keyring,
/// [`Error::KeyRequired`]. A keyring left half-written by a crash (`KEYRING.tmp`) is removed.
fn open_keyring(layout: &Layout, opts: &Options, listing: &listing::Listing) -> Result<Option<Arc<Keyring>>> {
    let storage = opts.storage.as_ref();
    let tmp = layout.keyring_tmp();
    match storage.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &tmp, e)),
    }
    let exists = Keyring::exists(storage, layout);
    let has_data = !listing.segments.is_empty() || !listing.snapshots.is_empty();
    let dir = layout.dir().to_path_buf();
    match (&opts.encryption_key, exists) {
        (Some(key), true) => {
            Keyring::load(opts.storage.clone(), layout.clone(), key.clone()).map(|k| Some(Arc::new(k)))
        }
        (Some(key), false) if !has_data => {
            Keyring::create(opts.storage.clone(), layout.clone(), key.clone()).map(|k| Some(Arc::new(k)))
        }
        (Some(_), false) => Err(Error::NotEncrypted { path: dir }),
        (None, true) => Err(Error::KeyRequired { path: dir }),
        (None, false) => Ok(None),
    }
}
