#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on any setup failure
//! Batched lookups per second: one `cairn-index` node over gRPC on
//! loopback, next to raw RocksDB `MultiGet` on the same database, in the
//! same run.
//!
//! `cargo bench -p cairn-benches --bench index_lookup`
//! (`CAIRN_BENCH_FINGERPRINTS`, default 10 000 000; `CAIRN_BENCH_SECONDS`, default 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, PackEntry};
use cairn_chunk_store::{ChunkId, PackId, RepoId};
use cairn_index::DedupIndex;
use cairn_index_server::access::add_token;
use cairn_index_server::node::{Node, NodeConfig};
use cairn_proto::convert::pack_ids;
use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;

const BATCH: usize = 4096;

fn id(i: u64) -> ChunkId {
    ChunkId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs an engine call to completion on this thread: the embedded engine
/// never waits inside its async methods, so this measures RocksDB alone.
fn engine_call<F: std::future::Future>(call: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(call)
}

fn main() {
    let total = env_u64("CAIRN_BENCH_FINGERPRINTS", 10_000_000);
    let seconds = Duration::from_secs(env_u64("CAIRN_BENCH_SECONDS", 10));
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = RepoId::random();
    let token = add_token(&dir.path().join("tokens.toml"), &repo).expect("token");
    let node = Arc::new(
        Node::new(NodeConfig {
            max_in_flight: 1024,
            request_timeout_secs: 60,
            ..NodeConfig::new(
                "bench",
                dir.path().join("data"),
                dir.path().join("tokens.toml"),
            )
        })
        .expect("node"),
    );
    let tenant = node.tenant(&repo).expect("tenant");

    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        let pack = PackId::random();
        let n = (total - i).min(BATCH as u64);
        let entries: Vec<PackEntry> = (i..i + n)
            .map(|k| PackEntry {
                id: id(k),
                location: BlobLocation {
                    pack,
                    offset: k,
                    stored_len: 1000,
                    raw_len: 2000,
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                },
            })
            .collect();
        engine_call(tenant.engine.register_pack(pack, &entries)).expect("register");
        i += n;
    }
    engine_call(tenant.engine.flush()).expect("flush");
    println!(
        "loaded {total} fingerprints in {:.1}s",
        start.elapsed().as_secs_f64()
    );

    let batch = move |round: u64| -> Vec<ChunkId> {
        (0..BATCH as u64)
            .map(|k| {
                id((round
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(k * 7919))
                    % total)
            })
            .collect()
    };

    // Raw MultiGet, one thread per core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let raw = {
        let deadline = Instant::now() + seconds;
        let counts: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let tenant = tenant.clone();
                    s.spawn(move || {
                        let mut n = 0u64;
                        let mut round = t as u64 * 1_000_000;
                        while Instant::now() < deadline {
                            let ids = batch(round);
                            let found = engine_call(tenant.engine.lookup(&ids)).expect("lookup");
                            assert!(found.iter().all(Option::is_some));
                            n += ids.len() as u64;
                            round += 1;
                        }
                        n
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        counts.iter().sum::<u64>() as f64 / seconds.as_secs_f64()
    };
    println!("raw RocksDB MultiGet: {raw:.0} lookups/s ({threads} threads)");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (locate, unknown) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(cairn_index_server::server::serve(
            node.clone(),
            listener,
            None,
            async {
                let _ = stop_rx.await;
            },
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut results = Vec::new();
        for method in ["Locate", "UnknownChunks"] {
            let deadline = Instant::now() + seconds;
            let mut tasks = Vec::new();
            for t in 0..(threads * 4) {
                let mut client =
                    IndexClient::new(channel.clone()).max_decoding_message_size(64 << 20);
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut round = 50_000_000 + t as u64 * 1_000_000;
                    while Instant::now() < deadline {
                        let ids = pack_ids(&batch(round));
                        let auth: tonic::metadata::MetadataValue<_> =
                            format!("Bearer {token}").parse().expect("header");
                        if method == "Locate" {
                            let mut req = tonic::Request::new(v1::LocateRequest {
                                repo_id: repo.as_bytes().to_vec().into(),
                                ids: ids.into(),
                            });
                            req.metadata_mut().insert("authorization", auth);
                            let r = client.locate(req).await.expect("locate").into_inner();
                            assert!(r.locations.iter().all(|l| l.found));
                        } else {
                            let mut req = tonic::Request::new(v1::UnknownChunksRequest {
                                repo_id: repo.as_bytes().to_vec().into(),
                                ids: ids.into(),
                            });
                            req.metadata_mut().insert("authorization", auth);
                            let r = client
                                .unknown_chunks(req)
                                .await
                                .expect("unknown")
                                .into_inner();
                            assert!(r.unknown.iter().all(|b| *b == 0));
                        }
                        n += BATCH as u64;
                        round += 1;
                    }
                    n
                }));
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.expect("task");
            }
            results.push(n as f64 / seconds.as_secs_f64());
        }
        let _ = stop_tx.send(());
        let _ = server.await;
        (results[0], results[1])
    });
    println!(
        "gRPC Locate:          {locate:.0} lookups/s ({:.2} of raw)",
        locate / raw
    );
    println!(
        "gRPC UnknownChunks:   {unknown:.0} lookups/s ({:.2} of raw; also refreshes last-seen)",
        unknown / raw
    );
}
