//! The library calls that read or change a store, given its encryption key (or none).
//!
//! `Db::open_with` takes the key in its `Options`, and `Db::rotate_key` changes it. The operator
//! tools (`inspect::View::open`, `inspect::verify`, `backup_dir`, `restore`, `repair`) take no
//! options yet (issue 16): with the cargo feature `pending-lib` this module calls the variants
//! the library is getting (`..._with(.., Options)`); without it, a key given to one of those is
//! refused with one line naming the missing call. Without a key, each function here is the
//! plain call.

use std::path::Path;

use sessiondb::inspect::{self, VerifyReport, View};
#[cfg(feature = "pending-lib")]
use sessiondb::Options;
use sessiondb::{BackupReport, Db, EncryptionKey, Error, RepairReport, RestoreReport};

/// Until the library has the call: a key given to `what` is refused.
#[cfg(not(feature = "pending-lib"))]
fn missing(what: &str) -> Error {
    Error::InvalidOptions(format!(
        "this subcommand cannot read an encrypted store yet: the library has no `{what}`"
    ))
}

/// The options a tool's call gets: the key, nothing else (the tools choose the rest).
#[cfg(feature = "pending-lib")]
fn options(key: &EncryptionKey) -> Options {
    Options::new().encryption_key(key.clone())
}

/// A read-only view of the store in `dir` (`stats`, `dump`, `get`).
pub fn view(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<View> {
    match key {
        None => View::open(dir),
        #[cfg(feature = "pending-lib")]
        Some(key) => View::open_with(dir, options(key)),
        #[cfg(not(feature = "pending-lib"))]
        Some(_) => Err(missing("inspect::View::open_with")),
    }
}

/// `verify`.
pub fn verify(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<VerifyReport> {
    match key {
        None => inspect::verify(dir),
        #[cfg(feature = "pending-lib")]
        Some(key) => inspect::verify_with(dir, options(key)),
        #[cfg(not(feature = "pending-lib"))]
        Some(_) => Err(missing("inspect::verify_with")),
    }
}

/// `backup`: the backup is encrypted under the same key.
pub fn backup_dir(dir: &Path, dest: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<BackupReport> {
    match key {
        None => sessiondb::backup_dir(dir, dest),
        #[cfg(feature = "pending-lib")]
        Some(key) => sessiondb::backup_dir_with(dir, dest, options(key)),
        #[cfg(not(feature = "pending-lib"))]
        Some(_) => Err(missing("backup_dir_with")),
    }
}

/// `restore`: the key is the backup's (and so the restored store's).
pub fn restore(backup: &Path, dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<RestoreReport> {
    match key {
        None => sessiondb::restore(backup, dir),
        #[cfg(feature = "pending-lib")]
        Some(key) => sessiondb::restore_with(backup, dir, options(key)),
        #[cfg(not(feature = "pending-lib"))]
        Some(_) => Err(missing("restore_with")),
    }
}

/// `repair`.
pub fn repair(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<RepairReport> {
    match key {
        None => sessiondb::repair(dir),
        #[cfg(feature = "pending-lib")]
        Some(key) => sessiondb::repair_with(dir, options(key)),
        #[cfg(not(feature = "pending-lib"))]
        Some(_) => Err(missing("repair_with")),
    }
}

/// `rotate-key`: seals the store's keyring under `new` (the library makes the change atomic).
pub fn rotate_key(db: &Db, new: EncryptionKey) -> sessiondb::Result<()> {
    db.rotate_key(new)
}
