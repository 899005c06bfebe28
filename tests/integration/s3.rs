//! The S3 store against real servers on 127.0.0.1: a three-node Garage
//! cluster (replication factor 3) and s3s-fs, both started by
//! `scripts/test-all.sh` (see scripts/s3-servers.sh), which exports where
//! they listen and the credentials (through the standard AWS variables).
//! Every test works under its own random prefix of the shared bucket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_chunk_store::store::{ObjectInfo, ObjectStore, S3Options, S3Store};

use crate::cluster::ClusterFixture;
use crate::common::*;
use crate::faultproxy::{Fault, FaultProxy, Recorded};

/// One S3 server the tests talk to.
#[derive(Debug, Clone)]
struct Server {
    endpoint: String,
    region: String,
    bucket: String,
}

/// A variable the test script exported (checked by [`garage`] first).
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// The Garage cluster, or `None` (the test is skipped) outside
/// scripts/test-all.sh.
fn garage() -> Option<Server> {
    Some(Server {
        endpoint: service_var("CAIRN_TEST_GARAGE_ENDPOINT", "the Garage cluster")?,
        region: env("CAIRN_TEST_GARAGE_REGION"),
        bucket: env("CAIRN_TEST_GARAGE_BUCKET"),
    })
}

/// The s3s-fs server, or `None` (the test is skipped) outside
/// scripts/test-all.sh.
fn s3s() -> Option<Server> {
    Some(Server {
        endpoint: service_var("CAIRN_TEST_S3S_ENDPOINT", "the s3s-fs server")?,
        region: "us-east-1".into(),
        bucket: env("CAIRN_TEST_S3S_BUCKET"),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A repository under a fresh prefix of a server's bucket, and a client for it.
struct S3Repo {
    server: Server,
    prefix: String,
    cairn: Cairn,
}

impl Server {
    /// The same server reached through `proxy`.
    fn via(&self, proxy: &FaultProxy) -> Server {
        Server {
            endpoint: proxy.url.clone(),
            ..self.clone()
        }
    }

    fn repo(&self, test: &str, dir: &Path) -> S3Repo {
        let prefix = format!("{test}-{}", random_marker());
        let cairn = self.client(&prefix, dir);
        S3Repo {
            server: self.clone(),
            prefix,
            cairn,
        }
    }

    /// A client of the repository at `prefix`, with its index cache in `dir`.
    fn client(&self, prefix: &str, dir: &Path) -> Cairn {
        Cairn::new(format!("s3://{}/{prefix}", self.bucket))
            .with_env("CAIRN_S3_ENDPOINT", &self.endpoint)
            .with_env("CAIRN_S3_REGION", &self.region)
            .with_env("XDG_CACHE_HOME", s(&dir.join("cache")))
    }

    async fn store(&self, prefix: &str) -> S3Store {
        let mut options =
            S3Options::from_url(&format!("s3://{}/{prefix}", self.bucket)).expect("url");
        options.endpoints = self.endpoint.split(',').map(str::to_string).collect();
        options.region = Some(self.region.clone());
        options.path_style = true;
        S3Store::new(options).await
    }
}

impl S3Repo {
    /// Objects under `sub` (`packs/`, `manifests/`), read directly from the server.
    fn list(&self, sub: &str) -> Vec<ObjectInfo> {
        runtime().block_on(async {
            let store = self.server.store(&self.prefix).await;
            store.list(sub).await.expect("list")
        })
    }

    /// The same repository through another endpoint (a proxy).
    fn via(&self, proxy: &FaultProxy, dir: &Path) -> Cairn {
        self.server.via(proxy).client(&self.prefix, dir)
    }
}

/// A source tree: random files over several packs, small files, a symlink,
/// an empty file.
fn source(dir: &Path, big_mib: u64, seed: u64) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    write_random_file(&src.join("big.bin"), big_mib * MIB, seed);
    for i in 0..40 {
        let sub = if i % 2 == 0 { "docs" } else { "docs/deep" };
        write_random_file(
            &src.join(sub).join(format!("f{i}.txt")),
            3000 + i * 37,
            seed + i,
        );
    }
    std::fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/f0.txt", src.join("link")).unwrap();
    src
}

fn assert_restores(cairn: &Cairn, snapshot: &str, src: &Path, target: &Path) {
    cairn.restore(snapshot, target);
    assert_trees_equal(src, &restored(target, src), Compare::CONTENT);
}

// ---------------------------------------------------------------------------
// Conformance
// ---------------------------------------------------------------------------

fn conformance(server: Server) {
    runtime().block_on(async {
        let store = server
            .store(&format!("conformance-{}", random_marker()))
            .await;
        crate::conformance::conformance_suite(&store).await;
    });
}

#[test]
fn the_store_conformance_suite_passes_on_garage() {
    let Some(server) = garage() else { return };
    conformance(server);
}

#[test]
fn the_store_conformance_suite_passes_on_s3s() {
    let Some(server) = s3s() else { return };
    conformance(server);
}

// ---------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------

/// Backup, byte-exact restore, `check --read-data`, and `index rebuild`
/// (after which a backup of the same data from another path uploads nothing).
fn round_trip(server: Server) {
    let (_t, dir) = tempdir();
    let repo = server.repo("roundtrip", &dir);
    let cairn = &repo.cairn;
    cairn.init();
    let src = source(&dir, 40, 7);
    let first = cairn.backup(&[&src], &[]);
    assert!(first.u("data_chunks_new") > 40, "{:?}", first.0);
    assert!(
        repo.list("packs/").len() >= 3,
        "40 MiB of random data fills at least three packs"
    );
    assert_eq!(repo.list("manifests/").len(), 1);
    assert_restores(cairn, &first.snapshot_id(), &src, &dir.join("restore"));
    cairn.check_clean();

    // The index lives in this machine's cache: rebuild it from the packs.
    std::fs::remove_dir_all(dir.join("cache/cairn/index")).expect("index cache exists");
    let rebuilt = cairn.run(["index", "rebuild"]);
    rebuilt.expect_success();
    assert!(
        rebuilt.all_text().contains("rebuilt index"),
        "{}",
        rebuilt.describe()
    );
    let copy = dir.join("copy");
    copy_dir(&src, &copy);
    let again = cairn.backup(&[&copy], &[]);
    assert_eq!(again.u("data_chunks_new"), 0, "{:?}", again.0);
    assert_restores(cairn, &again.snapshot_id(), &copy, &dir.join("restore2"));
}

#[test]
fn backup_restore_check_and_rebuild_on_garage() {
    let Some(server) = garage() else { return };
    round_trip(server);
}

#[test]
fn backup_restore_check_and_rebuild_on_s3s() {
    let Some(server) = s3s() else { return };
    round_trip(server);
}

#[test]
fn init_twice_is_refused_on_garage_which_ignores_if_none_match() {
    let (_t, dir) = tempdir();
    let Some(server) = garage() else { return };
    let repo = server.repo("init-twice", &dir);
    repo.cairn.init();
    repo.cairn
        .run(["init"])
        .expect_clean_error(1, "a repository already exists at s3://");
}

#[test]
fn startup_mistakes_are_named_in_one_line() {
    let (_t, dir) = tempdir();
    let Some(server) = s3s() else { return };
    let repo = server.repo("startup", &dir);
    repo.cairn.init();
    let src = source(&dir, 1, 3);

    let missing = Server {
        bucket: "no-such-bucket".into(),
        ..server.clone()
    }
    .client("x", &dir);
    for args in [vec!["init"], vec!["backup", s(&src)]] {
        missing
            .run(&args)
            .expect_clean_error(1, "bucket no-such-bucket does not exist");
    }

    let wrong_key = repo
        .cairn
        .with_env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    for args in [vec!["init"], vec!["backup", s(&src)], vec!["snapshots"]] {
        wrong_key
            .run(&args)
            .expect_clean_error(1, "the S3 credentials were refused");
    }

    let unreachable = repo
        .cairn
        .with_env("CAIRN_S3_ENDPOINT", "http://127.0.0.1:9")
        .with_env("CAIRN_S3_DEADLINE", "3");
    for args in [vec!["init"], vec!["backup", s(&src)]] {
        let started = Instant::now();
        unreachable
            .run(&args)
            .expect_clean_error(1, "cannot reach S3 endpoint http://127.0.0.1:9");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    assert!(repo.list("manifests/").is_empty());
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// One Garage node the fault tests stop (never node 1, which the other
/// tests talk to), and start again.
struct GarageNode(u8);

/// Held by a test that stops a Garage node: with two of three down the
/// cluster would lose its write quorum under every other S3 test.
static GARAGE_FAULT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl GarageNode {
    fn var(&self, what: &str) -> String {
        env(&format!("CAIRN_TEST_GARAGE_NODE{}_{what}", self.0))
    }

    fn kill(&self) {
        let pid = std::fs::read_to_string(self.var("PIDFILE")).expect("pid file");
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(killed.success());
    }

    /// Starts the node again (detached: the test script stops it through
    /// its pid file).
    #[allow(clippy::zombie_processes)]
    fn restart(&self) {
        let config = PathBuf::from(self.var("CONFIG"));
        let node_dir = config.parent().expect("node dir").to_path_buf();
        let log = std::fs::File::create(node_dir.join("log.restarted")).expect("log");
        let child = Command::new(env("CAIRN_TEST_GARAGE_BIN"))
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage node");
        std::fs::write(self.var("PIDFILE"), child.id().to_string()).unwrap();
        let port = std::fs::read_to_string(node_dir.join("s3.port")).expect("port");
        let addr = format!("127.0.0.1:{}", port.trim());
        poll_until(
            "the garage node to listen again",
            Duration::from_secs(30),
            || std::net::TcpStream::connect(&addr).is_ok(),
        );
        // A restarted node does not reconnect to its peers for a while:
        // connect it to each, and wait until it sees every node, so that a
        // later fault test never leaves the cluster without a quorum.
        let garage = |config: &Path, args: &[&str]| {
            Command::new(env("CAIRN_TEST_GARAGE_BIN"))
                .arg("-c")
                .arg(config)
                .args(args)
                .output()
                .expect("run garage")
        };
        let nodes = node_dir.parent().expect("garage dirs");
        let configs: Vec<PathBuf> = (1..=3)
            .map(|i| nodes.join(format!("garage{i}/garage.toml")))
            .collect();
        poll_until("the garage node to rejoin", Duration::from_secs(60), || {
            // Every node connects to every other: each side's view counts.
            let ids: Vec<String> = configs
                .iter()
                .map(|c| {
                    let out = garage(c, &["node", "id", "-q"]);
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                })
                .collect();
            for (a, config) in configs.iter().enumerate() {
                for (b, id) in ids.iter().enumerate() {
                    if a != b {
                        garage(config, &["node", "connect", id]);
                    }
                }
            }
            // Whole: no failed node, and every node's hostname known (a
            // node listed as healthy with hostname `?` is not connected).
            let whole = configs.iter().all(|c| {
                let status = garage(c, &["status"]);
                let text = String::from_utf8_lossy(&status.stdout);
                status.status.success()
                    && !text.contains("FAILED NODES")
                    && !text
                        .lines()
                        .any(|l| l.split_whitespace().nth(1) == Some("?"))
            });
            if !whole {
                std::thread::sleep(Duration::from_millis(200));
            }
            whole
        });
    }
}

#[test]
fn a_garage_node_stopped_during_backup_costs_nothing() {
    let (_t, dir) = tempdir();
    let Some(server) = garage() else { return };
    let _fault = GARAGE_FAULT.lock().unwrap_or_else(|p| p.into_inner());
    let repo = server.repo("node-stop", &dir);
    repo.cairn.init();
    let src = source(&dir, 120, 11);
    let mut backup = repo
        .cairn
        .spawn(["backup", s(&src), "--json"], &dir.join("logs"));
    poll_until(
        "the first pack in the store",
        Duration::from_secs(120),
        || !repo.list("packs/").is_empty(),
    );
    let node3 = GarageNode(3);
    node3.kill();
    let status = wait_with_deadline(&mut backup, Duration::from_secs(300)).expect("backup ended");
    let stderr = std::fs::read_to_string(dir.join("logs/stderr")).unwrap_or_default();
    node3.restart();
    assert!(status.success(), "backup failed with node 3 down: {stderr}");
    assert_eq!(repo.list("manifests/").len(), 1);
    assert_restores(&repo.cairn, "latest", &src, &dir.join("restore"));
    repo.cairn.check_clean();
}

/// A client given the S3 endpoints of two Garage nodes keeps backing up
/// when one of them is killed mid-backup: its requests go to the other.
#[test]
fn a_backup_goes_on_through_the_other_endpoint_when_a_garage_node_dies() {
    let (_t, dir) = tempdir();
    let Some(server) = garage() else { return };
    let _fault = GARAGE_FAULT.lock().unwrap_or_else(|p| p.into_inner());
    let both = Server {
        endpoint: format!("{},{}", env("CAIRN_TEST_GARAGE_ENDPOINT2"), server.endpoint),
        ..server.clone()
    };
    let repo = both.repo("two-endpoints", &dir);
    repo.cairn.init();
    let src = source(&dir, 120, 23);
    let mut backup = repo
        .cairn
        .with_env("CAIRN_LOG", "cairn_chunk_store=debug")
        .spawn(["backup", s(&src), "--json"], &dir.join("logs"));
    poll_until(
        "the first pack in the store",
        Duration::from_secs(120),
        || !repo.list("packs/").is_empty(),
    );
    let node2 = GarageNode(2);
    node2.kill();
    let status = wait_with_deadline(&mut backup, Duration::from_secs(300)).expect("backup ended");
    let stderr = std::fs::read_to_string(dir.join("logs/stderr")).unwrap_or_default();
    node2.restart();
    assert!(status.success(), "backup failed with node 2 down: {stderr}");
    assert_eq!(repo.list("manifests/").len(), 1);
    assert_restores(&repo.cairn, "latest", &src, &dir.join("restore"));
    repo.cairn.check_clean();
}

/// Runs init, a backup and a restore of `src` through `proxy`; returns the
/// requests the proxy saw.
fn backup_and_restore_through(
    proxy: &FaultProxy,
    server: &Server,
    test: &str,
    src: &Path,
    dir: &Path,
) -> u64 {
    proxy.reset_counters();
    let repo = server.repo(test, dir);
    let cairn = repo
        .via(proxy, dir)
        .with_env("CAIRN_S3_TIMEOUT", "2")
        .with_env("CAIRN_S3_DEADLINE", "120");
    cairn.init();
    let stats = cairn.backup(&[src], &[]);
    assert_restores(
        &cairn,
        &stats.snapshot_id(),
        src,
        &dir.join(format!("restore-{test}")),
    );
    proxy.requests()
}

#[test]
fn backup_and_restore_succeed_with_30_percent_of_requests_failing() {
    let (_t, dir) = tempdir();
    let Some(server) = s3s() else { return };
    let proxy = FaultProxy::start(&server.endpoint, Duration::from_secs(3), 42);
    let src = source(&dir, 48, 21);

    let clean = backup_and_restore_through(&proxy, &server, "faults-none", &src, &dir);
    proxy.set_fault_rate(0.3);
    let faulty = backup_and_restore_through(&proxy, &server, "faults-30", &src, &dir);
    let faults = proxy.faults();
    let amplification = faulty as f64 / clean as f64;
    let per_fault = (faulty - clean) as f64 / faults.len() as f64;
    eprintln!(
        "retry amplification: {faulty} requests with 30% failing vs {clean} without \
         ({amplification:.2}x, {per_fault:.2} extra requests per injected fault); \
         faults: {} slowdown, {} reset, {} stall, {} cut",
        faults.iter().filter(|f| **f == Fault::SlowDown).count(),
        faults.iter().filter(|f| **f == Fault::Reset).count(),
        faults.iter().filter(|f| **f == Fault::Stall).count(),
        faults.iter().filter(|f| **f == Fault::CutBody).count(),
    );
    assert!(
        faults.len() as u64 >= clean / 5,
        "too few faults: {}",
        faults.len()
    );
    for kind in [Fault::SlowDown, Fault::Reset, Fault::Stall, Fault::CutBody] {
        assert!(faults.contains(&kind), "no {kind:?} was injected");
    }
    // 1/(1-0.3) = 1.43 attempts per call is the floor; the retry budget
    // bounds it at 2. (Where it lands between depends on the mix: a PUT whose
    // answer was cut costs a retry and a size check.)
    assert!(
        amplification <= 2.0,
        "retry amplification {amplification:.2}"
    );
    // One retry per fault, plus a size check when a stored object's answer was lost.
    assert!(per_fault <= 1.5, "{per_fault:.2} extra requests per fault");
}

#[test]
fn a_store_gone_for_good_fails_the_backup_by_its_deadline_and_a_rerun_reuses_the_packs() {
    let (_t, dir) = tempdir();
    let Some(server) = s3s() else { return };
    let proxy = FaultProxy::start(&server.endpoint, Duration::from_secs(3), 7);
    let repo = server.repo("gone", &dir);
    repo.cairn.init();
    let src = source(&dir, 96, 5);
    let through = repo
        .via(&proxy, &dir)
        .with_env("CAIRN_S3_TIMEOUT", "2")
        .with_env("CAIRN_S3_DEADLINE", "6");

    proxy.go_down_after_pack_puts(2);
    let started = Instant::now();
    let failed = through.backup_raw(&[&src], &[]);
    let took = started.elapsed();
    failed.expect_clean_error(1, "object store unavailable");
    assert!(
        took < Duration::from_secs(6 + 20),
        "the backup took {took:?} with a 6 s deadline"
    );
    assert!(
        repo.list("manifests/").is_empty(),
        "no manifest may be written"
    );
    let stored = repo.list("packs/").len();
    assert!(
        stored >= 2,
        "{stored} packs stored before the store went away"
    );

    proxy.set_down(false);
    let rerun = through.backup(&[&src], &[]);
    let total = repo.list("packs/").len();
    assert!(
        rerun.u("chunks_reused") > 0,
        "the rerun reuses what was stored: {:?}",
        rerun.0
    );
    // The rerun uploads only what the first run did not store: the data
    // needs at least 6 packs (96 MiB random), and all packs together stay
    // within one pack of that plus the first run's partial packs.
    assert!(
        total <= 96 / 16 + 2 + 1,
        "{total} packs: the rerun uploaded everything again ({stored} were stored)"
    );
    assert_restores(&through, "latest", &src, &dir.join("restore"));
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[test]
fn four_clients_back_up_the_same_new_data_at_once_through_the_cluster_index() {
    let Some(server) = garage() else { return };
    let prefix = format!("four-{}", random_marker());
    let Some(f) = ClusterFixture::with_repo(3, 2, |dir| server.client(&prefix, dir)) else {
        return;
    };
    let src = source(&f.dir, 40, 99);
    let logs: Vec<PathBuf> = (0..4).map(|i| f.dir.join(format!("client{i}"))).collect();
    let mut children: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            f.cairn
                .with_env("XDG_CACHE_HOME", s(&log.join("cache")))
                .spawn(
                    [
                        "backup",
                        s(&src),
                        "--json",
                        "--host",
                        &format!("client-{i}"),
                    ],
                    log,
                )
        })
        .collect();
    for (child, log) in children.iter_mut().zip(&logs) {
        let status = wait_with_deadline(child, Duration::from_secs(300)).expect("backup ended");
        let stderr = std::fs::read_to_string(log.join("stderr")).unwrap_or_default();
        assert!(status.success(), "a client failed: {stderr}");
    }
    let snapshots = f.cairn.snapshots();
    assert_eq!(snapshots.len(), 4);
    for (i, snap) in snapshots.iter().enumerate() {
        let id = snap["id"].as_str().expect("id");
        assert_restores(&f.cairn, id, &src, &f.dir.join(format!("restore{i}")));
    }
    f.cairn.check_clean();
}

/// `cairn mount` of a repository on S3: the mounted snapshot equals its
/// source, and a read of one file fetches only its chunks.
fn mount_on(server: Server) {
    if !crate::mount::fuse_available() {
        return;
    }
    let (_t, dir) = tempdir();
    let repo = server.repo("mount", &dir);
    let cairn = &repo.cairn;
    cairn.init();
    let src = source(&dir, 12, 0x3A);
    let id = cairn.backup(&[&src], &[]).snapshot_id();
    let mount = crate::mount::Mounted::start(cairn, &dir.join("mnt"), &[]);
    let snap = mount.snapshot(&id).join(src.strip_prefix("/").unwrap());
    assert!(files_equal(
        &src.join("docs/f0.txt"),
        &snap.join("docs/f0.txt")
    ));
    assert_eq!(mount.stat("chunks_fetched"), 1, "{}", mount.stats());
    assert_trees_equal(&src, &snap, Compare::ALL);
    assert!(mount.stop().success());
}

#[test]
fn a_snapshot_on_garage_mounts() {
    let Some(server) = garage() else { return };
    mount_on(server);
}

#[test]
fn a_snapshot_on_s3s_mounts() {
    let Some(server) = s3s() else { return };
    mount_on(server);
}

/// A local repository copied to S3 and an S3 repository copied to a local
/// one, each with its own password: the copies restore byte for byte and
/// a second copy stores nothing.
fn copy_both_ways(server: Server) {
    use crate::copy::{TARGET_PASSWORD, copy, kept_fields};
    let (_t, dir) = tempdir();
    let src = source(&dir, 6, 0xC5);

    // Local → S3.
    let local = Cairn::new(dir.join("local"));
    local.init();
    local.backup(&[&src], &["--tag", "first"]);
    let remote = server.repo("copy", &dir);
    let offsite = remote.cairn.with_password(TARGET_PASSWORD);
    offsite.init();
    copy(&offsite, s(&local.repo), &[]).expect_success();
    assert_eq!(kept_fields(&offsite), kept_fields(&local));
    assert_restores(&offsite, "latest", &src, &dir.join("restore-s3"));
    let again = copy(&offsite, s(&local.repo), &[]);
    again.expect_success();
    assert!(
        again
            .stdout_text()
            .contains("0 snapshots copied, 1 already present"),
        "{}",
        again.describe()
    );

    // S3 → local (the S3 repository is the source now, with its password).
    let back = Cairn::new(dir.join("back")).with_password("a third password");
    back.init();
    back.with_env("CAIRN_FROM_PASSWORD", TARGET_PASSWORD)
        .with_env("CAIRN_S3_ENDPOINT", &server.endpoint)
        .with_env("CAIRN_S3_REGION", &server.region)
        .run([
            "copy",
            "--from-repo",
            &format!("s3://{}/{}", server.bucket, remote.prefix),
        ])
        .expect_success();
    assert_eq!(kept_fields(&back), kept_fields(&local));
    assert_restores(&back, "latest", &src, &dir.join("restore-back"));
    back.check_clean();
}

#[test]
fn copies_between_local_and_garage() {
    let Some(server) = garage() else { return };
    copy_both_ways(server);
}

#[test]
fn copies_between_local_and_s3s() {
    let Some(server) = s3s() else { return };
    copy_both_ways(server);
}

/// Every delete the proxy saw, other than the permission probe forget and
/// prune send first.
fn deletes(recorded: &[Recorded]) -> Vec<&Recorded> {
    recorded
        .iter()
        .filter(|r| r.method == "DELETE" || (r.method == "POST" && r.path.contains("?delete")))
        .filter(|r| !r.path.contains("/locks/delete-check-"))
        .collect()
}

fn append_only(server: Server) {
    let (_t, dir) = tempdir();
    let proxy = FaultProxy::start(&server.endpoint, Duration::from_secs(3), 1);
    proxy.refuse_deletes(true);
    let repo = server.repo("append-only", &dir);
    // The backup identity: every DELETE is answered 403.
    let backup = repo.via(&proxy, &dir);
    backup.init();
    let src = source(&dir, 6, 31);
    let first = backup.backup(&[&src], &[]).snapshot_id();
    write_random_file(&src.join("later.bin"), 2 * MIB, 77);
    let second = backup.backup(&[&src], &[]).snapshot_id();
    assert_restores(&backup, &second, &src, &dir.join("restored"));
    for args in [
        vec!["check", "--read-data"],
        vec!["snapshots"],
        vec!["ls", first.as_str()],
        vec!["diff", first.as_str(), second.as_str()],
        vec!["index", "rebuild"],
    ] {
        backup.run(&args).expect_success();
    }
    let asked = proxy.take_recorded();
    assert!(
        deletes(&asked).is_empty() && !asked.iter().any(|r| r.status == 403),
        "a backup-only command asked to delete: {:?}",
        deletes(&asked)
    );

    // forget and prune stop before changing anything, naming the permission.
    let (manifests, packs) = (repo.list("manifests/").len(), repo.list("packs/").len());
    for args in [
        vec!["forget", "--keep-last", "1"],
        vec!["forget", first.as_str()],
        vec!["prune"],
        vec!["forget", "--keep-last", "1", "--prune"],
    ] {
        backup
            .run(&args)
            .expect_clean_error(1, "may not delete objects (s3:DeleteObject refused");
    }
    assert_eq!(repo.list("manifests/").len(), manifests);
    assert_eq!(repo.list("packs/").len(), packs);
    let asked = proxy.take_recorded();
    assert!(deletes(&asked).is_empty(), "{:?}", deletes(&asked));
    assert!(
        asked.iter().any(|r| r.status == 403),
        "the probe was refused"
    );

    // The prune identity (no proxy) may.
    repo.cairn
        .run(["forget", "--keep-last", "1", "--prune"])
        .expect_success();
    assert_eq!(repo.list("manifests/").len(), 1);
    assert_restores(&repo.cairn, &second, &src, &dir.join("restored-after"));
}

#[test]
fn backups_need_no_delete_permission_on_s3s() {
    let Some(server) = s3s() else { return };
    append_only(server);
}

#[test]
fn backups_need_no_delete_permission_on_garage() {
    let Some(server) = garage() else { return };
    append_only(server);
}

/// The lock headers of every PUT, and their retain-until dates within an
/// hour of `days` from now.
fn assert_locked_puts(recorded: &[Recorded], mode: &str, days: i64, offset: i64) {
    let puts: Vec<&Recorded> = recorded.iter().filter(|r| r.method == "PUT").collect();
    assert!(!puts.is_empty());
    let expected = jiff::Timestamp::now().as_second() + offset + days * 86_400;
    for p in puts {
        assert_eq!(p.header("x-amz-object-lock-mode"), Some(mode), "{p:?}");
        let until: jiff::Timestamp = p
            .header("x-amz-object-lock-retain-until-date")
            .unwrap_or_else(|| panic!("no retain-until date: {p:?}"))
            .parse()
            .expect("an RFC 3339 date");
        assert!(
            (until.as_second() - expected).abs() < 3600,
            "retain until {until}, expected about {expected}"
        );
        assert!(p.header("x-amz-checksum-sha256").is_some(), "{p:?}");
    }
}

#[test]
fn an_object_locked_repository_writes_lock_headers_and_prune_waits_for_the_dates() {
    let (_t, dir) = tempdir();
    let Some(server) = s3s() else { return };
    let proxy = FaultProxy::start(&server.endpoint, Duration::from_secs(3), 2);
    let repo = server.repo("object-lock", &dir);
    let c = repo.via(&proxy, &dir);
    c.run(["init", "--object-lock-days", "1"]).expect_success();
    let src = source(&dir, 6, 41);
    let old = c.backup(&[&src], &[]).snapshot_id();
    let recorded = proxy.take_recorded();
    let put_to = |what: &str| {
        recorded
            .iter()
            .any(|r| r.method == "PUT" && r.path.split('?').next().unwrap_or("").contains(what))
    };
    assert!(put_to("/config"));
    assert!(put_to("/keys/") && put_to("/packs/") && put_to("/manifests/"));
    assert_locked_puts(&recorded, "GOVERNANCE", 1, 0);

    // New data; the old snapshot is locked for a day.
    let src2 = dir.join("src2");
    std::fs::create_dir_all(&src2).unwrap();
    write_random_file(&src2.join("new.bin"), 3 * MIB, 42);
    let new = c.backup(&[&src2], &[]).snapshot_id();
    c.run(["forget", &old])
        .expect_clean_error(1, "is under the repository's object lock until");
    let out = c.run(["forget", "--keep-last", "1", "--group-by", "host", "--json"]);
    out.expect_success();
    let report = out.json_last_line();
    assert_eq!(report["removed"], serde_json::json!([]));
    let reasons = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["keep"].as_array().unwrap().clone())
        .find(|k| k["id"] == old.as_str())
        .expect("the old snapshot is kept")["reasons"]
        .to_string();
    assert!(reasons.contains("object lock until"), "{reasons}");

    // Two days on, the manifest's lock is over and forget removes it.
    let later = |secs: i64| c.with_env("CAIRN_TEST_CLOCK_OFFSET_SECS", &secs.to_string());
    later(2 * 86_400).run(["forget", &old]).expect_success();
    proxy.take_recorded();

    // An hour on, the old packs are garbage but still locked: kept, and said so.
    let out = later(3600).run(["prune", "--grace", "0s", "--clock-skew", "0s", "--json"]);
    out.expect_success();
    let r = out.json_last_line();
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert!(r["packs_locked"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["bytes_locked"].as_u64().unwrap() >= 6 * MIB, "{r}");
    let waiting = r["waiting"].to_string();
    assert!(waiting.contains("\"object_lock\""), "{r}");
    assert!(deletes(&proxy.take_recorded()).is_empty());
    let text = later(3600).run(["prune", "--grace", "0s", "--clock-skew", "0s", "--dry-run"]);
    assert!(
        text.stdout_text()
            .contains("is under the repository's object lock until"),
        "{}",
        text.describe()
    );

    // Two days on, the locks are over: prune deletes them.
    let out = later(2 * 86_400).run(["prune", "--grace", "0s", "--clock-skew", "0s", "--json"]);
    out.expect_success();
    let r = out.json_last_line();
    assert!(r["packs_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["packs_locked"], 0, "{r}");
    let removed = proxy.take_recorded();
    assert!(deletes(&removed).iter().any(|d| d.path.contains("/packs/")));
    // Objects written two days on carry dates two days on.
    assert_restores(&c, &new, &src2, &dir.join("restored"));

    // Compliance mode, and a local repository refuses a lock.
    let strict = server
        .repo("object-lock-compliance", &dir)
        .via(&proxy, &dir);
    strict
        .run([
            "init",
            "--object-lock-days",
            "7",
            "--object-lock-mode",
            "compliance",
        ])
        .expect_success();
    assert_locked_puts(&proxy.take_recorded(), "COMPLIANCE", 7, 0);
    let (_t2, local) = tempdir();
    Cairn::new(local.join("repo"))
        .run(["init", "--object-lock-days", "1"])
        .expect_clean_error(1, "object lock needs an S3 repository");
    assert!(!local.join("repo").join("config").exists());
}
