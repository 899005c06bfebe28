//! Shared helpers: running `cairn`, building source trees, comparing trees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The password of every test repository unless a test says otherwise.
pub const PASSWORD: &str = "integration-test password";

/// How long any single `cairn` command may run before the test gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

pub const MIB: u64 = 1024 * 1024;

/// `init` flags of a repository that hides no chunk sizes, as before config
/// version 5: keyed FastCDC, no padding, plaintext lengths in the index.
pub const NO_SIZE_PROTECTION: [&str; 6] = [
    "--chunker",
    "fastcdc",
    "--padding",
    "none",
    "--index-lengths",
    "clear",
];

/// True when the tests run as root (chmod 000 does not stop root reading).
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        // The owner of a file we create is our effective uid; no unsafe needed.
        let f = tempfile::NamedTempFile::new().expect("temp file");
        f.as_file().metadata().expect("metadata").uid() == 0
    })
}

/// Set by `scripts/test-all.sh`, which starts every service the tests
/// need: there a missing service fails the test instead of skipping it.
const REQUIRE_SERVICES: &str = "CAIRN_TEST_REQUIRE_SERVICES";

/// The value of `var`, which the test script exports when it has started
/// `service`. Without it a plain `cargo test` skips the test: this writes
/// one line saying so to the terminal (past the test harness's capture, so
/// the run shows what it skipped) and returns `None`. Under
/// `scripts/test-all.sh` a missing variable fails the test.
pub fn service_var(var: &str, service: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var) {
        return Some(value);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var_os(REQUIRE_SERVICES).is_none(),
        "{test}: {var} is not set, but {REQUIRE_SERVICES} says every service was started"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs {service} ({var} is not set); scripts/test-all.sh starts it and runs every test"
    );
    None
}

/// A fresh temporary directory with a canonical path (the snapshot records
/// canonical absolute paths, so comparisons must use them too).
pub fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cairn-it-")
        .tempdir()
        .expect("create temp dir");
    let path = dir.path().canonicalize().expect("canonicalize temp dir");
    (dir, path)
}

/// A temporary directory holding a new repository at `DIR/repo`, and a
/// client for it.
pub fn new_repo() -> (tempfile::TempDir, PathBuf, Cairn) {
    let (tmp, dir) = tempdir();
    let cairn = Cairn::new(dir.join("repo"));
    cairn.init();
    (tmp, dir, cairn)
}

/// The path under a restore target where an absolute source path lands.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").expect("absolute source path"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

// ---------------------------------------------------------------------------
// Running cairn
// ---------------------------------------------------------------------------

/// What one `cairn` run produced.
#[derive(Debug)]
pub struct Output {
    pub args: Vec<OsString>,
    /// Exit code; -1 if killed by a signal.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout and stderr together, for "named somewhere in the output" checks.
    pub fn all_text(&self) -> String {
        format!("{}\n{}", self.stdout_text(), self.stderr)
    }

    pub fn describe(&self) -> String {
        let mut out = self.stdout_text();
        if out.len() > 4000 {
            let mut cut = out.len() - 4000;
            while !out.is_char_boundary(cut) {
                cut += 1;
            }
            out = format!("...{}", &out[cut..]);
        }
        format!(
            "cairn {:?}\nexit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, out, self.stderr
        )
    }

    /// Asserts the exit code, printing the whole run on failure.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.describe());
        self
    }

    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }

    /// The last non-empty stdout line parsed as JSON (the `--json` contract).
    pub fn json_last_line(&self) -> Value {
        let text = self.stdout_text();
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no output to parse as JSON\n{}", self.describe()));
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("last stdout line is not JSON: {e}\n{}", self.describe()))
    }

    /// All of stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.describe()))
    }

    /// The contract for expected failures: the given exit code and exactly one
    /// non-empty stderr line, starting with "error: " and containing `needle`.
    pub fn expect_clean_error(&self, code: i32, needle: &str) -> &Self {
        self.expect_code(code);
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("error: "),
            "stderr line does not start with \"error: \"\n{}",
            self.describe()
        );
        assert!(
            lines[0].contains(needle),
            "stderr line does not contain {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// Stdout lines as text.
    pub fn lines(&self) -> Vec<String> {
        self.stdout_text().lines().map(str::to_owned).collect()
    }
}

