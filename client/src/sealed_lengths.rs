//! Chunk lengths the index never sees in the clear.
//!
//! An index record holds where a chunk is (pack, offset, sealed length) and
//! its plaintext length, which restore, `mount` and `stats` need before
//! they read the chunk. A plaintext length is what lets an observer of the
//! index recognise a known file (a source file is one chunk, as long as the
//! file), so in a repository whose config says `sealed_lengths` (every
//! repository made since config version 5) the client gives the index each
//! `raw_len` XORed with [`RepoKeys::length_mask`] of the chunk id, and
//! removes the mask from every record it reads back. The mask is a keyed
//! PRF of the id under a key only the repository's key holders derive, one
//! pad per chunk and one value per pad (a chunk's length never changes), so
//! the index holds a uniformly random word in place of each length. The
//! index never interprets `raw_len`, so nodes need not know.
//!
//! The sealed length (`stored_len`) and the offset stay in the clear: the
//! store sees them as object sizes and range reads anyway, and with
//! Padmé padding (`cairn_chunk_store::pack::Padding`) they are coarse.
//!
//! Every index a client opens for a repository goes through
//! [`seal_index`] or [`seal_dedup_index`]; pack trailers are sealed whole
//! and hold the plain lengths, so an index rebuilt from them is sealed on
//! its way in like any other write.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_chunk_store::crypto::RepoKeys;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId, Repository, SnapshotId};
use cairn_index::{
    ChunkRecord, CommitTime, DedupIndex, GcIndex, Index, IndexError, IndexStats, PackObservation,
    RegisterOutcome, Session, SessionId, SessionList,
};

/// `index` as `repo` must use it: lengths sealed when its config says so.
pub fn seal_index(repo: &Repository, index: Arc<dyn Index>) -> Arc<dyn Index> {
    match SealedLengths::for_repo(repo, &index) {
        Some(sealed) => Arc::new(sealed),
        None => index,
    }
}

/// [`seal_index`] for a handle that only deduplicates and locates.
pub fn seal_dedup_index(repo: &Repository, index: Arc<dyn DedupIndex>) -> Arc<dyn DedupIndex> {
    match SealedLengths::for_repo(repo, &index) {
        Some(sealed) => Arc::new(sealed),
        None => index,
    }
}

/// An index whose chunk lengths are sealed on the way in and opened on the
/// way out (module docs).
struct SealedLengths<I: ?Sized> {
    inner: Arc<I>,
    keys: RepoKeys,
}

impl<I: ?Sized> SealedLengths<I> {
    /// `inner` wrapped, if `repo`'s config seals lengths.
    fn for_repo(repo: &Repository, inner: &Arc<I>) -> Option<Self> {
        repo.config().sealed_lengths.then(|| Self {
            inner: inner.clone(),
            keys: repo.keys().clone(),
        })
    }

    /// Seals or opens (XOR is its own inverse).
    fn entries(&self, entries: &[PackEntry]) -> Vec<PackEntry> {
        entries
            .iter()
            .map(|e| {
                let mut e = *e;
                e.location.raw_len ^= self.keys.length_mask(&e.id);
                e
            })
            .collect()
    }

    fn record(&self, id: &ChunkId, mut r: ChunkRecord) -> ChunkRecord {
        r.location.raw_len ^= self.keys.length_mask(id);
        r
    }
}

#[async_trait]
impl<I: DedupIndex + ?Sized> DedupIndex for SealedLengths<I> {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        self.inner.unknown_chunks(ids).await
    }

    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        self.inner.register_pack(pack, &self.entries(entries)).await
    }

    async fn unregistered_packs(&self, packs: &[PackId]) -> Result<Vec<bool>, IndexError> {
        self.inner.unregistered_packs(packs).await
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        let records = self.inner.lookup(ids).await?;
        Ok(ids
            .iter()
            .zip(records)
            .map(|(id, r)| r.map(|r| self.record(id, r)))
            .collect())
    }

    async fn clear(&self) -> Result<(), IndexError> {
        self.inner.clear().await
    }

    async fn flush(&self) -> Result<(), IndexError> {
        self.inner.flush().await
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        self.inner.stats().await
    }
}

