//! A state machine snapshot in one file: the snapshot's metadata and the files of a sessiondb
//! backup ([`sessiondb::Db::backup`]), so openraft can send it to another node in chunks and
//! that node can restore it ([`sessiondb::restore`]). Layout (docs/cluster.md, "Snapshot
//! files"), integers little-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `SDBRAFT1` |
//! | 4 | `meta_len`, at most [`META_BYTES_MAX`] |
//! | `meta_len` | openraft's `SnapshotMeta` as JSON |
//! | 4 | file count, at most [`FILES_MAX`] |
//! | per file | 2 name length (1 to 255), the name (a relative path, `/` between components, no `..`), 8 length, 8 data length (the rest of the file is zeros), the data |
//! | 4 | crc32 of every byte before it |
//!
//! Nothing is allocated from a length field beyond its limit; data is copied in pieces. A file
//! that does not verify is an error naming it and the offset, and nothing extracted from it stays.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

/// The first 8 bytes.
pub const MAGIC: &[u8; 8] = b"SDBRAFT1";
/// The metadata's size limit.
pub const META_BYTES_MAX: u32 = 1 << 20;
/// At most this many files.
pub const FILES_MAX: u32 = 1024;
const NAME_BYTES_MAX: usize = 255;
const COPY_CHUNK: usize = 64 * 1024;

fn bad(path: &Path, offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: snapshot file damaged at offset {offset}: {what}", path.display()),
    )
}

/// A writer that keeps the crc32 and the offset of what went through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    at: u64,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

