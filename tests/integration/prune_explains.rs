//! A prune that frees less than `forget` made unreachable says why, with
//! amounts and times; on a quiet repository with no margins it frees all of
//! it, to the byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Pack files and their sizes.
fn packs(repo: &Path) -> BTreeMap<PathBuf, u64> {
    pack_files(repo)
        .into_iter()
        .map(|p| (p.path.clone(), p.size))
        .collect()
}

/// Two snapshots of disjoint data, the first forgotten: returns the client,
/// the packs only the first one uses, and the time of the second backup.
fn forgotten_first(dir: &Path) -> (Cairn, BTreeMap<PathBuf, u64>, u64) {
    let cairn = Cairn::new(dir.join("repo"));
    cairn.init();
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    write_random_file(&a.join("one.bin"), 3 << 20, 11);
    write_random_file(&b.join("two.bin"), 2 << 20, 12);
    let first = cairn.backup(&[&a], &[]);
    let after_first = packs(&cairn.repo);
    cairn.backup(&[&b], &[]);
    let backed_up = unix_now();
    cairn.run(["forget", &first.snapshot_id()]).expect_success();
    (cairn, after_first, backed_up)
}

fn prune(cairn: &Cairn, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["prune", "--json"];
    args.extend_from_slice(extra);
    let out = cairn.run(&args);
    out.expect_success();
    let mut text_args = vec!["prune", "--dry-run"];
    text_args.extend_from_slice(extra);
    let text = cairn.run(&text_args);
    text.expect_success();
    (out.json_last_line(), text.stdout_text())
}

#[test]
fn a_quiet_repository_frees_everything_unreachable_to_the_byte() {
    let (_tmp, dir) = tempdir();
    let (cairn, only_first, backed_up) = forgotten_first(&dir);
    // The index records times in whole seconds: a chunk seen in the second
    // prune runs in is not before its cutoff.
    poll_until(
        "the clock passes the backup's second",
        Duration::from_secs(5),
        || unix_now() > backed_up,
    );
    let (report, _) = prune(&cairn, &["--grace", "0s", "--clock-skew", "0s"]);
    let expected: u64 = only_first.values().sum();
    assert!(expected > 3 << 20, "{only_first:?}");
    assert_eq!(report["bytes_freed"], expected, "{report}");
    assert_eq!(report["packs_deleted"], only_first.len(), "{report}");
    assert_eq!(report["waiting"], serde_json::json!([]), "{report}");
    let left = packs(&cairn.repo);
    assert!(only_first.keys().all(|p| !left.contains_key(p)), "{left:?}");
    cairn.check_clean();
}

#[test]
fn prune_says_what_waits_for_the_clock_skew_margin_and_the_grace_period() {
    let (_tmp, dir) = tempdir();
    let (cairn, only_first, _) = forgotten_first(&dir);

    // Right after the backup, every chunk of the forgotten snapshot is
    // within the default five-minute margin.
    let (report, text) = prune(&cairn, &[]);
    assert_eq!(report["bytes_freed"], 0, "{report}");
    let waiting = report["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{report}");
    assert_eq!(waiting[0]["reason"], "clock_skew");
    assert_eq!(waiting[0]["packs"], only_first.len() as u64, "{report}");
    let chunk_bytes = waiting[0]["bytes"].as_u64().unwrap();
    // Chunk bytes: everything in those packs but their tables.
    let pack_bytes: u64 = only_first.values().sum();
    assert!(
        chunk_bytes > 3 << 20 && chunk_bytes < pack_bytes,
        "{chunk_bytes} of {pack_bytes}: {report}"
    );
    let until = waiting[0]["until"].as_str().unwrap();
    let until: jiff::Timestamp = until.parse().unwrap();
    let delay = until.as_second() - unix_now() as i64;
    assert!((290..=302).contains(&delay), "until {until}: {delay}s away");
    let line = text
        .lines()
        .find(|l| l.contains("waits for the clock-skew margin (5m) until "))
        .unwrap_or_else(|| panic!("no clock-skew line:\n{text}"));
    assert!(
        line.contains(&format!("in {} pack(s)", only_first.len())),
        "{line}"
    );

    // With no margin the chunks are condemned, and their packs wait for
    // the (default, one hour) grace period instead.
    let later = unix_now();
    poll_until("the clock passes a second", Duration::from_secs(5), || {
        unix_now() > later
    });
    let (report, text) = prune(&cairn, &["--clock-skew", "0s"]);
    assert_eq!(report["bytes_freed"], 0, "{report}");
    let waiting = report["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{report}");
    assert_eq!(waiting[0]["reason"], "grace_period");
    assert_eq!(waiting[0]["packs"], only_first.len() as u64, "{report}");
    assert_eq!(waiting[0]["bytes"], pack_bytes, "{report}");
    assert!(
        text.contains(&format!(
            "in {} pack(s) is younger than the grace period (1h) until ",
            only_first.len()
        )),
        "{text}"
    );
}

/// Data seen after a running backup began waits for that backup: prune
/// names its host and start.
#[test]
fn prune_names_the_running_backup_that_holds_data_back() {
    let f = crate::cluster::ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let busy = f.cairn.with_env("CAIRN_SESSION_LEASE", "600");
    let log = f.dir.join("busy");
    let repo = f.dir.join("repo");
    let mut running = busy.spawn(["backup", "--host", "web-3", s(big_source())], &log);
    poll_until(
        "the running backup stores a pack",
        Duration::from_secs(300),
        || !pack_files(&repo).is_empty(),
    );
    let pid = running.id().to_string();
    let stop = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    stop("-STOP");
    // After the running backup began: a snapshot of other data, forgotten.
    let began = unix_now();
    poll_until("the clock passes a second", Duration::from_secs(5), || {
        unix_now() > began
    });
    let other = f.dir.join("other");
    fs::create_dir_all(&other).unwrap();
    write_random_file(&other.join("x.bin"), 2 << 20, 77);
    let snap = f.cairn.backup(&[&other], &["--host", "laptop"]);
    f.cairn
        .run(["forget", &snap.snapshot_id()])
        .expect_success();
    let later = unix_now();
    poll_until("the clock passes a second", Duration::from_secs(5), || {
        unix_now() > later
    });

    let out = f
        .cairn
        .run(["prune", "--json", "--dry-run", "--clock-skew", "0s"]);
    let text = f.cairn.run(["prune", "--dry-run", "--clock-skew", "0s"]);
    stop("-CONT");
    out.expect_success();
    text.expect_success();
    let report = out.json_last_line();
    let held: Vec<&Value> = report["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["reason"] == "running_backup")
        .collect();
    assert_eq!(held.len(), 1, "{report}");
    assert_eq!(held[0]["host"], "web-3", "{report}");
    assert!(held[0]["bytes"].as_u64().unwrap() >= 2 << 20, "{report}");
    assert!(held[0]["started"].is_string(), "{report}");
    assert!(
        text.stdout_text()
            .contains("is held by a running backup's session (host web-3, started "),
        "{}",
        text.describe()
    );
    let status = wait_with_deadline(&mut running, Duration::from_secs(300)).expect("backup ends");
    assert!(status.success());
}
