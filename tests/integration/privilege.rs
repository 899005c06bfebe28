//! Least privilege through a real `cairn-index` node: each token role does
//! its job and no more, a revoked token stops at once, the audit log says
//! who did what, and retention goes by the index's clock, so snapshots
//! with forged times cannot push genuine ones out of a keep policy.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::cluster::{IndexNode, add_token_with_role, index_binary};
use crate::common::*;

const DAY: i64 = 86_400;

/// A repository (local store) and the id the index knows it by.
fn repo(dir: &Path) -> (Cairn, String) {
    let cairn = Cairn::new(dir.join("repo")).with_env("XDG_CACHE_HOME", s(&dir.join("cache")));
    let id = cairn.init_repo_id();
    (cairn, id)
}

/// A single node (it owns every partition) whose clock runs `offset`
/// seconds off.
fn node(dir: &Path, offset: i64) -> IndexNode {
    IndexNode::start_full(
        dir,
        "n1",
        dir.join("n1"),
        &[],
        &[("CAIRN_TEST_CLOCK_OFFSET_SECS", &offset.to_string())],
    )
}

fn through(cairn: &Cairn, node: &IndexNode, token: &str) -> Cairn {
    cairn
        .with_env("CAIRN_INDEX", &node.addr)
        .with_env("CAIRN_INDEX_TOKEN", token)
}

fn index_cmd(args: &[&str]) -> std::process::Output {
    let out = Command::new(index_binary())
        .args(args)
        .output()
        .expect("run cairn-index");
    assert!(
        out.status.success(),
        "cairn-index {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn forged_snapshot_times_cannot_steer_retention() {
    let (_d, dir) = tempdir();
    let (cairn, repo_id) = repo(&dir);
    let backup_token = add_token_with_role(&dir, &repo_id, "backup");
    let prune_token = add_token_with_role(&dir, &repo_id, "prune");
    let data = dir.join("data");
    write_files(&data, &[("a.txt", "genuine data")]);

    // A week of genuine daily backups: the machine's clock and the index's
    // agree, each day.
    let mut genuine = BTreeSet::new();
    for d in (0..7).rev() {
        let offset = -d * DAY;
        let n = node(&dir, offset);
        let client = through(&cairn, &n, &backup_token)
            .with_env("CAIRN_TEST_CLOCK_OFFSET_SECS", &offset.to_string());
        genuine.insert(client.backup(&[&data], &[]).snapshot_id());
    }

    // Today, a compromised client with the same backup token writes 100
    // snapshots of the same host and paths, claiming 1 to 50 days ago and
    // 1 to 50 days ahead.
    let n = node(&dir, 0);
    let attacker = through(&cairn, &n, &backup_token);
    let now = jiff::Timestamp::now();
    let mut forged = BTreeSet::new();
    for k in 1..=50i64 {
        for t in [
            now - jiff::SignedDuration::from_secs(k * DAY),
            now + jiff::SignedDuration::from_secs(k * DAY),
        ] {
            let st = attacker.backup(&[&data], &["--time", &t.to_string()]);
            forged.insert(st.snapshot_id());
        }
    }
    assert_eq!((genuine.len(), forged.len()), (7, 100));

    let operator = through(&cairn, &n, &prune_token);
    // `snapshots` shows both times and marks the ones that disagree.
    let out = operator.run(["snapshots", "--json"]);
    out.expect_success();
    let list = out.json();
    let suspects: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["suspect"] == Value::Bool(true))
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(suspects, forged);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["committed_time"].is_string())
    );
    let text = operator.run(["snapshots"]);
    text.expect_success();
    assert!(
        text.stdout_text()
            .contains("100 snapshot(s) marked ! claim a time"),
        "{}",
        text.describe()
    );

    let out = operator.run(["forget", "--keep-daily", "7", "--json"]);
    out.expect_success();
    let report = out.json_last_line();
    let removed: BTreeSet<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(removed, forged);
    let group = &report["groups"][0];
    let kept: BTreeSet<String> = group["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, genuine);
    for k in group["keep"].as_array().unwrap() {
        assert_eq!(k["time_used"], "committed", "{k}");
        assert_eq!(k["suspect"], false, "{k}");
    }
    for r in group["remove"].as_array().unwrap() {
        assert_eq!(r["time_used"], "committed", "{r}");
        assert_eq!(r["suspect"], true, "{r}");
    }
    let left: BTreeSet<String> = cairn
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, genuine);
}

