//! Acknowledged writes survive `kill -9` of the writing process.
//!
//! Scenario: a child process (this test binary, re-executed) opens a store with 64 KiB
//! segments and a 64 KiB checkpoint threshold, so segment rolls and background checkpoints
//! happen while it writes; writer threads do puts and deletes and print one line per
//! acknowledged operation. The parent kills the child with SIGKILL after a seeded random
//! number of acknowledgements, reopens the store, checks it, and starts the next round on the
//! same directory. Rounds run in `SyncMode::Always` and, separately, in `SyncMode::Never`
//! (a process crash keeps the page cache, so even unsynced acknowledged writes survive).
//! Method: each thread owns its keys and its operations are a deterministic function of
//! (round seed, thread, index), so the parent knows every operation a thread acknowledged and
//! the one it may have had in flight.
//! Invariant: for each thread, the recovered state of its keys equals the state after its
//! first m operations, where m is its acknowledged count or one more (the operation in flight):
//! nothing acknowledged is lost and no value appears that was not written.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;

use sessiondb::{Db, Options, SyncMode};
use support::child::spawn_test;
use support::{seeded, small_options, splitmix64, Rng};

const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 4;
const OPS_PER_THREAD_MAX: u64 = 1_000_000;
const VALUE_PAD: usize = 300;

/// Serialises the two tests in this file. A child spawned by one test holds copies of this
/// process's open files between its fork and its exec, including another test's store lock, so
/// that test's close-then-reopen could meet a stale `Locked`; one test at a time avoids it.
static SERIAL: Mutex<()> = Mutex::new(());

const VAR_DIR: &str = "SESSIONDB_KILL9_DIR";
const VAR_ROUND: &str = "SESSIONDB_KILL9_ROUND";
const VAR_SEED: &str = "SESSIONDB_KILL9_ROUND_SEED";
const VAR_MODE: &str = "SESSIONDB_KILL9_MODE";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

fn key(t: usize, j: usize) -> Vec<u8> {
    format!("t{t}-k{j}").into_bytes()
}

/// The i-th operation of thread t in a round: the same in the child and the parent.
fn op(round_seed: u64, round: u64, t: usize, i: u64) -> Op {
    let mut s = round_seed ^ (t as u64).wrapping_mul(0x9E37_79B9) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut rng = Rng::new(splitmix64(&mut s));
    let key = key(t, rng.below(KEYS_PER_THREAD as u64) as usize);
    if rng.chance(25) {
        return Op::Delete { key };
    }
    let mut value = format!("r{round}-t{t}-i{i}-").into_bytes();
    let pad = rng.below(VALUE_PAD as u64) as usize;
    value.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, pad));
    Op::Put { key, value }
}

fn options(mode: SyncMode) -> Options {
    small_options().sync_mode(mode).checkpoint_log_bytes(64 * 1024)
}

fn mode_name(mode: SyncMode) -> &'static str {
    match mode {
        SyncMode::Never => "never",
        _ => "always",
    }
}

fn parse_mode(s: &str) -> SyncMode {
    match s {
        "never" => SyncMode::Never,
        _ => SyncMode::Always,
    }
}

