//! Every read of a value from the log verifies its record first: damaged or misplaced bytes are
//! an error, never a value, and a checkpoint never copies them into a snapshot.
//!
//! Scenario: values are written, then one byte inside a value's record is changed behind the
//! engine's back: in the active segment (positioned reads, on the simulated storage) and in a
//! sealed segment (memory-mapped reads, on real files). Method: `get`, a full scan and a
//! checkpoint on the open store. Invariant: each fails with `Corruption` naming the segment; the
//! other values still read back.

use std::sync::Arc;

use sessiondb::storage::sim::SimStorage;
use sessiondb::{Db, Error, Options};

mod common;

fn corruption_in_segment(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    match r {
        Err(Error::Corruption { path, .. }) => {
            assert!(
                path.to_string_lossy().ends_with(".wal"),
                "{what}: names a segment: {}",
                path.display()
            )
        }
        other => panic!("{what}: expected Corruption, got {other:?}"),
    }
}

/// Offset of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("value bytes are in the segment")
}

#[test]
fn active_segment_reads_verify_their_record() {
    let sim = SimStorage::new(1);
    let opts = Options::new()
        .segment_size(1 << 20)
        .value_size_max(4096)
        .batch_size_max(64 * 1024)
        .auto_checkpoint(false)
        .preallocate_ahead(false)
        .storage(Arc::new(sim.clone()));
    let db = Db::open_with("/rv", opts).unwrap();
    db.put("good", "fine value").unwrap();
    db.put("bad", "value to be damaged").unwrap();
    let seg = sim
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let at = find(&sim.read_file(&seg).unwrap(), b"value to be damaged");
    sim.flip_bit(&seg, at as u64 + 3, 0).unwrap();

    corruption_in_segment(db.get("bad"), "get");
    corruption_in_segment(db.range::<&[u8], _>(..).collect::<Result<Vec<_>, _>>(), "scan");
    corruption_in_segment(db.checkpoint(), "checkpoint");
    assert_eq!(db.get("good").unwrap().as_deref(), Some(&b"fine value"[..]));
    assert_eq!(db.stats().snapshots, 0, "no snapshot was written from damaged bytes");
}

#[test]
fn sealed_segment_reads_verify_their_record() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || {
        Options::new()
            .segment_size(64 * 1024)
            .value_size_max(4096)
            .batch_size_max(16 * 1024)
            .auto_checkpoint(false)
    };
    let db = Db::open_with(tmp.path(), opts()).unwrap();
    db.put("bad", "value to be damaged").unwrap();
    for i in 0..100 {
        db.put(format!("fill{i}"), vec![7u8; 1000]).unwrap();
    }
    assert!(db.stats().segments >= 2, "the first segment is sealed (and mapped)");
    let first = common::segment_files(tmp.path()).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let at = find(&bytes, b"value to be damaged");
    bytes[at + 3] ^= 1;
    std::fs::write(&first, &bytes).unwrap();

    corruption_in_segment(db.get("bad"), "get from a mapped segment");
    assert_eq!(db.get("fill5").unwrap().as_deref(), Some(&[7u8; 1000][..]));
}
