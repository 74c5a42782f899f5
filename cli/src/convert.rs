//! `sessiondb encrypt DIR` and `sessiondb decrypt DIR`: convert a closed store, crash-safe at
//! every step (docs/design.md, "Converting a store: encrypt and decrypt").
//!
//! 1. Open the store: its lock keeps every other process out until the end. Its clock is fixed
//!    at the moment the conversion starts, so what is live then is what is copied, and every
//!    deadline is copied exactly.
//! 2. Build the converted store in `PARENT/.NAME.convert-PID`: a new store with the target's
//!    options, every live entry copied in batches with its deadline, checkpointed and closed;
//!    reopened and compared with the original entry by entry; given the original directory's
//!    owner and mode; every file and directory fsynced, then the parent.
//! 3. Exchange the two directories in one step (`renameat2(RENAME_EXCHANGE)`); fsync the parent.
//! 4. Close the original (its lock stays with its files, now under the staging name) and delete
//!    it; fsync the parent.
//!
//! At every moment, crash or not, DIR is the whole original or the whole converted store. A
//! staging directory a crash leaves behind (a partial copy, or the whole old store) is deleted
//! by the next `encrypt` or `decrypt` of DIR, unless the process that made it still runs.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiondb::inspect;
use sessiondb::{limits, Batch, Clock, Db, EncryptionKey, Error, ManualClock, Options, SystemClock, Versioned};

use crate::{io_error, out, progress};

/// Which way a store is converted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    Encrypt,
    Decrypt,
}

/// Test hook: the name of a step at which the tool stops (printing `sessiondb: paused at STEP`
/// on stderr) until its standard input closes, so a test can kill it there. The steps, in
/// order: `opened`, `staging-created`, `copying`, `copied`, `exchanged`, `removing`, `removed`.
pub const PAUSE_VAR: &str = "SESSIONDB_CONVERT_PAUSE_AT";

/// A batch of the copy is written once it holds this many bytes of keys and values ...
const BATCH_BYTES: usize = 1024 * 1024;
/// ... or this many entries.
const BATCH_ENTRIES: usize = 4096;
/// A value larger than this is written in a batch of its own.
const BATCHED_VALUE_MAX: usize = 256 * 1024;
/// The library's default `value_size_max`, `batch_size_max` and `segment_size`: the copy keeps
/// them unless a value is larger than the first ([`sized`]).
const VALUE_SIZE_MAX_DEFAULT: usize = 1024 * 1024;
const BATCH_SIZE_MAX_DEFAULT: usize = 4 * 1024 * 1024;
const SEGMENT_SIZE_DEFAULT: u64 = 16 * 1024 * 1024;

fn pause(step: &str) {
    if std::env::var_os(PAUSE_VAR).is_some_and(|v| v == step) {
        eprintln!("sessiondb: paused at {step}");
        // NOTE: only the end of input matters; what it holds is thrown away.
        let _ = io::stdin().read_to_end(&mut Vec::new());
    }
}