/// Outputs that must never appear, whatever the command did.
fn assert_no_panic(out: &Output) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !out.stderr.contains(bad),
            "cairn printed {bad:?}\n{}",
            out.describe()
        );
    }
}

/// How to invoke `cairn` against one repository.
#[derive(Debug, Clone)]
pub struct Cairn {
    pub repo: PathBuf,
    /// Sent as CAIRN_PASSWORD; `None` sends no password (e.g. with --password-file).
    pub password: Option<String>,
    /// Run as this uid/gid (tests that must not be root).
    pub user: Option<(u32, u32)>,
    pub env: Vec<(String, String)>,
}

impl Cairn {
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        Self {
            repo: repo.into(),
            password: Some(PASSWORD.to_string()),
            user: None,
            env: Vec::new(),
        }
    }

    pub fn with_password(&self, password: &str) -> Self {
        let mut c = self.clone();
        c.password = Some(password.to_string());
        c
    }

    pub fn without_password(&self) -> Self {
        let mut c = self.clone();
        c.password = None;
        c
    }

    pub fn with_env(&self, key: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.env.push((key.to_string(), value.to_string()));
        c
    }

    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CAIRN_") || k == "RUST_BACKTRACE" || k == "RUST_LIB_BACKTRACE" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("CAIRN_REPO", &self.repo);
        cmd.env("CAIRN_KDF_MEMORY_KIB", "1024");
        if let Some(pw) = &self.password {
            cmd.env("CAIRN_PASSWORD", pw);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs to completion (with a timeout) and captures everything.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).map(|_| buf)
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stderr.read_to_end(&mut buf).map(|_| buf)
        });
        let status = wait_with_deadline(&mut child, COMMAND_TIMEOUT)
            .unwrap_or_else(|| panic!("cairn {args:?} did not finish within {COMMAND_TIMEOUT:?}"));
        let stdout = out_reader
            .join()
            .expect("stdout reader")
            .expect("read stdout");
        let stderr = err_reader
            .join()
            .expect("stderr reader")
            .expect("read stderr");
        let out = Output {
            args,
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        assert_no_panic(&out);
        out
    }

    /// Starts a long-running command; its stdout/stderr go to files in `log_dir`
    /// (a pipe nobody drains could block it).
    pub fn spawn<I, S>(&self, args: I, log_dir: &Path) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        fs::create_dir_all(log_dir).expect("log dir");
        let stdout = File::create(log_dir.join("stdout")).expect("stdout log");
        let stderr = File::create(log_dir.join("stderr")).expect("stderr log");
        self.command(args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn cairn")
    }

    /// `init --json`; the new repository's id.
    pub fn init_repo_id(&self) -> String {
        let init = self.run(["init", "--json"]);
        init.expect_success();
        init.json_last_line()["repo_id"]
            .as_str()
            .expect("repo_id")
            .to_string()
    }

    pub fn init(&self) -> Output {
        let out = self.run(["init"]);
        out.expect_success();
        out
    }

    pub fn init_with_hash(&self, hash: &str) -> Output {
        let out = self.run(["init", "--hash", hash]);
        out.expect_success();
        out
    }

    /// `backup PATHS... EXTRA... --json`, expecting exit 0; returns the stats line.
    pub fn backup(&self, paths: &[&Path], extra: &[&str]) -> Stats {
        let out = self.backup_raw(paths, extra);
        out.expect_success();
        Stats(out.json_last_line())
    }

    pub fn backup_raw(&self, paths: &[&Path], extra: &[&str]) -> Output {
        let mut args: Vec<OsString> = vec!["backup".into()];
        args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
        args.extend(extra.iter().map(OsString::from));
        args.push("--json".into());
        self.run(args)
    }

    /// `restore SNAPSHOT --target TARGET`, expecting exit 0.
    pub fn restore(&self, snapshot: &str, target: &Path) -> Output {
        let out = self.run(["restore", snapshot, "--target", s(target)]);
        out.expect_success();
        out
    }

    /// `check --read-data`, expecting a clean repository.
    pub fn check_clean(&self) {
        let out = self.run(["check", "--read-data"]);
        out.expect_success();
        assert!(
            out.all_text().contains("no errors were found"),
            "check did not say \"no errors were found\"\n{}",
            out.describe()
        );
    }

    /// `schedule VERB --config CONFIG --unit-dir UNITS EXTRA...`: the unit
    /// files go to `units`, and systemd itself is left alone.
    pub fn schedule(&self, verb: &str, config: &Path, units: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "schedule",
            verb,
            "--config",
            s(config),
            "--unit-dir",
            s(units),
        ];
        args.extend_from_slice(extra);
        self.run(args)
    }

    /// `snapshots --json`.
    pub fn snapshots(&self) -> Vec<Value> {
        let out = self.run(["snapshots", "--json"]);
        out.expect_success();
        match out.json() {
            Value::Array(a) => a,
            other => panic!("snapshots --json is not an array: {other}"),
        }
    }

    /// `ls SNAPSHOT` lines.
    pub fn ls(&self, snapshot: &str) -> BTreeSet<String> {
        let out = self.run(["ls", snapshot]);
        out.expect_success();
        out.lines().into_iter().filter(|l| !l.is_empty()).collect()
    }
}

