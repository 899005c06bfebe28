//! The downloadable filter: per partition and per replica, versioned by
//! epoch so a client fetches only what changed, and cached on disk between
//! runs. A filter negative means "certainly new": no question to the index.

use std::collections::HashMap;

use cairn_chunk_store::ChunkId;
use cairn_index::IndexError;
use cairn_proto::cluster::{PARTITIONS, partition_of};
use cairn_proto::v1;
use prost::Message;

use super::RemoteIndex;
use super::channel::authed;

/// Magic and version of the client's filter cache file.
const FILTER_CACHE_MAGIC: &[u8; 8] = b"CAIRNFLT";
const FILTER_CACHE_VERSION: u16 = 1;

/// A downloaded filter partition.
pub(super) struct FilterPartition {
    pub(super) epoch: u64,
    pub(super) bloom: Option<bloomfilter::Bloom<[u8]>>,
    pub(super) raw: v1::FilterPart,
}

impl FilterPartition {
    pub(super) fn from_wire(part: v1::FilterPart) -> Option<Self> {
        let bloom = if part.filter.is_empty() {
            None
        } else {
            Some(bloomfilter::Bloom::from_bytes(part.filter.to_vec()).ok()?)
        };
        Some(Self {
            epoch: part.epoch,
            bloom,
            raw: part,
        })
    }
}

impl RemoteIndex {
    /// Downloads, from every replica, the filter partitions that changed
    /// since the cached copy. Partitions of a replica that does not answer
    /// keep no filter (their chunks are then asked about).
    pub async fn refresh_filter(&self) -> Result<u64, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let mut by_node: HashMap<usize, Vec<u32>> = HashMap::new();
            for p in 0..PARTITIONS {
                for n in cluster.owners(p) {
                    if cluster.nodes[n].available() {
                        by_node.entry(n).or_default().push(p);
                    }
                }
            }
            let mut fetched = 0u64;
            for (n, partitions) in by_node {
                let node = &cluster.nodes[n];
                let known: Vec<v1::PartitionEpoch> = {
                    let f = self.filter.read().unwrap_or_else(|p| p.into_inner());
                    partitions
                        .iter()
                        .filter_map(|p| {
                            f.get(&(*p, node.id.clone())).map(|fp| v1::PartitionEpoch {
                                partition: *p,
                                epoch: fp.epoch,
                            })
                        })
                        .collect()
                };
                let request = v1::GetFilterRequest {
                    repo_id: self.repo_bytes(),
                    first_partition: 0,
                    last_partition: 0,
                    known,
                    partitions: partitions.clone(),
                };
                let mut stream = match node
                    .client
                    .clone()
                    .get_filter(authed(request, &self.token, cluster.epoch))
                    .await
                {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        node.failed("GetFilter", &s);
                        let mut f = self.filter.write().unwrap_or_else(|p| p.into_inner());
                        for p in &partitions {
                            f.remove(&(*p, node.id.clone()));
                        }
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(part)) => {
                            fetched += part.filter.len() as u64;
                            if let Some(fp) = FilterPartition::from_wire(part) {
                                self.filter
                                    .write()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert((fp.raw.partition, node.id.clone()), fp);
                            }
                        }
                        Ok(None) => {
                            node.succeeded();
                            break;
                        }
                        Err(s) => {
                            node.failed("GetFilter", &s);
                            break;
                        }
                    }
                }
            }
            self.save_filter_cache();
            Ok(fetched)
        })
        .await
    }

    /// True if every replica's filter proves `id` is new (no RPC needed).
    pub(super) fn certainly_new(&self, id: &ChunkId) -> bool {
        let cluster = self.cluster();
        let p = partition_of(id);
        let f = self.filter.read().unwrap_or_else(|p| p.into_inner());
        cluster
            .owners(p)
            .into_iter()
            .all(|n| match f.get(&(p, cluster.nodes[n].id.clone())) {
                Some(FilterPartition { bloom: None, .. }) => true,
                Some(FilterPartition { bloom: Some(b), .. }) => !b.check(id.as_bytes().as_slice()),
                None => false,
            })
    }

    pub(super) fn load_filter_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        if bytes.len() < 10
            || &bytes[..8] != FILTER_CACHE_MAGIC
            || bytes[8..10] != FILTER_CACHE_VERSION.to_le_bytes()
        {
            return;
        }
        let Ok(cache) = FilterCacheRecord::decode(&bytes[10..]) else {
            return;
        };
        let mut f = self.filter.write().unwrap_or_else(|p| p.into_inner());
        for entry in cache.entries {
            let Some(part) = entry.part else { continue };
            if let Some(fp) = FilterPartition::from_wire(part) {
                f.insert((fp.raw.partition, entry.node), fp);
            }
        }
    }

    pub(super) fn save_filter_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        let record = FilterCacheRecord {
            entries: self
                .filter
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|((_, node), p)| CachedFilter {
                    node: node.clone(),
                    part: Some(p.raw.clone()),
                })
                .collect(),
        };
        let mut bytes = FILTER_CACHE_MAGIC.to_vec();
        bytes.extend_from_slice(&FILTER_CACHE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&record.encode_to_vec());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// One cached filter partition and the node it came from.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct CachedFilter {
    #[prost(string, tag = "1")]
    pub(super) node: String,
    #[prost(message, optional, tag = "2")]
    pub(super) part: Option<v1::FilterPart>,
}

/// The client's filter cache file body (after magic and version).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct FilterCacheRecord {
    #[prost(message, repeated, tag = "1")]
    pub(super) entries: Vec<CachedFilter>,
}
