//! --exclude, --exclude-file and --exclude-if-present leave out exactly what
//! they name.

use std::fs;

use crate::common::*;

#[test]
fn excludes_leave_out_the_expected_entries() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    for d in [
        "sub",
        "logs",
        "notes",
        "cache/inner",
        "nested/dir.tmp",
        "other",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    let kept = [
        "keep.txt",
        "sub/keep-2.txt",
        "logs/y.txt",
        "notes/readme.txt",
        "other/todo.md",
        "other/.nobackup-not",
    ];
    let excluded = [
        "a.tmp",                // --exclude '*.tmp' (name glob)
        "sub/b.tmp",            // same, deeper
        "nested/dir.tmp/c.txt", // inside a directory whose name matches
        "logs/x.log",           // --exclude-file: *.log
        "notes/todo.md",        // --exclude-file: absolute glob <src>/notes/*.md
        "cache/big.dat",        // --exclude-if-present .nobackup
        "cache/inner/z.txt",    // same, deeper
    ];
    for f in kept.iter().chain(excluded.iter()) {
        fs::write(src.join(f), format!("{f}\n")).unwrap();
    }
    fs::write(src.join("cache/.nobackup"), b"").unwrap();

    let exclude_file = dir.join("excludes");
    fs::write(&exclude_file, format!("*.log\n{}/notes/*.md\n", s(&src))).unwrap();

    cairn.backup(
        &[&src],
        &[
            "--exclude",
            "*.tmp",
            "--exclude-file",
            s(&exclude_file),
            "--exclude-if-present",
            ".nobackup",
        ],
    );
    let listed = cairn.ls("latest");
    for f in kept {
        assert!(
            listed.contains(s(&src.join(f))),
            "{f} was left out; ls:\n{listed:#?}"
        );
    }
    for f in excluded {
        assert!(
            !listed.contains(s(&src.join(f))),
            "{f} was backed up; ls:\n{listed:#?}"
        );
    }
    assert!(
        !listed.contains(s(&src.join("nested/dir.tmp"))),
        "directory dir.tmp was backed up"
    );
    assert!(listed.contains(s(&src.join("nested"))));

    // The same source without excludes has everything (the globs did the work).
    let all = cairn
        .backup(&[&src], &["--host", "no-excludes"])
        .snapshot_id();
    let listed = cairn.ls(&all);
    for f in kept.iter().chain(excluded.iter()) {
        assert!(
            listed.contains(s(&src.join(f))),
            "{f} missing without excludes"
        );
    }
}
