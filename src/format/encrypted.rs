//! Format version 3: the bytes of an encrypted store (docs/format.md, "Encrypted stores").
//!
//! The files and frames are those of version 2 (segment and snapshot headers with version 3,
//! records, blocks, footers); what differs is each operation of a record payload and each
//! snapshot entry: its lengths, deadline and version stay in clear text, its key and value are
//! sealed with AES-256-GCM under the file's data key, and the 16-byte tag takes the place of
//! version 2's value checksum. The associated data of every sealed piece is its placement: the
//! file (segment id or snapshot base sequence number), the piece's offset in the file, the
//! sequence number of the write, and the piece's clear-text fields.

use super::{damage, u32_at, u64_at, Damage, Op, PAYLOAD_COUNT_SIZE};
use crate::crypto::{nonce, FileCipher, DOMAIN_LOG, DOMAIN_SNAPSHOT, KEY_BYTES, NONCE_BYTES, TAG_BYTES};
use crate::limits;

/// The format version of an encrypted store's files.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 3;

const TAG_PUT: u32 = 0;
const TAG_DELETE: u32 = 1;
const TAG_TOUCH: u32 = 2;

/// Bytes before a version 3 put's sealed key: tag, key length, value length, deadline, nonce.
const PUT_CLEAR: usize = 4 + 8 + 8 + 8 + 8;
/// Bytes before a version 3 delete's sealed key: tag, key length, nonce.
const DELETE_CLEAR: usize = 4 + 8 + 8;
/// Bytes before a version 3 touch's sealed key: tag, key length, version, deadline, nonce.
const TOUCH_CLEAR: usize = 4 + 8 + 8 + 8 + 8;
/// Smallest version 3 op: a delete of the empty key.
pub(crate) const OP_ENCRYPTED_SIZE_MIN: usize = DELETE_CLEAR + TAG_BYTES;

/// Bytes a put adds to a version 3 payload.
pub fn put_encoded_size_encrypted(key_len: usize, value_len: usize) -> usize {
    PUT_CLEAR + key_len + value_len + TAG_BYTES
}

/// Bytes a delete adds to a version 3 payload.
pub fn delete_encoded_size_encrypted(key_len: usize) -> usize {
    DELETE_CLEAR + key_len + TAG_BYTES
}

/// Bytes a touch adds to a version 3 payload.
pub fn touch_encoded_size_encrypted(key_len: usize) -> usize {
    TOUCH_CLEAR + key_len + TAG_BYTES
}

/// Bytes `op` adds to a version 3 payload.
pub fn op_encoded_size_encrypted(op: &Op<'_>) -> usize {
    match op {
        Op::Put { key, value, .. } => put_encoded_size_encrypted(key.len(), value.len()),
        Op::Delete { key } => delete_encoded_size_encrypted(key.len()),
        Op::Touch { key, .. } => touch_encoded_size_encrypted(key.len()),
    }
}

/// Bytes from the start of a version 3 put to its value.
pub fn log_value_back_encrypted(key_len: usize) -> usize {
    PUT_CLEAR + key_len
}

/// Encodes a version 3 payload in clear (keys and values in place, nonces and tags zero) into
/// `out` (cleared first); returns each op's value offset (`None` for deletes and touches).
/// [`seal_ops`] encrypts it once its placement is known.
pub fn encode_ops_encrypted(out: &mut Vec<u8>, ops: &[Op<'_>]) -> Vec<Option<usize>> {
    out.clear();
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    let mut offsets = Vec::with_capacity(ops.len());
    let len = |b: &[u8]| (b.len() as u64).to_le_bytes();
    for op in ops {
        match *op {
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => {
                out.extend_from_slice(&TAG_PUT.to_le_bytes());
                out.extend_from_slice(&len(key));
                out.extend_from_slice(&len(value));
                out.extend_from_slice(&expires_at_ms.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes());
                out.extend_from_slice(key);
                offsets.push(Some(out.len()));
                out.extend_from_slice(value);
            }
            Op::Delete { key } => {
                out.extend_from_slice(&TAG_DELETE.to_le_bytes());
                out.extend_from_slice(&len(key));
                out.extend_from_slice(&0u64.to_le_bytes());
                out.extend_from_slice(key);
                offsets.push(None);
            }
            Op::Touch {
                key,
                version,
                expires_at_ms,
            } => {
                out.extend_from_slice(&TAG_TOUCH.to_le_bytes());
                out.extend_from_slice(&len(key));
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&expires_at_ms.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes());
                out.extend_from_slice(key);
                offsets.push(None);
            }
        }
        out.extend_from_slice(&[0u8; TAG_BYTES]);
    }
    offsets
}

