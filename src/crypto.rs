//! Encryption at rest (docs/design.md, "Encryption at rest"; docs/format.md, "Encrypted stores").
//!
//! An encrypted store has a master key, [`EncryptionKey`], given by the application, and one
//! random data key per file (log segment or snapshot). The data keys live in the keyring file,
//! `DIR/KEYRING`, sealed as a whole under the master key and replaced atomically whenever a
//! file is created or deleted, or the master key changes ([`Keyring`]). Every operation of a
//! log record and every snapshot entry is sealed on its own with AES-256-GCM under its file's
//! data key ([`FileCipher`]), with its placement (file, offset, sequence number) as associated
//! data, so a get decrypts and authenticates only the bytes it reads.
//!
//! Nonces: a data key is created for one file by one process and used only by it; a log
//! segment's nonces come from a counter in that key's [`FileCipher`] (never rewound, stored with
//! each operation), a snapshot's from each entry's offset in a file written once, front to back.
//! Neither can repeat under one key (docs/design.md argues it; tests count them).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use zeroize::{Zeroize, Zeroizing};

use crate::sync::Mutex;

use crate::error::{Error, Result};
use crate::format::{self, KeyringEntry};
use crate::index::FileId;
use crate::storage::layout::Layout;
use crate::storage::{read_exact_at, write_all_at, OpenMode, ReadError, Storage};

/// Bytes of a key: the master key and every data key (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of an authentication tag (GCM).
pub(crate) const TAG_BYTES: usize = 16;
/// Bytes of a nonce (GCM).
pub(crate) const NONCE_BYTES: usize = 12;

/// The master key of an encrypted store: 32 bytes, wiped from memory when dropped.
///
/// Give it with [`crate::Options::encryption_key`]. Keep it outside the store (an environment
/// variable, a secrets manager, a file readable only by the service): whoever has it and the
/// store's files can read every value.
#[derive(Clone)]
pub struct EncryptionKey(Zeroizing<[u8; KEY_BYTES]>);

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> EncryptionKey {
        let mut bytes = bytes;
        let key = EncryptionKey(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// A key from 64 hexadecimal characters (either case; surrounding white space ignored).
    pub fn from_hex(hex: &str) -> Result<EncryptionKey> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 2 * KEY_BYTES {
            return Err(bad_key(format!(
                "an encryption key in hex has 64 characters, not {}",
                hex.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                // NOTE: cannot truncate: two hex digits make at most 255.
                (Some(hi), Some(lo)) => bytes[i] = (hi * 16 + lo) as u8,
                _ => {
                    return Err(bad_key(
                        "an encryption key in hex has only the characters 0-9, a-f".into(),
                    ))
                }
            }
        }
        Ok(EncryptionKey(bytes))
    }

    /// A key from the contents of a key file: exactly 32 raw bytes, or 64 hexadecimal characters
    /// (a trailing newline allowed).
    pub fn from_key_file_contents(contents: &[u8]) -> Result<EncryptionKey> {
        if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(contents) {
            return Ok(EncryptionKey::from_bytes(raw));
        }
        match std::str::from_utf8(contents) {
            Ok(text) => EncryptionKey::from_hex(text),
            Err(_) => Err(bad_key(format!(
                "a key file holds 32 raw bytes or 64 hex characters, not {} bytes",
                contents.len()
            ))),
        }
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<EncryptionKey> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        random(&mut bytes[..])?;
        Ok(EncryptionKey(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// The key as 64 lowercase hexadecimal characters (to write a key file).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(2 * KEY_BYTES));
        for b in self.0.iter() {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s
    }

    fn cipher(&self) -> LessSafeKey {
        aes_key(&self.0)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

fn bad_key(reason: String) -> Error {
    Error::InvalidKey(reason)
}

/// Fills `buf` from the operating system's random generator.
pub(crate) fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Io {
        path: "getrandom".into(),
        op: "read random bytes",
        offset: None,
        source: std::io::Error::other(e.to_string()),
    })
}

/// The nonce of a sealed piece: a counter or an offset, and the kind of file it is in.
pub(crate) fn nonce(n: u64, domain: u32) -> [u8; NONCE_BYTES] {
    let mut b = [0u8; NONCE_BYTES];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8..].copy_from_slice(&domain.to_le_bytes());
    b
}

/// Nonce domain of a log operation.
pub(crate) const DOMAIN_LOG: u32 = 1;
/// Nonce domain of a snapshot entry.
pub(crate) const DOMAIN_SNAPSHOT: u32 = 2;

/// An AES-256-GCM key ready to use.
fn aes_key(key: &[u8; KEY_BYTES]) -> LessSafeKey {
    match UnboundKey::new(&AES_256_GCM, key) {
        Ok(k) => LessSafeKey::new(k),
        // NOTE: ring refuses only a key of the wrong length; this one is 32 bytes.
        Err(_) => unreachable!("ring refused a 32-byte AES-256 key"),
    }
}

/// Seals `buf` in place under `key`; returns the tag.
fn seal_with(key: &LessSafeKey, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_BYTES] {
    match key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf) {
        Ok(tag) => {
            let mut t = [0u8; TAG_BYTES];
            t.copy_from_slice(tag.as_ref());
            t
        }
        // NOTE: GCM refuses only messages over 64 GiB; pieces are at most a value and a key.
        Err(_) => unreachable!("AES-GCM refused a piece of {} bytes", buf.len()),
    }
}

/// Opens `buf` in place under `key` if `tag` authenticates it with `aad`.
fn open_with(key: &LessSafeKey, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
    let Ok(tag) = <[u8; TAG_BYTES]>::try_from(tag) else {
        return false;
    };
    key.open_in_place_separate_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        Tag::from(tag),
        buf,
        0..,
    )
    .is_ok()
}

/// One file's data key, ready to seal and open its pieces.
pub struct FileCipher {
    aead: LessSafeKey,
    /// The key itself, for the nonce audit (test builds only).
    #[cfg(feature = "sim")]
    key: [u8; KEY_BYTES],
    /// The next log nonce counter value (log segments only).
    next_nonce: AtomicU64,
}

impl fmt::Debug for FileCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCipher")
            .field("next_nonce", &self.next_nonce)
            .finish_non_exhaustive()
    }
}

