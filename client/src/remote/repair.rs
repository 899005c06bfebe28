//! Read repair: a replica that answered "unknown" for a chunk another
//! replica knows is sent that chunk's record, with the same merge rule the
//! engine applies to a registration (a condemned record is never revived
//! by repair alone).

use std::collections::HashMap;

use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId};
use cairn_proto::convert::entry_to_wire;
use cairn_proto::v1;

use super::RemoteIndex;
use super::channel::authed;

impl RemoteIndex {
    /// Read repair: a replica that answered "unknown" for chunks another
    /// replica knows (it missed writes while down) is sent their locations.
    pub(super) async fn repair(
        &self,
        stale: HashMap<usize, Vec<ChunkId>>,
        knower: HashMap<ChunkId, usize>,
    ) {
        let cluster = self.cluster();
        for (n, ids) in stale {
            let records = {
                let mut by_knower: HashMap<usize, Vec<ChunkId>> = HashMap::new();
                for id in ids {
                    if let Some(k) = knower.get(&id) {
                        by_knower.entry(*k).or_default().push(id);
                    }
                }
                let mut found = Vec::new();
                for (k, ids) in by_knower {
                    if let Ok(recs) = self.locate_on(k, &ids).await {
                        found.extend(
                            ids.into_iter()
                                .zip(recs)
                                .filter_map(|(id, r)| Some((id, r?))),
                        );
                    }
                }
                found
            };
            let mut by_pack: HashMap<PackId, Vec<v1::ChunkEntry>> = HashMap::new();
            for (id, rec) in records {
                by_pack
                    .entry(rec.location.pack)
                    .or_default()
                    .push(entry_to_wire(&PackEntry {
                        id,
                        location: rec.location,
                    }));
            }
            let conn = &cluster.nodes[n];
            for (pack, entries) in by_pack {
                let request = v1::RegisterPackRequest {
                    repo_id: self.repo_bytes(),
                    pack_id: pack.as_bytes().to_vec().into(),
                    entries,
                    ..Default::default()
                };
                if let Err(s) = conn
                    .client
                    .clone()
                    .register_pack(authed(request, &self.token, cluster.epoch))
                    .await
                {
                    conn.failed("RegisterPack (repair)", &s);
                    break;
                }
            }
        }
    }
}