/// Converts the store in `dir`, which must be closed, under `key` (the key to encrypt with, or
/// the store's key to decrypt).
pub fn run(dir: &Path, conversion: Conversion, key: &EncryptionKey) -> sessiondb::Result<ExitCode> {
    let started = Instant::now();
    inspect::inventory(dir)?;
    let place = Place::of(dir)?;
    remove_leftovers(&place)?;

    // Step 1: the original, locked, its time fixed.
    let t0 = SystemClock.now_ms();
    let clock = ManualClock::new(t0);
    let source_options = match conversion {
        Conversion::Encrypt => quiet(&clock),
        Conversion::Decrypt => quiet(&clock).encryption_key(key.clone()),
    };
    let source = match (Db::open_with(dir, source_options), conversion) {
        (Ok(db), _) => db,
        (Err(Error::KeyRequired { .. }), Conversion::Encrypt) => {
            return refuse(format!(
                "{} is already encrypted (`sessiondb rotate-key` changes its key)",
                dir.display()
            ))
        }
        (Err(Error::NotEncrypted { .. }), Conversion::Decrypt) => {
            return refuse(format!("{} is not encrypted: nothing to decrypt", dir.display()))
        }
        (Err(e), _) => return Err(e),
    };
    pause("opened");
    if let Some(reason) = foreign_files(dir)? {
        return refuse(reason);
    }
    let census = census(&source)?;

    // Step 2: the converted copy, complete and durable under the staging name.
    let staging = Staging::new(&place)?;
    let target_options = match conversion {
        Conversion::Encrypt => sized(quiet(&clock), &census).encryption_key(key.clone()),
        Conversion::Decrypt => sized(quiet(&clock), &census),
    };
    build(&source, &staging.path, target_options.clone(), t0, &census)?;
    compare(&source, &staging.path, target_options)?;
    match_owner_and_mode(&place.meta, &staging.path)?;
    sync_tree(&staging.path)?;
    place.sync_parent()?;
    pause("copied");

    // Step 3: the exchange. From here DIR is the converted store.
    place.exchange(&staging.name)?;
    if let Err(e) = place.sync_parent() {
        // NOTE: whether the exchange is durable is not known: both stores stay.
        staging.keep();
        return Err(e);
    }
    pause("exchanged");

    // Step 4: the original goes, its lock with it.
    let closed = source.close();
    staging.remove_old()?;
    place.sync_parent()?;
    closed?;
    pause("removed");
    report(dir, conversion, &census, started.elapsed());
    Ok(ExitCode::SUCCESS)
}

fn refuse(reason: String) -> sessiondb::Result<ExitCode> {
    eprintln!("sessiondb: {reason}");
    Ok(ExitCode::FAILURE)
}

fn report(dir: &Path, conversion: Conversion, census: &Census, took: Duration) {
    let done = match conversion {
        Conversion::Encrypt => "encrypted",
        Conversion::Decrypt => "decrypted",
    };
    outln!(
        "{done} {}: {} key{} ({}) copied into a new store, compared with the original, and put in its place; took {}",
        dir.display(),
        census.keys,
        if census.keys == 1 { "" } else { "s" },
        out::size(census.bytes),
        out::duration(took)
    );
    outln!("every key has a new version (sequence number); values and expiry deadlines are unchanged");
    if conversion == Conversion::Encrypt {
        outln!(
            "the unencrypted files were deleted, but their bytes may remain in the file system's free blocks \
             (only a new file system, or full-disk encryption, removes them)"
        );
    }
}

/// Options of a store the conversion opens: no background thread (nothing touches the files
/// after the exchange by their old names), no automatic checkpoint, no fsync per write (the copy
/// is made durable as a whole), time fixed at `clock`.
fn quiet(clock: &ManualClock) -> Options {
    Options::new()
        .clock(Arc::new(clock.clone()))
        .auto_checkpoint(false)
        .preallocate_ahead(false)
        .sweep_interval(None)
        .sync_mode(sessiondb::SyncMode::Never)
}

/// `options` able to hold the largest value of the original, in a batch of its own.
fn sized(options: Options, census: &Census) -> Options {
    if census.value_max <= VALUE_SIZE_MAX_DEFAULT {
        return options;
    }
    // A batch of one put: the value, a key, the encoding's few bytes.
    let batch = (census.value_max + limits::KEY_SIZE_MAX + 4096).max(BATCH_SIZE_MAX_DEFAULT);
    // A record of that batch, with headers and, encrypted, a nonce and a tag: 1 MiB of room
    // covers all but the batch.
    let segment = (batch as u64 + (1 << 20)).next_multiple_of(1 << 20);
    options
        .value_size_max(census.value_max)
        .batch_size_max(batch)
        .segment_size(segment.clamp(SEGMENT_SIZE_DEFAULT, limits::SEGMENT_SIZE_MAX))
}

// ---------------------------------------------------------------------------------------------
// Where the store is, and what a crash left next to it

struct Place {
    /// The store's directory as given.
    dir: PathBuf,
    /// Its parent, resolved (the exchange happens in it), and the parent itself, open.
    parent: PathBuf,
    parent_dir: File,
    /// The store directory's name in it.
    name: OsString,
    /// The store directory's owner and mode, which the converted store gets.
    meta: Metadata,
}

