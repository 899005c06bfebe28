//! Deduplication through the cluster: which chunks are unknown (the filter
//! first, then the replicas), registering packs on every replica, and
//! locating chunks.

use std::collections::HashMap;

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId};
use cairn_index::{ChunkRecord, DedupIndex, IndexError, IndexStats, RegisterOutcome};
use cairn_proto::MAX_BATCH;
use cairn_proto::cluster::partition_of;
use cairn_proto::convert::{entry_to_wire, from_bitmap, pack_ids};
use cairn_proto::v1;

use super::RemoteIndex;
use super::channel::authed;

#[async_trait]
impl DedupIndex for RemoteIndex {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            // A chunk is known if any replica knows it. "Unknown" from one
            // replica is confirmed with the next (it may have missed writes while
            // down); with the filter in front, truly new chunks are rarely asked.
            let mut unknown = vec![true; ids.len()];
            let ask: Vec<usize> = (0..ids.len())
                .filter(|&i| !self.certainly_new(&ids[i]))
                .collect();
            let mut tried: Vec<Vec<usize>> = vec![Vec::new(); ask.len()];
            let mut said_unknown: Vec<Vec<usize>> = vec![Vec::new(); ask.len()];
            let mut knower: HashMap<ChunkId, usize> = HashMap::new();
            let mut pending: Vec<usize> = (0..ask.len()).collect();
            while !pending.is_empty() {
                let subset: Vec<ChunkId> = pending.iter().map(|&k| ids[ask[k]]).collect();
                let sub_tried: Vec<Vec<usize>> =
                    pending.iter().map(|&k| tried[k].clone()).collect();
                let mut next = Vec::new();
                for (node, positions) in self.route(&subset, &sub_tried) {
                    let Some(n) = node else {
                        // Every replica tried: unknown (or unreachable) everywhere.
                        if positions
                            .iter()
                            .any(|&j| said_unknown[pending[j]].is_empty())
                        {
                            self.warn_once("no replica of some index partitions answered");
                        }
                        continue;
                    };
                    let conn = &cluster.nodes[n];
                    for batch in positions.chunks(MAX_BATCH) {
                        let batch_ids: Vec<ChunkId> = batch.iter().map(|&j| subset[j]).collect();
                        self.calls.fetch_add(1, Ordering::Relaxed);
                        let request = v1::UnknownChunksRequest {
                            repo_id: self.repo_bytes(),
                            ids: pack_ids(&batch_ids).into(),
                        };
                        let answer = conn
                            .client
                            .clone()
                            .unknown_chunks(authed(request, &self.token, cluster.epoch))
                            .await;
                        match answer {
                            Ok(r) => {
                                conn.succeeded();
                                let bits = from_bitmap(&r.into_inner().unknown, batch.len());
                                for (&j, is_unknown) in batch.iter().zip(bits) {
                                    let k = pending[j];
                                    tried[k].push(n);
                                    if is_unknown {
                                        said_unknown[k].push(n);
                                        next.push(k);
                                    } else {
                                        unknown[ask[k]] = false;
                                        knower.insert(ids[ask[k]], n);
                                    }
                                }
                            }
                            Err(s) => {
                                conn.failed("UnknownChunks", &s);
                                for &j in batch {
                                    tried[pending[j]].push(n);
                                    next.push(pending[j]);
                                }
                            }
                        }
                    }
                }
                pending = next;
            }
            let mut stale: HashMap<usize, Vec<ChunkId>> = HashMap::new();
            for (k, nodes) in said_unknown.iter().enumerate() {
                if !unknown[ask[k]] {
                    for &n in nodes {
                        stale.entry(n).or_default().push(ids[ask[k]]);
                    }
                }
            }
            if !stale.is_empty() {
                self.repair(stale, knower).await;
            }
            Ok(unknown)
        })
        .await
    }

    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            // Every replica of every partition gets its entries.
            let mut by_node: HashMap<usize, Vec<v1::ChunkEntry>> = HashMap::new();
            for e in entries {
                for n in cluster.writers(partition_of(&e.id)) {
                    by_node.entry(n).or_default().push(entry_to_wire(e));
                }
            }
            let mut outcome = RegisterOutcome::default();
            let mut any_ok = false;
            for (n, wire) in by_node {
                let conn = &cluster.nodes[n];
                let request = v1::RegisterPackRequest {
                    repo_id: self.repo_bytes(),
                    pack_id: pack.as_bytes().to_vec().into(),
                    entries: wire,
                    ..Default::default()
                };
                match conn
                    .client
                    .clone()
                    .register_pack(authed(request, &self.token, cluster.epoch))
                    .await
                {
                    Ok(r) => {
                        conn.succeeded();
                        any_ok = true;
                        let r = r.into_inner();
                        outcome.new += r.new_chunks as usize;
                        outcome.duplicates += r.duplicates as usize;
                    }
                    Err(s) => {
                        conn.failed("RegisterPack", &s);
                        self.warn_once(&format!(
                            "index node {} did not record pack {}",
                            conn.id,
                            pack.short()
                        ));
                    }
                }
            }
            if !any_ok && !entries.is_empty() {
                self.warn_once("no index node recorded a pack");
            }
            Ok(outcome)
        })
        .await
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let mut out = vec![None; ids.len()];
            let tried = vec![Vec::new(); ids.len()];
            let asks: Vec<(usize, Vec<usize>)> = self
                .route(ids, &tried)
                .into_iter()
                .filter_map(|(node, positions)| node.map(|n| (n, positions)))
                .collect();
            // Every node asked at once: a restore's lookups wait for the
            // slowest node, not for the sum of them.
            let answers = futures_util::future::join_all(asks.iter().map(|(n, positions)| {
                let wanted: Vec<ChunkId> = positions.iter().map(|&k| ids[k]).collect();
                async move { self.locate_on(*n, &wanted).await }
            }))
            .await;
            for ((n, positions), answer) in asks.iter().zip(answers) {
                match answer {
                    Ok(records) => {
                        cluster.nodes[*n].succeeded();
                        for (&k, rec) in positions.iter().zip(records) {
                            out[k] = rec;
                        }
                    }
                    // The caller falls back to pack trailers.
                    Err(s) => cluster.nodes[*n].failed("Locate", &s),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn clear(&self) -> Result<(), IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            for conn in &cluster.nodes {
                let request = v1::ClearRepositoryRequest {
                    repo_id: self.repo_bytes(),
                };
                conn.client
                    .clone()
                    .clear_repository(authed(request, &self.token, cluster.epoch))
                    .await
                    .map_err(|s| super::call_error(&conn.id, "ClearRepository", &s))?;
            }
            self.filter
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), IndexError> {
        Ok(())
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats::default())
    }
}
