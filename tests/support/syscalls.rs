//! System calls recorded with strace, and the power-loss states they may leave.
//!
//! [`parse`] reads a trace written by `strace -f -qq -xx -e signal=none -o FILE` (every string in
//! hex, one line per call prefixed with its thread id, `<unfinished ...>` / `<... resumed>` pairs
//! joined per thread) and turns the calls that change files under one root directory into
//! [`Effect`]s on inodes, in the order the calls completed (a `close` at its start, so a file
//! descriptor reused by another thread is never confused). [`crash_state`] picks, for a crash
//! after the first `p` of them, which effects persisted under a [`Model`]; [`materialize`] writes
//! that state as real files. `tests/syscall_crash.rs` is the test; docs/testing.md has the
//! models' rules.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::random::Rng;

/// An inode of the recorded file system: 0 is the root directory, which existed before.
pub type Ino = usize;

/// The sector size torn writes are cut at.
pub const SECTOR: u64 = 512;

/// What one recorded call did to the files under the root.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A new entry `name` in directory `dir` for the new inode `ino` (`open` with `O_CREAT`,
    /// `mkdir`).
    Create {
        dir: Ino,
        name: String,
        ino: Ino,
        is_dir: bool,
    },
    /// `rename`: `from_dir/from` (inode `ino`) becomes `to_dir/to`, replacing what was there.
    Rename {
        from_dir: Ino,
        from: String,
        to_dir: Ino,
        to: String,
        ino: Ino,
    },
    /// `unlink` or `rmdir` of `dir/name` (inode `ino`).
    Unlink { dir: Ino, name: String, ino: Ino },
    /// Bytes written at `offset`; `append` when they lie past the file's size at the time (a
    /// write that both overwrites and extends is recorded as two).
    Write {
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
        append: bool,
    },
    /// `ftruncate` (or `O_TRUNC`) to `len`.
    SetLen { ino: Ino, len: u64 },
    /// `fsync` (`data_only` false) or `fdatasync` of a file or a directory.
    Sync { ino: Ino, data_only: bool },
}

/// One recorded call: its effect, the trace lines where it started and completed, and a short
/// description for reports.
#[derive(Debug, Clone)]
pub struct Call {
    pub effect: Effect,
    pub entry: usize,
    pub done: usize,
    pub what: String,
}

/// A parsed trace.
#[derive(Debug, Default)]
pub struct Trace {
    /// The calls that changed something under the root, in completion order.
    pub calls: Vec<Call>,
    /// Each inode's path (relative to the root; the last a rename gave it) and whether it is a
    /// directory.
    pub inodes: Vec<(String, bool)>,
    /// Lines of the trace, and the calls on them (every traced call, whatever it touched).
    pub lines: usize,
    pub syscalls: usize,
}

impl Trace {
    /// The inode last named `rel` (a path relative to the root).
    pub fn inode_named(&self, rel: &str) -> Option<Ino> {
        self.inodes.iter().rposition(|(p, _)| p == rel)
    }
}

/// The system calls a recording traces: every one that can change a file, a directory entry or a
/// file descriptor's meaning (`?` ignores names this architecture lacks). `parse` refuses any of
/// the ones it does not model if it touches the root.
pub const TRACED: &str = "?open,?openat,?openat2,?creat,?close,?dup,?dup2,?dup3,?fcntl,\
?write,?pwrite64,?writev,?pwritev,?pwritev2,?fsync,?fdatasync,?sync_file_range,?sync,?syncfs,\
?ftruncate,?truncate,?fallocate,?rename,?renameat,?renameat2,?unlink,?unlinkat,?rmdir,?mkdir,\
?mkdirat,?link,?linkat,?symlink,?symlinkat,?copy_file_range,?sendfile,?msync";

/// One traced call as the trace shows it.
struct Raw {
    name: String,
    args: String,
    ret: i64,
    entry: usize,
    done: usize,
}