impl FileCipher {
    /// A file's cipher from its data key.
    pub fn new(key: &[u8; KEY_BYTES]) -> FileCipher {
        FileCipher {
            aead: aes_key(key),
            #[cfg(feature = "sim")]
            key: *key,
            next_nonce: AtomicU64::new(0),
        }
    }

    /// Takes `n` fresh log nonce counter values; returns the first. Never hands one out twice.
    pub(crate) fn take_nonces(&self, n: u64) -> u64 {
        let first = self.next_nonce.fetch_add(n, Ordering::Relaxed);
        assert!(first.checked_add(n).is_some(), "a data key's nonce counter ran out");
        first
    }

    /// Encrypts `buf` in place; returns the tag.
    pub(crate) fn seal(&self, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_BYTES] {
        #[cfg(feature = "sim")]
        audit::sealed(&self.key, nonce);
        seal_with(&self.aead, nonce, aad, buf)
    }

    /// Decrypts `buf` in place if `tag` authenticates it with `aad`; `false` (and `buf`
    /// unchanged in meaning) if not.
    #[must_use]
    pub(crate) fn open(&self, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        open_with(&self.aead, nonce, aad, buf, tag)
    }
}

/// The keyring: every live file's data key, sealed under the master key in `DIR/KEYRING`.
pub(crate) struct Keyring {
    storage: Arc<dyn Storage>,
    layout: Layout,
    state: Mutex<KeyringState>,
}

struct KeyringState {
    master: EncryptionKey,
    generation: u64,
    keys: BTreeMap<FileId, (Zeroizing<[u8; KEY_BYTES]>, Arc<FileCipher>)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

/// How a keyring file failed to open.
fn keyring_damage(path: &Path, d: format::Damage) -> Error {
    Error::Corruption {
        path: path.to_path_buf(),
        offset: d.offset,
        reason: d.reason,
    }
}

impl Keyring {
    /// Whether the store in `layout`'s directory has a keyring (is encrypted).
    pub(crate) fn exists(storage: &dyn Storage, layout: &Layout) -> bool {
        storage.open(&layout.keyring(), OpenMode::Read).is_ok()
    }

    /// Creates an empty keyring for a new encrypted store (durably).
    pub(crate) fn create(storage: Arc<dyn Storage>, layout: Layout, master: EncryptionKey) -> Result<Keyring> {
        let ring = Keyring {
            storage,
            layout,
            state: Mutex::new(KeyringState {
                master,
                generation: 0,
                keys: BTreeMap::new(),
            }),
        };
        ring.persist(&mut ring.state.lock())?;
        Ok(ring)
    }

