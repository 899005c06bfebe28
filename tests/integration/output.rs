//! What the main commands print, byte for byte, as text and as `--json`.
//!
//! Scripts parse this output, so it is part of the interface. The values
//! that differ from run to run (random ids, temporary paths, durations, the
//! clock) are replaced by placeholders before comparing; everything else is
//! pinned as written here.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

const FIXTURE_PASSWORD: &str = "cairn-fixture";

/// The source path the version-2 fixture recorded when it was written.
const FIXTURE_SOURCE: &str = "/work/main/tests/fixtures/source-v1";

/// Replaces what changes between runs: the given literal values (longest
/// first), runs of 64 and 8 hex digits, and `in 0.4s`-style durations.
fn normalize(text: &str, literals: &[(&str, &str)]) -> String {
    // Durations first: their digits could pass for a short id.
    let mut out = normalize_seconds(text);
    let mut literals = literals.to_vec();
    literals.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    for (from, to) in literals {
        if !from.is_empty() {
            out = out.replace(from, to);
        }
    }
    let mut result = String::with_capacity(out.len());
    let chars: Vec<char> = out.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        let boundary_before = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if boundary_before && is_hex(chars[i]) {
            let mut j = i;
            while j < chars.len() && is_hex(chars[j]) {
                j += 1;
            }
            let boundary_after = j == chars.len() || !chars[j].is_ascii_alphanumeric();
            let run = j - i;
            if boundary_after && (run == 64 || run == 8) {
                result.push_str(if run == 64 { "<id>" } else { "<short>" });
                i = j;
                continue;
            }
        }
        result.push(chars[i]);
        i += 1;
    }
    result
}

/// `in 0.4s` → `in <t>s`, `"seconds":0.41` → `"seconds":<t>`.
fn normalize_seconds(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let mut line = line.to_string();
        for key in [" in ", "\"seconds\":"] {
            let mut from = 0;
            while let Some(pos) = line[from..].find(key) {
                let start = from + pos + key.len();
                let end = start
                    + line[start..]
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                        .unwrap_or(line.len() - start);
                let number = &line[start..end];
                let unit_ok = key != " in " || line[end..].starts_with('s');
                if !number.is_empty() && number.parse::<f64>().is_ok() && unit_ok {
                    line.replace_range(start..end, "<t>");
                    from = start + 3;
                } else {
                    from = start;
                }
            }
        }
        out.push_str(&line);
    }
    out
}

/// With `CAIRN_GOLDEN_RECORD=FILE`, what each command printed is appended
/// to FILE instead of compared (to write the expectations of a new case).
/// `stored 1.15 KiB in` → `stored <size> in`: compressed sizes of trees
/// vary with the times they record.
fn mask_stored(text: &str) -> String {
    match (text.find("stored "), text.find(" in <t>s")) {
        (Some(a), Some(b)) if a < b => format!("{}stored <size>{}", &text[..a], &text[b..]),
        _ => text.to_string(),
    }
}

