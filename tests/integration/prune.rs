//! `cairn forget` + `cairn prune`: space comes back, every remaining
//! snapshot restores byte-exactly, and prune is safe beside running backups
//! (the GC invariant of the `cairn_index` crate docs).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cluster::ClusterFixture;
use crate::common::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Index times are whole seconds: wait until the clock has left the second
/// of the last backup, so its chunks count as seen "before now".
fn next_second() {
    let t = unix_now();
    poll_until("the next second", Duration::from_secs(3), || unix_now() > t);
}

fn pack_bytes(repo: &Path) -> u64 {
    pack_files(repo).iter().map(|p| p.size).sum()
}

/// `prune --json` with the given extra flags; returns the report.
/// The most a prune frees of what only snapshot A used: its 3 MiB file,
/// padded (3.2 %), and 16 KiB of trees and pack tables.
const A_OWN_BYTES_AT_MOST: u64 = 3 * MIB + 3 * MIB * 32 / 1000 + 16 * 1024;

fn prune(cairn: &Cairn, extra: &[&str]) -> Value {
    let mut args = vec!["prune", "--json"];
    args.extend_from_slice(extra);
    let out = cairn.run(&args);
    out.expect_success();
    out.json_last_line()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("prune report has no {key}: {v}"))
}

const NOW: &[&str] = &["--grace", "0s", "--clock-skew", "0s"];

fn restore_equals(cairn: &Cairn, snapshot: &str, source: &Path, expected: &Path, scratch: &Path) {
    let target = scratch.join(format!("restore-{}", &snapshot[..8.min(snapshot.len())]));
    let _ = fs::remove_dir_all(&target);
    cairn.restore(snapshot, &target);
    assert_trees_equal(expected, &restored(&target, source), Compare::CONTENT);
    fs::remove_dir_all(&target).expect("clean restore");
}

/// Two snapshots of different paths sharing one file; forgetting the first
/// frees exactly its own data.
pub struct TwoSnapshots {
    _dir: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub cairn: Cairn,
    pub b: PathBuf,
    pub snap_a: String,
    pub snap_b: String,
}

impl TwoSnapshots {
    pub fn new() -> Self {
        let (tmp, dir, cairn) = new_repo();
        Self::on(cairn, dir, Some(tmp))
    }

