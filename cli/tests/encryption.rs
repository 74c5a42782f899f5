//! The `sessiondb` tool and encrypted stores (issue 16): `--key-file`, `keygen`, `rotate-key`,
//! and `encrypt` / `decrypt`, which convert a closed store in place.
//!
//! Scenario: plain stores built through the library (many segments, a snapshot and log after
//! it, overwrites and deletes, keys with deadlines, one already expired, a 2 MiB value), every
//! key and value carrying a marker; converted by the real binary, and killed (SIGKILL) at each
//! step of a conversion.
//! Method: run the binary Cargo built (`CARGO_BIN_EXE_sessiondb`); read the stores back through
//! the library, with the key, without it and with another key; search every file for the
//! marker. The tool stops at a named step when `SESSIONDB_CONVERT_PAUSE_AT` says so and prints
//! `paused at STEP` on stderr; the test waits for that line (with a deadline, never a sleep)
//! and kills it there.
//! Invariant: after `encrypt`, no file of the store holds a marker byte sequence, and the store
//! opens with its key only, with every key, value and expiry deadline as before; `decrypt`
//! brings it back. Killed at any step, the store's directory opens as the whole original
//! (before the exchange) or the whole converted store (after it), and the next run deletes
//! what the crash left beside it. Every error is one line on stderr; a bad key file is a usage
//! error (exit 2).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sessiondb::{Db, EncryptionKey, Error, ManualClock, Options};
use support::{copy_dir, small_options, OptionsExt, WAIT_DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_sessiondb");
const PAUSE_VAR: &str = "SESSIONDB_CONVERT_PAUSE_AT";
const MARKER: &[u8] = b"PLAINMARKER";
/// The steps of a conversion, in order; the exchange comes after `copied`.
const STEPS: [&str; 7] = [
    "opened",
    "staging-created",
    "copying",
    "copied",
    "exchanged",
    "removing",
    "removed",
];

/// A spawned process holds copies of this process's open files (a store's lock included)
/// between its fork and its exec: the tests here run one at a time (see cli.rs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a store holds: every live key with its value and expiry deadline.
type State = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

fn state(db: &Db) -> State {
    let mut out = State::new();
    for entry in db.range::<&[u8], _>(..) {
        let (k, _) = entry.unwrap();
        let v = db.get_versioned(&k).unwrap().expect("a key the scan saw");
        out.insert(k, (v.value, v.expires_at_ms));
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn key(i: usize) -> Vec<u8> {
    format!("session:PLAINMARKER:{i:05}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    let mut v = format!("{{\"user\":{i},\"round\":{round},\"note\":\"PLAINMARKER\",\"pad\":\"").into_bytes();
    v.resize(200 + (i * 13) % 200, b'a' + (i % 26) as u8);
    v.extend_from_slice(b"\"}");
    v
}

/// A closed, plain store of `n` keys (and a few more) built through the library; returns what
/// it holds. With `big`, one value of 2 MiB too.
fn plain_store(dir: &Path, n: usize, big: bool) -> State {
    let db = Db::open_with(dir, small_options().quiet()).unwrap();
    for i in 0..n {
        match i % 3 {
            0 => db.put(key(i), value(i, 0)).unwrap(),
            _ => db
                .put_with_ttl(key(i), value(i, 0), Duration::from_secs(3600 * (1 + i as u64 % 5)))
                .unwrap(),
        }
    }
    for i in (0..n).step_by(7) {
        db.delete(key(i)).unwrap();
    }
    db.checkpoint().unwrap();
    for i in (1..n).step_by(5) {
        db.put(key(i), value(i, 1)).unwrap();
    }
    db.close().unwrap();

    // An entry whose deadline has passed: written on a clock a day behind.
    let clock = ManualClock::new(now_ms() - 86_400_000);
    let db = Db::open_with(dir, small_options().quiet().manual_clock(&clock)).unwrap();
    db.put_with_ttl(b"expired:PLAINMARKER", value(0, 9), Duration::from_secs(3600))
        .unwrap();
    db.close().unwrap();

    if big {
        let options = Options::new().quiet().value_size_max(3 << 20).segment_size(8 << 20);
        let db = Db::open_with(dir, options).unwrap();
        let mut v = b"PLAINMARKER".repeat(16);
        v.resize(2 << 20, b'z');
        db.put_with_ttl(b"big:PLAINMARKER", v, Duration::from_secs(7200))
            .unwrap();
        db.close().unwrap();
    }
    let db = Db::open(dir).unwrap();
    let s = state(&db);
    db.close().unwrap();
    assert!(
        !s.contains_key(&b"expired:PLAINMARKER"[..]),
        "expired entries read as absent"
    );
    assert!(s.len() > n / 2);
    assert!(
        !marker_files(dir).is_empty(),
        "the plain store holds the marker in clear"
    );
    s
}

fn read_key(path: &Path) -> EncryptionKey {
    EncryptionKey::from_key_file_contents(&fs::read(path).unwrap()).unwrap()
}

fn with_key(key_file: &Path) -> Options {
    Options::new().encryption_key(read_key(key_file))
}

/// Opens the store with `options`, reads it, closes it.
fn open_state(dir: &Path, options: Options) -> sessiondb::Result<State> {
    let db = Db::open_with(dir, options)?;
    let s = state(&db);
    db.close()?;
    Ok(s)
}

/// Every file under `dir` that holds [`MARKER`].
fn marker_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if fs::read(e.path()).unwrap().windows(MARKER.len()).any(|w| w == MARKER) {
                found.push(e.path());
            }
        }
    }
    found
}

/// The staging directories of conversions next to `dir`.
fn leftovers(dir: &Path) -> Vec<OsString> {
    let mut prefix = OsString::from(".");
    prefix.push(dir.file_name().unwrap());
    prefix.push(".convert-");
    let prefix = prefix.into_string().unwrap();
    fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(&prefix))
        .collect()
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SESSIONDB_KEY_FILE")
        .env_remove(PAUSE_VAR)
        .stdin(Stdio::null())
        .output()
        .expect("run sessiondb")
}

/// Runs the tool and asserts its exit code; returns stdout and stderr.
fn expect<S: AsRef<OsStr>>(code: i32, args: &[S]) -> (String, String) {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    assert_eq!(
        out.status.code(),
        Some(code),
        "sessiondb {args:?}: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Asserts the tool failed with `code` and one line on stderr that contains every `want`.
fn expect_one_line<S: AsRef<OsStr>>(code: i32, args: &[S], want: &[&str]) -> String {
    let (_, stderr) = expect(code, args);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr:\n{stderr}");
    for w in want {
        assert!(stderr.contains(w), "stderr lacks {w:?}:\n{stderr}");
    }
    stderr
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

/// A new key file at `path`, written by `sessiondb keygen`.
fn keygen(path: &Path) -> PathBuf {
    expect(0, &[os("keygen"), p(path)]);
    path.to_path_buf()
}

fn convert(what: &str, dir: &Path, key_file: &Path) -> String {
    expect(0, &[os(what), p(dir), os("--key-file"), p(key_file)]).0
}

fn assert_plain(dir: &Path, expected: &State) {
    assert_eq!(&open_state(dir, Options::new()).unwrap(), expected, "the plain store");
}

fn assert_encrypted(dir: &Path, key_file: &Path, expected: &State) {
    assert_eq!(
        &open_state(dir, with_key(key_file)).unwrap(),
        expected,
        "the encrypted store, opened with its key"
    );
    match open_state(dir, Options::new()) {
        Err(e @ Error::KeyRequired { .. }) => assert!(e.to_string().contains("encrypted"), "{e}"),
        other => panic!("opened without its key: {other:?}"),
    }
    assert!(dir.join("KEYRING").exists(), "an encrypted store has a keyring");
    assert_eq!(marker_files(dir), Vec::<PathBuf>::new(), "files holding plain bytes");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn encrypt_then_decrypt_keeps_every_key_value_and_deadline() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expected = plain_store(&dir, 1500, true);
    let k = keygen(&tmp.path().join("store.key"));

    let out = convert("encrypt", &dir, &k);
    assert!(out.contains(&format!("{} keys", expected.len())), "{out}");
    assert!(out.contains("free blocks"), "the report warns of the old bytes:\n{out}");
    assert_encrypted(&dir, &k, &expected);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // Another key is refused, by the library and by the tool.
    let wrong = keygen(&tmp.path().join("wrong.key"));
    match open_state(&dir, with_key(&wrong)) {
        Err(e @ Error::WrongKey { .. }) => assert!(e.to_string().contains("wrong encryption key"), "{e}"),
        other => panic!("opened with another key: {other:?}"),
    }
    convert("decrypt", &dir, &k);
    assert_plain(&dir, &expected);
    assert!(!dir.join("KEYRING").exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    match open_state(&dir, with_key(&k)) {
        Err(Error::NotEncrypted { .. }) => {}
        other => panic!("a key was taken for a plain store: {other:?}"),
    }
}

/// Runs `args` with the pause hook at `step`; returns the child, stopped there.
fn spawn_paused(args: &[&OsStr], step: &str) -> (Child, Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env(PAUSE_VAR, step)
        .env_remove("SESSIONDB_KEY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sessiondb");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let want = format!("paused at {step}");
    loop {
        match rx.recv_timeout(WAIT_DEADLINE) {
            Ok(line) if line.contains(&want) => return (child, rx),
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("sessiondb {args:?} ended before {step}: {:?}\n{seen}", child.wait())
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("sessiondb {args:?} did not reach {step} in {WAIT_DEADLINE:?}\n{seen}")
            }
        }
    }
}

/// Converts a copy of `template` (whose state is `plain`, or, `encrypted`, under `k`) and kills
/// the tool at each step in turn; checks what the directory holds after each, and that the next
/// run finishes the job.
fn kill_at_every_step(what: &str, template: &Path, k: &Path, expected: &State) {
    let encrypting = what == "encrypt";
    for (i, step) in STEPS.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        copy_dir(template, &dir);
        let (mut child, _stderr) = spawn_paused(&[os(what), p(&dir), os("--key-file"), p(k)], step);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), None, "{what} killed at {step}: {status}");

        let exchanged = i > STEPS.iter().position(|s| *s == "copied").unwrap();
        let encrypted_now = exchanged == encrypting;
        if encrypted_now {
            assert_encrypted(&dir, k, expected);
        } else {
            assert_plain(&dir, expected);
        }
        let staged = !matches!(*step, "opened" | "removed");
        assert_eq!(
            leftovers(&dir).len(),
            usize::from(staged),
            "after {step}: {:?}",
            leftovers(&dir)
        );

        // The next run deletes what was left and converts, or says it is done.
        let args = [os(what), p(&dir), os("--key-file"), p(k)];
        if exchanged {
            let done = if encrypting {
                "already encrypted"
            } else {
                "not encrypted"
            };
            let (out, err) = expect(1, &args);
            assert!(err.contains(done), "after {step}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            if staged {
                assert!(out.contains("removed"), "after {step}, the leftover is reported: {out}");
            }
        } else {
            expect(0, &args);
        }
        assert!(
            leftovers(&dir).is_empty(),
            "after {step} and a rerun: {:?}",
            leftovers(&dir)
        );
        if encrypting {
            assert_encrypted(&dir, k, expected);
        } else {
            assert_plain(&dir, expected);
        }
    }
}

#[test]
fn encrypt_killed_at_any_step_leaves_the_whole_original_or_the_whole_encrypted_store() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    // Over 1 MiB of entries: the copy takes more than one batch, so `copying` is mid-copy.
    let expected = plain_store(&template, 5000, false);
    let k = keygen(&tmp.path().join("store.key"));
    kill_at_every_step("encrypt", &template, &k, &expected);
}

