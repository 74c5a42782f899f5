//! The `sessiondb` command-line tool: look inside a store, check it, copy it while it runs, and
//! repair it, without writing Rust. It holds no storage logic: every subcommand calls the
//! library (`sessiondb::inspect`, `Db`, `backup_dir`, `restore`, `repair`). An encrypted store's
//! key comes from `--key-file` (keys.rs) and goes to every call that opens a store (keyed.rs).

/// `println!` to standard output, except that a reader gone away (`sessiondb dump DIR | head`)
/// ends the program quietly, with status 0, as other command-line tools do, instead of a panic.
/// Any other failure to write is reported on standard error with status 1.
macro_rules! outln {
    () => {
        $crate::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::write_line(format_args!($($arg)*))
    };
}

mod bench;
mod cluster;
mod convert;
mod demo;
mod keyed;
mod keys;
mod migrate;
mod out;
mod progress;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use sessiondb::inspect::{self, Problem, SegmentState};
use sessiondb::{Db, EncryptionKey, Error, Options, SyncMode};

/// sessiondb: an embedded, crash-safe key-value store for session state.
///
/// Reading subcommands (stats, verify, dump, get, backup) never change a store and work while
/// another process has it open. Writing subcommands (put, delete, checkpoint, repair,
/// migrate-sessions, encrypt, decrypt, rotate-key) open it and refuse while another process has
/// it open. An encrypted store needs its key: --key-file PATH, or SESSIONDB_KEY_FILE.
#[derive(Parser)]
#[command(name = "sessiondb", version, about, long_about)]
#[command(
    after_help = "Exit status: 0 success; 1 failure (verify: problems found; get: no such key); \
                        2 usage error (bad arguments, or DIR is not a store)."
)]
struct Cli {
    /// The store's encryption key: a file holding 32 raw bytes or 64 hex characters
    /// (`sessiondb keygen PATH` writes one). Every subcommand that reads or writes an encrypted
    /// store needs it; `put`, `demo` and `bench` create a new store encrypted with it.
    #[arg(long, global = true, value_name = "PATH", env = keys::KEY_FILE_VAR)]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write sessions durably from several threads, close, reopen, and verify every one.
    ///
    /// Prints throughput, commit-group sizes, fsyncs and their latency, the recovery time of
    /// the reopen, and how many sessions read back. Running it again adds sessions.
    Demo {
        /// The store's directory (created if missing).
        #[arg(default_value = "sessiondb-demo")]
        dir: PathBuf,
        /// Writer threads.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// Sessions to write in all.
        #[arg(long, default_value_t = 100_000)]
        sessions: u64,
        /// Bytes of session data.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    /// Measure writes, reads and recovery on this machine's disk; print a table.
    ///
    /// Workloads: concurrent puts for --seconds, random gets of what was written for
    /// --seconds, then reopening twice (replaying the whole log the puts left, with automatic
    /// checkpoints off; loading a snapshot of it).
    Bench {
        /// Where to put the store (default: a fresh directory in the system temp directory,
        /// deleted afterwards). An existing store gets `bench:` keys added.
        dir: Option<PathBuf>,
        /// Client threads.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Durability: always (fsync per commit group), interval (fsync every 100 ms), never.
        #[arg(long, value_enum, default_value_t = SyncArg::Always)]
        sync: SyncArg,
        /// Seconds per timed workload.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Keys, live and dead bytes, segments, snapshots, last checkpoint, format version.
    ///
    /// Read-only: computed by running recovery on an in-memory view of the files, so the
    /// "recovery" line is about what opening the store would take.
    Stats {
        /// The store's directory.
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every file of a store; list every problem by file and offset.
    ///
    /// Read-only: never changes a byte, takes no lock, removes no temp file, and works on a
    /// store another process has open (checking a consistent prefix of it). Exit 0 when
    /// intact, 1 when problems were found, 2 on usage errors.
    Verify {
        /// The store's directory.
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the live entries, in key order, with their expiry.
    ///
    /// jsonl: one JSON object per line, {"key", "key_encoding", "value", "value_encoding",
    /// "seq", "expires_at_ms"}; a key or value that is valid UTF-8 is given as text
    /// (encoding "utf8"), anything else as base64 (encoding "base64"); expires_at_ms is
    /// milliseconds since the Unix epoch, or null. text: key, value and expiry separated by
    /// tabs, bytes that are not printable ASCII escaped (\n, \t, \xNN). Read-only.
    Dump {
        /// The store's directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DumpFormat::Jsonl)]
        format: DumpFormat,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<OsString>,
    },
    /// Print the value of KEY (then a newline). Exit 1 if there is no such key. Read-only.
    Get {
        /// The store's directory.
        dir: PathBuf,
        /// The key (any bytes your shell can pass).
        key: OsString,
    },
    /// Set KEY to VALUE, durably ("-" reads the value from standard input).
    Put {
        /// The store's directory (created if missing).
        dir: PathBuf,
        /// The key.
        key: OsString,
        /// The value, or "-" for standard input.
        value: OsString,
        /// Expire after this long: a number with s, m, h or d (30m, 1h30m, 7d); a bare number
        /// is seconds.
        #[arg(long, value_parser = out::parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Remove KEY, durably (no error if it is absent).
    Delete {
        /// The store's directory.
        dir: PathBuf,
        /// The key.
        key: OsString,
    },
    /// Write a snapshot of the live data and delete the log it covers.
    Checkpoint {
        /// The store's directory.
        dir: PathBuf,
    },
    /// Copy a store, consistently, while it runs: a new store holding one snapshot.
    ///
    /// Takes no lock and changes nothing in DIR: works while another process has the store
    /// open. The backup holds the state after some sequence number (nothing after a hole) and
    /// is fsynced before it appears under DEST, which must not exist.
    Backup {
        /// The store's directory.
        dir: PathBuf,
        /// Where to write the backup (must not exist).
        dest: PathBuf,
    },
    /// Copy a backup (or any closed, intact store) to DIR, verified and fsynced.
    ///
    /// DIR must not exist or be an empty directory. The backup is left unchanged.
    Restore {
        /// The backup's directory.
        backup: PathBuf,
        /// Where to restore it.
        dir: PathBuf,
    },
    /// Salvage a damaged store into a new snapshot; keep every damaged file as *.broken.
    ///
    /// Refuses while the store is open anywhere. Prints each problem, what was lost (bytes and
    /// log records), the files set aside and the files removed. An intact store is left as it is.
    Repair {
        /// The store's directory.
        dir: PathBuf,
    },
    /// Count sessions by payload version; with --to and --step, migrate them with programs.
    ///
    /// Without --step it only prints how many sessions are at each payload version (a dry
    /// run). With --to N and one --step FROM=COMMAND for each version FROM from the oldest
    /// one stored up to N - 1, it runs each COMMAND once, with `sh -c`: the program reads JSON
    /// Lines on stdin, one session's data per line (JSON data as it is; a map session as an
    /// object of its entries), and must print exactly one line of JSON per input line, in
    /// order, and exit 0. Step FROM gets the sessions stored at FROM and the output of step
    /// FROM - 1. Every step runs to its end before anything is written: a program that fails,
    /// prints another number of lines, prints a line that is not JSON, or is silent for
    /// --step-timeout leaves the store unchanged (exit 1). Sessions at a payload version
    /// newer than N are an error before any step runs. Refuses while the store is open
    /// elsewhere.
    #[command(name = "migrate-sessions")]
    MigrateSessions {
        /// The store's directory.
        dir: PathBuf,
        /// The payload version to migrate every session to.
        #[arg(long)]
        to: Option<u32>,
        /// A step: FROM=COMMAND turns data at payload version FROM into FROM + 1
        /// (e.g. --step '1=jq -c --unbuffered "{lines: .items}"'). One per version.
        #[arg(long = "step", value_name = "FROM=COMMAND", value_parser = migrate::parse_step, requires = "to")]
        steps: Vec<(u32, String)>,
        /// Seconds to wait for a step program's next line (and for its exit) before stopping it.
        #[arg(long, default_value_t = 60)]
        step_timeout: u64,
    },
    /// Encrypt a closed store in place with the key in --key-file.
    ///
    /// Copies every live entry (value and expiry deadline) into a new encrypted store next to
    /// DIR, compares the copy with the original, then exchanges the two directories in one step
    /// and deletes the original: after a crash at any moment DIR is the whole original or the
    /// whole encrypted store (the next encrypt deletes what the crash left beside it). Every
    /// key gets a new version. The unencrypted bytes may remain in the file system's free
    /// blocks. Refuses while the store is open elsewhere.
    Encrypt {
        /// The store's directory.
        dir: PathBuf,
    },
    /// Decrypt a closed store in place; --key-file is its key. As encrypt, the other way.
    Decrypt {
        /// The store's directory.
        dir: PathBuf,
    },
    /// Write a new random encryption key to PATH: 64 hex characters and a newline, mode 0600.
    ///
    /// Never overwrites a file (a key overwritten is a store lost). The key is printed only
    /// with --stdout. Use the file with --key-file.
    Keygen {
        /// Where to write the key (must not exist).
        path: Option<PathBuf>,
        /// Print the key on standard output instead of writing a file.
        #[arg(long, conflicts_with = "path")]
        stdout: bool,
    },
    /// Change an encrypted store's key: --key-file is its key now, --new-key-file the new one.
    ///
    /// Only the keyring is sealed anew (every file keeps its own data key), atomically: after a
    /// crash the store opens with one of the two keys. Refuses while the store is open elsewhere.
    #[command(name = "rotate-key")]
    RotateKey {
        /// The store's directory.
        dir: PathBuf,
        /// The file holding the new key.
        #[arg(long, value_name = "PATH")]
        new_key_file: PathBuf,
    },
    /// Run a node of a replicated store (docs/cluster.md): its raft log and state in DIR, its
    /// HTTP API (raft between nodes, clients' reads and writes, operators' endpoints) on ADDR.
    ///
    /// A new node waits to be made a cluster's first member (`sessiondb cluster init`) or to be
    /// added to one (`sessiondb cluster add-learner`). Stops on SIGINT or SIGTERM.
    Serve(cluster::Serve),
    /// Operate a replicated store: status, init, add-learner, change-membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Always,
    Interval,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DumpFormat {
    Jsonl,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The replicated store's commands talk to nodes over HTTP; they open no local store.
    let command = match cli.command {
        Command::Serve(args) => return cluster::serve(args),
        Command::Cluster(command) => return cluster::cluster(command),
        command => command,
    };
    match run(command, cli.key_file.as_deref()) {
        Ok(code) => code,
        Err(e) => {
            match &e {
                Error::KeyRequired { path } => eprintln!(
                    "sessiondb: {}: the store is encrypted; give its key with --key-file PATH (or {})",
                    path.display(),
                    keys::KEY_FILE_VAR
                ),
                Error::WrongKey { .. } => match &cli.key_file {
                    Some(k) => eprintln!("sessiondb: {e} (the key in {} does not open this store)", k.display()),
                    None => eprintln!("sessiondb: {e}"),
                },
                _ => eprintln!("sessiondb: {e}"),
            }
            if let Error::Locked { .. } = e {
                eprintln!(
                    "sessiondb: another process has the store open; stats, verify, dump, get and backup work while it runs"
                );
            }
            match e {
                Error::InvalidPath { .. } | Error::InvalidKey(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Refuses a directory that holds files but no store, so that a mistyped path never gets a
/// store's files written into it. A missing or empty directory, or a store, is fine.
fn creatable(dir: &Path) -> sessiondb::Result<()> {
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        inspect::inventory(dir)?;
    }
    Ok(())
}

/// [`Error::Io`] for the tool's own file operations.
fn io_error(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Error {
    Error::Io {
        path: path.as_ref().to_path_buf(),
        op,
        offset: None,
        source,
    }
}

/// A missing argument, reported as clap reports one (with the usage line; exit 2).
fn missing_argument(message: String) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// The key a subcommand cannot do without; a usage error if --key-file is missing.
fn required_key<'k>(key: Option<&'k EncryptionKey>, subcommand: &str, what: &str) -> &'k EncryptionKey {
    key.unwrap_or_else(|| {
        missing_argument(format!(
            "`{subcommand}` needs --key-file PATH ({what}; `sessiondb keygen PATH` writes a new key)"
        ))
    })
}

fn run(command: Command, key_file: Option<&Path>) -> sessiondb::Result<ExitCode> {
    if let Command::Keygen { path, stdout } = &command {
        return match (path, stdout) {
            (None, false) => {
                missing_argument("`keygen` needs a PATH to write the key to (or --stdout to print it)".into())
            }
            (path, _) => keys::keygen(path.as_deref()),
        };
    }
    let key = key_file.map(keys::read_key_file).transpose()?;
    let key = key.as_ref();
    if let Command::Demo { dir, .. } | Command::Bench { dir: Some(dir), .. } | Command::Put { dir, .. } = &command {
        creatable(dir)?;
    }
    match command {
        Command::Demo {
            dir,
            threads,
            sessions,
            value_size,
        } => demo::run(&dir, threads.max(1), sessions, value_size, key).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            dir,
            threads,
            value_size,
            sync,
            seconds,
        } => {
            let sync = match sync {
                SyncArg::Always => SyncMode::Always,
                SyncArg::Interval => SyncMode::Interval(Duration::from_millis(100)),
                SyncArg::Never => SyncMode::Never,
            };
            let b = bench::Bench {
                dir,
                threads: threads.max(1),
                value_size,
                sync,
                seconds: if seconds.is_finite() { seconds.max(0.0) } else { 3.0 },
                key: key.cloned(),
            };
            bench::run(&b).map(|()| ExitCode::SUCCESS)
        }
        Command::Stats { dir, json } => stats(&dir, json, key),
        Command::Verify { dir, json } => verify(&dir, json, key),
        Command::Dump { dir, format, prefix } => dump(&dir, format, prefix.as_ref().map(|p| p.as_bytes()), key),
        Command::Get { dir, key: k } => get(&dir, k.as_bytes(), key),
        Command::Put {
            dir,
            key: k,
            value,
            ttl,
        } => put(&dir, k.as_bytes(), &value, ttl, key),
        Command::Delete { dir, key: k } => write_existing(&dir, key, |db| db.delete(k.as_bytes())),
        Command::Checkpoint { dir } => checkpoint(&dir, key),
        Command::Backup { dir, dest } => backup(&dir, &dest, key),
        Command::Restore { backup, dir } => restore(&backup, &dir, key),
        Command::Repair { dir } => repair(&dir, key),
        Command::MigrateSessions {
            dir,
            to,
            steps,
            step_timeout,
        } => migrate::run(&dir, to, &steps, Duration::from_secs(step_timeout), key),
        Command::Encrypt { dir } => convert::run(
            &dir,
            convert::Conversion::Encrypt,
            required_key(key, "encrypt", "the key to encrypt with"),
        ),
        Command::Decrypt { dir } => convert::run(
            &dir,
            convert::Conversion::Decrypt,
            required_key(key, "decrypt", "the store's key"),
        ),
        Command::RotateKey { dir, new_key_file } => rotate_key(
            &dir,
            required_key(key, "rotate-key", "the store's key now"),
            &new_key_file,
        ),
        Command::Keygen { .. } => unreachable!("handled above: it reads no key"),
        Command::Serve(_) | Command::Cluster(_) => unreachable!("handled in main: they open no local store"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn stats(dir: &Path, json: bool, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let spin = progress::spinner("reading the store");
    let view = keyed::view(dir, key)?;
    spin.finish_and_clear();
    let s = &view.stats();
    let f = view.files();
    let version = f.format_version.unwrap_or(sessiondb::FORMAT_VERSION);
    let oldest = f.oldest_format_version.unwrap_or(version);
    if json {
        let obj = out::Obj::new()
            .str("dir", &dir.display().to_string())
            .num("format_version", u64::from(version))
            .num("oldest_format_version", u64::from(oldest))
            .num("keys", s.keys)
            .num("live_bytes", s.live_bytes)
            .num("dead_bytes", s.dead_bytes)
            .num("segments", s.segments)
            .num("segment_files", f.segments.len() as u64)
            .num("snapshots", s.snapshots)
            .opt_num(
                "last_checkpoint_seq",
                (s.last_checkpoint_seq > 0).then_some(s.last_checkpoint_seq),
            )
            .num("last_seq", s.last_seq)
            .num("log_bytes_since_checkpoint", s.log_bytes_since_checkpoint)
            .num("disk_bytes", f.bytes())
            .num("temp_files", f.temp_files.len() as u64)
            .num("broken_files", f.broken_files.len() as u64)
            .float("recovery_seconds", s.recovery.duration.as_secs_f64())
            .num("recovery_snapshot_entries", s.recovery.snapshot_entries)
            .num("recovery_records_replayed", s.recovery.records_replayed)
            .num("recovery_torn_tail_bytes", s.recovery.torn_tail_bytes)
            .finish();
        outln!("{obj}");
        return Ok(ExitCode::SUCCESS);
    }
    let last_checkpoint = match s.last_checkpoint_seq {
        0 => "none".to_string(),
        seq => format!("at sequence {seq}"),
    };
    outln!("store:                  {}", dir.display());
    if oldest < version {
        outln!("format version:         {version} (files of version {oldest} remain until the next checkpoint)");
    } else {
        outln!("format version:         {version}");
    }
    outln!("keys:                   {}", s.keys);
    outln!("live bytes:             {} ({})", s.live_bytes, out::size(s.live_bytes));
    outln!("dead bytes:             {} ({})", s.dead_bytes, out::size(s.dead_bytes));
    outln!(
        "segments:               {} with records, {} files ({} on disk)",
        s.segments,
        f.segments.len(),
        out::size(f.segments.iter().map(|x| x.2).sum())
    );
    outln!("snapshots:              {}", s.snapshots);
    outln!("last checkpoint:        {last_checkpoint}");
    outln!("last sequence number:   {}", s.last_seq);
    outln!("log since checkpoint:   {}", out::size(s.log_bytes_since_checkpoint));
    outln!(
        "recovery:               {} (snapshot entries {}, log records replayed {}, torn tail {} B)",
        out::duration(s.recovery.duration),
        s.recovery.snapshot_entries,
        s.recovery.records_replayed,
        s.recovery.torn_tail_bytes
    );
    if !f.temp_files.is_empty() || !f.broken_files.is_empty() {
        outln!(
            "other files:            {} temporary, {} set aside by repair (*.broken)",
            f.temp_files.len(),
            f.broken_files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn problem_line(p: &Problem) -> String {
    let mut extent = Vec::new();
    if let Some(b) = p.bytes {
        extent.push(format!("{b} bytes"));
    }
    if let Some(r) = p.records_lost {
        extent.push(format!("{r} log records lost"));
    }
    let extent = if extent.is_empty() {
        String::new()
    } else {
        format!(" ({})", extent.join(", "))
    };
    format!("{} at offset {}: {}{extent}", p.path.display(), p.offset, p.reason)
}

fn problem_json(p: &Problem) -> String {
    out::Obj::new()
        .str("path", &p.path.display().to_string())
        .num("offset", p.offset)
        .str("reason", &p.reason)
        .opt_num("bytes", p.bytes)
        .opt_num("records_lost", p.records_lost)
        .finish()
}

fn verify(dir: &Path, json: bool, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let spin = progress::spinner("verifying");
    let r = keyed::verify(dir, key)?;
    spin.finish_and_clear();
    let code = if r.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if json {
        let segments = r.segments.iter().map(|s| {
            out::Obj::new()
                .str("path", &s.path.display().to_string())
                .num("id", s.id)
                .num("size", s.size)
                .str("state", segment_state(s.state))
                .opt_num("first_seq", s.seqs.map(|x| x.0))
                .opt_num("last_seq", s.seqs.map(|x| x.1))
                .num("records", s.records)
                .finish()
        });
        let snapshots = r.snapshots.iter().map(|s| {
            out::Obj::new()
                .str("path", &s.path.display().to_string())
                .num("base_seq", s.base_seq)
                .num("size", s.size)
                .num("entries", s.entries)
                .bool("intact", s.intact)
                .finish()
        });
        let obj = out::Obj::new()
            .str("dir", &dir.display().to_string())
            .bool("intact", r.is_intact())
            .raw("problems", &out::array(r.problems.iter().map(problem_json)))
            .raw("notes", &out::str_array(r.notes.iter().map(String::as_str)))
            .raw("segments", &out::array(segments))
            .raw("snapshots", &out::array(snapshots))
            .opt_num("keys", r.keys)
            .opt_num("last_seq", r.last_seq)
            .num("passes", r.passes as u64)
            .finish();
        outln!("{obj}");
        return Ok(code);
    }
    outln!("sessiondb verify: {}", dir.display());
    for s in &r.snapshots {
        outln!(
            "  snapshot {}: base sequence {}, {} entries, {}: {}",
            s.path.display(),
            s.base_seq,
            s.entries,
            out::size(s.size),
            if s.intact { "ok" } else { "DAMAGED" }
        );
    }
    let damaged = r.problems_by_file();
    for s in &r.segments {
        let records = match s.seqs {
            Some((a, b)) => format!("{} records, sequence {a}..={b}", s.records),
            None => "no records".to_string(),
        };
        let verdict = match s.state {
            SegmentState::Live if damaged.contains_key(s.path.as_path()) => "DAMAGED",
            SegmentState::Live => "ok",
            _ => "not read",
        };
        outln!(
            "  segment {}: {}, {records}: {verdict}",
            s.path.display(),
            segment_state(s.state)
        );
    }
    for n in &r.notes {
        outln!("  note: {n}");
    }
    if r.is_intact() {
        match (r.keys, r.last_seq) {
            (Some(keys), Some(seq)) => outln!("intact: {keys} keys, last sequence number {seq}"),
            // An encrypted store checked without its key is not opened: nothing counted.
            _ => outln!("intact (not opened: keys not counted)"),
        }
    } else {
        for p in &r.problems {
            outln!("  PROBLEM {}", problem_line(p));
        }
        outln!(
            "DAMAGED: {} problem(s) in {} file(s). With the store closed, `sessiondb repair {}` salvages what verifies.",
            r.problems.len(),
            damaged.len(),
            dir.display()
        );
    }
    Ok(code)
}

fn segment_state(s: SegmentState) -> &'static str {
    match s {
        SegmentState::Live => "live",
        SegmentState::Covered => "covered by the snapshot",
        SegmentState::Spare => "spare",
        _ => "other",
    }
}

/// Runs `f`, treating a closed standard output (`sessiondb dump | head`) as the end of output.
fn output(f: impl FnOnce(&mut dyn Write) -> sessiondb::Result<io::Result<()>>) -> sessiondb::Result<ExitCode> {
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    let written = f(&mut w)?.and_then(|()| w.flush());
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Io {
            path: PathBuf::from("<stdout>"),
            op: "write",
            offset: None,
            source: e,
        }),
    }
}

fn dump(
    dir: &Path,
    format: DumpFormat,
    prefix: Option<&[u8]>,
    key: Option<&EncryptionKey>,
) -> sessiondb::Result<ExitCode> {
    let view = keyed::view(dir, key)?;
    let now = now_ms();
    output(|w| {
        for e in view.entries(prefix.unwrap_or(b"")) {
            let e = e?;
            let line = match format {
                DumpFormat::Jsonl => out::Obj::new()
                    .bytes("key", &e.key)
                    .bytes("value", &e.value)
                    .num("seq", e.seq)
                    .opt_num("expires_at_ms", e.expires_at_ms)
                    .finish(),
                DumpFormat::Text => {
                    let expiry = e.expires_at_ms.map_or_else(
                        || "never expires".to_string(),
                        |at| format!("expires in {}", out::span(at.saturating_sub(now))),
                    );
                    format!("{}\t{}\t{expiry}", out::escaped(&e.key), out::escaped(&e.value))
                }
            };
            if let Err(err) = writeln!(w, "{line}") {
                return Ok(Err(err));
            }
        }
        Ok(Ok(()))
    })
}

fn get(dir: &Path, k: &[u8], key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let view = keyed::view(dir, key)?;
    match view.get(k)? {
        Some(v) => output(|w| Ok(w.write_all(&v).and_then(|()| w.write_all(b"\n")))),
        None => {
            eprintln!("sessiondb: no such key: {}", out::escaped(k));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn put(
    dir: &Path,
    k: &[u8],
    value: &OsString,
    ttl: Option<Duration>,
    key: Option<&EncryptionKey>,
) -> sessiondb::Result<ExitCode> {
    let value = if value == "-" {
        let mut v = Vec::new();
        io::stdin().read_to_end(&mut v).map_err(|e| Error::Io {
            path: PathBuf::from("<stdin>"),
            op: "read",
            offset: None,
            source: e,
        })?;
        v
    } else {
        value.as_bytes().to_vec()
    };
    let db = Db::open_with(dir, keys::with_key(Options::new(), key))?;
    match ttl {
        Some(ttl) => db.put_with_ttl(k, &value, ttl)?,
        None => db.put(k, &value)?,
    }
    db.close()?;
    Ok(ExitCode::SUCCESS)
}

/// Opens an existing store (never creating one), runs `f`, closes it.
fn write_existing(
    dir: &Path,
    key: Option<&EncryptionKey>,
    f: impl FnOnce(&Db) -> sessiondb::Result<()>,
) -> sessiondb::Result<ExitCode> {
    inspect::inventory(dir)?;
    let db = Db::open_with(dir, keys::with_key(Options::new(), key))?;
    f(&db)?;
    db.close()?;
    Ok(ExitCode::SUCCESS)
}

fn checkpoint(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let started = Instant::now();
    let mut stats = None;
    let spin = progress::spinner("checkpointing");
    write_existing(dir, key, |db| {
        db.checkpoint()?;
        stats = Some(db.stats());
        Ok(())
    })?;
    spin.finish_and_clear();
    let s = stats.unwrap_or_default();
    if s.last_checkpoint_seq == 0 {
        outln!("nothing to checkpoint: the store is empty");
    } else if s.checkpoints == 0 {
        outln!(
            "nothing new to checkpoint: the snapshot at sequence {} holds every write",
            s.last_checkpoint_seq
        );
    } else {
        outln!(
            "checkpoint at sequence {}: {} keys, snapshot of {}, {} segment(s) left; took {}",
            s.last_checkpoint_seq,
            s.keys,
            out::size(s.checkpoint_bytes_last),
            s.segments,
            out::duration(started.elapsed())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate_key(dir: &Path, old: &EncryptionKey, new_key_file: &Path) -> sessiondb::Result<ExitCode> {
    let new = keys::read_key_file(new_key_file)?;
    if new.as_bytes() == old.as_bytes() {
        return Err(Error::InvalidPath {
            path: new_key_file.to_path_buf(),
            reason: "holds the same key as --key-file: nothing to rotate".into(),
        });
    }
    inspect::inventory(dir)?;
    let db = Db::open_with(dir, keys::with_key(Options::new(), Some(old)))?;
    keyed::rotate_key(&db, new)?;
    db.close()?;
    outln!(
        "rotated the key of {}: it opens with the key in {} now, no longer with the old one",
        dir.display(),
        new_key_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn backup(dir: &Path, dest: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let spin = progress::spinner("backing up");
    let r = keyed::backup_dir(dir, dest, key)?;
    spin.finish_and_clear();
    outln!(
        "backup of {} written to {}: state after sequence number {}, {} keys, {} snapshot, took {}",
        dir.display(),
        r.path.display(),
        r.seq,
        r.keys,
        out::size(r.bytes),
        out::duration(r.duration)
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(backup: &Path, dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let spin = progress::spinner("restoring");
    let r = keyed::restore(backup, dir, key)?;
    spin.finish_and_clear();
    outln!(
        "restored {} to {}: {} keys, last sequence number {}, {} copied",
        backup.display(),
        r.path.display(),
        r.keys,
        r.seq,
        out::size(r.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn repair(dir: &Path, key: Option<&EncryptionKey>) -> sessiondb::Result<ExitCode> {
    let spin = progress::spinner("repairing");
    let r = match keyed::repair(dir, key) {
        Ok(r) => r,
        Err(e @ Error::Locked { .. }) => {
            spin.finish_and_clear();
            eprintln!("sessiondb: refusing to repair a store that is open: {e}");
            eprintln!("sessiondb: close the program that has it open, then run repair again");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    spin.finish_and_clear();
    if !r.repaired {
        outln!(
            "{} verifies intact ({} keys, last sequence number {}): nothing to repair",
            dir.display(),
            r.keys,
            r.seq
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("sessiondb repair: {}", dir.display());
    for p in &r.problems {
        outln!("  problem: {}", problem_line(p));
    }
    for s in &r.skipped {
        outln!(
            "  salvage skipped: {} at offset {}: {}",
            s.path.display(),
            s.offset,
            s.reason
        );
    }
    let unknown = if r.losses_unknown > 0 {
        format!(
            ", and whatever followed {} damaged region(s) at the end of a segment",
            r.losses_unknown
        )
    } else {
        String::new()
    };
    outln!(
        "lost: {} bytes of damage; {} log records{unknown}",
        r.bytes_lost,
        r.records_lost
    );
    let snapshot_damaged = r
        .problems
        .iter()
        .any(|p| p.path.extension().is_some_and(|e| e == "snap"));
    if snapshot_damaged {
        let lost = r
            .snapshot_entries_lost
            .map_or_else(|| "an unknown number of".to_string(), |n| n.to_string());
        outln!(
            "damaged snapshot: {} entries read from blocks that verify and kept, {lost} entries lost (the log after it still applies)",
            r.snapshot_entries_kept
        );
    }
    if r.torn_tail_bytes > 0 {
        outln!(
            "cut: {} bytes of torn tail (writes never known durable)",
            r.torn_tail_bytes
        );
    }
    for (was, now) in &r.broken_files {
        outln!("  kept damaged file: {} -> {}", was.display(), now.display());
    }
    for p in &r.removed_files {
        outln!("  removed (its content is in the new snapshot): {}", p.display());
    }
    match &r.snapshot {
        Some(s) => outln!(
            "repaired: {} keys as of sequence number {}, in {}",
            r.keys,
            r.seq,
            s.display()
        ),
        None => outln!("repaired: nothing could be salvaged; the store is now empty"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line to standard output, for [`outln!`].
fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("sessiondb: writing to standard output: {e}");
        std::process::exit(1);
    }
}
