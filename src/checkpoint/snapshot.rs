//! Snapshot files (docs/format.md, "Snapshots"): [`SnapshotWriter`] writes one (a checkpoint, and
//! repair and `backup_dir` through `tools/backup.rs`); [`load_snapshot`] and [`decode_snapshot`]
//! read and verify one whole (recovery, and a checkpoint's read-back).

use std::mem::MaybeUninit;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::FileCipher;
use crate::error::{Error, Result};
use crate::format::{self, BlockBuilder, BlockFrame, HeaderState, SnapshotEntry, SnapshotFooter, SNAPSHOT_HEADER_SIZE};
use crate::index::{BaseEntries, BaseEntry, Key, Slot, Source};
use crate::limits;
use crate::storage::{write_all_at, FileBytes, OpenMode, Storage, StorageFile};

/// Bytes buffered before a write to the snapshot file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes a snapshot file: the header, the entries in key order in checksummed blocks of about
/// `SNAPSHOT_BLOCK_BYTES_TARGET`, the footer; buffered, fsynced by [`SnapshotWriter::finish`].
/// On an error the file is left as it is: whoever named it removes it (or recovery does: it
/// is a temp file).
pub(crate) struct SnapshotWriter {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    base_seq: u64,
    /// Bytes not written yet; they go at `written`.
    out: Vec<u8>,
    written: u64,
    block: BlockBuilder,
    count: u64,
    /// The snapshot's data key, in an encrypted store.
    cipher: Option<Arc<FileCipher>>,
}