/// Reads the trace text: every traced call whose start and end it shows, in completion order (a
/// `close` at its start).
fn raw_calls(text: &str) -> Result<(Vec<Raw>, usize), String> {
    let mut pending: HashMap<&str, (String, usize)> = HashMap::new();
    let mut raws = Vec::new();
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        lines = n + 1;
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let rest = rest.trim_start();
        let (full, entry) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((_, tail)) = r.split_once(" resumed>") else {
                return Err(format!("line {}: unreadable resumption: {line:.200}", n + 1));
            };
            match pending.remove(pid) {
                Some((head, entry)) => (head + tail, entry),
                // A call started before the trace did (never here) or whose start we skipped.
                None => continue,
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (head.to_string(), n));
            continue;
        } else if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        } else {
            (rest.to_string(), n)
        };
        let Some(eq) = full.rfind(" = ") else {
            return Err(format!("line {}: no result: {:.200}", n + 1, full));
        };
        let call = full[..eq].trim_end();
        let Some(open) = call.find('(') else {
            return Err(format!("line {}: no arguments: {:.200}", n + 1, full));
        };
        let Some(args) = call[open + 1..].strip_suffix(')') else {
            return Err(format!("line {}: unclosed arguments: {:.200}", n + 1, full));
        };
        let ret_text = full[eq + 3..].split_whitespace().next().unwrap_or("?");
        // `?` (the process went away mid-call) counts as a failure: no effect is assumed.
        let ret = ret_text.parse::<i64>().unwrap_or(-1);
        raws.push(Raw {
            name: call[..open].to_string(),
            args: args.to_string(),
            ret,
            entry,
            done: n,
        });
    }
    raws.sort_by_key(|r| if r.name == "close" { r.entry } else { r.done });
    Ok((raws, lines))
}

/// Splits an argument list at its top-level commas.
fn split_args(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    let b = s.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'[' | b'{' if !quoted => depth += 1,
            b']' | b'}' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s.trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// The bytes of a string argument printed with `-xx`; an error if strace cut it short (`"..."`).
fn decode(arg: &str) -> Result<Vec<u8>, String> {
    let inner = arg
        .strip_prefix('"')
        .ok_or_else(|| format!("not a string: {arg:.80}"))?;
    let close = inner
        .find('"')
        .ok_or_else(|| format!("unterminated string: {arg:.80}"))?;
    if inner[close + 1..].starts_with("...") {
        return Err("strace cut a string short: raise its -s".into());
    }
    let hex = &inner.as_bytes()[..close];
    let mut out = Vec::with_capacity(hex.len() / 4);
    let mut i = 0;
    while i < hex.len() {
        if i + 4 > hex.len() || hex[i] != b'\\' || hex[i + 1] != b'x' {
            return Err(format!("a string not in -xx form: {arg:.80}"));
        }
        let h = std::str::from_utf8(&hex[i + 2..i + 4]).map_err(|e| e.to_string())?;
        out.push(u8::from_str_radix(h, 16).map_err(|e| format!("{e}: {arg:.80}"))?);
        i += 4;
    }
    Ok(out)
}

fn int(arg: &str) -> Result<i64, String> {
    let a = arg.trim();
    let parsed = match a.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16),
        None => a.parse(),
    };
    parsed.map_err(|_| format!("not a number: {a:.80}"))
}

/// The program's view of one inode while the trace is read.
#[derive(Default)]
struct View {
    entries: Option<BTreeMap<String, Ino>>,
    size: u64,
}

#[derive(Clone)]
struct Fd {
    path: PathBuf,
    ino: Option<Ino>,
    append: bool,
    pos: u64,
}

struct Interp<'a> {
    root: &'a Path,
    cwd: &'a Path,
    views: Vec<View>,
    fds: HashMap<i64, Fd>,
    trace: Trace,
}