#[async_trait]
impl<I: GcIndex + ?Sized> GcIndex for SealedLengths<I> {
    async fn begin_session(
        &self,
        host: &str,
        parent: Option<SnapshotId>,
        lease_secs: u32,
    ) -> Result<Session, IndexError> {
        self.inner.begin_session(host, parent, lease_secs).await
    }

    async fn renew_session(&self, id: SessionId) -> Result<Session, IndexError> {
        self.inner.renew_session(id).await
    }

    async fn commit_session(
        &self,
        id: SessionId,
        snapshot: SnapshotId,
    ) -> Result<Session, IndexError> {
        self.inner.commit_session(id, snapshot).await
    }

    async fn commit_times(
        &self,
        ids: &[SnapshotId],
    ) -> Result<Vec<Option<CommitTime>>, IndexError> {
        self.inner.commit_times(ids).await
    }

    async fn end_session(&self, id: SessionId) -> Result<(), IndexError> {
        self.inner.end_session(id).await
    }

    async fn sessions(&self) -> Result<SessionList, IndexError> {
        self.inner.sessions().await
    }

    async fn condemn(&self, ids: &[ChunkId], cutoff: i64) -> Result<Vec<bool>, IndexError> {
        self.inner.condemn(ids, cutoff).await
    }

    async fn records_everywhere(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<Vec<ChunkRecord>>, IndexError> {
        let records = self.inner.records_everywhere(ids).await?;
        Ok(ids
            .iter()
            .zip(records)
            .map(|(id, rs)| rs.into_iter().map(|r| self.record(id, r)).collect())
            .collect())
    }

    async fn relocate(&self, pack: PackId, entries: &[PackEntry]) -> Result<u64, IndexError> {
        self.inner.relocate(pack, &self.entries(entries)).await
    }

    async fn pack_states(
        &self,
        packs: &[(PackId, PackObservation)],
    ) -> Result<Vec<i64>, IndexError> {
        self.inner.pack_states(packs).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use cairn_chunk_store::crypto::{Cipher, MasterKey};
    use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression};
    use cairn_index::{Engine, EngineOptions};

    /// Through the wrapper a record reads back as written; in the engine
    /// beneath it, the length is not there.
    #[tokio::test]
    async fn lengths_are_sealed_in_the_index_and_open_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Index> = Arc::new(
            Engine::open(&dir.path().join("index"), EngineOptions::default(), &|_| {}).unwrap(),
        );
        let keys = RepoKeys::derive(&MasterKey::from_bytes([9; 32]), Cipher::DEFAULT);
        let sealed = SealedLengths {
            inner: engine.clone(),
            keys,
        };
        let pack = PackId::from_slice(&[1; 32]).unwrap();
        let entries: Vec<PackEntry> = (0..50u8)
            .map(|i| PackEntry {
                id: ChunkId::from_slice(&[i; 32]).unwrap(),
                location: BlobLocation {
                    pack,
                    offset: u64::from(i) * 4096,
                    stored_len: 4096,
                    raw_len: 1000 + u32::from(i),
                    kind: BlobKind::Data,
                    compression: Compression::NonePadded,
                },
            })
            .collect();
        sealed.register_pack(pack, &entries).await.unwrap();
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let read = sealed.lookup(&ids).await.unwrap();
        let raw = engine.lookup(&ids).await.unwrap();
        for ((e, r), beneath) in entries.iter().zip(read).zip(raw) {
            assert_eq!(r.unwrap().location, e.location);
            let beneath = beneath.unwrap().location;
            assert_ne!(beneath.raw_len, e.location.raw_len);
            assert_eq!(beneath.stored_len, e.location.stored_len);
        }
        let everywhere = sealed.records_everywhere(&ids[..1]).await.unwrap();
        assert_eq!(everywhere[0][0].location, entries[0].location);
    }
}
