//! Expected failures end with one clear line and the documented exit code.

use std::fs;

use crate::common::*;

#[test]
fn wrong_password_is_one_clear_error() {
    let (_tmp, dir, cairn) = new_repo();

    let out = cairn.with_password("not the password").run(["snapshots"]);
    out.expect_clean_error(11, "wrong password");
    assert!(
        out.stderr.contains(s(&cairn.repo)),
        "the error names the repository\n{}",
        out.describe()
    );

    // Same through --password-file.
    let pw_file = dir.join("pw");
    fs::write(&pw_file, "also wrong\n").unwrap();
    let out = cairn
        .without_password()
        .run(["--password-file", s(&pw_file), "snapshots"]);
    out.expect_clean_error(11, "wrong password");

    // And the right one through --password-file works.
    fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    cairn
        .without_password()
        .run(["--password-file", s(&pw_file), "snapshots"])
        .expect_success();
}

#[test]
fn missing_repository_is_one_clear_error() {
    let (_tmp, dir) = tempdir();
    let nowhere = dir.join("no-repo-here");
    let cairn = Cairn::new(&nowhere);
    for args in [vec!["snapshots"], vec!["backup", s(&dir)], vec!["check"]] {
        let out = cairn.run(&args);
        out.expect_clean_error(10, "no repository at");
        assert!(
            out.stderr.contains(s(&nowhere)),
            "the error names the path\n{}",
            out.describe()
        );
    }
    // --repo overrides CAIRN_REPO.
    let out = Cairn::new(dir.join("elsewhere")).run(["--repo", s(&nowhere), "snapshots"]);
    out.expect_clean_error(10, "no repository at");
    assert!(
        out.stderr.contains(s(&nowhere)),
        "--repo was not used\n{}",
        out.describe()
    );
    assert!(
        !nowhere.exists(),
        "a failed command created {}",
        nowhere.display()
    );
}

#[test]
fn init_over_existing_repository_is_refused() {
    let (_tmp, dir) = tempdir();
    let cairn = Cairn::new(dir.join("repo"));
    let out = cairn.init();
    assert!(
        out.stdout_text().contains("created repository")
            && out.stdout_text().contains(s(&cairn.repo)),
        "init output\n{}",
        out.describe()
    );
    let config = fs::read(cairn.repo.join("config")).unwrap();
    let keys = key_files(&cairn.repo);
    assert_eq!(keys.len(), 1);

    let out = cairn.with_password("another").run(["init"]);
    out.expect_clean_error(1, "already exists");
    assert_eq!(
        fs::read(cairn.repo.join("config")).unwrap(),
        config,
        "config was rewritten"
    );
    assert_eq!(key_files(&cairn.repo), keys, "keys changed");
    cairn.run(["snapshots"]).expect_success();
}

#[test]
fn usage_error_exits_2() {
    let (_tmp, dir) = tempdir();
    let out = Cairn::new(dir.join("repo")).run(["no-such-command"]);
    out.expect_code(2);
}

/// An unreadable source file: warning, exit 3, snapshot written without it.
///
/// Root reads a chmod 000 file anyway, so as root the whole test runs cairn
/// as `nobody` (uid 65534) on world-writable temporary directories.
#[test]
fn unreadable_source_file_warns_and_exits_3() {
    let (_tmp, dir) = tempdir();
    let mut cairn = Cairn::new(dir.join("repo"));
    if running_as_root() {
        set_mode(&dir, 0o777);
        cairn.user = Some((65534, 65534));
        cairn = cairn.with_env("HOME", s(&dir));
    }
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("ok-1.txt"), b"readable one\n").unwrap();
    fs::write(src.join("sub/ok-2.txt"), b"readable two\n").unwrap();
    write_random_file(&src.join("sub/ok-3.bin"), 700_000, 3);
    let secret = src.join("sub/secret.txt");
    fs::write(&secret, b"nobody may read this\n").unwrap();
    set_mode(&secret, 0o000);

    cairn.init();
    if running_as_root() {
        assert_eq!(
            meta(&cairn.repo.join("config")).uid,
            65534,
            "cairn did not run as nobody"
        );
    }
    let out = cairn.backup_raw(&[&src], &[]);
    out.expect_code(3);
    let warning = format!("warning: cannot read {}", s(&secret));
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&warning)),
        "no line starting with {warning:?}\n{}",
        out.describe()
    );
    let stats = Stats(out.json_last_line());
    assert_eq!(stats.u("errors"), 1, "{:?}", stats);

    let snaps = cairn.snapshots();
    assert_eq!(snaps.len(), 1, "the snapshot was not written: {snaps:?}");
    assert_eq!(snaps[0]["id"].as_str(), Some(stats.snapshot_id().as_str()));
    let listed = cairn.ls("latest");
    assert!(
        !listed.contains(s(&secret)),
        "the unreadable file is in the snapshot"
    );
    assert!(
        listed.contains(s(&src.join("sub/ok-2.txt"))),
        "ls: {listed:?}"
    );

    let target = dir.join("target");
    cairn.restore("latest", &target);
    let back = restored(&target, &src);
    for f in ["ok-1.txt", "sub/ok-2.txt", "sub/ok-3.bin"] {
        assert!(
            files_equal(&src.join(f), &back.join(f)),
            "{f} not restored exactly"
        );
    }
    assert!(
        !back.join("sub/secret.txt").exists(),
        "the unreadable file was restored"
    );
}