/// Waits for a child, killing it if the deadline passes.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Polls `condition` until it holds; panics with `what` at the deadline.
pub fn poll_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The JSON stats line of `backup --json`.
#[derive(Debug, Clone)]
pub struct Stats(pub Value);

impl Stats {
    pub fn u(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("backup stats have no unsigned field {key:?}: {}", self.0))
    }

    pub fn snapshot_id(&self) -> String {
        self.0
            .get("snapshot_id")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("backup stats have no snapshot_id: {}", self.0))
            .to_string()
    }
}

// ---------------------------------------------------------------------------
// Repository files
// ---------------------------------------------------------------------------

/// A pack file: `REPO/packs/<2 hex>/<64 hex>`.
#[derive(Debug, Clone)]
pub struct PackFile {
    pub path: PathBuf,
    pub id: String,
    pub size: u64,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Complete pack files (temporary files are skipped).
pub fn pack_files(repo: &Path) -> Vec<PackFile> {
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(repo.join("packs")) else {
        return out;
    };
    for dir in dirs.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !is_hex(&name, 64) {
                continue;
            }
            if let Ok(md) = f.metadata() {
                out.push(PackFile {
                    path: f.path(),
                    id: name,
                    size: md.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

pub fn largest_pack(repo: &Path) -> PackFile {
    pack_files(repo)
        .into_iter()
        .max_by_key(|p| p.size)
        .expect("repository has packs")
}

/// Names of the files in `REPO/keys/`.
pub fn key_files(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(repo.join("keys"))
        .expect("keys dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

/// Recursive copy of a directory of regular files (repositories, fixtures).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let ft = entry.file_type().expect("file type");
        let dest = to.join(entry.file_name());
        if ft.is_dir() {
            copy_dir(&entry.path(), &dest);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).expect("readlink"), &dest)
                .expect("symlink");
        } else {
            fs::copy(entry.path(), &dest).expect("copy file");
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// xorshift64*: fast, deterministic, incompressible enough for chunking tests.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

/// Writes `len` pseudo-random bytes (seeded) in 1 MiB blocks, after `prefix`.
pub fn write_random_file_with_prefix(path: &Path, prefix: &[u8], len: u64, seed: u64) {
    let mut f = io::BufWriter::new(File::create(path).expect("create random file"));
    f.write_all(prefix).expect("write");
    let mut rng = XorShift::new(seed);
    let mut block = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut block[..n]);
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.into_inner().expect("flush").sync_all().ok();
}

pub fn write_random_file(path: &Path, len: u64, seed: u64) {
    write_random_file_with_prefix(path, &[], len, seed);
}

/// Writes each `(path relative to root, contents)`, creating the
/// directories on the way.
pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (rel, contents) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("a file under root")).expect("create dirs");
        fs::write(&path, contents).expect("write file");
    }
}

/// A unique marker that appears nowhere by accident: 40 random hex chars.
pub fn random_marker() -> String {
    let mut bytes = [0u8; 20];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    hex::encode(bytes)
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn set_mtime_ns(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).expect("set mtime");
}

// ---------------------------------------------------------------------------
// The full source tree of the round-trip and dedup tests
// ---------------------------------------------------------------------------

/// What [`build_full_tree`] made, for tests that need particular entries.
#[derive(Debug, Clone)]
pub struct FullTree {
    pub root: PathBuf,
    pub big: PathBuf,
    pub big_len: u64,
    pub big_seed: u64,
    pub medium: PathBuf,
    pub empty: PathBuf,
    /// A directory with a few levels under it, for `restore --include`.
    pub include_dir: PathBuf,
    /// Regular file paths (each name of a hardlink counted).
    pub regular_files: usize,
}

pub const SMALL_FILE_DIRS: usize = 4;
pub const SMALL_FILES_PER_DIR: usize = 2500;

/// Nested dirs, empty files, a 100 MiB random file, 10,000 small files,
/// symlinks (one dangling), a hardlink pair, modes 0600/0755/0700, xattrs,
/// explicit nanosecond mtimes and (as root) a file owned by another user.
pub fn build_full_tree(root: &Path) -> FullTree {
    fs::create_dir_all(root).expect("create source root");
    let mut regular = 0usize;

    let big = root.join("big.bin");
    let big_len = 100 * MIB;
    let big_seed = 0xB16;
    write_random_file(&big, big_len, big_seed);
    regular += 1;

    let medium = root.join("medium.bin");
    write_random_file(&medium, 2 * MIB + 12345, 0x3ED);
    regular += 1;

    // Long zero runs (restore may write them sparse).
    let zeros = root.join("zeros.bin");
    File::create(&zeros)
        .expect("zeros")
        .set_len(3 * MIB)
        .expect("set_len");
    regular += 1;

    let empty = root.join("empty.txt");
    File::create(&empty).expect("empty file");
    regular += 1;

    let deep = root.join("nested/a/b/c");
    fs::create_dir_all(&deep).expect("nested dirs");
    fs::create_dir_all(root.join("nested/a/empty-dir")).expect("empty dir");
    File::create(deep.join("empty")).expect("deep empty file");
    fs::write(deep.join("deep.txt"), b"at the bottom\n").expect("deep file");
    fs::write(root.join("nested/a/top.txt"), b"top of a\n").expect("file");
    fs::write(root.join("nested/b.txt"), random_bytes(70_000, 0xB)).expect("file");
    regular += 4;

    for d in 0..SMALL_FILE_DIRS {
        let dir = root.join(format!("many/d{d}"));
        fs::create_dir_all(&dir).expect("many dir");
        for i in 0..SMALL_FILES_PER_DIR {
            let line = format!("file {d}/{i}: small content for dedup and restore\n");
            fs::write(dir.join(format!("f{i:05}.txt")), line.repeat(1 + i % 7))
                .expect("small file");
            regular += 1;
        }
    }

    let links = root.join("links");
    fs::create_dir(&links).expect("links dir");
    std::os::unix::fs::symlink("../medium.bin", links.join("to-medium")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", links.join("dangling")).expect("dangling symlink");
    std::os::unix::fs::symlink("/nonexistent/absolute/target", links.join("absolute"))
        .expect("symlink");
    std::os::unix::fs::symlink("../nested", links.join("to-dir")).expect("symlink");
    set_mtime_ns(&links.join("dangling"), 1_500_000_000, 123_456_789);

    let hard = root.join("hard");
    fs::create_dir(&hard).expect("hard dir");
    fs::write(hard.join("one"), random_bytes(10_000, 0x1)).expect("hardlink source");
    fs::hard_link(hard.join("one"), hard.join("two")).expect("hardlink");
    fs::write(hard.join("separate"), random_bytes(10_000, 0x1)).expect("same content, no link");
    regular += 3;

    let modes = root.join("modes");
    fs::create_dir(&modes).expect("modes dir");
    fs::write(modes.join("private"), b"0600\n").expect("file");
    set_mode(&modes.join("private"), 0o600);
    fs::write(modes.join("exec.sh"), b"#!/bin/sh\necho 0755\n").expect("file");
    set_mode(&modes.join("exec.sh"), 0o755);
    fs::create_dir(modes.join("secret-dir")).expect("dir");
    fs::write(modes.join("secret-dir/inside"), b"in 0700\n").expect("file");
    set_mode(&modes.join("secret-dir"), 0o700);
    regular += 3;

    let xa = root.join("xattrs.txt");
    fs::write(&xa, b"has extended attributes\n").expect("file");
    xattr::set(&xa, "user.cairn.comment", b"hello xattr")
        .expect("set xattr (user.* must work on this filesystem)");
    xattr::set(&xa, "user.cairn.binary", &[0u8, 1, 2, 255, 0]).expect("set xattr");
    xattr::set(root.join("nested"), "user.cairn.dir", b"on a directory").expect("set dir xattr");
    regular += 1;

    if running_as_root() {
        let owned = root.join("owned-by-1234");
        fs::write(&owned, b"chowned\n").expect("file");
        std::os::unix::fs::chown(&owned, Some(1234), Some(5678)).expect("chown");
        regular += 1;
    }

    // Explicit nanosecond mtimes, directories last (creating entries bumps them).
    set_mtime_ns(&medium, 1_234_567_890, 987_654_321);
    set_mtime_ns(&empty, 1_000_000_000, 1);
    set_mtime_ns(&deep.join("deep.txt"), 1_600_000_000, 999_999_999);
    set_mtime_ns(&deep, 1_600_000_001, 500);
    set_mtime_ns(&root.join("nested/a"), 1_600_000_002, 42);
    set_mtime_ns(&modes.join("secret-dir"), 1_400_000_000, 700);

    FullTree {
        root: root.to_path_buf(),
        big,
        big_len,
        big_seed,
        medium,
        empty,
        include_dir: root.join("nested/a"),
        regular_files: regular,
    }
}

/// A read-only ~190 MiB tree of incompressible files shared by the tests that
/// need a backup to run for a while (crash, lock). Deterministic, so it is
/// generated once per target directory and reused.
pub fn big_source() -> &'static Path {
    static BIG: OnceLock<PathBuf> = OnceLock::new();
    BIG.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let done = base.join("big-source-v1");
        // `.complete` is written last, so a tree with it is whole.
        if done.join(".complete").exists() {
            return done.canonicalize().expect("canonicalize");
        }
        let _ = fs::remove_dir_all(&done);
        let partial = base.join(format!("big-source-v1.partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(partial.join("sub")).expect("create big source");
        for i in 0..8u64 {
            write_random_file(
                &partial.join(format!("part-{i:02}.bin")),
                20 * MIB,
                0x5000 + i,
            );
        }
        for i in 0..4u64 {
            write_random_file(
                &partial.join(format!("sub/piece-{i:02}.bin")),
                7 * MIB + i * 4099,
                0x6000 + i,
            );
        }
        for i in 0..50u64 {
            fs::write(
                partial.join(format!("sub/small-{i:02}.txt")),
                format!("small file {i}\n").repeat(i as usize + 1),
            )
            .expect("small file");
        }
        fs::write(partial.join(".complete"), b"").expect("marker");
        match fs::rename(&partial, &done) {
            Ok(()) => {}
            // Another test process won the race: use its copy.
            Err(_) => {
                let _ = fs::remove_dir_all(&partial);
            }
        }
        done.canonicalize().expect("canonicalize")
    })
}

// ---------------------------------------------------------------------------
// Tree comparison
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Everything the restore promises to reproduce for one entry.
#[derive(Debug, Clone)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub ino: (u64, u64),
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

pub fn meta(path: &Path) -> Meta {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    let mut xattrs = BTreeMap::new();
    if kind != Kind::Symlink {
        for name in
            xattr::list(path).unwrap_or_else(|e| panic!("list xattrs of {}: {e}", path.display()))
        {
            if name.to_string_lossy().starts_with("user.") {
                let value = xattr::get(path, &name)
                    .expect("get xattr")
                    .unwrap_or_default();
                xattrs.insert(name, value);
            }
        }
    }
    Meta {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        size: md.len(),
        ino: (md.dev(), md.ino()),
        target: if kind == Kind::Symlink {
            Some(fs::read_link(path).expect("readlink"))
        } else {
            None
        },
        xattrs,
    }
}

/// Every entry under `root` (relative paths; "" is the root itself).
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m = meta(&full);
        if m.kind == Kind::Dir {
            for entry in
                fs::read_dir(&full).unwrap_or_else(|e| panic!("read dir {}: {e}", full.display()))
            {
                stack.push(rel.join(entry.expect("dir entry").file_name()));
            }
        }
        out.insert(rel, m);
    }
    out
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (File::open(a), File::open(b)) else {
        return false;
    };
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Options of [`compare_trees`].
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub modes: bool,
    pub mtimes: bool,
    pub owners: bool,
    pub xattrs: bool,
    pub hardlinks: bool,
}

