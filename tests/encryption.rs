//! Encryption at rest (docs/design.md, "Encryption at rest"): what an encrypted store keeps out
//! of its files, and how it refuses the wrong key, no key, or damage.

use std::path::Path;
use std::time::Duration;

use sessiondb::{Db, EncryptionKey, Error, Options};

fn key(b: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([b; 32])
}

fn opts(k: u8) -> Options {
    Options::new().encryption_key(key(k))
}

/// Every byte of every file under `dir`. The store may be open: its preparer may rename a file
/// between the listing and the read (a `.tmp` becoming a segment), so a walk that finds a file
/// gone starts again (a bounded number of times), and every file is read under some name.
fn all_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    'walk: for _ in 0..1000 {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                match std::fs::read(&p) {
                    Ok(bytes) => out.push((p.clone(), bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'walk,
                    Err(e) => panic!("{}: {e}", p.display()),
                }
            }
        }
        return out;
    }
    panic!("{}: files kept vanishing while read", dir.display());
}

fn assert_nowhere(dir: &Path, needles: &[&[u8]], when: &str) {
    for (path, bytes) in all_bytes(dir) {
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == *n),
                "{when}: {:?} found in {}",
                String::from_utf8_lossy(n),
                path.display()
            );
        }
    }
}

const SECRET_KEY: &[u8] = b"user-key-5f1e2d3c";
const SECRET_VALUE: &[u8] = b"payload-of-alice@example.com-csrf-9b8a7c";

#[test]
fn plaintext_appears_in_no_file_in_any_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(1)).unwrap();
    assert!(db.is_encrypted());
    db.put(SECRET_KEY, SECRET_VALUE).unwrap();
    db.put_with_ttl(b"ttl-key-abcdef", SECRET_VALUE, Duration::from_secs(600))
        .unwrap();
    for i in 0..200u32 {
        db.put(format!("filler-{i}"), format!("filler-value-{i}")).unwrap();
    }
    db.delete(b"filler-3").unwrap();
    db.sync().unwrap();
    assert_nowhere(dir.path(), &[SECRET_KEY, SECRET_VALUE, b"filler-value-1"], "log only");
    db.checkpoint().unwrap();
    db.put(b"after-checkpoint-key", SECRET_VALUE).unwrap();
    assert_nowhere(
        dir.path(),
        &[SECRET_KEY, SECRET_VALUE, b"filler-value-1"],
        "after a checkpoint",
    );
    db.close().unwrap();
    assert_nowhere(
        dir.path(),
        &[SECRET_KEY, SECRET_VALUE, b"after-checkpoint-key"],
        "closed",
    );

    let db = Db::open_with(dir.path(), opts(1)).unwrap();
    assert_eq!(db.get(SECRET_KEY).unwrap().as_deref(), Some(SECRET_VALUE));
    assert_eq!(db.get(b"after-checkpoint-key").unwrap().as_deref(), Some(SECRET_VALUE));
    assert_eq!(db.get(b"filler-3").unwrap(), None);
    assert_eq!(
        db.get(b"filler-199").unwrap().as_deref(),
        Some(&b"filler-value-199"[..])
    );
    assert!(db.get_versioned(b"ttl-key-abcdef").unwrap().is_some());
    let all: Vec<_> = db.range::<&[u8], _>(..).map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 202);
}

#[test]
fn a_wrong_key_or_no_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(1)).unwrap();
    db.put(SECRET_KEY, SECRET_VALUE).unwrap();
    db.close().unwrap();
    match Db::open_with(dir.path(), opts(2)) {
        Err(e @ Error::WrongKey { .. }) => assert!(e.to_string().ends_with(": wrong encryption key"), "{e}"),
        other => panic!("wrong key: {other:?}"),
    }
    match Db::open(dir.path()) {
        Err(e @ Error::KeyRequired { .. }) => assert!(e.to_string().contains("encrypted"), "{e}"),
        other => panic!("no key: {other:?}"),
    }
    // Neither attempt changed anything.
    let db = Db::open_with(dir.path(), opts(1)).unwrap();
    assert_eq!(db.get(SECRET_KEY).unwrap().as_deref(), Some(SECRET_VALUE));
}

#[test]
fn a_key_on_an_unencrypted_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    match Db::open_with(dir.path(), opts(1)) {
        Err(e @ Error::NotEncrypted { .. }) => assert!(e.to_string().contains("not encrypted"), "{e}"),
        other => panic!("key on a plain store: {other:?}"),
    }
    let db = Db::open(dir.path()).unwrap();
    assert!(!db.is_encrypted());
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn rotation_needs_the_new_key_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts(1)).unwrap();
    db.put(SECRET_KEY, SECRET_VALUE).unwrap();
    db.rotate_key(key(7)).unwrap();
    db.put(b"after", b"rotation").unwrap();
    db.close().unwrap();
    assert!(matches!(
        Db::open_with(dir.path(), opts(1)),
        Err(Error::WrongKey { .. })
    ));
    let db = Db::open_with(dir.path(), opts(7)).unwrap();
    assert_eq!(db.get(SECRET_KEY).unwrap().as_deref(), Some(SECRET_VALUE));
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"rotation"[..]));
    let plain = tempfile::tempdir().unwrap();
    let p = Db::open(plain.path()).unwrap();
    assert!(matches!(p.rotate_key(key(3)), Err(Error::NotEncrypted { .. })));
}

mod support;

