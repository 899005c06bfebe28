//! `backup --dry-run` reads and chunks everything, reports what a backup
//! would upload, and writes nothing to the repository.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

/// Every object of the store (not the local index) with its size.
fn objects(repo: &Path) -> BTreeMap<PathBuf, u64> {
    walk(repo)
        .into_iter()
        .filter(|(p, m)| m.kind == Kind::File && !p.starts_with("index"))
        .map(|(p, m)| (p, m.size))
        .collect()
}

#[test]
fn a_dry_run_reports_what_the_backup_stores_and_writes_nothing() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_random_file(&src.join("old.bin"), 2 << 20, 1);
    cairn.backup(&[&src], &[]);
    write_random_file(&src.join("sub/new.bin"), 3 << 20, 2);
    fs::write(src.join("note.txt"), "a new note\n").unwrap();

    let before = objects(&cairn.repo);
    let out = cairn.run(["backup", "--dry-run", "--json", s(&src)]);
    out.expect_success();
    let dry = out.json_last_line();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["snapshot_id"], serde_json::Value::Null);
    assert_eq!(dry["files_new"], 2, "{dry}");
    assert_eq!(dry["files_unmodified"], 1, "{dry}");
    assert_eq!(
        objects(&cairn.repo),
        before,
        "the dry run wrote to the store"
    );
    assert_eq!(cairn.snapshots().len(), 1);

    let text = cairn.run(["backup", "-n", s(&src)]);
    text.expect_success();
    assert!(
        text.lines()[1].starts_with("dry run: would read ")
            && text.lines()[1].ends_with("; nothing was written"),
        "{}",
        text.describe()
    );

    let real = cairn.backup(&[&src], &[]);
    for key in [
        "files_new",
        "chunks_new",
        "chunks_reused",
        "bytes_new",
        "bytes_read",
    ] {
        assert_eq!(
            dry[key], real.0[key],
            "{key}: dry run {dry} vs backup {:?}",
            real
        );
    }
    assert!(real.u("bytes_new") >= 3 << 20);
}