/// Parses a trace of a run whose files under `root` matter; `cwd` is the traced process's
/// working directory (for relative paths). A call on the root that the models do not cover is an
/// error naming it.
pub fn parse(text: &str, root: &Path, cwd: &Path) -> Result<Trace, String> {
    let (raws, lines) = raw_calls(text)?;
    let mut it = Interp {
        root,
        cwd,
        views: vec![View {
            entries: Some(BTreeMap::new()),
            size: 0,
        }],
        fds: HashMap::new(),
        trace: Trace {
            inodes: vec![(String::new(), true)],
            lines,
            syscalls: raws.len(),
            ..Trace::default()
        },
    };
    for raw in &raws {
        it.call(raw).map_err(|e| {
            format!(
                "trace line {}: {}({:.160}) = {}: {e}",
                raw.done + 1,
                raw.name,
                raw.args,
                raw.ret
            )
        })?;
    }
    Ok(it.trace)
}

impl Interp<'_> {
    fn push(&mut self, raw: &Raw, effect: Effect, what: String) {
        self.trace.calls.push(Call {
            effect,
            entry: raw.entry,
            done: raw.done,
            what,
        });
    }

    /// The absolute, normalised path of a path argument relative to `dirfd`.
    fn path_at(&self, dirfd: Option<&str>, arg: &str) -> Result<PathBuf, String> {
        let p = PathBuf::from(String::from_utf8(decode(arg)?).map_err(|e| e.to_string())?);
        let base = match dirfd {
            _ if p.is_absolute() => PathBuf::new(),
            None | Some("AT_FDCWD") => self.cwd.to_path_buf(),
            Some(fd) => match self.fds.get(&int(fd)?) {
                Some(f) => f.path.clone(),
                None => return Err(format!("a path relative to an unknown descriptor {fd}")),
            },
        };
        let mut out = PathBuf::new();
        for c in base.join(p).components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// The path's components below the root, or `None` outside it.
    fn below_root(&self, path: &Path) -> Option<Vec<String>> {
        let rel = path.strip_prefix(self.root).ok()?;
        Some(
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect(),
        )
    }

    fn lookup(&self, parts: &[String]) -> Option<Ino> {
        let mut at = 0;
        for p in parts {
            at = *self.views[at].entries.as_ref()?.get(p)?;
        }
        Some(at)
    }

    /// The directory holding `parts` and the last name.
    fn parent_of(&self, parts: &[String]) -> Result<(Ino, String), String> {
        let (name, dir) = parts.split_last().ok_or("the root itself")?;
        let d = self
            .lookup(dir)
            .ok_or_else(|| format!("no directory {}", dir.join("/")))?;
        Ok((d, name.clone()))
    }

    fn new_inode(&mut self, parts: &[String], is_dir: bool) -> Ino {
        self.views.push(View {
            entries: is_dir.then(BTreeMap::new),
            size: 0,
        });
        self.trace.inodes.push((parts.join("/"), is_dir));
        self.views.len() - 1
    }

    fn name(&self, ino: Ino) -> &str {
        &self.trace.inodes[ino].0
    }

    fn fd_ino(&self, arg: &str) -> Result<Option<Ino>, String> {
        Ok(self.fds.get(&int(arg)?).and_then(|f| f.ino))
    }

    fn call(&mut self, raw: &Raw) -> Result<(), String> {
        let a = split_args(&raw.args);
        let arg = |i: usize| a.get(i).copied().ok_or_else(|| format!("argument {i} missing"));
        let ok = raw.ret >= 0;
        match raw.name.as_str() {
            "open" | "openat" | "creat" | "openat2" => {
                let (dirfd, path, flags) = match raw.name.as_str() {
                    "open" => (None, arg(0)?, arg(1)?),
                    "creat" => (None, arg(0)?, "O_WRONLY|O_CREAT|O_TRUNC"),
                    _ => (Some(arg(0)?), arg(1)?, arg(2)?),
                };
                let path = self.path_at(dirfd, path)?;
                if ok {
                    self.open(raw, path, flags)?;
                }
            }
            "mkdir" | "mkdirat" => {
                let path = if raw.name == "mkdir" {
                    self.path_at(None, arg(0)?)?
                } else {
                    self.path_at(Some(arg(0)?), arg(1)?)?
                };
                if let (true, Some(parts)) = (ok, self.below_root(&path)) {
                    self.create(raw, &parts, true)?;
                }
            }
            "close" => {
                self.fds.remove(&int(arg(0)?)?);
            }
            "dup" | "dup2" | "dup3" | "fcntl" => {
                let dup = match raw.name.as_str() {
                    "fcntl" => arg(1)?.starts_with("F_DUPFD"),
                    _ => true,
                };
                if ok && dup {
                    if let Some(f) = self.fds.get(&int(arg(0)?)?).cloned() {
                        self.fds.insert(raw.ret, f);
                    }
                }
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
                let fd = int(arg(0)?)?;
                let Some(f) = self.fds.get(&fd).cloned() else {
                    return Ok(());
                };
                let Some(ino) = f.ino else { return Ok(()) };
                if !ok {
                    return Ok(());
                }
                let mut data = if raw.name.ends_with('v') || raw.name == "pwritev2" {
                    let mut d = Vec::new();
                    for iov in split_args(arg(1)?.trim_start_matches('[').trim_end_matches(']')) {
                        let base = iov
                            .trim_start_matches('{')
                            .strip_prefix("iov_base=")
                            .ok_or_else(|| format!("unreadable iovec {iov:.80}"))?;
                        d.extend(decode(base)?);
                    }
                    d
                } else {
                    decode(arg(1)?)?
                };
                data.truncate(raw.ret as usize);
                let offset = match raw.name.as_str() {
                    "pwrite64" | "pwritev" | "pwritev2" => int(arg(3)?)? as u64,
                    _ if f.append => self.views[ino].size,
                    _ => f.pos,
                };
                if !raw.name.starts_with('p') {
                    if let Some(f) = self.fds.get_mut(&fd) {
                        f.pos = offset + data.len() as u64;
                    }
                }
                self.write(raw, ino, offset, data);
            }
            "fsync" | "fdatasync" => {
                if let (true, Some(ino)) = (ok, self.fd_ino(arg(0)?)?) {
                    let what = format!("{} {}", raw.name, self.name(ino));
                    self.push(
                        raw,
                        Effect::Sync {
                            ino,
                            data_only: raw.name == "fdatasync",
                        },
                        what,
                    );
                }
            }
            "ftruncate" | "truncate" | "fallocate" => {
                let ino = if raw.name == "truncate" {
                    let path = self.path_at(None, arg(0)?)?;
                    self.below_root(&path).and_then(|p| self.lookup(&p))
                } else {
                    self.fd_ino(arg(0)?)?
                };
                if let (true, Some(ino)) = (ok, ino) {
                    let len = if raw.name == "fallocate" {
                        if arg(1)? != "0" {
                            return Err("only fallocate mode 0 is modelled".into());
                        }
                        (int(arg(2)?)? + int(arg(3)?)?).max(self.views[ino].size as i64) as u64
                    } else {
                        int(arg(1)?)? as u64
                    };
                    self.views[ino].size = len;
                    let what = format!("{} {} to {len}", raw.name, self.name(ino));
                    self.push(raw, Effect::SetLen { ino, len }, what);
                }
            }
            "rename" | "renameat" | "renameat2" => {
                let (from, to) = if raw.name == "rename" {
                    (self.path_at(None, arg(0)?)?, self.path_at(None, arg(1)?)?)
                } else {
                    if raw.name == "renameat2" && arg(4)? != "0" {
                        return Err("renameat2 flags are not modelled".into());
                    }
                    (
                        self.path_at(Some(arg(0)?), arg(1)?)?,
                        self.path_at(Some(arg(2)?), arg(3)?)?,
                    )
                };
                match (ok, self.below_root(&from), self.below_root(&to)) {
                    (false, ..) | (true, None, None) => {}
                    (true, Some(f), Some(t)) => {
                        let (from_dir, from) = self.parent_of(&f)?;
                        let (to_dir, to) = self.parent_of(&t)?;
                        let ino = self.lookup(&f).ok_or("renaming a file never seen")?;
                        self.views[from_dir]
                            .entries
                            .as_mut()
                            .ok_or("not a directory")?
                            .remove(&from);
                        self.views[to_dir]
                            .entries
                            .as_mut()
                            .ok_or("not a directory")?
                            .insert(to.clone(), ino);
                        // Later descriptions name the file by its new path.
                        self.trace.inodes[ino].0 = t.join("/");
                        let what = format!("rename {} -> {}", f.join("/"), t.join("/"));
                        self.push(
                            raw,
                            Effect::Rename {
                                from_dir,
                                from,
                                to_dir,
                                to,
                                ino,
                            },
                            what,
                        );
                    }
                    _ => return Err("a rename across the root's boundary".into()),
                }
            }
            "unlink" | "unlinkat" | "rmdir" => {
                let path = if raw.name == "unlinkat" {
                    self.path_at(Some(arg(0)?), arg(1)?)?
                } else {
                    self.path_at(None, arg(0)?)?
                };
                if let (true, Some(parts)) = (ok, self.below_root(&path)) {
                    let (dir, name) = self.parent_of(&parts)?;
                    let ino = self.views[dir]
                        .entries
                        .as_mut()
                        .ok_or("not a directory")?
                        .remove(&name)
                        .ok_or("unlinking a file never seen")?;
                    let what = format!("{} {}", raw.name, parts.join("/"));
                    self.push(raw, Effect::Unlink { dir, name, ino }, what);
                }
            }
            "link" | "linkat" | "symlink" | "symlinkat" | "copy_file_range" | "sendfile" | "sync_file_range"
            | "msync" | "sync" | "syncfs" => {
                let touches = ok
                    && (a.iter().any(|x| {
                        x.starts_with('"') && self.path_at(None, x).is_ok_and(|p| self.below_root(&p).is_some())
                    }) || a
                        .iter()
                        .any(|x| int(x).is_ok_and(|fd| self.fds.get(&fd).is_some_and(|f| f.ino.is_some())))
                        || raw.name == "sync");
                if touches {
                    return Err(format!("{} is not modelled", raw.name));
                }
            }
            other => return Err(format!("{other} was traced but is not handled")),
        }
        Ok(())
    }

    /// A new file or directory at `parts`: its inode, its entry in its directory, and the
    /// effect that creates it.
    fn create(&mut self, raw: &Raw, parts: &[String], is_dir: bool) -> Result<Ino, String> {
        let (dir, name) = self.parent_of(parts)?;
        let ino = self.new_inode(parts, is_dir);
        self.views[dir]
            .entries
            .as_mut()
            .ok_or("not a directory")?
            .insert(name.clone(), ino);
        let what = format!("{} {}", if is_dir { "mkdir" } else { "create" }, parts.join("/"));
        self.push(raw, Effect::Create { dir, name, ino, is_dir }, what);
        Ok(ino)
    }

    fn open(&mut self, raw: &Raw, path: PathBuf, flags: &str) -> Result<(), String> {
        let flag = |f: &str| flags.split('|').any(|x| x.trim() == f);
        let mut fd = Fd {
            path: path.clone(),
            ino: None,
            append: flag("O_APPEND"),
            pos: 0,
        };
        if let Some(parts) = self.below_root(&path) {
            let ino = match self.lookup(&parts) {
                Some(ino) => {
                    if flag("O_TRUNC") {
                        self.views[ino].size = 0;
                        let what = format!("truncate {} on open", parts.join("/"));
                        self.push(raw, Effect::SetLen { ino, len: 0 }, what);
                    }
                    ino
                }
                None if flag("O_CREAT") => self.create(raw, &parts, false)?,
                None => return Err(format!("opened {} which the trace never created", path.display())),
            };
            fd.ino = Some(ino);
        }
        self.fds.insert(raw.ret, fd);
        Ok(())
    }

    /// Records a write, split where it passes the file's size.
    fn write(&mut self, raw: &Raw, ino: Ino, offset: u64, data: Vec<u8>) {
        let size = self.views[ino].size;
        let end = offset + data.len() as u64;
        let split = size.clamp(offset, end);
        let (over, app) = data.split_at((split - offset) as usize);
        let name = self.name(ino).to_string();
        if !over.is_empty() {
            let what = format!("{} {name} {} bytes @ {offset}", raw.name, over.len());
            self.push(
                raw,
                Effect::Write {
                    ino,
                    offset,
                    data: over.to_vec(),
                    append: false,
                },
                what,
            );
        }
        if !app.is_empty() {
            let what = format!("{} {name} {} bytes @ {split} (appended)", raw.name, app.len());
            self.push(
                raw,
                Effect::Write {
                    ino,
                    offset: split,
                    data: app.to_vec(),
                    append: true,
                },
                what,
            );
        }
        self.views[ino].size = size.max(end);
    }
}