impl SnapshotWriter {
    /// Creates `path` for the snapshot with base sequence number `base_seq`, sealed with
    /// `cipher` if given (format version 3, an encrypted store). A leftover of an interrupted
    /// run with the same base, which would make the create fail, is removed first.
    pub(crate) fn create(
        storage: &dyn Storage,
        path: &Path,
        base_seq: u64,
        cipher: Option<Arc<FileCipher>>,
    ) -> Result<SnapshotWriter> {
        let _ = storage.remove(path);
        let file = storage
            .open(path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", path, e))?;
        let mut out = Vec::with_capacity(WRITE_BUFFER_BYTES + limits::SNAPSHOT_BLOCK_BYTES_TARGET);
        let version = match cipher {
            Some(_) => format::FORMAT_VERSION_ENCRYPTED,
            None => format::FORMAT_VERSION,
        };
        out.extend_from_slice(&format::encode_snapshot_header_version(base_seq, version));
        Ok(SnapshotWriter {
            file,
            path: path.to_path_buf(),
            base_seq,
            out,
            written: 0,
            block: BlockBuilder::with_version(version),
            count: 0,
            cipher,
        })
    }

    /// Frames the block being built (sealing its entries first in an encrypted store) into the
    /// output.
    fn close_block(&mut self) {
        let block = match &self.cipher {
            Some(cipher) => {
                let at = self.written + self.out.len() as u64;
                self.block.finish_sealed(cipher, self.base_seq, at)
            }
            None => self.block.finish(),
        };
        self.out.extend_from_slice(&block);
    }

    /// Adds the next entry (keys ascend).
    pub(crate) fn push(&mut self, entry: SnapshotEntry<'_>) -> Result<()> {
        self.block.push(entry);
        self.count += 1;
        if self.block.len() >= limits::SNAPSHOT_BLOCK_BYTES_TARGET {
            self.close_block();
        }
        if self.out.len() >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        write_all_at(self.file.as_ref(), &self.out, self.written).map_err(|e| Error::io("write", &self.path, e))?;
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes the last block and the footer (`end_seq`: the highest sequence number whose write
    /// the entries may reflect) and fsyncs the file. Returns its size.
    pub(crate) fn finish(mut self, end_seq: u64) -> Result<u64> {
        if !self.block.is_empty() {
            self.close_block();
        }
        let footer = format::encode_snapshot_footer(SnapshotFooter {
            entry_count: self.count,
            base_seq: self.base_seq,
            end_seq,
            footer_offset: self.written + self.out.len() as u64,
        });
        self.out.extend_from_slice(&footer);
        self.write_out()?;
        self.file.sync_all().map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(self.written)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// A snapshot loaded by recovery.
pub(crate) struct LoadedSnapshot {
    pub base_seq: u64,
    /// The format version of its entries.
    pub version: u32,
    pub end_seq: u64,
    pub entries: u64,
    pub bytes: Arc<FileBytes>,
    /// Where each block starts.
    pub blocks: Arc<[u64]>,
    /// Its data key, in an encrypted store.
    pub cipher: Option<Arc<FileCipher>>,
}

impl LoadedSnapshot {
    /// How the index reads values from it.
    pub(crate) fn source(&self) -> Source {
        Source::snapshot(self.base_seq, self.version, self.bytes.clone(), self.blocks.clone())
            .with_cipher(self.cipher.clone())
    }
}

/// Reads and verifies the whole snapshot `base_seq`, returning its entries in key order.
/// Expired entries are kept: a touch later in the log may extend them (recovery drops what is
/// still expired after the replay).
pub(crate) fn load_snapshot(
    storage: &dyn Storage,
    path: &Path,
    base_seq: u64,
    slot: Slot,
    cipher: Option<Arc<FileCipher>>,
) -> Result<(LoadedSnapshot, BaseEntries)> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open", path, e))?;
    let bytes = Arc::new(FileBytes::load(file.as_ref()).map_err(|e| Error::read(path, e))?);
    decode_snapshot(bytes, path, base_seq, slot, cipher)
}

/// Verifies and decodes the whole snapshot in `bytes`, its entries pointing at `slot`: the
/// header, the footer, the blocks' framing, then every block (in two halves, in parallel).
pub(crate) fn decode_snapshot(
    bytes: Arc<FileBytes>,
    path: &Path,
    base_seq: u64,
    slot: Slot,
    cipher: Option<Arc<FileCipher>>,
) -> Result<(LoadedSnapshot, BaseEntries)> {
    let b = bytes.bytes();
    let version = check_header(b, path, base_seq)?;
    if version == format::FORMAT_VERSION_ENCRYPTED && cipher.is_none() {
        return Err(Error::corruption(
            path,
            0,
            "the snapshot has no data key in the keyring",
        ));
    }
    let footer = check_footer(b, path, base_seq)?;
    let end = footer.footer_offset as usize;
    let frames = block_frames(b, end, path, version)?;
    let how = Decoding {
        path,
        slot,
        version,
        base_seq,
        cipher: cipher.as_deref(),
    };
    let (count, entries) = decode_in_halves(b, end, &frames, &how, slot)?;
    if count != footer.entry_count {
        return Err(Error::corruption(
            path,
            footer.footer_offset,
            format!("snapshot holds {count} entries, its footer says {}", footer.entry_count),
        ));
    }
    let loaded = LoadedSnapshot {
        base_seq,
        version,
        end_seq: footer.end_seq,
        entries: count,
        blocks: frames.iter().map(|f| f.0 as u64).collect(),
        bytes,
        cipher,
    };
    Ok((loaded, entries))
}

/// The header must verify, be of a format version this build reads and name `base_seq`.
/// Returns the version.
fn check_header(b: &[u8], path: &Path, base_seq: u64) -> Result<u32> {
    match format::decode_snapshot_header(b) {
        HeaderState::Valid(h) if h.base_seq == base_seq => Ok(h.version),
        HeaderState::Valid(h) => Err(Error::corruption(
            path,
            0,
            format!("snapshot header says base sequence {}", h.base_seq),
        )),
        HeaderState::UnsupportedVersion(found) => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found,
            supported: format::FORMAT_VERSION_NEWEST,
        }),
        HeaderState::Zero => Err(Error::corruption(path, 0, "snapshot header is zero")),
        HeaderState::Damaged(d) => Err(Error::corruption(path, d.offset, d.reason)),
    }
}

/// The footer must verify and agree with the header.
fn check_footer(b: &[u8], path: &Path, base_seq: u64) -> Result<SnapshotFooter> {
    let footer = format::decode_snapshot_footer(b).map_err(|d| Error::corruption(path, d.offset, d.reason))?;
    if footer.base_seq != base_seq {
        return Err(Error::corruption(
            path,
            footer.footer_offset,
            "snapshot footer disagrees with its header",
        ));
    }
    Ok(footer)
}

/// Where each block between the header and the footer (at `end`) starts, and its framing (not
/// yet verified).
fn block_frames(b: &[u8], end: usize, path: &Path, version: u32) -> Result<Vec<(usize, BlockFrame)>> {
    let mut frames = Vec::new();
    let mut at = SNAPSHOT_HEADER_SIZE;
    while at < end {
        let frame = format::block_frame(&b[at..end], version)
            .map_err(|d| Error::corruption(path, at as u64 + d.offset, d.reason))?;
        frames.push((at, frame));
        at += frame.len;
    }
    Ok(frames)
}

/// Checks and decodes the blocks in two halves of about equal bytes, each on its own thread (a
/// block is checksummed just before it is decoded, while it is in cache). Both halves decode
/// straight into their parts of one vector: no second copy of a million entries, and each
/// thread takes the page faults of its own part. Returns the entries and how many there are.
fn decode_in_halves(
    b: &[u8],
    end: usize,
    frames: &[(usize, BlockFrame)],
    how: &Decoding<'_>,
    slot: Slot,
) -> Result<(u64, BaseEntries)> {
    let _ = slot;
    let path = how.path;
    let total: usize = frames.iter().map(|f| f.1.len).sum();
    let mut half = 0;
    let split = frames
        .iter()
        .position(|f| {
            half += f.1.len;
            half > total / 2
        })
        .map_or(frames.len(), |i| i + 1);
    let (first, second) = frames.split_at(split);
    let count_of = |fs: &[(usize, BlockFrame)]| fs.iter().map(|f| f.1.count).sum::<usize>();
    let (n1, n2) = (count_of(first), count_of(second));
    let mut out: BaseEntries = Vec::with_capacity(n1 + n2);
    let (slots1, slots2) = out.spare_capacity_mut()[..n1 + n2].split_at_mut(n1);
    let (a, b2) = std::thread::scope(|scope| {
        let other = scope.spawn(|| decode_entries(b, end, second, how, slots2));
        let mine = decode_entries(b, end, first, how, slots1);
        let other = other
            .join()
            .unwrap_or_else(|_| Err(Error::corruption(path, 0, "snapshot decoder thread panicked")));
        (mine, other)
    });
    // An error in one half drops the other half's entries with its `Filling`.
    let (a, b2) = (a?, b2?);
    let (a, b2) = (a.hand_over(), b2.hand_over());
    // SAFETY: decode_entries returns Ok only with every slot of its slice written, and the two
    // slices are slots 0..n1 + n2 of `out`; `hand_over` leaves the entries to `out`.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(n1 + n2)
    };
    if let (Some(l), Some((f, at))) = (a.last, b2.first) {
        if l >= f {
            return Err(Error::corruption(path, at, "snapshot keys are not in ascending order"));
        }
    }
    Ok((a.count + b2.count, out))
}

/// How a snapshot's blocks are decoded.
struct Decoding<'p> {
    path: &'p Path,
    slot: Slot,
    version: u32,
    base_seq: u64,
    /// The data key of an encrypted store's snapshot.
    cipher: Option<&'p FileCipher>,
}