impl Compare {
    pub const ALL: Self = Self {
        modes: true,
        mtimes: true,
        owners: true,
        xattrs: true,
        hardlinks: true,
    };
    /// Contents, kinds and symlink targets only (what survives git).
    pub const CONTENT: Self = Self {
        modes: false,
        mtimes: false,
        owners: false,
        xattrs: false,
        hardlinks: false,
    };
}

/// Lists every difference between two trees (empty when equal).
pub fn compare_trees(expected: &Path, actual: &Path, what: Compare) -> Vec<String> {
    let want = walk(expected);
    let got = walk(actual);
    let mut diffs = Vec::new();
    for p in want.keys().filter(|p| !got.contains_key(*p)) {
        diffs.push(format!("missing in restore: {}", p.display()));
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("not in source: {}", p.display()));
    }
    for (rel, w) in &want {
        let Some(g) = got.get(rel) else { continue };
        let name = rel.display();
        if w.kind != g.kind {
            diffs.push(format!("{name}: kind {:?} != {:?}", g.kind, w.kind));
            continue;
        }
        if what.modes && w.kind != Kind::Symlink && w.mode != g.mode {
            diffs.push(format!("{name}: mode {:o} != {:o}", g.mode, w.mode));
        }
        if what.mtimes && w.mtime_ns != g.mtime_ns {
            diffs.push(format!(
                "{name}: mtime {} ns != {} ns",
                g.mtime_ns, w.mtime_ns
            ));
        }
        if what.owners && (w.uid, w.gid) != (g.uid, g.gid) {
            diffs.push(format!(
                "{name}: owner {}:{} != {}:{}",
                g.uid, g.gid, w.uid, w.gid
            ));
        }
        if what.xattrs && w.xattrs != g.xattrs {
            diffs.push(format!("{name}: xattrs {:?} != {:?}", g.xattrs, w.xattrs));
        }
        if w.target != g.target {
            diffs.push(format!(
                "{name}: symlink target {:?} != {:?}",
                g.target, w.target
            ));
        }
        if w.kind == Kind::File {
            if w.size != g.size {
                diffs.push(format!("{name}: size {} != {}", g.size, w.size));
            } else if !files_equal(&expected.join(rel), &actual.join(rel)) {
                diffs.push(format!("{name}: content differs"));
            }
        }
    }
    if what.hardlinks {
        let partition = |tree: &BTreeMap<PathBuf, Meta>| -> BTreeSet<BTreeSet<PathBuf>> {
            let mut by_inode: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
            for (p, m) in tree.iter().filter(|(_, m)| m.kind == Kind::File) {
                by_inode.entry(m.ino).or_default().insert(p.clone());
            }
            by_inode.into_values().filter(|g| g.len() > 1).collect()
        };
        let (pw, pg) = (partition(&want), partition(&got));
        if pw != pg {
            diffs.push(format!(
                "hardlink groups differ: restored {pg:?}, source {pw:?}"
            ));
        }
    }
    diffs
}

pub fn assert_trees_equal(expected: &Path, actual: &Path, what: Compare) {
    let diffs = compare_trees(expected, actual, what);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n{}",
        diffs.len(),
        expected.display(),
        actual.display(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Absolute paths of every entry under `root` (root included), as `ls` prints them.
pub fn absolute_entries(root: &Path) -> BTreeSet<String> {
    walk(root)
        .into_keys()
        .map(|rel| {
            if rel.as_os_str().is_empty() {
                s(root).to_string()
            } else {
                s(&root.join(rel)).to_string()
            }
        })
        .collect()
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bumps a file's mtime by one second (so `backup` must read it again).
pub fn bump_mtime(path: &Path) {
    let m = meta(path);
    let secs = i64::try_from(m.mtime_ns.div_euclid(1_000_000_000)).expect("mtime");
    let nanos = u32::try_from(m.mtime_ns.rem_euclid(1_000_000_000)).expect("nanos");
    set_mtime_ns(path, secs + 1, nanos);
}
