//! What `Options::max_retention` needs to know: since when a dead value (overwritten, deleted,
//! expired) has been in the store's files (docs/design.md, "Retention"). The commit path notes
//! it as it applies groups, a checkpoint's roll takes it and its success clears it; the
//! retention thread (`db.rs`) starts a checkpoint half of `max_retention` after it.
//!
//! Every time is the store's (`Engine::now_ms`), in ms since the epoch; `NONE` means none.
//! The times err early, never late: a value that may have died is counted as dead.

use std::sync::atomic::{AtomicU64 as CounterU64, Ordering};

use crate::index::Change;
use crate::sync::AtomicU64;

/// No time: nothing dead is known.
const NONE: u64 = u64::MAX;

/// Since when the files hold a dead value, in three parts that a checkpoint clears differently.
pub(crate) struct Retention {
    /// The earliest overwrite or delete applied since the last checkpoint's roll: the dead value
    /// lies in a segment that checkpoint did not cover, or in the snapshot it wrote (copied
    /// before it died).
    died: AtomicU64,
    /// The earliest expiry deadline of a put or touch applied since the last roll.
    log_deadline: AtomicU64,
    /// The earliest expiry deadline of an entry in the snapshot(s) on disk.
    snapshot_deadline: AtomicU64,
    /// Checkpoints the retention thread started (stats).
    pub checkpoints: CounterU64,
    /// The store's time when the retention thread last looked (stats; tests wait on it).
    pub checked_ms: CounterU64,
}

/// What a checkpoint's roll took from [`Retention`]: the dead values in the files the
/// checkpoint deletes if it succeeds, and gives back if it does not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    died: u64,
    log_deadline: u64,
}

impl Taken {
    /// Nothing taken (a store without `max_retention`).
    pub(crate) const NOTHING: Taken = Taken {
        died: NONE,
        log_deadline: NONE,
    };
}

/// What one record's changes may kill, noted before the index applies them.
pub(crate) struct Watch {
    keys_before: usize,
    puts: usize,
    deletes: bool,
    deadline: u64,
}

impl Watch {
    /// Notes `changes` before they are applied to an index holding `keys_before` keys.
    pub(crate) fn of(changes: &[Change], keys_before: usize) -> Watch {
        let mut w = Watch {
            keys_before,
            puts: 0,
            deletes: false,
            deadline: NONE,
        };
        for c in changes {
            let deadline = match *c {
                Change::Put { expires_at_ms, .. } => {
                    w.puts += 1;
                    expires_at_ms
                }
                Change::Delete { .. } => {
                    w.deletes = true;
                    0
                }
                // A touch at version 0 (`Engine::write_nothing`) changes nothing.
                Change::Touch {
                    version, expires_at_ms, ..
                } if version != 0 => expires_at_ms,
                Change::Touch { .. } => 0,
            };
            if deadline != 0 {
                w.deadline = w.deadline.min(deadline);
            }
        }
        w
    }

    /// Whether the record, now applied and leaving `keys_after` keys, killed a value: a put
    /// that did not add a key replaced one; a delete is counted whether or not its key was
    /// there (its record names the key either way).
    pub(crate) fn killed(&self, keys_after: usize) -> bool {
        self.deletes || keys_after < self.keys_before + self.puts
    }

    /// The earliest expiry deadline the record wrote, if any.
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            died: AtomicU64::new(NONE),
            log_deadline: AtomicU64::new(NONE),
            snapshot_deadline: AtomicU64::new(NONE),
            checkpoints: CounterU64::new(0),
            checked_ms: CounterU64::new(0),
        }
    }
}

impl Retention {
    /// A commit group was applied: it killed a value (`killed`, reading the time only if
    /// nothing earlier is noted) and wrote `deadline`, the earliest expiry of its records.
    /// Runs while leading, so never during a roll.
    pub(crate) fn applied(&self, killed: bool, deadline: u64, now_ms: impl FnOnce() -> u64) {
        if killed && self.died.load(Ordering::Acquire) == NONE {
            self.died.fetch_min(now_ms(), Ordering::AcqRel);
        }
        if deadline < self.log_deadline.load(Ordering::Acquire) {
            self.log_deadline.fetch_min(deadline, Ordering::AcqRel);
        }
    }

