//! Every size limit of sessiondb, in one place. Names end in `_max` / `_min`; each says why.
//!
//! The limits a call or an option can run into are public here. The defaults of options (each
//! also stated in words on its `Options` method) and the engine's tuning values are in `tuning`,
//! inside the crate.

/// Longest key. Session ids and user-scoped keys are far shorter; a bound keeps index memory and
/// every length check honest. Snapshot entries store key lengths as `u32` (log payloads as `u64`),
/// so this fits either way.
pub const KEY_SIZE_MAX: usize = 4 * 1024;

/// Hard upper bound for `Options::value_size_max`: snapshot entries store value lengths as
/// `u32`, and one record must fit in one segment.
pub const VALUE_SIZE_MAX_LIMIT: usize = 256 * 1024 * 1024;

/// Smallest segment: tests use small segments to roll often.
pub const SEGMENT_SIZE_MIN: u64 = 64 * 1024;

/// Largest segment. Nothing in the format needs the bound (offsets are `u64` on disk and in the
/// index); a segment is preallocated whole (zeros written and fsynced) and its unwritten tail is
/// read at open, so its size is disk an idle store holds and work an open does: 1 GiB is far
/// beyond any useful size (twice the largest batch). A segment file larger than this is damage,
/// never read (issue 15: a 4 GB sparse file in place of a segment).
pub const SEGMENT_SIZE_MAX: u64 = 1 << 30;

/// Largest number of operations in one batch. Bounds the decoder's allocation.
pub const BATCH_OPS_MAX: usize = 1 << 20;

/// Hard upper bound for `Options::batch_size_max`. Below bincode's 1 GiB decode limit
/// (src/format/), so every batch that can be written can be read back.
pub const BATCH_SIZE_MAX_LIMIT: usize = 512 * 1024 * 1024;

/// Defaults and tuning values: not part of the API (tests reach them through `internals`).
pub(crate) mod tuning {
    use super::*;

    /// Default longest value (`Options::value_size_max`). Sessions are small; 1 MiB leaves room.
    pub const VALUE_SIZE_MAX_DEFAULT: usize = 1024 * 1024;

    /// Default largest encoded batch payload (`Options::batch_size_max`).
    pub const BATCH_SIZE_MAX_DEFAULT: usize = 4 * 1024 * 1024;

    /// Default segment size: large enough that rolls are rare (one per 16 MiB of log, as with
    /// PostgreSQL's WAL segments), small enough that the two preallocated segments (the active one
    /// and the spare) cost 32 MiB of disk on an idle store and an open scans little zero tail.
    pub const SEGMENT_SIZE_DEFAULT: u64 = 16 * 1024 * 1024;

    /// Largest record payload any store can hold, whatever its options: the reader bounds length
    /// fields by this (and by the bytes left in the file), never by the options of the current open,
    /// so reopening with smaller limits cannot turn acknowledged records into "damage".
    pub const RECORD_PAYLOAD_MAX: usize = if KEY_SIZE_MAX + VALUE_SIZE_MAX_LIMIT + 64 > BATCH_SIZE_MAX_LIMIT {
        KEY_SIZE_MAX + VALUE_SIZE_MAX_LIMIT + 64
    } else {
        BATCH_SIZE_MAX_LIMIT
    };

    /// Largest sequence number, segment id and snapshot base sequence number: 2^63 − 1. Every
    /// `n + 1` the engine computes on one of them then fits a `u64`. A record or header claiming a
    /// larger one is damage, a file name holding one is not ours, and the writer never assigns one
    /// (a write past it fails with `Error::TooLarge`). At a million writes a second, 290,000 years.
    pub const SEQ_MAX: u64 = (1 << 63) - 1;

    /// Default log bytes written since the last checkpoint that trigger an automatic one.
    pub const CHECKPOINT_LOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

    /// On close (with automatic checkpoints on), a checkpoint is taken when at least this much log
    /// has been written since the last one, so the next open replays little.
    pub const CLOSE_CHECKPOINT_LOG_BYTES_MIN: u64 = 1024 * 1024;

    /// Snapshot entries are grouped into checksummed blocks of about this many bytes.
    pub const SNAPSHOT_BLOCK_BYTES_TARGET: usize = 64 * 1024;

    /// Largest snapshot block the reader accepts (an entry bigger than the target gets a block of
    /// its own, so this is the target plus the largest entry).
    pub const SNAPSHOT_BLOCK_BYTES_MAX: usize = SNAPSHOT_BLOCK_BYTES_TARGET + VALUE_SIZE_MAX_LIMIT + KEY_SIZE_MAX + 64;

    /// Default pause between the expiry sweeper's rounds (`Options::sweep_interval`).
    pub const SWEEP_INTERVAL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(1);

    /// Index entries the expiry sweeper examines per pass. It holds the commit lock while it does,
    /// so a pass is kept short (about 50 µs); writers queue behind it for no longer.
    pub const SWEEP_PASS_ENTRIES: usize = 256;

    /// Passes per sweeper round at most: a round goes on while a quarter or more of what a pass
    /// examined had expired (Redis's rule of thumb), up to this bound.
    pub const SWEEP_ROUND_PASSES_MAX: usize = 16;
}

pub(crate) use tuning::*;

const _: () = assert!(VALUE_SIZE_MAX_DEFAULT <= VALUE_SIZE_MAX_LIMIT);
const _: () = assert!(BATCH_SIZE_MAX_DEFAULT as u64 <= SEGMENT_SIZE_DEFAULT / 2);
const _: () = assert!(SEGMENT_SIZE_MIN < SEGMENT_SIZE_DEFAULT);
const _: () = assert!((VALUE_SIZE_MAX_LIMIT as u64) < SEGMENT_SIZE_MAX);
const _: () = assert!(KEY_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(RECORD_PAYLOAD_MAX < (1 << 30), "below the payload decoder's limit");
const _: () = assert!(BATCH_SIZE_MAX_DEFAULT <= BATCH_SIZE_MAX_LIMIT);

/// At most this many covered segments are kept to be recycled ([`crate::Options::recycle_segments`]).
pub const RECYCLE_POOL_MAX: u64 = 64;
