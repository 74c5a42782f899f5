//! The `sessiondb` command-line tool, run as a real process.
//!
//! Scenario: stores built through the library (several segments, a snapshot, a torn tail,
//! leftover temp files), damaged stores (a flipped byte in a sealed segment, in a snapshot),
//! and a store that a child process keeps open and writes to while the tool reads, backs up
//! and is refused.
//! Method: run the binary Cargo built (`CARGO_BIN_EXE_sessiondb`) and check exit codes, stdout
//! (parsed as JSON where the tool promises JSON) and the files. The read-only guarantee is
//! checked by hashing every file and listing every name before and after. The child is this
//! test binary re-executed; it writes batches `{w<t>/<i>, w<t>/counter = i}` from several
//! threads, so any consistent state holds, per writer, keys `0..n` and counter `n - 1`.
//! Invariant: exit status 0 on success, 1 on failure (problems found, no such key, refused), 2 on
//! usage errors; reading subcommands change no byte and work on a store that is open and being
//! written; backups and dumps are consistent states; repair keeps damaged files as `*.broken`,
//! leaves a store that verifies, and returns only values that were written.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sessiondb::session::{Migrations, SessionId, SessionMap, SessionStore};
use sessiondb::{Batch, Db};
use support::child::{spawn_test, ChildOutput};
use support::{contents, segments_with_records, small_options, snapshot_files, wal_relative, OptionsExt};

const BIN: &str = env!("CARGO_BIN_EXE_sessiondb");
const CHILD_DIR_VAR: &str = "SESSIONDB_CLI_CHILD_DIR";
const WRITERS: usize = 3;

/// A spawned process holds copies of this process's open files (a store's lock included)
/// between its fork and its exec: tests that close a store and then run the tool on it run one
/// at a time, so another test's spawn cannot make the lock look held (docs/design.md).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sessiondb")
}

fn describe(args: &[&OsStr], out: &Output) -> String {
    format!(
        "sessiondb {:?}: {}\n--- stdout\n{}--- stderr\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the tool and asserts its exit code; returns stdout.
fn expect<S: AsRef<OsStr>>(code: i32, args: &[S]) -> String {
    let out = run(args);
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    assert_eq!(out.status.code(), Some(code), "{}", describe(&args, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Every file and directory under `dir`, with a hash of each file's bytes.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, Option<(u64, u64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                out.insert(p, Some((bytes.len() as u64, h.finish())));
            }
        }
    }
    out
}

/// The i-th put of the tamper stores: unique keys, unique values of varying length.
fn put_kv(i: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key{i:04}").into_bytes();
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(600 + (i * 7) % 400, b'a' + (i % 26) as u8);
    (key, value)
}

/// A closed store of `n` puts, one record each, over several segments, no snapshot.
fn log_store(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), small_options().quiet()).unwrap();
    for i in 0..n {
        let (k, v) = put_kv(i);
        db.put(k, v).unwrap();
    }
    db.close().unwrap();
    dir
}

fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn help_documents_every_subcommand() {
    let help = expect(0, &["--help"]);
    let subcommands = [
        "demo",
        "bench",
        "stats",
        "verify",
        "dump",
        "get",
        "put",
        "delete",
        "checkpoint",
        "backup",
        "restore",
        "repair",
        "migrate-sessions",
        "encrypt",
        "decrypt",
        "rotate-key",
        "keygen",
    ];
    for sub in subcommands {
        assert!(help.contains(sub), "--help does not list {sub}:\n{help}");
        let sub_help = expect(0, &[sub, "--help"]);
        assert!(sub_help.contains("Usage: sessiondb"), "{sub} --help:\n{sub_help}");
    }
    assert!(help.contains("Exit status"), "{help}");
    expect(0, &["--version"]);
}