    /// In the initialized repository `dir/repo`, through `cairn`.
    fn on(cairn: Cairn, dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        write_random_file(&a.join("only-a.bin"), 3 * MIB, 1);
        write_random_file(&a.join("shared.bin"), 2 * MIB, 2);
        write_random_file(&b.join("only-b.bin"), 2 * MIB, 3);
        fs::copy(a.join("shared.bin"), b.join("shared.bin")).unwrap();
        let snap_a = cairn.backup(&[&a], &[]).snapshot_id();
        let snap_b = cairn.backup(&[&b], &[]).snapshot_id();
        Self {
            _dir: tmp,
            dir,
            cairn,
            b,
            snap_a,
            snap_b,
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    pub fn forget_a(&self) {
        self.cairn.run(["forget", &self.snap_a]).expect_success();
    }

    fn b_is_whole(&self) {
        restore_equals(&self.cairn, &self.snap_b, &self.b, &self.b, &self.dir);
        self.cairn.check_clean();
    }
}

#[test]
fn prune_frees_the_data_only_forgotten_snapshots_used() {
    frees_the_data_only_forgotten_snapshots_used(&TwoSnapshots::new());
}

#[test]
fn prune_frees_the_data_only_forgotten_snapshots_used_with_the_cluster_index() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let t = TwoSnapshots::on(f.cairn.clone(), f.dir.clone(), None);
    frees_the_data_only_forgotten_snapshots_used(&t);
}

fn frees_the_data_only_forgotten_snapshots_used(t: &TwoSnapshots) {
    let before = pack_bytes(&t.repo());
    t.forget_a();
    next_second();
    let report = prune(&t.cairn, NOW);
    let after = pack_bytes(&t.repo());
    let shrink = before - after;
    eprintln!("repository packs: {before} bytes before, {after} after; report {report}");
    // The report accounts for the change exactly.
    assert_eq!(
        shrink,
        n(&report, "bytes_freed") - n(&report, "bytes_repacked")
    );
    // What only A used: its 3 MiB file, sealed (40 bytes per chunk) and
    // padded (Padmé: under 3.2 % for chunks over 512 KiB), plus its small
    // directory trees and the tables of the packs that went away.
    assert!(
        (3 * MIB..=A_OWN_BYTES_AT_MOST).contains(&shrink),
        "freed {shrink} bytes; expected 3 MiB of A's own data and a little metadata"
    );
    // The shared file lived in A's pack: it was repacked, not lost.
    assert!(n(&report, "packs_repacked") >= 1, "{report}");
    assert_eq!(n(&report, "packs_waiting"), 0, "{report}");
    assert_eq!(n(&report, "snapshots"), 1);
    t.b_is_whole();
    // A second prune finds nothing more to do.
    let again = prune(&t.cairn, NOW);
    assert_eq!(n(&again, "bytes_freed"), 0, "{again}");
    assert_eq!(n(&again, "chunks_condemned"), 0, "{again}");
    assert_eq!(pack_bytes(&t.repo()), after);
}

#[test]
fn dry_run_changes_nothing_and_forget_prune_does_both() {
    let t = TwoSnapshots::new();
    let before = pack_bytes(&t.repo());
    next_second();
    // Nothing is forgotten yet: nothing to free.
    let report = prune(&t.cairn, NOW);
    assert_eq!(n(&report, "bytes_freed"), 0, "{report}");
    assert_eq!(pack_bytes(&t.repo()), before);

    // Group by host only: both snapshots are one group, the last one stays.
    let forget_and_prune = |extra: &[&str]| {
        let mut args = vec![
            "forget",
            "--keep-last",
            "1",
            "--group-by",
            "host",
            "--prune",
        ];
        args.extend_from_slice(NOW);
        args.extend_from_slice(extra);
        let out = t.cairn.run(args);
        out.expect_success();
        out
    };
    let out = forget_and_prune(&["--dry-run"]);
    let text = out.stdout_text();
    assert!(text.contains("last snapshot"), "{text}");
    assert!(text.contains("chunks condemned: would be "), "{text}");
    assert_eq!(pack_bytes(&t.repo()), before);
    assert_eq!(t.cairn.snapshots().len(), 2);

    let report = forget_and_prune(&["--json"]).json_last_line();
    assert!(n(&report, "bytes_freed") > 3 * MIB, "{report}");
    let snaps = t.cairn.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"].as_str(), Some(t.snap_b.as_str()));
    t.b_is_whole();
}

#[test]
fn a_condemned_chunk_is_uploaded_again_not_reused() {
    let (_dir, dir, cairn) = new_repo();
    condemned_chunks_are_uploaded_again(&cairn, &dir);
}

#[test]
fn a_condemned_chunk_is_uploaded_again_not_reused_with_the_cluster_index() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    condemned_chunks_are_uploaded_again(&f.cairn, &f.dir);
}

fn condemned_chunks_are_uploaded_again(cairn: &Cairn, dir: &Path) {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("data.bin"), 3 * MIB, 7);
    let first = cairn.backup(&[&src], &[]);
    cairn.run(["forget", &first.snapshot_id()]).expect_success();
    next_second();
    // The default grace period keeps the packs, but the chunks are condemned.
    let report = prune(cairn, &["--clock-skew", "0s"]);
    assert!(
        n(&report, "chunks_condemned") >= first.u("data_chunks_new"),
        "{report}"
    );
    assert_eq!(n(&report, "packs_deleted"), 0, "{report}");
    assert!(n(&report, "packs_waiting") >= 1, "{report}");

    // A backup that starts now stores the data again instead of reusing it.
    let second = cairn.backup(&[&src], &[]);
    assert_eq!(
        second.u("data_chunks_new"),
        first.u("data_chunks_new"),
        "{:?}",
        second
    );
    assert_eq!(second.u("chunks_reused"), 0, "{:?}", second);
    assert!(second.u("bytes_stored") >= 3 * MIB);

    // Deleting the old copies leaves the new snapshot whole.
    next_second();
    let report = prune(cairn, NOW);
    assert!(n(&report, "bytes_freed") >= 3 * MIB, "{report}");
    restore_equals(cairn, &second.snapshot_id(), &src, &src, dir);
    cairn.check_clean();
}