/// Where one version 3 op lies in a payload, read from its clear-text fields.
#[derive(Debug, Clone, Copy)]
struct OpFrame {
    tag: u32,
    /// Start of the op in the payload.
    at: usize,
    /// Start of the sealed bytes (the key, then a put's value).
    sealed_at: usize,
    key_len: usize,
    /// Bytes sealed: the key and a put's value.
    sealed_len: usize,
    /// Offset of the nonce field.
    nonce_at: usize,
}

impl OpFrame {
    fn end(&self) -> usize {
        self.sealed_at + self.sealed_len + TAG_BYTES
    }
}

/// Reads the frame of the op at `at` in `payload`; checks every length before using it.
fn op_frame(payload: &[u8], at: usize) -> Result<OpFrame, Damage> {
    let left = payload.len() - at;
    if left < 4 + 8 {
        return Err(damage(at, "payload op runs past the payload"));
    }
    let tag = u32_at(payload, at);
    let key_len = u64_at(payload, at + 4);
    let (clear, value_len) = match tag {
        TAG_PUT if left >= PUT_CLEAR => (PUT_CLEAR, u64_at(payload, at + 12)),
        TAG_DELETE if left >= DELETE_CLEAR => (DELETE_CLEAR, 0),
        TAG_TOUCH if left >= TOUCH_CLEAR => (TOUCH_CLEAR, 0),
        TAG_PUT | TAG_DELETE | TAG_TOUCH => return Err(damage(at, "payload op runs past the payload")),
        _ => return Err(damage(at, format!("payload op has unknown tag {tag}"))),
    };
    if key_len > limits::KEY_SIZE_MAX as u64 || value_len > limits::VALUE_SIZE_MAX_LIMIT as u64 {
        return Err(damage(at + 4, "payload op length is impossible"));
    }
    // NOTE: cannot truncate: both bounded just above.
    let (key_len, value_len) = (key_len as usize, value_len as usize);
    let frame = OpFrame {
        tag,
        at,
        sealed_at: at + clear,
        key_len,
        sealed_len: key_len + value_len,
        nonce_at: at + clear - 8,
    };
    if frame.end() > payload.len() {
        return Err(damage(at, "payload op runs past the payload"));
    }
    Ok(frame)
}

/// Walks the ops of a version 3 payload: the op count checked against the payload's size
/// first, then each op's frame; the ops must fill the payload exactly.
fn op_frames(payload: &[u8]) -> Result<Vec<OpFrame>, Damage> {
    if payload.len() < PAYLOAD_COUNT_SIZE {
        return Err(damage(0, "payload is shorter than its op count"));
    }
    let count = u64_at(payload, 0);
    let room = (payload.len() - PAYLOAD_COUNT_SIZE) / OP_ENCRYPTED_SIZE_MIN;
    if count == 0 || count > limits::BATCH_OPS_MAX as u64 || count > room as u64 {
        return Err(damage(0, format!("payload op count {count} is impossible")));
    }
    // NOTE: cannot truncate: bounded by BATCH_OPS_MAX.
    let mut frames = Vec::with_capacity(count as usize);
    let mut at = PAYLOAD_COUNT_SIZE;
    for _ in 0..count {
        let f = op_frame(payload, at)?;
        at = f.end();
        frames.push(f);
    }
    if at != payload.len() {
        return Err(damage(at, "payload has trailing bytes"));
    }
    Ok(frames)
}

/// Associated data of a sealed piece: its file, its offset in the file, the write's sequence
/// number, and its clear-text fields.
fn piece_aad(file: u64, offset: u64, seq: u64, clear: &[u8]) -> ([u8; 64], usize) {
    let mut aad = [0u8; 64];
    aad[..8].copy_from_slice(&file.to_le_bytes());
    aad[8..16].copy_from_slice(&offset.to_le_bytes());
    aad[16..24].copy_from_slice(&seq.to_le_bytes());
    let n = 24 + clear.len();
    aad[24..n].copy_from_slice(clear);
    (aad, n)
}

