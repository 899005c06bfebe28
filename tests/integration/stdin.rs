//! Backups of a stream: standard input, and the output of a command
//! (a database dump without a temporary file).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

/// A dump of `rows` rows of a table, one line each, with row `changed`
/// (if any) edited.
fn write_dump(path: &Path, rows: u64, changed: Option<u64>) {
    let mut rng = XorShift::new(0xD0D0);
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    writeln!(out, "-- dump of table accounts").unwrap();
    for row in 0..rows {
        let balance = rng.next_u64() % 1_000_000;
        let note = if changed == Some(row) { "edited" } else { "ok" };
        writeln!(
            out,
            "INSERT INTO accounts VALUES ({row}, 'user-{row}', {balance}, '{:016x}', '{note}');",
            rng.next_u64()
        )
        .unwrap();
    }
}

/// `backup --json ARGS` with `input` as standard input.
fn backup_from_stdin(cairn: &Cairn, input: &Path, args: &[&str]) -> Output {
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let child = cairn
        .command(&all)
        .stdin(Stdio::from(fs::File::open(input).unwrap()))
        .output()
        .unwrap();
    Output {
        args: all.iter().map(Into::into).collect(),
        code: child.status.code().unwrap_or(-1),
        stdout: child.stdout,
        stderr: String::from_utf8_lossy(&child.stderr).into_owned(),
    }
}

#[test]
fn standard_input_is_stored_as_one_file_and_restores_exactly() {
    let (_tmp, dir, cairn) = new_repo();
    let input = dir.join("input");
    write_random_file(&input, 3 << 20, 5);

    let out = backup_from_stdin(&cairn, &input, &["--stdin", "--stdin-filename", "data.bin"]);
    out.expect_success();
    let stats = Stats(out.json_last_line());
    assert_eq!(stats.u("files_new"), 1);
    assert_eq!(stats.u("bytes_read"), 3 << 20);
    let snaps = cairn.snapshots();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/data.bin"]));
    assert_eq!(cairn.ls("latest"), ["/data.bin".to_string()].into());
    let dumped = cairn.run(["dump", "latest", "/data.bin"]);
    dumped.expect_success();
    assert!(dumped.stdout == fs::read(&input).unwrap(), "dump differs");

    cairn.run(["backup", "--stdin", s(&input)]).expect_code(2);
}

#[test]
fn a_failing_command_leaves_no_snapshot_and_says_why() {
    let (_tmp, _dir, cairn) = new_repo();
    let out = cairn.run([
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "head -c 2000000 /dev/zero; echo 'pg_dump: connection refused' >&2; exit 4",
    ]);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: command `sh -c ")
            && out
                .stderr
                .contains("` exited with code 4; no snapshot was written")
            && out
                .stderr
                .ends_with("stderr:\n  pg_dump: connection refused\n"),
        "{}",
        out.describe()
    );
    assert!(
        cairn.snapshots().is_empty(),
        "a failed dump left a snapshot"
    );

    let out = cairn.run([
        "backup",
        "--stdin-from-command",
        "--",
        "/nonexistent/dump-tool",
    ]);
    out.expect_clean_error(1, "cannot run command `/nonexistent/dump-tool`");
    assert!(cairn.snapshots().is_empty());
}

#[test]
fn a_dump_that_differs_by_one_row_stores_under_one_percent_new() {
    let (_tmp, dir, cairn) = new_repo();
    let rows = 6_000_000; // about 500 MB of SQL
    let (first, second) = (dir.join("dump1.sql"), dir.join("dump2.sql"));
    write_dump(&first, rows, None);
    write_dump(&second, rows, Some(rows / 2));
    let size = fs::metadata(&second).unwrap().len();
    assert!(size > 400 << 20, "{size}");

    let dump = |file: &Path| {
        let out = cairn.run([
            "backup",
            "--json",
            "--stdin-filename",
            "accounts.sql",
            "--stdin-from-command",
            "--",
            "cat",
            s(file),
        ]);
        out.expect_success();
        Stats(out.json_last_line())
    };
    let one = dump(&first);
    assert_eq!(one.u("bytes_read"), fs::metadata(&first).unwrap().len());
    let two = dump(&second);
    assert_eq!(two.u("bytes_read"), size);
    assert!(
        two.u("bytes_new") * 100 < size,
        "the second dump stored {} new bytes of {size}",
        two.u("bytes_new")
    );
    assert!(two.u("chunks_reused") > 100, "{:?}", two);

    let dumped = cairn.run(["dump", "latest", "/accounts.sql"]);
    dumped.expect_success();
    assert!(dumped.stdout == fs::read(&second).unwrap(), "dump differs");
    let _ = fs::remove_file(&first);
}

#[test]
fn an_agent_job_backs_up_a_command() {
    let (_tmp, dir, cairn) = new_repo();
    let password = dir.join("password");
    fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let config = dir.join("cairn.toml");
    fs::write(
        &config,
        format!(
            "[jobs.db]\ncommand = [\"printf\", \"row 1\\nrow 2\\n\"]\nstdin_filename = \"db.sql\"\nrepository = \"{}\"\npassword_file = \"{}\"\nschedule = \"daily\"\n",
            s(&cairn.repo),
            s(&password)
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let run = |job: &str| {
        cairn.run([
            "agent",
            "--config",
            s(&config),
            "--state-dir",
            s(&state),
            "--run-once",
            job,
        ])
    };
    run("db").expect_success();
    let snaps = cairn.snapshots();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/db.sql"]));
    let dumped = cairn.run(["dump", "latest", "/db.sql"]);
    dumped.expect_success();
    assert_eq!(dumped.stdout, b"row 1\nrow 2\n");

    // A job cannot have both paths and a command.
    fs::write(
        &config,
        format!(
            "[jobs.db]\ncommand = [\"true\"]\npaths = [\"{}\"]\nrepository = \"{}\"\npassword_file = \"{}\"\nschedule = \"daily\"\n",
            s(&dir),
            s(&cairn.repo),
            s(&password)
        ),
    )
    .unwrap();
    let out = run("db");
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("give either paths or a command, not both"),
        "{}",
        out.describe()
    );
}
