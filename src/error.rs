//! The one error type of sessiondb.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in sessiondb.
///
/// Each variant reads as a sentence and names the file and, for damage, the byte offset. A file
/// of the store is named by the store's directory as it was given to [`crate::Db::open`] (or the
/// tool) joined with the file's name in it, e.g. `/var/lib/app/sessions/wal/00000000000000000003.wal`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{}: {op} failed{}: {source}", path.display(), at_offset(*offset))]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The storage operation, e.g. `fdatasync`.
        op: &'static str,
        /// Where in the file a read failed, when it was a positioned read.
        offset: Option<u64>,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// The file system has no room for a write (`ENOSPC`, or `EDQUOT`: a quota). Nothing
    /// acknowledged before is lost. A write that gets this error was not made; the store stays
    /// open and takes writes again once there is room, unless part of the failed write may have
    /// reached the log (then later writes get [`Error::Poisoned`] until the store is reopened).
    /// docs/reliability.md, "Operating limits", says how much room each step needs.
    #[error("{}: {op} failed: no space left on the file system{}", path.display(), needing(*needed))]
    StorageFull {
        /// The file the write was for.
        path: PathBuf,
        /// The storage operation, e.g. `write`.
        op: &'static str,
        /// How many free bytes the step needed, when known (a new log segment's size, a
        /// snapshot's estimated size).
        needed: Option<u64>,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// Stored bytes do not add up: a checksum, a length, a sequence number or a header is wrong.
    #[error("{}: {reason} at offset {offset}", path.display())]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage within the file.
        offset: u64,
        /// What is wrong, as a short phrase.
        reason: String,
    },

    /// Another handle (in this or another process) has the store open.
    #[error("{}: the store is locked by another open handle", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// An earlier write or fsync failed; the store refuses writes until it is reopened.
    #[error("the store is poisoned by an earlier failed write or fsync ({cause}); reopen it to recover")]
    Poisoned {
        /// The first failure, as text.
        cause: String,
    },

    /// The file was written by a format version this build does not read.
    #[error(
        "{}: format version {found} is not supported (this build reads versions {} to {supported})",
        path.display(),
        crate::format::FORMAT_VERSION_OLDEST
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version this build reads, [`crate::FORMAT_VERSION_NEWEST`] (it reads every
        /// version from [`crate::FORMAT_VERSION_OLDEST`] to this one; it writes version 2, and 3
        /// in an encrypted store).
        supported: u32,
    },

    /// A key, value or batch is larger than the configured limit. Nothing was written.
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// `"key"`, `"value"` or `"batch"`; `"sequence number"` when the log has used every
        /// sequence number up to `limits::SEQ_MAX`.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },

    /// An option is out of range or options contradict each other.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A precondition of [`crate::Db::write`] did not hold; nothing was written.
    /// ([`crate::Db::write_if`] and the `*_if_version` methods return it as a value instead.)
    #[error("version conflict: {0}")]
    Conflict(Conflict),

    /// A session id string is not one this store issues (22 URL-safe base64 characters).
    #[error("invalid session id {0:?}")]
    InvalidSessionId(String),

    /// Session data could not be converted to or from the application's type.
    #[error("session data: {0}")]
    SessionData(String),

    /// A session was saved at a payload version newer than the application's
    /// (`session::Migrations::payload_version`): a newer release of the application wrote it.
    /// It is neither returned nor overwritten.
    #[error(
        "session payload version {found} is newer than this application's payload version {known}: \
         a newer release saved it; it is neither read nor overwritten"
    )]
    SessionPayloadTooNew {
        /// The payload version the session was saved at.
        found: u32,
        /// The newest payload version this application knows.
        known: u32,
    },

    /// Session data at payload version `from` must be migrated, but no migration from `from` to
    /// `to` is registered (`session::Migrations::migrate`).
    #[error(
        "no session migration from payload version {from} to {to} is registered \
         (this application's payload version is {current})"
    )]
    SessionMigrationMissing {
        /// The version the missing step starts from.
        from: u32,
        /// The version it would produce (`from + 1`).
        to: u32,
        /// The application's payload version.
        current: u32,
    },

    /// A registered session migration step returned an error.
    #[error("session migration from payload version {from} to {to} failed: {reason}")]
    SessionMigrationFailed {
        /// The version the step starts from.
        from: u32,
        /// The version it produces (`from + 1`).
        to: u32,
        /// The step's error, as text.
        reason: String,
    },

    /// The master key given does not open the store's keyring: it is not the key the store was
    /// encrypted with (or last rotated to).
    #[error("{}: wrong encryption key", path.display())]
    WrongKey {
        /// The keyring.
        path: PathBuf,
    },

    /// The store is encrypted and no key was given ([`crate::Options::encryption_key`]).
    #[error("{}: the store is encrypted; open it with its encryption key", path.display())]
    KeyRequired {
        /// The store's directory.
        path: PathBuf,
    },

    /// An encryption key was given for a store that is not encrypted. sessiondb never mixes
    /// encrypted and unencrypted files in one store: convert it with `sessiondb encrypt`.
    #[error("{}: the store is not encrypted, but an encryption key was given (convert it with `sessiondb encrypt`)", path.display())]
    NotEncrypted {
        /// The store's directory.
        path: PathBuf,
    },

    /// An encryption key could not be read: wrong length or characters.
    #[error("invalid encryption key: {0}")]
    InvalidKey(String),

    /// A path cannot be used for what it was given for: a directory given as a store holds no
    /// store (no lock file, log directory or snapshot), or a destination that must not exist yet
    /// (a backup's, a restore's) does.
    #[error("{}: {reason}", path.display())]
    InvalidPath {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it, e.g. `not a sessiondb store`.
        reason: String,
    },
}

