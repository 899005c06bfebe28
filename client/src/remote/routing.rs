//! Routing to replicas: which nodes hold a partition in full (reads) and
//! which must receive its writes (those, plus nodes catching up or
//! draining while partitions move), which replica to ask for each chunk
//! (the first whose breaker is closed, then the next), and locating chunks
//! on one node.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_chunk_store::{ChunkId, PackId};
use cairn_index::ChunkRecord;
use cairn_proto::MAX_BATCH;
use cairn_proto::cluster::{owners, partition_of};
use cairn_proto::convert::{entry_from_wire, pack_ids};
use cairn_proto::v1;

use super::RemoteIndex;
use super::channel::{NodeConn, authed};

/// One routing table of the cluster, as a node served it.
pub(super) struct Cluster {
    pub(super) nodes: Vec<Arc<NodeConn>>,
    pub(super) replication: usize,
    /// Names the table; sent with every call (0: a node without layouts).
    pub(super) epoch: u64,
    /// The newest applied layout version (0: none).
    pub(super) layout_version: u64,
    /// Per partition: (read, write) as indices into `nodes`. Empty from
    /// nodes before layouts: then both are the rendezvous owners.
    pub(super) replicas: Vec<(Vec<usize>, Vec<usize>)>,
}

impl Cluster {
    /// Replicas that hold `partition` in full, best first.
    pub(super) fn owners(&self, partition: u32) -> Vec<usize> {
        match self.replicas.get(partition as usize) {
            Some((read, _)) => read.clone(),
            None => {
                let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
                owners(&ids, partition, self.replication)
            }
        }
    }

    /// Every replica a write to `partition` must reach.
    pub(super) fn writers(&self, partition: u32) -> Vec<usize> {
        match self.replicas.get(partition as usize) {
            Some((_, write)) => write.clone(),
            None => self.owners(partition),
        }
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
        let cluster = self.cluster();
        let mut groups: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let node = cluster
                .owners(partition_of(id))
                .into_iter()
                .find(|n| !tried[i].contains(n) && cluster.nodes[*n].available());
            groups.entry(node).or_default().push(i);
        }
        groups
    }

    pub(super) async fn locate_on(
        &self,
        n: usize,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, tonic::Status> {
        let cluster = self.cluster();
        let conn = &cluster.nodes[n];
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_BATCH) {
            let request = v1::LocateRequest {
                repo_id: self.repo_bytes(),
                ids: pack_ids(batch).into(),
            };
            let r = conn
                .client
                .clone()
                .locate(authed(request, &self.token, cluster.epoch))
                .await?;
            for loc in r.into_inner().locations {
                out.push(record_from_wire(&loc));
            }
        }
        Ok(out)
    }

    /// Positions of `ids` grouped by every replica that receives writes
    /// (each id appears once per replica).
    pub(super) fn by_every_owner(&self, ids: &[ChunkId]) -> HashMap<usize, Vec<usize>> {
        let cluster = self.cluster();
        let mut by_node: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            for n in cluster.writers(partition_of(id)) {
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