/// What a crash state keeps of one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Keep {
    Yes,
    No,
    /// A write of which only the sectors marked `true` landed (one flag per 512-byte sector it
    /// touches, from its first).
    Sectors(Vec<bool>),
}

/// Which persistence rules a crash state follows (docs/testing.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Strict POSIX: a file's data persists up to its last `fsync`/`fdatasync`, a directory's
    /// entries up to its last `fsync`; everything else is kept or lost, each on its own, and a
    /// write kept may be torn at sectors.
    Posix,
    /// ext4 `data=ordered`: metadata persists as a prefix of the journal (a sync forces the
    /// part that holds its file's changes), data appended to a file lands with or before the
    /// journal commit that makes it part of the file (a prefix of each file's appends, none
    /// after the cut); overwrites not synced are kept, lost or torn at sectors.
    Ext4Ordered,
}

/// How the unsynced calls of a crash state are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// As little as the model allows.
    Nothing,
    /// Everything the program did.
    Everything,
    /// Everything, but every unsynced write lost its first sector (a torn header or a torn
    /// record start).
    TornHeads,
    /// Each choice at random.
    Random,
}

/// What each call needs before it is durable, computed once per trace.
pub struct Durability {
    /// The first call (a sync) after which the call is durable under strict POSIX.
    posix_durable_at: Vec<usize>,
    /// For each sync, the last call whose metadata ext4 must have committed when it returned.
    ext4_forces: Vec<Option<usize>>,
}

