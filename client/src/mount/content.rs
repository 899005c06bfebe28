//! File content for the mount: a per-file table of chunk offsets, and a
//! bounded cache of decrypted chunks shared by every open file.
//!
//! A read looks its byte range up in the file's table (built once per file,
//! on first open, from one batched locate), fetches only the chunks that
//! cover the range, and copies the bytes out. The cache holds at most its
//! byte budget of plaintext; the chunk read least recently goes first.
//! Two readers asking for one chunk at once share a single fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::BlobLocation;
use cairn_chunk_store::tree::Node;
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::source::BlobSource;

/// Chunks located per index call when a file's table is built.
const LOCATE_BATCH: usize = 4096;

/// What the mount has done so far; read from `MOUNTPOINT/.stats`.
#[derive(Debug, Default)]
pub struct MountStats {
    /// Chunks read from the store (each once while it stays cached).
    pub chunks_fetched: AtomicU64,
    /// Plaintext bytes of those chunks.
    pub bytes_fetched: AtomicU64,
    /// Chunk reads answered from the cache.
    pub cache_hits: AtomicU64,
    /// Chunks fetched ahead of a sequential reader.
    pub chunks_read_ahead: AtomicU64,
    /// Files whose chunk table was built.
    pub files_opened: AtomicU64,
    /// Read requests served.
    pub reads: AtomicU64,
}

/// A point-in-time copy of [`MountStats`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub cache_hits: u64,
    pub chunks_read_ahead: u64,
    pub files_opened: u64,
    pub reads: u64,
    /// Plaintext bytes held in the chunk cache now.
    pub cache_bytes: u64,
}

/// Where each chunk of one file lies, in the file and in the store.
#[derive(Debug)]
pub struct FileTable {
    chunks: Vec<TableEntry>,
    size: u64,
}

#[derive(Debug, Clone, Copy)]
struct TableEntry {
    id: ChunkId,
    /// Offset of the chunk's first byte in the file.
    start: u64,
    location: BlobLocation,
}

impl FileTable {
    /// Locates every chunk of `node` (one index call per
    /// [`LOCATE_BATCH`] chunks, or the pack trailers).
    pub async fn build(source: &BlobSource, node: &Node) -> Result<Self> {
        let ids = node.chunk_ids()?;
        let mut chunks = Vec::with_capacity(ids.len());
        let mut start = 0u64;
        for batch in ids.chunks(LOCATE_BATCH) {
            for (id, location) in batch.iter().zip(source.locate(batch).await?) {
                let location = location.ok_or_else(|| {
                    anyhow!(
                        "chunk {id} of {:?} is not stored in any pack",
                        String::from_utf8_lossy(&node.name)
                    )
                })?;
                chunks.push(TableEntry {
                    id: *id,
                    start,
                    location,
                });
                start += u64::from(location.raw_len);
            }
        }
        Ok(Self {
            chunks,
            size: start,
        })
    }

