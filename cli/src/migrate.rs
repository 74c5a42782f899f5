//! `sessiondb migrate-sessions`: bring every session's data to a payload version with external
//! programs, one per step, since the tool cannot run the application's Rust code.
//!
//! Protocol: each step's program (`sh -c COMMAND`) is started once and reads JSON Lines on
//! stdin, one session's data per line (`sessiondb::session::data_to_json`: JSON data as it is,
//! a map session as an object of its entries); it must write exactly one line of JSON per
//! input line, in order, on stdout, and exit 0. Step N's input is every session stored at
//! version N and every output of step N - 1.
//!
//! All or nothing: every step runs to the end before anything is written. Its inputs' ids and
//! its outputs wait in a private temporary directory (so memory holds a page of sessions, not
//! the store); a program that fails, prints another number of lines or a line that is not
//! JSON, or falls silent for `--step-timeout`, stops the run with the store unchanged.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use std::collections::BTreeMap;

use sessiondb::inspect;
use sessiondb::session::{data_from_json, data_to_json, JsonForm, Migrations, SessionId, SessionStore};
use sessiondb::{Db, EncryptionKey, Error, Options, SyncMode};

/// Sessions read from the store at a time.
const PAGE: usize = 256;
/// Lines in flight between a step program's reader thread and the tool.
const LINES_IN_FLIGHT: usize = 64;

/// What went wrong with a step, as a sentence for stderr.
type StepResult<T> = Result<T, String>;

/// `FROM=COMMAND`.
pub fn parse_step(s: &str) -> Result<(u32, String), String> {
    let (from, command) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid step {s:?}: use FROM=COMMAND, like 1='jq -c .'"))?;
    let from = from
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("invalid step {s:?}: {from:?} is not a payload version"))?;
    if command.trim().is_empty() {
        return Err(format!("invalid step {s:?}: the command is empty"));
    }
    Ok((from, command.to_string()))
}

