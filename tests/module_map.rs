//! docs/design.md's module map names every source file of the library, and only files that
//! exist: the house is drawn the way the map says (issue 13).

use std::collections::BTreeSet;
use std::path::Path;

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
