//! The index cluster heals itself: nodes join, leave and fail while
//! backups run (real etcd, real `cairn-index` processes, the real client).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;
use cairn_proto::v1::peer_client::PeerClient;

use crate::cluster::ClusterFixture;
use crate::common::*;

fn tree(dir: &Path, files: usize, seed: u64) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        // 100 KiB: one chunk per file.
        write_random_file(&dir.join(format!("f{i:03}")), 100 * 1024, seed + i as u64);
    }
    dir.to_path_buf()
}

/// The client with a cache of its own: it has never seen the filter.
fn fresh_client(f: &ClusterFixture, name: &str) -> Cairn {
    f.cairn
        .with_env("XDG_CACHE_HOME", s(&f.dir.join(format!("cache-{name}"))))
}

fn restores_exactly(f: &ClusterFixture, snapshot: &str, source: &Path, name: &str) {
    let target = f.dir.join(format!("restore-{name}"));
    f.cairn.restore(snapshot, &target).expect_success();
    let diff = compare_trees(source, &restored(&target, source), Compare::CONTENT);
    assert!(diff.is_empty(), "{name}: {diff:?}");
}

fn node_status<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status}"))
}

/// 1. Replace: a node joins and another leaves while a client backs up;
///    once healthy, the leaver stops and a second node dies, and a fresh
///    client still stores nothing new.
#[test]
fn a_node_is_replaced_while_backups_run_and_nothing_is_uploaded_again() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let etcd = f.etcd.clone().unwrap();
    let first = tree(&f.dir.join("first"), 40, 1000);
    let one = f.cairn.backup(&[&first], &["--host", "a"]);
    assert_eq!(one.u("data_chunks_new"), 40);

    let n4 = f.start_node("n4");
    f.nodes.push(n4);
    f.add_nodes(&["n4".to_string()], None);
    etcd.layout(&["remove", "n1"]);
    let second = tree(&f.dir.join("second"), 30, 5000);
    let log = f.dir.join("second-log");
    let mut during =
        fresh_client(&f, "b").spawn(["backup", s(&second), "--host", "b", "--json"], &log);
    etcd.layout(&["apply"]);
    let status = wait_with_deadline(&mut during, Duration::from_secs(180)).expect("backup ends");
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(log.join("stderr")).unwrap_or_default()
    );
    let healthy = etcd.wait_healthy(Duration::from_secs(180));
    assert_eq!(healthy["layout_version"], 2);
    assert_eq!(healthy["versions_in_use"], 1);
    assert!(
        healthy["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != "n1" || n["state"] == "standby")
    );

    f.nodes[0].stop();
    f.nodes[1].kill();

    for (name, src) in [("first", &first), ("second", &second)] {
        let again = fresh_client(&f, &format!("again-{name}")).backup(&[src], &["--host", "c"]);
        assert_eq!(
            again.u("data_chunks_new"),
            0,
            "{name} deduplicated after the replacement"
        );
    }
    let snapshots = f.cairn.snapshots();
    assert_eq!(snapshots.len(), 4);
    for (i, snap) in snapshots.iter().enumerate() {
        let id = snap["id"].as_str().unwrap();
        let paths = snap["paths"].to_string();
        let source = if paths.contains("second") {
            &second
        } else {
            &first
        };
        restores_exactly(&f, id, source, &format!("s{i}"));
    }
}

