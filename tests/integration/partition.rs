//! A network partition, made with a network namespace: one index node is
//! cut off from the other nodes, from etcd and from the clients while
//! backups run, then the link comes back.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::{Etcd, IndexNode, add_token, index_binary};
use crate::common::*;
use crate::heal::{partition_hashes, peer_secret_of};

/// A network namespace joined to this one by a veth pair: this side is
/// `HOST`, the namespace's side `INSIDE`. Removed on drop.
struct Netns {
    name: String,
    link: String,
    host: String,
    inside: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Self {
        let tag = &random_marker()[..6];
        let octet = u8::from_str_radix(&tag[..2], 16).unwrap_or(7);
        let name = format!("cairn-{tag}");
        let link = format!("cn{tag}");
        let peer = format!("cp{tag}");
        let (host, inside) = (format!("10.213.{octet}.1"), format!("10.213.{octet}.2"));
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            link: link.clone(),
            host: host.clone(),
            inside: inside.clone(),
        };
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &peer,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An etcd of this test's own, reachable from the namespace too.
struct OwnEtcd {
    child: Child,
    urls: String,
}

impl OwnEtcd {
    fn start(dir: &Path, host: &str) -> Self {
        let port = |ip: &str| {
            std::net::TcpListener::bind(format!("{ip}:0"))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (port(host), port("127.0.0.1"));
        let urls = format!("http://{host}:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--data-dir", s(&dir.join("etcd"))])
            .args([
                "--listen-client-urls",
                &urls,
                "--advertise-client-urls",
                &urls,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        let addr = format!("{host}:{client}");
        poll_until("etcd listens", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        Self { child, urls }
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn can_make_namespaces() -> bool {
    let ok = running_as_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "the partition test needs root and ip(8) under scripts/test-all.sh"
        );
        eprintln!("skipped the partition test: needs root and ip(8) (network namespaces)");
    }
    ok
}

/// 5. A node cut off from everyone while backups run: the backups go on
///    through the other replicas, nothing they reference is missing, and
///    the node rejoins and repairs what it missed.
#[test]
fn a_node_cut_off_by_a_network_partition_rejoins_and_repairs() {
    // The etcd binary: installed where the test script starts etcd.
    if service_var("CAIRN_TEST_ETCD", "etcd").is_none() || !can_make_namespaces() {
        return;
    }
    let (_d, dir) = tempdir();
    let ns = Netns::new();
    let own = OwnEtcd::start(&dir, &ns.host);
    let etcd = Etcd {
        urls: own.urls.clone(),
        prefix: format!("/partition-{}/", random_marker()),
    };
    let cairn = Cairn::new(dir.join("repo")).with_env("XDG_CACHE_HOME", s(&dir.join("cache")));
    let repo_id = cairn.init_repo_id();
    let token = add_token(&dir, &repo_id);
    let mut flags = etcd.flags();
    flags.extend(["--antientropy-secs".into(), "2".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let start = |id: &str, inside: bool| {
        let (command, ip) = if inside {
            (ns.command(&index_binary()), ns.inside.as_str())
        } else {
            (Command::new(index_binary()), ns.host.as_str())
        };
        IndexNode::start_at(command, ip, &dir, id, dir.join(id), &flags, &[])
    };
    let mut nodes = vec![start("n1", false), start("n2", false), start("n3", true)];
    poll_until("three nodes registered", Duration::from_secs(30), || {
        let up = etcd.status().0["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["up"] == true).count());
        if up < 3 {
            std::thread::sleep(Duration::from_millis(50));
        }
        up == 3
    });
    etcd.layout(&["add", "n1", "n2", "n3", "--replication", "2"]);
    etcd.layout(&["apply"]);
    etcd.wait_healthy(Duration::from_secs(60));
    let urls: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let client = cairn
        .with_env("CAIRN_INDEX", &urls.join(","))
        .with_env("CAIRN_INDEX_TOKEN", &token);
    let tree = |name: &str, seed: u64| {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        for i in 0..25 {
            write_random_file(&d.join(format!("f{i}")), 100 * 1024, seed + i);
        }
        d
    };
    let before = tree("before", 10);
    assert_eq!(client.backup(&[&before], &[]).u("data_chunks_new"), 25);

    ns.cut();
    // etcd sees n3 go once its registration lease runs out.
    poll_until("etcd sees n3 down", Duration::from_secs(40), || {
        let (status, healthy) = etcd.status();
        let down = !healthy
            && status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "n3" && n["up"] == false);
        if !down {
            std::thread::sleep(Duration::from_millis(200));
        }
        down
    });
    let during = tree("during", 500);
    let stats = client.backup(&[&during], &["--host", "during"]);
    assert_eq!(stats.u("data_chunks_new"), 25);
    // Known data is still known through the replicas that answer.
    let again = client.backup(&[&before], &["--host", "again"]);
    assert_eq!(again.u("data_chunks_new"), 0);
    client.check_clean();

    ns.heal();
    let healthy = etcd.wait_healthy(Duration::from_secs(60));
    assert_eq!(healthy["under_replicated"], 0);
    // n3 repairs what it missed from its peers, without any client read.
    let secret = peer_secret_of(&etcd);
    let owners = |p: u32| {
        let ids = ["n1", "n2", "n3"];
        cairn_proto::cluster::owners(&ids, p, 2)
            .into_iter()
            .map(|i| ids[i])
            .collect::<Vec<_>>()
    };
    poll_until("n3 repaired", Duration::from_secs(60), || {
        let hashes = |n: &IndexNode| partition_hashes(&n.addr, &secret, &repo_id);
        let (Some(n3), Some(n1), Some(n2)) =
            (hashes(&nodes[2]), hashes(&nodes[0]), hashes(&nodes[1]))
        else {
            std::thread::sleep(Duration::from_millis(200));
            return false;
        };
        let others = [n1, n2];
        let equal = (0..cairn_proto::cluster::PARTITIONS).all(|p| {
            let o = owners(p);
            !o.contains(&"n3")
                || o.iter()
                    .filter(|id| **id != "n3")
                    .all(|id| others[if *id == "n1" { 0 } else { 1 }][p as usize] == n3[p as usize])
        });
        if !equal {
            std::thread::sleep(Duration::from_millis(200));
        }
        equal
    });
    assert!(nodes[2].metric("cairn_index_antientropy_repairs") > 0.0);
    // Every snapshot restores exactly.
    for (name, src) in [("during", &during), ("before", &before)] {
        let snap = client
            .snapshots()
            .into_iter()
            .find(|s| s["paths"].to_string().contains(name))
            .unwrap();
        let target = dir.join(format!("restore-{name}"));
        client
            .restore(snap["id"].as_str().unwrap(), &target)
            .expect_success();
        assert!(compare_trees(src, &restored(&target, src), Compare::CONTENT).is_empty());
    }
    for n in &mut nodes {
        n.kill();
    }
}
