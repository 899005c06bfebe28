//! The `Index` trait: what backup, restore and GC need from an index.

use async_trait::async_trait;
use cairn_chunk_store::pack::{BlobLocation, PackEntry};
use cairn_chunk_store::{ChunkId, PackId};

use crate::IndexError;

/// What the index knows about one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Where it is stored.
    pub location: BlobLocation,
    /// When it was first registered (Unix seconds).
    pub first_seen: i64,
    /// When a backup last confirmed it (Unix seconds).
    pub last_seen: i64,
}

/// Result of registering a pack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// Chunks this pack made known.
    pub new: usize,
    /// Chunks already known elsewhere (this copy is garbage for GC).
    pub duplicates: usize,
}

/// Counts for `cairn index` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Known chunks.
    pub chunks: u64,
    /// Registered packs.
    pub packs: u64,
}

/// A deduplication index. All calls are batched.
#[async_trait]
pub trait Index: Send + Sync {
    /// For each id, `true` if the index does not know it (the caller must
    /// upload it). Known chunks have their last-seen time refreshed: that is
    /// what keeps a chunk a running backup relies on safe from GC.
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError>;

    /// Records the chunks of a pack that is durably stored. The first pack
    /// to register a chunk wins; later copies are reported as duplicates.
    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError>;

    /// For each pack, `true` if it was never registered. Used at the start of
    /// a backup to register packs that a killed backup stored but did not
    /// get to record. An index that cannot tell answers `false` (nothing to do).
    async fn unregistered_packs(&self, packs: &[PackId]) -> Result<Vec<bool>, IndexError> {
        Ok(vec![false; packs.len()])
    }

    /// Where each chunk is stored, if known.
    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError>;

    /// Forgets everything (before a rebuild).
    async fn clear(&self) -> Result<(), IndexError>;

    /// Makes every acknowledged write durable.
    async fn flush(&self) -> Result<(), IndexError>;

    /// Counts.
    async fn stats(&self) -> Result<IndexStats, IndexError>;
}