/// 2. Grow under load: a node joins while eight clients back up.
#[test]
fn a_node_joins_while_eight_clients_back_up() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let etcd = f.etcd.clone().unwrap();
    let sources: Vec<PathBuf> = (0..8)
        .map(|i| tree(&f.dir.join(format!("src{i}")), 12, 100 * i as u64 + 7))
        .collect();
    let mut running = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let log = f.dir.join(format!("log{i}"));
        let child = fresh_client(&f, &format!("c{i}")).spawn(
            ["backup", s(src), "--host", &format!("h{i}"), "--json"],
            &log,
        );
        running.push((child, log));
    }
    let n4 = f.start_node("n4");
    f.nodes.push(n4);
    f.add_nodes(&["n4".to_string()], None);
    etcd.layout(&["apply"]);
    for (mut child, log) in running {
        let status = wait_with_deadline(&mut child, Duration::from_secs(300)).expect("backup ends");
        assert!(
            status.success(),
            "{}",
            fs::read_to_string(log.join("stderr")).unwrap_or_default()
        );
    }
    let status = etcd.wait_healthy(Duration::from_secs(180));
    assert_eq!(status["under_replicated"], 0);
    // Rendezvous: the new node takes R/(N+1) of the replicas, and only it
    // gains any, so exactly its partitions moved.
    let ideal = f64::from(cairn_proto::cluster::PARTITIONS) * 2.0 / 4.0;
    let moved = node_status(&status, "n4")["moves_done"].as_f64().unwrap();
    assert!(
        (moved - ideal).abs() <= ideal * 0.1,
        "{moved} moved, ideal {ideal}"
    );
    assert_eq!(status["moves_done"].as_f64().unwrap(), moved);
    for (i, src) in sources.iter().enumerate() {
        let again = fresh_client(&f, &format!("again{i}")).backup(&[src], &["--host", "x"]);
        assert_eq!(again.u("data_chunks_new"), 0);
    }
}

/// Registers `count` made-up chunk records straight through the index
/// (one call per 16,384), so a partition move has something to copy.
fn bulk_records(f: &ClusterFixture, repo_id: &str, count: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo: Vec<u8> = hex::decode(repo_id).unwrap();
    let addr = f.nodes[0].addr.clone();
    let token = f.token.clone();
    rt.block_on(async move {
        let mut c = IndexClient::connect(addr).await.unwrap();
        let map = c
            .cluster_map(authed(v1::ClusterMapRequest {}, &token, 0))
            .await
            .unwrap()
            .into_inner();
        let mut clients = Vec::new();
        for n in &map.nodes {
            clients.push(IndexClient::connect(n.address.clone()).await.unwrap());
        }
        let mut rng = XorShift::new(77);
        let mut made = 0;
        while made < count {
            let mut pack = [0u8; 32];
            rng.fill(&mut pack);
            let n = (count - made).min(16_384);
            let mut by_node: Vec<Vec<v1::ChunkEntry>> = vec![Vec::new(); map.nodes.len()];
            for k in 0..n {
                let mut id = [0u8; 32];
                rng.fill(&mut id);
                let p =
                    cairn_proto::cluster::partition_of(&cairn_chunk_store::ChunkId::from_bytes(id));
                let entry = v1::ChunkEntry {
                    id: id.to_vec().into(),
                    offset: k as u64 * 1000,
                    stored_len: 1000,
                    raw_len: 900,
                    kind: 0,
                    compression: 0,
                };
                for &w in &map.replicas[p as usize].write {
                    by_node[w as usize].push(entry.clone());
                }
            }
            for (i, entries) in by_node.into_iter().enumerate() {
                clients[i]
                    .register_pack(authed(
                        v1::RegisterPackRequest {
                            repo_id: repo.clone().into(),
                            pack_id: pack.to_vec().into(),
                            entries,
                            ..Default::default()
                        },
                        &token,
                        map.epoch,
                    ))
                    .await
                    .unwrap();
            }
            made += n;
        }
    });
}

fn authed<T>(msg: T, token: &str, epoch: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if epoch > 0 {
        r.metadata_mut()
            .insert("cairn-layout-epoch", epoch.to_string().parse().unwrap());
    }
    r
}

