//! Moving partitions: a node that owns a partition in the newest layout
//! version but not in the oldest streams it from a full replica (an owner
//! in the oldest version), repository by repository and table by table,
//! in key order and in batches, merging each batch by the replica merge
//! rule. After each batch the last key copied is saved
//! ([`super::progress`]), so a node killed during a move resumes there.
//! Every write made meanwhile reaches it too (it is in the partition's
//! write set from the epoch it streams under; see [`super`], "Epochs").
//! When every repository is copied the partition is caught up; the node
//! says so in etcd, and clients read from it once the map says so.
//!
//! A partition the node is in no write set of any more is dropped
//! ([`drop_unowned`]); before a fresh (not resumed) move, the node drops
//! whatever it held of the partition, so a copy left from an earlier
//! membership can never answer "known" for a chunk whose pack is gone.

use std::sync::Arc;
use std::time::Duration;

use cairn_chunk_store::RepoId;
use cairn_index::RecordTable;
use cairn_proto::cluster::{PARTITIONS, partition_range};

use super::layout::{View, bit};
use super::peer::Peer;
use super::progress::Resume;
use crate::node::Node;

/// Records per streamed batch.
const BATCH: u32 = 4096;
/// Partitions streamed at once.
const PARALLEL_MOVES: usize = 4;