/// Seals every op of a clear version 3 payload (from [`encode_ops_encrypted`]) in place, for
/// the record with sequence number `seq` whose payload starts at `payload_offset` in segment
/// `segment_id`: each op gets a fresh nonce from `cipher`'s counter.
pub fn seal_ops(payload: &mut [u8], cipher: &FileCipher, segment_id: u64, payload_offset: u64, seq: u64) {
    let frames = match op_frames(payload) {
        Ok(frames) => frames,
        // NOTE: the payload is this build's own encoding.
        Err(d) => unreachable!("a payload this build encoded does not frame: {d:?}"),
    };
    let first = cipher.take_nonces(frames.len() as u64);
    for (i, f) in frames.iter().enumerate() {
        let n = first + i as u64;
        payload[f.nonce_at..f.nonce_at + 8].copy_from_slice(&n.to_le_bytes());
        let (aad, aad_len) = piece_aad(
            segment_id,
            payload_offset + f.at as u64,
            seq,
            &payload[f.at..f.sealed_at],
        );
        let (sealed, tag) = payload[f.sealed_at..f.end()].split_at_mut(f.sealed_len);
        tag.copy_from_slice(&cipher.seal(&nonce(n, DOMAIN_LOG), &aad[..aad_len], sealed));
    }
}

/// Opens every op of a sealed version 3 payload in place (see [`seal_ops`] for the placement);
/// afterwards [`decode_ops_encrypted`] reads it. An op that does not authenticate is damage at
/// its offset: bytes changed, or moved from another place, file or store.
pub fn open_ops(
    payload: &mut [u8],
    cipher: &FileCipher,
    segment_id: u64,
    payload_offset: u64,
    seq: u64,
) -> Result<(), Damage> {
    for f in op_frames(payload)? {
        let n = u64_at(payload, f.nonce_at);
        let (aad, aad_len) = piece_aad(
            segment_id,
            payload_offset + f.at as u64,
            seq,
            &payload[f.at..f.sealed_at],
        );
        let (sealed, tag) = payload[f.sealed_at..f.end()].split_at_mut(f.sealed_len);
        if !cipher.open(&nonce(n, DOMAIN_LOG), &aad[..aad_len], sealed, tag) {
            return Err(damage(
                f.at,
                "payload op does not authenticate (damaged, moved, or another key's)",
            ));
        }
    }
    Ok(())
}

/// Decodes an opened (clear) version 3 payload.
pub fn decode_ops_encrypted(payload: &[u8]) -> Result<Vec<Op<'_>>, Damage> {
    let frames = op_frames(payload)?;
    let mut ops = Vec::with_capacity(frames.len());
    for f in frames {
        let key = &payload[f.sealed_at..f.sealed_at + f.key_len];
        ops.push(match f.tag {
            TAG_PUT => Op::Put {
                key,
                value: &payload[f.sealed_at + f.key_len..f.sealed_at + f.sealed_len],
                expires_at_ms: u64_at(payload, f.at + 20),
            },
            TAG_DELETE => Op::Delete { key },
            _ => Op::Touch {
                key,
                version: u64_at(payload, f.at + 12),
                expires_at_ms: u64_at(payload, f.at + 20),
            },
        });
    }
    Ok(ops)
}