#[test]
fn usage_errors_exit_2() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let not_a_store = dir.path().join("plain");
    fs::create_dir(&not_a_store).unwrap();
    let missing = dir.path().join("missing");
    expect(2, &["frobnicate"]);
    expect(2, &["verify"]);
    expect(2, &["put", "x"]);
    expect(2, &[p(dir.path()), OsStr::new("--bogus")]);
    for cmd in ["verify", "stats", "dump", "checkpoint", "repair", "migrate-sessions"] {
        expect(2, &[OsStr::new(cmd), p(&not_a_store)]);
        expect(2, &[OsStr::new(cmd), p(&missing)]);
    }
    expect(2, &[OsStr::new("get"), p(&missing), OsStr::new("k")]);
    expect(2, &[OsStr::new("delete"), p(&missing), OsStr::new("k")]);
    for ttl in ["0", "5x", "m", "-3m", ""] {
        let args = [
            OsStr::new("put"),
            p(&missing),
            OsStr::new("k"),
            OsStr::new("v"),
            OsStr::new("--ttl"),
            OsStr::new(ttl),
        ];
        expect(2, &args);
    }
    // A directory with files but no store never gets a store written into it.
    let occupied = dir.path().join("occupied");
    fs::create_dir(&occupied).unwrap();
    fs::write(occupied.join("notes.txt"), b"mine").unwrap();
    expect(2, &[OsStr::new("put"), p(&occupied), OsStr::new("k"), OsStr::new("v")]);
    expect(
        2,
        &[
            OsStr::new("demo"),
            p(&occupied),
            OsStr::new("--sessions"),
            OsStr::new("1"),
        ],
    );
    expect(
        2,
        &[
            OsStr::new("bench"),
            p(&occupied),
            OsStr::new("--seconds"),
            OsStr::new("0"),
        ],
    );
    assert_eq!(
        fs::read_dir(&occupied).unwrap().count(),
        1,
        "nothing was written into it"
    );
    assert!(!missing.exists(), "a usage error created the store");
    assert_eq!(
        fs::read_dir(&not_a_store).unwrap().count(),
        0,
        "a usage error wrote into a directory"
    );
}

#[test]
fn put_get_delete_dump_round_trip() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = p(&dir);
    expect(
        0,
        &[
            OsStr::new("put"),
            d,
            OsStr::new("session:1"),
            OsStr::new(r#"{"user":1}"#),
        ],
    );
    expect(
        0,
        &[
            OsStr::new("put"),
            d,
            OsStr::new("csrf:1"),
            OsStr::new("tok"),
            OsStr::new("--ttl"),
            OsStr::new("30m"),
        ],
    );
    let bin_key = OsStr::from_bytes(b"bin\xff\x01");
    let bin_value = OsStr::from_bytes(b"\xfe\x80tab\there\nnl");
    expect(0, &[OsStr::new("put"), d, bin_key, bin_value]);

    let mut child = Command::new(BIN)
        .args([OsStr::new("put"), d, OsStr::new("stdin:1"), OsStr::new("-")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from\x00stdin").unwrap();
    assert!(child.wait().unwrap().success());

    assert_eq!(
        expect(0, &[OsStr::new("get"), d, OsStr::new("session:1")]),
        "{\"user\":1}\n"
    );
    let out = run(&[OsStr::new("get"), d, bin_key]);
    assert_eq!(out.stdout, b"\xfe\x80tab\there\nnl\n");
    let out = run(&[OsStr::new("get"), d, OsStr::new("stdin:1")]);
    assert_eq!(out.stdout, b"from\x00stdin\n");
    expect(1, &[OsStr::new("get"), d, OsStr::new("nope")]);

    // jsonl: one valid JSON object per line, UTF-8 as text, anything else as base64.
    let dump = expect(0, &[OsStr::new("dump"), d]);
    let lines: Vec<serde_json::Value> = dump.lines().map(json).collect();
    assert_eq!(lines.len(), 4, "{dump}");
    let by_key: BTreeMap<String, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l))
        .collect();
    let bin = by_key["Ymlu/wE="];
    assert_eq!(bin["key_encoding"], "base64");
    assert_eq!(bin["value"], "/oB0YWIJaGVyZQpubA==");
    assert_eq!(bin["value_encoding"], "base64");
    assert_eq!(bin["expires_at_ms"], serde_json::Value::Null);
    let s = by_key["session:1"];
    assert_eq!(s["value"], r#"{"user":1}"#);
    assert_eq!(s["value_encoding"], "utf8");
    let stdin_entry = by_key["stdin:1"];
    assert_eq!(
        stdin_entry["value"], "from\u{0}stdin",
        "NUL is valid UTF-8 and escaped in JSON"
    );
    let csrf = by_key["csrf:1"];
    let expires = csrf["expires_at_ms"].as_u64().expect("the TTL entry has a deadline");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        expires > now + 29 * 60 * 1000 && expires <= now + 30 * 60 * 1000,
        "{expires} vs {now}"
    );
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    let mut raw_sorted = keys.clone();
    raw_sorted.sort_by_key(|k| {
        if *k == "Ymlu/wE=" {
            b"bin\xff\x01".to_vec()
        } else {
            k.as_bytes().to_vec()
        }
    });
    assert_eq!(keys, raw_sorted, "dump is in key order");

    let prefixed = expect(0, &[OsStr::new("dump"), d, OsStr::new("--prefix"), OsStr::new("csrf")]);
    assert_eq!(prefixed.lines().count(), 1, "{prefixed}");

    // text: one line per entry, three tab-separated fields, bytes escaped.
    let text = expect(0, &[OsStr::new("dump"), d, OsStr::new("--format"), OsStr::new("text")]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.split('\t').count() == 3), "{text}");
    assert!(
        text.contains("bin\\xff\\x01\t\\xfe\\x80tab\\there\\nnl\tnever expires"),
        "{text}"
    );
    assert!(text.contains("csrf:1\ttok\texpires in 29m"), "{text}");

    expect(0, &[OsStr::new("delete"), d, OsStr::new("session:1")]);
    expect(1, &[OsStr::new("get"), d, OsStr::new("session:1")]);
    expect(0, &[OsStr::new("delete"), d, OsStr::new("never-there")]);

    let cp = expect(0, &[OsStr::new("checkpoint"), d]);
    assert!(cp.contains("checkpoint at sequence 6"), "{cp}");
    let cp = expect(0, &[OsStr::new("checkpoint"), d]);
    assert!(cp.contains("nothing new to checkpoint"), "{cp}");
    let stats = json(&expect(0, &[OsStr::new("stats"), d, OsStr::new("--json")]));
    assert_eq!(stats["keys"], 3);
    assert_eq!(stats["snapshots"], 1);
    assert_eq!(stats["last_checkpoint_seq"], 6);
    assert_eq!(stats["last_seq"], 6);
    assert_eq!(stats["format_version"], sessiondb::internals::format::FORMAT_VERSION);
    let text = expect(0, &[OsStr::new("stats"), d]);
    for field in [
        "keys:",
        "live bytes:",
        "dead bytes:",
        "segments:",
        "snapshots:",
        "last checkpoint:",
        "format version:",
    ] {
        assert!(text.contains(field), "stats lacks {field}:\n{text}");
    }
}