#[test]
fn each_token_role_does_its_job_and_no_more() {
    let (_d, dir) = tempdir();
    let (cairn, repo_id) = repo(&dir);
    let tokens = dir.join("tokens.toml");
    let role_token = |role: &str| {
        let out = index_cmd(&[
            "token",
            "add",
            "--tokens",
            s(&tokens),
            "--repository",
            &repo_id,
            "--role",
            role,
            "--label",
            &format!("{role}-client"),
            "--expires",
            "30d",
        ]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let restore = role_token("restore");
    let backup = role_token("backup");
    let prune = role_token("prune");
    let n = node(&dir, 0);
    let data = dir.join("data");
    write_files(&data, &[("a.txt", "one"), ("b.txt", "two")]);

    // A restore token cannot write anything.
    through(&cairn, &n, &restore)
        .backup_raw(&[&data], &[])
        .expect_clean_error(
            1,
            "a backup needs an index token with role backup; CAIRN_INDEX_TOKEN has role restore",
        );
    assert!(cairn.snapshots().is_empty());

    // A backup token backs up, and reads back.
    let id = through(&cairn, &n, &backup)
        .backup(&[&data], &[])
        .snapshot_id();
    let target = dir.join("restored");
    through(&cairn, &n, &restore)
        .restore(&id, &target)
        .expect_success();
    assert_trees_equal(&data, &restored(&target, &data), Compare::CONTENT);

    // ... but cannot prune or rebuild the index (which clears it).
    let packs_before = pack_files(&cairn.repo).len();
    through(&cairn, &n, &backup)
        .run(["prune"])
        .expect_clean_error(
            1,
            "prune needs an index token with role prune; CAIRN_INDEX_TOKEN has role backup",
        );
    through(&cairn, &n, &backup)
        .run(["index", "rebuild"])
        .expect_clean_error(1, "index rebuild needs an index token with role prune");
    assert_eq!(pack_files(&cairn.repo).len(), packs_before);
    through(&cairn, &n, &prune).run(["prune"]).expect_success();

    // Revoked: refused at the next request, no restart.
    index_cmd(&["token", "revoke", "--tokens", s(&tokens), "backup-client"]);
    through(&cairn, &n, &backup)
        .backup_raw(&[&data], &[])
        .expect_clean_error(1, "token backup-client was revoked at ");

    // `token list` names roles, expiry and last use, never the secret.
    let out = index_cmd(&["token", "list", "--tokens", s(&tokens), "--json"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in [&restore, &backup, &prune] {
        assert!(!text.contains(secret.as_str()));
    }
    let listed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_label = |label: &str| {
        listed
            .iter()
            .find(|t| t["label"] == label)
            .unwrap_or_else(|| panic!("{label} in {text}"))
    };
    assert_eq!(by_label("backup-client")["role"], "backup");
    assert_eq!(by_label("backup-client")["state"], "revoked");
    assert_eq!(by_label("restore-client")["state"], "active");
    assert!(by_label("prune-client")["expires"].is_string());
    // The first use of a token is written at once.
    assert!(by_label("restore-client")["last_use"].is_string(), "{text}");
    // A token from before roles: no role recorded, and it works as prune.
    let mut file = std::fs::read_to_string(&tokens).unwrap();
    file.push_str(&format!(
        "\n[[token]]\nhash = \"{}\"\nrepository = \"{repo_id}\"\n",
        blake3::hash(b"cairn_legacy").to_hex()
    ));
    std::fs::write(&tokens, file).unwrap();
    let out = index_cmd(&["token", "list", "--tokens", s(&tokens)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("prune (no role recorded)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    through(&cairn, &n, "cairn_legacy")
        .run(["prune", "--dry-run"])
        .expect_success();

    // The audit log: who committed which snapshot, from where; the refusal.
    let out = index_cmd(&[
        "audit",
        "--data-dir",
        s(&n.data),
        "--json",
        "--repository",
        &repo_id,
    ]);
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let committed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "manifest_committed")
        .collect();
    assert_eq!(committed.len(), 1, "{events:?}");
    assert_eq!(committed[0]["snapshot"], id.as_str());
    assert_eq!(committed[0]["token"], "backup-client");
    assert!(
        committed[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "refused" && e["reason"] == "revoked"),
        "{events:?}"
    );
    assert!(n.metric("cairn_index_refused_requests_total") >= 1.0);
    // Another repository's events are not shown for this one.
    let other = index_cmd(&[
        "audit",
        "--data-dir",
        s(&n.data),
        "--repository",
        &"ab".repeat(32),
    ]);
    assert!(other.stdout.is_empty());
}

#[test]
fn no_secret_reaches_a_log_or_an_error_message() {
    let (_d, dir) = tempdir();
    let password = format!("pw-{}", random_marker());
    let cairn = Cairn::new(dir.join("repo"))
        .with_password(&password)
        .with_env("XDG_CACHE_HOME", s(&dir.join("cache")));
    let repo_id = cairn.init_repo_id();
    let token = add_token_with_role(&dir, &repo_id, "prune");
    let n = IndexNode::start_full(&dir, "n1", dir.join("n1"), &[], &[("CAIRN_LOG", "debug")]);
    let client = through(&cairn, &n, &token).with_env("CAIRN_LOG", "debug");
    let data = dir.join("data");
    write_files(&data, &[("a.txt", "first"), ("b.txt", "second")]);

    let mut outputs = Vec::new();
    outputs.push(client.backup_raw(&[&data], &[]));
    write_files(&data, &[("a.txt", "changed")]);
    outputs.push(client.backup_raw(&[&data], &[]));
    outputs.push(client.run(["restore", "latest", "--target", s(&dir.join("r"))]));
    outputs.push(client.run(["forget", "--keep-last", "1", "--prune"]));
    for out in &outputs {
        out.expect_success();
    }
    // Failures: a wrong password, an unknown token, a revoked one.
    let wrong_password = format!("{password}-wrong");
    outputs.push(client.with_password(&wrong_password).run(["snapshots"]));
    outputs.push(
        client
            .with_env("CAIRN_INDEX_TOKEN", &format!("{token}x"))
            .backup_raw(&[&data], &[]),
    );
    index_cmd(&[
        "token",
        "revoke",
        "--tokens",
        s(&dir.join("tokens.toml")),
        &access_id(&token),
    ]);
    outputs.push(client.backup_raw(&[&data], &[]));
    assert_ne!(outputs[4].code, 0);
    assert_ne!(outputs[5].code, 0);
    assert_ne!(outputs[6].code, 0);

    let secrets = [
        password.as_str(),
        wrong_password.as_str(),
        token.as_str(),
        &token["cairn_".len()..],
    ];
    let mut debug_lines = 0;
    for out in &outputs {
        let text = out.all_text();
        debug_lines += text.lines().filter(|l| l.contains("DEBUG")).count();
        for secret in secrets {
            assert!(!text.contains(secret), "a secret in:\n{}", out.describe());
        }
    }
    // Debug logging was on, or this test would prove nothing.
    assert!(debug_lines > 10, "{debug_lines} debug lines");
    drop(n);
    for file in [dir.join("n1.stderr"), dir.join("n1").join("audit.log")] {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.is_empty(), "{} is empty", file.display());
        for secret in secrets {
            assert!(!text.contains(secret), "a secret in {}", file.display());
        }
    }
}

/// The id `token list` shows for `token`.
fn access_id(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex()[..12].to_string()
}