/// Checks and opens the bytes of one sealed version 3 put, read from its start to the end of
/// its tag (`b`: [`log_value_back_encrypted`] + `value_len` + 16 bytes, found at `op_offset` in
/// segment `segment_id`), as the value of `key` written at `seq`. On success the value lies in
/// clear at [`log_value_back_encrypted`] in `b`. Never panics.
pub fn check_log_value_encrypted(
    b: &mut [u8],
    key: &[u8],
    value_len: usize,
    seq: u64,
    cipher: &FileCipher,
    segment_id: u64,
    op_offset: u64,
) -> Result<(), Damage> {
    let not_this = || damage(0, "the bytes here are not a put of this key");
    // A length no slice can hold is not this put's (and must not overflow the sum).
    let expected = (PUT_CLEAR + key.len() + TAG_BYTES).saturating_add(value_len);
    if b.len() != expected || b.len() < PUT_CLEAR {
        return Err(not_this());
    }
    if u32_at(b, 0) != TAG_PUT || u64_at(b, 4) != key.len() as u64 || u64_at(b, 12) != value_len as u64 {
        return Err(not_this());
    }
    let n = u64_at(b, PUT_CLEAR - 8);
    let (clear, rest) = b.split_at_mut(PUT_CLEAR);
    let (aad, aad_len) = piece_aad(segment_id, op_offset, seq, clear);
    let (sealed, tag) = rest.split_at_mut(key.len() + value_len);
    if !cipher.open(&nonce(n, DOMAIN_LOG), &aad[..aad_len], sealed, tag) {
        return Err(damage(
            0,
            "value does not authenticate (damaged, moved, or of another version)",
        ));
    }
    if &sealed[..key.len()] != key {
        return Err(not_this());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Snapshot blocks, version 3

/// Bytes of one entry's record in a version 3 block's directory before its key: key length,
/// value length, sequence number, deadline.
const DIR_ENTRY_CLEAR: usize = 4 + 4 + 8 + 8;
/// The least bytes an entry takes in a version 3 block: its directory record (empty key) and its
/// value's tag (empty value). Bounds a block's entry count before anything is read.
pub const ENTRY_HEADER_SIZE_ENCRYPTED: usize = DIR_ENTRY_CLEAR + TAG_BYTES;
/// Bytes before a version 3 block's sealed directory: its length.
const DIR_LEN_SIZE: usize = 4;

/// A version 3 block under construction: the directory (every entry's lengths, sequence number,
/// deadline and key, in clear until sealed) and the values (each followed by room for its tag).
#[derive(Debug, Default)]
pub(crate) struct SealedBlock {
    dir: Vec<u8>,
    vals: Vec<u8>,
    /// `(offset in vals, length, seq)` of each value.
    values: Vec<(usize, usize, u64)>,
}

impl SealedBlock {
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8], seq: u64, expires_at_ms: u64) {
        // NOTE: cannot truncate: key_len <= KEY_SIZE_MAX, value_len <= VALUE_SIZE_MAX_LIMIT.
        self.dir.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.dir.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.dir.extend_from_slice(&seq.to_le_bytes());
        self.dir.extend_from_slice(&expires_at_ms.to_le_bytes());
        self.dir.extend_from_slice(key);
        self.values.push((self.vals.len(), value.len(), seq));
        self.vals.extend_from_slice(value);
        self.vals.extend_from_slice(&[0u8; TAG_BYTES]);
    }

    /// Bytes of the body once framed: directory length, directory, its tag, the values.
    pub(crate) fn body_len(&self) -> usize {
        DIR_LEN_SIZE + self.dir.len() + TAG_BYTES + self.vals.len()
    }

    /// Seals the values and the directory for a block whose header will be at `block_offset`
    /// in the snapshot `base_seq`, and appends the body to `out` (after the block header the
    /// caller wrote). Empties the block.
    pub(crate) fn seal_into(&mut self, out: &mut Vec<u8>, cipher: &FileCipher, base_seq: u64, block_offset: u64) {
        let values_at = block_offset + (super::BLOCK_HEADER_SIZE + DIR_LEN_SIZE + self.dir.len() + TAG_BYTES) as u64;
        for &(at, len, seq) in &self.values {
            let offset = values_at + at as u64;
            let (aad, aad_len) = piece_aad(base_seq, offset, seq, &(len as u32).to_le_bytes());
            let (value, tag) = self.vals[at..at + len + TAG_BYTES].split_at_mut(len);
            tag.copy_from_slice(&cipher.seal(&nonce(offset, DOMAIN_SNAPSHOT), &aad[..aad_len], value));
        }
        let dir_len = self.dir.len() as u32;
        let (aad, aad_len) = piece_aad(base_seq, block_offset, 0, &dir_aad_clear(self.values.len(), dir_len));
        let tag = cipher.seal(
            &nonce(block_offset, DOMAIN_SNAPSHOT_DIRECTORY),
            &aad[..aad_len],
            &mut self.dir,
        );
        out.extend_from_slice(&dir_len.to_le_bytes());
        out.extend_from_slice(&self.dir);
        out.extend_from_slice(&tag);
        out.extend_from_slice(&self.vals);
        self.dir.clear();
        self.vals.clear();
        self.values.clear();
    }
}