/// One half of a snapshot, decoded.
struct DecodedHalf<'s> {
    /// Its slots, every one written.
    filled: Filling<'s>,
    /// Its entries, expired ones included.
    count: u64,
    /// The last key.
    last: Option<Vec<u8>>,
    /// The first key and its offset.
    first: Option<(Vec<u8>, u64)>,
}

impl DecodedHalf<'_> {
    /// Leaves the entries to the vector; returns (count, first key and its offset, last key).
    fn hand_over(self) -> HalfEnds {
        self.filled.hand_over();
        HalfEnds {
            count: self.count,
            first: self.first,
            last: self.last,
        }
    }
}

/// What joins two decoded halves: their counts and the keys where they meet.
struct HalfEnds {
    count: u64,
    first: Option<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

/// Slots of a vector being filled; on an early return, the entries written so far are dropped
/// (a long key owns heap memory).
struct Filling<'s> {
    slots: &'s mut [MaybeUninit<(Key, BaseEntry)>],
    filled: usize,
}

impl Filling<'_> {
    fn push(&mut self, item: (Key, BaseEntry)) -> bool {
        let Some(slot) = self.slots.get_mut(self.filled) else {
            return false;
        };
        slot.write(item);
        self.filled += 1;
        true
    }

    fn is_full(&self) -> bool {
        self.filled == self.slots.len()
    }

    /// The vector owns the entries from now on. Its length is set to cover every slot next, so
    /// a slot left unwritten would be read as an entry: checked in every build.
    fn hand_over(self) {
        assert!(
            self.is_full(),
            "a snapshot half handed over before all its slots were written"
        );
        std::mem::forget(self);
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        for slot in &mut self.slots[..self.filled] {
            // SAFETY: slots before `filled` were written by `push`, and not handed to the
            // vector (`hand_over` forgets the `Filling` instead of dropping it).
            #[allow(unsafe_code)]
            unsafe {
                slot.assume_init_drop()
            };
        }
    }
}

