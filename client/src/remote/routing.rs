//! Routing to replicas: which nodes own a partition, which replica to ask
//! for each chunk (the first whose breaker is closed, then the next), and
//! locating chunks on one node.

use std::collections::HashMap;

use cairn_chunk_store::{ChunkId, PackId};
use cairn_index::ChunkRecord;
use cairn_proto::MAX_BATCH;
use cairn_proto::cluster::{owners, partition_of};
use cairn_proto::convert::{entry_from_wire, pack_ids};
use cairn_proto::v1;

use super::RemoteIndex;
use super::channel::{NodeConn, authed};

pub(super) struct Cluster {
    pub(super) nodes: Vec<NodeConn>,
    pub(super) replication: usize,
}

impl Cluster {
    pub(super) fn owners(&self, partition: u32) -> Vec<usize> {
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        owners(&ids, partition, self.replication)
    }
}

impl RemoteIndex {
    /// Groups positions of `ids` by the first available owner; ids whose
    /// owners have all failed (`tried`) get `None`.
    pub(super) fn route(
        &self,
        ids: &[ChunkId],
        tried: &[Vec<usize>],
    ) -> HashMap<Option<usize>, Vec<usize>> {
        let mut groups: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let node = self
                .cluster
                .owners(partition_of(id))
                .into_iter()
                .find(|n| !tried[i].contains(n) && self.cluster.nodes[*n].available());
            groups.entry(node).or_default().push(i);
        }
        groups
    }

    pub(super) async fn locate_on(
        &self,
        n: usize,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, tonic::Status> {
        let conn = &self.cluster.nodes[n];
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_BATCH) {
            let request = v1::LocateRequest {
                repo_id: self.repo_bytes(),
                ids: pack_ids(batch).into(),
            };
            let r = conn
                .client
                .clone()
                .locate(authed(request, &self.token))
                .await?;
            for loc in r.into_inner().locations {
                out.push(record_from_wire(&loc));
            }
        }
        Ok(out)
    }

    /// Positions of `ids` grouped by every owner (each id appears once per replica).
    pub(super) fn by_every_owner(&self, ids: &[ChunkId]) -> HashMap<usize, Vec<usize>> {
        let mut by_node: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            for n in self.cluster.owners(partition_of(id)) {
                by_node.entry(n).or_default().push(i);
            }
        }
        by_node
    }
}

pub(super) fn record_from_wire(loc: &v1::Location) -> Option<ChunkRecord> {
    if !loc.found {
        return None;
    }
    let pack = PackId::from_slice(&loc.pack_id).ok()?;
    let e = entry_from_wire(pack, loc.entry.as_ref()?).ok()?;
    Some(ChunkRecord {
        location: e.location,
        first_seen: loc.first_seen,
        last_seen: loc.last_seen,
        condemned: loc.condemned,
    })
}
