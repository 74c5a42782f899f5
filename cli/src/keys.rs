//! Encryption keys on the command line: `--key-file` (read here, with one line saying what is
//! wrong with a bad one), `keygen`, and the options a key goes into.
//!
//! The key reaches the library as [`EncryptionKey`] only; the file's bytes are wiped once read.
//! A key is never printed unless `keygen --stdout` asks for it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use sessiondb::{EncryptionKey, Error, Options};
use zeroize::Zeroizing;

use crate::io_error;

/// Environment variable naming the key file when `--key-file` is not given.
pub const KEY_FILE_VAR: &str = "SESSIONDB_KEY_FILE";

/// A key file holds 32 raw bytes or 64 hex characters and a newline; anything much longer is
/// the wrong file, refused before it is read whole.
const KEY_FILE_BYTES_MAX: u64 = 1024;

/// `options` with `key`, if there is one.
pub fn with_key(options: Options, key: Option<&EncryptionKey>) -> Options {
    match key {
        Some(key) => options.encryption_key(key.clone()),
        None => options,
    }
}

/// A bad `--key-file`, as one line (exit status 2: a usage error).
fn bad_key_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidPath {
        path: path.to_path_buf(),
        reason: format!("not a usable key file: {}", reason.into()),
    }
}

/// Reads and parses the key file at `path` (32 raw bytes, or 64 hex characters with an optional
/// trailing newline). Warns on stderr when other users may read it.
pub fn read_key_file(path: &Path) -> sessiondb::Result<EncryptionKey> {
    let mut file = File::open(path).map_err(|e| bad_key_file(path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad_key_file(path, e.to_string()))?;
    if meta.is_dir() {
        return Err(bad_key_file(path, "it is a directory"));
    }
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(bad_key_file(
            path,
            format!(
                "it has {} bytes; a key file holds 32 raw bytes or 64 hex characters",
                meta.len()
            ),
        ));
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(80));
    (&mut file)
        .take(KEY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut contents)
        .map_err(|e| bad_key_file(path, e.to_string()))?;
    if contents.is_empty() {
        return Err(bad_key_file(path, "it is empty"));
    }
    let key = EncryptionKey::from_key_file_contents(&contents).map_err(|e| match e {
        Error::InvalidKey(reason) => bad_key_file(path, reason),
        other => other,
    })?;
    if meta.mode() & 0o077 != 0 {
        eprintln!(
            "sessiondb: warning: key file {} can be read by other users (mode {:04o}); `chmod 600` it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(key)
}

/// `sessiondb keygen PATH` or `keygen --stdout` (`path` `None`): a new random key, as 64 hex
/// characters and a newline, written to a new file of mode 0600 (never over an existing one: a
/// key overwritten is a store lost), or printed.
pub fn keygen(path: Option<&Path>) -> sessiondb::Result<ExitCode> {
    let key = EncryptionKey::generate()?;
    let mut line = Zeroizing::new(String::with_capacity(65));
    line.push_str(&key.to_hex());
    line.push('\n');
    let Some(path) = path else {
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| io_error("<stdout>", "write", e))?;
        return Ok(ExitCode::SUCCESS);
    };
    write_new_key_file(path, line.as_bytes())?;
    outln!(
        "wrote a new encryption key to {} (mode 0600). Keep a copy somewhere safe: a store encrypted with it cannot be read without it.",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `contents` to `path`, which must not exist, whole or not at all: into a temporary file
/// of mode 0600 next to it, fsynced, then linked to `path` (the link fails if `path` appeared
/// meanwhile), the directory fsynced.
fn write_new_key_file(path: &Path, contents: &[u8]) -> sessiondb::Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "already exists; keygen never overwrites a file (a key overwritten is a store lost)".into(),
        });
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| Error::InvalidPath {
        path: path.to_path_buf(),
        reason: "not a file name".into(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    // NOTE: the temporary name goes whether or not the link was made; a failure to remove it
    // leaves a copy of the key next to the key, which the error below reports.
    let removed = fs::remove_file(&tmp);
    written.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Error::InvalidPath {
            path: path.to_path_buf(),
            reason: "already exists; keygen never overwrites a file".into(),
        },
        _ => io_error(path, "write key file", e),
    })?;
    removed.map_err(|e| io_error(&tmp, "remove", e))?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(parent, "fsync", e))
}
