//! Claims the docs make that a test can check (issue 13, point 5): docs/design.md's module map
//! draws every source file; errors name a store's files by the directory as given joined with
//! the file's name (src/error.rs); session keys are laid out as docs/format.md's section 10 says.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use sessiondb::session::SessionStore;
use sessiondb::{Db, Error, Options};

/// The files the map lists: the first fenced block after the heading "Modules and the way data
/// flows", whose lines start with a path under `src/` (`engine/commit.rs  group commit, ...`).
fn files_in_map(design: &str) -> BTreeSet<String> {
    let section = design
        .split("## Modules and the way data flows")
        .nth(1)
        .expect("design.md has the module map section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section opens with a fenced block");
    block
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.ends_with(".rs"))
        .map(|name| format!("src/{name}"))
        .collect()
}

fn files_on_disk(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            files_on_disk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("inside the crate");
            out.insert(rel.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_module_map_lists_every_source_file_and_only_those() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/design.md")).expect("read docs/design.md");
    let mapped = files_in_map(&design);
    let mut actual = BTreeSet::new();
    files_on_disk(&root.join("src"), &mut actual);
    let missing: Vec<_> = actual.difference(&mapped).collect();
    let stale: Vec<_> = mapped.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/design.md's module map: files not drawn {missing:?}; drawn but not there {stale:?}"
    );
}

/// A 64-byte segment whose header is not ours: opening fails naming that file.
#[test]
fn errors_name_the_store_directory_as_given_joined_with_the_file_name() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("store");
    std::fs::create_dir_all(dir.join("wal")).expect("create wal/");
    let segment = dir.join("wal").join("00000000000000000001.wal");
    std::fs::write(&segment, [0xA5u8; 64]).expect("write the foreign file");
    match Db::open_with(&dir, Options::new()) {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, segment),
        other => panic!("expected Corruption naming {}, got {other:?}", segment.display()),
    }
    // Relative, as given: the same file under the same relative name.
    let relative = Path::new("store").join("wal").join("00000000000000000001.wal");
    let cwd = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(parent.path()).expect("cd");
    let opened = Db::open_with("store", Options::new());
    std::env::set_current_dir(cwd).expect("cd back");
    match opened {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, relative),
        other => panic!("expected Corruption naming {}, got {other:?}", relative.display()),
    }
}

/// docs/format.md, "Session keys and values": a session is `00 73` + its 16 id bytes; its
/// user's index entry is `00 75` + the user's length as a big-endian u16 + the user + the id.
#[test]
fn session_keys_are_laid_out_as_format_md_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SessionStore::open(dir.path()).expect("open");
    let user = vec![b'u'; 300]; // a length whose two bytes differ: 0x01 0x2c
    let id = store
        .create_for_user(&user, b"data", Duration::from_secs(60))
        .expect("create");
    let keys: Vec<Vec<u8>> = store
        .db()
        .scan_prefix([0u8])
        .map(|item| item.expect("scan").0)
        .collect();
    let mut session_key = vec![0x00, 0x73];
    session_key.extend_from_slice(id.as_bytes());
    let mut index_key = vec![0x00, 0x75, 0x01, 0x2c];
    index_key.extend_from_slice(&user);
    index_key.extend_from_slice(id.as_bytes());
    assert_eq!(keys, vec![session_key, index_key]);
}
