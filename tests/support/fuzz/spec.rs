//! Bounded, structured descriptions of segments and snapshots, built into bytes with the
//! engine's own encoders (`sessiondb::internals::format`), so checksums are right unless the description
//! says otherwise. Random bytes almost never carry a valid crc32; these inputs reach every row
//! of the recovery decision table instead of stopping at the first checksum.
//!
//! Each file is built in the format version its caller picks from the input (format version 1,
//! as stores written by older builds hold it: v1 headers, `encode_ops_v1` payloads, 24-byte
//! snapshot entries; or version 2, what this build writes), so the targets reach both versions'
//! decoders and, in `recovery_image`, stores that mix them. The version is an argument of
//! `build`, not a field of the specs: the specs' `Arbitrary` shapes, and so the saved inputs'
//! meaning, stay as they were.

use arbitrary::Arbitrary;
use sessiondb::internals::format::{self, BlockBuilder, Op, SegmentHeader, SnapshotEntry, SnapshotFooter, KIND_OPS};

/// Records per segment, operations per record, entries per block and the like: enough to
/// reach every case, small enough to run fast.
pub const ITEMS_MAX: usize = 12;
/// Longest key the specs produce.
pub const KEY_LEN_MAX: usize = 6;
/// Longest value the specs produce.
pub const VALUE_LEN_MAX: usize = 300;
/// Bytes of a preallocated segment (`limits::SEGMENT_SIZE_MIN`).
pub const SEGMENT_BYTES: usize = 64 * 1024;

fn short(mut v: Vec<u8>, max: usize) -> Vec<u8> {
    v.truncate(max);
    v
}

/// A small sequence-number offset (most inputs keep numbers close together).
fn small(n: u64) -> u64 {
    n % 4
}

/// One operation of a record's payload.
#[derive(Arbitrary, Debug, Clone)]
pub enum OpSpec {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    Delete {
        key: Vec<u8>,
    },
    Touch {
        key: Vec<u8>,
        version: u64,
        expires_at_ms: u64,
    },
}

/// A record's payload.
#[derive(Arbitrary, Debug, Clone)]
pub enum PayloadSpec {
    Ops(Vec<OpSpec>),
    Raw(Vec<u8>),
}

/// The sequence number a record claims, relative to the one expected there.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SeqSpec {
    Next,
    Same,
    Skip(u8),
    Back(u8),
    Any(u64),
}

/// The `durable_seq` a record claims.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DurableSpec {
    /// Everything before it was fsynced (`seq - 1`).
    AllBefore,
    /// The same as the record before it.
    Unchanged,
    Lag(u8),
    Any(u64),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct RecordSpec {
    pub seq: SeqSpec,
    pub durable: DurableSpec,
    /// 0 means another kind than OPS (`kind_other`).
    pub kind_ok: u8,
    pub kind_other: u8,
    pub payload: PayloadSpec,
    /// 0 means the checksum is wrong.
    pub crc_ok: u8,
    /// When set, the length field says this instead.
    pub len_override: Option<u32>,
}

/// A segment header.
#[derive(Arbitrary, Debug, Clone)]
pub enum HeaderSpec {
    /// Valid, first sequence number continuing the log (plus a small offset).
    Valid { first_seq_delta: u8 },
    /// Valid, any first sequence number.
    FirstSeq(u64),
    /// 40 zero bytes: never activated.
    Zero,
    /// Names another segment.
    OtherId(u64),
    /// Another format version with an intact preamble.
    Version(u32),
    /// Arbitrary bytes.
    Raw(Vec<u8>),
}

/// Damage applied after the file is built (bit flips, zeroed or garbage ranges, a cut, a
/// valid range copied elsewhere as a misdirected write would).
#[derive(Arbitrary, Debug, Clone)]
pub enum DamageSpec {
    FlipBit { at: u32, bit: u8 },
    Zero { at: u32, len: u16 },
    Garbage { at: u32, bytes: Vec<u8> },
    Cut { at: u32 },
    Copy { from: u32, to: u32, len: u16 },
}

impl DamageSpec {
    pub fn apply(&self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        let n = b.len();
        let at = |x: u32| x as usize % n;
        match self {
            DamageSpec::FlipBit { at: a, bit } => b[at(*a)] ^= 1 << (bit % 8),
            DamageSpec::Zero { at: a, len } => {
                let s = at(*a);
                let e = (s + *len as usize).min(n);
                b[s..e].fill(0);
            }
            DamageSpec::Garbage { at: a, bytes } => {
                let s = at(*a);
                for (i, x) in bytes.iter().take(64).enumerate() {
                    if let Some(y) = b.get_mut(s + i) {
                        *y = *x;
                    }
                }
            }
            DamageSpec::Cut { at: a } => b.truncate(at(*a)),
            DamageSpec::Copy { from, to, len } => {
                let (f, t) = (at(*from), at(*to));
                let l = (*len as usize).min(n - f).min(n - t).min(4096);
                b.copy_within(f..f + l, t);
            }
        }
    }
}