#[test]
fn a_forgotten_snapshot_is_freed_by_one_prune_after_the_grace_period() {
    let (_dir, dir, cairn) = new_repo();
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    write_random_file(&a.join("a.bin"), 3 * MIB, 21);
    write_random_file(&b.join("b.bin"), 2 * MIB, 22);
    let snap_a = cairn.backup(&[&a], &[]).snapshot_id();
    let snap_b = cairn.backup(&[&b], &[]).snapshot_id();
    let backed_up = unix_now();
    cairn.run(["forget", &snap_a]).expect_success();
    let grace = ["--grace", "4s", "--clock-skew", "0s"];
    next_second();
    // Within the grace period: condemned, but nothing is deleted.
    let early = prune(&cairn, &grace);
    if unix_now() < backed_up + 3 {
        assert_eq!(n(&early, "packs_deleted"), 0, "{early}");
        assert!(n(&early, "bytes_waiting") >= 3 * MIB, "{early}");
    }
    // No backup runs; once the grace period has passed, one prune frees it.
    poll_until("the grace period", Duration::from_secs(8), || {
        unix_now() > backed_up + 4
    });
    let before = pack_bytes(&dir.join("repo"));
    let report = prune(&cairn, &grace);
    assert_eq!(n(&report, "packs_waiting"), 0, "{report}");
    assert_eq!(n(&report, "packs_repacked"), 0, "{report}");
    let freed = before - pack_bytes(&dir.join("repo"));
    assert_eq!(freed, n(&report, "bytes_freed"));
    assert!((3 * MIB..=A_OWN_BYTES_AT_MOST).contains(&freed), "{report}");
    restore_equals(&cairn, &snap_b, &b, &b, &dir);
    cairn.check_clean();
}

#[test]
fn prune_killed_at_each_step_loses_nothing_and_a_rerun_frees_the_space() {
    for point in [
        "after-condemn",
        "after-repack-store",
        "after-relocate",
        "after-delete",
    ] {
        let t = TwoSnapshots::new();
        let before = pack_bytes(&t.repo());
        t.forget_a();
        next_second();
        let crashed = t.cairn.with_env("CAIRN_PRUNE_FAULT", point).run([
            "prune",
            "--grace",
            "0s",
            "--clock-skew",
            "0s",
        ]);
        assert_ne!(crashed.code, 0, "{point}: {}", crashed.describe());
        assert!(crashed.stderr.contains(point), "{}", crashed.describe());
        // Nothing a snapshot needs was lost.
        t.b_is_whole();
        // The rerun rolls forward; a copy the crash left unrecorded becomes
        // a duplicate, which is deleted like any dead pack.
        next_second();
        prune(&t.cairn, NOW);
        next_second();
        prune(&t.cairn, NOW);
        let left = prune(
            &t.cairn,
            &["--dry-run", "--grace", "0s", "--clock-skew", "0s"],
        );
        for key in [
            "chunks_condemned",
            "packs_repacked",
            "packs_deleted",
            "packs_waiting",
        ] {
            assert_eq!(n(&left, key), 0, "{point}: {key} left over: {left}");
        }
        let after = pack_bytes(&t.repo());
        assert!(
            (3 * MIB..=A_OWN_BYTES_AT_MOST).contains(&(before - after)),
            "{point}: freed {} bytes",
            before - after
        );
        t.b_is_whole();
    }
}

