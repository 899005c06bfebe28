//! `cairn copy`: snapshots from one repository into another with another
//! password (and, in s3.rs, another backend).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The password of every copy target here.
pub const TARGET_PASSWORD: &str = "the off-site copy's own password";

/// `target` copying from `source` (whose password is [`PASSWORD`]).
pub fn copy(target: &Cairn, source: &str, extra: &[&str]) -> Output {
    let mut args = vec!["copy", "--from-repo", source];
    args.extend_from_slice(extra);
    target.with_env("CAIRN_FROM_PASSWORD", PASSWORD).run(args)
}

/// The fields a copy keeps, per snapshot, oldest first.
pub fn kept_fields(cairn: &Cairn) -> Vec<Value> {
    let mut out: Vec<Value> = cairn
        .snapshots()
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "time": s["time"], "host": s["host"], "user": s["user"],
                "paths": s["paths"], "tags": s["tags"],
            })
        })
        .collect();
    out.sort_by_key(|v| v["time"].as_str().unwrap_or_default().to_string());
    out
}

/// Two snapshots of a small tree, the second tagged.
fn two_snapshots(dir: &Path, cairn: &Cairn) -> std::path::PathBuf {
    let src = dir.join("src");
    write_files(&src, &[("a.txt", "alpha"), ("deep/b.txt", "beta")]);
    write_random_file(&src.join("deep/data.bin"), 9 * MIB, 0xC0);
    cairn.backup(&[&src], &[]);
    write_files(&src, &[("a.txt", "alpha, changed")]);
    cairn.backup(&[&src], &["--tag", "weekly"]);
    src
}

#[test]
fn a_copy_keeps_every_snapshot_and_a_second_copy_stores_nothing() {
    let (_t, dir, source) = new_repo();
    let src = two_snapshots(&dir, &source);
    let target = Cairn::new(dir.join("offsite")).with_password(TARGET_PASSWORD);
    target.init();

    // A dry run reports both and writes nothing.
    let dry = copy(&target, s(&source.repo), &["--dry-run"]);
    dry.expect_success();
    assert!(
        dry.stdout_text()
            .contains("dry run: 2 snapshots would copy, 0 already present"),
        "{}",
        dry.describe()
    );
    assert!(target.snapshots().is_empty());
    assert!(pack_files(&target.repo).is_empty());

    let first = copy(&target, s(&source.repo), &["--json"]);
    first.expect_success();
    let report = first.json();
    assert_eq!(report["copied"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["mode"], "rechunk", "{report}");
    assert_eq!(kept_fields(&target), kept_fields(&source));
    // Each copy names its source.
    let sources: Vec<&str> = report["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap())
        .collect();
    let originals: Vec<String> = source
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources, originals);

    // Byte for byte, with modes and times.
    target
        .run(["restore", "latest", "--target", s(&dir.join("restored"))])
        .expect_success();
    assert_trees_equal(&src, &restored(&dir.join("restored"), &src), Compare::ALL);
    target.check_clean();

    // Again: nothing new.
    let packs = pack_files(&target.repo);
    let again = copy(&target, s(&source.repo), &[]);
    again.expect_success();
    assert!(
        again
            .stdout_text()
            .contains("0 snapshots copied, 2 already present"),
        "{}",
        again.describe()
    );
    assert_eq!(pack_files(&target.repo).len(), packs.len());
    assert_eq!(target.snapshots().len(), 2);

    // The source's password is its own.
    target
        .with_env("CAIRN_FROM_PASSWORD", "wrong")
        .run(["copy", "--from-repo", s(&source.repo)])
        .expect_clean_error(11, "source repository");
}

#[test]
fn with_copied_chunker_parameters_chunks_move_as_they_are() {
    let (_t, dir, source) = new_repo();
    two_snapshots(&dir, &source);
    let target = Cairn::new(dir.join("twin")).with_password(TARGET_PASSWORD);
    target
        .with_env("CAIRN_FROM_PASSWORD", PASSWORD)
        .run(["init", "--copy-chunker-params-from", s(&source.repo)])
        .expect_success();
    let out = copy(&target, s(&source.repo), &["--json"]);
    out.expect_success();
    let report = out.json();
    assert_eq!(report["mode"], "chunks", "{report}");
    // The same chunks: no more bytes than the source holds, within a few
    // bytes per pack: trees name chunks by each repository's own ids, which
    // compress a byte more or less, and pack tables hold varint offsets
    // that depend on the order in which chunks landed.
    let bytes = |repo: &Path| pack_files(repo).iter().map(|p| p.size).sum::<u64>();
    let slack = 32 * pack_files(&target.repo).len() as u64;
    assert!(
        bytes(&target.repo) <= bytes(&source.repo) + slack,
        "the copy stores {} bytes, the source {}",
        bytes(&target.repo),
        bytes(&source.repo)
    );
    let chunks =
        |c: &Cairn| c.run(["stats", "--mode", "raw-data", "--json"]).json()["chunks"].clone();
    assert_eq!(chunks(&target), chunks(&source));
    target.check_clean();
}

#[test]
fn a_killed_copy_resumes_without_uploading_again() {
    let src = big_source();
    let (_t, dir, source) = new_repo();
    source.backup(&[src], &[]);
    let target = Cairn::new(dir.join("offsite")).with_password(TARGET_PASSWORD);
    target.init();

    let mut child = target.with_env("CAIRN_FROM_PASSWORD", PASSWORD).spawn(
        ["copy", "--from-repo", s(&source.repo)],
        &dir.join("killed-copy"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while pack_files(&target.repo).len() < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the copy ended ({status}) before it stored 3 packs");
        }
        assert!(Instant::now() < deadline, "no 3 packs in 300 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    assert!(
        child.wait().unwrap().code().is_none(),
        "the copy finished before the kill"
    );
    assert!(
        target.snapshots().is_empty(),
        "a killed copy left a snapshot"
    );
    let stored_before: u64 = pack_files(&target.repo).iter().map(|p| p.size).sum();

    let rerun = copy(&target, s(&source.repo), &["--json"]);
    rerun.expect_success();
    let report = rerun.json();
    let stored_again = report["bytes_stored"].as_u64().unwrap();
    let stored_all: u64 = pack_files(&target.repo).iter().map(|p| p.size).sum();
    assert!(
        stored_again + stored_before <= stored_all + MIB,
        "the rerun stored {stored_again} bytes again beside {stored_before} already stored ({stored_all} in all)"
    );
    assert!(
        stored_again < stored_all,
        "the rerun stored everything again: {report}"
    );
    target
        .run(["restore", "latest", "--target", s(&dir.join("restored"))])
        .expect_success();
    assert_trees_equal(src, &restored(&dir.join("restored"), src), Compare::ALL);
    target.check_clean();
}