/// The clear fields a directory's seal covers: the block's entry count and the directory's
/// length.
fn dir_aad_clear(count: usize, dir_len: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    // NOTE: cannot truncate: a block holds far fewer than 2^32 entries.
    b[..4].copy_from_slice(&(count as u32).to_le_bytes());
    b[4..].copy_from_slice(&dir_len.to_le_bytes());
    b
}

/// Nonce domain of a snapshot block's directory.
const DOMAIN_SNAPSHOT_DIRECTORY: u32 = 3;

/// One entry of an opened version 3 block: its key (in the opened directory) and where its
/// sealed value lies in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedEntry {
    /// The key's range in [`OpenedBlock::dir`].
    pub key: (usize, usize),
    /// Offset of the sealed value within the block (its tag follows it).
    pub value_at: usize,
    /// The value's length.
    pub value_len: usize,
    /// Sequence number of the write that set the value.
    pub seq: u64,
    /// Deadline, or 0.
    pub expires_at_ms: u64,
}

/// A version 3 block whose directory is opened: the keys and the values' places, authenticated;
/// the values are still sealed (each is opened when it is read).
#[derive(Debug, Default)]
pub struct OpenedBlock {
    /// The opened directory.
    pub dir: Vec<u8>,
    /// The entries, in order.
    pub entries: Vec<OpenedEntry>,
}

impl OpenedBlock {
    /// The key of `e`.
    pub fn key(&self, e: &OpenedEntry) -> &[u8] {
        &self.dir[e.key.0..e.key.1]
    }
}

/// Opens the directory of the framed version 3 block at the start of `b` (found at
/// `block_offset` in snapshot `base_seq`) into `out` (reused from block to block), and checks
/// that its entries and their values fill the block exactly. Every length is checked before it
/// is used; never panics. Offsets in errors are relative to `b`.
pub fn open_block(
    b: &[u8],
    frame: super::BlockFrame,
    cipher: &FileCipher,
    base_seq: u64,
    block_offset: u64,
    out: &mut OpenedBlock,
) -> Result<(), Damage> {
    out.dir.clear();
    out.entries.clear();
    let body_at = super::BLOCK_HEADER_SIZE;
    if frame.len - body_at < DIR_LEN_SIZE + TAG_BYTES {
        return Err(damage(body_at, "snapshot block directory is cut short"));
    }
    let dir_len = u32_at(b, body_at) as usize;
    let dir_at = body_at + DIR_LEN_SIZE;
    if dir_len > frame.len - dir_at - TAG_BYTES {
        return Err(damage(body_at, "snapshot block directory runs past its block"));
    }
    let tag_at = dir_at + dir_len;
    out.dir.extend_from_slice(&b[dir_at..tag_at]);
    let (aad, aad_len) = piece_aad(base_seq, block_offset, 0, &dir_aad_clear(frame.count, dir_len as u32));
    let tag = &b[tag_at..tag_at + TAG_BYTES];
    if !cipher.open(
        &nonce(block_offset, DOMAIN_SNAPSHOT_DIRECTORY),
        &aad[..aad_len],
        &mut out.dir,
        tag,
    ) {
        return Err(damage(
            body_at,
            "snapshot block directory does not authenticate (damaged, moved, or another key's)",
        ));
    }
    // The directory authenticated: its fields are the writer's. Still checked, so a bug never
    // reads out of bounds.
    let mut at = 0;
    let mut value_at = tag_at + TAG_BYTES;
    for _ in 0..frame.count {
        if out.dir.len() - at < DIR_ENTRY_CLEAR {
            return Err(damage(
                dir_at + at,
                "snapshot block directory holds fewer entries than the block says",
            ));
        }
        let key_len = u32_at(&out.dir, at) as usize;
        let value_len = u32_at(&out.dir, at + 4) as usize;
        let key_at = at + DIR_ENTRY_CLEAR;
        if key_len > limits::KEY_SIZE_MAX
            || value_len > limits::VALUE_SIZE_MAX_LIMIT
            || out.dir.len() - key_at < key_len
            || frame.len - value_at < value_len + TAG_BYTES
        {
            return Err(damage(dir_at + at, "snapshot entry runs past its block"));
        }
        out.entries.push(OpenedEntry {
            key: (key_at, key_at + key_len),
            value_at,
            value_len,
            seq: u64_at(&out.dir, at + 8),
            expires_at_ms: u64_at(&out.dir, at + 16),
        });
        at = key_at + key_len;
        value_at += value_len + TAG_BYTES;
    }
    if at != out.dir.len() || value_at != frame.len {
        return Err(damage(
            value_at.min(frame.len),
            "snapshot block has bytes after its last entry",
        ));
    }
    Ok(())
}

