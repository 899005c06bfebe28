//! Anti-entropy: replicas of a partition compare hashes of their records
//! and pull what differs, so a node that missed writes (it was down, or
//! cut off) is whole again without any client reading the missing chunks.
//!
//! Each round, for every peer it shares partitions with, a node asks for
//! the peer's per-partition hashes of each table (one call per repository
//! and table: 4096 buckets, one per partition), compares them with its
//! own, splits each differing partition it shares with the peer into 16
//! buckets, and reads the records of each differing bucket from the peer,
//! merging them by the replica merge rule (`cairn_index`, `engine::replica`:
//! repair neither revives nor condemns). Pulling only, each node repairs
//! itself; the peer repairs itself in its own round. Rounds run every
//! `antientropy_secs` and whenever a peer registers again, and only while
//! no partition moves (moves copy whole partitions anyway).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_chunk_store::RepoId;
use cairn_index::{RecordTable, bucket_range};
use cairn_proto::cluster::{PARTITIONS, partition_range};

use super::layout::View;
use super::mover::merge;
use super::peer::{MAX_RANGE_RECORDS, Peer};
use crate::node::Node;

/// Sub-buckets a differing partition is split into.
const SUB_BUCKETS: u32 = 16;

/// Runs rounds until `stop`.
pub async fn run(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = Duration::from_secs(node.config.antientropy_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = node.cluster.peer_returned.notified() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        match round(&node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("anti-entropy repaired {n} records"),
            Err(e) => tracing::warn!("anti-entropy round stopped: {e}"),
        }
    }
}

/// One round over every partition this node owns; returns the records
/// repaired.
pub async fn round(node: &Arc<Node>) -> Result<u64, String> {
    let layout = node.cluster.layout();
    let Some(view) = View::new(&layout) else {
        return Ok(0);
    };
    if layout.history.len() != 1 {
        return Ok(0);
    }
    let secret = node
        .cluster
        .peer_secret()
        .ok_or("the peer secret is not known yet")?;
    let me = node.cluster.me();
    let mut shared: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let o = view.newest_owners(p).to_vec();
        if o.contains(&me) {
            for peer in o.into_iter().filter(|n| *n != me) {
                shared.entry(peer).or_default().push(p);
            }
        }
    }
    let mut repaired = 0;
    // This node's hashes, computed once per round and compared with every peer's.
    let mut mine = HashMap::new();
    for (peer_id, parts) in shared {
        let Some(address) = view.newest().nodes.iter().find(|n| n.id == peer_id) else {
            continue;
        };
        let address = node.cluster.address_of(peer_id, &address.address);
        let peer = Peer::connect(peer_id, &address, &secret)?;
        match with_peer(node, &peer, &parts, &mut mine).await {
            Ok(n) => repaired += n,
            Err(e) => tracing::debug!(peer = peer_id, "anti-entropy skipped a peer: {e}"),
        }
    }
    node.cluster
        .counters
        .antientropy_rounds
        .fetch_add(1, Ordering::Relaxed);
    Ok(repaired)
}

async fn hashes_here(
    node: &Arc<Node>,
    repo: RepoId,
    table: RecordTable,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    buckets: u32,
) -> Result<Vec<([u8; 32], u64)>, String> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let tenant = n.tenant(&repo).map_err(|e| e.to_string())?;
        let h = tenant
            .engine
            .range_hashes(table, &start, end.as_deref(), buckets)
            .map_err(|e| e.to_string())?;
        Ok(h.into_iter().map(|b| (b.hash, b.count)).collect())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Hashes of one table of one repository, per partition.
type Hashes = Vec<([u8; 32], u64)>;