#[test]
fn reading_commands_change_no_byte() {
    let _serial = serial();
    let store = log_store(150);
    let dir = store.path();
    // A snapshot, then more log, then a torn tail (garbage after the last record) and leftover
    // temp files: all things an open would change.
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    db.checkpoint().unwrap();
    for i in 150..200 {
        let (k, v) = put_kv(i);
        db.put(k, v).unwrap();
    }
    db.close().unwrap();
    let (last, recs) = segments_with_records(dir).pop().unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&last).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"torn garbage", recs.last().unwrap().end()).unwrap();
    f.flush().unwrap();
    fs::write(dir.join("00000000000000000099.snap.tmp"), b"half a snapshot").unwrap();
    fs::write(dir.join("wal").join("00000000000000000077.wal.tmp"), b"half a segment").unwrap();

    let before = fingerprint(dir);
    let d = p(dir);
    let out = expect(0, &[OsStr::new("verify"), d]);
    assert!(out.contains("torn tail"), "verify notes the torn tail:\n{out}");
    assert!(out.contains(".snap.tmp"), "verify notes the temp file:\n{out}");
    let v = json(&expect(0, &[OsStr::new("verify"), d, OsStr::new("--json")]));
    assert_eq!(v["intact"], true);
    assert_eq!(v["keys"], 200);
    expect(0, &[OsStr::new("stats"), d]);
    expect(0, &[OsStr::new("stats"), d, OsStr::new("--json")]);
    let dump = expect(0, &[OsStr::new("dump"), d]);
    assert_eq!(dump.lines().count(), 200);
    expect(0, &[OsStr::new("dump"), d, OsStr::new("--format"), OsStr::new("text")]);
    expect(0, &[OsStr::new("get"), d, OsStr::new("key0007")]);
    let backup = store
        .path()
        .parent()
        .unwrap()
        .join(format!("{}-backup", dir.file_name().unwrap().to_string_lossy()));
    expect(0, &[OsStr::new("backup"), d, p(&backup)]);
    assert_eq!(
        before,
        fingerprint(dir),
        "a reading subcommand changed the store's files"
    );

    // The backup is one snapshot and an empty log, and holds what the store holds.
    assert_eq!(snapshot_files(&backup).len(), 1);
    assert_eq!(fs::read_dir(backup.join("wal")).unwrap().count(), 0);
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = (0..200).map(put_kv).collect();
    let b = Db::open_with(&backup, small_options().quiet()).unwrap();
    assert_eq!(contents(&b), expected);
    b.close().unwrap();
    fs::remove_dir_all(&backup).unwrap();
}

