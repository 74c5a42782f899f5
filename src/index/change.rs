//! What a log record does to the index, and the one place that builds a value's location in a
//! record: the commit path (for records it just wrote) and recovery (for records it replays)
//! both apply records through [`Index::apply_record`].

use crate::format::{Op, RECORD_HEADER_SIZE};

use super::{entry_seq, Entry, Index, Key, Loc, Slot};

/// One operation of a record, as the index applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put {
        key: Key,
        /// Offset of the value within the record's payload.
        value_at: u32,
        value_len: u32,
        expires_at_ms: u64,
    },
    Delete {
        key: Key,
    },
    Touch {
        key: Key,
        version: u64,
        expires_at_ms: u64,
    },
}

impl Change {
    /// The change `op` makes; `value_at` is where a put's value lies in the record's payload
    /// (`format::encode_ops` / `format::value_offsets` say where), `None` for other ops.
    pub(crate) fn of(op: &Op<'_>, value_at: Option<usize>) -> Change {
        match *op {
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => {
                let value_at = value_at.unwrap_or_default();
                debug_assert!(value_at > 0, "a put's value lies after its key in the payload");
                Change::Put {
                    key: key.into(),
                    // NOTE: cannot truncate: payloads are at most RECORD_PAYLOAD_MAX < 1 GiB.
                    value_at: value_at as u32,
                    value_len: value.len() as u32,
                    expires_at_ms,
                }
            }
            Op::Delete { key } => Change::Delete { key: key.into() },
            Op::Touch {
                key,
                version,
                expires_at_ms,
            } => Change::Touch {
                key: key.into(),
                version,
                expires_at_ms,
            },
        }
    }

    pub(crate) fn key(&self) -> &Key {
        match self {
            Change::Put { key, .. } | Change::Delete { key } | Change::Touch { key, .. } => key,
        }
    }
}

/// Where a record lies in the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordAt {
    /// The segment's slot in the index's file table.
    pub slot: Slot,
    /// File offset of the record's header.
    pub offset: u64,
    /// Bytes of the record: header and payload.
    pub len: u32,
    pub seq: u64,
}

impl RecordAt {
    /// The location of a value `value_len` bytes long at `value_at` in this record's payload.
    fn value_loc(&self, value_at: u32, value_len: u32) -> Loc {
        let record_back = RECORD_HEADER_SIZE as u32 + value_at;
        debug_assert!(record_back + value_len <= self.len, "the value lies inside its record");
        Loc {
            offset: self.offset + u64::from(record_back),
            slot: self.slot,
            len: value_len,
            record_back,
            record_len: self.len,
        }
    }
}

impl Index {
    /// Applies the record at `record`, whose operations make `changes`: in sequence order for
    /// every key (a lazy write beside a syncing group, to other keys, may be applied before
    /// that group: `Engine::beside`). `applied_seq` is the highest applied.
    pub(crate) fn apply_record(&mut self, record: &RecordAt, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::Put {
                    key,
                    value_at,
                    value_len,
                    expires_at_ms,
                } => {
                    let entry = Entry {
                        seq: entry_seq(record.seq),
                        expires_at_ms,
                        loc: record.value_loc(value_at, value_len),
                    };
                    self.put(key, entry);
                }
                Change::Delete { key } => self.delete(&key),
                Change::Touch {
                    key,
                    version,
                    expires_at_ms,
                } => self.touch(&key, version, expires_at_ms),
            }
        }
        self.applied_seq = self.applied_seq.max(record.seq);
    }
}
