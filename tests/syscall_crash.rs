//! Power-loss states built from the system calls the engine really made.
//!
//! Scenario: a child process (this test binary, re-executed under `strace -f`) runs a seeded
//! workload from three threads on a new store in `ROOT/db/store` (the two directories created by
//! the open): puts, TTL puts, deletes and batches on each thread's own keys, explicit checkpoints
//! among them, automatic checkpoints every 256 KiB of log, 96 KiB segments so the log rolls ten
//! times or more, a segment preallocated ahead, `SyncMode::Always`; then a clean close. Before each
//! operation a thread writes `I t i` to `ROOT/markers` with a plain write(2), after it returns
//! `Ok` `A t i`; the trace holds both in order with everything the engine asked of the kernel.
//! Method: `support::syscalls` parses the trace into effects on inodes. Coverage first: replaying
//! every effect must rebuild the store byte for byte as the child left it. Then for crash points
//! after any call (the structural ones first: creates, renames, unlinks, size changes, directory
//! fsyncs, writes near a file's start; the others sampled) the states a power loss may leave
//! under strict POSIX and under ext4 `data=ordered` (nothing unsynced, everything, every unsynced
//! write with its first sector lost, random choices with torn sectors) are written out as real
//! files and opened with varying options (those written with, the defaults, a larger and a
//! smaller `segment_size`, other sync modes, `Salvage`; a torn state always with another
//! segment size); one more write, a close, and an open with other options again. Bounded by `SESSIONDB_SYSCALL_SECS` (default 40, the traced run
//! included).
//! Invariant: every open succeeds; each thread's keys equal its model after its acknowledged
//! operations, or after one more if it had invoked it (nothing acknowledged lost, no value not
//! written, no partial batch); no other key exists; the last open finds the same plus the write
//! made after recovery.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::{Db, Options, RecoveryMode, SyncMode};
use support::child::ChildOutput;
use support::syscalls::{self, crash_state, durable_tree, Durability, Effect, Keep, Model, Pick, Trace};
use support::{batch_of, mix64, seeded, small_options, PutOrDelete, Rng};

const TEST: &str = "syscall_crash_states";
const THREADS: usize = 3;
const OPS_PER_THREAD: u64 = 300;
const KEYS_PER_THREAD: u64 = 6;
/// The segment size written with: larger and smaller ones are among the reopen options.
const WRITTEN_SEGMENT: u64 = 96 * 1024;
const STORE: &str = "db/store";
const MARKERS: &str = "markers";
const AFTER_KEY: &[u8] = b"after-recovery";

const VAR_CHILD_ROOT: &str = "SESSIONDB_SYSCALL_CHILD_ROOT";
const VAR_CHILD_SEED: &str = "SESSIONDB_SYSCALL_CHILD_SEED";
/// Seconds for the whole test, the traced run included.
const VAR_SECS: &str = "SESSIONDB_SYSCALL_SECS";
/// A directory a failed run saved (trace, paths, final files): replayed instead of a new run.
const VAR_TRACE: &str = "SESSIONDB_SYSCALL_TRACE";
/// Only this crash point (debugging a saved trace).
const VAR_POINT: &str = "SESSIONDB_SYSCALL_POINT";

#[derive(Debug, Clone)]
enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, ttl: bool },
    Delete { key: Vec<u8> },
    Batch(Vec<PutOrDelete>),
    Checkpoint,
}

fn key(t: usize, j: u64) -> Vec<u8> {
    format!("t{t}-k{j}").into_bytes()
}

fn value(t: usize, i: u64, part: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = format!("t{t}-i{i}-p{part}-").into_bytes();
    let pad = rng.range(50, 1400) as usize;
    v.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, pad));
    v
}