/// Flips the byte in the middle of a record of the first (sealed) segment.
#[test]
fn damaged_sealed_segment_is_reported_then_repaired() {
    let _serial = serial();
    let n = 200;
    let store = log_store(n);
    let dir = store.path();
    let segs = segments_with_records(dir);
    assert!(segs.len() >= 3, "the test needs sealed segments");
    let (seg, recs) = &segs[0];
    let rec = recs[recs.len() / 2];
    support::flip_byte(seg, rec.start + rec.len / 2);
    let tampered = fs::read(seg).unwrap();
    let lost_seq = rec.seq;

    let d = p(dir);
    let text = expect(1, &[OsStr::new("verify"), d]);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        text.contains(&format!("{name} at offset {}", rec.start)),
        "verify names the file and offset:\n{text}"
    );
    let v = json(&expect(1, &[OsStr::new("verify"), d, OsStr::new("--json")]));
    assert_eq!(v["intact"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert!(problems[0]["path"]
        .as_str()
        .unwrap()
        .ends_with(wal_relative(seg).to_str().unwrap()));
    assert_eq!(problems[0]["offset"], rec.start);
    assert_eq!(problems[0]["bytes"], rec.len);
    assert_eq!(problems[0]["records_lost"], 1);
    // Nothing opened it: the damage is still there, untouched.
    assert_eq!(fs::read(seg).unwrap(), tampered);

    let out = expect(0, &[OsStr::new("repair"), d]);
    assert!(out.contains("1 log records"), "repair says what was lost:\n{out}");
    let broken = PathBuf::from(format!("{}.broken", seg.display()));
    assert_eq!(
        fs::read(&broken).unwrap(),
        tampered,
        "the damaged file is kept byte for byte"
    );
    expect(0, &[OsStr::new("verify"), d]);
    let again = expect(0, &[OsStr::new("repair"), d]);
    assert!(again.contains("nothing to repair"), "{again}");

    // Every put but the lost one, applied in order: salvage never returns a value not written.
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = (0..n).filter(|&i| i as u64 + 1 != lost_seq).map(put_kv).collect();
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    assert_eq!(contents(&db), expected);
    db.close().unwrap();
}

#[test]
fn damaged_snapshot_is_reported_then_repaired_block_by_block() {
    let _serial = serial();
    let n = 300;
    let store = log_store(n);
    let dir = store.path();
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    db.checkpoint().unwrap();
    // After the snapshot: overwrite some keys, delete one, add new ones.
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = (0..n).map(put_kv).collect();
    for i in [5usize, 150, 299] {
        let (k, _) = put_kv(i);
        db.put(&k, b"rewritten").unwrap();
        model.insert(k, b"rewritten".to_vec());
    }
    db.delete(put_kv(7).0).unwrap();
    model.remove(&put_kv(7).0);
    for i in n..n + 20 {
        let (k, v) = put_kv(i);
        db.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    db.close().unwrap();
    let snap = snapshot_files(dir).pop().unwrap();
    let snap_len = fs::metadata(&snap).unwrap().len();
    assert!(snap_len > 3 * 65536, "the snapshot needs several blocks");
    // A byte in the middle of the second block's body.
    support::flip_byte(&snap, 65536 + 30_000);
    let tampered = fs::read(&snap).unwrap();

    let d = p(dir);
    let v = json(&expect(1, &[OsStr::new("verify"), d, OsStr::new("--json")]));
    let problems = v["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{v}");
    assert!(problems.iter().all(|p| p["path"]
        .as_str()
        .unwrap()
        .ends_with(snap.file_name().unwrap().to_str().unwrap())));
    let offset = problems[0]["offset"].as_u64().unwrap();
    assert!(
        offset > 32 && offset <= 65536 + 30_000,
        "the damaged block starts before the flip: {offset}"
    );

    let out = expect(0, &[OsStr::new("repair"), d]);
    assert!(out.contains("entries read from blocks that verify and kept"), "{out}");
    let broken = PathBuf::from(format!("{}.broken", snap.display()));
    assert_eq!(fs::read(&broken).unwrap(), tampered);
    expect(0, &[OsStr::new("verify"), d]);

    // Each key is either right or lost with the damaged block; no value was invented; the log
    // after the snapshot still applied (the rewrites of keys 5, 150 and 299 and the new keys).
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    let got = contents(&db);
    db.close().unwrap();
    for (k, v) in &got {
        assert_eq!(model.get(k), Some(v), "key {:?}", String::from_utf8_lossy(k));
    }
    let lost = model.len() - got.len();
    assert!(
        lost > 0 && lost < 100,
        "one block's entries are lost, not the whole snapshot: {lost}"
    );
    for i in [5usize, 150, 299, n, n + 19] {
        assert_eq!(got.get(&put_kv(i).0), model.get(&put_kv(i).0), "key {i}");
    }
    assert!(
        !got.contains_key(&put_kv(7).0),
        "the delete after the snapshot still applies"
    );
    // Repair counts the damaged block's entries; a few of them were rewritten after it.
    let printed: usize = out
        .split(" entries lost")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("repair does not count the entries lost:\n{out}"));
    assert!(
        (lost..=lost + 3).contains(&printed),
        "printed {printed}, lost {lost}:\n{out}"
    );
}

#[test]
fn demo_and_bench_run() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = expect(
        0,
        &[
            OsStr::new("demo"),
            p(&dir),
            OsStr::new("--sessions"),
            OsStr::new("2000"),
            OsStr::new("--threads"),
            OsStr::new("4"),
        ],
    );
    for want in [
        "durable writes/s",
        "commit groups",
        "fsyncs",
        "reopened in",
        "0 missing or wrong",
    ] {
        assert!(out.contains(want), "demo output lacks {want:?}:\n{out}");
    }
    let bench_dir = tmp.path().join("bench");
    let out = expect(
        0,
        &[
            OsStr::new("bench"),
            p(&bench_dir),
            OsStr::new("--seconds"),
            OsStr::new("0.2"),
            OsStr::new("--threads"),
            OsStr::new("2"),
            OsStr::new("--sync"),
            OsStr::new("never"),
        ],
    );
    for want in [
        "| workload",
        "write (2 threads)",
        "read (2 threads)",
        "recovery (log replay)",
        "recovery (snapshot)",
    ] {
        assert!(out.contains(want), "bench output lacks {want:?}:\n{out}");
    }
}

