//! The snapshot file (`snapshot_file`): what it packs comes back byte for byte, and a damaged
//! file is an error naming it, never a panic, a huge allocation or a half-extracted directory.

use std::fs;
use std::path::Path;

use sessiondb_cluster::snapshot_file;

fn sample(dir: &Path) {
    fs::create_dir_all(dir.join("wal")).unwrap();
    fs::write(dir.join("00000000000000000007.snap"), b"snapshot bytes").unwrap();
    // A preallocated segment: data, then a zero tail that is not sent.
    let mut segment = b"segment header and records".to_vec();
    segment.resize(64 * 1024, 0);
    fs::write(dir.join("wal/00000000000000000002.wal"), &segment).unwrap();
    fs::write(dir.join("LOCK"), b"").unwrap();
}

#[test]
fn a_backup_travels_whole_and_damage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, file) = (tmp.path().join("from"), tmp.path().join("s.snap"));
    sample(&from);
    snapshot_file::write(&file, b"{\"meta\":1}", &from).unwrap();
    let bytes = fs::read(&file).unwrap();
    assert!(bytes.len() < 1024, "the zero tail is not sent: {} bytes", bytes.len());

    let to = tmp.path().join("to");
    assert_eq!(snapshot_file::extract(&file, &to).unwrap(), b"{\"meta\":1}");
    for name in ["00000000000000000007.snap", "wal/00000000000000000002.wal"] {
        assert_eq!(
            fs::read(to.join(name)).unwrap(),
            fs::read(from.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(!to.join("LOCK").exists(), "a store's lock file is not packed");

    // Every byte changed, and every shorter length: an error, and nothing extracted.
    let damaged = tmp.path().join("damaged.snap");
    let into = tmp.path().join("into");
    let cases = (0..bytes.len())
        .map(|i| {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            (format!("byte {i} changed"), b)
        })
        .chain((0..bytes.len()).map(|n| (format!("cut to {n} bytes"), bytes[..n].to_vec())));
    for (what, b) in cases {
        fs::write(&damaged, &b).unwrap();
        let err = snapshot_file::read_meta(&damaged).expect_err(&what);
        assert!(err.to_string().contains("damaged.snap"), "{what}: {err}");
        assert!(snapshot_file::extract(&damaged, &into).is_err(), "{what}");
        assert!(!into.exists(), "{what}: nothing stays extracted");
    }
}
