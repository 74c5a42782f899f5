//! The library calls that read or change a store, given its encryption key (or none): the
//! operator tools' `..._with_key` variants, `None` being the plain call.

use std::path::Path;

use sessiondb::inspect::{self, VerifyReport, View};
use sessiondb::{BackupReport, Db, EncryptionKey, RepairReport, RestoreReport};

/// A read-only view of the store in `dir` (`stats`, `dump`, `get`).
pub fn view(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<View> {
    View::open_with_key(dir, key.cloned())
}

/// `verify`.
pub fn verify(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<VerifyReport> {
    inspect::verify_with_key(dir, key.cloned())
}

/// `backup`: the backup is encrypted under the same key.
pub fn backup_dir(dir: &Path, dest: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<BackupReport> {
    sessiondb::backup_dir_with_key(dir, dest, key.cloned())
}

/// `restore`: the key is the backup's (and so the restored store's).
pub fn restore(backup: &Path, dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<RestoreReport> {
    sessiondb::restore_with_key(backup, dir, key.cloned())
}

/// `repair`.
pub fn repair(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<RepairReport> {
    sessiondb::repair_with_key(dir, key.cloned())
}

/// `rotate-key`: seals the store's keyring under `new` (the library makes the change atomic).
pub fn rotate_key(db: &Db, new: EncryptionKey) -> sessiondb::Result<()> {
    db.rotate_key(new)
}