/// The ops-against-model fuzz target's body on encrypted stores (its bit 8 of `faults`):
/// random operations, faults, power losses and reopens, every state checked against the model.
/// Seeded: `SESSIONDB_SEED` replays.
#[test]
fn ops_against_the_model_on_encrypted_stores() {
    let (seed, _guard) = support::seeded("ops_against_the_model_on_encrypted_stores");
    let mut rng = support::Rng::new(seed);
    for _ in 0..150 {
        let len = rng.range(64, 4096) as usize;
        let mut data = rng.bytes(len);
        // OpsSpec's layout: two bools, then the fault bits.
        data[2] |= 8;
        support::fuzz::ops_vs_model::run(&data);
    }
}

/// Puts of one size (keys `k000`.., 300-byte values) until the store has `segments` segments
/// with records; returns the store's options.
fn fill_segments(dir: &Path, segments: usize) -> Options {
    use support::OptionsExt;
    let o = support::small_options().quiet().encryption_key(key(4));
    let db = Db::open_with(dir, o.clone()).unwrap();
    let mut i = 0u32;
    while support::segments_with_records(dir).len() < segments {
        db.put(format!("k{:03}", i % 1000), [b'x'; 300]).unwrap();
        i += 1;
    }
    for _ in 0..5 {
        db.put(format!("k{:03}", i % 1000), [b'x'; 300]).unwrap();
        i += 1;
    }
    db.close().unwrap();
    o
}

/// The record checksum recomputed after a payload was replaced (an attacker can: crc32 is not a
/// secret), so only the seal can tell.
fn fix_record_crc(bytes: &mut [u8], segment_id: u64, rec: support::RecordPos) {
    let (s, e) = (rec.start as usize, rec.end() as usize);
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&bytes[s..s + 4]);
    h.update(&bytes[s + 8..e]);
    let crc = h.finalize();
    bytes[s + 4..s + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record's payload replayed from an older segment of the same store into a later one (its
/// frame and checksum made valid again) does not authenticate there: `Corruption` naming the
/// later segment and the record, never the older value.
#[test]
fn a_record_replayed_from_an_older_segment_is_damage_named_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = fill_segments(dir.path(), 3);
    let segs = support::segments_with_records(dir.path());
    let (old_path, old_recs) = &segs[0];
    let (new_path, new_recs) = &segs[segs.len() - 1];
    let old = std::fs::read(old_path).unwrap();
    let mut new = std::fs::read(new_path).unwrap();
    let (from, to) = (old_recs[1], new_recs[1]);
    assert_eq!(from.len, to.len, "records of one size");
    let h = 25;
    new[(to.start as usize + h)..to.end() as usize]
        .copy_from_slice(&old[(from.start as usize + h)..from.end() as usize]);
    let new_id: u64 = new_path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fix_record_crc(&mut new, new_id, to);
    std::fs::write(new_path, &new).unwrap();
    support::assert_corruption_in(Db::open_with(dir.path(), opts), new_path, to, "a replayed payload");
}

/// Two values of one size swapped within their snapshot block (the block checksum made valid
/// again): each is sealed to its place, so neither reads back; the keys' directory still opens.
#[test]
fn snapshot_values_swapped_in_place_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let opts = fill_segments(dir.path(), 2);
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    db.checkpoint().unwrap();
    db.close().unwrap();
    let snap = support::snapshot_files(dir.path()).pop().unwrap();
    let mut b = std::fs::read(&snap).unwrap();
    // The first block starts at 32: a 12-byte header, the directory's length, the directory,
    // its tag, then each value (300 bytes) and its tag.
    let block = 32usize;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let values = block + 12 + 4 + u32_at(&b, block + 12) + 16;
    let unit = 300 + 16;
    let first = b[values..values + unit].to_vec();
    b.copy_within(values + unit..values + 2 * unit, values);
    b[values + unit..values + 2 * unit].copy_from_slice(&first);
    let body_len = u32_at(&b, block);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[block..block + 8]);
    h.update(&b[block + 12..block + 12 + body_len]);
    let crc = h.finalize();
    b[block + 8..block + 12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&snap, &b).unwrap();
    let db = Db::open_with(dir.path(), opts).unwrap();
    for (i, k) in ["k000", "k001"].iter().enumerate() {
        match db.get(k) {
            Err(Error::Corruption { path, offset, reason }) => {
                assert_eq!(path.file_name(), snap.file_name(), "{reason}");
                let at = (values + i * unit) as u64;
                assert_eq!(offset, at, "{reason}");
                assert!(reason.contains("authenticate"), "{reason}");
            }
            other => panic!("{k} after the swap: {other:?}"),
        }
    }
    assert_eq!(
        db.get("k002").unwrap().as_deref(),
        Some(&[b'x'; 300][..]),
        "the rest reads"
    );
}

/// A record's payload copied over another record of the same segment (same data key, its own
/// nonces carried along; frame and checksum made valid): only the placement in the associated
/// data (segment, offset, sequence number) tells, and it does.
#[test]
fn a_record_replayed_within_its_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let opts = fill_segments(dir.path(), 2);
    let segs = support::segments_with_records(dir.path());
    let (path, recs) = &segs[0];
    let mut b = std::fs::read(path).unwrap();
    let (from, to) = (recs[1], recs[3]);
    assert_eq!(from.len, to.len, "records of one size");
    let payload = b[(from.start as usize + 25)..from.end() as usize].to_vec();
    b[(to.start as usize + 25)..to.end() as usize].copy_from_slice(&payload);
    let id: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fix_record_crc(&mut b, id, to);
    std::fs::write(path, &b).unwrap();
    support::assert_corruption_in(
        Db::open_with(dir.path(), opts),
        path,
        to,
        "a payload replayed in its segment",
    );
}
