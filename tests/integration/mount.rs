//! `cairn mount`: snapshots as a read-only FUSE file system, compared with
//! their sources through the kernel.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// True if this machine can mount FUSE file systems (root and /dev/fuse).
/// Without them a plain `cargo test` skips the test, saying so;
/// `scripts/test-all.sh` fails it.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && running_as_root() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
        "{test}: FUSE mounts need root and /dev/fuse"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs root and /dev/fuse; scripts/test-all.sh runs it as root"
    );
    false
}

/// True if `dir` is a mount point now.
fn is_mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = s(dir);
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(dir))
}

/// A running `cairn mount`; unmounted with SIGTERM when stopped or dropped.
pub struct Mounted {
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Mounted {
    /// Mounts `cairn`'s repository at `dir` (created) and waits until the
    /// file system answers.
    pub fn start(cairn: &Cairn, dir: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(dir).expect("mount point");
        let log_dir = dir.with_extension("log");
        let mut args = vec!["mount", s(dir)];
        args.extend_from_slice(extra);
        let mut child = cairn.spawn(args, &log_dir);
        poll_until("the mount to answer", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = fs::read_to_string(log_dir.join("stderr")).unwrap_or_default();
                panic!("cairn mount exited with {status} before mounting: {stderr}");
            }
            is_mounted(dir) && dir.join(".stats").exists()
        });
        Mounted {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    /// The mount's counters (`.stats`).
    pub fn stats(&self) -> Value {
        let text = fs::read_to_string(self.dir.join(".stats")).expect("read .stats");
        serde_json::from_str(&text).expect(".stats is JSON")
    }

    pub fn stat(&self, key: &str) -> u64 {
        self.stats()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in .stats"))
    }

    /// The directory of snapshot `id` (full or short).
    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(&id[..8])
    }

