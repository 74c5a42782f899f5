//! Real file systems (issue 15): a small tmpfs filled by durable writers, and a huge sparse file
//! where a segment should be.
//!
//! - `a_full_tmpfs_keeps_every_acknowledged_write`, and
//!   `a_full_ext4_with_default_segments_keeps_every_acknowledged_write` (the issue's own case: a
//!   loop-mounted ext4 image, 16 MiB segments, less room than a segment): four durable writers
//!   fill a 6 MiB tmpfs (`mount -t tmpfs -o size=6m`) or the ext4 image (each needs root, as CI
//!   runs; skipped with the reason printed otherwise) until each gets `StorageFull`. Every
//!   acknowledged write reads back; a checkpoint on the full disk leaves disk use no higher; the
//!   store opens again on the full disk, with its options, 256 KiB segments and the defaults;
//!   once a filler file is removed, writes and a checkpoint succeed, and a last reopen holds
//!   every acknowledged write.
//! - `a_huge_sparse_file_in_place_of_a_segment_is_not_read`: a sparse file of 4 GiB where the
//!   spare segment was is damage, named at once (and set aside by `Salvage`); one of 900 MiB
//!   (a possible segment, but not of these options) is not read past `segment_size`; the last
//!   written segment extended to 900 MiB opens with its records, its zero tail never read into
//!   memory. Each runs in a child process, whose peak memory (`VmHWM`) must stay under 200 MiB;
//!   before, such a file was read whole (4.2 GB of memory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use sessiondb::{Db, Error, Options, RecoveryMode};

mod support;
use support::child::spawn_test;

