//! `cairn index rebuild`: the index, recomputed from pack trailers.

use std::sync::Arc;

use anyhow::Result;
use cairn_chunk_store::{PackId, Repository};
use cairn_index::DedupIndex;

use crate::source::read_trailers;

/// What a rebuild found.
#[derive(Debug, Default)]
pub struct RebuildReport {
    /// Distinct chunks registered.
    pub chunks: u64,
    /// Packs registered.
    pub packs: u64,
    /// Packs whose trailer could not be read.
    pub bad_packs: Vec<(PackId, String)>,
}

/// Clears `index` and registers every readable pack of `repo`.
pub async fn run(repo: &Repository, index: Arc<dyn DedupIndex>) -> Result<RebuildReport> {
    index.clear().await?;
    let results = read_trailers(repo).await?;
    let mut report = RebuildReport::default();
    for (id, trailer) in results {
        match trailer {
            Ok(entries) => {
                let out = index.register_pack(id, &entries).await?;
                report.chunks += out.new as u64;
                report.packs += 1;
            }
            Err(e) => report.bad_packs.push((id, e.to_string())),
        }
    }
    index.flush().await?;
    Ok(report)
}
