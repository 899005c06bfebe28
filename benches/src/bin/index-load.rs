//! Load for an index cluster (`benches/cluster/run.sh`): registers made-up
//! chunk records and looks them up in batches, as many clients would,
//! routed by the cluster map; prints one JSON line of rates.
//!
//!   index-load register|lookup --index URL --token T --repo HEX
//!              --records N [--seed S] [--parallel P]
//!
//! `unknown` in the output: for lookups, fingerprints answered unknown; for
//! registrations, record replicas a node did not take (it was down).
//!
//! Records are derived from the seed, so a lookup run asks exactly about
//! what a register run with the same seed wrote.

use std::time::Instant;

use cairn_proto::cluster::partition_of;
use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;
use tonic::transport::Channel;

/// Records per RegisterPack call.
const REGISTER_BATCH: usize = 16_384;
/// Fingerprints per UnknownChunks call.
const LOOKUP_BATCH: usize = 4096;

struct Args {
    mode: String,
    index: String,
    token: String,
    repo: Vec<u8>,
    records: usize,
    seed: u64,
    parallel: usize,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or("register or lookup")?;
    let mut a = Args {
        mode,
        index: String::new(),
        token: String::new(),
        repo: Vec::new(),
        records: 0,
        seed: 1,
        parallel: 4,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--index" => a.index = value.clone(),
            "--token" => a.token = value.clone(),
            "--repo" => a.repo = hex_decode(&value)?,
            "--records" => a.records = number()? as usize,
            "--seed" => a.seed = number()?,
            "--parallel" => a.parallel = number()?.max(1) as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("x"), 16).map_err(|e| e.to_string()))
        .collect()
}

/// The `i`-th id of a seed (keyed BLAKE3: uniform, like real fingerprints).
fn id(seed: u64, i: usize) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    *blake3::keyed_hash(&key, &(i as u64).to_le_bytes()).as_bytes()
}

fn request<T>(msg: T, token: &str, epoch: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    if epoch > 0
        && let Ok(v) = epoch.to_string().parse()
    {
        r.metadata_mut().insert("cairn-layout-epoch", v);
    }
    r
}

struct Map {
    clients: Vec<IndexClient<Channel>>,
    replicas: Vec<v1::PartitionReplicas>,
    epoch: u64,
}

async fn map(a: &Args) -> Result<Map, String> {
    let mut seed = IndexClient::connect(a.index.clone())
        .await
        .map_err(|e| format!("{}: {e}", a.index))?;
    let m = seed
        .cluster_map(request(v1::ClusterMapRequest {}, &a.token, 0))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut clients = Vec::new();
    for n in &m.nodes {
        let address = if n.address.is_empty() {
            a.index.clone()
        } else {
            n.address.clone()
        };
        // Lazily: a node that is down fails its calls, not the run.
        let channel = tonic::transport::Endpoint::from_shared(address)
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(1))
            .connect_lazy();
        clients.push(
            IndexClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    }
    let replicas = if m.replicas.is_empty() {
        vec![
            v1::PartitionReplicas {
                read: vec![0],
                write: vec![0]
            };
            cairn_proto::cluster::PARTITIONS as usize
        ]
    } else {
        m.replicas
    };
    Ok(Map {
        clients,
        replicas,
        epoch: m.epoch,
    })
}

/// Registers one batch on every replica; a replica that does not answer is
/// skipped (as a client does) and counted.
async fn register(a: &Args, m: &Map, batch: std::ops::Range<usize>) -> Result<usize, String> {
    let mut by_node: Vec<Vec<v1::ChunkEntry>> = vec![Vec::new(); m.clients.len()];
    for i in batch.clone() {
        let id = id(a.seed, i);
        let p = partition_of(&cairn_chunk_store::ChunkId::from_bytes(id));
        let entry = v1::ChunkEntry {
            id: id.to_vec().into(),
            offset: (i % 4096) as u64 * 4096,
            stored_len: 4096,
            raw_len: 4000,
            kind: 0,
            compression: 0,
        };
        for &w in &m.replicas[p as usize].write {
            by_node[w as usize].push(entry.clone());
        }
    }
    let pack = id(a.seed ^ 0x5eed, batch.start);
    let mut missed = 0;
    for (n, entries) in by_node.into_iter().enumerate() {
        if entries.is_empty() {
            continue;
        }
        let count = entries.len();
        let sent = m.clients[n]
            .clone()
            .register_pack(request(
                v1::RegisterPackRequest {
                    repo_id: a.repo.clone().into(),
                    pack_id: pack.to_vec().into(),
                    entries,
                    ..Default::default()
                },
                &a.token,
                m.epoch,
            ))
            .await;
        if sent.is_err() {
            missed += count;
        }
    }
    Ok(missed)
}

async fn lookup(a: &Args, m: &Map, batch: std::ops::Range<usize>) -> Result<usize, String> {
    let mut by_node: Vec<Vec<u8>> = vec![Vec::new(); m.clients.len()];
    for i in batch {
        let id = id(a.seed, i);
        let p = partition_of(&cairn_chunk_store::ChunkId::from_bytes(id));
        let first = m.replicas[p as usize].read.first().copied().unwrap_or(0);
        by_node[first as usize].extend_from_slice(&id);
    }
    let mut unknown = 0;
    for (n, ids) in by_node.into_iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        let count = ids.len() / 32;
        let r = m.clients[n]
            .clone()
            .unknown_chunks(request(
                v1::UnknownChunksRequest {
                    repo_id: a.repo.clone().into(),
                    ids: ids.into(),
                },
                &a.token,
                m.epoch,
            ))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        unknown += (0..count)
            .filter(|k| {
                r.unknown
                    .get(k / 8)
                    .is_some_and(|b| b & (1 << (k % 8)) != 0)
            })
            .count();
    }
    Ok(unknown)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = args()?;
    let m = map(&a).await?;
    let batch = if a.mode == "register" {
        REGISTER_BATCH
    } else {
        LOOKUP_BATCH
    };
    let ranges: Vec<std::ops::Range<usize>> = (0..a.records)
        .step_by(batch)
        .map(|s| s..(s + batch).min(a.records))
        .collect();
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let unknown = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(r) = ranges.get(k) else {
                return Ok::<(), String>(());
            };
            if a.mode == "register" {
                let missed = register(&a, &m, r.clone()).await?;
                unknown.fetch_add(missed, std::sync::atomic::Ordering::Relaxed);
            } else {
                let u = lookup(&a, &m, r.clone()).await?;
                unknown.fetch_add(u, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    let workers: Vec<_> = (0..a.parallel).map(|_| worker()).collect();
    for r in futures_util::future::join_all(workers).await {
        r?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{}\",\"records\":{},\"seconds\":{:.3},\"per_second\":{:.0},\"unknown\":{},\"nodes\":{}}}",
        a.mode,
        a.records,
        secs,
        a.records as f64 / secs,
        unknown.load(std::sync::atomic::Ordering::Relaxed),
        m.clients.len()
    );
    Ok(())
}