    /// Opens the keyring with `master`: [`Error::WrongKey`] if the key does not open it.
    pub(crate) fn load(storage: Arc<dyn Storage>, layout: Layout, master: EncryptionKey) -> Result<Keyring> {
        let path = layout.keyring();
        let file = storage
            .open(&path, OpenMode::Read)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        if len > format::KEYRING_BYTES_MAX as u64 {
            return Err(Error::Corruption {
                path,
                offset: 0,
                reason: format!(
                    "keyring of {len} bytes is larger than any keyring ({} bytes)",
                    format::KEYRING_BYTES_MAX
                ),
            });
        }
        // NOTE: cannot truncate: bounded by KEYRING_BYTES_MAX just above.
        let mut bytes = Zeroizing::new(vec![0u8; len as usize]);
        read_exact_at(file.as_ref(), &mut bytes, 0).map_err(|e: ReadError| Error::Io {
            path: path.clone(),
            op: "read",
            offset: Some(e.offset),
            source: e.source,
        })?;
        let sealed = format::decode_keyring(&bytes).map_err(|d| keyring_damage(&path, d))?;
        let mut body = Zeroizing::new(sealed.body.to_vec());
        if !open_with(&master.cipher(), &sealed.nonce, sealed.aad, &mut body, sealed.tag) {
            return Err(Error::WrongKey { path });
        }
        let entries = format::decode_keyring_body(&body).map_err(|d| keyring_damage(&path, d))?;
        let mut keys = BTreeMap::new();
        for e in entries {
            let id = match e.kind {
                format::KEYRING_KIND_SEGMENT => FileId::Segment(e.id),
                _ => FileId::Snapshot(e.id),
            };
            let cipher = Arc::new(FileCipher::new(&e.key));
            keys.insert(id, (Zeroizing::new(e.key), cipher));
        }
        Ok(Keyring {
            storage,
            layout,
            state: Mutex::new(KeyringState {
                master,
                generation: sealed.generation,
                keys,
            }),
        })
    }

    /// The data key of file `id`, if the keyring has one.
    pub(crate) fn cipher(&self, id: FileId) -> Option<Arc<FileCipher>> {
        self.state.lock().keys.get(&id).map(|(_, c)| c.clone())
    }

    /// A new random data key for file `id` (replacing any it had: a file only gets one before
    /// anything is sealed in it), durable in the keyring before it is returned.
    pub(crate) fn fresh(&self, id: FileId) -> Result<Arc<FileCipher>> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random(&mut key[..])?;
        let cipher = Arc::new(FileCipher::new(&key));
        let mut st = self.state.lock();
        let old = st.keys.insert(id, (key, cipher.clone()));
        if let Err(e) = self.persist(&mut st) {
            match old {
                Some(old) => st.keys.insert(id, old),
                None => st.keys.remove(&id),
            };
            return Err(e);
        }
        Ok(cipher)
    }

    /// Drops the data keys of files that are gone (durably). Their bytes, wherever the file
    /// system left them, can no longer be decrypted with this keyring.
    pub(crate) fn forget(&self, ids: &[FileId]) -> Result<()> {
        let mut st = self.state.lock();
        let before = st.keys.len();
        for id in ids {
            st.keys.remove(id);
        }
        if st.keys.len() == before {
            return Ok(());
        }
        self.persist(&mut st)
    }

    /// Keeps only the data keys of files `keep` says are live (at open: a crash may have left
    /// keys of files that are gone).
    pub(crate) fn retain(&self, keep: impl Fn(FileId) -> bool) -> Result<()> {
        let gone: Vec<FileId> = self.state.lock().keys.keys().copied().filter(|&id| !keep(id)).collect();
        self.forget(&gone)
    }

    /// Seals the keyring under `master` from now on (durably): the data keys stay, so no file
    /// is rewritten.
    pub(crate) fn rotate(&self, master: EncryptionKey) -> Result<()> {
        let mut st = self.state.lock();
        let old = std::mem::replace(&mut st.master, master);
        if let Err(e) = self.persist(&mut st) {
            st.master = old;
            return Err(e);
        }
        tracing::info!(target: "sessiondb", generation = st.generation, "master key rotated");
        Ok(())
    }

    /// The master key the keyring is sealed under now (after [`Keyring::rotate`], the new one).
    pub(crate) fn master(&self) -> EncryptionKey {
        self.state.lock().master.clone()
    }

    /// Writes the keyring: to `KEYRING.tmp`, fsync, rename over `KEYRING`, fsync the directory;
    /// then overwrites the replaced file's blocks with zeros through a handle kept open across
    /// the rename, and fsyncs it, so the old sealed keys do not linger in free blocks of a file
    /// system that overwrites in place (docs/design.md says where they still may).
    fn persist(&self, st: &mut KeyringState) -> Result<()> {
        let written = self.write_keyring(st);
        if let Err(e) = &written {
            tracing::error!(target: "sessiondb", error = %e, "keyring rewrite failed");
        }
        written
    }