fn progress_file(node_data: &Path) -> serde_json::Value {
    fs::read_to_string(node_data.join("sync.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// 3. A node killed halfway through a move resumes it where it stopped.
#[test]
fn a_node_killed_during_a_move_resumes_where_it_stopped() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let etcd = f.etcd.clone().unwrap();
    let repo_id = f.repo_id().to_string();
    bulk_records(&f, &repo_id, 400_000);
    let src = tree(&f.dir.join("src"), 10, 42);
    f.cairn.backup(&[&src], &[]);

    let n4 = f.start_node("n4");
    let data = n4.data.clone();
    f.nodes.push(n4);
    f.add_nodes(&["n4".to_string()], None);
    etcd.layout(&["apply"]);
    let total = (0..cairn_proto::cluster::PARTITIONS)
        .filter(|&p| {
            let four = ["n1", "n2", "n3", "n4"];
            let three = ["n1", "n2", "n3"];
            let now = cairn_proto::cluster::owners(&four, p, 2);
            let before = cairn_proto::cluster::owners(&three, p, 2);
            now.iter().any(|&i| four[i] == "n4") && before.len() == 2
        })
        .count() as u64;
    // Halfway: some partitions done, more to go.
    poll_until("the move is under way", Duration::from_secs(120), || {
        let done = progress_file(&data)["moves_done"].as_u64().unwrap_or(0);
        done >= total / 4
    });
    f.nodes[3].kill();
    let before = progress_file(&data);
    let done_before = before["moves_done"].as_u64().unwrap();
    let copied_before = before["records_copied"].as_u64().unwrap();
    assert!(
        done_before < total,
        "the move finished before the kill ({done_before} of {total})"
    );
    let (status, healthy) = etcd.status();
    assert!(!healthy, "{status}");

    f.nodes[3] = f.start_node("n4");
    let status = etcd.wait_healthy(Duration::from_secs(180));
    let after = progress_file(&data);
    // Every partition was finished exactly once: none started over.
    assert_eq!(after["moves_done"].as_u64().unwrap(), total);
    assert_eq!(
        node_status(&status, "n4")["moves_done"].as_u64().unwrap(),
        total
    );
    // About half the records of the three nodes' partitions went to n4
    // (R = 2 of 4): copied once, plus at most the batches in flight at
    // the kill.
    let copied = after["records_copied"].as_u64().unwrap();
    assert!(copied > copied_before);
    assert!(
        copied < 400_000 * 2 / 4 * 11 / 10 + 4 * 4096,
        "{copied} records copied for about {} held",
        400_000 / 2
    );
    let again = fresh_client(&f, "after").backup(&[&src], &["--host", "y"]);
    assert_eq!(again.u("data_chunks_new"), 0);
}

/// The peer secret, from etcd.
fn peer_secret(f: &ClusterFixture) -> Vec<u8> {
    peer_secret_of(f.etcd.as_ref().unwrap())
}

/// The peer secret of the cluster in `etcd`.
pub(crate) fn peer_secret_of(etcd: &crate::cluster::Etcd) -> Vec<u8> {
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.urls,
            "get",
            &format!("{}peer-secret", etcd.prefix),
            "--print-value-only",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout[..32].to_vec()
}

/// Per-partition hashes of one node's chunk records (4096 buckets);
/// `None` while the node cannot answer (it has not reached etcd yet).
pub(crate) fn partition_hashes(addr: &str, secret: &[u8], repo_id: &str) -> Option<Vec<Vec<u8>>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut r = tonic::Request::new(v1::RangeHashesRequest {
        repo_id: hex::decode(repo_id).unwrap().into(),
        table: v1::RecordTable::Chunks as i32,
        start: vec![0u8; 32].into(),
        end: Default::default(),
        buckets: cairn_proto::cluster::PARTITIONS,
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Peer {}", hex::encode(secret)).parse().unwrap(),
    );
    let addr = addr.to_string();
    let answer = rt.block_on(async move {
        PeerClient::connect(addr)
            .await
            .ok()?
            .range_hashes(r)
            .await
            .ok()
    })?;
    Some(
        answer
            .into_inner()
            .hashes
            .chunks(32)
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// 4. Missed writes: a node that was down while a backup ran is repaired
///    by anti-entropy, without any client reading what it missed.
#[test]
fn a_node_that_missed_writes_is_repaired_without_client_reads() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let first = tree(&f.dir.join("first"), 10, 1);
    f.cairn.backup(&[&first], &[]);
    f.nodes[0].stop();
    let missed = tree(&f.dir.join("missed"), 60, 900);
    f.cairn.backup(&[&missed], &["--host", "while-n1-was-down"]);
    let secret = peer_secret(&f);
    let repo_id = f.repo_id().to_string();
    let shared = |a: &str, b: &str| -> Vec<usize> {
        let nodes = ["n1", "n2", "n3"];
        (0..cairn_proto::cluster::PARTITIONS)
            .filter(|&p| {
                let o = cairn_proto::cluster::owners(&nodes, p, 2);
                let has = |id: &str| o.iter().any(|&i| nodes[i] == id);
                has(a) && has(b)
            })
            .map(|p| p as usize)
            .collect()
    };
    f.nodes[0] = f.start_node("n1");
    let requests_before = f.nodes[0].metric("cairn_index_requests_total");
    let n2 = partition_hashes(&f.nodes[1].addr, &secret, &repo_id).expect("n2 answers");
    let n3 = partition_hashes(&f.nodes[2].addr, &secret, &repo_id).expect("n3 answers");
    let differ = |n1: &[Vec<u8>]| -> usize {
        let with2 = shared("n1", "n2")
            .into_iter()
            .filter(|&p| n1[p] != n2[p])
            .count();
        let with3 = shared("n1", "n3")
            .into_iter()
            .filter(|&p| n1[p] != n3[p])
            .count();
        with2 + with3
    };
    // n1 missed records: it repairs some, and then holds what its peers hold.
    poll_until("anti-entropy repaired n1", Duration::from_secs(60), || {
        let repaired = f.nodes[0].metric("cairn_index_antientropy_repairs") > 0.0;
        let equal = partition_hashes(&f.nodes[0].addr, &secret, &repo_id)
            .is_some_and(|n1| differ(&n1) == 0);
        if !(repaired && equal) {
            std::thread::sleep(Duration::from_millis(200));
        }
        repaired && equal
    });
    // No client called n1 meanwhile.
    assert_eq!(
        f.nodes[0].metric("cairn_index_requests_total"),
        requests_before
    );
}

/// 6. Prune while partitions move either works or waits and says why;
///    it never condemns on a partial view.
#[test]
fn prune_during_a_move_keeps_every_snapshot_restorable() {
    let Some(mut f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let etcd = f.etcd.clone().unwrap();
    let keep = tree(&f.dir.join("keep"), 20, 300);
    let gone = tree(&f.dir.join("gone"), 20, 700);
    f.cairn.backup(&[&keep], &["--host", "keep"]);
    let doomed = f.cairn.backup(&[&gone], &["--host", "gone"]);
    f.cairn
        .run(["forget", &doomed.snapshot_id()])
        .expect_success();
    let repo_id = f.repo_id().to_string();
    bulk_records(&f, &repo_id, 100_000);

    let n4 = f.start_node("n4");
    f.nodes.push(n4);
    f.add_nodes(&["n4".to_string()], None);
    etcd.layout(&["apply"]);
    let prune = f
        .cairn
        .run(["prune", "--grace", "0s", "--clock-skew", "0s", "--json"]);
    let text = prune.all_text();
    assert!(
        prune.code == 0 || text.contains("index"),
        "prune neither ran nor said why: {text}"
    );
    etcd.wait_healthy(Duration::from_secs(180));
    restores_exactly(&f, "latest", &keep, "keep");
    let again = fresh_client(&f, "again").backup(&[&keep], &["--host", "z"]);
    assert_eq!(again.u("data_chunks_new"), 0);
    // What prune collected is not "known" anywhere: backing it up again
    // stores it again, and it restores.
    let back = fresh_client(&f, "back").backup(&[&gone], &["--host", "gone-again"]);
    restores_exactly(&f, &back.snapshot_id(), &gone, "gone-again");
    f.cairn.check_clean();
}
