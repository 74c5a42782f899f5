//! A batch of writes applied atomically, with optional preconditions on versions.

use std::time::Duration;

use crate::options::Durability;

/// When a put expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Never,
    /// This long after the batch is written.
    Ttl(Duration),
    /// At this deadline (ms since the Unix epoch, never 0).
    At(u64),
}

/// One write in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expiry: Expiry,
    },
    Delete {
        key: Vec<u8>,
    },
    Touch {
        key: Vec<u8>,
        ttl: Duration,
    },
}

impl BatchOp {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } | BatchOp::Touch { key, .. } => key,
        }
    }
}

/// Puts, deletes and touches that [`crate::Db::write`] applies atomically: after any crash, all
/// of them or none. Later operations on the same key win.
///
/// A batch may carry preconditions ([`Batch::expect_version`]): then it is written only if every
/// one holds at the moment it is ordered among other writes, and [`crate::Db::write_if`] reports
/// the first that does not as a [`Conflict`](crate::Conflict).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) ops: Vec<BatchOp>,
    pub(crate) expect: Vec<(Vec<u8>, Option<u64>)>,
    pub(crate) durability: Durability,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Batch {
        self.ops.push(BatchOp::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            expiry: Expiry::Never,
        });
        self
    }

    /// Sets `key` to `value`, to expire `ttl` from when the batch is written.
    pub fn put_with_ttl(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, ttl: Duration) -> &mut Batch {
        self.ops.push(BatchOp::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            expiry: Expiry::Ttl(ttl),
        });
        self
    }

    /// Sets `key` to `value`, expiring at `deadline_ms` (ms since the Unix epoch on the store's
    /// clock; 0: never). For a deadline chosen elsewhere, the same on every machine that applies
    /// it (the replicated store, `cluster/`).
    pub fn put_expiring_at(&mut self, key: &[u8], value: Vec<u8>, deadline_ms: u64) -> &mut Batch {
        self.ops.push(BatchOp::Put {
            key: key.to_vec(),
            value,
            expiry: if deadline_ms == 0 {
                Expiry::Never
            } else {
                Expiry::At(deadline_ms)
            },
        });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Batch {
        self.ops.push(BatchOp::Delete {
            key: key.as_ref().to_vec(),
        });
        self
    }

    /// Makes `key` expire `ttl` from when the batch is written, without rewriting its value or
    /// changing its version. Does nothing if `key` is absent or expired at that moment.
    pub fn touch(&mut self, key: impl AsRef<[u8]>, ttl: Duration) -> &mut Batch {
        self.ops.push(BatchOp::Touch {
            key: key.as_ref().to_vec(),
            ttl,
        });
        self
    }

    /// A precondition: `key`'s version (the sequence number of the write that set its value) is
    /// `expected`, or with `None`, `key` is absent or expired. Checked against every write
    /// ordered before this batch, including ones not yet durable.
    pub fn expect_version(&mut self, key: impl AsRef<[u8]>, expected: Option<u64>) -> &mut Batch {
        self.expect.push((key.as_ref().to_vec(), expected));
        self
    }

    /// How durable the batch must be before [`crate::Db::write`] returns. Default: as the
    /// store's [`crate::SyncMode`] says.
    pub fn durability(&mut self, durability: Durability) -> &mut Batch {
        self.durability = durability;
        self
    }

    /// Number of operations (preconditions not counted).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