impl Durability {
    pub fn new(trace: &Trace) -> Durability {
        let calls = &trace.calls;
        let mut syncs: HashMap<Ino, Vec<usize>> = HashMap::new();
        for (i, c) in calls.iter().enumerate() {
            if let Effect::Sync { ino, .. } = c.effect {
                syncs.entry(ino).or_default().push(i);
            }
        }
        // The first sync of `ino` after call i that started after i completed.
        let first_sync = |ino: Ino, i: usize| -> usize {
            syncs
                .get(&ino)
                .and_then(|v| v.iter().copied().find(|&s| s > i && calls[s].entry > calls[i].done))
                .unwrap_or(usize::MAX)
        };
        let posix_durable_at = calls
            .iter()
            .enumerate()
            .map(|(i, c)| match c.effect {
                Effect::Create { dir, .. } | Effect::Unlink { dir, .. } => first_sync(dir, i),
                Effect::Rename { from_dir, to_dir, .. } => first_sync(from_dir, i).max(first_sync(to_dir, i)),
                Effect::Write { ino, .. } | Effect::SetLen { ino, .. } => first_sync(ino, i),
                Effect::Sync { .. } => 0,
            })
            .collect();
        let ext4_forces = calls
            .iter()
            .enumerate()
            .map(|(s, c)| {
                let Effect::Sync { ino: x, data_only } = c.effect else {
                    return None;
                };
                (0..s)
                    .rev()
                    .filter(|&m| calls[m].done < c.entry)
                    .find(|&m| match &calls[m].effect {
                        Effect::SetLen { ino, .. } | Effect::Write { ino, append: true, .. } => *ino == x,
                        Effect::Create { dir, ino, .. } | Effect::Unlink { dir, ino, .. } => {
                            !data_only && (*dir == x || *ino == x)
                        }
                        Effect::Rename {
                            from_dir, to_dir, ino, ..
                        } => !data_only && (*from_dir == x || *to_dir == x || *ino == x),
                        _ => false,
                    })
            })
            .collect();
        Durability {
            posix_durable_at,
            ext4_forces,
        }
    }
}

