//! A copy-on-write view of another storage: reads go to the files below, every change stays in
//! memory. The real recovery code runs on it to inspect a store without changing a byte of it
//! (`src/tools/inspect.rs`): cutting a torn tail, removing temp files, creating a segment and writing a
//! snapshot all happen in this view only, and no lock is taken.
//!
//! Files below are opened read-only. A file is copied into memory when it is first written, or
//! when it is mapped (except snapshots, which never change once named, so the real map is used):
//! a log segment of a store open in another process is being appended to, and a mapped copy
//! that changed while it was checked would be checked against moving bytes.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::Mutex;

use super::{read_exact_at, LockGuard, MappedFile, OpenMode, Storage, StorageFile};
use crate::storage::layout::{self, FileKind};

/// A copy-on-write, lock-free, never-writing view of `below`.
pub(crate) struct Overlay {
    below: Arc<dyn Storage>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Files this view has opened, created or renamed; `None` where one was removed.
    files: HashMap<PathBuf, Option<Arc<Node>>>,
    /// Directories created in this view only.
    dirs: BTreeSet<PathBuf>,
}

/// One file of the view.
struct Node {
    below: Option<Arc<dyn StorageFile>>,
    /// Whether the real map of the file below may be used (a file that no longer changes).
    stable: bool,
    /// The file's bytes once this view has changed (or copied) them.
    copy: Mutex<Option<Vec<u8>>>,
}

impl fmt::Debug for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlay")
            .field("below", &self.below)
            .finish_non_exhaustive()
    }
}

impl Overlay {
    pub(crate) fn new(below: Arc<dyn Storage>) -> Overlay {
        Overlay {
            below,
            state: Mutex::new(State::default()),
        }
    }

    /// The view's node for `path`: `Ok(None)` if it does not exist.
    fn node(&self, path: &Path) -> io::Result<Option<Arc<Node>>> {
        let mut st = self.state.lock();
        if let Some(n) = st.files.get(path) {
            return Ok(n.clone());
        }
        let file = match self.below.open(path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stable = path
            .file_name()
            .and_then(layout::classify)
            .is_some_and(|k| matches!(k, FileKind::Snapshot(_)));
        let node = Arc::new(Node {
            below: Some(file),
            stable,
            copy: Mutex::new(None),
        });
        st.files.insert(path.to_path_buf(), Some(node.clone()));
        Ok(Some(node))
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl Storage for Overlay {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if self.below.list(dir).is_err() {
            self.state.lock().dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        if mode == OpenMode::CreateNew {
            if self.node(path)?.is_some() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            let node = Arc::new(Node {
                below: None,
                stable: false,
                copy: Mutex::new(Some(Vec::new())),
            });
            self.state.lock().files.insert(path.to_path_buf(), Some(node.clone()));
            return Ok(Arc::new(Handle(node)));
        }
        match self.node(path)? {
            Some(node) => Ok(Arc::new(Handle(node))),
            None => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let node = self.node(from)?.ok_or_else(|| not_found(from))?;
        let mut st = self.state.lock();
        st.files.insert(from.to_path_buf(), None);
        st.files.insert(to.to_path_buf(), Some(node));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        if self.node(path)?.is_none() {
            return Err(not_found(path));
        }
        self.state.lock().files.insert(path.to_path_buf(), None);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut names: BTreeSet<OsString> = match self.below.list(dir) {
            Ok(names) => names.into_iter().collect(),
            Err(e) if self.state.lock().dirs.contains(dir) && e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        let st = self.state.lock();
        for (path, node) in &st.files {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            if parent != dir {
                continue;
            }
            match node {
                Some(_) => names.insert(name.to_os_string()),
                None => names.remove(name),
            };
        }
        Ok(names.into_iter().collect())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn try_lock(&self, _path: &Path) -> io::Result<Option<LockGuard>> {
        // NOTE: the view never takes the store's lock: it reads a store another process may hold.
        Ok(Some(LockGuard::new(())))
    }
}

/// An open file of the view.
struct Handle(Arc<Node>);

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("overlay::Handle").finish_non_exhaustive()
    }
}

impl Node {
    /// The whole file below, read now.
    fn read_below(&self) -> io::Result<Vec<u8>> {
        let Some(file) = &self.below else {
            return Ok(Vec::new());
        };
        let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large to read"))?;
        let mut buf = vec![0u8; len];
        read_exact_at(file.as_ref(), &mut buf, 0).map_err(|e| e.source)?;
        Ok(buf)
    }

    /// Runs `f` on this view's own bytes of the file, copying them from below first if needed.
    fn with_copy<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> io::Result<T> {
        let mut copy = self.copy.lock();
        if copy.is_none() {
            *copy = Some(self.read_below()?);
        }
        match copy.as_mut() {
            Some(bytes) => Ok(f(bytes)),
            None => Err(io::Error::other("overlay copy vanished")),
        }
    }
}

struct Copied(Vec<u8>);

impl MappedFile for Copied {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl StorageFile for Handle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let copy = self.0.copy.lock();
        match (copy.as_ref(), &self.0.below) {
            (Some(bytes), _) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
            (None, Some(file)) => file.read_at(buf, offset),
            (None, None) => Ok(0),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        self.0.with_copy(|bytes| {
            let end = start + buf.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(buf);
            buf.len()
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.0.with_copy(|bytes| bytes.resize(len, 0))
    }

    fn len(&self) -> io::Result<u64> {
        if let Some(bytes) = self.0.copy.lock().as_ref() {
            return Ok(bytes.len() as u64);
        }
        match &self.0.below {
            Some(file) => file.len(),
            None => Ok(0),
        }
    }

    fn map(&self) -> io::Result<Option<Arc<dyn MappedFile>>> {
        if self.0.copy.lock().is_none() && self.0.stable {
            if let Some(file) = &self.0.below {
                return file.map();
            }
        }
        // A copy of the bytes as they are now; the view's own bytes stay unchanged.
        let bytes = match self.0.copy.lock().as_ref() {
            Some(b) => b.clone(),
            None => self.0.read_below()?,
        };
        Ok(Some(Arc::new(Copied(bytes))))
    }
}