/// Thread `t`'s `i`-th operation: the same in the child and the parent.
fn op(seed: u64, t: usize, i: u64) -> Op {
    let mut rng = Rng::new(mix64(seed ^ mix64(((t as u64) << 32) | i)));
    let r = rng.below(100);
    let checkpoint = rng.below(200) == 0;
    let k = key(t, rng.below(KEYS_PER_THREAD));
    match r {
        _ if checkpoint => Op::Checkpoint,
        0..=49 => Op::Put {
            key: k,
            value: value(t, i, 0, &mut rng),
            ttl: false,
        },
        50..=59 => Op::Put {
            key: k,
            value: value(t, i, 0, &mut rng),
            ttl: true,
        },
        60..=74 => Op::Delete { key: k },
        _ => {
            let n = rng.range(2, 4) as usize;
            let first = rng.below(KEYS_PER_THREAD);
            let entries = (0..n)
                .map(|part| {
                    let k = key(t, (first + part as u64) % KEYS_PER_THREAD);
                    let v = rng.chance(70).then(|| value(t, i, part, &mut rng));
                    (k, v)
                })
                .collect();
            Op::Batch(entries)
        }
    }
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(s: &mut State, op: &Op) {
    let mut set = |k: &Vec<u8>, v: &Option<Vec<u8>>| match v {
        Some(v) => {
            s.insert(k.clone(), v.clone());
        }
        None => {
            s.remove(k);
        }
    };
    match op {
        Op::Put { key, value, .. } => set(key, &Some(value.clone())),
        Op::Delete { key } => set(key, &None),
        Op::Batch(entries) => entries.iter().for_each(|(k, v)| set(k, v)),
        Op::Checkpoint => {}
    }
}

/// Each thread's keys after each prefix of its operations.
fn models(seed: u64) -> Vec<Vec<State>> {
    (0..THREADS)
        .map(|t| {
            let mut s = State::new();
            let mut out = vec![s.clone()];
            for i in 0..OPS_PER_THREAD {
                apply(&mut s, &op(seed, t, i));
                out.push(s.clone());
            }
            out
        })
        .collect()
}

fn written_options() -> Options {
    small_options()
        .segment_size(WRITTEN_SEGMENT)
        .checkpoint_log_bytes(256 * 1024)
}

/// The options a crash state is opened with.
#[derive(Debug, Clone, Copy)]
enum Reopen {
    Written,
    Defaults,
    LargerSegments,
    SmallerSegments,
    SyncNever,
    SyncInterval,
    Salvage,
}

const REOPENS: [Reopen; 7] = [
    Reopen::Written,
    Reopen::Defaults,
    Reopen::LargerSegments,
    Reopen::SmallerSegments,
    Reopen::SyncNever,
    Reopen::SyncInterval,
    Reopen::Salvage,
];

impl Reopen {
    fn options(self) -> Options {
        match self {
            Reopen::Written => written_options(),
            Reopen::Defaults => Options::new(),
            Reopen::LargerSegments => written_options().segment_size(1024 * 1024),
            Reopen::SmallerSegments => written_options().segment_size(64 * 1024),
            Reopen::SyncNever => written_options().sync_mode(SyncMode::Never),
            Reopen::SyncInterval => written_options().sync_mode(SyncMode::Interval(Duration::from_millis(5))),
            Reopen::Salvage => written_options().recovery_mode(RecoveryMode::Salvage),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child: the workload under strace.

fn mark(markers: &File, kind: char, t: usize, i: u64) {
    // One write(2) per line: the trace shows each marker as one call.
    (&*markers)
        .write_all(format!("{kind} {t} {i}\n").as_bytes())
        .expect("write a marker");
}

fn child_main(root: &Path, seed: u64) {
    let markers = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(MARKERS))
            .expect("create the marker file"),
    );
    let db = Arc::new(Db::open_with(root.join(STORE), written_options()).expect("the child opens the store"));
    println!("OPEN");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (db, markers) = (Arc::clone(&db), Arc::clone(&markers));
            std::thread::spawn(move || {
                for i in 0..OPS_PER_THREAD {
                    let op = op(seed, t, i);
                    mark(&markers, 'I', t, i);
                    let done = match &op {
                        Op::Put { key, value, ttl: false } => db.put(key, value),
                        Op::Put { key, value, ttl: true } => db.put_with_ttl(key, value, Duration::from_secs(3600)),
                        Op::Delete { key } => db.delete(key),
                        Op::Batch(entries) => db.write(batch_of(entries)),
                        Op::Checkpoint => db.checkpoint(),
                    };
                    if let Err(e) = done {
                        println!("ERR thread {t} op {i} ({op:?}): {e}");
                        std::process::exit(2);
                    }
                    mark(&markers, 'A', t, i);
                }
            })
        })
        .collect();
    for t in threads {
        support::joined("a writer of the traced workload", t);
    }
    let db = Arc::into_inner(db).expect("the writers are done with the store");
    db.close().expect("the child closes the store");
    println!("DONE");
}