fn is_meta(e: &Effect) -> bool {
    matches!(
        e,
        Effect::Create { .. } | Effect::Rename { .. } | Effect::Unlink { .. } | Effect::SetLen { .. }
    )
}

/// A torn or whole keep of an unsynced write, or a keep of anything else, as `pick` says.
fn pick_unsynced(e: &Effect, pick: Pick, rng: &mut Rng) -> Keep {
    let sectors = |e: &Effect| match e {
        Effect::Write { offset, data, .. } => {
            let first = offset / SECTOR;
            let last = (offset + data.len() as u64 - 1) / SECTOR;
            Some((last - first + 1) as usize)
        }
        _ => None,
    };
    match (pick, sectors(e)) {
        (Pick::Nothing, _) => Keep::No,
        (Pick::Everything, _) | (Pick::TornHeads, None) => Keep::Yes,
        (Pick::TornHeads, Some(1)) => Keep::No,
        (Pick::TornHeads, Some(n)) => Keep::Sectors((0..n).map(|k| k > 0).collect()),
        (Pick::Random, n) => {
            if rng.chance(50) {
                Keep::No
            } else if let Some(n @ 2..) = n.filter(|_| rng.chance(40)) {
                Keep::Sectors((0..n).map(|_| rng.chance(50)).collect())
            } else {
                Keep::Yes
            }
        }
    }
}

