//! Every saved fuzz input, replayed under `cargo test`.
//!
//! Scenario: the inputs kept in `fuzz/regressions/<target>/` (each one found a bug, since
//! fixed) and the seed corpora in `fuzz/seeds/<target>/` (valid files the engine wrote).
//! Method: each input goes through the same target function the libFuzzer binary runs
//! (`tests/support/fuzz/`), with the same capped allocator.
//! Invariant: every target's invariants hold on every saved input (docs/testing.md).

mod support;

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: support::fuzz::alloc_cap::CapAlloc = support::fuzz::alloc_cap::CapAlloc;

/// Files in `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs `run` on every saved input of `target`; returns how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["regressions", "seeds"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("replaying {}", path.display());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn record_decode() {
    assert!(replay("record_decode", support::fuzz::record_decode::run) > 0);
}

#[test]
fn snapshot_decode() {
    assert!(replay("snapshot_decode", support::fuzz::snapshot_decode::run) > 0);
}

#[test]
fn recovery_image() {
    assert!(replay("recovery_image", support::fuzz::recovery_image::run) > 0);
}

#[test]
fn ops_vs_model() {
    assert!(replay("ops_vs_model", support::fuzz::ops_vs_model::run) > 0);
}

#[test]
#[ignore]
fn debug_one() {
    let path = std::env::var("FUZZ_INPUT").unwrap();
    let data = std::fs::read(path).unwrap();
    match std::env::var("FUZZ_TARGET").as_deref() {
        Ok("recovery_image") => support::fuzz::recovery_image::debug(&data),
        _ => support::fuzz::record_decode::debug(&data),
    }
}

/// The saved input `name` of `target`.
fn saved(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Found by `record_decode`: a segment whose header is all zero but which holds records was
/// taken for an unused spare and erased, even in `Strict`, even when a later record proved the
/// records durable. Recovery now reads the spare after the log and judges it like a damaged
/// header: refused when vouched for (or in `Strict`), cut only as an unvouched torn activation.
#[test]
fn zero_header_segment_with_vouched_records_is_refused() {
    use sessiondb::{Error, RecoveryMode};
    let data = saved("recovery_image", "zero-header-spare-vouched.bin");
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateTornTail] {
        match support::fuzz::recovery_image::open_serialized(&data, mode) {
            Err(Error::Corruption { path, .. }) => {
                assert!(
                    path.ends_with("wal/00000000000000000002.wal"),
                    "{mode:?}: {}",
                    path.display()
                )
            }
            Err(e) => panic!("{mode:?}: {e}"),
            Ok(_) => panic!("{mode:?}: a segment of vouched records with a zeroed header was erased"),
        }
    }
    let db = support::fuzz::recovery_image::open_serialized(&data, RecoveryMode::Salvage).expect("salvage");
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"one"[..]));
}

/// Found by `record_decode` (`seq-at-u64-max.bin`): a record claiming sequence number
/// `u64::MAX` made the reader compute the next expected number by wrapping (a panic in debug
/// builds); snapshot bases and segment ids had the same `+ 1`. Sequence numbers, segment ids
/// and snapshot bases now stop at `limits::SEQ_MAX` (2^63 − 1): larger ones are damage, or a
/// name that is not ours. A store whose log reached `SEQ_MAX` opens, and refuses further
/// writes with `TooLarge` instead of writing a number recovery would not read.
#[test]
fn sequence_numbers_stop_at_seq_max() {
    use sessiondb::{Error, RecoveryMode};
    let data = saved("recovery_image", "last-sequence-number.bin");
    let db = support::fuzz::recovery_image::open_serialized(&data, RecoveryMode::Strict).expect("open");
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"last"[..]));
    match db.put("k", "next") {
        Err(Error::TooLarge { what, size, max }) => {
            assert_eq!(
                (what, size, max),
                ("sequence number", 1 << 63, sessiondb::internals::limits::SEQ_MAX)
            )
        }
        other => panic!("a write past SEQ_MAX: {other:?}"),
    }
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"last"[..]));
}

/// Writes the seed corpora `fuzz/seeds/<target>/` from stores the engine itself writes on the
/// simulated storage: closed stores with segment rolls, checkpoints and expiring entries, and
/// power-loss images at crash points inside a checkpoint. Run it after a format change:
/// `cargo test --test fuzz_regressions generate_seeds -- --ignored` (docs/testing.md).
#[test]
#[ignore]
fn generate_seeds() {
    support::fuzz::seeds::generate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds"));
}

/// Writes the `recovery_image` seeds derived from the format version 1 fixture stores
/// (`tests/fixtures/v1/`): each store as it is, as this build leaves it after a few writes (a
/// mixed v1/v2 store), and a prefix of `log_only`'s log small enough for the fuzzer's
/// `-max_len`, also continued and checkpointed (`support::fuzz::seeds::generate_from_v1`). The
/// fixtures never change, so neither do these, unless this build's writes do:
/// `cargo test --test fuzz_regressions generate_v1_fixture_seeds -- --ignored`.
#[test]
#[ignore]
fn generate_v1_fixture_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    support::fuzz::seeds::generate_from_v1(&root.join("tests/fixtures/v1"), &root.join("fuzz/seeds"));
}