/// Child side: write until killed, one "ACK t i" line per acknowledged operation.
fn child_main() {
    let dir = std::env::var(VAR_DIR).unwrap();
    let round: u64 = std::env::var(VAR_ROUND).unwrap().parse().unwrap();
    let round_seed: u64 = std::env::var(VAR_SEED).unwrap().parse().unwrap();
    let mode = parse_mode(&std::env::var(VAR_MODE).unwrap());
    let db = match Db::open_with(Path::new(&dir), options(mode)) {
        Ok(db) => Arc::new(db),
        Err(e) => {
            println!("ERR open: {e}");
            std::process::exit(2);
        }
    };
    println!("OPEN");
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = Arc::clone(&db);
            thread::spawn(move || {
                for i in 0..OPS_PER_THREAD_MAX {
                    let result = match op(round_seed, round, t, i) {
                        Op::Put { key, value } => db.put(key, value),
                        Op::Delete { key } => db.delete(key),
                    };
                    let mut out = std::io::stdout().lock();
                    match result {
                        Ok(()) => writeln!(out, "ACK {t} {i}").unwrap(),
                        Err(e) => {
                            writeln!(out, "ERR t{t} i{i}: {e}").unwrap();
                            out.flush().unwrap();
                            std::process::exit(2);
                        }
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    println!("DONE");
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// State of thread t's keys after its first m operations of this round, from `base`.
fn thread_state(base: &State, round_seed: u64, round: u64, t: usize, m: u64) -> State {
    let mut s: State = base
        .iter()
        .filter(|(k, _)| (0..KEYS_PER_THREAD).any(|j| key(t, j) == **k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for i in 0..m {
        match op(round_seed, round, t, i) {
            Op::Put { key, value } => {
                s.insert(key, value);
            }
            Op::Delete { key } => {
                s.remove(&key);
            }
        }
    }
    s
}

fn read_state(db: &Db) -> State {
    let mut s = State::new();
    for t in 0..THREADS {
        for j in 0..KEYS_PER_THREAD {
            if let Some(v) = db.get(key(t, j)).unwrap() {
                s.insert(key(t, j), v);
            }
        }
    }
    let scanned = support::contents(db);
    assert_eq!(
        scanned, s,
        "a full scan and point reads disagree (or a stray key exists)"
    );
    s
}

fn show(s: &State) -> String {
    s.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&v[..v.len().min(16)])
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one child until `kill_after` acknowledgements, kills it, returns acks per thread.
fn run_child(test: &str, dir: &Path, mode: SyncMode, round: u64, round_seed: u64, kill_after: u64) -> [u64; THREADS] {
    let (round_s, round_seed_s) = (round.to_string(), round_seed.to_string());
    let env = [
        (VAR_DIR, dir.as_os_str()),
        (VAR_ROUND, OsStr::new(&round_s)),
        (VAR_SEED, OsStr::new(&round_seed_s)),
        (VAR_MODE, OsStr::new(mode_name(mode))),
    ];
    let (mut child, mut out) = spawn_test(test, &env, Stdio::null());
    let mut acked = [0u64; THREADS];
    let mut total = 0u64;
    let mut killed = false;
    let mut log = String::new();
    while let Some(line) = out.next_line() {
        if !line.ends_with('\n') {
            // Cut by the kill: never acknowledged to us.
            break;
        }
        if line.contains("ERR") || line.contains("DONE") {
            let _ = child.kill();
            panic!("round {round}: child reported {line:?}; earlier output:\n{log}");
        }
        // The harness prints "test <name> ... " before the child's first line, on the same line.
        let Some(rest) = line.find("ACK ").map(|at| &line[at + 4..]) else {
            log.push_str(&line);
            continue;
        };
        let mut parts = rest.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        let (t, i) = (parts.next().unwrap() as usize, parts.next().unwrap());
        assert_eq!(i, acked[t], "round {round}: thread {t} acknowledged out of order");
        acked[t] += 1;
        total += 1;
        if total == kill_after && !killed {
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        killed,
        "round {round}: child exited ({status}) before {kill_after} acks; output:\n{log}"
    );
    acked
}

/// Checks the reopened store against the acknowledgements; returns the recovered state.
fn check_round(dir: &Path, mode: SyncMode, base: &State, round: u64, round_seed: u64, acked: &[u64; THREADS]) -> State {
    let db = Db::open_with(dir, options(mode)).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let got = read_state(&db);
    for (t, &a) in acked.iter().enumerate() {
        let mine: State = got
            .iter()
            .filter(|(k, _)| k.starts_with(format!("t{t}-").as_bytes()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ok = [a, a + 1]
            .iter()
            .any(|&m| thread_state(base, round_seed, round, t, m) == mine);
        assert!(
            ok,
            "round {round}, thread {t}: recovered state matches neither {a} acknowledged ops nor one more\n got:      {}\n expected: {}\n or:       {}",
            show(&mine),
            show(&thread_state(base, round_seed, round, t, a)),
            show(&thread_state(base, round_seed, round, t, a + 1)),
        );
    }
    db.close().unwrap();
    let db = Db::open_with(dir, options(mode)).unwrap();
    assert_eq!(read_state(&db), got, "round {round}: a second reopen changed the state");
    db.close().unwrap();
    got
}

fn kill9_rounds(test: &'static str, mode: SyncMode, rounds: u64) {
    if std::env::var_os(VAR_DIR).is_some() {
        child_main();
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (seed, _guard) = seeded(test);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::new();
    let mut total_acks = 0;
    for round in 0..rounds {
        let round_seed = rng.next_u64();
        let kill_after = rng.range(1, 800);
        let acked = run_child(test, dir.path(), mode, round, round_seed, kill_after);
        total_acks += acked.iter().sum::<u64>();
        state = check_round(dir.path(), mode, &state, round, round_seed, &acked);
    }
    assert!(total_acks >= rounds, "every round acknowledged something");
    // The scenario needs rolls and checkpoints to have happened while writers ran.
    let db = Db::open_with(dir.path(), options(mode)).unwrap();
    let stats = db.stats();
    assert!(
        stats.last_checkpoint_seq > 0,
        "no checkpoint happened in {rounds} rounds: {stats:?}"
    );
    eprintln!(
        "{test}: seed {seed}, {rounds} rounds, {total_acks} acknowledged ops, last seq {}, checkpoint seq {}",
        stats.last_seq, stats.last_checkpoint_seq
    );
}

#[test]
fn kill9_sync_always_loses_no_acknowledged_write() {
    kill9_rounds("kill9_sync_always_loses_no_acknowledged_write", SyncMode::Always, 40);
}

#[test]
fn kill9_sync_never_loses_no_acknowledged_write() {
    kill9_rounds("kill9_sync_never_loses_no_acknowledged_write", SyncMode::Never, 20);
}
