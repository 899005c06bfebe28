//! `cairn stats`: how much the snapshots hold, and what deduplication and
//! compression save. Reads trees and pack tables only, each tree once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Result, anyhow};
use cairn_chunk_store::tree::{Node, NodeKind};
use cairn_chunk_store::{ChunkId, SnapshotId, manifest::Snapshot};

use crate::source::BlobSource;

/// Chunks located per index call.
const LOCATE_BATCH: usize = 4096;

/// Sizes of a set of snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsReport {
    /// Snapshots counted.
    pub snapshots: usize,
    /// Files in them, counted once per snapshot that holds them.
    pub files: u64,
    /// Bytes a restore of every one of them would write.
    pub restore_size: u64,
    /// Files with distinct contents.
    pub unique_files: u64,
    /// Their bytes.
    pub unique_files_size: u64,
    /// Distinct chunks (file data and trees) the snapshots need.
    pub chunks: u64,
    /// Of which trees.
    pub tree_chunks: u64,
    /// Their plaintext bytes.
    pub raw_size: u64,
    /// Their bytes as stored (compressed, encrypted).
    pub stored_size: u64,
    /// Plaintext bytes of the distinct data chunks alone.
    pub raw_data_size: u64,
}

impl StatsReport {
    /// Restore size over the distinct data it needs (≥ 1: what
    /// deduplication saves).
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.restore_size, self.raw_data_size)
    }

    /// Plaintext over stored bytes (what compression saves, less the
    /// encryption overhead).
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.raw_size, self.stored_size)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Files and bytes under one tree, counted per snapshot.
#[derive(Clone, Copy, Default)]
struct Totals {
    files: u64,
    bytes: u64,
}

struct Walk<'a> {
    source: &'a BlobSource,
    totals: HashMap<ChunkId, Totals>,
    chunks: HashSet<ChunkId>,
    trees: HashSet<ChunkId>,
    contents: HashSet<Arc<[u8]>>,
    report: StatsReport,
}

/// Counts `snapshots`.
pub async fn stats(
    source: &BlobSource,
    snapshots: &[(SnapshotId, Snapshot)],
) -> Result<StatsReport> {
    let mut walk = Walk {
        source,
        totals: HashMap::new(),
        chunks: HashSet::new(),
        trees: HashSet::new(),
        contents: HashSet::new(),
        report: StatsReport {
            snapshots: snapshots.len(),
            ..StatsReport::default()
        },
    };
    crate::browse::preload_snapshots(source, snapshots).await?;
    for (_, snap) in snapshots {
        let t = walk.tree(snap.root_tree()?).await?;
        walk.report.files += t.files;
        walk.report.restore_size += t.bytes;
    }
    let mut report = walk.report;
    report.tree_chunks = walk.trees.len() as u64;
    let data: HashSet<ChunkId> = walk.chunks;
    let all: Vec<ChunkId> = data.iter().chain(walk.trees.iter()).copied().collect();
    report.chunks = all.len() as u64;
    for batch in all.chunks(LOCATE_BATCH) {
        for (id, loc) in batch.iter().zip(source.locate(batch).await?) {
            let loc = loc.ok_or_else(|| anyhow!("chunk {id} is not stored in any pack"))?;
            report.raw_size += u64::from(loc.raw_len);
            report.stored_size += u64::from(loc.stored_len);
            if data.contains(id) {
                report.raw_data_size += u64::from(loc.raw_len);
            }
        }
    }
    Ok(report)
}

impl Walk<'_> {
    /// Totals under tree `id`; its nodes are looked at once.
    async fn tree(&mut self, id: ChunkId) -> Result<Totals> {
        if let Some(t) = self.totals.get(&id) {
            return Ok(*t);
        }
        self.trees.insert(id);
        let tree = self.source.tree(&id).await?;
        let mut totals = Totals::default();
        for node in &tree.nodes {
            match node.node_kind() {
                Some(NodeKind::Dir) => {
                    let below = Box::pin(self.tree(node.subtree_id()?)).await?;
                    totals.files += below.files;
                    totals.bytes += below.bytes;
                }
                Some(NodeKind::File) => {
                    totals.files += 1;
                    totals.bytes += node.size;
                    self.file(node)?;
                }
                _ => {}
            }
        }
        self.totals.insert(id, totals);
        Ok(totals)
    }

    fn file(&mut self, node: &Node) -> Result<()> {
        let ids = node.chunk_ids()?;
        let key: Arc<[u8]> = ids.iter().flat_map(|c| *c.as_bytes()).collect();
        if self.contents.insert(key) {
            self.report.unique_files += 1;
            self.report.unique_files_size += node.size;
        }
        self.chunks.extend(ids);
        Ok(())
    }
}