/// SIGINT stops a backup cleanly: no snapshot, exit code 130, and the next
/// run reuses what the interrupted one stored.
#[test]
fn an_interrupted_backup_exits_130_and_writes_no_snapshot() {
    let src = big_source();
    let (_tmp, dir, cairn) = new_repo();
    let log = dir.join("interrupted");
    let mut child = cairn.spawn(["backup", s(src)], &log);
    poll_until(
        "the backup stores its first pack",
        std::time::Duration::from_secs(300),
        || !pack_files(&cairn.repo).is_empty() || child.try_wait().unwrap().is_some(),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup finished before it could be interrupted; make big_source() bigger"
    );
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_with_deadline(&mut child, std::time::Duration::from_secs(120))
        .expect("the interrupted backup did not stop");
    let stderr = fs::read_to_string(log.join("stderr")).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("error: backup interrupted; no snapshot was written"),
        "{stderr}"
    );
    assert!(
        cairn.snapshots().is_empty(),
        "an interrupted backup left a snapshot"
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`, or
    /// says in one line why it cannot (not root, no `mount` permission).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if !running_as_root() {
            eprintln!("skipped {test}: mounting a small file system needs root");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cairn-test"])
            .arg(dir)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("skipped {test}: cannot mount a tmpfs here ({status:?})");
            return None;
        }
        Some(Self(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount of {:?} failed", self.0);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The repository's file system fills up during a backup: one clear error
/// naming the cause, no snapshot, no partial object left behind, the
/// earlier snapshot intact, and once there is room the next backup works.
#[test]
fn a_full_disk_fails_the_backup_with_one_clear_error_and_loses_nothing() {
    let (_tmp, dir) = tempdir();
    let Some(disk) = SmallDisk::mount(&dir.join("disk"), "24m") else {
        return;
    };
    let cairn = Cairn::new(disk.0.join("repo"));
    cairn.init();
    let src = dir.join("src");
    write_files(
        &src,
        &[("a.txt", "first file\n"), ("sub/b.txt", "second\n")],
    );
    let first = cairn.backup(&[&src], &[]).snapshot_id();

    // 48 MiB of incompressible data cannot fit in 24 MiB.
    write_random_file(&src.join("big.bin"), 48 << 20, 5);
    let out = cairn.backup_raw(&[&src], &[]);
    out.expect_clean_error(1, "No space left on device");
    assert_eq!(
        out.stderr.matches("No space left on device").count(),
        1,
        "the cause is said once\n{}",
        out.describe()
    );
    let snaps = cairn.snapshots();
    assert_eq!(snaps.len(), 1, "a snapshot was written: {snaps:?}");
    assert_eq!(snaps[0]["id"].as_str(), Some(first.as_str()));
    let temporary: Vec<String> = walk(&cairn.repo.join("packs"))
        .into_keys()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(temporary.is_empty(), "partial packs left: {temporary:?}");

    // Nothing stored before is lost.
    let target = dir.join("target");
    cairn.restore(&first, &target);
    assert!(files_equal(
        &src.join("sub/b.txt"),
        &restored(&target, &src).join("sub/b.txt")
    ));

    // With room again, the same backup succeeds and the repository checks
    // clean. (Room for RocksDB too: where it can, it reserves 1.1 times its
    // write buffer, 70 MiB, for each new log of the embedded index.)
    disk.resize("256m");
    let second = cairn.backup(&[&src], &[]).snapshot_id();
    cairn.check_clean();
    let target = dir.join("target-2");
    cairn.restore(&second, &target);
    assert!(files_equal(
        &src.join("big.bin"),
        &restored(&target, &src).join("big.bin")
    ));
}