impl Place {
    fn of(dir: &Path) -> sessiondb::Result<Place> {
        let real = fs::canonicalize(dir).map_err(|e| io_error(dir, "resolve", e))?;
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(Error::InvalidPath {
                path: dir.to_path_buf(),
                reason: "a store at the root of the file system cannot be converted in place".into(),
            });
        };
        let parent_dir = File::open(parent).map_err(|e| io_error(parent, "open", e))?;
        let meta = fs::metadata(&real).map_err(|e| io_error(dir, "stat", e))?;
        let parent_meta = parent_dir.metadata().map_err(|e| io_error(parent, "stat", e))?;
        if parent_meta.dev() != meta.dev() {
            // The copy is built beside the store, and only two directories of one file system
            // can be exchanged.
            return Err(Error::InvalidPath {
                path: dir.to_path_buf(),
                reason: "is a mount point: the conversion builds its copy beside the store, on the same file \
                         system; move the store into a directory below the mount point first"
                    .into(),
            });
        }
        Ok(Place {
            dir: dir.to_path_buf(),
            parent: parent.to_path_buf(),
            parent_dir,
            name: name.to_os_string(),
            meta,
        })
    }

    /// `.NAME.convert-`: the start of every staging directory's name.
    fn staging_prefix(&self) -> OsString {
        let mut s = OsString::from(".");
        s.push(&self.name);
        s.push(".convert-");
        s
    }

    fn sync_parent(&self) -> sessiondb::Result<()> {
        self.parent_dir
            .sync_all()
            .map_err(|e| io_error(&self.parent, "fsync", e))
    }

    /// Swaps the store directory and the staging directory `other` in one step.
    fn exchange(&self, other: &OsStr) -> sessiondb::Result<()> {
        exchange_in(&self.parent_dir, &self.name, other).map_err(|e| {
            let unsupported = e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
                || e.kind() == io::ErrorKind::Unsupported;
            let source = match unsupported {
                true => io::Error::new(
                    e.kind(),
                    format!(
                        "the file system cannot exchange two directories in one step, which encrypt and decrypt need ({e})"
                    ),
                ),
                false => e,
            };
            io_error(self.parent.join(&self.name), "renameat2(RENAME_EXCHANGE)", source)
        })
    }
}

#[cfg(target_os = "linux")]
fn exchange_in(parent: &File, a: &OsStr, b: &OsStr) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags};
    renameat_with(parent, a, parent, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn exchange_in(_parent: &File, _a: &OsStr, _b: &OsStr) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "exchanging two directories in one step needs Linux (renameat2)",
    ))
}

/// Whether process `pid` runs (or may: anything but "no such process" counts as running).
fn running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

/// Deletes the staging directories of interrupted conversions of this store: a partial copy,
/// or the whole old store after the exchange. Either way the store directory is whole without
/// it. One whose process still runs (another conversion under way) is left alone.
fn remove_leftovers(place: &Place) -> sessiondb::Result<()> {
    let prefix = place.staging_prefix();
    let entries = fs::read_dir(&place.parent).map_err(|e| io_error(&place.parent, "list", e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&place.parent, "list", e))?;
        let name = entry.file_name();
        let Some(pid) = name
            .as_bytes()
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        // NOTE: never follows a link: only a real directory of that name is ours.
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if pid != std::process::id() && running(pid) {
            outln!(
                "left alone: {} (process {pid}, which may be converting {}, is running)",
                path.display(),
                place.dir.display()
            );
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path, "remove", e)),
        }
        removed = true;
        outln!(
            "removed {}: left by an interrupted encrypt or decrypt of {} (process {pid})",
            path.display(),
            place.dir.display()
        );
    }
    if removed {
        place.sync_parent()?;
    }
    Ok(())
}

