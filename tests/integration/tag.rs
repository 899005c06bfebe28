//! `cairn tag`: new tags are a new manifest that records the original id;
//! nothing is lost when prune runs at the same time.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn tags_change_and_the_original_id_is_kept() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("f"), 100_000, 3);
    let first = cairn.backup(&[&src], &["--tag", "daily"]).snapshot_id();

    let out = cairn.run(["tag", "--json", "--add", "keep,audit", "latest"]);
    out.expect_success();
    let done = out.json();
    assert_eq!(done[0]["old"], first.as_str());
    assert_eq!(
        done[0]["tags"],
        serde_json::json!(["daily", "keep", "audit"])
    );
    let second = done[0]["new"].as_str().unwrap().to_string();
    assert_ne!(second, first);

    let out = cairn.run(["tag", "--remove", "daily", &second]);
    out.expect_success();
    let line = &out.lines()[0];
    assert!(
        line.starts_with(&format!("snapshot {} is now ", &second[..8]))
            && line.ends_with("(tags: keep,audit)"),
        "{line}"
    );
    let snaps = cairn.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["tags"], serde_json::json!(["keep", "audit"]));
    assert_eq!(snaps[0]["original"], first.as_str(), "{:?}", snaps[0]);

    // The same tags again: nothing is rewritten.
    let out = cairn.run(["tag", "--set", "keep,audit", "latest"]);
    out.expect_success();
    assert!(out.lines()[0].contains(" unchanged (tags: keep,audit)"));
    cairn
        .run(["tag", "--set", "x", "--add", "y", "latest"])
        .expect_clean_error(1, "--set replaces every tag");
    cairn
        .run(["tag", "latest"])
        .expect_clean_error(1, "nothing to change");

    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::CONTENT);
}

#[test]
fn retagging_beside_a_running_prune_loses_nothing() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        write_random_file(&src.join(format!("f{i}")), 700_000, 10 + i);
    }
    cairn.backup(&[&src], &[]);

    // Prune with no margins, over and over, while the snapshot is retagged
    // over and over: any prune that missed the snapshot would delete its data.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let (cairn, stop) = (cairn.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = cairn.run([
                    "prune",
                    "--json",
                    "--grace",
                    "0s",
                    "--clock-skew",
                    "0s",
                    "--lock-wait",
                    "30",
                ]);
                out.expect_success();
                assert_eq!(
                    out.json_last_line()["packs_deleted"],
                    0,
                    "{}",
                    out.describe()
                );
                runs += 1;
            }
            runs
        })
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut tags = 0;
    while Instant::now() < deadline {
        cairn
            .run(["tag", "--add", &format!("t{tags}"), "latest"])
            .expect_success();
        tags += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let prunes = pruner.join().unwrap();
    assert!(prunes >= 2 && tags >= 10, "{prunes} prunes, {tags} retags");

    assert_eq!(cairn.snapshots()[0]["tags"].as_array().unwrap().len(), tags);
    cairn.check_clean();
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::CONTENT);
}
