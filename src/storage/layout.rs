//! The store's directory layout: every file name is built and parsed here, and nowhere else.
//!
//! ```text
//! DIR/LOCK                       exclusive lock, held while open
//! DIR/wal/<segment-id>.wal       log segments; 20-digit zero-padded ids sort in log order
//! DIR/wal/<segment-id>.wal.tmp   a segment being created and zero-filled (removed by recovery)
//! DIR/<base-seq>.snap            snapshots; 20-digit zero-padded base sequence numbers
//! DIR/<base-seq>.snap.tmp        a snapshot being written (removed by recovery)
//! <segment or snapshot>.broken  a damaged file repair (or a `Salvage` open) set aside, in its
//!                                own directory (`<file>.<n>.broken` when that name is taken);
//!                                never opened
//! PARENT/.<name>.tmp-<pid>       a backup or restore into PARENT/<name> being built
//! ```

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::limits;
use crate::storage::Storage;

/// The lock file's name.
pub const LOCK_FILE: &str = "LOCK";
/// The keyring of an encrypted store (docs/format.md, "The keyring").
pub const KEYRING_FILE: &str = "KEYRING";
/// The keyring being written, before its rename.
pub const KEYRING_TMP_FILE: &str = "KEYRING.tmp";
/// The log directory's name.
pub const WAL_DIR: &str = "wal";

const SEGMENT_EXT: &str = ".wal";
const SNAPSHOT_EXT: &str = ".snap";
const TMP_EXT: &str = ".tmp";
/// No name above ends with it, so an open ignores a file set aside by repair.
const BROKEN_EXT: &str = ".broken";
const ID_DIGITS: usize = 20;

/// The store's paths.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
    wal_dir: PathBuf,
}

/// What a file name in the store's directories is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `wal/<id>.wal`
    Segment(u64),
    /// `<seq>.snap`
    Snapshot(u64),
    /// `<seq>.snap.tmp`
    SnapshotTmp(u64),
    /// `wal/<id>.wal.tmp`
    SegmentTmp(u64),
}

impl Layout {
    /// The layout of the store in `dir`.
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            wal_dir: dir.join(WAL_DIR),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log directory.
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// A segment's path.
    pub fn segment(&self, id: u64) -> PathBuf {
        self.wal_dir.join(format!("{id:0ID_DIGITS$}{SEGMENT_EXT}"))
    }

    /// The temporary path a segment is created and zero-filled under before its rename.
    pub fn segment_tmp(&self, id: u64) -> PathBuf {
        self.wal_dir.join(format!("{id:0ID_DIGITS$}{SEGMENT_EXT}{TMP_EXT}"))
    }

    /// A snapshot's path.
    pub fn snapshot(&self, base_seq: u64) -> PathBuf {
        self.dir.join(format!("{base_seq:0ID_DIGITS$}{SNAPSHOT_EXT}"))
    }

    /// The temporary path a snapshot is written under before its rename.
    pub fn snapshot_tmp(&self, base_seq: u64) -> PathBuf {
        self.dir.join(format!("{base_seq:0ID_DIGITS$}{SNAPSHOT_EXT}{TMP_EXT}"))
    }

    /// The keyring's path (encrypted stores).
    pub fn keyring(&self) -> PathBuf {
        self.dir.join(KEYRING_FILE)
    }

    /// The path the keyring is written under before its rename.
    pub fn keyring_tmp(&self) -> PathBuf {
        self.dir.join(KEYRING_TMP_FILE)
    }
}

/// The name repair gives the damaged file `path` when it sets it aside: `<path>.broken`, or
/// `<path>.<n>.broken` for `n > 0` (when the names before are taken).
pub(crate) fn broken(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    if n > 0 {
        name.push(format!(".{n}"));
    }
    name.push(BROKEN_EXT);
    PathBuf::from(name)
}

/// The first name [`broken`] gives `path` that is not taken.
pub(crate) fn free_broken_name(storage: &dyn Storage, path: &Path) -> Result<PathBuf> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let names = storage.list(parent).map_err(|e| Error::io("list", parent, e))?;
    for n in 0u32.. {
        let candidate = broken(path, n);
        if !names.iter().any(|x| candidate.file_name() == Some(x.as_os_str())) {
            return Ok(candidate);
        }
    }
    Err(Error::io("rename", path, io::Error::other("no free .broken name")))
}

/// Whether `name` is one [`broken`] gives.
pub(crate) fn is_broken(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.ends_with(BROKEN_EXT))
}

/// The temporary directory a backup or restore into `<parent>/<name>` is built in, by process
/// `pid`, before it is renamed into place: `<parent>/.<name>.tmp-<pid>`.
pub(crate) fn staging_dir(parent: &Path, name: &str, pid: u32) -> PathBuf {
    parent.join(format!(".{name}{TMP_EXT}-{pid}"))
}

fn parse_id(digits: &str) -> Option<u64> {
    if digits.len() == ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok().filter(|&n| n <= limits::SEQ_MAX)
    } else {
        None
    }
}

/// Classifies a file name from the store's directory or its `wal/` directory. Names that do not
/// match our patterns (including non-UTF-8 ones) are `None` and left alone.
pub fn classify(name: &OsStr) -> Option<FileKind> {
    let name = name.to_str()?;
    if let Some(stem) = name.strip_suffix(SEGMENT_EXT) {
        return parse_id(stem).map(FileKind::Segment);
    }
    if let Some(stem) = name.strip_suffix(SNAPSHOT_EXT) {
        return parse_id(stem).map(FileKind::Snapshot);
    }
    if let Some(stem) = name.strip_suffix(TMP_EXT).and_then(|s| s.strip_suffix(SNAPSHOT_EXT)) {
        return parse_id(stem).map(FileKind::SnapshotTmp);
    }
    if let Some(stem) = name.strip_suffix(TMP_EXT).and_then(|s| s.strip_suffix(SEGMENT_EXT)) {
        return parse_id(stem).map(FileKind::SegmentTmp);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_order() {
        let l = Layout::new(Path::new("/s"));
        let a = l.segment(9);
        let b = l.segment(10);
        assert!(a < b, "segment names sort in id order");
        assert_eq!(classify(a.file_name().unwrap()), Some(FileKind::Segment(9)));
        assert_eq!(
            classify(l.snapshot(42).file_name().unwrap()),
            Some(FileKind::Snapshot(42))
        );
        assert_eq!(
            classify(l.snapshot_tmp(42).file_name().unwrap()),
            Some(FileKind::SnapshotTmp(42))
        );
        assert_eq!(
            classify(l.segment_tmp(7).file_name().unwrap()),
            Some(FileKind::SegmentTmp(7))
        );
        assert_eq!(classify(OsStr::new("42.wal")), None);
        assert_eq!(classify(OsStr::new("notes.txt")), None);
        assert_eq!(classify(OsStr::new("0000000000000000000x.wal")), None);
    }

    #[test]
    fn names_of_tools() {
        let seg = Layout::new(Path::new("/s")).segment(3);
        let first = broken(&seg, 0);
        assert_eq!(first, Path::new("/s/wal/00000000000000000003.wal.broken"));
        assert_eq!(broken(&seg, 2), Path::new("/s/wal/00000000000000000003.wal.2.broken"));
        assert!(is_broken(first.file_name().unwrap()));
        assert_eq!(classify(first.file_name().unwrap()), None, "an open ignores it");
        assert_eq!(staging_dir(Path::new("/b"), "dest", 42), Path::new("/b/.dest.tmp-42"));
    }
}
