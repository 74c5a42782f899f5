//! The options of the tests' stores: one builder, [`small_options`], and [`OptionsExt`] for
//! what the tests add to it again and again. A test states on top of them only what its
//! scenario is about (a sync mode, a checkpoint threshold, a recovery mode, a hook).

use std::path::Path;
use std::sync::Arc;

use sessiondb::internals::sim::SimStorage;
use sessiondb::session::SessionStore;
use sessiondb::{Db, ManualClock, Options, SyncMode};

/// The tests' segment size: a few hundred writes roll segments.
pub const SEGMENT_SIZE_SMALL: u64 = 64 * 1024;

/// The options of a test store: 64 KiB segments ([`SEGMENT_SIZE_SMALL`]), 4 KiB values and
/// 16 KiB batches, so a few hundred writes roll segments; everything else as the defaults
/// (`SyncMode::Always`, automatic checkpoints, a segment preallocated ahead, the expiry
/// sweeper, the real file system and the system clock).
pub fn small_options() -> Options {
    Options::new()
        .segment_size(SEGMENT_SIZE_SMALL)
        .value_size_max(4 * 1024)
        .batch_size_max(16 * 1024)
}

/// What tests add to [`small_options`].
pub trait OptionsExt {
    /// Nothing in the background: no automatic checkpoint (on a threshold or on close), no
    /// segment preallocated ahead, no expiry sweeper. What the store does, the test made it do,
    /// and on the simulated storage every run makes the same storage operations.
    fn quiet(self) -> Options;
    /// 1 MiB segments and 64 KiB batches: a test's few writes all stay in one segment.
    fn one_segment(self) -> Options;
    /// Every file on the simulated storage `sim` (a handle to the same files).
    fn sim(self, sim: &SimStorage) -> Options;
    /// Time from `clock` (a handle to the same time).
    fn manual_clock(self, clock: &ManualClock) -> Options;
}

impl OptionsExt for Options {
    fn quiet(self) -> Options {
        self.auto_checkpoint(false)
            .preallocate_ahead(false)
            .sweep_interval(None)
    }

    fn one_segment(self) -> Options {
        self.segment_size(1024 * 1024).batch_size_max(64 * 1024)
    }

    fn sim(self, sim: &SimStorage) -> Options {
        self.storage(Arc::new(sim.clone()))
    }

    fn manual_clock(self, clock: &ManualClock) -> Options {
        self.clock(Arc::new(clock.clone()))
    }
}

/// Sessions over a store in `dir` whose time is `clock`: quiet, no fsyncs, so the tests decide
/// when anything happens.
pub fn manual_session_store(dir: &Path, clock: &ManualClock) -> SessionStore {
    let opts = small_options().quiet().sync_mode(SyncMode::Never).manual_clock(clock);
    SessionStore::new(Db::open_with(dir, opts).expect("open"))
}