/// What persisted of the first `p` calls after a power loss under `model`, chosen by `pick`.
pub fn crash_state(trace: &Trace, dur: &Durability, p: usize, model: Model, pick: Pick, rng: &mut Rng) -> Vec<Keep> {
    let calls = &trace.calls[..p];
    match model {
        Model::Posix => calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if dur.posix_durable_at[i] < p || matches!(c.effect, Effect::Sync { .. }) {
                    Keep::Yes
                } else {
                    pick_unsynced(&c.effect, pick, rng)
                }
            })
            .collect(),
        Model::Ext4Ordered => {
            // The journal: every metadata call before `cut` persisted, none after.
            let forced = (0..p).filter_map(|s| dur.ext4_forces[s]).max().map_or(0, |m| m + 1);
            let cut = match pick {
                Pick::Nothing => forced,
                Pick::Everything | Pick::TornHeads => p,
                Pick::Random => rng.range(forced as u64, p as u64) as usize,
            };
            // Each file keeps a prefix of its unsynced appends before the cut.
            let mut unsynced_appends: HashMap<Ino, usize> = HashMap::new();
            for (i, c) in calls.iter().enumerate().take(cut) {
                if let Effect::Write { ino, append: true, .. } = c.effect {
                    if dur.posix_durable_at[i] >= p {
                        *unsynced_appends.entry(ino).or_default() += 1;
                    }
                }
            }
            let mut appends_kept: HashMap<Ino, usize> = unsynced_appends
                .iter()
                .map(|(&ino, &n)| {
                    let keep = match pick {
                        Pick::Nothing => 0,
                        Pick::Everything | Pick::TornHeads => n,
                        Pick::Random => rng.range(0, n as u64) as usize,
                    };
                    (ino, keep)
                })
                .collect();
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| match &c.effect {
                    Effect::Sync { .. } => Keep::Yes,
                    e if is_meta(e) => {
                        if i < cut {
                            Keep::Yes
                        } else {
                            Keep::No
                        }
                    }
                    _ if dur.posix_durable_at[i] < p => Keep::Yes,
                    Effect::Write { ino, append: true, .. } => {
                        let left = appends_kept.entry(*ino).or_default();
                        if i < cut && *left > 0 {
                            *left -= 1;
                            Keep::Yes
                        } else {
                            Keep::No
                        }
                    }
                    e => pick_unsynced(e, pick, rng),
                })
                .collect()
        }
    }
}