/// A backup that ran without a session (its index was unreachable) may
/// write its manifest after prune registered and condemned its packs: the
/// next prune revives what the manifest needs instead of deleting it.
#[test]
fn a_snapshot_written_without_a_session_is_revived_not_deleted() {
    let f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let src = f.dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("data.bin"), 2 * MIB, 31);
    // Every index node unreachable: no session, everything uploaded.
    let out = f
        .cairn
        .with_env("CAIRN_INDEX", "http://127.0.0.1:9")
        .backup_raw(&[&src], &[]);
    out.expect_success();
    let snap = Stats(out.json_last_line()).snapshot_id();
    // Stage a slow writer: the manifest appears only after two prunes.
    let manifest = f.dir.join("repo/manifests").join(&snap);
    let parked = f.dir.join("parked-manifest");
    fs::rename(&manifest, &parked).unwrap();
    let registered = prune(&f.cairn, &["--clock-skew", "0s"]);
    assert!(n(&registered, "packs_registered") >= 1, "{registered}");
    next_second();
    let condemned = prune(&f.cairn, &["--clock-skew", "0s"]);
    assert!(n(&condemned, "chunks_condemned") >= 2, "{condemned}");
    fs::rename(&parked, &manifest).unwrap();
    next_second();
    let report = prune(&f.cairn, NOW);
    assert!(n(&report, "chunks_revived") >= 2, "{report}");
    assert_eq!(n(&report, "packs_deleted"), 0, "{report}");
    restore_equals(&f.cairn, &snap, &src, &src, &f.dir);
    f.cairn.check_clean();
}

/// Real SIGKILLs at random moments of a prune with a lot to do.
#[test]
fn prune_killed_at_random_moments_loses_nothing() {
    let t = TwoSnapshots::new();
    let extra = t.dir.join("extra");
    fs::create_dir_all(&extra).unwrap();
    for i in 0..6u64 {
        write_random_file(&extra.join(format!("f{i}")), 2 * MIB, 100 + i);
        let snap = t.cairn.backup(&[&extra], &[]).snapshot_id();
        t.cairn.run(["forget", &snap]).expect_success();
    }
    t.forget_a();
    next_second();
    let mut rng = XorShift::new(77);
    for round in 0..6 {
        let log = t.dir.join(format!("kill-{round}"));
        let mut child = t
            .cairn
            .spawn(["prune", "--grace", "0s", "--clock-skew", "0s"], &log);
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 250));
        let _ = child.kill();
        let _ = child.wait();
        t.b_is_whole();
    }
    prune(&t.cairn, NOW);
    prune(&t.cairn, NOW);
    let left = prune(
        &t.cairn,
        &["--dry-run", "--grace", "0s", "--clock-skew", "0s"],
    );
    assert_eq!(
        n(&left, "packs_deleted") + n(&left, "packs_waiting"),
        0,
        "{left}"
    );
    assert_eq!(t.cairn.snapshots().len(), 1);
    t.b_is_whole();
}

/// A backup whose lease runs out while it is stopped is fenced: it writes
/// no snapshot, says why in one line, and nothing points at deleted data.
#[test]
fn prune_refuses_to_run_without_the_whole_cluster() {
    let f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let out = f
        .cairn
        .with_env("CAIRN_INDEX", "http://127.0.0.1:9")
        .run(["prune"]);
    out.expect_clean_error(1, "prune needs the index cluster");
}

#[test]
fn a_fenced_backup_fails_clearly_and_leaves_nothing_that_points_to_deleted_data() {
    let f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let cairn = f.cairn.with_env("CAIRN_SESSION_LEASE", "2");
    let small = f.dir.join("small");
    fs::create_dir_all(&small).unwrap();
    write_random_file(&small.join("one.bin"), MIB, 11);
    cairn.backup(&[&small], &[]);

    let log = f.dir.join("fenced-log");
    let repo = f.dir.join("repo");
    let packs_before = pack_files(&repo).len();
    let mut backup = spawn_backup_until_packs(
        &cairn,
        &["backup", s(big_source())],
        &log,
        &repo,
        packs_before + 2,
    );
    let pid = backup.id().to_string();
    signal(&pid, "-STOP");
    // Its lease runs out while it cannot renew it.
    poll_until("the session to expire", Duration::from_secs(20), || {
        let r = prune(&cairn, &["--dry-run", "--clock-skew", "0s"]);
        n(&r, "running_backups") == 0
    });
    next_second();
    let report = prune(&cairn, NOW);
    eprintln!("prune while the backup was stopped: {report}");
    signal(&pid, "-CONT");
    let (status, stderr) = wait_for_backup(&mut backup, &log, Duration::from_secs(120));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("backup session expired")
            && errors[0].contains("no snapshot was written"),
        "{stderr}"
    );
    assert_eq!(cairn.snapshots().len(), 1);
    // Its data, unreferenced, is collected; the first snapshot stays whole.
    next_second();
    prune(&cairn, NOW);
    cairn.check_clean();
    let snap = cairn.snapshots()[0]["id"].as_str().unwrap().to_string();
    restore_equals(&cairn, &snap, &small, &small, &f.dir);
}