#[test]
fn decrypt_killed_at_any_step_leaves_the_whole_encrypted_or_the_whole_plain_store() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let expected = plain_store(&template, 5000, false);
    let k = keygen(&tmp.path().join("store.key"));
    convert("encrypt", &template, &k);
    kill_at_every_step("decrypt", &template, &k, &expected);
}

#[test]
fn a_paused_conversion_resumes_when_its_input_closes() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expected = plain_store(&dir, 5000, false);
    let k = keygen(&tmp.path().join("store.key"));
    let (mut child, _stderr) = spawn_paused(&[os("encrypt"), p(&dir), os("--key-file"), p(&k)], "copying");
    // While it runs, the store is locked: another conversion is refused, its staging directory
    // left alone.
    let (_, err) = expect(1, &[os("encrypt"), p(&dir), os("--key-file"), p(&k)]);
    assert!(err.contains("locked"), "{err}");
    assert_eq!(leftovers(&dir).len(), 1);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_encrypted(&dir, &k, &expected);
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn conversions_refuse_what_they_cannot_do_in_one_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expected = plain_store(&dir, 50, false);
    let k = keygen(&tmp.path().join("store.key"));

    // No key: a usage error.
    let (_, err) = expect(2, &[os("encrypt"), p(&dir)]);
    assert!(err.contains("--key-file"), "{err}");
    // Not a store: a usage error.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    expect_one_line(
        2,
        &[os("encrypt"), p(&empty), os("--key-file"), p(&k)],
        &["not a sessiondb store"],
    );
    // Open elsewhere (here, in this process).
    let db = Db::open(&dir).unwrap();
    let (_, err) = expect(1, &[os("encrypt"), p(&dir), os("--key-file"), p(&k)]);
    assert!(err.contains("locked"), "{err}");
    db.close().unwrap();
    // Something in the directory that is not the store's: it would be lost.
    fs::write(dir.join("notes.txt"), b"mine").unwrap();
    expect_one_line(
        1,
        &[os("encrypt"), p(&dir), os("--key-file"), p(&k)],
        &["notes.txt", "not part of the store"],
    );
    fs::remove_file(dir.join("notes.txt")).unwrap();
    // A staging directory whose process runs (this test's) is left alone.
    let mut running = OsString::from(".store.convert-");
    running.push(std::process::id().to_string());
    fs::create_dir(tmp.path().join(&running)).unwrap();
    let (out, _) = expect(0, &[os("encrypt"), p(&dir), os("--key-file"), p(&k)]);
    assert!(out.contains("left alone"), "{out}");
    assert_eq!(leftovers(&dir), vec![running.clone()]);
    fs::remove_dir(tmp.path().join(&running)).unwrap();
    assert_encrypted(&dir, &k, &expected);
}