    /// Sends SIGTERM and waits; the mount must end cleanly and be gone.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.terminate();
        assert!(
            !is_mounted(&self.dir),
            "{} is still mounted",
            self.dir.display()
        );
        assert_eq!(
            fs::read_dir(&self.dir).expect("mount point").count(),
            0,
            "the mount point is empty again"
        );
        status
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        match wait_with_deadline(&mut child, Duration::from_secs(30)) {
            Some(status) => status,
            None => {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
                let _ = child.kill();
                panic!("cairn mount did not end within 30 s of SIGTERM");
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The path of `src` inside a mounted snapshot directory.
fn inside(snapshot_dir: &Path, src: &Path) -> PathBuf {
    snapshot_dir.join(src.strip_prefix("/").unwrap())
}

#[test]
fn a_mounted_snapshot_shows_every_file_kind_as_backed_up() {
    if !fuse_available() {
        return;
    }
    let (_t, dir, cairn) = new_repo();
    let src = dir.join("src");
    build_full_tree(&src);
    let id = cairn
        .backup(&[&src], &["--tag", "nightly", "--tag", "full"])
        .snapshot_id();
    let host = cairn.snapshots()[0]["host"].as_str().unwrap().to_string();

    let mount = Mounted::start(&cairn, &dir.join("mnt"), &[]);
    let snap = mount.snapshot(&id);
    // Contents, kinds, modes, times, owners, xattrs, symlink targets and
    // hard links, through the kernel.
    assert_trees_equal(&src, &inside(&snap, &src), Compare::ALL);
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(inside(&snap, &src))
        .output()
        .expect("run diff");
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // The other ways in lead to the same snapshot.
    assert_eq!(
        fs::read_link(mount.dir.join("latest")).unwrap(),
        PathBuf::from(format!("snapshots/{}", &id[..8]))
    );
    let by_host: Vec<_> = fs::read_dir(mount.dir.join("hosts").join(&host))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(by_host.len(), 1, "{by_host:?}");
    for tag in ["nightly", "full"] {
        let by_tag: Vec<_> = fs::read_dir(mount.dir.join("tags").join(tag))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(by_tag, vec![by_host[0].file_name().unwrap().to_owned()]);
    }
    assert!(files_equal(
        &inside(&by_host[0], &src).join("big.bin"),
        &src.join("big.bin")
    ));

    // Read-only: nothing can be written.
    let err = File::create(inside(&snap, &src).join("new-file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    assert!(mount.stop().success());
}

/// A file of `len` bytes made of one random block of `block` bytes
/// repeated: many chunks to locate, little data to store.
fn write_repeating_file(path: &Path, len: u64, block: u64, seed: u64) {
    use std::io::Write;
    let data = random_bytes(block as usize, seed);
    let mut f = std::io::BufWriter::new(File::create(path).unwrap());
    let mut left = len;
    while left > 0 {
        let n = left.min(block);
        f.write_all(&data[..n as usize]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

#[test]
fn reads_fetch_only_the_chunks_they_cover() {
    if !fuse_available() {
        return;
    }
    let (_t, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_repeating_file(&src.join("huge.bin"), 1024 * MIB, 48 * MIB, 0x1618);
    write_random_file(&src.join("random.bin"), 256 * MIB, 0x256);
    let id = cairn.backup(&[&src], &[]).snapshot_id();

    let mount = Mounted::start(&cairn, &dir.join("mnt"), &["--cache-size", "64MiB"]);
    let snap = inside(&mount.snapshot(&id), &src);
    assert_eq!(mount.stat("chunks_fetched"), 0);

    // The first 4 KiB of a 1 GiB file (about a thousand chunks): at most
    // two chunks are read.
    let mut head = vec![0u8; 4096];
    File::open(snap.join("huge.bin"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, random_bytes(48 * MIB as usize, 0x1618)[..4096]);
    let fetched = mount.stat("chunks_fetched");
    assert!(
        (1..=2).contains(&fetched),
        "reading 4 KiB fetched {fetched} chunks: {}",
        mount.stats()
    );

    // 1,000 reads at random offsets of a 256 MiB file, with a cache much
    // smaller than the file, each compared with the source.
    let want = File::open(src.join("random.bin")).unwrap();
    let got = File::open(snap.join("random.bin")).unwrap();
    let mut rng = XorShift::new(0xFEED);
    for i in 0..1000 {
        let len = 1 + (rng.next_u64() % (300 * 1024)) as usize;
        let offset = rng.next_u64() % (256 * MIB - len as u64 + 1);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        want.read_exact_at(&mut a, offset).unwrap();
        got.read_exact_at(&mut b, offset).unwrap();
        assert!(a == b, "read {i}: {len} bytes at {offset} differ");
    }
    let stats = mount.stats();
    assert!(
        stats["cache_bytes"].as_u64().unwrap() <= 64 * MIB + 8 * MIB,
        "the cache stays within its budget (plus one chunk): {stats}"
    );
    // A sequential read of the whole file streams it, with read-ahead.
    assert!(files_equal(
        &src.join("random.bin"),
        &snap.join("random.bin")
    ));
    assert!(mount.stat("chunks_read_ahead") > 0, "{}", mount.stats());
    drop((want, got));
    assert!(mount.stop().success());
}

#[test]
fn a_mount_keeps_no_lock_and_lets_backups_run() {
    if !fuse_available() {
        return;
    }
    let (_t, dir, cairn) = new_repo();
    let src = dir.join("src");
    write_files(&src, &[("a.txt", "first"), ("b/c.txt", "second")]);
    let first = cairn.backup(&[&src], &[]).snapshot_id();
    let mount = Mounted::start(&cairn, &dir.join("mnt"), &[]);
    // The embedded index is not held: a backup runs beside the mount.
    write_files(&src, &[("d.txt", "third")]);
    let second = cairn.backup(&[&src], &[]).snapshot_id();
    assert_ne!(first, second);
    assert_eq!(
        fs::read_to_string(inside(&mount.snapshot(&first), &src).join("b/c.txt")).unwrap(),
        "second"
    );
    // The list of snapshots is the one read at mount time.
    assert!(!mount.snapshot(&second).exists());
    // A file still open does not keep the mount up: it is detached.
    let open = File::open(inside(&mount.snapshot(&first), &src).join("a.txt")).unwrap();
    assert!(mount.stop().success());
    drop(open);
}

#[test]
fn a_mount_reads_pack_trailers_when_the_index_cluster_is_down() {
    if !fuse_available() {
        return;
    }
    let (_t, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("data.bin"), 5 * MIB, 0xD0);
    write_files(&src, &[("notes/readme", "read me")]);
    let id = cairn.backup(&[&src], &[]).snapshot_id();
    // Every index node unreachable.
    let offline = cairn.with_env("CAIRN_INDEX", "http://127.0.0.1:1");
    let mount = Mounted::start(&offline, &dir.join("mnt"), &[]);
    assert_trees_equal(&src, &inside(&mount.snapshot(&id), &src), Compare::ALL);
    assert!(mount.stop().success());
}

#[test]
fn mount_mistakes_are_named_in_one_line() {
    let (_t, dir, cairn) = new_repo();
    // Not a directory, missing, not empty.
    fs::write(dir.join("file"), "x").unwrap();
    cairn
        .run(["mount", s(&dir.join("file"))])
        .expect_clean_error(1, "is not a directory");
    cairn
        .run(["mount", s(&dir.join("nowhere"))])
        .expect_clean_error(1, "no such directory");
    fs::create_dir_all(dir.join("full/x")).unwrap();
    cairn
        .run(["mount", s(&dir.join("full"))])
        .expect_clean_error(1, "is not empty");
    // The repository must open first.
    fs::create_dir_all(dir.join("mnt")).unwrap();
    Cairn::new(dir.join("missing-repo"))
        .run(["mount", s(&dir.join("mnt"))])
        .expect_code(10);
    cairn
        .with_password("wrong")
        .run(["mount", s(&dir.join("mnt"))])
        .expect_clean_error(11, "password");
    assert!(!is_mounted(&dir.join("mnt")));
}

#[test]
fn a_chunk_that_prune_moves_is_read_at_its_new_place() {
    if !fuse_available() {
        return;
    }
    // Two snapshots sharing a file that lives in the first one's pack.
    let two = crate::prune::TwoSnapshots::new();
    let (dir, cairn, b) = (&two.dir, &two.cairn, &two.b);
    let mount = Mounted::start(cairn, &dir.join("mnt"), &[]);
    // Opened (its chunks located, in A's pack) before prune runs.
    let mut shared =
        File::open(inside(&mount.snapshot(&two.snap_b), b).join("shared.bin")).unwrap();
    two.forget_a();
    let t = std::time::SystemTime::now();
    poll_until("the next second", Duration::from_secs(3), || {
        std::time::SystemTime::now()
            .duration_since(t)
            .is_ok_and(|d| d.as_secs() >= 1)
    });
    let pruned = cairn.run(["prune", "--json", "--grace", "0s", "--clock-skew", "0s"]);
    pruned.expect_success();
    let report = pruned.json_last_line();
    assert!(report["packs_repacked"].as_u64().unwrap() >= 1, "{report}");
    // The old pack is gone; the read finds the chunks where prune put them.
    let mut got = Vec::new();
    shared.read_to_end(&mut got).unwrap();
    assert!(
        got == fs::read(b.join("shared.bin")).unwrap(),
        "shared.bin differs"
    );
    drop(shared);
    assert!(mount.stop().success());
}
