//! The RocksDB index engine.
//!
//! Column families:
//! - `chunks`: chunk id (32 bytes) → chunk record ([`crate::record`]);
//! - `packs`: pack id (32 bytes) → `[version 1, kind, count u32 LE, registered i64 LE]`;
//! - `meta`: `format` → u32 LE format version of this database.
//!
//! Chunk ids are uniformly random, so they are used as keys directly; point
//! lookups go through `MultiGet` in one call per batch.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};

use crate::lock::IndexLock;
use crate::record::{decode_chunk, encode_chunk};
use crate::{ChunkRecord, Index, IndexError, IndexStats, LockWait, RegisterOutcome};

const CF_CHUNKS: &str = "chunks";
const CF_PACKS: &str = "packs";
const CF_META: &str = "meta";
/// Version of the database layout.
const FORMAT_VERSION: u32 = 1;

/// Options of the embedded engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// How long to wait for another process holding the index.
    pub lock_wait: LockWait,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lock_wait: LockWait(Duration::ZERO),
        }
    }
}

/// The index on RocksDB, opened in-process by one writer at a time.
pub struct Engine {
    path: PathBuf,
    db: DB,
    /// Serialises register/refresh read-modify-writes so that "first writer
    /// wins" holds between threads of this process.
    write_lock: Mutex<()>,
    _lock: IndexLock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.path.display())
    }
}

fn now_secs() -> i64 {
    cairn_chunk_store::now_unix_nanos() / 1_000_000_000
}