/// The files and directories of a crash state: each inode reachable from the root, by path.
pub fn durable_tree(trace: &Trace, keep: &[Keep]) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut dirs: HashMap<Ino, BTreeMap<String, Ino>> = HashMap::from([(0, BTreeMap::new())]);
    let mut data: HashMap<Ino, Vec<u8>> = HashMap::new();
    for (c, k) in trace.calls.iter().zip(keep) {
        if *k == Keep::No {
            continue;
        }
        match &c.effect {
            Effect::Create { dir, name, ino, is_dir } => {
                dirs.entry(*dir).or_default().insert(name.clone(), *ino);
                if *is_dir {
                    dirs.entry(*ino).or_default();
                }
            }
            Effect::Rename {
                from_dir,
                from,
                to_dir,
                to,
                ino,
            } => {
                let d = dirs.entry(*from_dir).or_default();
                if d.get(from) == Some(ino) {
                    d.remove(from);
                }
                dirs.entry(*to_dir).or_default().insert(to.clone(), *ino);
            }
            Effect::Unlink { dir, name, ino } => {
                let d = dirs.entry(*dir).or_default();
                if d.get(name) == Some(ino) {
                    d.remove(name);
                }
            }
            Effect::Write {
                ino,
                offset,
                data: bytes,
                ..
            } => {
                let f = data.entry(*ino).or_default();
                let mut put = |at: u64, part: &[u8]| {
                    let (at, end) = (at as usize, at as usize + part.len());
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[at..end].copy_from_slice(part);
                };
                match k {
                    Keep::Sectors(mask) => {
                        let first = offset / SECTOR;
                        for (n, &kept) in mask.iter().enumerate() {
                            let lo = ((first + n as u64) * SECTOR).max(*offset);
                            let hi = ((first + n as u64 + 1) * SECTOR).min(offset + bytes.len() as u64);
                            if kept && lo < hi {
                                put(lo, &bytes[(lo - offset) as usize..(hi - offset) as usize]);
                            }
                        }
                    }
                    _ => put(*offset, bytes),
                }
            }
            Effect::SetLen { ino, len } => data.entry(*ino).or_default().resize(*len as usize, 0),
            Effect::Sync { .. } => {}
        }
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![(0usize, String::new())];
    while let Some((d, path)) = stack.pop() {
        for (name, &ino) in dirs.get(&d).into_iter().flatten() {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            if trace.inodes[ino].1 {
                out.insert(p.clone(), None);
                stack.push((ino, p));
            } else {
                out.insert(p, Some(data.get(&ino).cloned().unwrap_or_default()));
            }
        }
    }
    out
}

/// Writes `tree` (from [`durable_tree`]) into `dir`, the entries under `only` (a top-level name)
/// or all of them.
pub fn materialize(tree: &BTreeMap<String, Option<Vec<u8>>>, dir: &Path, only: Option<&str>) -> std::io::Result<()> {
    for (path, content) in tree {
        if only.is_some_and(|o| path != o && !path.starts_with(&format!("{o}/"))) {
            continue;
        }
        let at = dir.join(path);
        match content {
            None => fs::create_dir_all(&at)?,
            Some(bytes) => {
                if let Some(parent) = at.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::write(&at, bytes)?;
            }
        }
    }
    Ok(())
}

/// The files and directories under `dir` as [`durable_tree`] lists them, leaving out the
/// top-level names in `skip`.
pub fn read_tree(dir: &Path, skip: &[&str]) -> std::io::Result<BTreeMap<String, Option<Vec<u8>>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let p = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if entry.file_type()?.is_dir() {
                out.insert(p.clone(), None);
                stack.push((entry.path(), p));
            } else {
                out.insert(p, Some(fs::read(entry.path())?));
            }
        }
    }
    Ok(out)
}