// ---------------------------------------------------------------------------------------------
// The parent: record, check coverage, open crash states.

/// Where scratch stores go: memory when there is a tmpfs at /dev/shm with room (thousands of
/// opens; a state opened with the default options holds two 16 MiB segments), else the temp dir.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let free_kib = Command::new("df")
        .arg("-Pk")
        .arg(shm)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok()
        });
    if free_kib.is_some_and(|k| k >= 512 * 1024) && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Why this machine cannot record a run, if it cannot: strace missing, or not allowed to trace
/// (a container without `ptrace`).
fn cannot_trace() -> Option<String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    match Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null"])
        .arg(exe)
        .arg("--list")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Err(e) => Some(format!("strace is not installed ({e}); apt-get install strace")),
        Ok(out) if !out.status.success() => Some(format!(
            "strace cannot trace here ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// A recorded run: its trace, the root and working directory it ran in, and the files it left.
struct Recording {
    text: String,
    root: PathBuf,
    cwd: PathBuf,
    final_tree: BTreeMap<String, Option<Vec<u8>>>,
}

fn record(seed: u64, work: &Path) -> Recording {
    let root = work.join("run");
    fs::create_dir(&root).expect("create the run's root");
    let root = root.canonicalize().expect("canonical root");
    let trace_path = work.join("trace.txt");
    let cwd = std::env::current_dir().expect("the working directory");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-xx", "-s", "4194304", "-e", "signal=none"])
        .args(["-e", &format!("trace={}", syscalls::TRACED)])
        .arg("-o")
        .arg(&trace_path)
        .arg(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(VAR_CHILD_ROOT, &root)
        .env(VAR_CHILD_SEED, seed.to_string())
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strace");
    let mut out = ChildOutput::new(child.stdout.take().expect("the child's stdout is piped"));
    out.wait_for("DONE");
    out.rest();
    let status = child.wait().expect("wait for strace");
    assert!(status.success(), "the traced child failed ({status}):\n{}", out.seen());
    let text = fs::read_to_string(&trace_path).expect("read the trace");
    let final_tree = syscalls::read_tree(&root, &[MARKERS]).expect("read the files the child left");
    Recording {
        text,
        root,
        cwd,
        final_tree,
    }
}

/// Saves what replays a failure: the trace, its paths and the files the child left.
fn save(rec: &Recording, dir: &Path) {
    fs::create_dir_all(dir.join("final")).expect("create the artifacts directory");
    fs::write(dir.join("trace.txt"), &rec.text).expect("save the trace");
    fs::write(
        dir.join("paths.txt"),
        format!("{}\n{}\n", rec.root.display(), rec.cwd.display()),
    )
    .expect("save the paths");
    syscalls::materialize(&rec.final_tree, &dir.join("final"), None).expect("save the final files");
}

fn load(dir: &Path) -> Recording {
    let paths = fs::read_to_string(dir.join("paths.txt")).expect("paths.txt of a saved run");
    let mut lines = paths.lines();
    let root = PathBuf::from(lines.next().expect("the root"));
    let cwd = PathBuf::from(lines.next().expect("the working directory"));
    Recording {
        text: fs::read_to_string(dir.join("trace.txt")).expect("trace.txt of a saved run"),
        root,
        cwd,
        final_tree: syscalls::read_tree(&dir.join("final"), &[]).expect("the saved final files"),
    }
}

/// Replaying every effect must rebuild the files byte for byte: a call the parser missed or
/// misread shows here.
fn check_coverage(trace: &Trace, final_tree: &BTreeMap<String, Option<Vec<u8>>>) -> Result<(), String> {
    let mut replayed = durable_tree(trace, &vec![Keep::Yes; trace.calls.len()]);
    replayed.remove(MARKERS);
    let paths: HashSet<&String> = replayed.keys().chain(final_tree.keys()).collect();
    let mut paths: Vec<_> = paths.into_iter().collect();
    paths.sort();
    for p in paths {
        match (replayed.get(p), final_tree.get(p)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(Some(a)), Some(Some(b))) => {
                let at = a
                    .iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                return Err(format!(
                    "{p}: the replay has {} bytes, the disk {}; first difference at offset {at}",
                    a.len(),
                    b.len()
                ));
            }
            (a, b) => {
                return Err(format!(
                    "{p}: the replay has {a:?}, the disk {b:?}",
                    a = a.map(|x| x.is_some()),
                    b = b.map(|x| x.is_some())
                ))
            }
        }
    }
    Ok(())
}

/// When each thread's markers were written: its `I` markers' call indices, its `A` markers'
/// first trace lines.
struct Markers {
    invoked_at: Vec<Vec<usize>>,
    acked_line: Vec<Vec<usize>>,
}

impl Markers {
    fn new(trace: &Trace) -> Markers {
        let ino = trace.inode_named(MARKERS).expect("the trace creates the marker file");
        let mut m = Markers {
            invoked_at: vec![Vec::new(); THREADS],
            acked_line: vec![Vec::new(); THREADS],
        };
        for (n, c) in trace.calls.iter().enumerate() {
            let Effect::Write { ino: w, data, .. } = &c.effect else {
                continue;
            };
            if *w != ino {
                continue;
            }
            let line = String::from_utf8_lossy(data);
            let mut parts = line.split_whitespace();
            let (kind, t, i) = (parts.next(), parts.next(), parts.next());
            let t: usize = t.and_then(|t| t.parse().ok()).expect("a marker names its thread");
            let i: usize = i.and_then(|i| i.parse().ok()).expect("a marker names its operation");
            let list = match kind {
                Some("I") => &mut m.invoked_at[t],
                Some("A") => &mut m.acked_line[t],
                _ => panic!("unreadable marker {line:?}"),
            };
            assert_eq!(list.len(), i, "thread {t}'s markers out of order at {line:?}");
            list.push(if kind == Some("I") { n } else { c.entry });
        }
        m
    }

    /// For a crash after the first `p` calls: per thread, (acknowledged, invoked) operations.
    fn at(&self, trace: &Trace, p: usize) -> Vec<(usize, usize)> {
        let line = if p == 0 { 0 } else { trace.calls[p - 1].done };
        (0..THREADS)
            .map(|t| {
                let acked = if p == 0 {
                    0
                } else {
                    self.acked_line[t].partition_point(|&l| l <= line)
                };
                let invoked = self.invoked_at[t].partition_point(|&n| n < p);
                (acked, invoked)
            })
            .collect()
    }
}

fn show(s: &State) -> String {
    let v: Vec<String> = s
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&v[..v.len().min(16)])
            )
        })
        .collect();
    format!("{{{}}}", v.join(" "))
}

