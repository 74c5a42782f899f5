//! Target `recovery_image`: an arbitrary store directory in the simulated storage, opened.
//!
//! Input: a first byte that picks a serialized image of real files (even: the seed corpus
//! holds images the engine wrote, power-loss images around checkpoints among them, and the
//! format version 1 fixture stores with what this build makes of them, see [`encode_image`] and
//! `seeds.rs`) or a structured [`ImageSpec`] (odd): segments, snapshots, temp files and stray
//! files, each built from a spec as in the decode targets, in format version 1 or 2 (the older
//! segments and snapshots in version 1 when the spec says so: a store an older build wrote and
//! this one went on with), and the recovery mode.
//! Invariants: `Db::open` returns a store or an error naming corruption or an unsupported
//! format, never panics or allocates from a length field; every key and value it then holds was
//! in the image's records or snapshot entries, and none has expired; a second open gives the
//! same contents; where the chosen mode refuses the image, `Salvage` opens it (unless its
//! format is another version), with the same guarantees.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use sessiondb::internals::sim::SimStorage;
use sessiondb::storage::{OpenMode, Storage};
use sessiondb::{Db, Error, ManualClock, Options, RecoveryMode, SyncMode};

use super::super::{small_options, OptionsExt};
use super::snapshot_decode::contains;
use super::spec::{version_from, SegmentSpec, SnapshotSpec, SEGMENT_BYTES};

/// Where the image is installed in the simulated file system.
pub const DIR: &str = "/store";
/// The clock recovery sees (expiry deadlines in the specs are compared with it).
const NOW_MS: u64 = 1_700_000_000_000;
/// Files per image at most.
const FILES_MAX: usize = 8;
/// Zero padding a serialized file may ask for at most (a segment is 64 KiB).
const PAD_BYTES_MAX: usize = 256 * 1024;