pub fn run(
    dir: &Path,
    to: Option<u32>,
    steps: &[(u32, String)],
    step_timeout: Duration,
    key: Option<&EncryptionKey>,
) -> sessiondb::Result<ExitCode> {
    inspect::inventory(dir)?;
    // The tool holds the store's lock throughout: no application writes meanwhile. Writes are
    // synced once, at close.
    let db = Db::open_with(
        dir,
        crate::keys::with_key(Options::new().sync_mode(SyncMode::Never), key),
    )?;
    let store = SessionStore::new(db);
    let found = census(&store)?;
    for (version, n) in &found {
        outln!("payload version {version}: {n} session(s)");
    }
    if found.is_empty() {
        outln!("no sessions");
    }
    let Some(to) = to.filter(|_| !steps.is_empty()) else {
        outln!("dry run: nothing changed (give --to and a --step per version to migrate)");
        return close(store).map(|()| ExitCode::SUCCESS);
    };
    if let Err(e) = plan(to, steps, &found) {
        eprintln!("sessiondb: {e}; nothing changed");
        close(store)?;
        return Ok(ExitCode::from(2));
    }
    let spill = Spill::create()?;
    let outcome = steps_then_write(&store, to, steps, &found, &spill, step_timeout);
    spill.remove();
    match outcome {
        Ok(written) => {
            outln!("migrated {written} session(s) to payload version {to}");
            close(store).map(|()| ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("sessiondb: {e}");
            close(store)?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn close(store: SessionStore) -> sessiondb::Result<()> {
    let db = store.db().clone();
    drop(store);
    match std::sync::Arc::try_unwrap(db) {
        Ok(db) => db.close(),
        // NOTE: unreachable in practice (the step threads hold clones only while they run);
        // dropping the last handle closes it too.
        Err(_) => Ok(()),
    }
}

/// Sessions by the payload version they are stored at.
fn census(store: &SessionStore) -> sessiondb::Result<BTreeMap<u32, u64>> {
    let mut found = BTreeMap::new();
    let mut after: Option<SessionId> = None;
    loop {
        let page = store.stored_sessions(after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { return Ok(found) };
        after = Some(last.id);
        for s in &page {
            *found.entry(s.payload_version).or_insert(0) += 1;
        }
    }
}

/// Checks the steps with the library's rules (one chain up to `to`) and that every session
/// found can reach `to`.
fn plan(to: u32, steps: &[(u32, String)], found: &BTreeMap<u32, u64>) -> sessiondb::Result<()> {
    let mut m = Migrations::new().payload_version(to);
    for (from, _) in steps {
        m = m.migrate(*from, Ok);
    }
    m.validate()?;
    if let Some((&newer, _)) = found.range(to + 1..).next() {
        return Err(Error::SessionPayloadTooNew {
            found: newer,
            known: to,
        });
    }
    let oldest_step = steps.iter().map(|(from, _)| *from).min().unwrap_or(to);
    if let Some((&old, _)) = found.range(..oldest_step).next() {
        return Err(Error::SessionMigrationMissing {
            from: old,
            to: old + 1,
            current: to,
        });
    }
    Ok(())
}

/// A private temporary directory for the steps' inputs and outputs (session data: 0700).
struct Spill {
    dir: PathBuf,
}

impl Spill {
    fn create() -> sessiondb::Result<Spill> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sessiondb-migrate-{}-{nanos}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(&dir, "create directory", e))?;
        Ok(Spill { dir })
    }

    fn meta(&self, from: u32) -> PathBuf {
        self.dir.join(format!("step-{from}.ids"))
    }

    fn out(&self, from: u32) -> PathBuf {
        self.dir.join(format!("step-{from}.out"))
    }

    fn remove(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        op,
        offset: None,
        source,
    }
}

/// One input line's session: id, version read, and how its data was shown as JSON.
fn meta_line(id: &SessionId, version: u64, form: JsonForm) -> String {
    let form = if form == JsonForm::Map { "map" } else { "json" };
    format!("{id}\t{version}\t{form}\n")
}

fn parse_meta(line: &str) -> StepResult<(SessionId, u64, JsonForm)> {
    let mut parts = line.trim_end().split('\t');
    let bad = || format!("internal: bad spill line {line:?}");
    let id = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let version = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let form = match parts.next() {
        Some("map") => JsonForm::Map,
        Some("json") => JsonForm::Json,
        _ => return Err(bad()),
    };
    Ok((id, version, form))
}

/// Runs every step, then writes what the last one printed. Returns how many were written.
fn steps_then_write(
    store: &SessionStore,
    to: u32,
    steps: &[(u32, String)],
    found: &BTreeMap<u32, u64>,
    spill: &Spill,
    step_timeout: Duration,
) -> StepResult<u64> {
    let mut steps: Vec<&(u32, String)> = steps.iter().collect();
    steps.sort_by_key(|(from, _)| *from);
    let mut previous: Option<u32> = None;
    for (from, command) in steps {
        let lines = run_step(store, *from, command, previous, spill, step_timeout)?;
        outln!("step {from} -> {}: {lines} session(s) through `{command}`", from + 1);
        previous = Some(*from);
    }
    let Some(last) = previous else { return Ok(0) };
    let written = write_back(store, to, spill, last)?;
    let current = found.get(&to).copied().unwrap_or(0);
    if current > 0 {
        outln!("{current} session(s) already at payload version {to}");
    }
    Ok(written)
}

/// Feeds step `from` its sessions, collects its lines into the spill directory.
fn run_step(
    store: &SessionStore,
    from: u32,
    command: &str,
    previous: Option<u32>,
    spill: &Spill,
    timeout: Duration,
) -> StepResult<u64> {
    let what = format!("step {from} -> {} (`{command}`)", from + 1);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{what}: cannot start sh: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(format!("{what}: no pipes to the program"));
    };
    // The feeder and the reader own what they use, so a program that hangs leaves at most
    // them blocked, never the tool: it kills the program and reports.
    let (fed_tx, fed_rx) = mpsc::channel::<StepResult<u64>>();
    let feeder = Feeder {
        store: store.clone(),
        from,
        previous: previous.map(|p| (spill.meta(p), spill.out(p))),
        meta: spill.meta(from),
    };
    std::thread::spawn(move || {
        let _ = fed_tx.send(feeder.feed(stdin));
    });
    let (line_tx, line_rx) = mpsc::sync_channel::<io::Result<String>>(LINES_IN_FLIGHT);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let out_path = spill.out(from);
    let collected = collect(&line_rx, &out_path, timeout, &what);
    let collected = match collected {
        Ok(n) => n,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = wait_with_deadline(child, timeout).map_err(|e| format!("{what}: {e}"))?;
    let fed = match fed_rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|e| format!("{what}: {e}"))?,
        Err(_) => return Err(format!("{what}: still not done reading its input after {timeout:?}")),
    };
    if !status.success() {
        return Err(format!("{what} failed: {status}; nothing changed"));
    }
    if collected != fed {
        return Err(format!(
            "{what} printed {collected} line(s) for {fed} input line(s): it must print exactly one line per \
             line, in order; nothing changed"
        ));
    }
    Ok(fed)
}

/// What a step's feeder thread reads: the previous step's outputs, then the sessions stored
/// at `from`.
struct Feeder {
    store: SessionStore,
    from: u32,
    previous: Option<(PathBuf, PathBuf)>,
    meta: PathBuf,
}

impl Feeder {
    fn feed(self, stdin: std::process::ChildStdin) -> StepResult<u64> {
        let mut to_program = BufWriter::new(stdin);
        let mut meta = BufWriter::new(File::create(&self.meta).map_err(|e| e.to_string())?);
        let mut n = 0u64;
        let broken = |e: io::Error| format!("the program stopped reading its input: {e}");
        if let Some((prev_meta, prev_out)) = &self.previous {
            let ids = BufReader::new(File::open(prev_meta).map_err(|e| e.to_string())?).lines();
            let outs = BufReader::new(File::open(prev_out).map_err(|e| e.to_string())?).lines();
            for (id, out) in ids.zip(outs) {
                let (id, out) = (id.map_err(|e| e.to_string())?, out.map_err(|e| e.to_string())?);
                meta.write_all(id.as_bytes()).map_err(|e| e.to_string())?;
                meta.write_all(b"\n").map_err(|e| e.to_string())?;
                writeln!(to_program, "{out}").map_err(broken)?;
                n += 1;
            }
        }
        let mut after: Option<SessionId> = None;
        loop {
            let page = self
                .store
                .stored_sessions(after.as_ref(), PAGE)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for s in page.into_iter().filter(|s| s.payload_version == self.from) {
                let (value, form) = data_to_json(&s.data).map_err(|e| format!("session {:?}: {e}", s.id))?;
                meta.write_all(meta_line(&s.id, s.version, form).as_bytes())
                    .map_err(|e| e.to_string())?;
                writeln!(to_program, "{value}").map_err(broken)?;
                n += 1;
            }
        }
        meta.flush().map_err(|e| e.to_string())?;
        to_program.flush().map_err(broken)?;
        Ok(n)
    }
}

/// The program's lines, each checked to be JSON, into `out`; how many. Waits at most
/// `timeout` for each.
fn collect(lines: &mpsc::Receiver<io::Result<String>>, out: &Path, timeout: Duration, what: &str) -> StepResult<u64> {
    let mut file = BufWriter::new(File::create(out).map_err(|e| e.to_string())?);
    let mut n = 0u64;
    loop {
        match lines.recv_timeout(timeout) {
            Ok(Ok(line)) => {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
                    return Err(format!(
                        "{what}: output line {} is not JSON ({e}); nothing changed",
                        n + 1
                    ));
                }
                writeln!(file, "{line}").map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(Err(e)) => return Err(format!("{what}: reading its output: {e}")),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "{what}: no output for {timeout:?} after {n} line(s); stopped it; nothing changed"
                ))
            }
        }
    }
    file.flush().map_err(|e| e.to_string())?;
    Ok(n)
}

