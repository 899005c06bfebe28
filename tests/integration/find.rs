//! `cairn find`: which snapshots hold a file, from the trees alone.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::*;

#[test]
fn find_reads_each_distinct_tree_once_across_thirty_snapshots() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    for d in ["d1", "d2", "d3", "d4", "d5"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("readme.txt"), format!("{d}\n")).unwrap();
    }
    fs::write(src.join("d3/app.conf"), "port = 80\n").unwrap();
    // Thirty backups; between them only d1 changes (a new note each time).
    for i in 0..30 {
        fs::write(
            src.join(format!("d1/note-{i:02}.txt")),
            format!("note {i}\n"),
        )
        .unwrap();
        cairn.backup(&[&src], &[]);
    }

    let out = cairn.run(["find", "--json", "app.conf", "note-1?.txt"]);
    out.expect_success();
    let report = out.json();
    assert_eq!(report["snapshots"], 30);
    let found = report["found"].as_array().unwrap();
    let conf: Vec<&Value> = found
        .iter()
        .filter(|f| f["path"] == s(&src.join("d3/app.conf")))
        .collect();
    assert_eq!(conf.len(), 30, "{report}");
    assert!(conf.iter().all(|f| f["type"] == "file" && f["size"] == 10));
    // note-10 … note-19 exist from the 11th, …, 20th backup on: 20 + 19 + … + 11.
    let notes = found.len() - conf.len();
    assert_eq!(notes, (11..=20).sum::<usize>(), "{report}");

    // Distinct trees: in the first snapshot the ancestors of src (one per
    // component of its parent path, plus the root), src and its five
    // directories; each later snapshot changes d1, src and the ancestors.
    let ancestors = Path::new(&dir).components().count();
    let distinct = (ancestors + 1 + 5) + 29 * (ancestors + 2);
    assert_eq!(report["trees_read"], distinct as u64, "{report}");

    // Whole-path patterns, a snapshot filter, and the text form.
    let latest = cairn.snapshots()[29]["short_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cairn.run([
        "find",
        "--path",
        "--snapshot",
        "latest",
        &format!("{}/d*/readme.txt", s(&src)),
    ]);
    out.expect_success();
    let lines = out.lines();
    assert_eq!(lines.len(), 6, "{}", out.describe());
    assert!(
        lines[..5]
            .iter()
            .all(|l| l.starts_with(&latest) && l.ends_with("readme.txt"))
    );
    assert_eq!(lines[5], "5 match(es) in 1 snapshot(s)");

    // Modification-time bounds: nothing is newer than the future.
    let out = cairn.run(["find", "--json", "--oldest", "2999-01-01", "*"]);
    out.expect_success();
    assert_eq!(out.json()["found"], serde_json::json!([]));
    cairn
        .run(["find", "--oldest", "yesterday-ish", "*"])
        .expect_code(2);
}