#[test]
fn converting_twice_the_same_way_is_refused_in_one_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expected = plain_store(&dir, 50, false);
    let k = keygen(&tmp.path().join("store.key"));
    expect_one_line(
        1,
        &[os("decrypt"), p(&dir), os("--key-file"), p(&k)],
        &["not encrypted", "nothing to decrypt"],
    );
    assert_plain(&dir, &expected);
    convert("encrypt", &dir, &k);
    expect_one_line(
        1,
        &[os("encrypt"), p(&dir), os("--key-file"), p(&k)],
        &["already encrypted"],
    );
    let wrong = keygen(&tmp.path().join("wrong.key"));
    expect_one_line(
        1,
        &[os("decrypt"), p(&dir), os("--key-file"), p(&wrong)],
        &["wrong encryption key"],
    );
    assert_encrypted(&dir, &k, &expected);
}

#[test]
fn a_bad_key_file_is_a_usage_error_in_one_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty", Vec::new(), "empty"),
        ("short", b"0011".to_vec(), "64 characters"),
        ("not-hex", "zz".repeat(32).into_bytes(), "0-9, a-f"),
        ("binary", vec![0xff; 12], "32 raw bytes"),
        ("long", [hex, "0"].concat().into_bytes(), "64 characters"),
        ("huge", vec![b'0'; 100_000], "bytes"),
    ];
    for (name, contents, why) in cases {
        let path = tmp.path().join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        expect_one_line(
            2,
            &[os("put"), p(&dir), os("k"), os("v"), os("--key-file"), p(&path)],
            &[name, "not a usable key file", why],
        );
    }
    let missing = tmp.path().join("missing");
    expect_one_line(
        2,
        &[os("stats"), p(&dir), os("--key-file"), p(&missing)],
        &["missing", "No such file"],
    );
    expect_one_line(
        2,
        &[os("stats"), p(&dir), os("--key-file"), p(tmp.path())],
        &["directory"],
    );
    assert!(!dir.exists(), "no store was created with a bad key");

    // SESSIONDB_KEY_FILE stands for --key-file.
    let out = Command::new(BIN)
        .args([os("put"), p(&dir), os("k"), os("v")])
        .env("SESSIONDB_KEY_FILE", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    // Good files: hex with a newline (or CRLF), 32 raw bytes; one others can read is warned of.
    let good: [(&str, Vec<u8>); 3] = [
        ("hex-newline", format!("{hex}\n").into_bytes()),
        ("hex-crlf", format!("{hex}\r\n").into_bytes()),
        ("raw", EncryptionKey::from_hex(hex).unwrap().as_bytes().to_vec()),
    ];
    for (i, (name, contents)) in good.into_iter().enumerate() {
        let path = tmp.path().join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let (_, err) = expect(
            0,
            &[
                os("put"),
                p(&dir),
                os(&format!("k{i}")),
                os("v"),
                os("--key-file"),
                p(&path),
            ],
        );
        assert_eq!(err, "", "{name}");
    }
    let readable = tmp.path().join("readable");
    fs::write(&readable, hex).unwrap();
    fs::set_permissions(&readable, fs::Permissions::from_mode(0o644)).unwrap();
    let (_, err) = expect(
        0,
        &[os("put"), p(&dir), os("k"), os("v"), os("--key-file"), p(&readable)],
    );
    assert!(err.contains("warning") && err.contains("0644"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_file_and_prints_no_key() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let (out, _) = expect(0, &[os("keygen"), p(&path)]);
    let written = fs::read_to_string(&path).unwrap();
    assert_eq!(written.len(), 65, "{written:?}");
    assert!(written.ends_with('\n'));
    assert!(written.trim_end().bytes().all(|b| b.is_ascii_hexdigit()), "{written:?}");
    assert!(!out.contains(written.trim_end()), "the key was printed:\n{out}");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    EncryptionKey::from_key_file_contents(written.as_bytes()).unwrap();

    // Never over an existing file.
    expect_one_line(2, &[os("keygen"), p(&path)], &["already exists"]);
    assert_eq!(fs::read_to_string(&path).unwrap(), written);
    // No path: only with --stdout, and then the key is all it prints.
    expect(2, &[os("keygen")]);
    let (printed, _) = expect(0, &[os("keygen"), os("--stdout")]);
    assert_eq!(printed.len(), 65);
    assert_ne!(printed, written, "two keys differ");
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("k")], "no temporary file is left");
}