/// A reason to refuse if the store's directory holds anything but the store: the whole
/// directory is replaced, so anything else in it would be lost (and files set aside by repair
/// hold the store's data as it was, unconverted).
fn foreign_files(dir: &Path) -> sessiondb::Result<Option<String>> {
    let files = inspect::inventory(dir)?;
    if let Some(b) = files.broken_files.first() {
        return Ok(Some(format!(
            "{} holds files set aside by repair ({}): move them out of the store first (they hold its data unconverted, and the conversion replaces the whole directory)",
            dir.display(),
            b.display()
        )));
    }
    let mut known: Vec<PathBuf> = files
        .segments
        .iter()
        .chain(&files.snapshots)
        .map(|f| f.1.clone())
        .chain(files.temp_files.iter().cloned())
        .collect();
    for name in ["LOCK", "KEYRING", "KEYRING.tmp", "wal"] {
        known.push(dir.join(name));
    }
    for d in [dir.to_path_buf(), dir.join("wal")] {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&d, "list", e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| io_error(&d, "list", e))?.path();
            if !known.contains(&path) {
                return Ok(Some(format!(
                    "{} holds {}, which is not part of the store: move it out first (the conversion replaces the whole directory)",
                    dir.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// The copy

#[derive(Default)]
struct Census {
    keys: u64,
    bytes: u64,
    value_max: usize,
}

/// Counts the live entries and finds the largest value (which sizes the copy's options).
fn census(db: &Db) -> sessiondb::Result<Census> {
    let spin = progress::spinner("counting");
    let mut c = Census::default();
    for entry in db.range::<&[u8], _>(..) {
        let (k, v) = entry?;
        c.keys += 1;
        c.bytes += (k.len() + v.len()) as u64;
        c.value_max = c.value_max.max(v.len());
    }
    spin.finish_and_clear();
    Ok(c)
}

/// The staging directory: deleted when dropped unless [`Staging::remove_old`] ran (on every
/// error, and on a panic, before or after the exchange: either way it is not the store).
struct Staging {
    name: OsString,
    path: PathBuf,
    armed: bool,
}

impl Staging {
    fn new(place: &Place) -> sessiondb::Result<Staging> {
        let mut name = place.staging_prefix();
        name.push(std::process::id().to_string());
        let path = place.parent.join(&name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(Error::InvalidPath {
                path,
                reason: "already exists (an interrupted conversion's; delete it)".into(),
            });
        }
        Ok(Staging {
            name,
            path,
            armed: true,
        })
    }

    /// Leaves the staging directory where it is.
    fn keep(mut self) {
        self.armed = false;
    }

    /// After the exchange: deletes the old store, now under the staging name.
    fn remove_old(mut self) -> sessiondb::Result<()> {
        let path = self.path.clone();
        remove_tree(&path).map_err(|e| io_error(&path, "remove the original store", e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            // NOTE: best effort; the next conversion of this store deletes what is left.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Deletes the tree at `path`: one file first (the `removing` pause comes after it), then the rest.
fn remove_tree(path: &Path) -> io::Result<()> {
    let first = fs::read_dir(path)?
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()));
    if let Some(first) = first {
        fs::remove_file(first.path())?;
        pause("removing");
    }
    fs::remove_dir_all(path)
}

/// Writes every live entry of `source` into a new store at `path`, checkpoints and closes it.
fn build(source: &Db, path: &Path, options: Options, t0: u64, census: &Census) -> sessiondb::Result<()> {
    let target = Db::open_with(path, options)?;
    pause("staging-created");
    let bar = progress::bar(census.keys, "copying");
    let mut batch = Batch::new();
    let mut batch_bytes = 0;
    let mut flushed = false;
    let mut flush = |batch: &mut Batch, batch_bytes: &mut usize| -> sessiondb::Result<()> {
        if !batch.is_empty() {
            target.write(std::mem::take(batch))?;
            *batch_bytes = 0;
            if !flushed {
                flushed = true;
                pause("copying");
            }
        }
        Ok(())
    };
    for entry in versioned(source) {
        let (k, v) = entry?;
        // The deadline, exactly: the copy's clock reads t0 too, and a put's deadline is its
        // clock's time plus the time to live.
        let ttl = match v.expires_at_ms {
            None => None,
            Some(at) if at > t0 => Some(Duration::from_millis(at - t0)),
            Some(_) => continue,
        };
        if v.value.len() > BATCHED_VALUE_MAX {
            flush(&mut batch, &mut batch_bytes)?;
            let mut single = Batch::new();
            match ttl {
                Some(ttl) => single.put_with_ttl(&k, &v.value, ttl),
                None => single.put(&k, &v.value),
            };
            flush(&mut single, &mut 0)?;
        } else {
            match ttl {
                Some(ttl) => batch.put_with_ttl(&k, &v.value, ttl),
                None => batch.put(&k, &v.value),
            };
            batch_bytes += k.len() + v.value.len();
            if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_ENTRIES {
                flush(&mut batch, &mut batch_bytes)?;
            }
        }
        bar.inc(1);
    }
    flush(&mut batch, &mut batch_bytes)?;
    bar.finish_and_clear();
    target.sync()?;
    target.checkpoint()?;
    target.close()
}

/// Opens the copy at `path` again and compares it with `source`, entry by entry: keys, values
/// and deadlines.
fn compare(source: &Db, path: &Path, options: Options) -> sessiondb::Result<()> {
    let copy = Db::open_with(path, options)?;
    let differs = |key: &[u8], what: &str| Error::Corruption {
        path: path.to_path_buf(),
        offset: 0,
        reason: format!(
            "the converted copy differs from the original at key {}: {what}; the store is unchanged",
            out::escaped(key)
        ),
    };
    let spin = progress::spinner("comparing");
    let (mut a, mut b) = (versioned(source), versioned(&copy));
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => break,
            (Some((k, _)), None) => return Err(differs(&k, "missing")),
            (None, Some((k, _))) => return Err(differs(&k, "not in the original")),
            (Some((ka, va)), Some((kb, vb))) => {
                if ka != kb {
                    return Err(differs(ka.min(kb).as_slice(), "present in one only"));
                }
                if va.value != vb.value {
                    return Err(differs(&ka, "another value"));
                }
                if va.expires_at_ms != vb.expires_at_ms {
                    return Err(differs(&ka, "another expiry deadline"));
                }
            }
        }
    }
    spin.finish_and_clear();
    drop((a, b));
    copy.close()
}

type Entries<'a> = Box<dyn Iterator<Item = sessiondb::Result<(Vec<u8>, Versioned)>> + 'a>;

/// Every live entry of `db`, in key order, with its value and expiry deadline: a scan, and a
/// get for each key's deadline (the library's scan does not yield deadlines).
fn versioned(db: &Db) -> Entries<'_> {
    Box::new(db.range::<&[u8], _>(..).filter_map(move |entry| {
        // NOTE: the conversion's clock is fixed and its stores locked: a key the scan saw is
        // there for the get.
        let got = entry.and_then(|(k, _)| Ok(db.get_versioned(&k)?.map(|v| (k, v))));
        got.transpose()
    }))
}

/// Gives the tree at `path` the owner of the original store's directory (when the tool runs as
/// another user, e.g. root) and its top directory that directory's mode.
fn match_owner_and_mode(original: &Metadata, path: &Path) -> sessiondb::Result<()> {
    let mode = original.mode() & 0o7777;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| io_error(path, "chmod", e))?;
    let own = fs::metadata(path).map_err(|e| io_error(path, "stat", e))?;
    if (own.uid(), own.gid()) == (original.uid(), original.gid()) {
        return Ok(());
    }
    walk(path, &mut |p| {
        std::os::unix::fs::lchown(p, Some(original.uid()), Some(original.gid())).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot give the converted store the original's owner (uid {}, gid {}): {e}; run as that user or as root",
                    original.uid(),
                    original.gid()
                ),
            )
        })
    })
    .map_err(|e| io_error(path, "chown", e))
}

/// fsyncs every file and directory under `path` (directories after what they hold), and `path`.
fn sync_tree(path: &Path) -> sessiondb::Result<()> {
    walk(path, &mut |p| File::open(p)?.sync_all()).map_err(|e| io_error(path, "fsync", e))
}

/// Calls `f` on every entry under `dir`, children before their directory, then on `dir`.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path) -> io::Result<()>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, f)?;
        } else {
            f(&path)?;
        }
    }
    f(dir)
}