impl Engine {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(
        path: &Path,
        options: EngineOptions,
        on_wait: &dyn Fn(&str),
    ) -> Result<Self, IndexError> {
        let lock = IndexLock::acquire(path, options.lock_wait, on_wait)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_keep_log_file_num(3);
        // Keys are random and values small: no compression (nothing to gain),
        // bloom filters on point lookups.
        let mut cf_opts = Options::default();
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = [CF_CHUNKS, CF_PACKS, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| IndexError::Db {
            path: path.to_path_buf(),
            source,
        })?;
        let engine = Self {
            path: path.to_path_buf(),
            db,
            write_lock: Mutex::new(()),
            _lock: lock,
        };
        engine.check_format()?;
        Ok(engine)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, source: rocksdb::Error) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: String) -> IndexError {
        IndexError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.corrupt(format!("column family {name} missing")))
    }

    fn check_format(&self) -> Result<(), IndexError> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, b"format").map_err(|e| self.db_err(e))? {
            None => self
                .db
                .put_cf(meta, b"format", FORMAT_VERSION.to_le_bytes())
                .map_err(|e| self.db_err(e)),
            Some(v) if v.as_slice() == FORMAT_VERSION.to_le_bytes() => Ok(()),
            Some(v) => Err(self.corrupt(format!(
                "database format {v:?} is not supported by this version; delete the index directory and run `cairn index rebuild`"
            ))),
        }
    }

    fn get_records(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        let cf = self.cf(CF_CHUNKS)?;
        let keys: Vec<&[u8]> = ids.iter().map(|id| &id.as_bytes()[..]).collect();
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| match r.map_err(|e| self.db_err(e))? {
                None => Ok(None),
                Some(v) => decode_chunk(&v).map(Some).map_err(|d| self.corrupt(d)),
            })
            .collect()
    }

    /// Synchronous form of [`Index::unknown_chunks`].
    pub fn unknown_chunks_sync(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.get_records(ids)?;
        let now = now_secs();
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let unknown = ids
            .iter()
            .zip(&records)
            .map(|(id, rec)| match rec {
                Some(rec) => {
                    if rec.last_seen != now {
                        let mut rec = *rec;
                        rec.last_seen = now;
                        batch.put_cf(cf, id.as_bytes(), encode_chunk(&rec));
                    }
                    false
                }
                None => true,
            })
            .collect();
        if !batch.is_empty() {
            self.db.write(batch).map_err(|e| self.db_err(e))?;
        }
        Ok(unknown)
    }

    /// Synchronous form of [`Index::register_pack`].
    pub fn register_pack_sync(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let existing = self.get_records(&ids)?;
        let now = now_secs();
        let chunks = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let mut outcome = RegisterOutcome::default();
        let mut seen = std::collections::HashSet::new();
        for (entry, old) in entries.iter().zip(existing) {
            if old.is_some() || !seen.insert(entry.id) {
                outcome.duplicates += 1;
                continue;
            }
            let rec = ChunkRecord {
                location: entry.location,
                first_seen: now,
                last_seen: now,
            };
            batch.put_cf(chunks, entry.id.as_bytes(), encode_chunk(&rec));
            outcome.new += 1;
        }
        let kind = entries.first().map_or(0, |e| e.location.kind as u8);
        let mut pack_rec = vec![1u8, kind];
        pack_rec.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        pack_rec.extend_from_slice(&now.to_le_bytes());
        batch.put_cf(self.cf(CF_PACKS)?, pack.as_bytes(), pack_rec);
        self.db.write(batch).map_err(|e| self.db_err(e))?;
        Ok(outcome)
    }

    /// Synchronous form of [`Index::lookup`].
    pub fn lookup_sync(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        self.get_records(ids)
    }

    /// Synchronous form of [`Index::clear`].
    pub fn clear_sync(&self) -> Result<(), IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        for name in [CF_CHUNKS, CF_PACKS] {
            let cf = self.cf(name)?;
            self.db
                .delete_range_cf(cf, &[0u8; 0][..], &[0xffu8; 33][..])
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Synchronous form of [`Index::flush`].
    pub fn flush_sync(&self) -> Result<(), IndexError> {
        self.db.flush_wal(true).map_err(|e| self.db_err(e))?;
        for name in [CF_CHUNKS, CF_PACKS, CF_META] {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Ids of the known chunks with keys in `[start, end)` (a partition).
    pub fn ids_in_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<ChunkId>, IndexError> {
        let cf = self.cf(CF_CHUNKS)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, _) = item.map_err(|e| self.db_err(e))?;
            if end.is_some_and(|end| &key[..] >= end) {
                break;
            }
            out.push(ChunkId::from_slice(&key).map_err(|e| self.corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    fn count(&self, name: &str) -> Result<u64, IndexError> {
        let cf = self.cf(name)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            item.map_err(|e| self.db_err(e))?;
            n += 1;
        }
        Ok(n)
    }
}

#[async_trait]
impl Index for Engine {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        self.unknown_chunks_sync(ids)
    }

    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        self.register_pack_sync(pack, entries)
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        self.lookup_sync(ids)
    }

    async fn unregistered_packs(&self, packs: &[PackId]) -> Result<Vec<bool>, IndexError> {
        let cf = self.cf(CF_PACKS)?;
        let keys: Vec<&[u8]> = packs.iter().map(|p| &p.as_bytes()[..]).collect();
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.is_none()).map_err(|e| self.db_err(e)))
            .collect()
    }

    async fn clear(&self) -> Result<(), IndexError> {
        self.clear_sync()
    }

    async fn flush(&self) -> Result<(), IndexError> {
        self.flush_sync()
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats {
            chunks: self.count(CF_CHUNKS)?,
            packs: self.count(CF_PACKS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression};

    fn entry(id: u8, pack: PackId) -> PackEntry {
        PackEntry {
            id: ChunkId::from_bytes([id; 32]),
            location: BlobLocation {
                pack,
                offset: u64::from(id) * 100,
                stored_len: 100,
                raw_len: 200,
                kind: BlobKind::Data,
                compression: Compression::Zstd,
            },
        }
    }

    #[tokio::test]
    async fn unknown_register_lookup_clear() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let ids: Vec<ChunkId> = (1..=3).map(|i| ChunkId::from_bytes([i; 32])).collect();
        assert_eq!(
            engine.unknown_chunks(&ids).await.unwrap(),
            vec![true, true, true]
        );

        let (p1, p2) = (PackId::random(), PackId::random());
        let out = engine
            .register_pack(p1, &[entry(1, p1), entry(2, p1)])
            .await
            .unwrap();
        assert_eq!(
            out,
            RegisterOutcome {
                new: 2,
                duplicates: 0
            }
        );
        // First writer wins: chunk 2 stays in p1.
        let out = engine
            .register_pack(p2, &[entry(2, p2), entry(3, p2)])
            .await
            .unwrap();
        assert_eq!(
            out,
            RegisterOutcome {
                new: 1,
                duplicates: 1
            }
        );
        assert_eq!(
            engine.unknown_chunks(&ids).await.unwrap(),
            vec![false, false, false]
        );
        let found = engine.lookup(&ids).await.unwrap();
        assert_eq!(found[1].unwrap().location.pack, p1);
        assert_eq!(found[2].unwrap().location.pack, p2);
        assert!(found[0].unwrap().first_seen > 0);
        assert_eq!(
            engine.stats().await.unwrap(),
            IndexStats {
                chunks: 3,
                packs: 2
            }
        );

        engine.flush().await.unwrap();
        engine.clear().await.unwrap();
        assert_eq!(
            engine.unknown_chunks(&ids).await.unwrap(),
            vec![true, true, true]
        );
        assert_eq!(engine.stats().await.unwrap(), IndexStats::default());
    }

    #[test]
    fn second_opener_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let err = Engine::open(
            dir.path(),
            EngineOptions {
                lock_wait: LockWait(Duration::from_millis(300)),
            },
            &|_| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another cairn process"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = PackId::random();
        {
            let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
            engine.register_pack(p, &[entry(7, p)]).await.unwrap();
        }
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let found = engine
            .lookup(&[ChunkId::from_bytes([7; 32])])
            .await
            .unwrap();
        assert_eq!(found[0].unwrap().location.offset, 700);
    }
}