/// `Result` with sessiondb's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn needing(needed: Option<u64>) -> String {
    needed
        .map(|n| format!(" (this step needs about {n} free bytes)"))
        .unwrap_or_default()
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map(|o| format!(" at offset {o}")).unwrap_or_default()
}

impl Error {
    /// `Ok` if `size` is at most `max`, else [`Error::TooLarge`] naming `what`.
    pub(crate) fn check_size(what: &'static str, size: usize, max: usize) -> Result<()> {
        if size > max {
            return Err(Error::TooLarge {
                what,
                size: size as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// A failed storage call; a full file system (or quota) is [`Error::StorageFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) {
            return Error::StorageFull {
                path: path.into(),
                op,
                needed: None,
                source,
            };
        }
        Error::Io {
            path: path.into(),
            op,
            offset: None,
            source,
        }
    }

    /// Whether this is [`Error::StorageFull`].
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::StorageFull { .. })
    }

    /// This error with the free space its step needed, if it is [`Error::StorageFull`].
    pub(crate) fn needing(mut self, bytes: u64) -> Error {
        if let Error::StorageFull { needed, .. } = &mut self {
            *needed = Some(bytes);
        }
        self
    }

    /// A failed read of `path`, at the offset where it failed.
    pub(crate) fn read(path: impl Into<PathBuf>, e: crate::storage::ReadError) -> Error {
        Error::Io {
            path: path.into(),
            op: "read",
            offset: Some(e.offset),
            source: e.source,
        }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error for the other writers of a failed commit group (io::Error is not
    /// `Clone`; the copy keeps the path, the operation, the kind and the message).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io {
                path,
                op,
                offset,
                source,
            } => Error::Io {
                path: path.clone(),
                op,
                offset: *offset,
                source: copy_io(source),
            },
            Error::StorageFull {
                path,
                op,
                needed,
                source,
            } => Error::StorageFull {
                path: path.clone(),
                op,
                needed: *needed,
                source: copy_io(source),
            },
            Error::Poisoned { cause } => Error::Poisoned { cause: cause.clone() },
            other => Error::Poisoned {
                cause: other.to_string(),
            },
        }
    }
}

/// A copy of an OS error. The OS error number stays: writers of a failed group tell a full disk
/// (28) from an I/O error (5) as the leader does.
fn copy_io(source: &io::Error) -> io::Error {
    match source.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(source.kind(), source.to_string()),
    }
}

/// A key for an error message: printable ASCII as it is, other bytes escaped, at most 64 bytes
/// of it (keys can be long, and session ids are secrets best not logged whole).
pub(crate) fn show_key(key: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = &key[..key.len().min(SHOWN)];
    let more = if key.len() > SHOWN { "..." } else { "" };
    format!("\"{}{more}\" ({} bytes)", shown.escape_ascii(), key.len())
}

/// A precondition that did not hold: the write was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key whose version differed.
    pub key: Vec<u8>,
    /// The version the write expected (`None`: absent or expired).
    pub expected: Option<u64>,
    /// The version it found (`None`: absent or expired).
    pub actual: Option<u64>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: Option<u64>| v.map_or_else(|| "absent".to_string(), |v| format!("version {v}"));
        write!(
            f,
            "key {:?}: expected {}, found {}",
            String::from_utf8_lossy(&self.key),
            v(self.expected),
            v(self.actual)
        )
    }
}

impl std::error::Error for Conflict {}