/// A backup reuses the chunks of its parent's unchanged files without asking
/// the index. If that parent is forgotten while the backup runs, prune
/// condemns nothing until the backup ends, and the backup's snapshot is
/// whole.
#[test]
fn a_parent_forgotten_while_a_backup_runs_keeps_its_data_until_the_backup_ends() {
    let f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let src = f.dir.join("src");
    fs::create_dir_all(src.join("kept")).unwrap();
    for i in 0..6u64 {
        write_random_file(
            &src.join(format!("kept/{i}.bin")),
            40 * 1024 + i * 777,
            70 + i,
        );
    }
    let parent = f.cairn.backup(&[&src], &[]).snapshot_id();
    // New data, which keeps the second backup busy while it is stopped.
    fs::create_dir_all(src.join("new")).unwrap();
    for entry in fs::read_dir(big_source()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let to = src.join("new").join(entry.file_name());
            if fs::hard_link(entry.path(), &to).is_err() {
                fs::copy(entry.path(), &to).unwrap();
            }
        }
    }
    let expected = f.dir.join("expected");
    copy_dir(&src, &expected);
    next_second();

    let repo = f.dir.join("repo");
    let log = f.dir.join("second-log");
    let packs_before = pack_files(&repo).len();
    let mut backup = spawn_backup_until_packs(
        &f.cairn,
        &["backup", "--json", s(&src)],
        &log,
        &repo,
        packs_before + 1,
    );
    let pid = backup.id().to_string();
    signal(&pid, "-STOP");
    let forgot = f.cairn.run(["forget", &parent]);
    let pruned = f
        .cairn
        .run(["prune", "--json", "--grace", "0s", "--clock-skew", "0s"]);
    // The backup runs on before anything here can fail.
    signal(&pid, "-CONT");
    forgot.expect_success();
    pruned.expect_success();
    let report = pruned.json_last_line();
    assert_eq!(n(&report, "backups_from_forgotten_parents"), 1, "{report}");
    assert_eq!(n(&report, "chunks_condemned"), 0, "{report}");
    // Prune says what it holds back, and why.
    let waiting = report["waiting"].as_array().expect("waiting");
    assert_eq!(waiting.len(), 1, "{report}");
    assert_eq!(waiting[0]["reason"], "forgotten_parent", "{report}");
    assert!(
        n(&waiting[0], "bytes") > 0 && n(&waiting[0], "packs") >= 1,
        "{report}"
    );
    assert!(waiting[0]["until"].is_null(), "{report}");

    let (status, stderr) = wait_for_backup(&mut backup, &log, Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let stdout = fs::read_to_string(log.join("stdout")).unwrap();
    let stats: Value = serde_json::from_str(stdout.lines().last().expect("stats line")).unwrap();
    let stats = Stats(stats);
    assert_eq!(stats.u("files_unmodified"), 6, "{}", stats.0);
    let snap = stats.snapshot_id();
    restore_equals(&f.cairn, &snap, &src, &expected, &f.dir);

    // Once it has ended, prune collects what only the parent used.
    next_second();
    let report = prune(&f.cairn, NOW);
    assert_eq!(n(&report, "backups_from_forgotten_parents"), 0, "{report}");
    assert!(n(&report, "chunks_condemned") > 0, "{report}");
    f.cairn.check_clean();
    restore_equals(&f.cairn, &snap, &src, &expected, &f.dir);
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Starts `args` (a backup) and returns once `repo` holds at least `packs` packs.
fn spawn_backup_until_packs(
    cairn: &Cairn,
    args: &[&str],
    log: &Path,
    repo: &Path,
    packs: usize,
) -> Child {
    let backup = cairn.spawn(args, log);
    poll_until(
        "the backup to store a pack",
        Duration::from_secs(60),
        || pack_files(repo).len() >= packs,
    );
    backup
}

/// Waits up to `timeout` for a backup started by [`spawn_backup_until_packs`]
/// to end: its exit status and what it wrote to stderr.
fn wait_for_backup(backup: &mut Child, log: &Path, timeout: Duration) -> (ExitStatus, String) {
    let status = wait_with_deadline(backup, timeout).expect("backup ends");
    let stderr = fs::read_to_string(log.join("stderr")).unwrap();
    (status, stderr)
}

/// The index is an accelerator: losing the node that holds a backup's
/// session costs the backup nothing while the lease it last confirmed runs.
#[test]
fn a_backup_whose_session_node_dies_still_writes_its_snapshot() {
    let mut f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let (status, stderr) = backup_losing_a_node(&mut f, "600", 0);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("its lease still runs"), "{stderr}");
    let snaps = f
        .cairn
        .with_env("CAIRN_INDEX", "http://127.0.0.1:9")
        .snapshots();
    assert_eq!(snaps.len(), 1);
}