/// Every entry, by point reads of every key and a full scan, which must agree.
fn read_all(db: &Db) -> Result<State, String> {
    let mut scanned = State::new();
    for item in db.range::<&[u8], _>(..) {
        let (k, v) = item.map_err(|e| format!("a full scan failed: {e}"))?;
        scanned.insert(k, v);
    }
    for (k, v) in &scanned {
        let got = db
            .get(k)
            .map_err(|e| format!("get {}: {e}", String::from_utf8_lossy(k)))?;
        if got.as_ref() != Some(v) {
            return Err(format!(
                "key {}: the scan and a read disagree",
                String::from_utf8_lossy(k)
            ));
        }
    }
    for t in 0..THREADS {
        for j in 0..KEYS_PER_THREAD {
            let k = key(t, j);
            let got = db
                .get(&k)
                .map_err(|e| format!("get {}: {e}", String::from_utf8_lossy(&k)))?;
            if got.as_ref() != scanned.get(&k) {
                return Err(format!(
                    "key {}: a read and the scan disagree",
                    String::from_utf8_lossy(&k)
                ));
            }
        }
    }
    Ok(scanned)
}

/// The oracle: each thread's keys are its model after its acknowledged operations or one more
/// it had invoked; nothing else is there.
fn check_contents(got: &State, models: &[Vec<State>], progress: &[(usize, usize)]) -> Result<(), String> {
    for k in got.keys() {
        if !(0..THREADS).any(|t| (0..KEYS_PER_THREAD).any(|j| key(t, j) == *k)) {
            return Err(format!("a key no one wrote: {}", String::from_utf8_lossy(k)));
        }
    }
    for (t, &(acked, invoked)) in progress.iter().enumerate() {
        let prefix = format!("t{t}-");
        let mine: State = got
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let candidates = if invoked > acked {
            acked..=acked + 1
        } else {
            acked..=acked
        };
        if !candidates.clone().any(|m| models[t][m] == mine) {
            return Err(format!(
                "thread {t}: {acked} operations acknowledged, {invoked} invoked; recovered {}, expected {}{}",
                show(&mine),
                show(&models[t][acked]),
                if invoked > acked {
                    format!(" or {}", show(&models[t][acked + 1]))
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(())
}

/// Opens one crash state (already written under `dir`) with `first`, checks it, writes once
/// more, closes, and opens it again with `second`.
fn check_state(
    dir: &Path,
    models: &[Vec<State>],
    progress: &[(usize, usize)],
    first: Reopen,
    second: Reopen,
) -> Result<(), String> {
    let store = dir.join(STORE);
    let db = Db::open_with(&store, first.options()).map_err(|e| format!("open with {first:?} failed: {e}"))?;
    let got = read_all(&db).map_err(|e| format!("opened with {first:?}: {e}"))?;
    check_contents(&got, models, progress).map_err(|e| format!("opened with {first:?}: {e}"))?;
    db.put(AFTER_KEY, b"x")
        .map_err(|e| format!("a write after recovery with {first:?} failed: {e}"))?;
    db.close()
        .map_err(|e| format!("close after recovery with {first:?} failed: {e}"))?;
    let db = Db::open_with(&store, second.options())
        .map_err(|e| format!("after recovery with {first:?} and one write, open with {second:?} failed: {e}"))?;
    let mut again = read_all(&db).map_err(|e| format!("reopened with {second:?}: {e}"))?;
    let after = again.remove(AFTER_KEY);
    if after.as_deref() != Some(b"x") || again != got {
        return Err(format!(
            "reopened with {second:?} after recovery with {first:?}: the write after recovery {after:?}, \
             contents {} instead of {}",
            show(&again),
            show(&got)
        ));
    }
    db.close()
        .map_err(|e| format!("close after reopening with {second:?} failed: {e}"))
}

/// Calls after which a crash is most telling: metadata changes, directory fsyncs, and writes at
/// the start of a file (headers, a segment's first records).
fn structural(trace: &Trace, p: usize) -> bool {
    match &trace.calls[p - 1].effect {
        Effect::Create { .. } | Effect::Rename { .. } | Effect::Unlink { .. } | Effect::SetLen { .. } => true,
        Effect::Sync { ino, .. } => trace.inodes[*ino].1,
        Effect::Write { offset, ino, .. } => *offset < 4096 && trace.inodes[*ino].0 != MARKERS,
    }
}

fn describe(keep: &[Keep], trace: &Trace) -> String {
    let markers = trace.inode_named(MARKERS);
    let lost: Vec<String> = keep
        .iter()
        .zip(&trace.calls)
        .enumerate()
        .filter(|(_, (k, c))| {
            let on_markers = matches!(c.effect, Effect::Write { ino, .. } if Some(ino) == markers);
            **k != Keep::Yes && !on_markers
        })
        .map(|(n, (k, c))| match k {
            Keep::Sectors(mask) => format!(
                "#{n} {} torn (sectors kept: {})",
                c.what,
                mask.iter().map(|&b| if b { '1' } else { '0' }).collect::<String>()
            ),
            _ => format!("#{n} {} lost", c.what),
        })
        .collect();
    const SHOWN: usize = 24;
    match lost.len() {
        0 => "every call on the store kept".into(),
        n if n <= SHOWN => format!("{n} calls on the store lost or torn: {}", lost.join("; ")),
        n => format!(
            "{n} calls on the store lost or torn, the first {SHOWN}: {}; ...",
            lost[..SHOWN].join("; ")
        ),
    }
}

#[test]
fn syscall_crash_states() {
    if let Some(root) = std::env::var_os(VAR_CHILD_ROOT) {
        let seed = std::env::var(VAR_CHILD_SEED)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("the child's seed");
        child_main(Path::new(&root), seed);
        return;
    }
    let started = Instant::now();
    let (seed, _guard) = seeded(TEST);
    let secs: u64 = std::env::var(VAR_SECS).ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let deadline = started + Duration::from_secs(secs);
    let scratch = scratch();
    let work = tempfile::Builder::new()
        .prefix("sessiondb-syscalls-")
        .tempdir_in(&scratch)
        .expect("a scratch directory");
    let replaying = std::env::var_os(VAR_TRACE).map(PathBuf::from);
    let rec = match &replaying {
        Some(dir) => load(dir),
        None => match cannot_trace() {
            Some(why) => {
                eprintln!("{TEST}: SKIPPED, nothing checked: {why}");
                return;
            }
            None => record(seed, work.path()),
        },
    };
    let recorded = started.elapsed();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("syscall_crash-{seed}"));
    let trace = syscalls::parse(&rec.text, &rec.root, &rec.cwd).unwrap_or_else(|e| {
        save(&rec, &artifacts);
        panic!("the trace does not parse (saved in {}): {e}", artifacts.display())
    });
    if let Err(e) = check_coverage(&trace, &rec.final_tree) {
        save(&rec, &artifacts);
        panic!(
            "coverage: replaying every recorded call does not rebuild the store the child left, so \
             the recording or the parser missed a call (saved in {}): {e}",
            artifacts.display()
        );
    }
    let count = |f: &dyn Fn(&Effect) -> bool| trace.calls.iter().filter(|c| f(&c.effect)).count();
    let segments = count(&|e| matches!(e, Effect::Rename { to, .. } if to.ends_with(".wal")));
    let snapshots = count(&|e| matches!(e, Effect::Rename { to, .. } if to.ends_with(".snap")));
    assert!(
        segments >= 4 && snapshots >= 2,
        "the workload rolls segments ({segments} made) and checkpoints ({snapshots} snapshots)"
    );

    let models = models(seed);
    let markers = Markers::new(&trace);
    let dur = Durability::new(&trace);
    let mut rng = Rng::new(mix64(seed ^ 0x5ca1));
    let n = trace.calls.len();
    let (mut telling, mut rest): (Vec<usize>, Vec<usize>) = (1..=n).partition(|&p| structural(&trace, p));
    for v in [&mut telling, &mut rest] {
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let structural_points = telling.len();
    // Structural points first, interleaved with the others, two to one.
    let mut points = Vec::with_capacity(n);
    let (mut a, mut b) = (telling.into_iter(), rest.into_iter());
    loop {
        let next: Vec<usize> = a.by_ref().take(2).chain(b.by_ref().take(1)).collect();
        if next.is_empty() {
            break;
        }
        points.extend(next);
    }
    if let Some(p) = std::env::var(VAR_POINT).ok().and_then(|s| s.parse::<usize>().ok()) {
        points = vec![p];
    }

    let picks = [
        Pick::Nothing,
        Pick::Everything,
        Pick::TornHeads,
        Pick::Random,
        Pick::Random,
    ];
    let mut states = [0u64; 2];
    let (mut examined, mut opens) = (0usize, 0u64);
    let mut violations: Vec<String> = Vec::new();
    'points: for &p in &points {
        if examined > 0 && Instant::now() >= deadline {
            break;
        }
        examined += 1;
        let progress = markers.at(&trace, p);
        let mut seen = HashSet::new();
        for (m, model) in [Model::Posix, Model::Ext4Ordered].into_iter().enumerate() {
            for pick in picks {
                let keep = crash_state(&trace, &dur, p, model, pick, &mut rng);
                let mut h = DefaultHasher::new();
                keep.hash(&mut h);
                if !seen.insert(h.finish()) {
                    continue;
                }
                states[m] += 1;
                let tree = durable_tree(&trace, &keep);
                let dir = tempfile::tempdir_in(&scratch).expect("a directory for a crash state");
                syscalls::materialize(&tree, dir.path(), Some("db")).expect("write a crash state");
                // A torn state meets recovery with another segment size: a store written with
                // one size and opened with another is where the bug of ca3c134 lived.
                let first = match (pick, model) {
                    (Pick::TornHeads, Model::Posix) => {
                        [Reopen::Defaults, Reopen::LargerSegments][rng.below(2) as usize]
                    }
                    (Pick::TornHeads, _) => {
                        [Reopen::Defaults, Reopen::LargerSegments, Reopen::SmallerSegments][rng.below(3) as usize]
                    }
                    _ => REOPENS[rng.below(REOPENS.len() as u64) as usize],
                };
                let second = REOPENS[rng.below(REOPENS.len() as u64) as usize];
                opens += 2;
                if let Err(e) = check_state(dir.path(), &models, &progress, first, second) {
                    let c = &trace.calls[p - 1];
                    let saved = artifacts.join(format!("state-{}", violations.len()));
                    syscalls::materialize(&tree, &saved, Some("db")).expect("save the crash state");
                    violations.push(format!(
                        "[{:.1} s] {model:?}, {pick:?}, crash after call #{} of {n} ({}, trace line {}); \
                         acknowledged/invoked per thread {progress:?}: {e}\n  state (saved in {}): {}",
                        started.elapsed().as_secs_f64(),
                        p - 1,
                        c.what,
                        c.done + 1,
                        saved.display(),
                        describe(&keep, &trace)
                    ));
                    if violations.len() >= 5 {
                        break 'points;
                    }
                }
            }
        }
    }
    println!(
        "{TEST}: seed {seed}; traced run {:.1} s: {} trace lines, {} traced calls, {} effects on the store \
         ({segments} segments, {snapshots} snapshots made), coverage replay byte-identical; \
         crash points {examined} of {n} examined ({structural_points} structural); states: {} POSIX, \
         {} ext4 data=ordered; {opens} opens; violations {}; {:.1} s in all",
        recorded.as_secs_f64(),
        trace.lines,
        trace.syscalls,
        n,
        states[0],
        states[1],
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    if !violations.is_empty() {
        if replaying.is_none() {
            save(&rec, &artifacts);
        }
        panic!(
            "{} crash states break the oracle (trace saved in {}; replay with {VAR_TRACE}={} \
             SESSIONDB_SEED={seed}):\n{}",
            violations.len(),
            artifacts.display(),
            artifacts.display(),
            violations.join("\n")
        );
    }
}