    /// At open: `dead` if recovery found anything but a snapshot of live entries (a log to
    /// replay, which may overwrite or delete; a second snapshot; entries it dropped as expired):
    /// the dead values count from `now_ms`, the open.
    pub(crate) fn opened(&self, dead: bool, now_ms: u64) {
        if dead {
            self.died.fetch_min(now_ms, Ordering::AcqRel);
        }
    }

    /// The earliest expiry deadline of the entries found in the index at open (the retention
    /// thread reads them after the open; see `db.rs`).
    pub(crate) fn loaded_deadline(&self, deadline: u64) {
        self.snapshot_deadline.fetch_min(deadline, Ordering::AcqRel);
    }

    /// A checkpoint's roll, holding commit leadership: what is noted so far lies in the files
    /// this checkpoint deletes (or in its snapshot, as a deadline it will note again); what
    /// happens from here on is noted afresh.
    pub(crate) fn take(&self) -> Taken {
        Taken {
            died: self.died.swap(NONE, Ordering::AcqRel),
            log_deadline: self.log_deadline.swap(NONE, Ordering::AcqRel),
        }
    }

    /// The checkpoint that took `taken` deleted every file it covers: its snapshot, whose
    /// earliest deadline is `snapshot_deadline`, is the only one left.
    pub(crate) fn checkpointed(&self, snapshot_deadline: u64) {
        self.snapshot_deadline.store(snapshot_deadline, Ordering::Release);
    }

    /// The checkpoint that took `taken` failed, or left some of the files it covers: what it
    /// took is still in the files, and so is its snapshot's if it wrote one.
    pub(crate) fn give_back(&self, taken: Taken, snapshot_deadline: Option<u64>) {
        self.died.fetch_min(taken.died, Ordering::AcqRel);
        self.log_deadline.fetch_min(taken.log_deadline, Ordering::AcqRel);
        if let Some(d) = snapshot_deadline {
            self.snapshot_deadline.fetch_min(d, Ordering::AcqRel);
        }
    }

    /// The earliest time from which the files hold (or, for a deadline still ahead, will hold)
    /// a dead value; `None` if they hold none.
    pub(crate) fn dead_since(&self) -> Option<u64> {
        let at = self
            .died
            .load(Ordering::Acquire)
            .min(self.log_deadline.load(Ordering::Acquire))
            .min(self.snapshot_deadline.load(Ordering::Acquire));
        (at != NONE).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_clears_what_its_roll_took_and_a_failure_gives_it_back() {
        let r = Retention::default();
        assert_eq!(r.dead_since(), None);
        r.applied(true, NONE, || 100);
        r.applied(true, 500, || panic!("the clock is read only for the first death"));
        assert_eq!(r.dead_since(), Some(100));
        let taken = r.take();
        assert_eq!(r.dead_since(), None, "after the roll, only what follows it");
        r.applied(true, NONE, || 200);
        r.give_back(taken, Some(50));
        assert_eq!(r.dead_since(), Some(50));
        let _ = r.take();
        r.checkpointed(NONE);
        assert_eq!(r.dead_since(), None);
    }

    #[test]
    fn a_put_that_adds_a_key_kills_nothing() {
        let key = crate::index::Key::from(&b"k"[..]);
        let put = Change::Put {
            key: key.clone(),
            value_at: 1,
            value_len: 1,
            expires_at_ms: 0,
        };
        let w = Watch::of(std::slice::from_ref(&put), 3);
        assert!(!w.killed(4));
        assert!(w.killed(3), "replaced");
        assert_eq!(w.deadline(), NONE);
        let touch_nothing = Change::Touch {
            key: key.clone(),
            version: 0,
            expires_at_ms: 7,
        };
        assert_eq!(Watch::of(&[touch_nothing], 0).deadline(), NONE);
        let touch = Change::Touch {
            key,
            version: 3,
            expires_at_ms: 7,
        };
        assert_eq!(Watch::of(&[touch], 0).deadline(), 7);
    }
}