/// With two owners of the session's partition, losing either one leaves
/// the session renewable and committable on the other.
#[test]
fn a_session_survives_one_of_its_replicas() {
    for victim in 0..2 {
        let Some(mut f) = ClusterFixture::new(2, 2) else {
            return;
        };
        let (status, stderr) = backup_losing_a_node(&mut f, "2", victim);
        assert!(status.success(), "node {victim} killed: {stderr}");
        assert!(
            !stderr.contains("did not confirm the backup session"),
            "node {victim} killed: {stderr}"
        );
    }
}

/// A backup with a session lease of `lease` seconds that loses node
/// `victim` once it stored its first pack: how it ended, and its stderr.
fn backup_losing_a_node(
    f: &mut ClusterFixture,
    lease: &str,
    victim: usize,
) -> (ExitStatus, String) {
    let cairn = f.cairn.with_env("CAIRN_SESSION_LEASE", lease);
    let log = f.dir.join("log");
    let repo = f.dir.join("repo");
    let mut backup = spawn_backup_until_packs(
        &cairn,
        &["backup", s(big_source()), "--json"],
        &log,
        &repo,
        1,
    );
    f.kill_node(victim);
    wait_for_backup(&mut backup, &log, Duration::from_secs(300))
}

/// What one client of the concurrency test put in a snapshot.
struct Committed {
    client: usize,
    round: usize,
    source: PathBuf,
    expected: PathBuf,
}

