//! The storage seam: every byte sessiondb reads or writes goes through [`Storage`].
//!
//! The engine never calls `std::fs` itself. [`FsStorage`] is the real file system; a simulated,
//! fault-injecting implementation (cargo feature `sim`) plugs in behind the same traits, so the
//! crash tests run the engine's real code.

mod fs;
pub(crate) mod layout;
pub(crate) mod overlay;
#[cfg(feature = "sim")]
pub(crate) mod sim;

use std::any::Any;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use fs::FsStorage;

/// How [`Storage::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Create a new, empty file (mode 0600 on unix) for reading and writing; fails if it exists.
    CreateNew,
}

/// A read-only view of a whole file (a memory map on the real file system).
pub trait MappedFile: Send + Sync {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // NOTE: `len` is a fallible stat, not a container size.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`; returns how many were written (may be short).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data (and the metadata needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all its metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the file's length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// A read-only view of the file's current bytes, if this storage can give one. The engine
    /// maps only files that no longer change.
    fn map(&self) -> io::Result<Option<Arc<dyn MappedFile>>>;
}

/// A held lock of a [`Storage`]; dropping it releases the lock.
///
/// A storage puts whatever holds its lock inside (an open file with an `flock` on it, a token
/// of a simulated lock table); the store keeps the guard for as long as it is open.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl LockGuard {
    /// A guard that keeps `held` until it is dropped.
    pub fn new(held: impl Any + Send + Sync) -> LockGuard {
        LockGuard(Box::new(held))
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// A file system: files, directories, locks.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents (mode 0700 on unix).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames `from` to `to`, replacing `to` (atomic on the real file system).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory. Used only to clean up after a failed backup or restore; a
    /// storage that cannot leaves the directory (the default).
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let _ = dir;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this storage removes no directory",
        ))
    }
    /// Names of the entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `path` (creating the file). `Ok(None)` when another holder
    /// has it, in this process or another. The lock must hold even if the file is deleted while
    /// held ([`FsStorage`] also locks the directory that holds it).
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;
}

/// A failed read and the offset it failed at.
#[derive(Debug)]
pub(crate) struct ReadError {
    pub offset: u64,
    pub source: io::Error,
}

/// Reads exactly `buf.len()` bytes at `offset`, retrying short reads. A file that ends first is
/// `UnexpectedEof`.
pub(crate) fn read_exact_at(file: &dyn StorageFile, mut buf: &mut [u8], mut offset: u64) -> Result<(), ReadError> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                let source = io::Error::new(io::ErrorKind::UnexpectedEof, "file ends early");
                return Err(ReadError { offset, source });
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ReadError { offset, source }),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`, retrying short writes (docs/reliability.md, F7).
pub(crate) fn write_all_at(file: &dyn StorageFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes")),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a whole file into memory, or maps it when the storage can. Used where the engine reads
/// a file from start to end (recovery, snapshots).
pub(crate) enum FileBytes {
    Mapped(Arc<dyn MappedFile>),
    Owned(Vec<u8>),
}

impl FileBytes {
    pub(crate) fn load(file: &dyn StorageFile) -> Result<FileBytes, ReadError> {
        let at0 = |source| ReadError { offset: 0, source };
        if let Some(map) = file.map().map_err(at0)? {
            return Ok(FileBytes::Mapped(map));
        }
        let len = file.len().map_err(at0)?;
        let len = usize::try_from(len).map_err(|_| at0(io::Error::other("file too large to read")))?;
        let mut buf = vec![0u8; len];
        read_exact_at(file, &mut buf, 0)?;
        Ok(FileBytes::Owned(buf))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m.bytes(),
            FileBytes::Owned(v) => v,
        }
    }

    /// One past the last non-zero byte of these bytes of `file`. A map's zero tail is read
    /// through `file` in pieces ([`data_end`]), never through the map: touching it would make it
    /// resident, and a file's length is only what it claims.
    pub(crate) fn data_end(&self, file: &dyn StorageFile) -> Result<usize, ReadError> {
        match self {
            FileBytes::Mapped(m) => {
                let end = data_end(file, m.bytes().len() as u64)?;
                // Exact for the map: a store another process writes (the read-only tools) may
                // change between the reads and the map's view; from `end` down to the data the
                // map holds is a few pages at most.
                let end = (end as usize).min(m.bytes().len());
                Ok(crate::wal::reader::nonzero_end(&m.bytes()[..end]))
            }
            FileBytes::Owned(v) => Ok(crate::wal::reader::nonzero_end(v)),
        }
    }
}

/// Bytes read per call by [`data_end`].
const DATA_END_CHUNK: usize = 64 * 1024;

/// One past the last non-zero byte among the first `len` bytes of `file` (0 if all zero),
/// reading backwards from `len` in 64 KiB pieces: memory stays at one piece however long the
/// zero tail (a sparse file's holes read as zeros from the page cache, never resident here).
pub(crate) fn data_end(file: &dyn StorageFile, len: u64) -> Result<u64, ReadError> {
    let mut buf = vec![0u8; DATA_END_CHUNK];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(DATA_END_CHUNK as u64);
        let piece = &mut buf[..(end - start) as usize];
        read_exact_at(file, piece, start)?;
        let n = crate::wal::reader::nonzero_end(piece);
        if n > 0 {
            return Ok(start + n as u64);
        }
        end = start;
    }
    Ok(0)
}