/// How the file ends after the last record.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TailSpec {
    /// Zeros up to the preallocated size (64 KiB), as the engine writes them.
    Preallocated,
    /// Exactly this many zero bytes.
    Zeros(u16),
}

/// A whole segment file.
#[derive(Arbitrary, Debug, Clone)]
pub struct SegmentSpec {
    pub header: HeaderSpec,
    pub records: Vec<RecordSpec>,
    pub tail: TailSpec,
    pub damage: Vec<DamageSpec>,
}

/// What building a segment produced.
#[derive(Debug, Clone, Default)]
pub struct BuiltSegment {
    pub bytes: Vec<u8>,
    /// The header's first sequence number, when the header is valid.
    pub first_seq: Option<u64>,
    /// One past the last sequence number written (the next segment continues from it).
    pub next_seq: u64,
    /// True when nothing was damaged and every record is valid and in sequence.
    pub pristine: bool,
    /// The records written (sequence number, payload) when pristine.
    pub records: usize,
}

/// The format version a caller picks from one input bit: version 1 when set, else this build's.
pub fn version_from(bit: bool) -> u32 {
    if bit {
        1
    } else {
        format::FORMAT_VERSION
    }
}

/// The payload of a record with sequence number `seq` in format `version` (version 2's value
/// checksums sealed with `seq`; version 1 has none).
fn encode_ops(ops: &[OpSpec], seq: u64, version: u32) -> Vec<u8> {
    let ops: Vec<OpSpec> = ops.iter().take(ITEMS_MAX).cloned().collect();
    let keys: Vec<(Vec<u8>, Vec<u8>)> = ops
        .iter()
        .map(|o| match o {
            OpSpec::Put { key, value, .. } => (short(key.clone(), KEY_LEN_MAX), short(value.clone(), VALUE_LEN_MAX)),
            OpSpec::Delete { key } | OpSpec::Touch { key, .. } => (short(key.clone(), KEY_LEN_MAX), Vec::new()),
        })
        .collect();
    let encoded: Vec<Op<'_>> = ops
        .iter()
        .zip(&keys)
        .map(|(o, (k, v))| match o {
            OpSpec::Put { expires_at_ms, .. } => Op::Put {
                key: k,
                value: v,
                expires_at_ms: *expires_at_ms,
            },
            OpSpec::Delete { .. } => Op::Delete { key: k },
            OpSpec::Touch {
                version, expires_at_ms, ..
            } => Op::Touch {
                key: k,
                version: *version,
                expires_at_ms: *expires_at_ms,
            },
        })
        .collect();
    let mut out = Vec::new();
    if version == 1 {
        format::encode_ops_v1(&mut out, &encoded);
    } else {
        format::encode_ops_sealed(&mut out, &encoded, seq);
    }
    out
}