/// Checks and decodes the framed blocks into `slots`, which must be exactly as many as their
/// entries; keys must ascend. Returns Ok only with every slot written.
fn decode_entries<'s>(
    b: &[u8],
    end: usize,
    frames: &[(usize, format::BlockFrame)],
    how: &Decoding<'_>,
    slots: &'s mut [MaybeUninit<(Key, BaseEntry)>],
) -> Result<DecodedHalf<'s>> {
    let Decoding {
        path, slot, version, ..
    } = *how;
    let mut out = Filling { slots, filled: 0 };
    let mut count = 0u64;
    let mut first: Option<(Vec<u8>, u64)> = None;
    // The previous key (copied: an encrypted block's keys are opened in a buffer reused by the
    // next block).
    let mut prev_key: Vec<u8> = Vec::new();
    let mut opened = format::OpenedBlock::default();
    // Each entry, in file order: its key, the offset of its value, seq, deadline, value length.
    let mut take = |key: &[u8], offset: u64, seq: u64, expires_at_ms: u64, len: usize| -> Result<()> {
        if count > 0 && prev_key.as_slice() >= key {
            return Err(Error::corruption(
                path,
                offset,
                "snapshot keys are not in ascending order",
            ));
        }
        prev_key.clear();
        prev_key.extend_from_slice(key);
        if first.is_none() {
            first = Some((key.to_vec(), offset));
        }
        count += 1;
        let Some(seq) = NonZeroU64::new(seq) else {
            return Err(Error::corruption(path, offset, "snapshot entry has sequence number 0"));
        };
        let entry = BaseEntry {
            seq,
            expires_at_ms,
            offset,
            slot,
            // NOTE: cannot truncate: the decoders bound value_len by VALUE_SIZE_MAX_LIMIT.
            len: len as u32,
        };
        if !out.push((key.into(), entry)) {
            return Err(Error::corruption(
                path,
                offset,
                "snapshot block holds more entries than it says",
            ));
        }
        Ok(())
    };
    for &(at, frame) in frames {
        let in_file = &b[at..end];
        let corrupt = |d: format::Damage| Error::corruption(path, at as u64 + d.offset, d.reason);
        format::verify_block(in_file, frame).map_err(corrupt)?;
        if version == format::FORMAT_VERSION_ENCRYPTED {
            // Only the block's directory is opened (the keys, for the index); each value is
            // opened when it is read.
            let Some(cipher) = how.cipher else {
                return Err(Error::corruption(
                    path,
                    at as u64,
                    "the snapshot has no data key in the keyring",
                ));
            };
            format::open_block(in_file, frame, cipher, how.base_seq, at as u64, &mut opened).map_err(corrupt)?;
            for e in &opened.entries {
                let offset = (at + e.value_at) as u64;
                take(opened.key(e), offset, e.seq, e.expires_at_ms, e.value_len)?;
            }
            continue;
        }
        for d in format::decode_block_entries(in_file, frame, version).map_err(corrupt)? {
            let e = d.entry;
            take(e.key, (at + d.value_at) as u64, e.seq, e.expires_at_ms, e.value.len())?;
        }
    }
    if !out.is_full() {
        let at = frames.last().map_or(0, |f| f.0 as u64);
        return Err(Error::corruption(
            path,
            at,
            "snapshot blocks hold fewer entries than they say",
        ));
    }
    Ok(DecodedHalf {
        filled: out,
        count,
        last: (count > 0).then_some(prev_key),
        first,
    })
}