    /// The file's length according to its chunks.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Indices of the chunks covering `offset .. offset + len` (clamped to
    /// the file).
    pub fn covering(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        if offset >= self.size || len == 0 {
            return 0..0;
        }
        let end = offset.saturating_add(len).min(self.size);
        // The last chunk starting at or before `offset`.
        let first = self.chunks.partition_point(|c| c.start <= offset) - 1;
        let last = self.chunks.partition_point(|c| c.start < end);
        first..last
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Reads `offset .. offset + len` of the file through `cache`; the
    /// chunks it needs are fetched concurrently.
    pub async fn read(&self, cache: &Arc<ChunkCache>, offset: u64, len: u64) -> Result<Vec<u8>> {
        let range = self.covering(offset, len);
        let end = offset.saturating_add(len).min(self.size);
        let mut plains: Vec<Option<Arc<Vec<u8>>>> = vec![None; range.len()];
        if range.len() == 1 {
            let entry = self.chunks[range.start];
            plains[0] = Some(cache.get(entry.id, entry.location).await?);
        } else {
            let mut set = tokio::task::JoinSet::new();
            for (k, i) in range.clone().enumerate() {
                let (cache, entry) = (cache.clone(), self.chunks[i]);
                set.spawn(async move { (k, cache.get(entry.id, entry.location).await) });
            }
            while let Some(joined) = set.join_next().await {
                let (k, plain) = joined?;
                plains[k] = Some(plain?);
            }
        }
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        for (i, plain) in range.zip(plains) {
            let plain = plain.ok_or_else(|| anyhow!("a chunk read did not finish"))?;
            let entry = &self.chunks[i];
            let from = offset.max(entry.start) - entry.start;
            let to = (end - entry.start).min(plain.len() as u64);
            if from < to {
                out.extend_from_slice(&plain[from as usize..to as usize]);
            }
        }
        Ok(out)
    }

    /// Fetches chunks `range` into `cache` in the background.
    pub fn read_ahead(&self, cache: &Arc<ChunkCache>, range: std::ops::Range<usize>) {
        for i in range.start..range.end.min(self.chunks.len()) {
            let entry = self.chunks[i];
            if cache.contains(&entry.id) {
                continue;
            }
            cache
                .stats
                .chunks_read_ahead
                .fetch_add(1, Ordering::Relaxed);
            let cache = cache.clone();
            tokio::spawn(async move {
                if let Err(e) = cache.get(entry.id, entry.location).await {
                    tracing::debug!("read-ahead of chunk {}: {e:#}", entry.id);
                }
            });
        }
    }
}

/// Decrypted chunks, at most `limit` bytes of them.
pub struct ChunkCache {
    source: BlobSource,
    limit: u64,
    inner: Mutex<CacheInner>,
    pub(crate) stats: Arc<MountStats>,
}

#[derive(Default)]
struct CacheInner {
    slots: HashMap<ChunkId, Slot>,
    /// Last use → chunk, oldest first.
    order: BTreeMap<u64, ChunkId>,
    tick: u64,
    bytes: u64,
}

struct Slot {
    cell: Arc<OnceCell<Arc<Vec<u8>>>>,
    tick: u64,
    bytes: u64,
}

impl ChunkCache {
    /// A cache of at most `limit` plaintext bytes reading from `source`.
    pub fn new(source: BlobSource, limit: u64, stats: Arc<MountStats>) -> Self {
        Self {
            source,
            limit,
            inner: Mutex::new(CacheInner::default()),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plaintext bytes held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// Chunk `id`, from the cache or read from `location` (or from where
    /// the chunk has moved since, if prune repacked it).
    pub async fn get(&self, id: ChunkId, location: BlobLocation) -> Result<Arc<Vec<u8>>> {
        let cell = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            match inner.slots.get_mut(&id) {
                Some(slot) => {
                    let old = std::mem::replace(&mut slot.tick, tick);
                    let cell = slot.cell.clone();
                    inner.order.remove(&old);
                    inner.order.insert(tick, id);
                    if cell.initialized() {
                        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    cell
                }
                None => {
                    let cell = Arc::new(OnceCell::new());
                    inner.slots.insert(
                        id,
                        Slot {
                            cell: cell.clone(),
                            tick,
                            bytes: 0,
                        },
                    );
                    inner.order.insert(tick, id);
                    cell
                }
            }
        };
        let plain = cell
            .get_or_try_init(|| self.fetch(id, location))
            .await?
            .clone();
        self.account(&id, plain.len() as u64);
        Ok(plain)
    }

    async fn fetch(&self, id: ChunkId, location: BlobLocation) -> Result<Arc<Vec<u8>>> {
        let plain = self.source.read_at(&id, &location).await?;
        self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_fetched
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        Ok(Arc::new(plain))
    }

    /// Counts a filled slot's bytes once, then evicts the least recently
    /// used chunks (never `keep`) down to the limit.
    fn account(&self, keep: &ChunkId, len: u64) {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(keep) else {
            return;
        };
        if slot.bytes != 0 || len == 0 {
            return;
        }
        slot.bytes = len;
        inner.bytes += len;
        while inner.bytes > self.limit {
            let Some((&tick, &oldest)) = inner.order.iter().find(|(_, id)| *id != keep) else {
                break;
            };
            inner.order.remove(&tick);
            if let Some(slot) = inner.slots.remove(&oldest) {
                inner.bytes -= slot.bytes;
            }
        }
    }

    /// The counters, with the cache's current size.
    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            chunks_fetched: s.chunks_fetched.load(Ordering::Relaxed),
            bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            chunks_read_ahead: s.chunks_read_ahead.load(Ordering::Relaxed),
            files_opened: s.files_opened.load(Ordering::Relaxed),
            reads: s.reads.load(Ordering::Relaxed),
            cache_bytes: self.bytes(),
        }
    }
}