impl SegmentSpec {
    /// Builds the file of segment `segment_id` whose log continues at `next_seq`, in format
    /// `version` (1 or 2).
    pub fn build(&self, segment_id: u64, next_seq: u64, version: u32) -> BuiltSegment {
        let header = |segment_id, first_seq| {
            format::encode_segment_header(SegmentHeader {
                segment_id,
                first_seq,
                version,
            })
        };
        let mut pristine = self.damage.is_empty();
        let (mut bytes, first_seq) = match &self.header {
            HeaderSpec::Valid { first_seq_delta } => {
                let first = next_seq.max(1).saturating_add(small(u64::from(*first_seq_delta)));
                pristine &= first == next_seq.max(1);
                let h = header(segment_id, first);
                (h.to_vec(), Some(first))
            }
            HeaderSpec::FirstSeq(f) => {
                pristine &= *f == next_seq.max(1);
                let h = header(segment_id, *f);
                (h.to_vec(), (*f != 0).then_some(*f))
            }
            HeaderSpec::Zero => {
                pristine &= self.records.is_empty();
                (vec![0u8; format::SEGMENT_HEADER_SIZE], None)
            }
            HeaderSpec::OtherId(id) => {
                pristine = false;
                let h = header(*id, next_seq.max(1));
                (h.to_vec(), None)
            }
            HeaderSpec::Version(v) => {
                pristine = false;
                let mut h = header(segment_id, next_seq.max(1));
                h[8..12].copy_from_slice(&v.to_le_bytes());
                let pre = crc32fast::hash(&h[..12]);
                h[12..16].copy_from_slice(&pre.to_le_bytes());
                (h.to_vec(), None)
            }
            HeaderSpec::Raw(r) => {
                pristine = false;
                (short(r.clone(), format::SEGMENT_HEADER_SIZE), None)
            }
        };
        let mut seq = first_seq.unwrap_or(next_seq.max(1));
        let mut durable = seq - 1;
        let mut written = 0;
        for r in self.records.iter().take(ITEMS_MAX) {
            let s = match r.seq {
                SeqSpec::Next => seq,
                SeqSpec::Same => seq.saturating_sub(1),
                SeqSpec::Skip(n) => seq.saturating_add(1 + u64::from(n)),
                SeqSpec::Back(n) => seq.saturating_sub(2 + u64::from(n)),
                SeqSpec::Any(x) => x,
            };
            let d = match r.durable {
                DurableSpec::AllBefore => s.saturating_sub(1),
                DurableSpec::Unchanged => durable,
                DurableSpec::Lag(n) => s.saturating_sub(2 + u64::from(n)),
                DurableSpec::Any(x) => x,
            };
            let payload = match &r.payload {
                PayloadSpec::Ops(ops) if !ops.is_empty() => encode_ops(ops, s, version),
                PayloadSpec::Ops(_) => {
                    pristine = false;
                    vec![0u8; 8]
                }
                PayloadSpec::Raw(raw) => {
                    pristine = false;
                    let mut p = short(raw.clone(), VALUE_LEN_MAX);
                    if p.is_empty() {
                        p.push(0);
                    }
                    p
                }
            };
            let kind = if r.kind_ok == 0 { r.kind_other } else { KIND_OPS };
            // The encoder asserts its own invariants (durable_seq < seq): a hostile record is
            // framed by hand from a valid one.
            let start = bytes.len();
            format::encode_record(&mut bytes, segment_id, 2, 1, kind, &payload);
            bytes[start + 8..start + 16].copy_from_slice(&s.to_le_bytes());
            bytes[start + 16..start + 24].copy_from_slice(&d.to_le_bytes());
            if let Some(len) = r.len_override {
                bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&segment_id.to_le_bytes());
            crc.update(&bytes[start..start + 4]);
            crc.update(&bytes[start + 8..]);
            let mut crc = crc.finalize();
            if r.crc_ok == 0 {
                crc ^= 1;
            }
            bytes[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            let ok = s == seq && d < s && kind == KIND_OPS && r.crc_ok != 0 && r.len_override.is_none();
            pristine &= ok;
            if ok {
                written += 1;
            }
            seq = s.saturating_add(1);
            durable = d;
        }
        match self.tail {
            TailSpec::Preallocated => {
                if bytes.len() < SEGMENT_BYTES {
                    bytes.resize(SEGMENT_BYTES, 0);
                }
            }
            TailSpec::Zeros(n) => bytes.resize(bytes.len() + n as usize, 0),
        }
        for d in self.damage.iter().take(4) {
            d.apply(&mut bytes);
        }
        BuiltSegment {
            bytes,
            first_seq,
            next_seq: seq,
            pristine,
            records: written,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots

#[derive(Arbitrary, Debug, Clone)]
pub struct EntrySpec {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// 0 is invalid in a snapshot (sequence numbers start at 1).
    pub seq: u64,
    pub expires_at_ms: u64,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct BlockSpec {
    pub entries: Vec<EntrySpec>,
    /// 0 means the checksum is wrong.
    pub crc_ok: u8,
    pub len_override: Option<u32>,
    pub count_override: Option<u32>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum SnapHeaderSpec {
    Valid,
    OtherBase(u64),
    Version(u32),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Default)]
pub struct FooterSpec {
    pub count_delta: Option<i8>,
    pub base_override: Option<u64>,
    /// `end_seq` = base + this (small), or `end_override`.
    pub end_delta: u8,
    pub end_override: Option<u64>,
    pub offset_override: Option<u64>,
    /// 0 means the marker is wrong.
    pub marker_ok: u8,
    /// 0 means the checksum is wrong.
    pub crc_ok: u8,
}

/// A whole snapshot file.
#[derive(Arbitrary, Debug, Clone)]
pub struct SnapshotSpec {
    pub header: SnapHeaderSpec,
    pub blocks: Vec<BlockSpec>,
    /// 0 leaves the keys in the order given; else they are sorted and made unique, as the
    /// engine writes them.
    pub sorted: u8,
    pub footer: FooterSpec,
    pub damage: Vec<DamageSpec>,
}

/// A snapshot entry as written: key, value, sequence number, expiry deadline.
pub type Item = (Vec<u8>, Vec<u8>, u64, u64);

/// What building a snapshot produced.
#[derive(Debug, Clone)]
pub struct BuiltSnapshot {
    pub bytes: Vec<u8>,
    pub end_seq: u64,
    /// Every entry, in file order.
    pub entries: Vec<Item>,
    /// True when the file is exactly what a checkpoint writes.
    pub pristine: bool,
}

impl SnapshotSpec {
    /// Builds the snapshot `<base_seq>.snap` in format `version` (1 or 2).
    pub fn build(&self, base_seq: u64, version: u32) -> BuiltSnapshot {
        let mut pristine = self.damage.is_empty();
        let mut bytes = match &self.header {
            SnapHeaderSpec::Valid => format::encode_snapshot_header_version(base_seq, version).to_vec(),
            SnapHeaderSpec::OtherBase(b) => {
                pristine &= *b == base_seq;
                format::encode_snapshot_header_version(*b, version).to_vec()
            }
            SnapHeaderSpec::Version(v) => {
                pristine = false;
                let mut h = format::encode_snapshot_header_version(base_seq, version);
                h[8..12].copy_from_slice(&v.to_le_bytes());
                let pre = crc32fast::hash(&h[..12]);
                h[12..16].copy_from_slice(&pre.to_le_bytes());
                h.to_vec()
            }
            SnapHeaderSpec::Raw(r) => {
                pristine = false;
                short(r.clone(), format::SNAPSHOT_HEADER_SIZE)
            }
        };
        let mut blocks: Vec<Vec<Item>> = self
            .blocks
            .iter()
            .take(ITEMS_MAX)
            .map(|b| {
                b.entries
                    .iter()
                    .take(ITEMS_MAX)
                    .map(|e| {
                        (
                            short(e.key.clone(), KEY_LEN_MAX),
                            short(e.value.clone(), VALUE_LEN_MAX),
                            e.seq,
                            e.expires_at_ms,
                        )
                    })
                    .collect()
            })
            .collect();
        if self.sorted != 0 {
            let mut all: Vec<_> = blocks.iter().flatten().cloned().collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.dedup_by(|a, b| a.0 == b.0);
            let mut it = all.into_iter();
            for b in &mut blocks {
                let n = b.len();
                *b = it.by_ref().take(n).collect();
            }
        } else {
            pristine = false;
        }
        let mut entries = Vec::new();
        for (spec, b) in self.blocks.iter().zip(&blocks) {
            if b.is_empty() {
                continue;
            }
            let mut builder = BlockBuilder::with_version(version);
            for (k, v, s, x) in b {
                pristine &= *s != 0;
                builder.push(SnapshotEntry {
                    key: k,
                    value: v,
                    seq: *s,
                    expires_at_ms: *x,
                    value_crc: None,
                });
                entries.push((k.clone(), v.clone(), *s, *x));
            }
            let mut block = builder.finish();
            if let Some(l) = spec.len_override {
                block[0..4].copy_from_slice(&l.to_le_bytes());
                pristine = false;
            }
            if let Some(c) = spec.count_override {
                block[4..8].copy_from_slice(&c.to_le_bytes());
                pristine = false;
            }
            let mut h = crc32fast::Hasher::new();
            h.update(&block[..8]);
            h.update(&block[format::BLOCK_HEADER_SIZE..]);
            let mut crc = h.finalize();
            if spec.crc_ok == 0 {
                crc ^= 1;
                pristine = false;
            }
            block[8..12].copy_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&block);
        }
        let f = &self.footer;
        let end_seq = f
            .end_override
            .unwrap_or(base_seq.saturating_add(u64::from(f.end_delta)));
        let count = match f.count_delta {
            Some(d) => (entries.len() as u64).wrapping_add_signed(i64::from(d)),
            None => entries.len() as u64,
        };
        let footer = SnapshotFooter {
            entry_count: count,
            base_seq: f.base_override.unwrap_or(base_seq),
            end_seq,
            footer_offset: f.offset_override.unwrap_or(bytes.len() as u64),
        };
        pristine &= footer.entry_count == entries.len() as u64
            && footer.base_seq == base_seq
            && end_seq >= base_seq
            && end_seq <= sessiondb::internals::limits::SEQ_MAX
            && footer.footer_offset == bytes.len() as u64
            && f.marker_ok != 0
            && f.crc_ok != 0;
        let mut foot = format::encode_snapshot_footer(footer);
        if f.marker_ok == 0 {
            foot[0] ^= 0x80;
        }
        if f.crc_ok == 0 {
            foot[40] ^= 1;
        }
        bytes.extend_from_slice(&foot);
        for d in self.damage.iter().take(4) {
            d.apply(&mut bytes);
        }
        BuiltSnapshot {
            bytes,
            end_seq,
            entries,
            pristine,
        }
    }
}