#[test]
fn rotate_key_moves_the_store_to_the_new_key() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expected = plain_store(&dir, 200, false);
    let k1 = keygen(&tmp.path().join("k1"));
    let k2 = keygen(&tmp.path().join("k2"));
    convert("encrypt", &dir, &k1);
    expect_one_line(
        2,
        &[
            os("rotate-key"),
            p(&dir),
            os("--key-file"),
            p(&k1),
            os("--new-key-file"),
            p(&k1),
        ],
        &["same key"],
    );
    expect(
        0,
        &[
            os("rotate-key"),
            p(&dir),
            os("--key-file"),
            p(&k1),
            os("--new-key-file"),
            p(&k2),
        ],
    );
    assert_encrypted(&dir, &k2, &expected);
    assert!(matches!(open_state(&dir, with_key(&k1)), Err(Error::WrongKey { .. })));
    expect_one_line(
        1,
        &[
            os("rotate-key"),
            p(&dir),
            os("--key-file"),
            p(&k1),
            os("--new-key-file"),
            p(&k2),
        ],
        &["wrong encryption key"],
    );
}

/// Every subcommand that opens a store takes the key, and without it says the store is
/// encrypted, in one line.
#[test]
fn every_subcommand_reads_and_writes_an_encrypted_store_with_its_key() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut expected = plain_store(&dir, 200, false);
    let k = keygen(&tmp.path().join("store.key"));
    let kf = [os("--key-file"), p(&k)];
    let with = |args: &[&OsStr]| -> Vec<OsString> { args.iter().chain(&kf).map(|a| a.to_os_string()).collect() };
    convert("encrypt", &dir, &k);

    let nokey_backup = tmp.path().join("nokey-backup");
    let without: [Vec<&OsStr>; 9] = [
        vec![os("stats"), p(&dir)],
        vec![os("dump"), p(&dir)],
        vec![os("get"), p(&dir), os("k")],
        vec![os("put"), p(&dir), os("k"), os("v")],
        vec![os("delete"), p(&dir), os("k")],
        vec![os("checkpoint"), p(&dir)],
        vec![os("backup"), p(&dir), p(&nokey_backup)],
        vec![os("repair"), p(&dir)],
        vec![os("migrate-sessions"), p(&dir)],
    ];
    for args in &without {
        expect_one_line(1, args, &["encrypted", "--key-file"]);
    }
    // verify says what the store is without its key: frames and checksums checked, values not
    // authenticated, exit 0 when nothing is damaged.
    let (out, _) = expect(0, &[os("verify"), p(&dir)]);
    assert!(out.contains("encrypted (format version 3)"), "{out}");
    assert!(out.contains("not authenticated"), "{out}");

    let wrong = keygen(&tmp.path().join("wrong.key"));
    let some_key = OsString::from_vec(key(1));
    expect_one_line(
        1,
        &[os("get"), p(&dir), &some_key, os("--key-file"), p(&wrong)],
        &["wrong encryption key"],
    );
    let (value, _) = expect(0, &with(&[os("get"), p(&dir), &some_key]));
    assert_eq!(value.as_bytes(), [&expected[&key(1)].0[..], b"\n"].concat());
    expect(
        0,
        &with(&[os("put"), p(&dir), os("new"), os("value"), os("--ttl"), os("1h")]),
    );
    let (v, _) = expect(0, &with(&[os("get"), p(&dir), os("new")]));
    assert_eq!(v, "value\n");
    expect(0, &with(&[os("delete"), p(&dir), os("new")]));
    expect(1, &with(&[os("get"), p(&dir), os("new")]));
    let (dump, _) = expect(0, &with(&[os("dump"), p(&dir)]));
    assert_eq!(dump.lines().count(), expected.len());
    let (stats, _) = expect(0, &with(&[os("stats"), p(&dir), os("--json")]));
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["keys"], expected.len() as u64);
    assert_eq!(stats["format_version"], 3);
    expect(0, &with(&[os("verify"), p(&dir)]));
    expect(0, &with(&[os("checkpoint"), p(&dir)]));
    expect(0, &with(&[os("repair"), p(&dir)]));
    expect(0, &with(&[os("migrate-sessions"), p(&dir)]));

    let backup = tmp.path().join("backup");
    expect(0, &with(&[os("backup"), p(&dir), p(&backup)]));
    assert_encrypted(&backup, &k, &expected);
    let restored = tmp.path().join("restored");
    expect(0, &with(&[os("restore"), p(&backup), p(&restored)]));
    assert_encrypted(&restored, &k, &expected);

    // New stores made with a key are encrypted.
    let demo = tmp.path().join("demo");
    expect(
        0,
        &with(&[
            os("demo"),
            p(&demo),
            os("--sessions"),
            os("200"),
            os("--threads"),
            os("2"),
        ]),
    );
    assert!(matches!(
        open_state(&demo, Options::new()),
        Err(Error::KeyRequired { .. })
    ));
    let bench = tmp.path().join("bench");
    expect(
        0,
        &with(&[
            os("bench"),
            p(&bench),
            os("--seconds"),
            os("0.05"),
            os("--threads"),
            os("1"),
            os("--sync"),
            os("never"),
        ]),
    );
    assert!(matches!(
        open_state(&bench, Options::new()),
        Err(Error::KeyRequired { .. })
    ));

    expect(0, &with(&[os("put"), p(&dir), os("after"), os("all")]));
    expected.insert(b"after".to_vec(), (b"all".to_vec(), None));
    assert_encrypted(&dir, &k, &expected);
}