/// Four clients back up new data, data they share and data only forgotten
/// snapshots used, while snapshots are forgotten and prune runs again and
/// again; then every snapshot still listed restores exactly and check is clean.
fn backups_and_prunes_side_by_side(cairn: &Cairn, dir: &Path, seed: u64, rounds: usize) -> u64 {
    use std::sync::{Arc, Mutex};
    let committed: Arc<Mutex<BTreeMap<String, Committed>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut clients = Vec::new();
    for c in 0..4usize {
        let (cairn, committed, dir) = (cairn.clone(), committed.clone(), dir.to_path_buf());
        clients.push(std::thread::spawn(move || {
            let mut rng = XorShift::new(seed.wrapping_mul(31).wrapping_add(c as u64 + 1));
            let src = dir.join(format!("client-{c}"));
            for round in 0..rounds {
                if Instant::now() > deadline {
                    break;
                }
                let _ = fs::remove_dir_all(&src);
                fs::create_dir_all(&src).unwrap();
                // New data, data every client shares this round, and data
                // an earlier round used (possibly only by forgotten snapshots).
                let sizes = [
                    64 * 1024 + rng.next_u64() % (1536 * 1024),
                    128 * 1024 + rng.next_u64() % (512 * 1024),
                ];
                write_random_file(&src.join("new.bin"), sizes[0], rng.next_u64());
                write_random_file(&src.join("shared.bin"), 700 * 1024, 9000 + round as u64);
                let old = rng.next_u64() % (round as u64 + 1);
                write_random_file(&src.join("old.bin"), sizes[1], 5000 + old);
                let out = cairn.backup_raw(&[&src], &["--host", &format!("client{c}")]);
                if out.code != 0 {
                    panic!("backup of client {c} failed\n{}", out.describe());
                }
                let snap = Stats(out.json_last_line()).snapshot_id();
                let expected = dir.join(format!("expected/{snap}"));
                copy_dir(&src, &expected);
                committed.lock().unwrap().insert(
                    snap,
                    Committed {
                        client: c,
                        round,
                        source: src.clone(),
                        expected,
                    },
                );
                std::thread::sleep(Duration::from_millis(rng.next_u64() % 200));
            }
        }));
    }
    let pruner = {
        let (cairn, committed, stop) = (cairn.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = XorShift::new(seed);
            let (mut prunes, mut freed, mut condemned) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Forget about half of the snapshots committed so far, never
                // a client's latest (the parent of its next backup).
                let victims: Vec<String> = {
                    let committed = committed.lock().unwrap();
                    let mut latest: BTreeMap<usize, usize> = BTreeMap::new();
                    for c in committed.values() {
                        let l = latest.entry(c.client).or_default();
                        *l = (*l).max(c.round);
                    }
                    committed
                        .iter()
                        .filter(|(_, c)| latest.get(&c.client) != Some(&c.round))
                        .filter(|_| rng.next_u64().is_multiple_of(2))
                        .map(|(id, _)| id.clone())
                        .collect()
                };
                for v in &victims {
                    let out = cairn.run(["forget", v]);
                    out.expect_success();
                    committed.lock().unwrap().remove(v);
                }
                let out = cairn.run(["prune", "--json", "--grace", "0s", "--clock-skew", "0s"]);
                if out.code != 0 {
                    panic!("prune failed\n{}", out.describe());
                }
                let report = out.json_last_line();
                prunes += 1;
                freed += n(&report, "bytes_freed");
                condemned += n(&report, "chunks_condemned");
                std::thread::sleep(Duration::from_millis(rng.next_u64() % 300));
            }
            (prunes, freed, condemned)
        })
    };
    let clients_ok = clients.into_iter().all(|c| c.join().is_ok());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (prunes, freed, condemned) = pruner.join().expect("pruner thread");
    assert!(clients_ok, "a client failed (see its panic above)");
    eprintln!(
        "seed {seed}: {prunes} prunes beside the backups condemned {condemned} chunks and freed {freed} bytes"
    );
    assert!(prunes >= 1, "prune never ran beside the backups");
    next_second();
    prune(cairn, NOW);
    let committed = committed.lock().unwrap();
    assert!(!committed.is_empty());
    let listed: Vec<String> = cairn
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for (snap, c) in committed.iter() {
        assert!(
            listed.contains(snap),
            "client {} snapshot {snap} missing",
            c.client
        );
        restore_equals(cairn, snap, &c.source, &c.expected, dir);
    }
    cairn.check_clean();
    freed
}

/// The seed of the randomized tests: `CAIRN_TEST_SEED` to replay a run,
/// else the clock (printed, so a failure can be replayed).
fn test_seed() -> u64 {
    let seed = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("CAIRN_TEST_SEED={seed}");
    seed
}

#[test]
fn concurrent_backups_and_repeated_prunes_with_the_cluster_index() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let base = test_seed();
    let freed: u64 = (base..base + 3)
        .map(|seed| {
            backups_and_prunes_side_by_side(&f.cairn, &f.dir.join(format!("run-{seed}")), seed, 6)
        })
        .sum();
    assert!(
        freed > 0,
        "the prunes beside the backups never freed anything"
    );
}

/// The same with the embedded index. It admits one process at a time, so
/// the backups and prunes take turns on it (`--lock-wait`), in random order.
#[test]
fn concurrent_backups_and_repeated_prunes_with_the_embedded_index() {
    let (_tmp, dir) = tempdir();
    let cairn = Cairn::new(dir.join("repo")).with_env("CAIRN_LOCK_WAIT", "300");
    cairn.init();
    let base = test_seed();
    let freed: u64 = (base..base + 2)
        .map(|seed| {
            backups_and_prunes_side_by_side(&cairn, &dir.join(format!("run-{seed}")), seed, 4)
        })
        .sum();
    assert!(
        freed > 0,
        "the prunes beside the backups never freed anything"
    );
}
