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

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
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
