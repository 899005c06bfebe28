#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `cairn-index` binary: starts on port 0, reports where it listens,
//! serves health and metrics, and drains and exits cleanly on SIGTERM.
//! (Having this test also makes `cargo test` build the binary that the
//! client's integration tests start.)

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_metrics_and_shuts_down_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-index"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--node-id",
            "n1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tokens")
        .arg(dir.path().join("tokens.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut metrics = None;
    while metrics.is_none() {
        let line = lines.next().expect("node exited early").unwrap();
        if let Some(m) = line.split(" metrics on ").nth(1) {
            metrics = Some(m.to_string());
        }
    }
    let metrics = metrics.unwrap();
    let mut s = std::net::TcpStream::connect(&metrics).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("cairn_index_partitions_owned 4096"), "{body}");
    assert!(body.contains("cairn_index_in_flight_requests"), "{body}");

    // SIGTERM: drain, flush, exit 0 promptly.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cairn-index did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-index"))
        .args(["serve", "--node-id", "n1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: --data-dir is required"), "{err}");
}

#[test]
fn completions_load_in_bash_and_the_manual_page_builds() {
    let script = Command::new(env!("CARGO_BIN_EXE_cairn-index"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn-index.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p cairn-index",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("cairn-index"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let man = Command::new(env!("CARGO_BIN_EXE_cairn-index"))
        .arg("man")
        .arg(dir.path().join("man"))
        .output()
        .unwrap();
    assert!(man.status.success());
    let page = std::fs::read_to_string(dir.path().join("man/cairn-index.1")).unwrap();
    assert!(page.contains(".TH cairn-index 1"), "{page}");
}