async fn with_peer(
    node: &Arc<Node>,
    peer: &Peer,
    parts: &[u32],
    mine: &mut HashMap<(RepoId, usize), Hashes>,
) -> Result<u64, String> {
    let msg = |s: tonic::Status| s.message().to_string();
    let mut repaired = 0;
    for repo in peer.repositories().await.map_err(msg)? {
        for (t, table) in RecordTable::ALL.into_iter().enumerate() {
            let theirs = peer
                .range_hashes(&repo, table, &[0u8; 32], None, PARTITIONS)
                .await
                .map_err(msg)?;
            let here = match mine.entry((repo, t)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(hashes_here(node, repo, table, vec![0u8; 32], None, PARTITIONS).await?)
                }
            };
            let differing: Vec<u32> = parts
                .iter()
                .copied()
                .filter(|&p| {
                    let t = theirs.get(p as usize);
                    t.is_some_and(|t| t.1 > 0 && Some(t) != here.get(p as usize))
                })
                .collect();
            // A few partitions at once: each is a handful of round trips.
            let mut tasks = tokio::task::JoinSet::new();
            for p in differing {
                let (node, peer) = (node.clone(), peer.clone());
                tasks.spawn(async move { repair_partition(&node, &peer, repo, table, p).await });
                while tasks.len() >= PARALLEL_PARTITIONS {
                    if let Some(r) = tasks.join_next().await {
                        repaired += r.map_err(|e| e.to_string())??;
                    }
                }
            }
            while let Some(r) = tasks.join_next().await {
                repaired += r.map_err(|e| e.to_string())??;
            }
        }
    }
    Ok(repaired)
}

/// Partitions repaired at once.
const PARALLEL_PARTITIONS: usize = 4;

/// Pulls what differs in one partition: the buckets whose hashes differ,
/// or the whole partition when most of them do.
async fn repair_partition(
    node: &Arc<Node>,
    peer: &Peer,
    repo: RepoId,
    table: RecordTable,
    p: u32,
) -> Result<u64, String> {
    let msg = |s: tonic::Status| s.message().to_string();
    let epoch = node.cluster.table().epoch;
    let (start, end) = partition_range(p);
    let end = end.map(|e| e.to_vec());
    let theirs = peer
        .range_hashes(&repo, table, &start, end.as_deref(), SUB_BUCKETS)
        .await
        .map_err(msg)?;
    let mine = hashes_here(node, repo, table, start.to_vec(), end.clone(), SUB_BUCKETS).await?;
    let differing: Vec<u32> = (0..SUB_BUCKETS)
        .filter(|&b| {
            let (t, m) = (theirs.get(b as usize), mine.get(b as usize));
            t.is_some_and(|t| t.1 > 0) && t != m
        })
        .collect();
    let ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = if differing.len() * 2 > SUB_BUCKETS as usize {
        vec![(start.to_vec(), end.clone())]
    } else {
        differing
            .iter()
            .map(|&b| {
                let (lo, hi) = bucket_range(&start, end.as_deref(), SUB_BUCKETS, b);
                (lo.to_vec(), hi.map(|h| h.to_vec()))
            })
            .collect()
    };
    let mut repaired = 0;
    for (lo, hi) in ranges {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (records, done) = peer
                .read_range(
                    &repo,
                    table,
                    &lo,
                    hi.as_deref(),
                    after.as_deref(),
                    MAX_RANGE_RECORDS,
                    epoch,
                )
                .await
                .map_err(msg)?;
            after = records.last().map(|r| r.key.clone());
            let out = merge(node, repo, p, table, records).await?;
            let n = out.added + out.updated;
            repaired += n;
            // Counted as they land, so the count never lags the data.
            node.progress.repaired(n);
            node.cluster
                .counters
                .repairs
                .fetch_add(n, Ordering::Relaxed);
            if done || after.is_none() {
                break;
            }
        }
    }
    Ok(repaired)
}

/// Who is registered, to notice a node coming back.
pub fn returned(before: &HashMap<String, i64>, now: &HashMap<String, i64>) -> bool {
    now.iter()
        .any(|(id, started)| before.get(id).is_none_or(|b| b != started))
}
