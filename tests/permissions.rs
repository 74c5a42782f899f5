//! Files are created 0600 and directories 0700: session data is private to its owner.
//!
//! Scenario: a store with log segments, a snapshot and the lock file, on the real file system.
//! Method: read the mode bits of every entry. Invariant: no group or other permission bits.

mod support;

use std::os::unix::fs::PermissionsExt;

use sessiondb::Db;
use support::small_options;

#[test]
fn files_0600_and_directories_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = Db::open_with(&dir, small_options()).unwrap();
    for i in 0..200 {
        db.put(format!("k{i}"), vec![1u8; 1000]).unwrap();
    }
    db.checkpoint().unwrap();
    db.close().unwrap();
    let mut seen = (0, 0);
    for entry in walk(&dir) {
        let meta = std::fs::metadata(&entry).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.display());
            seen.0 += 1;
        } else {
            assert_eq!(mode, 0o600, "{}", entry.display());
            seen.1 += 1;
        }
    }
    assert!(
        seen.0 >= 2 && seen.1 >= 3,
        "the store, wal/, LOCK, a segment and a snapshot were checked: {seen:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