// ---------------------------------------------------------------------------------------------
// A store open in another process

fn child_key(t: usize, i: u64) -> Vec<u8> {
    format!("w{t}/{i:08}").into_bytes()
}

fn counter_key(t: usize) -> Vec<u8> {
    format!("w{t}/counter").into_bytes()
}

/// Child side: write batches from several threads until stdin closes.
fn writer_child(dir: &str) {
    let options = small_options().checkpoint_log_bytes(128 * 1024);
    let db = Arc::new(Db::open_with(Path::new(dir), options).expect("child open"));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut b = Batch::new();
                    b.put(child_key(t, i), format!("value {i} of writer {t}"));
                    b.put(counter_key(t), i.to_string());
                    db.write(b).unwrap();
                    i += 1;
                    if t == 0 && i == 50 {
                        println!("READY");
                        std::io::stdout().flush().unwrap();
                    }
                }
            })
        })
        .collect();
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    match Arc::try_unwrap(db) {
        Ok(db) => db.close().unwrap(),
        Err(_) => panic!("a writer still holds the store"),
    }
    println!("CLOSED");
}

fn spawn_writer(dir: &Path) -> (Child, ChildOutput) {
    let env = [(CHILD_DIR_VAR, dir.as_os_str())];
    let (child, mut out) = spawn_test("tool_works_on_a_store_another_process_writes", &env, Stdio::piped());
    out.wait_for("READY");
    (child, out)
}