/// Streams partitions in until `stop`.
pub async fn run(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let me = node.cluster.me().to_string();
    loop {
        if *stop.borrow() {
            return;
        }
        let layout = node.cluster.layout();
        let table = node.cluster.table();
        if let Err(e) = node.progress.follow(&layout, &me) {
            tracing::warn!("move progress: {e}");
        }
        // One placement and one read of the progress per pass.
        let view = View::new(&layout);
        let done = node.progress.published().caught_up;
        let todo: Vec<u32> = match &view {
            Some(view) => (0..PARTITIONS)
                .filter(|&p| view.must_stream(&me, p) && !bit(&done, p))
                .collect(),
            None => Vec::new(),
        };
        node.cluster
            .counters
            .moves_pending
            .store(todo.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let Some(view) = view.filter(|_| !todo.is_empty() && table.epoch > 0) else {
            tokio::select! {
                _ = node.cluster.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        // Moves that were interrupted go first; a few run at once.
        let mut order = todo;
        order.sort_by_key(|&p| node.progress.resume_point(p).is_none());
        let mut queue = order.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut paused = false;
        loop {
            while running.len() < PARALLEL_MOVES && !paused && !*stop.borrow() {
                let Some(p) = queue.next() else { break };
                if node.cluster.table().epoch != table.epoch {
                    break;
                }
                let sources: Vec<(String, String)> = view
                    .oldest_owners(p)
                    .iter()
                    .filter(|id| **id != me)
                    .filter_map(|id| view.oldest().nodes.iter().find(|n| n.id == *id))
                    .map(|n| (n.id.clone(), node.cluster.address_of(&n.id, &n.address)))
                    .collect();
                let (node, stop) = (node.clone(), stop.clone());
                let epoch = table.epoch;
                running.spawn(async move { (p, stream(&node, sources, epoch, p, stop).await) });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            match joined {
                Ok((p, Ok(true))) => {
                    if let Err(e) = node.progress.finished(p) {
                        tracing::warn!("move progress: {e}");
                        paused = true;
                        continue;
                    }
                    node.cluster
                        .counters
                        .moves_pending
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    node.cluster.changed.notify_waiters();
                }
                Ok((_, Ok(false))) => paused = true,
                Ok((p, Err(e))) => {
                    tracing::warn!(partition = p, "move paused: {e}");
                    paused = true;
                }
                Err(e) => {
                    tracing::warn!("move task failed: {e}");
                    paused = true;
                }
            }
        }
        if paused {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Streams partition `p` from a full replica; `Ok(false)` when stopped.
async fn stream(
    node: &Arc<Node>,
    sources: Vec<(String, String)>,
    epoch: u64,
    p: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<bool, String> {
    let secret = node
        .cluster
        .peer_secret()
        .ok_or("the peer secret is not known yet")?;
    let resume = node.progress.resume_point(p);
    if resume.is_none() {
        let n = node.clone();
        tokio::task::spawn_blocking(move || n.drop_partition(p))
            .await
            .map_err(|e| e.to_string())??;
    } else if let Some(r) = &resume {
        tracing::info!(
            partition = p,
            "resuming the move of partition {p} at repository {} table {} after key {}",
            r.repo,
            r.table,
            r.after
        );
    }
    let mut last = String::from("no owner to copy from");
    for (id, address) in sources {
        let peer = Peer::connect(&id, &address, &secret)?;
        match copy_from(node, &peer, epoch, p, resume.clone(), &mut stop).await {
            Ok(done) => {
                if done {
                    tracing::debug!(partition = p, from = %id, "partition caught up");
                }
                return Ok(done);
            }
            Err(e) => last = format!("{id}: {e}"),
        }
    }
    Err(last)
}

async fn copy_from(
    node: &Arc<Node>,
    peer: &Peer,
    epoch: u64,
    p: u32,
    resume: Option<Resume>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool, String> {
    let mut repos = peer
        .repositories()
        .await
        .map_err(|s| s.message().to_string())?;
    repos.sort_by_key(|r| r.to_hex());
    let (start, end) = partition_range(p);
    for repo in repos {
        let hex = repo.to_hex();
        if resume.as_ref().is_some_and(|r| hex < r.repo) {
            continue;
        }
        for (t, table) in RecordTable::ALL.into_iter().enumerate() {
            let mut after: Option<Vec<u8>> = None;
            if let Some(r) = resume.as_ref().filter(|r| r.repo == hex) {
                if t < r.table {
                    continue;
                }
                if t == r.table {
                    after = hex::decode(&r.after).ok().filter(|a| !a.is_empty());
                }
            }
            loop {
                if *stop.borrow() {
                    return Ok(false);
                }
                let (records, done) = peer
                    .read_range(
                        &repo,
                        table,
                        &start,
                        end.as_ref().map(|e| &e[..]),
                        after.as_deref(),
                        BATCH,
                        epoch,
                    )
                    .await
                    .map_err(|s| s.message().to_string())?;
                if let Some(lastrec) = records.last() {
                    let key = lastrec.key.clone();
                    let n = records.len() as u64;
                    merge(node, repo, p, table, records).await?;
                    node.progress.copied(
                        Resume {
                            partition: p,
                            repo: hex.clone(),
                            table: t,
                            after: hex::encode(&key),
                        },
                        n,
                    )?;
                    after = Some(key);
                }
                if done {
                    break;
                }
            }
        }
    }
    Ok(true)
}

/// Merges records from a peer into `repo`'s database; a partition that
/// changed gets a new filter epoch.
pub async fn merge(
    node: &Arc<Node>,
    repo: RepoId,
    p: u32,
    table: RecordTable,
    records: Vec<cairn_index::RawRecord>,
) -> Result<cairn_index::MergeOutcome, String> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let tenant = n.tenant(&repo).map_err(|e| e.to_string())?;
        let out = tenant
            .engine
            .merge_records(table, &records)
            .map_err(|e| e.to_string())?;
        if out.added + out.updated > 0 {
            tenant.epochs.bump(p);
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Drops every partition whose write set does not include this node, in
/// every repository; returns how many partition copies went. Does nothing
/// before a layout exists.
pub fn drop_unowned(node: &Node) -> Result<usize, String> {
    let table = node.cluster.table();
    if table.nodes.is_empty() {
        return Ok(0);
    }
    let mine = table.writes_to(node.cluster.me());
    let mut dropped = 0;
    for p in (0..PARTITIONS).filter(|&p| !mine[p as usize]) {
        dropped += node.drop_partition(p)?;
    }
    node.cluster
        .counters
        .partitions_dropped
        .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(dropped)
}