/// A file name, as the store's own patterns make them or as they must be ignored.
#[derive(Arbitrary, Debug, Clone)]
pub enum NameSpec {
    Segment(u8),
    SegmentTmp(u8),
    Snapshot(u16),
    SnapshotTmp(u16),
    /// A `.wal` name in the store's directory, a `.snap` name in `wal/`, a name with 19 digits,
    /// a `*.broken` file, or any bytes (in `wal/` when `in_wal`).
    WalInRoot(u8),
    SnapInWal(u16),
    ShortDigits(u8),
    Broken(u8),
    Other {
        in_wal: bool,
        name: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ContentSpec {
    Segment(SegmentSpec),
    Snapshot(SnapshotSpec),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FileSpec {
    pub name: NameSpec,
    pub content: ContentSpec,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ImageSpec {
    pub files: Vec<FileSpec>,
    /// 0 strict, 1 tolerate a torn tail, 2 salvage.
    pub mode: u8,
    /// The log starts after the newest snapshot (else at sequence number 1).
    pub log_after_snapshot: bool,
    /// Milliseconds the clock is past `NOW_MS`.
    pub clock_ms: u16,
    /// Segments with an id below this are built in format version 1, the others in version 2
    /// (a store an older build wrote, continued by this one). Last, so older saved inputs keep
    /// their meaning (0 when the input has run out: all version 2).
    pub v1_segments_below: u8,
    /// Snapshots with a base below this are built in format version 1.
    pub v1_snapshots_below: u16,
}

fn id20(n: u64) -> String {
    format!("{n:020}")
}

fn path_of(name: &NameSpec) -> Option<PathBuf> {
    let dir = Path::new(DIR);
    let wal = dir.join("wal");
    Some(match name {
        NameSpec::Segment(id) => wal.join(format!("{}.wal", id20(u64::from(*id)))),
        NameSpec::SegmentTmp(id) => wal.join(format!("{}.wal.tmp", id20(u64::from(*id)))),
        NameSpec::Snapshot(s) => dir.join(format!("{}.snap", id20(u64::from(*s)))),
        NameSpec::SnapshotTmp(s) => dir.join(format!("{}.snap.tmp", id20(u64::from(*s)))),
        NameSpec::WalInRoot(id) => dir.join(format!("{}.wal", id20(u64::from(*id)))),
        NameSpec::SnapInWal(s) => wal.join(format!("{}.snap", id20(u64::from(*s)))),
        NameSpec::ShortDigits(id) => wal.join(format!("{:019}.wal", id)),
        NameSpec::Broken(id) => wal.join(format!("{}.wal.broken", id20(u64::from(*id)))),
        NameSpec::Other { in_wal, name } => {
            let name: Vec<u8> = name.iter().copied().filter(|&b| b != b'/' && b != 0).take(40).collect();
            if name.is_empty() || name == b"." || name == b".." || name == b"wal" || name == b"LOCK" {
                return None;
            }
            let base = if *in_wal { wal } else { dir.to_path_buf() };
            base.join(OsStr::from_bytes(&name))
        }
    })
}

/// Builds the files of a spec: snapshots first (the log may continue after the newest), then
/// segments in id order, each continuing the sequence numbers of the one before.
fn build(spec: &ImageSpec) -> Vec<(PathBuf, Vec<u8>)> {
    let files: Vec<&FileSpec> = spec.files.iter().take(FILES_MAX).collect();
    let mut out = Vec::new();
    let mut newest = 0u64;
    for f in &files {
        if let (Some(p), ContentSpec::Snapshot(s)) = (path_of(&f.name), &f.content) {
            let base = match f.name {
                NameSpec::Snapshot(b) | NameSpec::SnapshotTmp(b) | NameSpec::SnapInWal(b) => u64::from(b),
                _ => 0,
            };
            newest = newest.max(base);
            let version = version_from(base < u64::from(spec.v1_snapshots_below));
            out.push((p, s.build(base, version).bytes));
        }
    }
    let mut segments: Vec<(u64, &FileSpec)> = files
        .iter()
        .filter(|f| matches!(f.content, ContentSpec::Segment(_)))
        .map(|f| match f.name {
            NameSpec::Segment(id) | NameSpec::SegmentTmp(id) | NameSpec::WalInRoot(id) => (u64::from(id), *f),
            _ => (1, *f),
        })
        .collect();
    segments.sort_by_key(|s| s.0);
    let mut next = if spec.log_after_snapshot { newest + 1 } else { 1 };
    for (id, f) in segments {
        if let (Some(p), ContentSpec::Segment(s)) = (path_of(&f.name), &f.content) {
            let built = s.build(id, next, version_from(id < u64::from(spec.v1_segments_below)));
            next = built.next_seq.max(next);
            out.push((p, built.bytes));
        }
    }
    for f in &files {
        if let (Some(p), ContentSpec::Raw(r)) = (path_of(&f.name), &f.content) {
            let mut bytes = r.clone();
            bytes.truncate(4096);
            out.push((p, bytes));
        }
    }
    out
}

/// Serializes an image (the seed corpus format): per file, a name length (u8), the name
/// relative to the store (`wal/…` for the log), the length of its non-zero prefix and of the
/// zeros after it (u32 each, little-endian), then that prefix.
pub fn encode_image(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0u8];
    for (name, bytes) in files {
        let data_len = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data_len as u32).to_le_bytes());
        out.extend_from_slice(&((bytes.len() - data_len) as u32).to_le_bytes());
        out.extend_from_slice(&bytes[..data_len]);
    }
    out
}

/// Reads a serialized image leniently: whatever it says, bounded by what is there.
fn decode_image(mut b: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = b.split_first() {
        let n = usize::from(n).min(rest.len());
        let (name, rest) = rest.split_at(n);
        if rest.len() < 8 {
            break;
        }
        let data_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let pad = (u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize).min(PAD_BYTES_MAX);
        let rest = &rest[8..];
        let data_len = data_len.min(rest.len());
        let mut bytes = rest[..data_len].to_vec();
        bytes.resize(data_len + pad, 0);
        b = &rest[data_len..];
        // `NAME` in the store's directory or `wal/NAME` in the log's; never where the engine
        // needs a directory or its lock (an I/O error there is the file system's answer).
        let name: Vec<u8> = name.iter().copied().filter(|&c| c != 0).collect();
        let parts: Vec<&[u8]> = name.split(|&c| c == b'/').collect();
        let file_ok = |f: &[u8]| !f.is_empty() && f != b"." && f != b"..";
        let rel = match parts[..] {
            [f] if file_ok(f) && f != b"wal" && f != b"LOCK" => Some(PathBuf::from(OsStr::from_bytes(f))),
            [b"wal", f] if file_ok(f) => Some(Path::new("wal").join(OsStr::from_bytes(f))),
            _ => None,
        };
        if let Some(rel) = rel.filter(|_| out.len() < FILES_MAX * 4) {
            out.push((Path::new(DIR).join(rel), bytes));
        }
    }
    out
}

/// Puts each file in the simulated storage, durable with its directory entry.
pub fn install(sim: &SimStorage, files: &[(PathBuf, Vec<u8>)]) {
    let wal = Path::new(DIR).join("wal");
    sim.create_dir_all(&wal).expect("sim: create the store's directories");
    for (path, bytes) in files {
        let Ok(f) = sim.open(path, OpenMode::CreateNew) else {
            continue; // the same name twice: the first stays
        };
        let mut at = 0;
        while at < bytes.len() {
            at += f.write_at(&bytes[at..], at as u64).expect("sim: write");
        }
        f.sync_all().expect("sim: fsync");
    }
    sim.sync_dir(Path::new(DIR)).expect("sim: fsync dir");
    sim.sync_dir(&wal).expect("sim: fsync dir");
}

fn options(sim: &SimStorage, mode: RecoveryMode, now_ms: u64) -> Options {
    small_options()
        .quiet()
        .segment_size(SEGMENT_BYTES as u64)
        .sim(sim)
        .sync_mode(SyncMode::Always)
        .recovery_mode(mode)
        .manual_clock(&ManualClock::new(now_ms))
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (files, mode, now) = if sel & 1 == 0 {
        let mode = [RecoveryMode::TolerateTornTail, RecoveryMode::Strict][usize::from(sel >> 7)];
        (decode_image(rest), mode, NOW_MS)
    } else {
        let Ok(spec) = ImageSpec::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        let mode = match spec.mode % 3 {
            0 => RecoveryMode::Strict,
            1 => RecoveryMode::TolerateTornTail,
            _ => RecoveryMode::Salvage,
        };
        (build(&spec), mode, NOW_MS + u64::from(spec.clock_ms))
    };
    let sim = SimStorage::new(u64::from(sel));
    install(&sim, &files);
    match Db::open_with(DIR, options(&sim, mode, now)) {
        Ok(db) => check_open(db, &sim, &files, mode, now),
        Err(Error::UnsupportedFormat { .. }) => {}
        Err(Error::Corruption { .. }) if mode != RecoveryMode::Salvage => {
            match Db::open_with(DIR, options(&sim, RecoveryMode::Salvage, now)) {
                Ok(db) => check_open(db, &sim, &files, RecoveryMode::Salvage, now),
                Err(Error::UnsupportedFormat { .. }) => {}
                Err(e) => panic!("salvage could not open what {mode:?} refused: {e}"),
            }
        }
        Err(e) => panic!("open ({mode:?}) failed with an error of the wrong kind: {e}"),
    }
}

/// An opened store: only values from the image, none expired; a second open agrees.
fn check_open(db: Db, sim: &SimStorage, files: &[(PathBuf, Vec<u8>)], mode: RecoveryMode, now: u64) {
    let got = contents(&db, now, "first open");
    for (k, v) in &got {
        let mut in_snapshot = k.clone();
        in_snapshot.extend_from_slice(v);
        let mut in_record = k.clone();
        in_record.extend_from_slice(&(v.len() as u64).to_le_bytes());
        in_record.extend_from_slice(v);
        let found = files
            .iter()
            .any(|(_, b)| contains(b, &in_snapshot) || contains(b, &in_record));
        assert!(
            found,
            "{mode:?}: key {k:?} holds a value that is in no file of the image"
        );
    }
    drop(db);
    let again = Db::open_with(DIR, options(sim, mode, now))
        .unwrap_or_else(|e| panic!("{mode:?}: a second open failed after the first succeeded: {e}"));
    assert_eq!(
        contents(&again, now, "second open"),
        got,
        "{mode:?}: a second open gives other contents"
    );
}

fn contents(db: &Db, now: u64, what: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for item in db.range::<&[u8], _>(..) {
        let (k, v) = item.unwrap_or_else(|e| panic!("{what}: a scan after a successful open failed: {e}"));
        let e = db
            .get_versioned(&k)
            .unwrap_or_else(|e| panic!("{what}: get failed: {e}"))
            .unwrap_or_else(|| panic!("{what}: a scanned key is absent"));
        assert!(
            e.expires_at_ms.is_none_or(|x| x > now),
            "{what}: an expired entry is returned"
        );
        out.insert(k, v);
    }
    out
}

/// Prints what an input installs and what each mode makes of it (for investigating a finding).
pub fn debug(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let files = if sel & 1 == 0 {
        decode_image(rest)
    } else {
        let spec = ImageSpec::arbitrary(&mut Unstructured::new(rest)).expect("spec");
        eprintln!("{spec:#?}");
        build(&spec)
    };
    for (p, b) in &files {
        let nz = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        eprintln!(
            "{} len {} nonzero {} {:02x?}",
            p.display(),
            b.len(),
            nz,
            &b[..nz.min(160)]
        );
    }
    for mode in [
        RecoveryMode::Strict,
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Salvage,
    ] {
        let sim = SimStorage::new(0);
        install(&sim, &files);
        let first = Db::open_with(DIR, options(&sim, mode, NOW_MS)).map(|db| contents(&db, NOW_MS, "debug"));
        eprintln!("{mode:?} first: {first:?}");
        for p in sim.files() {
            eprintln!("   {} {}", p.display(), sim.read_file(&p).map_or(0, |b| b.len()));
        }
        let second = Db::open_with(DIR, options(&sim, mode, NOW_MS)).map(|db| contents(&db, NOW_MS, "debug"));
        eprintln!("{mode:?} second: {second:?}");
    }
}

/// Installs a serialized image (the format of [`encode_image`], after its first byte) and opens
/// it in `mode`, for tests that check more than the target's invariants.
pub fn open_serialized(data: &[u8], mode: RecoveryMode) -> sessiondb::Result<Db> {
    let sim = SimStorage::new(0);
    install(&sim, &decode_image(&data[1..]));
    Db::open_with(DIR, options(&sim, mode, NOW_MS))
}