#[cfg(test)]
mod tests {
    //! The snapshot decoder fills one vector from two threads; these check what it hands back,
    //! and that damage in either half is an error (the entries already decoded are dropped, not
    //! kept or freed twice: run under valgrind, this test reports no leak and no invalid free).

    use super::*;
    use crate::index::{FileId, Index};

    const BASE: u64 = 9;

    /// A snapshot of `n` entries with 40-byte keys (on the heap, not inline) in many blocks, and
    /// where each block starts.
    fn snapshot(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut out = format::encode_snapshot_header(BASE).to_vec();
        let mut starts = Vec::new();
        let mut block = BlockBuilder::new();
        for i in 0..n {
            let key = format!("session-key-that-is-long-enough-{i:08}");
            block.push(SnapshotEntry {
                key: key.as_bytes(),
                value: &[i as u8; 100],
                seq: i + 1,
                expires_at_ms: 0,
                value_crc: None,
            });
            if block.len() >= limits::SNAPSHOT_BLOCK_BYTES_TARGET || i + 1 == n {
                starts.push(out.len());
                out.extend_from_slice(&block.finish());
            }
        }
        let footer = format::encode_snapshot_footer(SnapshotFooter {
            entry_count: n,
            base_seq: BASE,
            end_seq: n,
            footer_offset: out.len() as u64,
        });
        out.extend_from_slice(&footer);
        (out, starts)
    }

    fn decode(bytes: Vec<u8>) -> Result<BaseEntries> {
        let slot = Index::default().slot(FileId::Snapshot(BASE));
        decode_snapshot(Arc::new(FileBytes::Owned(bytes)), Path::new("t.snap"), BASE, slot, None).map(|(_, e)| e)
    }

    #[test]
    fn both_halves_land_in_order() {
        let (bytes, starts) = snapshot(3_000);
        assert!(starts.len() >= 4, "several blocks per half: {}", starts.len());
        let entries = decode(bytes.clone()).expect("decodes");
        assert_eq!(entries.len(), 3_000);
        for (i, (k, e)) in entries.iter().enumerate() {
            assert_eq!(
                k.as_bytes(),
                format!("session-key-that-is-long-enough-{i:08}").as_bytes()
            );
            assert_eq!(e.seq.get(), i as u64 + 1);
            let value = &bytes[e.offset as usize..][..e.len as usize];
            assert_eq!(value, &[i as u8; 100][..], "entry {i}'s value");
        }
    }

    #[test]
    fn damage_in_either_half_or_both_is_an_error_at_its_block() {
        let (bytes, starts) = snapshot(3_000);
        let last = *starts.last().expect("blocks");
        for damaged in [vec![starts[0]], vec![last], vec![starts[0], last]] {
            let mut b = bytes.clone();
            for &at in &damaged {
                // A byte inside the block's first entry's value: only its checksum can tell.
                b[at + 100] ^= 0x40;
            }
            match decode(b) {
                Err(Error::Corruption { offset, reason, .. }) => {
                    assert!(
                        damaged.contains(&(offset as usize)),
                        "{reason} at {offset}, damaged {damaged:?}"
                    );
                    assert!(reason.contains("checksum"), "{reason}");
                }
                other => panic!("damage at {damaged:?}: {:?}", other.map(|e| e.len())),
            }
        }
    }
}