/// Starting a process and opening a store take turns. A child process holds a copy of every
/// descriptor of this one from its fork until its exec. Among them is the LOCK file of a store
/// another test has open, and the lock (flock) stays held through that copy. So a test that
/// closes its store and opens it again while another test starts `mount` can be refused as
/// `Locked`. That happened once in CI under load. Starting a process returns only after the
/// child's exec, which closes the copies, so an open that waits its turn never meets one.
static SPAWN_OR_OPEN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    SPAWN_OR_OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Db::open_with`, in its turn ([`SPAWN_OR_OPEN`]).
fn open(dir: &Path, opts: Options) -> sessiondb::Result<Db> {
    let _turn = turn();
    Db::open_with(dir, opts)
}

/// Runs `cmd` to its end, in its turn ([`SPAWN_OR_OPEN`]).
fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    let _turn = turn();
    cmd.output()
}

/// A small file system mounted on a fresh directory, unmounted when dropped: a tmpfs, or an
/// ext4 image on a loop device.
struct Mount {
    dir: tempfile::TempDir,
    /// The ext4 image's directory (removed after the unmount).
    _image: Option<tempfile::TempDir>,
}

impl Mount {
    /// A tmpfs of `size`; `None` (the reason printed) where this process cannot mount one.
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let opts = format!("size={size},mode=0700");
        run(
            "mount a tmpfs",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(dir.path()),
        )?;
        Some(Mount { dir, _image: None })
    }

    /// A fresh ext4 file system of `size` in an image file, loop-mounted; `None` (the reason
    /// printed) where `mkfs.ext4` or a loop mount is not available.
    fn ext4(size: &str) -> Option<Mount> {
        let image_dir = tempfile::tempdir().expect("a temporary directory");
        let image = image_dir.path().join("fs.img");
        run(
            "create the image",
            Command::new("truncate").args(["-s", size]).arg(&image),
        )?;
        run("mkfs.ext4", Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        run(
            "loop-mount the image",
            Command::new("mount").args(["-o", "loop"]).arg(&image).arg(dir.path()),
        )?;
        Some(Mount {
            dir,
            _image: Some(image_dir),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts (flushing everything to the image) and returns the ext4 image's raw bytes.
    fn unmount_and_read_image(self) -> Vec<u8> {
        let ok = output(Command::new("umount").arg(self.dir.path())).is_ok_and(|o| o.status.success());
        assert!(ok, "umount {}", self.dir.path().display());
        let image = self._image.as_ref().expect("an ext4 mount").path().join("fs.img");
        fs::read(image).expect("the image")
    }

    /// Free bytes, as `df` reports them to root.
    fn free(&self) -> u64 {
        let out = output(Command::new("df").args(["-B1", "--output=avail"]).arg(self.path())).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Runs `cmd`; `None`, printing why the test is skipped, if it cannot run or fails.
fn run(what: &str, cmd: &mut Command) -> Option<()> {
    match output(cmd) {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            println!(
                "skipped: cannot {what} (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("skipped: cannot {what}: {e}");
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = output(Command::new("umount").arg("-l").arg(self.dir.path()));
    }
}

/// Bytes the files under `dir` take (their lengths), temporary files left out.
fn disk_use(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            total += disk_use(&p);
        } else if !p.to_string_lossy().ends_with(".tmp") {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    total
}

fn value(t: usize, i: usize) -> Vec<u8> {
    // About 1.6 KiB; for writers 10 and up (the ext4 test's) every 8th write 24 KiB, so a few
    // thousand writes fill a 16 MiB segment.
    let reps = if t >= 10 && i % 8 == 7 { 1200 } else { 80 };
    format!("writer {t} write {i:06} ").repeat(reps).into_bytes()
}

/// Each writer's key `i % 40` holds its latest acknowledged write, or the one that failed.
#[derive(Default)]
struct Acked {
    /// (writer, write) of each acknowledged put, and the failed one per writer.
    done: Vec<(usize, usize)>,
    failed: Vec<(usize, usize)>,
}

fn key(t: usize, i: usize) -> String {
    format!("w{t}-k{:02}", i % 40)
}

/// Every key holds the latest acknowledged write to it (or the failed one after it).
fn check(db: &Db, acked: &Acked, what: &str) {
    let mut latest = std::collections::BTreeMap::new();
    for &(t, i) in &acked.done {
        let e = latest.entry(key(t, i)).or_insert(i);
        *e = (*e).max(i);
    }
    for (k, &i) in &latest {
        let t: usize = k[1..k.find('-').unwrap()].parse().unwrap();
        let got = db.get(k).unwrap_or_else(|e| panic!("{what}: get {k}: {e}"));
        let ok = got.as_deref() == Some(&value(t, i)[..])
            || acked
                .failed
                .iter()
                .any(|&(ft, fi)| ft == t && key(ft, fi) == *k && got.as_deref() == Some(&value(ft, fi)[..]));
        assert!(ok, "{what}: {k} lost its write {i}");
    }
}

fn fill(db: &Db, writers: std::ops::Range<usize>) -> Acked {
    let acked = Mutex::new(Acked::default());
    std::thread::scope(|s| {
        for t in writers {
            let acked = &acked;
            s.spawn(move || {
                for i in 0.. {
                    match db.put(key(t, i), value(t, i)) {
                        Ok(()) => acked.lock().unwrap().done.push((t, i)),
                        Err(e) => {
                            assert!(e.is_storage_full(), "writer {t}: only a full disk stops it: {e}");
                            acked.lock().unwrap().failed.push((t, i));
                            return;
                        }
                    }
                    assert!(i < 1_000_000, "the disk never filled");
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

/// Fills the file system under `m` with four durable writers until each gets `StorageFull`
/// (the store at `m/store`, opened with `opts`; `filler` a file taking room that is freed
/// later), then checks every acknowledged write through a checkpoint on the full disk, opens on
/// it with its options and with 256 KiB segments and the defaults, and, after the filler is
/// removed, writes, a checkpoint and a last open.
fn fill_and_recover(m: &Mount, filler: &Path, writers: std::ops::Range<usize>, opts: impl Fn() -> Options) {
    let dir = m.path().join("store");
    let db = open(&dir, opts()).unwrap();
    let first = writers.start;
    let mut acked = fill(&db, writers);
    assert!(acked.done.len() > 100, "some writes fit: {}", acked.done.len());
    check(&db, &acked, "full");

    // A checkpoint on the full disk fails with the room it needs, and takes none.
    let before = disk_use(&dir);
    if let Err(e) = db.checkpoint() {
        assert!(e.is_storage_full(), "checkpoint: {e}");
        assert!(matches!(e, Error::StorageFull { needed: Some(_), .. }), "{e:?}");
        assert!(disk_use(&dir) <= before, "a failed checkpoint took room");
        let e = db.checkpoint().unwrap_err();
        assert!(e.is_storage_full(), "checkpoint again: {e}");
        assert!(disk_use(&dir) <= before, "a failed checkpoint took room");
    }
    db.close().unwrap();

    // It opens on the full disk, with its options and with others.
    let small = || {
        let o = opts().segment_size(256 * 1024);
        o.value_size_max(64 * 1024).batch_size_max(128 * 1024)
    };
    for (what, o) in [
        ("its options", opts()),
        ("256 KiB segments", small()),
        ("default options", Options::new()),
    ] {
        let db = open(&dir, o).unwrap_or_else(|e| panic!("open on the full disk with {what}: {e}"));
        check(&db, &acked, what);
        db.close().unwrap();
    }

    // Room again: writes and a checkpoint succeed.
    fs::remove_file(filler).unwrap();
    let db = open(&dir, opts()).unwrap();
    for i in 0..200 {
        let at = 1_000_000 + i;
        db.put(key(first, at), value(first, at)).unwrap();
        acked.done.push((first, at));
    }
    db.checkpoint().expect("a checkpoint with room");
    db.close().unwrap();
    let db = open(&dir, opts()).unwrap();
    check(&db, &acked, "after freeing space");
}

#[test]
fn a_full_tmpfs_keeps_every_acknowledged_write() {
    let Some(m) = Mount::tmpfs("6m") else { return };
    let filler = m.path().join("filler");
    fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    fill_and_recover(&m, &filler, 0..4, || {
        let o = Options::new().segment_size(512 * 1024);
        o.value_size_max(64 * 1024).batch_size_max(128 * 1024)
    });
}

/// The issue's own case: ext4, default options (16 MiB segments), less free space than a
/// segment once the store has its first two. Before, every open failed there
/// ("...wal.tmp: write failed: No space left on device").
#[test]
fn a_full_ext4_with_default_segments_keeps_every_acknowledged_write() {
    let Some(m) = Mount::ext4("72M") else { return };
    let segment = 16u64 << 20;
    {
        // The store's first segment and its spare, then a filler leaving 12 MiB.
        let db = Db::open(m.path().join("store")).unwrap();
        let spare = m.path().join("store/wal/00000000000000000002.wal");
        support::wait_until("the spare segment", || {
            fs::metadata(&spare).is_ok_and(|md| md.len() == segment)
        });
        db.close().unwrap();
    }
    let filler = m.path().join("filler");
    let room = m.free().saturating_sub(12 << 20);
    fs::write(&filler, vec![1u8; room as usize]).unwrap();
    println!("ext4: {} free bytes after the filler of {room}", m.free());
    fill_and_recover(&m, &filler, 10..14, Options::new);
}

const SPARSE_CHILD: &str = "SESSIONDB_SPARSE_CHILD_DIR";

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child: opens the store with the sparse file, reads, writes, reports its peak memory.
fn sparse_child(dir: &Path) {
    let opts = Options::new();
    let db = match open(dir, opts.clone()) {
        Ok(db) => {
            println!("OPENED");
            db
        }
        Err(e) => {
            println!("REFUSED {e}");
            let db = open(dir, opts.recovery_mode(RecoveryMode::Salvage)).expect("salvage open");
            let skipped = db.stats().recovery.skipped;
            println!("SALVAGED {}", skipped.len());
            db
        }
    };
    assert_eq!(db.get("k0100").unwrap().as_deref(), Some(&b"v"[..]));
    db.put("after", "x").unwrap();
    let _ = db.stats();
    db.close().unwrap();
    println!("PEAK {}", peak_rss_kib());
}

/// A store whose spare (`live` false) or last written segment (`live` true) is made a sparse file
/// of `size` bytes; its directory and that file.
fn huge_segment(size: u64, live: bool) -> (String, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let db = Db::open(&dir).unwrap();
    for i in 0..1000 {
        db.put(format!("k{i:04}"), "v").unwrap();
    }
    db.close().unwrap();
    let wal = dir.join("wal");
    let mut ids: Vec<u64> = fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse::<u64>().ok())
        .collect();
    ids.sort_unstable();
    let path = |id: u64| wal.join(format!("{id:020}.wal"));
    let zero = |id: u64| fs::read(path(id)).unwrap().iter().all(|&b| b == 0);
    let last = *ids.last().unwrap();
    let spare = if live {
        // Extended in place: its records stay, its length grows.
        path(*ids.iter().rev().find(|&&id| !zero(id)).unwrap())
    } else if zero(last) {
        // The spare the store made ahead.
        path(last)
    } else {
        path(last + 1)
    };
    println!(
        "sparse file of {size} bytes at {} (live segment: {live})",
        spare.display()
    );
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(!live)
        .write(true)
        .open(&spare)
        .unwrap();
    f.set_len(size).unwrap();
    drop(f);
    (format!("{}", dir.display()), spare)
}

#[test]
fn a_huge_sparse_file_in_place_of_a_segment_is_not_read() {
    if let Ok(dir) = std::env::var(SPARSE_CHILD) {
        sparse_child(Path::new(&dir));
        return;
    }
    for (size, live, damage) in [
        (4u64 << 30, false, true),
        (900 << 20, false, false),
        (900 << 20, true, false),
    ] {
        let (dir, spare) = huge_segment(size, live);
        let env = [(SPARSE_CHILD, std::ffi::OsStr::new(&dir))];
        let (mut child, mut out) = {
            let _turn = turn();
            spawn_test(
                "a_huge_sparse_file_in_place_of_a_segment_is_not_read",
                &env,
                Stdio::null(),
            )
        };
        let rest = out.rest();
        assert!(child.wait().unwrap().success(), "the child failed:\n{rest}");
        if damage {
            let refused = rest
                .lines()
                .find(|l| l.contains("REFUSED"))
                .unwrap_or_else(|| panic!("{rest}"));
            assert!(
                refused.contains(&*spare.to_string_lossy()) && refused.contains("larger than any segment"),
                "names the file and what is wrong: {refused}"
            );
            assert!(rest.contains("SALVAGED 1"), "{rest}");
            let aside = PathBuf::from(format!("{}.broken", spare.display()));
            assert_eq!(
                fs::metadata(&aside).map(|m| m.len()).ok(),
                Some(size),
                "Salvage set the file aside"
            );
            // (A spare of that id may be there again: the preparer's, of `segment_size`.)
            assert!(fs::metadata(&spare).map_or(0, |m| m.len()) < size);
        } else {
            assert!(rest.contains("OPENED"), "{rest}");
        }
        let peak: u64 = rest
            .lines()
            .find_map(|l| {
                l.trim()
                    .rsplit("PEAK ")
                    .next()
                    .filter(|_| l.contains("PEAK "))?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no peak memory in:\n{rest}"));
        println!("sparse file of {size} bytes: peak memory {peak} KiB");
        assert!(
            peak < 200 * 1024,
            "peak memory {peak} KiB with a sparse file of {size} bytes"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Issue 16: a known plaintext (a session payload, a user id, a session key) written to an
/// encrypted store on a loop-mounted ext4 image appears nowhere in the raw image: not while the
/// session lives, not after it is destroyed, `max_retention` has passed (a checkpoint on the
/// store's clock, no call asked for it) and the key is rotated. The same steps on an unencrypted
/// store leave the plaintext in the image (in freed blocks too), which shows the scan finds what
/// is there.
#[test]
fn an_encrypted_store_leaves_no_plaintext_in_the_raw_disk_image() {
    for encrypted in [true, false] {
        let Some(m) = Mount::ext4("64m") else { return };
        let user = b"user-4d1c3a9e-marker";
        let payload = b"{\"email\":\"ada-7f3e@example.com\",\"csrf\":\"b5c0ffee\"}";
        let clock = sessiondb::ManualClock::new(1_700_000_000_000);
        let mut opts = Options::new()
            .clock(std::sync::Arc::new(clock.clone()))
            .max_retention(std::time::Duration::from_secs(60));
        if encrypted {
            opts = opts.encryption_key(sessiondb::EncryptionKey::from_bytes([0x6b; 32]));
        }
        let dir = m.path().join("store");
        let store = sessiondb::session::SessionStore::open_with(&dir, opts).unwrap();
        let id = store
            .create_for_user(user, payload, std::time::Duration::from_secs(3600))
            .unwrap();
        let id_bytes = id.as_bytes().to_vec();
        for i in 0..500u32 {
            store
                .create(format!("filler {i}").as_bytes(), std::time::Duration::from_secs(60))
                .unwrap();
        }
        store.db().checkpoint().unwrap();
        assert!(store.destroy(&id).unwrap());
        let checkpoints = store.db().stats().checkpoints;
        let due = 1_700_000_000_000 + 60_000;
        clock.set(due);
        support::wait_until("the retention checkpoint", || {
            let s = store.db().stats();
            s.retention_checked_ms >= due && s.checkpoints > checkpoints
        });
        if encrypted {
            store
                .db()
                .rotate_key(sessiondb::EncryptionKey::from_bytes([0x6c; 32]))
                .unwrap();
        }
        let db = std::sync::Arc::clone(store.db());
        drop(store);
        std::sync::Arc::try_unwrap(db)
            .expect("the only handle")
            .close()
            .unwrap();
        let image = m.unmount_and_read_image();
        let found = |needle: &[u8]| image.windows(needle.len()).any(|w| w == needle);
        for (what, needle) in [
            ("user id", &user[..]),
            ("payload", &payload[..]),
            ("session id", &id_bytes[..]),
        ] {
            if encrypted {
                assert!(!found(needle), "the {what} is in the raw image of an encrypted store");
            } else if what != "session id" {
                assert!(
                    found(needle),
                    "control: the {what} of an unencrypted store is in the image"
                );
            }
        }
    }
}