/// `, 1.2 KiB stored` → `, <size> stored` on every line of a copy's
/// report (trees record file times, so their sizes vary).
fn mask_copied_sizes(text: &str) -> String {
    text.lines()
        .map(|l| match (l.rfind("chunks, "), l.rfind(" stored")) {
            (Some(a), Some(b)) if a < b => format!("{}chunks, <size>{}\n", &l[..a], &l[b..]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// The same for a JSON report: the named fields become 0.
fn mask_fields(text: &str, keys: &[&str]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for key in keys {
        if v.get(key).is_some() {
            v[*key] = serde_json::Value::from(0);
        }
    }
    v.to_string()
}

#[track_caller]
fn assert_text(what: &str, actual: &str, expected: &str) {
    if let Ok(file) = std::env::var("CAIRN_GOLDEN_RECORD") {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap();
        writeln!(f, "=== {what}\n{actual}").unwrap();
        return;
    }
    assert!(
        actual == expected,
        "{what} printed, normalized:\n{actual}\n--- expected:\n{expected}"
    );
}

/// What a run that must succeed printed, stdout and stderr, normalized
/// with `literals`.
fn printed(out: &Output, literals: &[(&str, &str)]) -> (String, String) {
    out.expect_success();
    (
        normalize(&out.stdout_text(), literals),
        normalize(&out.stderr, literals),
    )
}

fn fixture_copy(dir: &Path) -> Cairn {
    let fixture = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/repo-v2"
    ));
    let repo = dir.join("repo");
    copy_dir(&fixture, &repo);
    Cairn::new(&repo)
        .with_password(FIXTURE_PASSWORD)
        .with_env("TZ", "UTC")
}

/// Read-only commands on the committed version-2 fixture: every value is
/// fixed by the fixture itself.
#[test]
fn fixture_commands_print_exactly() {
    let (_tmp, dir) = tempdir();
    let cairn = fixture_copy(&dir);
    let repo = s(&cairn.repo).to_string();
    let lit = [(repo.as_str(), "<repo>")];
    let run = |args: &[&str]| printed(&cairn.run(args), &lit);

    let (out, err) = run(&["index", "rebuild"]);
    assert_text(
        "index rebuild",
        &out,
        "rebuilt index: 14 chunks in 2 packs\n",
    );
    assert_text("index rebuild (stderr)", &err, "");

    let (out, _) = run(&["snapshots"]);
    assert_text(
        "snapshots",
        &out,
        "id         time                 host             tags             paths\n\
         <short>   2026-12-02T09:30:35Z fixture          fixture-v2       /work/main/tests/fixtures/source-v1\n\
         1 snapshot(s)\n",
    );
    let (out, _) = run(&["snapshots", "--json"]);
    assert_text(
        "snapshots --json",
        &out,
        r#"[{"host":"fixture","id":"<id>","original":null,"parent":null,"paths":["/work/main/tests/fixtures/source-v1"],"short_id":"<short>","stats":{"bytes_new":1575880,"bytes_read":1574870,"bytes_stored":1575414,"bytes_total":1574870,"chunks_new":14,"chunks_reused":0,"dirs":9,"duration_ms":21,"errors":0,"files_changed":0,"files_new":5,"files_unmodified":0},"tags":["fixture-v2"],"time":"2026-12-02T09:30:35.390752660Z","user":"unknown"}]
"#,
    );

    let (out, _) = run(&["ls", "latest"]);
    assert_text(
        "ls",
        &out,
        "/work\n/work/main\n/work/main/tests\n/work/main/tests/fixtures\n/work/main/tests/fixtures/source-v1\n/work/main/tests/fixtures/source-v1/README.txt\n/work/main/tests/fixtures/source-v1/data.bin\n/work/main/tests/fixtures/source-v1/docs\n/work/main/tests/fixtures/source-v1/empty.txt\n/work/main/tests/fixtures/source-v1/link-to-a\n/work/main/tests/fixtures/source-v1/docs/a.txt\n/work/main/tests/fixtures/source-v1/docs/nested\n/work/main/tests/fixtures/source-v1/docs/nested/deeper\n/work/main/tests/fixtures/source-v1/docs/nested/deeper/b.txt\n",
    );
    let (out, _) = run(&["ls", "latest", "--json", &format!("{FIXTURE_SOURCE}/docs")]);
    assert_text(
        "ls --json",
        &out,
        r#"{"mode":493,"mtime":"2026-12-02T07:08:24.119307445Z","path":"/work/main/tests/fixtures/source-v1/docs","size":0,"type":"dir"}
{"mode":420,"mtime":"2026-12-02T07:08:24.116801381Z","path":"/work/main/tests/fixtures/source-v1/docs/a.txt","size":240,"type":"file"}
{"mode":493,"mtime":"2026-12-02T07:08:24.119307445Z","path":"/work/main/tests/fixtures/source-v1/docs/nested","size":0,"type":"dir"}
{"mode":493,"mtime":"2026-12-02T07:08:24.119307445Z","path":"/work/main/tests/fixtures/source-v1/docs/nested/deeper","size":0,"type":"dir"}
{"mode":420,"mtime":"2026-12-02T07:08:24.119307445Z","path":"/work/main/tests/fixtures/source-v1/docs/nested/deeper/b.txt","size":1690,"type":"file"}
"#,
    );

    let dumped = cairn.run(["dump", "latest", &format!("{FIXTURE_SOURCE}/docs/a.txt")]);
    dumped.expect_success();
    assert_eq!(dumped.stdout, "alpha\n".repeat(40).into_bytes());

    let (out, _) = run(&["diff", "latest", "latest"]);
    assert_text("diff of a snapshot with itself", &out, "");

    let (out, _) = run(&["check"]);
    assert_text(
        "check",
        &out,
        "checked 1 snapshots, 2 packs, 14 chunks: no errors were found\n",
    );
    let (out, _) = run(&["check", "--read-data"]);
    assert_text(
        "check --read-data",
        &out,
        "checked 1 snapshots, 2 packs, 14 chunks (1.50 MiB read): no errors were found\n",
    );
    let (out, _) = run(&["check", "--json"]);
    assert_text(
        "check --json",
        &out,
        r#"{"bytes_verified":0,"chunks":14,"packs":2,"problems":[],"snapshots":1}
"#,
    );

    let (out, _) = run(&["key", "list"]);
    assert_text("key list", &out, "* <id> unknown@vm 2026-12-02T09:30:35Z\n");
    let (out, _) = run(&["key", "list", "--json"]);
    assert_text(
        "key list --json",
        &out,
        r#"[{"created":"2026-12-02T09:30:35.000000000Z","current":true,"host":"vm","id":"<id>","user":"unknown"}]
"#,
    );

    let target = dir.join("target");
    let lit_target = [(repo.as_str(), "<repo>"), (s(&target), "<target>")];
    let (out, _) = printed(
        &cairn.run(["restore", "latest", "--target", s(&target)]),
        &lit_target,
    );
    assert_text(
        "restore",
        &out,
        "restored 5 files, 8 dirs, 1.50 MiB from snapshot <short> to <target>\n",
    );
    let target2 = dir.join("target2");
    let lit_target = [(repo.as_str(), "<repo>"), (s(&target2), "<target>")];
    let (out, _) = printed(
        &cairn.run(["restore", "latest", "--json", "--target", s(&target2)]),
        &lit_target,
    );
    assert_text(
        "restore --json",
        &out,
        r#"{"bytes":1574870,"dirs":8,"failed":0,"files":5,"snapshot_id":"<id>"}
"#,
    );

    let (out, _) = run(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_text(
        "forget --dry-run",
        &out,
        r#"applying policy: keep the last 1 snapshots

snapshots for host "fixture", paths [/work/main/tests/fixtures/source-v1]:
keep 1 snapshot(s):
  <short>  2026-12-02 09:30:35  last snapshot

dry run: 0 snapshot(s) would be removed
"#,
    );
    let (out, _) = run(&["forget", "--keep-last", "1", "--dry-run", "--json"]);
    assert_text(
        "forget --dry-run --json",
        &out,
        r#"{"dry_run":true,"groups":[{"host":"fixture","keep":[{"committed_time":null,"id":"<id>","reasons":["last snapshot"],"short_id":"<short>","snapshot_time":"2026-12-02T09:30:35.39075266Z","suspect":false,"time":"2026-12-02T09:30:35.39075266Z","time_used":"snapshot"}],"paths":["/work/main/tests/fixtures/source-v1"],"remove":[],"tags":null}],"policy":"keep the last 1 snapshots","removed":[]}
"#,
    );
    let (out, _) = run(&["forget", "--dry-run"]);
    assert_text(
        "forget without a policy",
        &out,
        "no policy was given (--keep-*), no snapshots will be removed\n",
    );
}

/// Commands that write: a fresh repository, a fixed tree, two backups.
#[test]
fn writing_commands_print_exactly() {
    let (_tmp, dir) = tempdir();
    let src = dir.join("src");
    write_files(
        &src,
        &[
            ("a.txt", "first file\n"),
            ("sub/b.txt", &"second file\n".repeat(100)),
        ],
    );
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let repo = dir.join("repo");
    let cairn = Cairn::new(&repo).with_env("TZ", "UTC");
    let lit = [(s(&repo), "<repo>"), (s(&src), "<src>"), (s(&dir), "<dir>")];

    let (out, _) = printed(&cairn.run(["init"]), &lit);
    assert_text("init", &out, "created repository <short> at <repo>\n");
    let json_repo = dir.join("repo-json");
    let lit_json = [(s(&json_repo), "<repo>")];
    let (out, _) = printed(&Cairn::new(&json_repo).run(["init", "--json"]), &lit_json);
    assert_text(
        "init --json",
        &out,
        r#"{"chunker":"prf","cipher":"aes-256-gcm","index_lengths":"sealed","location":"<repo>","padding":"padme","repo_id":"<id>"}
"#,
    );

    let (out, err) = printed(
        &cairn.run(["backup", s(&src), "--host", "golden", "--tag", "t1"]),
        &lit,
    );
    assert_text(
        "backup",
        &mask_stored(&out),
        "files: 2 new, 0 changed, 0 unmodified; 5 dirs\nchunks: 7 new, 0 reused; read 1.18 KiB, new 1.65 KiB, stored <size> in <t>s\nsnapshot <short> saved\n",
    );
    assert_text("backup (stderr)", &err, "");

    fs::write(src.join("a.txt"), "first file, changed\n").unwrap();
    fs::write(src.join("c.txt"), "third file\n").unwrap();
    fs::remove_file(src.join("link")).unwrap();
    let out = cairn.run(["backup", s(&src), "--host", "golden", "--json"]);
    out.expect_success();
    assert_text(
        "backup --json",
        &normalize(&mask_fields(&out.stdout_text(), &["bytes_stored"]), &lit),
        r#"{"bytes_new":459,"bytes_read":31,"bytes_stored":0,"bytes_total":1231,"chunks_new":6,"chunks_reused":1,"data_chunks_new":2,"dirs":5,"errors":0,"files_changed":1,"files_new":1,"files_unmodified":1,"parent":"<id>","seconds":<t>,"snapshot_id":"<id>","tree_chunks_new":4}"#,
    );

    let snaps = cairn.snapshots();
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let second = snaps[1]["id"].as_str().unwrap().to_string();
    // Local times (TZ=UTC) of the two snapshots, as forget prints them.
    let times: Vec<String> = snaps
        .iter()
        .map(|s| s["time"].as_str().unwrap()[..19].replace('T', " "))
        .collect();
    let lit = [
        (s(&repo), "<repo>"),
        (s(&src), "<src>"),
        (s(&dir), "<dir>"),
        // The two backups may fall in one second or in two.
        (times[0].as_str(), "<time>"),
        (times[1].as_str(), "<time>"),
    ];
    let (out, _) = printed(&cairn.run(["diff", &first, &second]), &lit);
    assert_text(
        "diff",
        &out,
        "M    <src>/a.txt\n+    <src>/c.txt\n-    <src>/link\n",
    );

    // Nothing is unreferenced yet, so what prune finds does not depend on
    // the clock.
    let (out, _) = printed(
        &cairn.run(["prune", "--grace", "0s", "--clock-skew", "0s"]),
        &lit,
    );
    assert_text(
        "prune",
        &out,
        "2 snapshots use 13 chunks; 0 backup(s) running\nchunks condemned: 0\npacks repacked: 0 (0 chunks, 0 B written)\npacks deleted: 0 of 4, 0 B freed\n",
    );
    let out = cairn.run(["prune", "--json", "--dry-run"]);
    out.expect_success();
    let mut report = out.json_last_line();
    report["cutoff_unix"] = serde_json::Value::from(0);
    report["bytes_before"] = serde_json::Value::from(0);
    assert_text(
        "prune --json",
        &normalize(&report.to_string(), &lit),
        r#"{"backups_from_forgotten_parents":0,"bytes_before":0,"bytes_freed":0,"bytes_locked":0,"bytes_repacked":0,"bytes_waiting":0,"chunks_condemned":0,"chunks_repacked":0,"chunks_revived":0,"chunks_used":13,"cutoff_unix":0,"dry_run":true,"packs":4,"packs_deleted":0,"packs_locked":0,"packs_registered":0,"packs_repacked":0,"packs_unreadable":0,"packs_waiting":0,"running_backups":0,"snapshots":2,"waiting":[]}"#,
    );
    let (out, _) = printed(&cairn.run(["forget", "--keep-last", "2", "--prune"]), &lit);
    assert_text(
        "forget --prune",
        &out,
        r#"applying policy: keep the last 2 snapshots

snapshots for host "golden", paths [<src>]:
keep 2 snapshot(s):
  <short>  <time>  last snapshot
  <short>  <time>  last snapshot

removed 0 snapshot(s)

2 snapshots use 13 chunks; 0 backup(s) running
chunks condemned: 0
packs repacked: 0 (0 chunks, 0 B written)
packs deleted: 0 of 4, 0 B freed
"#,
    );

    // A copy into a repository with its own password.
    let copy_repo = dir.join("copy");
    let target = Cairn::new(&copy_repo)
        .with_env("TZ", "UTC")
        .with_password("the copy's password");
    target.init();
    let rfc3339: Vec<String> = snaps
        .iter()
        .map(|s| format!("{}Z", &s["time"].as_str().unwrap()[..19]))
        .collect();
    let lit_copy = [
        (s(&repo), "<repo>"),
        (s(&copy_repo), "<copy>"),
        (rfc3339[0].as_str(), "<time>"),
        (rfc3339[1].as_str(), "<time>"),
    ];
    let copied =
        target
            .with_env("CAIRN_FROM_PASSWORD", PASSWORD)
            .run(["copy", "--from-repo", s(&repo)]);
    let (out, _) = printed(&copied, &lit_copy);
    assert_text(
        "copy",
        &mask_copied_sizes(&out),
        "copied <short> as <short> (golden <time>): 7 new chunks, <size> stored\n\
         copied <short> as <short> (golden <time>): 6 new chunks, <size> stored\n\
         content re-chunked (different chunker parameters)\n\
         2 snapshots copied, 0 already present; 13 new chunks, <size> stored\n",
    );
    let again = target.with_env("CAIRN_FROM_PASSWORD", PASSWORD).run([
        "copy",
        "--from-repo",
        s(&repo),
        "latest",
    ]);
    let (out, _) = printed(&again, &lit_copy);
    assert_text(
        "copy again",
        &out,
        "0 snapshots copied, 1 already present; 0 new chunks, 0 B stored\n",
    );

    let (out, _) = printed(&cairn.run(["forget", &first]), &lit);
    assert_text("forget ID", &out, "removed snapshot <short>\n");
    let (out, _) = printed(&cairn.run(["forget", "--dry-run", "--json", &second]), &lit);
    assert_text(
        "forget ID --dry-run --json",
        &out,
        r#"{"dry_run":true,"groups":[],"removed":["<id>"]}
"#,
    );
}

/// `agent --check-config` and `schedule install/remove` with a fixed config.
#[test]
fn agent_and_schedule_print_exactly() {
    let (_tmp, dir) = tempdir();
    let config = dir.join("cairn.toml");
    fs::write(
        &config,
        format!(
            "[jobs.home]\nschedule = \"30 2 * * *\"\njitter = \"10m\"\npaths = [\"{0}/src\"]\nrepository = \"{0}/repo\"\npassword_file = \"{0}/pw\"\n\n[jobs.home.retention]\nkeep_daily = 7\n",
            s(&dir)
        ),
    )
    .unwrap();
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("pw"), "secret\n").unwrap();
    let cairn = Cairn::new(dir.join("repo")).with_env("TZ", "UTC");
    let lit = [(s(&dir), "<dir>")];
    let strip_next = |text: String| -> String {
        text.lines()
            .map(|l| {
                if l.trim_start().starts_with("next runs:") {
                    "  next runs:  <times>".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (out, _) = printed(
        &cairn.run(["agent", "--config", s(&config), "--check-config"]),
        &lit,
    );
    assert_text(
        "agent --check-config",
        &strip_next(out),
        "<dir>/cairn.toml: 1 job(s), configuration is valid\n\njob home\n  schedule:   30 2 * * * (systemd OnCalendar=*-*-* 02:30:00)\n  jitter:     up to 10m\n  next runs:  <times>\n  paths:      <dir>/src\n  repository: <dir>/repo\n  retention:  keep 7 daily",
    );
    let out = cairn.run(["agent", "--config", s(&config), "--check-config", "--json"]);
    out.expect_success();
    let mut v = out.json();
    v["jobs"][0]["next_runs"] = serde_json::Value::from("<times>");
    assert_text(
        "agent --check-config --json",
        &normalize(&v.to_string(), &lit),
        r#"{"config":"<dir>/cairn.toml","jobs":[{"jitter_seconds":600.0,"name":"home","next_runs":"<times>","on_calendar":"*-*-* 02:30:00","on_calendar_error":null,"paths":["<dir>/src"],"repository":"<dir>/repo","retention":"keep 7 daily","schedule":"30 2 * * *"}]}"#,
    );

    let units = dir.join("units");
    let state = dir.join("state");
    let (out, _) = printed(
        &cairn.schedule(
            "install",
            &config,
            &units,
            &["--state-dir", s(&state), "--user"],
        ),
        &lit,
    );
    assert_text(
        "schedule install",
        &out,
        "wrote cairn-backup-home.service and cairn-backup-home.timer in <dir>/units (OnCalendar=*-*-* 02:30:00)\nnot calling systemctl (--unit-dir); to activate: systemctl --user daemon-reload && systemctl --user enable --now cairn-backup-home.timer\n",
    );
    let (out, _) = printed(
        &cairn.schedule("remove", &config, &units, &["--user"]),
        &lit,
    );
    assert_text(
        "schedule remove",
        &out,
        "removed <dir>/units/cairn-backup-home.service\nremoved <dir>/units/cairn-backup-home.timer\n",
    );
}

#[test]
fn normalize_replaces_ids_paths_and_durations() {
    let id = "a".repeat(64);
    let text = format!(
        "snapshot 3f2a9c01 saved\n{id} in 0.4s at /tmp/x\n\"seconds\":1.25,\n1234567\n\"seconds\":0.12345678,\n"
    );
    assert_eq!(
        normalize(&text, &[("/tmp/x", "<dir>")]),
        "snapshot <short> saved\n<id> in <t>s at <dir>\n\"seconds\":<t>,\n1234567\n\"seconds\":<t>,\n"
    );
}
