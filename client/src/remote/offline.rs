//! The index used when no cluster node answers at all.

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId};
use cairn_index::{ChunkRecord, DedupIndex, GcIndex, IndexError, IndexStats, RegisterOutcome};

use super::unavailable;

/// The index used when no cluster node answers at all: every chunk is
/// unknown (and uploaded), nothing is recorded. A backup then costs more
/// upload, never a failure.
#[derive(Debug, Default)]
pub struct NoIndex;

#[async_trait]
impl DedupIndex for NoIndex {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        Ok(vec![true; ids.len()])
    }

    async fn register_pack(
        &self,
        _: PackId,
        _: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        Ok(RegisterOutcome::default())
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        Ok(vec![None; ids.len()])
    }

    async fn clear(&self) -> Result<(), IndexError> {
        Err(unavailable("no index node answered"))
    }

    async fn flush(&self) -> Result<(), IndexError> {
        Ok(())
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats::default())
    }
}

/// Sessions and garbage collection are unavailable without a node.
#[async_trait]
impl GcIndex for NoIndex {}
