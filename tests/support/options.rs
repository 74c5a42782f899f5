//! The options of the tests' stores.

use std::path::Path;

use sessiondb::session::SessionStore;
use sessiondb::{Db, ManualClock, Options, SyncMode};

/// Small segments and limits so a few hundred writes roll segments.
pub const SEGMENT_SIZE_SMALL: u64 = 64 * 1024;

/// Options that make tests roll segments quickly: 64 KiB segments, 4 KiB values, 16 KiB batches.
pub fn small_opts() -> Options {
    Options::new()
        .segment_size(SEGMENT_SIZE_SMALL)
        .value_size_max(4096)
        .batch_size_max(16 * 1024)
}

/// Sessions over a store in `dir` whose time is `clock`: no fsyncs, no background checkpoints
/// or sweeps, so the tests decide when anything happens.
pub fn manual_session_store(dir: &Path, clock: &ManualClock) -> SessionStore {
    let opts = Options::new()
        .sync_mode(SyncMode::Never)
        .auto_checkpoint(false)
        .sweep_interval(None)
        .clock(std::sync::Arc::new(clock.clone()));
    SessionStore::new(Db::open_with(dir, opts).expect("open"))
}