/// Waits for `child` to exit, at most `timeout`; kills it (by its id) past that.
fn wait_with_deadline(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => status.map_err(|e| e.to_string()),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            Err(format!(
                "it closed its output but did not exit within {timeout:?}; killed it"
            ))
        }
    }
}

/// Writes the last step's outputs over the versions read, at payload version `to`.
fn write_back(store: &SessionStore, to: u32, spill: &Spill, last: u32) -> StepResult<u64> {
    let ids = BufReader::new(File::open(spill.meta(last)).map_err(|e| e.to_string())?).lines();
    let outs = BufReader::new(File::open(spill.out(last)).map_err(|e| e.to_string())?).lines();
    let mut written = 0;
    let mut changed = 0;
    for (meta, out) in ids.zip(outs) {
        let (meta, out) = (meta.map_err(|e| e.to_string())?, out.map_err(|e| e.to_string())?);
        let (id, version, form) = parse_meta(&meta)?;
        let value: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let data = data_from_json(&value, form).map_err(|e| format!("session {id:?}: {e}"))?;
        match store
            .write_migrated(&id, version, &data, to)
            .map_err(|e| format!("session {id:?}: {e}"))?
        {
            Ok(_) => written += 1,
            Err(_) => changed += 1,
        }
    }
    if changed > 0 {
        outln!("{changed} session(s) changed or expired while the steps ran: left as they are");
    }
    Ok(written)
}