/// The files under `dir`, as relative paths with `/` between components, sorted.
fn files_under(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let name = e.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| io::Error::other(format!("{}: a file name that is not UTF-8", dir.display())))?;
            let rel = rel.join(name);
            if e.file_type()?.is_dir() {
                stack.push(rel);
            } else {
                let parts: Vec<_> = rel.components().filter_map(|c| c.as_os_str().to_str()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the snapshot file `path` (fsynced) from `meta` and the files under `dir`. The lock
/// file of a store is left out.
pub fn write(path: &Path, meta: &[u8], dir: &Path) -> io::Result<()> {
    if meta.len() > META_BYTES_MAX as usize {
        return Err(io::Error::other("snapshot metadata too large"));
    }
    let names: Vec<String> = files_under(dir)?.into_iter().filter(|n| n != "LOCK").collect();
    if names.len() > FILES_MAX as usize {
        return Err(io::Error::other("too many files in the backup"));
    }
    let file = File::create(path)?;
    let mut w = Summed {
        inner: BufWriter::new(file),
        crc: crc32fast::Hasher::new(),
        at: 0,
    };
    w.write_all(MAGIC)?;
    w.write_all(&(meta.len() as u32).to_le_bytes())?;
    w.write_all(meta)?;
    w.write_all(&(names.len() as u32).to_le_bytes())?;
    let mut buf = vec![0u8; COPY_CHUNK];
    for name in &names {
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(io::Error::other(format!(
                "file name {name:?} not allowed in a snapshot"
            )));
        }
        let mut f = File::open(dir.join(name))?;
        let len = f.metadata()?.len();
        let data_len = data_len(&mut f, len)?;
        w.write_all(&(name.len() as u16).to_le_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&data_len.to_le_bytes())?;
        f.seek(SeekFrom::Start(0))?;
        let mut left = data_len;
        while left > 0 {
            let n = (left as usize).min(COPY_CHUNK);
            f.read_exact(&mut buf[..n])?;
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    let crc = w.crc.clone().finalize();
    let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.write_all(&crc.to_le_bytes())?;
    file.sync_all()
}

/// One past the last non-zero byte of `f` (`len` bytes), reading backwards in pieces.
fn data_len(f: &mut File, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(COPY_CHUNK as u64);
        let piece = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(piece)?;
        if let Some(i) = piece.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn read_u<const N: usize, R: Read>(r: &mut R) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// A relative path of plain components, or `None`.
fn safe_name(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| p.to_path_buf())
}

/// Reads the metadata of snapshot file `path`, checking its framing and checksum first.
pub fn read_meta(path: &Path) -> io::Result<Vec<u8>> {
    walk(path, None).map_err(|e| named(path, e))
}

/// `e` with `path` in its message (a file that ends early is damage too).
fn named(path: &Path, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::InvalidData {
        return e;
    }
    let kind = if e.kind() == io::ErrorKind::UnexpectedEof {
        io::ErrorKind::InvalidData
    } else {
        e.kind()
    };
    io::Error::new(kind, format!("{}: snapshot file: {e}", path.display()))
}

/// Extracts snapshot file `path` into `dir` (created; must not exist): the backup's files,
/// fsynced. Returns the metadata. On an error `dir` is removed.
pub fn extract(path: &Path, dir: &Path) -> io::Result<Vec<u8>> {
    // Checked whole before anything is written.
    walk(path, None).map_err(|e| named(path, e))?;
    fs::create_dir(dir)?;
    let out = walk(path, Some(dir)).map_err(|e| named(path, e));
    if out.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
    out
}

/// Reads the file through, checking every field and the checksum; writes the files into `into`
/// if given. Returns the metadata.
fn walk(path: &Path, into: Option<&Path>) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size < (MAGIC.len() + 4 + 4 + 4) as u64 {
        return Err(bad(path, 0, "shorter than any snapshot file"));
    }
    let body_end = size - 4;
    let mut r = Summed {
        inner: BufReader::new(file).take(body_end),
        crc: crc32fast::Hasher::new(),
        at: 0,
    };
    let at = |r: &Summed<_>| r.at;
    if &read_u::<8, _>(&mut r)? != MAGIC {
        return Err(bad(path, 0, "not a sessiondb cluster snapshot (magic)"));
    }
    let meta_len = u32::from_le_bytes(read_u::<4, _>(&mut r)?);
    if meta_len > META_BYTES_MAX || u64::from(meta_len) > body_end - at(&r) {
        return Err(bad(path, at(&r) - 4, format!("metadata length {meta_len}")));
    }
    let mut meta = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta)?;
    let count = u32::from_le_bytes(read_u::<4, _>(&mut r)?);
    if count > FILES_MAX {
        return Err(bad(path, at(&r) - 4, format!("{count} files")));
    }
    let mut buf = vec![0u8; COPY_CHUNK];
    for _ in 0..count {
        let name_at = at(&r);
        let name_len = u16::from_le_bytes(read_u::<2, _>(&mut r)?) as usize;
        if name_len == 0 || name_len > NAME_BYTES_MAX {
            return Err(bad(path, name_at, format!("name length {name_len}")));
        }
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name)
            .ok()
            .and_then(|n| safe_name(&n))
            .ok_or_else(|| bad(path, name_at, "a file name that is not a plain relative path"))?;
        let len = u64::from_le_bytes(read_u::<8, _>(&mut r)?);
        let data_len = u64::from_le_bytes(read_u::<8, _>(&mut r)?);
        if data_len > len || data_len > body_end - at(&r) {
            return Err(bad(path, at(&r) - 16, format!("data length {data_len} of {len}")));
        }
        let mut out = match into {
            Some(dir) => {
                let p = dir.join(&name);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent)?;
                }
                Some(OpenOptions::new().write(true).create_new(true).open(p)?)
            }
            None => None,
        };
        let mut left = data_len;
        while left > 0 {
            let n = (left as usize).min(COPY_CHUNK);
            r.read_exact(&mut buf[..n])?;
            if let Some(f) = out.as_mut() {
                f.write_all(&buf[..n])?;
            }
            left -= n as u64;
        }
        if let Some(f) = out {
            f.set_len(len)?;
            f.sync_all()?;
        }
    }
    if at(&r) != body_end {
        return Err(bad(path, at(&r), "bytes after the last file"));
    }
    let crc = r.crc.clone().finalize();
    let mut file = r.inner.into_inner().into_inner();
    file.seek(SeekFrom::Start(body_end))?;
    let stored = u32::from_le_bytes(read_u::<4, _>(&mut file)?);
    if stored != crc {
        return Err(bad(path, body_end, "checksum mismatch"));
    }
    if let Some(dir) = into {
        sync_dirs(dir)?;
    }
    Ok(meta)
}

/// Fsyncs `dir` and every directory under it.
fn sync_dirs(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_dirs(&e.path())?;
        }
    }
    File::open(dir)?.sync_all()
}