/// A state of the child's store is consistent when, per writer, it holds keys `0..n` and
/// counter `n - 1` (each batch whole, nothing after a hole). Returns the `n`s.
fn assert_consistent(state: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) -> Vec<u64> {
    (0..WRITERS)
        .map(|t| {
            let prefix = format!("w{t}/0");
            let ids: BTreeSet<u64> = state
                .keys()
                .filter(|k| k.starts_with(prefix.as_bytes()))
                .map(|k| std::str::from_utf8(&k[3..]).unwrap().parse().unwrap())
                .collect();
            let n = ids.len() as u64;
            assert_eq!(ids, (0..n).collect(), "{what}: writer {t}'s keys have a hole");
            for i in 0..n {
                assert_eq!(
                    state[&child_key(t, i)],
                    format!("value {i} of writer {t}").into_bytes(),
                    "{what}: writer {t} key {i}"
                );
            }
            let counter = state
                .get(&counter_key(t))
                .map(|c| String::from_utf8(c.clone()).unwrap());
            let want = n.checked_sub(1).map(|c| c.to_string());
            assert_eq!(counter, want, "{what}: writer {t}'s counter disagrees with its keys");
            n
        })
        .collect()
}

fn dump_state(dump: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    dump.lines()
        .map(|l| {
            let v = json(l);
            assert_eq!(v["key_encoding"], "utf8");
            (
                v["key"].as_str().unwrap().as_bytes().to_vec(),
                v["value"].as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

#[test]
fn tool_works_on_a_store_another_process_writes() {
    if let Ok(dir) = std::env::var(CHILD_DIR_VAR) {
        writer_child(&dir);
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("live");
    let (mut child, mut child_out) = spawn_writer(&dir);
    let d = p(&dir);
    let mut backups = Vec::new();
    let mut last_counts = vec![0u64; WRITERS];
    // Rounds go on until the child has checkpointed (and so rolled and deleted segments) at
    // least twice while the tool was reading: the concurrency under test really happened.
    let mut checkpoints_seen = BTreeSet::new();
    let mut round = 0;
    while round < 6 || (checkpoints_seen.len() < 3 && round < 60) {
        round += 1;
        // Verify reads a consistent prefix of a store that rolls and checkpoints under it.
        let v = json(&expect(0, &[OsStr::new("verify"), d, OsStr::new("--json")]));
        assert_eq!(v["intact"], true, "round {round}: {v}");
        let stats = json(&expect(0, &[OsStr::new("stats"), d, OsStr::new("--json")]));
        checkpoints_seen.insert(stats["last_checkpoint_seq"].as_u64().unwrap_or(0));
        let counts = assert_consistent(&dump_state(&expect(0, &[OsStr::new("dump"), d])), "dump");
        for (t, (&c, last)) in counts.iter().zip(&mut last_counts).enumerate() {
            assert!(c >= *last, "round {round}: writer {t} went back from {last} to {c}");
            *last = c;
        }
        if round % 3 == 1 {
            let backup = tmp.path().join(format!("backup-{round}"));
            expect(0, &[OsStr::new("backup"), d, p(&backup)]);
            backups.push(backup);
        }
        // Writing subcommands are refused while the store is open elsewhere.
        let out = run(&[OsStr::new("put"), d, OsStr::new("k"), OsStr::new("v")]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("locked"));
        let out = run(&[OsStr::new("repair"), d]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to repair"));
    }
    assert!(
        checkpoints_seen.len() >= 3,
        "the child never checkpointed while the tool ran: {checkpoints_seen:?}"
    );
    drop(child.stdin.take());
    let rest = child_out.rest();
    assert!(child.wait().unwrap().success(), "child failed:\n{rest}");
    assert!(rest.contains("CLOSED"), "{rest}");
    expect(0, &[OsStr::new("verify"), d]);

    // Every backup is a consistent state, one snapshot and nothing else, and restores.
    for (i, backup) in backups.iter().enumerate() {
        assert_eq!(snapshot_files(backup).len(), 1);
        assert_eq!(fs::read_dir(backup.join("wal")).unwrap().count(), 0);
        let restored = tmp.path().join(format!("restored-{i}"));
        expect(0, &[OsStr::new("restore"), p(backup), p(&restored)]);
        let db = Db::open_with(&restored, small_options()).unwrap();
        let state = contents(&db);
        db.close().unwrap();
        assert_consistent(&state, &format!("backup {i}"));
        let b = Db::open_with(backup, small_options()).unwrap();
        assert_eq!(contents(&b), state, "restore copies the backup");
        b.close().unwrap();
    }
    // A restore never overwrites.
    expect(2, &[OsStr::new("restore"), p(&backups[0]), d]);
    expect(2, &[OsStr::new("backup"), d, p(&backups[0])]);
}

// ---------------------------------------------------------------------------------------------
// migrate-sessions: session payloads changed by external step programs

/// A closed store with sessions at payload versions 1 and 2: ids of `{"items": [...]}` at
/// version 1, a map session at version 1, and `{"lines": [...]}` at version 2.
fn session_store() -> (tempfile::TempDir, Vec<SessionId>, SessionId, Vec<SessionId>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open_with(dir.path(), small_options().quiet()).unwrap());
    let v1 = SessionStore::new(db.clone());
    let hour = std::time::Duration::from_secs(3600);
    let old: Vec<SessionId> = (0..3)
        .map(|i| v1.create(format!(r#"{{"items":["a{i}"]}}"#).as_bytes(), hour).unwrap())
        .collect();
    let mut m = SessionMap::new();
    m.insert("items", &vec!["m"]).unwrap();
    let map = v1.create_map(&m, hour).unwrap();
    let v2 = SessionStore::new(db.clone())
        .with_migrations(Migrations::new().payload_version(2))
        .unwrap();
    let new: Vec<SessionId> = (0..2)
        .map(|i| v2.create(format!(r#"{{"lines":["b{i}"]}}"#).as_bytes(), hour).unwrap())
        .collect();
    drop((v1, v2));
    Arc::try_unwrap(db).expect("last handle").close().unwrap();
    (dir, old, map, new)
}

/// Every session's (stored payload version, data), through the library, read as stored.
fn sessions_as_stored(dir: &Path) -> BTreeMap<SessionId, (u32, Vec<u8>)> {
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    let store = SessionStore::new(db);
    let all = store.stored_sessions(None, usize::MAX).unwrap();
    all.into_iter().map(|s| (s.id, (s.payload_version, s.data))).collect()
}

fn migrate(dir: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args = vec!["migrate-sessions".into(), dir.as_os_str().to_owned()];
    args.extend(extra.iter().map(|a| a.into()));
    args
}

#[test]
fn migrate_sessions_dry_run_counts_by_payload_version() {
    let _serial = serial();
    let (dir, ..) = session_store();
    let before = sessions_as_stored(dir.path());
    let out = expect(0, &migrate(dir.path(), &[]));
    assert!(out.contains("payload version 1: 4 session(s)"), "{out}");
    assert!(out.contains("payload version 2: 2 session(s)"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    let out = expect(0, &migrate(dir.path(), &["--to", "3"]));
    assert!(out.contains("dry run"), "--to without --step changes nothing: {out}");
    assert_eq!(sessions_as_stored(dir.path()), before, "a dry run changes no session");
}

#[test]
fn migrate_sessions_runs_each_step_program_once() {
    let _serial = serial();
    let (dir, old, map, new) = session_store();
    let started = dir.path().join("started");
    // Step 1 renames a field with sed; step 2 wraps each line with a shell loop and counts
    // its own starts.
    let step2 = format!(
        r#"2=echo x >> '{}'; while IFS= read -r l; do printf '%s\n' "{{\"v3\":$l}}"; done"#,
        started.display()
    );
    let out = expect(
        0,
        &migrate(
            dir.path(),
            &[
                "--to",
                "3",
                "--step",
                r#"1=sed -e 's/"items"/"lines"/'"#,
                "--step",
                &step2,
            ],
        ),
    );
    assert!(out.contains("migrated 6 session(s) to payload version 3"), "{out}");
    assert!(out.contains("step 1 -> 2: 4 session(s)"), "{out}");
    assert!(out.contains("step 2 -> 3: 6 session(s)"), "{out}");
    assert_eq!(fs::read_to_string(&started).unwrap(), "x\n", "step 2 started once");
    let after = sessions_as_stored(dir.path());
    for (i, id) in old.iter().enumerate() {
        let want = format!(r#"{{"v3":{{"lines":["a{i}"]}}}}"#);
        assert_eq!(after[id], (3, want.into_bytes()), "session {i} at version 1");
    }
    for (i, id) in new.iter().enumerate() {
        let want = format!(r#"{{"v3":{{"lines":["b{i}"]}}}}"#);
        assert_eq!(after[id], (3, want.into_bytes()), "session {i} at version 2");
    }
    // The map session went through as an object of its entries and came back a map.
    let db = Db::open_with(dir.path(), small_options().quiet()).unwrap();
    let store = SessionStore::new(db)
        .with_migrations(Migrations::new().payload_version(3))
        .unwrap();
    let m = store.load_map(&map).unwrap().unwrap();
    assert_eq!(m.stored_payload_version(), 3);
    assert_eq!(m.map.names().collect::<Vec<_>>(), ["v3"]);
    assert_eq!(
        m.map.get::<serde_json::Value>("v3").unwrap(),
        Some(serde_json::json!({"lines": ["m"]}))
    );
}

#[test]
fn migrate_sessions_refuses_while_the_store_is_open() {
    let _serial = serial();
    let (dir, ..) = session_store();
    let before = sessions_as_stored(dir.path());
    let db = Db::open_with(dir.path(), small_options().quiet()).unwrap();
    let out = run(&migrate(dir.path(), &["--to", "2", "--step", "1=cat"]));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains("another process"), "{err}");
    drop(db);
    assert_eq!(sessions_as_stored(dir.path()), before);
}

#[test]
fn migrate_sessions_step_with_the_wrong_number_of_lines_changes_nothing() {
    let _serial = serial();
    let (dir, ..) = session_store();
    let before = sessions_as_stored(dir.path());
    for (step, complaint) in [
        ("1=sed p", "printed 8 line(s) for 4 input line(s)"),
        ("1=head -n 1", "printed 1 line(s) for 4 input line(s)"),
        ("1=cat; exit 3", "failed: exit status: 3"),
        ("1=sed 's/^/x/'", "is not JSON"),
    ] {
        let out = run(&migrate(dir.path(), &["--to", "2", "--step", step]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{step}: {err}");
        assert!(
            err.contains(complaint) && err.contains("nothing changed"),
            "{step}: {err}"
        );
        assert_eq!(sessions_as_stored(dir.path()), before, "{step} changed the store");
    }
    // Steps that cannot bring every session to --to are refused before any runs.
    for args in [
        &["--to", "3", "--step", "2=cat"][..],                // nothing migrates version 1
        &["--to", "4", "--step", "1=cat", "--step", "3=cat"], // no step from 2
        &["--to", "1", "--step", "1=cat"],                    // a step that goes past --to
    ] {
        let out = run(&migrate(dir.path(), args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(sessions_as_stored(dir.path()), before);
}

/// A store of format version 1 (a fixture the version-1 engine wrote) says so in `stats`, a
/// write makes it mixed, and `sessiondb checkpoint` makes it all version 2 (docs/format.md,
/// "Changing the format"); `get` reads the same value before and after, `verify` finds it intact.
#[test]
fn checkpoint_upgrades_a_version_1_store() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v1/snapshot_and_log");
    support::copy_dir(&fixture, tmp.path());
    let d = p(tmp.path());
    let stats = json(&expect(0, &[OsStr::new("stats"), d, OsStr::new("--json")]));
    assert_eq!(
        (
            stats["format_version"].as_u64(),
            stats["oldest_format_version"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let text = expect(0, &[OsStr::new("stats"), d]);
    assert!(text.contains("format version:         1"), "{text}");
    let before = expect(0, &[OsStr::new("get"), d, OsStr::new("key-001")]);
    // A write goes into a segment of version 2; the version 1 files stay until a checkpoint.
    expect(0, &[OsStr::new("put"), d, OsStr::new("new"), OsStr::new("value")]);
    let text = expect(0, &[OsStr::new("stats"), d]);
    assert!(
        text.contains("2 (files of version 1 remain until the next checkpoint)"),
        "{text}"
    );
    expect(0, &[OsStr::new("checkpoint"), d]);
    let stats = json(&expect(0, &[OsStr::new("stats"), d, OsStr::new("--json")]));
    assert_eq!(
        (
            stats["format_version"].as_u64(),
            stats["oldest_format_version"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(expect(0, &[OsStr::new("get"), d, OsStr::new("key-001")]), before);
    let verified = json(&expect(0, &[OsStr::new("verify"), d, OsStr::new("--json")]));
    assert_eq!(verified["intact"], true, "{verified}");
}

/// A reader that goes away (`sessiondb stats DIR | head -1`) ends the tool quietly with status 0,
/// never a panic, for every command that prints: the pipe is closed before the tool writes.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let _serial = serial();
    let store = log_store(20);
    let d = p(store.path());
    for args in [
        vec![OsStr::new("stats"), d],
        vec![OsStr::new("stats"), d, OsStr::new("--json")],
        vec![OsStr::new("verify"), d],
        vec![OsStr::new("dump"), d],
        vec![OsStr::new("get"), d, OsStr::new("key0001")],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sessiondb");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for sessiondb");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 1),
            "{args:?}: {}: {stderr}",
            out.status
        );
    }
}