/// Checks and opens one sealed snapshot value read with its tag (`b`: `value_len` + 16 bytes,
/// found at `offset` in snapshot `base_seq`) as the value written at `seq`. Its place came from
/// a directory that authenticated; the value's seal binds it to that place, version and length.
/// On success the value lies in clear at the start of `b`. Never panics.
pub fn check_snapshot_value_encrypted(
    b: &mut [u8],
    value_len: usize,
    seq: u64,
    cipher: &FileCipher,
    base_seq: u64,
    offset: u64,
) -> Result<(), Damage> {
    if b.len() != value_len.saturating_add(TAG_BYTES) {
        return Err(damage(0, "the bytes here are not a snapshot value of this length"));
    }
    let len = u32::try_from(value_len).map_err(|_| damage(0, "snapshot value length is impossible"))?;
    let (aad, aad_len) = piece_aad(base_seq, offset, seq, &len.to_le_bytes());
    let (value, tag) = b.split_at_mut(value_len);
    if !cipher.open(&nonce(offset, DOMAIN_SNAPSHOT), &aad[..aad_len], value, tag) {
        return Err(damage(
            0,
            "snapshot value does not authenticate (damaged, moved, or of another version)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The keyring file (docs/format.md, "The keyring")

/// First 8 bytes of the keyring.
pub const KEYRING_MAGIC: [u8; 8] = *b"SDB-KEY\0";
/// Bytes of the keyring's header (the associated data of its sealed body).
pub const KEYRING_HEADER_SIZE: usize = 48;
/// Most data keys a keyring holds.
pub const KEYRING_ENTRIES_MAX: usize = 1 << 20;
/// Bytes of one keyring entry: kind, file number, data key.
const KEYRING_ENTRY_SIZE: usize = 1 + 8 + KEY_BYTES;
/// Largest keyring file.
pub const KEYRING_BYTES_MAX: usize = KEYRING_HEADER_SIZE + 4 + KEYRING_ENTRY_SIZE * KEYRING_ENTRIES_MAX + TAG_BYTES + 4;
/// Keyring entry kind: a log segment's data key (the number is the segment id).
pub const KEYRING_KIND_SEGMENT: u8 = 1;
/// Keyring entry kind: a snapshot's data key (the number is its base sequence number).
pub const KEYRING_KIND_SNAPSHOT: u8 = 2;

/// One data key in the keyring.
#[derive(Clone)]
pub struct KeyringEntry {
    /// [`KEYRING_KIND_SEGMENT`] or [`KEYRING_KIND_SNAPSHOT`].
    pub kind: u8,
    /// The segment id or snapshot base sequence number.
    pub id: u64,
    /// The data key.
    pub key: [u8; KEY_BYTES],
}

impl Drop for KeyringEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// The keyring's body in clear: the entry count, then the entries.
pub fn encode_keyring_body(entries: &[KeyringEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + KEYRING_ENTRY_SIZE * entries.len());
    // NOTE: cannot truncate: a keyring holds at most KEYRING_ENTRIES_MAX keys.
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        b.push(e.kind);
        b.extend_from_slice(&e.id.to_le_bytes());
        b.extend_from_slice(&e.key);
    }
    b
}

/// Decodes an opened keyring body.
pub fn decode_keyring_body(b: &[u8]) -> Result<Vec<KeyringEntry>, Damage> {
    if b.len() < 4 {
        return Err(damage(KEYRING_HEADER_SIZE, "keyring body is cut short"));
    }
    let count = u32_at(b, 0) as usize;
    if count > KEYRING_ENTRIES_MAX || b.len() != 4 + count * KEYRING_ENTRY_SIZE {
        return Err(damage(
            KEYRING_HEADER_SIZE,
            format!("keyring entry count {count} is impossible"),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * KEYRING_ENTRY_SIZE;
        let kind = b[at];
        let id = u64_at(b, at + 1);
        if !matches!(kind, KEYRING_KIND_SEGMENT | KEYRING_KIND_SNAPSHOT) || id > limits::SEQ_MAX {
            return Err(damage(KEYRING_HEADER_SIZE + at, "keyring entry names no file"));
        }
        let mut key = [0u8; KEY_BYTES];
        key.copy_from_slice(&b[at + 9..at + 9 + KEY_BYTES]);
        entries.push(KeyringEntry { kind, id, key });
    }
    Ok(entries)
}

/// The keyring's header: magic, version, preamble checksum, generation, nonce, body length,
/// checksum, pad.
pub fn encode_keyring_header(generation: u64, nonce: &[u8; NONCE_BYTES], body_len: usize) -> [u8; KEYRING_HEADER_SIZE] {
    let mut b = [0u8; KEYRING_HEADER_SIZE];
    b[..8].copy_from_slice(&KEYRING_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION_ENCRYPTED.to_le_bytes());
    let pre = crc32fast::hash(&b[..12]);
    b[12..16].copy_from_slice(&pre.to_le_bytes());
    b[16..24].copy_from_slice(&generation.to_le_bytes());
    b[24..36].copy_from_slice(nonce);
    // NOTE: cannot truncate: a body is at most KEYRING_BYTES_MAX.
    b[36..40].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The whole keyring file: header, sealed body, tag, and a crc32 of everything before it (so
/// damage reads as damage, and only a key that does not open an intact file as a wrong key).
pub fn encode_keyring(header: &[u8; KEYRING_HEADER_SIZE], body: &[u8], tag: &[u8; TAG_BYTES]) -> Vec<u8> {
    let mut b = Vec::with_capacity(KEYRING_HEADER_SIZE + body.len() + TAG_BYTES + 4);
    b.extend_from_slice(header);
    b.extend_from_slice(body);
    b.extend_from_slice(tag);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A keyring file's parts, checked but still sealed.
#[derive(Debug)]
pub struct SealedKeyring<'a> {
    /// Counts the keyring's rewrites.
    pub generation: u64,
    /// The nonce its body was sealed with.
    pub nonce: [u8; NONCE_BYTES],
    /// The header: the associated data.
    pub aad: &'a [u8],
    /// The sealed body.
    pub body: &'a [u8],
    /// The tag.
    pub tag: &'a [u8],
}

/// Checks a keyring file's framing and checksums (not its seal: that needs the master key).
pub fn decode_keyring(b: &[u8]) -> Result<SealedKeyring<'_>, Damage> {
    if b.len() < KEYRING_HEADER_SIZE + TAG_BYTES + 4 {
        return Err(damage(0, "keyring is cut short"));
    }
    if b[..8] != KEYRING_MAGIC {
        return Err(damage(0, "bad keyring magic"));
    }
    if crc32fast::hash(&b[..12]) != u32_at(b, 12) {
        return Err(damage(12, "keyring preamble checksum mismatch"));
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION_ENCRYPTED {
        return Err(damage(
            8,
            format!("keyring of format version {version}, not {FORMAT_VERSION_ENCRYPTED}"),
        ));
    }
    if crc32fast::hash(&b[..40]) != u32_at(b, 40) {
        return Err(damage(40, "keyring header checksum mismatch"));
    }
    let body_len = u32_at(b, 36) as usize;
    if b.len() != KEYRING_HEADER_SIZE + body_len + TAG_BYTES + 4 {
        return Err(damage(36, "keyring length disagrees with its header"));
    }
    let crc_at = b.len() - 4;
    if crc32fast::hash(&b[..crc_at]) != u32_at(b, crc_at) {
        return Err(damage(crc_at, "keyring checksum mismatch"));
    }
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&b[24..36]);
    let body_end = KEYRING_HEADER_SIZE + body_len;
    Ok(SealedKeyring {
        generation: u64_at(b, 16),
        nonce,
        aad: &b[..KEYRING_HEADER_SIZE],
        body: &b[KEYRING_HEADER_SIZE..body_end],
        tag: &b[body_end..crc_at],
    })
}

/// Seals and frames a version 3 block for tests and golden files (feature `sim`).
#[cfg(any(test, feature = "sim"))]
pub fn seal_block_for_tests(
    b: &mut super::BlockBuilder,
    cipher: &FileCipher,
    base_seq: u64,
    block_offset: u64,
) -> Vec<u8> {
    b.finish_sealed(cipher, base_seq, block_offset)
}