    fn write_keyring(&self, st: &mut KeyringState) -> Result<()> {
        st.generation += 1;
        let entries: Vec<KeyringEntry> = st
            .keys
            .iter()
            .map(|(id, (key, _))| {
                let (kind, n) = match *id {
                    FileId::Segment(n) => (format::KEYRING_KIND_SEGMENT, n),
                    FileId::Snapshot(n) => (format::KEYRING_KIND_SNAPSHOT, n),
                };
                KeyringEntry {
                    kind,
                    id: n,
                    key: **key,
                }
            })
            .collect();
        let mut body = Zeroizing::new(format::encode_keyring_body(&entries));
        drop(entries);
        let mut nonce = [0u8; NONCE_BYTES];
        random(&mut nonce)?;
        let header = format::encode_keyring_header(st.generation, &nonce, body.len());
        let tag = seal_with(&st.master.cipher(), &nonce, &header, &mut body);
        let bytes = format::encode_keyring(&header, &body, &tag);
        let (path, tmp) = (self.layout.keyring(), self.layout.keyring_tmp());
        let s = self.storage.as_ref();
        let _ = s.remove(&tmp);
        let file = s
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", &tmp, e))?;
        write_all_at(file.as_ref(), &bytes, 0).map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(file);
        let old = s.open(&path, OpenMode::ReadWrite).ok();
        s.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
        let dir = self.layout.dir();
        s.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
        if let Some(old) = old {
            // Best effort: the new keyring is in place whatever happens here.
            if let Ok(len) = old.len() {
                // NOTE: cannot truncate: a keyring this build wrote is at most KEYRING_BYTES_MAX.
                let zeros = vec![0u8; len.min(format::KEYRING_BYTES_MAX as u64) as usize];
                if write_all_at(old.as_ref(), &zeros, 0).is_ok() {
                    let _ = old.sync_data();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_from_raw_bytes_or_hex() {
        let raw = [7u8; 32];
        assert_eq!(EncryptionKey::from_key_file_contents(&raw).unwrap().as_bytes(), &raw);
        let hex = "07".repeat(32) + "\n";
        assert_eq!(
            EncryptionKey::from_key_file_contents(hex.as_bytes())
                .unwrap()
                .as_bytes(),
            &raw
        );
        assert_eq!(
            EncryptionKey::from_hex(&"07".repeat(32)).unwrap().to_hex().as_str(),
            "07".repeat(32)
        );
        assert!(EncryptionKey::from_key_file_contents(b"short").is_err());
        assert!(EncryptionKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{:?}", EncryptionKey::from_bytes(raw)), "EncryptionKey(..)");
    }

    #[test]
    fn a_sealed_piece_opens_only_with_its_nonce_and_data() {
        let c = FileCipher::new(&[1u8; 32]);
        let mut buf = b"secret".to_vec();
        let tag = c.seal(&nonce(5, DOMAIN_LOG), b"where", &mut buf);
        assert_ne!(&buf[..], b"secret");
        let mut wrong = buf.clone();
        assert!(!c.open(&nonce(6, DOMAIN_LOG), b"where", &mut wrong, &tag));
        let mut wrong = buf.clone();
        assert!(!c.open(&nonce(5, DOMAIN_LOG), b"elsewhere", &mut wrong, &tag));
        assert!(c.open(&nonce(5, DOMAIN_LOG), b"where", &mut buf, &tag));
        assert_eq!(&buf[..], b"secret");
        assert_eq!(c.take_nonces(3), 0);
        assert_eq!(c.take_nonces(1), 3);
    }
}

/// The nonce audit of test builds: while on, every piece sealed under a data key is recorded
/// with its nonce, and a nonce used twice under one key (which would break GCM) panics.
#[cfg(feature = "sim")]
pub mod audit {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use parking_lot::Mutex;

    use super::{KEY_BYTES, NONCE_BYTES};

    static ON: AtomicBool = AtomicBool::new(false);
    static SEALED: AtomicU64 = AtomicU64::new(0);
    static SEEN: Mutex<Option<HashSet<[u8; KEY_BYTES + NONCE_BYTES]>>> = Mutex::new(None);

    /// Starts recording (clearing what was recorded).
    pub fn start() {
        *SEEN.lock() = Some(HashSet::new());
        SEALED.store(0, Ordering::SeqCst);
        ON.store(true, Ordering::SeqCst);
    }

    /// Stops recording; returns how many pieces were sealed while it was on, and under how
    /// many distinct data keys.
    pub fn stop() -> (u64, usize) {
        ON.store(false, Ordering::SeqCst);
        let seen = SEEN.lock().take().unwrap_or_default();
        let keys: HashSet<&[u8]> = seen.iter().map(|k| &k[..KEY_BYTES]).collect();
        (SEALED.load(Ordering::SeqCst), keys.len())
    }

    pub(super) fn sealed(key: &[u8; KEY_BYTES], nonce: &[u8; NONCE_BYTES]) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        let mut id = [0u8; KEY_BYTES + NONCE_BYTES];
        id[..KEY_BYTES].copy_from_slice(key);
        id[KEY_BYTES..].copy_from_slice(nonce);
        let mut seen = SEEN.lock();
        if let Some(seen) = seen.as_mut() {
            assert!(seen.insert(id), "a nonce was used twice under one data key: {nonce:?}");
            SEALED.fetch_add(1, Ordering::SeqCst);
        }
    }
}
