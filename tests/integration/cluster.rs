//! The index cluster: real `cairn-index` processes on 127.0.0.1 port 0,
//! real RocksDB, the real `cairn` client.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;

use crate::common::*;

pub(crate) fn index_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_cairn")).with_file_name("cairn-index");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as scripts/test-all.sh does)",
        path.display()
    );
    path
}

/// One running node.
pub(crate) struct IndexNode {
    pub(crate) id: String,
    pub(crate) data: PathBuf,
    child: Child,
    pub(crate) addr: String,
    metrics: String,
    /// Killed or stopped.
    pub(crate) stopped: bool,
}

impl IndexNode {
    fn start_with(dir: &Path, id: &str, data: PathBuf, extra: &[&str]) -> Self {
        Self::start_full(dir, id, data, extra, &[])
    }

    /// A node with extra flags and environment variables.
    pub(crate) fn start_full(
        dir: &Path,
        id: &str,
        data: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_at(
            Command::new(index_binary()),
            "127.0.0.1",
            dir,
            id,
            data,
            extra,
            env,
        )
    }

    /// A node started by `command` (the binary, or `ip netns exec NS` and
    /// the binary), listening on `ip` port 0.
    pub(crate) fn start_at(
        mut command: Command,
        ip: &str,
        dir: &Path,
        id: &str,
        data: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let tls = extra.contains(&"--tls-cert");
        let listen = format!("{ip}:0");
        let mut child = command
            .args([
                "serve",
                "--listen",
                &listen,
                "--metrics-listen",
                &listen,
                "--node-id",
                id,
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--tokens")
            .arg(dir.join("tokens.toml"))
            .args(extra)
            .env("CAIRN_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join(format!("{id}.stderr"))).expect("log file"))
            .spawn()
            .expect("start cairn-index");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut addr = String::new();
        let mut metrics = String::new();
        // The node prints its bound addresses first; reading them is the readiness check.
        while addr.is_empty() || metrics.is_empty() {
            let Some(line) = lines.next() else {
                let err = fs::read_to_string(dir.join(format!("{id}.stderr"))).unwrap_or_default();
                panic!("cairn-index exited before listening: {err}");
            };
            let line = line.expect("read stdout");
            if let Some(a) = line.split(" listening on ").nth(1) {
                addr = format!("{}://{a}", if tls { "https" } else { "http" });
            } else if let Some(m) = line.split(" metrics on ").nth(1) {
                metrics = m.to_string();
            }
        }
        Self {
            id: id.to_string(),
            data,
            child,
            addr,
            metrics,
            stopped: false,
        }
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
    }

    /// SIGTERM, and waits for the node to drain and exit.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = wait_with_deadline(&mut self.child, Duration::from_secs(30));
        self.kill();
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        let body = http_get(&self.metrics, "/metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for IndexNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

pub(crate) fn add_token(dir: &Path, repo_id: &str) -> String {
    add_token_with_role(dir, repo_id, "prune")
}

pub(crate) fn add_token_with_role(dir: &Path, repo_id: &str, role: &str) -> String {
    let out = Command::new(index_binary())
        .args(["token", "add", "--repository", repo_id, "--role", role])
        .arg("--tokens")
        .arg(dir.join("tokens.toml"))
        .output()
        .expect("token add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// Where a cluster's nodes keep their control plane: the test etcd, under a
/// key prefix of their own.
#[derive(Clone)]
pub(crate) struct Etcd {
    pub(crate) urls: String,
    pub(crate) prefix: String,
}

impl Etcd {
    /// The etcd the test script started, under a fresh prefix; `None` (the
    /// test is skipped, saying why) in a plain `cargo test`.
    pub(crate) fn for_test() -> Option<Self> {
        let urls = service_var("CAIRN_TEST_ETCD", "an etcd cluster")?;
        Some(Self {
            urls,
            prefix: format!("/cairn-test-{}/", random_marker()),
        })
    }

    /// The flags that make a node a member of this cluster.
    pub(crate) fn flags(&self) -> Vec<String> {
        vec![
            "--etcd".into(),
            self.urls.clone(),
            "--etcd-prefix".into(),
            self.prefix.clone(),
        ]
    }

    /// Runs `cairn-index ARGS --etcd ... --etcd-prefix ...`.
    pub(crate) fn index(&self, args: &[&str]) -> std::process::Output {
        Command::new(index_binary())
            .args(args)
            .args(self.flags())
            .stdin(Stdio::null())
            .output()
            .expect("run cairn-index")
    }

    /// `cairn-index status --json`, and whether it said healthy.
    pub(crate) fn status(&self) -> (serde_json::Value, bool) {
        let out = self.index(&["status", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (json, out.status.success())
    }

    /// Runs a layout command, which must succeed.
    pub(crate) fn layout(&self, args: &[&str]) -> String {
        let mut all = vec!["layout"];
        all.extend_from_slice(args);
        let out = self.index(&all);
        assert!(
            out.status.success(),
            "cairn-index {all:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `status` says healthy.
    pub(crate) fn wait_healthy(&self, within: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        poll_until("the cluster is healthy", within, || {
            let (json, healthy) = self.status();
            last = json;
            if !healthy {
                // Each look is a process reading etcd: not in a tight loop.
                std::thread::sleep(Duration::from_millis(100));
            }
            healthy
        });
        last
    }
}

/// A repository, a cluster of index nodes and a client wired to it. One
/// node runs alone (no etcd: it owns every partition); more are members of
/// a cluster on the test etcd, with a layout applied.
pub(crate) struct ClusterFixture {
    _dir: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) nodes: Vec<IndexNode>,
    pub(crate) cairn: Cairn,
    repo_id: String,
    pub(crate) token: String,
    pub(crate) etcd: Option<Etcd>,
}

impl ClusterFixture {
    /// A repository and a cluster of `n` nodes with `replication` replicas
    /// (`None`: it needs etcd and none was started).
    pub(crate) fn new(n: usize, replication: u32) -> Option<Self> {
        Self::with_repo(n, replication, |dir| {
            Cairn::new(dir.join("repo")).with_env("XDG_CACHE_HOME", s(&dir.join("cache")))
        })
    }

    /// A cluster for the repository `repo` makes in the fixture's
    /// directory; `None` when it needs etcd and none was started.
    pub(crate) fn with_repo(
        n: usize,
        replication: u32,
        repo: impl FnOnce(&Path) -> Cairn,
    ) -> Option<Self> {
        let etcd = if n > 1 { Some(Etcd::for_test()?) } else { None };
        let (_dir, dir) = tempdir();
        let cairn = repo(&dir);
        let repo_id = cairn.init_repo_id();
        let token = add_token(&dir, &repo_id);
        let mut f = Self {
            _dir,
            dir,
            nodes: Vec::new(),
            cairn,
            repo_id,
            token,
            etcd,
        };
        for i in 1..=n {
            let node = f.start_node(&format!("n{i}"));
            f.nodes.push(node);
        }
        if let Some(etcd) = f.etcd.clone() {
            let ids: Vec<String> = f.nodes.iter().map(|n| n.id.clone()).collect();
            f.add_nodes(&ids, Some(replication));
            etcd.layout(&["apply"]);
            f.wait_for_layout(1);
        }
        let urls: Vec<&str> = f.nodes.iter().map(|n| n.addr.as_str()).collect();
        f.cairn = f
            .cairn
            .with_env("CAIRN_INDEX", &urls.join(","))
            .with_env("CAIRN_INDEX_TOKEN", &f.token);
        Some(f)
    }

    /// Starts node `id` on its data directory under the fixture's, in the
    /// fixture's cluster.
    pub(crate) fn start_node(&self, id: &str) -> IndexNode {
        let mut extra = self.etcd.as_ref().map(Etcd::flags).unwrap_or_default();
        extra.extend(["--antientropy-secs".to_string(), "2".to_string()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        IndexNode::start_with(&self.dir, id, self.dir.join(id), &extra)
    }

    /// Stages adding nodes `ids` once each has registered.
    pub(crate) fn add_nodes(&self, ids: &[String], replication: Option<u32>) {
        let etcd = self.etcd.as_ref().expect("a cluster on etcd");
        poll_until("nodes registered", Duration::from_secs(30), || {
            let (status, _) = etcd.status();
            let up: Vec<&str> = status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["up"] == true)
                .filter_map(|n| n["id"].as_str())
                .collect();
            let all = ids.iter().all(|id| up.contains(&id.as_str()));
            if !all {
                std::thread::sleep(Duration::from_millis(50));
            }
            all
        });
        let mut args: Vec<String> = vec!["add".into()];
        args.extend(ids.iter().cloned());
        if let Some(r) = replication {
            args.extend(["--replication".to_string(), r.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcd.layout(&args);
    }

    /// Waits until every running node routes by layout `version` or newer.
    pub(crate) fn wait_for_layout(&self, version: u64) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for node in &self.nodes {
            if node.stopped {
                continue;
            }
            poll_until(
                &format!("{} routes by layout {version}", node.id),
                Duration::from_secs(30),
                || {
                    let addr = node.addr.clone();
                    let token = self.token.clone();
                    rt.block_on(async move {
                        let Ok(mut c) = IndexClient::connect(addr).await else {
                            return false;
                        };
                        c.cluster_map(authed(v1::ClusterMapRequest {}, &token))
                            .await
                            .is_ok_and(|m| m.into_inner().layout_version >= version)
                    })
                },
            );
        }
    }

    /// The repository's id.
    pub(crate) fn repo_id(&self) -> &str {
        &self.repo_id
    }

    pub(crate) fn total(&self, metric: &str) -> f64 {
        self.nodes
            .iter()
            .filter(|n| !n.stopped)
            .map(|n| n.metric(metric))
            .sum()
    }
}

fn small_files(dir: &Path, names: &[&str], seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for (i, name) in names.iter().enumerate() {
        // 100 KiB: below the chunker minimum, so exactly one chunk per file.
        write_random_file(&dir.join(name), 100 * 1024, seed + i as u64);
    }
}

#[test]
fn two_clients_share_deduplication_through_the_cluster() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let a = f.dir.join("a");
    small_files(&a, &["1", "2", "3", "4", "5"], 100);
    let b = f.dir.join("b");
    small_files(&b, &["1", "2", "3"], 100); // the same content as a/1..3
    small_files(&b, &["x", "y"], 900);

    let first = f.cairn.backup(&[&a], &["--host", "client-a"]);
    assert_eq!(first.u("data_chunks_new"), 5);
    let second = f.cairn.backup(&[&b], &["--host", "client-b"]);
    assert_eq!(second.u("data_chunks_new"), 2, "only b/x and b/y are new");
    // Both replicas of every partition recorded the chunks.
    let out = f.cairn.run(["index", "rebuild"]);
    out.expect_success();

    let target = f.dir.join("restore");
    f.cairn.restore("latest", &target);
    assert!(compare_trees(&b, &restored(&target, &b), Compare::CONTENT).is_empty());
}

#[test]
fn a_fresh_filter_spares_lookups_of_new_data() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let first = f.dir.join("first");
    small_files(&first, &["1", "2", "3"], 1);
    f.cairn.backup(&[&first], &[]);
    let asked_before = f.total("cairn_index_fingerprints_queried_total");

    let fresh = f.dir.join("fresh");
    small_files(&fresh, &["a", "b", "c", "d", "e", "f", "g", "h"], 5000);
    let stats = f.cairn.backup(&[&fresh], &[]);
    assert_eq!(stats.u("data_chunks_new"), 8);
    let asked_after = f.total("cairn_index_fingerprints_queried_total");
    assert_eq!(
        asked_after, asked_before,
        "no fingerprint of entirely new data should be asked about"
    );

    // Known data is still confirmed (and deduplicated).
    let again = f.dir.join("again");
    small_files(&again, &["1", "2"], 1);
    let stats = f.cairn.backup(&[&again], &[]);
    assert_eq!(stats.u("data_chunks_new"), 0);
    assert!(f.total("cairn_index_fingerprints_queried_total") > asked_after);
}

#[test]
fn a_node_killed_during_backup_costs_nothing_but_uploads() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let src = f.dir.join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        write_random_file(&src.join(format!("big{i}")), 20 * MIB, 40 + i);
    }
    small_files(&src.join("small"), &["1", "2", "3", "4"], 77);
    let log = f.dir.join("log");
    let mut backup = f.cairn.spawn(["backup", s(&src), "--json"], &log);
    // Kill a node once the backup is under way (it has stored a pack).
    poll_until("first pack stored", Duration::from_secs(120), || {
        !pack_files(&f.cairn.repo).is_empty()
    });
    let victim_data = f.nodes[1].data.clone();
    f.nodes[1].kill();
    let status =
        wait_with_deadline(&mut backup, Duration::from_secs(300)).expect("backup finished");
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(log.join("stderr")).unwrap_or_default()
    );

    let target = f.dir.join("restore");
    f.cairn.restore("latest", &target);
    assert!(compare_trees(&src, &restored(&target, &src), Compare::CONTENT).is_empty());
    f.cairn.check_clean();

    // The node restarts on its data and serves again.
    assert_eq!(victim_data, f.dir.join("n2"));
    let restarted = f.start_node("n2");
    f.nodes[1] = restarted;
    f.wait_for_layout(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo: Vec<u8> = hex::decode(&f.repo_id).unwrap();
    let addr = f.nodes[1].addr.clone();
    let token = f.token.clone();
    let unknown = rt.block_on(async move {
        let mut c = IndexClient::connect(addr).await.unwrap();
        c.unknown_chunks(authed(
            v1::UnknownChunksRequest {
                repo_id: repo.into(),
                ids: vec![0u8; 32].into(),
            },
            &token,
        ))
        .await
    });
    assert!(unknown.is_ok(), "{unknown:?}");
    // A backup after the restart deduplicates everything.
    let stats = f.cairn.backup(&[&src], &["--host", "other"]);
    assert_eq!(stats.u("data_chunks_new"), 0);
}

#[test]
fn restore_works_with_every_index_node_down() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let src = f.dir.join("src");
    small_files(&src, &["1", "2", "3"], 3);
    write_random_file(&src.join("big"), 3 * MIB, 9);
    f.cairn.backup(&[&src], &[]);
    for n in &mut f.nodes {
        n.kill();
    }
    let target = f.dir.join("restore");
    let out = f.cairn.run(["restore", "latest", "--target", s(&target)]);
    out.expect_success();
    assert!(compare_trees(&src, &restored(&target, &src), Compare::CONTENT).is_empty());
}

#[test]
fn backup_goes_on_when_the_whole_cluster_is_down() {
    let Some(mut f) = ClusterFixture::new(2, 1) else {
        return;
    };
    let src = f.dir.join("src");
    small_files(&src, &["1", "2"], 11);
    f.cairn.backup(&[&src], &[]);
    for n in &mut f.nodes {
        n.kill();
    }
    // No node answers: the backup uploads everything again and succeeds.
    let out = f.cairn.backup_raw(&[&src], &["--host", "x"]);
    out.expect_success();
    assert!(
        out.stderr
            .contains("warning: index unavailable: no index node answered"),
        "{}",
        out.stderr
    );
    assert_eq!(Stats(out.json_last_line()).u("data_chunks_new"), 2);
    let target = f.dir.join("restore");
    f.cairn.restore("latest", &target);
    assert!(compare_trees(&src, &restored(&target, &src), Compare::CONTENT).is_empty());
    // A wrong token is a configuration error, said in one line.
    let mut g = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let bad = g.cairn.with_env("CAIRN_INDEX_TOKEN", "cairn_wrong");
    bad.backup_raw(&[&src], &[])
        .expect_clean_error(1, "refused the token");
    g.nodes[0].kill();
}

#[test]
fn a_fourth_node_joins_and_everything_still_works() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let src = f.dir.join("src");
    small_files(&src, &["1", "2", "3", "4"], 21);
    f.cairn.backup(&[&src], &[]);
    let fourth = f.start_node("n4");
    f.nodes.push(fourth);
    f.add_nodes(&["n4".to_string()], None);
    let etcd = f.etcd.clone().unwrap();
    etcd.layout(&["apply"]);
    f.wait_for_layout(2);
    // The new node takes about R/N of the replica slots, and streams them.
    let status = etcd.wait_healthy(Duration::from_secs(120));
    let nodes = status["nodes"].as_array().unwrap();
    let n4 = nodes.iter().find(|n| n["id"] == "n4").unwrap();
    let share = n4["partitions"].as_f64().unwrap() / f64::from(cairn_proto::cluster::PARTITIONS);
    assert!(
        (0.44..=0.56).contains(&share),
        "n4 owns {share} of the partitions"
    );
    assert_eq!(
        n4["moves_done"].as_u64().unwrap(),
        n4["partitions"].as_u64().unwrap()
    );
    assert_eq!(status["layout_version"], 2);
    assert_eq!(status["versions_in_use"], 1);

    let more = f.dir.join("more");
    small_files(&more, &["5", "6"], 500);
    let stats = f.cairn.backup(&[&more], &[]);
    assert_eq!(stats.u("data_chunks_new"), 2);
    let target = f.dir.join("restore");
    f.cairn.restore("latest", &target);
    assert!(compare_trees(&more, &restored(&target, &more), Compare::CONTENT).is_empty());
    let target = f.dir.join("restore-old");
    let first = f.cairn.snapshots()[0]["id"].as_str().unwrap().to_string();
    f.cairn.restore(&first, &target);
    assert!(compare_trees(&src, &restored(&target, &src), Compare::CONTENT).is_empty());
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

#[test]
fn auth_and_bad_input_are_refused_and_the_node_keeps_serving() {
    let f = ClusterFixture::new(1, 1).expect("one node needs no etcd");
    let addr = f.nodes[0].addr.clone();
    let repo: Vec<u8> = hex::decode(&f.repo_id).unwrap();
    let other_token = add_token(&f.dir, &"ab".repeat(32));
    let token = f.token.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut c = IndexClient::connect(addr.clone()).await.unwrap();
        let req = |ids: Vec<u8>, repo: &[u8]| v1::UnknownChunksRequest {
            repo_id: repo.to_vec().into(),
            ids: ids.into(),
        };
        let code = |r: Result<tonic::Response<v1::UnknownChunksResponse>, tonic::Status>| {
            r.map(|_| ()).unwrap_err().code()
        };
        // No token, an unknown token, a token of another repository.
        assert_eq!(
            code(c.unknown_chunks(authed(req(vec![0; 32], &repo), "")).await),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(
                c.unknown_chunks(authed(req(vec![0; 32], &repo), "cairn_nope"))
                    .await
            ),
            tonic::Code::Unauthenticated
        );
        let denied = c
            .unknown_chunks(authed(req(vec![0; 32], &repo), &other_token))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        // The same answer whether or not the other repository exists.
        let denied2 = c
            .unknown_chunks(authed(req(vec![0; 32], &[7u8; 32]), &token))
            .await
            .unwrap_err();
        assert_eq!(denied2.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), denied2.message());
        // Malformed and oversized batches.
        assert_eq!(
            code(
                c.unknown_chunks(authed(req(vec![0; 33], &repo), &token))
                    .await
            ),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(
                c.unknown_chunks(authed(req(vec![0; 32 * 5000], &repo), &token))
                    .await
            ),
            tonic::Code::InvalidArgument
        );
        let bad_pack = c
            .register_pack(authed(
                v1::RegisterPackRequest {
                    repo_id: repo.clone().into(),
                    pack_id: vec![1, 2, 3].into(),
                    entries: vec![],
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(bad_pack.code(), tonic::Code::InvalidArgument);
        // Still serving, and health says so.
        let ok = c
            .unknown_chunks(authed(req(vec![0; 64], &repo), &token))
            .await
            .unwrap();
        assert_eq!(ok.into_inner().unknown.as_ref(), &[0b11]);
        let channel = tonic::transport::Endpoint::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            status.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}

#[test]
fn the_readme_cluster_example_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = fs::read_to_string(root.join("contrib/cluster-example.sh")).unwrap();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let body: String = script.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        readme.contains(&body),
        "README.md must show contrib/cluster-example.sh verbatim"
    );

    // The example starts its own etcd: it needs the binary the test script installs.
    if service_var("CAIRN_TEST_ETCD", "etcd").is_none() {
        return;
    }
    let (_dir, dir) = tempdir();
    // Free ports for the example's fixed-port nodes and its etcd.
    let ports: Vec<String> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap()
        .to_path_buf();
    index_binary();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("contrib/cluster-example.sh"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAIRN_") {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .env("PATH", path)
        .env("WORK", &dir)
        .env("CAIRN_EXAMPLE_PORTS", ports.join(" "))
        .env("CAIRN_KDF_MEMORY_KIB", "1024")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("cluster example: backup, restore and node replacement OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_index_can_be_served_over_tls() {
    let (_dir, dir) = tempdir();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let cairn = Cairn::new(dir.join("repo")).with_env("XDG_CACHE_HOME", s(&dir.join("cache")));
    let init = cairn.run(["init", "--json"]);
    init.expect_success();
    let repo_id = init.json_last_line()["repo_id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = add_token(&dir, &repo_id);
    let node = IndexNode::start_with(
        &dir,
        "n1",
        dir.join("n1"),
        &[
            "--tls-cert",
            s(&dir.join("cert.pem")),
            "--tls-key",
            s(&dir.join("key.pem")),
        ],
    );
    assert!(node.addr.starts_with("https://"));
    let src = dir.join("src");
    small_files(&src, &["1", "2"], 31);

    let secure = cairn
        .with_env("CAIRN_INDEX", &node.addr)
        .with_env("CAIRN_INDEX_TOKEN", &token)
        .with_env("CAIRN_INDEX_CA", s(&dir.join("cert.pem")));
    assert_eq!(secure.backup(&[&src], &[]).u("data_chunks_new"), 2);
    let again = secure.backup_raw(&[&src], &["--host", "other"]);
    again.expect_success();
    assert!(!again.stderr.contains("warning"), "{}", again.stderr);
    assert_eq!(
        Stats(again.json_last_line()).u("data_chunks_new"),
        0,
        "deduplicated through the TLS node"
    );

    // Without trusting the certificate, or in plain text, the node is not
    // reachable: the backup still succeeds, uploading everything.
    let plain = node.addr.replace("https://", "http://");
    for (index, host) in [(node.addr.as_str(), "third"), (plain.as_str(), "fourth")] {
        let out = cairn
            .with_env("CAIRN_INDEX", index)
            .with_env("CAIRN_INDEX_TOKEN", &token)
            .backup_raw(&[&src], &["--host", host]);
        out.expect_success();
        assert!(
            out.stderr.contains("no index node answered"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_saturated_node_sheds_load_with_a_retry_hint_and_recovers() {
    let (_dir, dir) = tempdir();
    let repo = [9u8; 32];
    let token = add_token(&dir, &hex::encode(repo));
    let node = IndexNode::start_with(&dir, "n1", dir.join("n1"), &["--max-in-flight", "1"]);
    let addr = node.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (shed, ok, hinted) = rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let mut c = IndexClient::new(channel.clone()).max_decoding_message_size(64 << 20);
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let request = v1::GetFilterRequest {
                    repo_id: repo.to_vec().into(),
                    first_partition: 0,
                    last_partition: cairn_proto::cluster::PARTITIONS,
                    known: vec![],
                    partitions: vec![],
                };
                match c.get_filter(authed(request, &token)).await {
                    Ok(mut s) => {
                        while s.get_mut().message().await.unwrap().is_some() {}
                        (0, 1, 0)
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => (
                        1,
                        0,
                        usize::from(s.metadata().get("retry-after-ms").is_some()),
                    ),
                    Err(s) => panic!("unexpected status {s:?}"),
                }
            }));
        }
        let mut totals = (0, 0, 0);
        for t in tasks {
            let (a, b, c) = t.await.unwrap();
            totals = (totals.0 + a, totals.1 + b, totals.2 + c);
        }
        totals
    });
    assert!(
        shed > 0,
        "48 concurrent calls against one slot: some must be shed"
    );
    assert!(ok > 0);
    assert_eq!(hinted, shed, "every refusal carries retry-after-ms");
    assert!(node.metric("cairn_index_shed_requests_total") >= shed as f64);
}

/// What the garbage-collection tests (`prune.rs`) need of the fixture.
impl ClusterFixture {
    /// Kills node `i` (SIGKILL).
    pub(crate) fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }
}
