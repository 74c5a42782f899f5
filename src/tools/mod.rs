//! Operator tools on top of the engine: read-only inspection and verification, backups and
//! restores of closed stores, and repair. Each works through the public `Db` API or the crate's
//! own recovery on the storage seam, never the reverse: the engine does not depend on them.

pub(crate) mod backup;
pub mod inspect;
pub(crate) mod repair;

use std::sync::Arc;

use crate::crypto::EncryptionKey;
use crate::limits;
use crate::options::{Options, SyncMode};
use crate::storage::Storage;

/// Options for a store a tool opens for a moment on `storage` (a read-only view, a copy being
/// checkpointed): no background threads, no automatic checkpoint, and small segments, so the
/// segment an open may create costs 64 KiB, not 64 MiB. (Replay bounds lengths by the format,
/// not by these options: `recovery/`.) With `key`, an encrypted store is opened with it (a
/// store that is encrypted needs it: [`crate::Error::KeyRequired`] otherwise).
fn tool_options(storage: Arc<dyn Storage>, key: Option<EncryptionKey>) -> Options {
    let opts = Options::new();
    let opts = match key {
        Some(key) => opts.encryption_key(key),
        None => opts,
    };
    opts.storage(storage)
        .auto_checkpoint(false)
        .preallocate_ahead(false)
        .sync_mode(SyncMode::Never)
        .segment_size(limits::SEGMENT_SIZE_MIN)
        .value_size_max(4096)
        .batch_size_max(16 * 1024)
}
