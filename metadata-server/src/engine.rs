//! The RocksDB index engine.
//!
//! Column families:
//! - `chunks`: chunk id (32 bytes) → chunk record ([`crate::record`]);
//! - `packs`: pack id (32 bytes) → pack record ([`crate::record`]): when it
//!   was registered, since when it holds no live chunk, whether prune
//!   deleted it;
//! - `sessions`: session id (16 bytes) → session record ([`crate::record`]);
//! - `commits`: snapshot id (32 bytes) → commit record ([`crate::record`]):
//!   when this index committed the snapshot, by its own clock;
//! - `meta`: `format` → u32 LE format version of this database.
//!
//! Every read-modify-write of chunk records (`unknown_chunks`,
//! `register_pack`, `condemn`, `relocate`) runs under one mutex, which is
//! what makes condemnation atomic with respect to last-seen refreshes (the
//! GC invariant in the crate docs).
//!
//! Chunk ids are uniformly random, so they are used as keys directly; point
//! lookups go through `MultiGet` in one call per batch.

mod replica;

pub use replica::{BucketHash, MergeOutcome, RawRecord, RecordTable, bucket_of, bucket_range};

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId, SnapshotId};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};

use crate::lock::IndexLock;
use crate::record::{
    PackRecord, decode_chunk, decode_commit, decode_pack, decode_session, encode_chunk,
    encode_commit, encode_pack, encode_session,
};
use crate::{
    ChunkRecord, CommitTime, DedupIndex, GcIndex, IndexError, IndexStats, LockWait,
    PackObservation, RegisterOutcome, Session, SessionId, SessionList,
};

const CF_CHUNKS: &str = "chunks";
const CF_PACKS: &str = "packs";
const CF_SESSIONS: &str = "sessions";
const CF_META: &str = "meta";
const CF_COMMITS: &str = "commits";
/// Longest lease a session may ask for.
pub const MAX_LEASE_SECS: u32 = 1800;
/// Lease of a session that does not ask for one.
pub const DEFAULT_LEASE_SECS: u32 = 300;
/// The lease a session that asks for `asked` seconds gets: the default for
/// 0, at most [`MAX_LEASE_SECS`].
pub fn lease_secs_of(asked: u32) -> i64 {
    i64::from(match asked {
        0 => DEFAULT_LEASE_SECS,
        n => n.min(MAX_LEASE_SECS),
    })
}

/// Expired sessions are listed this long after their lease ended (so that
/// prune sees a session that just expired), then forgotten.
const SESSION_MEMORY_SECS: i64 = 86_400;
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

/// Chunk records up to this size are merged after a flush
/// ([`Engine::compact_if_small`]).
const COMPACT_BELOW_BYTES: u64 = 64 * 1024 * 1024;

/// The index on RocksDB, opened in-process by one writer at a time.
pub struct Engine {
    path: PathBuf,
    db: DB,
    /// Serialises register/refresh read-modify-writes so that "first writer
    /// wins" holds between threads of this process.
    write_lock: Mutex<()>,
    /// Serialises session read-modify-writes.
    session_lock: Mutex<()>,
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
        // RocksDB's informational log grows by about 100 KiB per open; the
        // index lives in the repository directory, so keep warnings only.
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts.set_keep_log_file_num(1);
        // Keys are random and values small: no compression (nothing to gain),
        // bloom filters on point lookups.
        let mut cf_opts = Options::default();
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = [CF_CHUNKS, CF_PACKS, CF_SESSIONS, CF_META, CF_COMMITS]
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
            session_lock: Mutex::new(()),
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

    fn pack_record(&self, pack: &PackId) -> Result<Option<PackRecord>, IndexError> {
        match self
            .db
            .get_cf(self.cf(CF_PACKS)?, pack.as_bytes())
            .map_err(|e| self.db_err(e))?
        {
            None => Ok(None),
            Some(v) => decode_pack(&v).map(Some).map_err(|d| self.corrupt(d)),
        }
    }

    /// Every session, forgetting those that expired long ago.
    fn session_list(&self) -> Result<SessionList, IndexError> {
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_secs();
        let cf = self.cf(CF_SESSIONS)?;
        let mut sessions = Vec::new();
        let mut stale = WriteBatch::default();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.db_err(e))?;
            let id: SessionId = key[..]
                .try_into()
                .map_err(|_| self.corrupt(format!("session key of {} bytes", key.len())))?;
            let s = decode_session(id, &value).map_err(|d| self.corrupt(d))?;
            if s.expires + SESSION_MEMORY_SECS < now {
                stale.delete_cf(cf, key);
            } else {
                sessions.push(s);
            }
        }
        if !stale.is_empty() {
            self.db.write(stale).map_err(|e| self.db_err(e))?;
        }
        Ok(SessionList { sessions, now })
    }

    fn enforced_cutoff(&self, asked: i64) -> Result<i64, IndexError> {
        let now = now_secs();
        let oldest_live = self
            .session_list()?
            .sessions
            .iter()
            .filter(|s| s.expires > now)
            .map(|s| s.started)
            .min()
            .unwrap_or(now);
        Ok(asked.min(now).min(oldest_live))
    }

    /// Records that `snapshot` was committed now, by this index's clock,
    /// by a session that began at `started` (sessions kept elsewhere, as in
    /// a cluster on etcd); a retried commit keeps the time of the first.
    pub fn record_commit(
        &self,
        snapshot: SnapshotId,
        started: i64,
    ) -> Result<CommitTime, IndexError> {
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        let commits = self.cf(CF_COMMITS)?;
        if let Some(v) = self
            .db
            .get_cf(commits, snapshot.as_bytes())
            .map_err(|e| self.db_err(e))?
        {
            return decode_commit(&v).map_err(|d| self.corrupt(d));
        }
        let t = CommitTime {
            committed: now_secs(),
            started,
        };
        self.db
            .put_cf(commits, snapshot.as_bytes(), encode_commit(&t))
            .map_err(|e| self.db_err(e))?;
        Ok(t)
    }

    /// Records a replica of a session another node began (same id and
    /// start), with a fresh lease on this node's clock.
    pub fn adopt_session(
        &self,
        id: SessionId,
        host: &str,
        parent: Option<SnapshotId>,
        started: i64,
        lease_secs: u32,
    ) -> Result<Session, IndexError> {
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lease = lease_secs_of(lease_secs);
        let now = now_secs();
        let session = Session {
            id,
            host: host.to_string(),
            parent,
            started: started.min(now),
            expires: now + lease,
            lease,
            committed: None,
        };
        self.put_session(&session)?;
        Ok(session)
    }

    fn put_session(&self, s: &Session) -> Result<(), IndexError> {
        self.db
            .put_cf(self.cf(CF_SESSIONS)?, s.id, encode_session(s))
            .map_err(|e| self.db_err(e))
    }

    /// The session `id` if its lease still runs, for an update under the
    /// session lock.
    fn live_session(&self, id: &SessionId) -> Result<Session, IndexError> {
        let fenced = || {
            IndexError::Fenced(
                "the backup session expired (its lease was not renewed in time), so garbage collection may have removed data it relies on; no snapshot was written".into(),
            )
        };
        let bytes = self
            .db
            .get_cf(self.cf(CF_SESSIONS)?, id)
            .map_err(|e| self.db_err(e))?
            .ok_or_else(fenced)?;
        let s = decode_session(*id, &bytes).map_err(|d| self.corrupt(d))?;
        if s.expires <= now_secs() {
            return Err(fenced());
        }
        Ok(s)
    }

    /// Merges the chunk records when a flush added a table file next to older
    /// ones and the whole column family is small. Every backup rewrites the
    /// last-seen time of the chunks it reuses, so without this a small index
    /// (a laptop's repository) holds a second copy of most records until
    /// RocksDB's own compaction comes around; merging 10 MiB takes about
    /// 50 ms. Larger indexes are left to RocksDB's background compaction,
    /// whose write amplification is bounded.
    fn compact_if_small(&self) -> Result<(), IndexError> {
        let cf = self.cf(CF_CHUNKS)?;
        let property = |name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .map_err(|e| self.db_err(e))
                .map(Option::unwrap_or_default)
        };
        let mut below = 0;
        for level in 1..7 {
            below += property(&format!("rocksdb.num-files-at-level{level}"))?;
        }
        let fresh = property("rocksdb.num-files-at-level0")?;
        // Fresh table files overlap older ones (random keys): merge them.
        if fresh > 0
            && fresh + below > 1
            && property("rocksdb.total-sst-files-size")? <= COMPACT_BELOW_BYTES
        {
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
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
impl DedupIndex for Engine {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.get_records(ids)?;
        let now = now_secs();
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let unknown = ids
            .iter()
            .zip(&records)
            .map(|(id, rec)| match rec {
                // Condemned: the caller uploads a fresh copy (GC invariant).
                Some(rec) if rec.condemned => true,
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

    /// A chunk already known and live stays where it is (first writer
    /// wins) but its last-seen time is refreshed, because the registering
    /// backup is about to reference it; a condemned chunk is revived at
    /// this new copy. A pack prune deleted is never registered again.
    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = RegisterOutcome::default();
        if self.pack_record(&pack)?.is_some_and(|r| r.deleted) {
            outcome.duplicates = entries.len();
            return Ok(outcome);
        }
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let existing = self.get_records(&ids)?;
        let now = now_secs();
        let chunks = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let mut seen = std::collections::HashSet::new();
        for (entry, old) in entries.iter().zip(existing) {
            if !seen.insert(entry.id) {
                outcome.duplicates += 1;
                continue;
            }
            match old {
                Some(mut rec) if !rec.condemned => {
                    outcome.duplicates += 1;
                    if rec.last_seen != now {
                        rec.last_seen = now;
                        batch.put_cf(chunks, entry.id.as_bytes(), encode_chunk(&rec));
                    }
                }
                _ => {
                    let rec = ChunkRecord {
                        location: entry.location,
                        first_seen: now,
                        last_seen: now,
                        condemned: false,
                    };
                    batch.put_cf(chunks, entry.id.as_bytes(), encode_chunk(&rec));
                    outcome.new += 1;
                }
            }
        }
        let pack_rec = PackRecord {
            kind: entries.first().map_or(0, |e| e.location.kind as u8),
            count: entries.len() as u32,
            registered: now,
            dead_since: 0,
            deleted: false,
        };
        batch.put_cf(self.cf(CF_PACKS)?, pack.as_bytes(), encode_pack(&pack_rec));
        self.db.write(batch).map_err(|e| self.db_err(e))?;
        Ok(outcome)
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

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        self.get_records(ids)
    }

    async fn clear(&self) -> Result<(), IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        for name in [CF_CHUNKS, CF_PACKS] {
            let cf = self.cf(name)?;
            self.db
                .delete_range_cf(cf, &[0u8; 0][..], &[0xffu8; 33][..])
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), IndexError> {
        self.db.flush_wal(true).map_err(|e| self.db_err(e))?;
        for name in [CF_CHUNKS, CF_PACKS, CF_SESSIONS, CF_META, CF_COMMITS] {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(|e| self.db_err(e))?;
        }
        self.compact_if_small()
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats {
            chunks: self.count(CF_CHUNKS)?,
            packs: self.count(CF_PACKS)?,
        })
    }
}

#[async_trait]
impl GcIndex for Engine {
    async fn begin_session(
        &self,
        host: &str,
        parent: Option<SnapshotId>,
        lease_secs: u32,
    ) -> Result<Session, IndexError> {
        let lease = lease_secs_of(lease_secs);
        let now = now_secs();
        let session = Session {
            id: cairn_chunk_store::crypto::random_bytes::<16>(),
            host: host.to_string(),
            parent,
            started: now,
            expires: now + lease,
            lease,
            committed: None,
        };
        self.put_session(&session)?;
        Ok(session)
    }

    async fn renew_session(&self, id: SessionId) -> Result<Session, IndexError> {
        let id = &id;
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.live_session(id)?;
        s.expires = now_secs() + s.lease;
        self.put_session(&s)?;
        Ok(s)
    }

    async fn commit_session(
        &self,
        id: SessionId,
        snapshot: SnapshotId,
    ) -> Result<Session, IndexError> {
        let id = &id;
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.live_session(id)?;
        let now = now_secs();
        s.expires = now + s.lease;
        s.committed = Some(snapshot);
        let commits = self.cf(CF_COMMITS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SESSIONS)?, s.id, encode_session(&s));
        // A retried commit keeps the time of the first.
        if self
            .db
            .get_cf(commits, snapshot.as_bytes())
            .map_err(|e| self.db_err(e))?
            .is_none()
        {
            let t = CommitTime {
                committed: now,
                started: s.started,
            };
            batch.put_cf(commits, snapshot.as_bytes(), encode_commit(&t));
        }
        self.db.write(batch).map_err(|e| self.db_err(e))?;
        Ok(s)
    }

    async fn commit_times(
        &self,
        ids: &[SnapshotId],
    ) -> Result<Vec<Option<CommitTime>>, IndexError> {
        let cf = self.cf(CF_COMMITS)?;
        self.db
            .batched_multi_get_cf(cf, ids.iter().map(|id| id.as_bytes()), false)
            .into_iter()
            .map(|r| match r.map_err(|e| self.db_err(e))? {
                Some(v) => decode_commit(&v).map(Some).map_err(|d| self.corrupt(d)),
                None => Ok(None),
            })
            .collect()
    }

    async fn end_session(&self, id: SessionId) -> Result<(), IndexError> {
        let id = &id;
        let _guard = self.session_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.db
            .delete_cf(self.cf(CF_SESSIONS)?, id)
            .map_err(|e| self.db_err(e))
    }

    async fn sessions(&self) -> Result<SessionList, IndexError> {
        self.session_list()
    }

    /// The index enforces the cutoff it can check: never later than its
    /// own clock, nor than the start of any session it holds whose lease
    /// still runs (whatever a client asks).
    async fn condemn(&self, ids: &[ChunkId], cutoff: i64) -> Result<Vec<bool>, IndexError> {
        let cutoff = self.enforced_cutoff(cutoff)?;
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.get_records(ids)?;
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(ids.len());
        for (id, rec) in ids.iter().zip(records) {
            match rec {
                Some(rec) if rec.condemned => out.push(true),
                Some(mut rec) if rec.last_seen < cutoff && rec.first_seen < cutoff => {
                    rec.condemned = true;
                    batch.put_cf(cf, id.as_bytes(), encode_chunk(&rec));
                    out.push(true);
                }
                _ => out.push(false),
            }
        }
        if !batch.is_empty() {
            self.db.write(batch).map_err(|e| self.db_err(e))?;
        }
        Ok(out)
    }

    async fn records_everywhere(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<Vec<ChunkRecord>>, IndexError> {
        Ok(self
            .get_records(ids)?
            .into_iter()
            .map(|r| r.into_iter().collect())
            .collect())
    }

    async fn relocate(&self, pack: PackId, entries: &[PackEntry]) -> Result<u64, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let records = self.get_records(&ids)?;
        let now = now_secs();
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        let mut moved = 0;
        for (entry, rec) in entries.iter().zip(records) {
            if let Some(mut rec) = rec.filter(|r| !r.condemned) {
                rec.location = entry.location;
                batch.put_cf(cf, entry.id.as_bytes(), encode_chunk(&rec));
                moved += 1;
            }
        }
        if self.pack_record(&pack)?.is_none() {
            let rec = PackRecord {
                kind: entries.first().map_or(0, |e| e.location.kind as u8),
                count: entries.len() as u32,
                registered: now,
                dead_since: 0,
                deleted: false,
            };
            batch.put_cf(self.cf(CF_PACKS)?, pack.as_bytes(), encode_pack(&rec));
        }
        self.db.write(batch).map_err(|e| self.db_err(e))?;
        Ok(moved)
    }

    async fn pack_states(
        &self,
        packs: &[(PackId, PackObservation)],
    ) -> Result<Vec<i64>, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_secs();
        let cf = self.cf(CF_PACKS)?;
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(packs.len());
        for (pack, seen) in packs {
            let mut rec = self.pack_record(pack)?.unwrap_or(PackRecord {
                kind: 0,
                count: 0,
                registered: now,
                dead_since: 0,
                deleted: false,
            });
            match seen {
                PackObservation::Live => rec.dead_since = 0,
                PackObservation::Dead { since } => {
                    if rec.dead_since == 0 {
                        rec.dead_since = (*since).clamp(1, now);
                    }
                }
                PackObservation::Deleted => {
                    rec.deleted = true;
                    if rec.dead_since == 0 {
                        rec.dead_since = now;
                    }
                }
            }
            out.push(rec.dead_since);
            batch.put_cf(cf, pack.as_bytes(), encode_pack(&rec));
        }
        self.db.write(batch).map_err(|e| self.db_err(e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression};

    /// How many of the ids a condemn call answered for are condemned.
    fn condemned(answer: Vec<bool>) -> usize {
        answer.into_iter().filter(|c| *c).count()
    }

    /// Runs an engine call from a synchronous test (the engine never waits
    /// inside its async methods).
    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

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
    async fn a_flush_over_older_records_merges_them_into_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let table_files = |engine: &Engine| {
            let cf = engine.cf(CF_CHUNKS).unwrap();
            (0..7)
                .map(|level| {
                    engine
                        .db
                        .property_int_value_cf(cf, &format!("rocksdb.num-files-at-level{level}"))
                        .unwrap()
                        .unwrap()
                })
                .sum::<u64>()
        };
        let (p1, p2) = (PackId::random(), PackId::random());
        // Keys 1 and 3, then 2: the second table overlaps the first.
        engine
            .register_pack(p1, &[entry(1, p1), entry(3, p1)])
            .await
            .unwrap();
        engine.flush().await.unwrap();
        assert_eq!(table_files(&engine), 1, "one flush, one table file");
        engine.register_pack(p2, &[entry(2, p2)]).await.unwrap();
        engine.flush().await.unwrap();
        assert_eq!(table_files(&engine), 1, "the second flush was merged");
        let ids = [ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32])];
        let found = engine.lookup(&ids).await.unwrap();
        assert_eq!(found[0].unwrap().location.pack, p1);
        assert_eq!(found[1].unwrap().location.pack, p2);
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
    async fn condemned_chunks_answer_unknown_and_a_fresh_copy_revives_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let (a, b) = (PackId::random(), PackId::random());
        engine
            .register_pack(a, &[entry(1, a), entry(2, a)])
            .await
            .unwrap();
        let ids = [ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32])];
        // Seen now: a cutoff at now condemns nothing (strictly before).
        assert_eq!(
            condemned(engine.condemn(&ids, now_secs()).await.unwrap()),
            0
        );
        // The index never condemns past its own clock or a live session's start.
        assert_eq!(
            condemned(engine.condemn(&ids, now_secs() + 10).await.unwrap()),
            0
        );
        let mut old = engine.lookup(&ids).await.unwrap();
        for (id, rec) in ids.iter().zip(old.iter_mut()) {
            let rec = rec.as_mut().unwrap();
            rec.first_seen -= 100;
            rec.last_seen -= 100;
            engine
                .db
                .put_cf(
                    engine.cf(CF_CHUNKS).unwrap(),
                    id.as_bytes(),
                    encode_chunk(rec),
                )
                .unwrap();
        }
        let running = engine.begin_session("h", None, 60).await.unwrap();
        let mut started_early = running.clone();
        started_early.started -= 200;
        engine.put_session(&started_early).unwrap();
        assert_eq!(
            condemned(engine.condemn(&ids, now_secs()).await.unwrap()),
            0
        );
        engine.end_session(running.id).await.unwrap();
        assert_eq!(
            condemned(engine.condemn(&ids, now_secs() + 10).await.unwrap()),
            2
        );
        assert_eq!(engine.unknown_chunks(&ids).await.unwrap(), vec![true, true]);
        let rec = engine.lookup(&ids).await.unwrap()[0].unwrap();
        assert!(rec.condemned);
        // A backup uploads chunk 1 again into pack b: it is live there.
        let out = engine.register_pack(b, &[entry(1, b)]).await.unwrap();
        assert_eq!(out.new, 1);
        let rec = engine.lookup(&ids).await.unwrap()[0].unwrap();
        assert!(!rec.condemned);
        assert_eq!(rec.location.pack, b);
        assert_eq!(
            engine.unknown_chunks(&ids).await.unwrap(),
            vec![false, true]
        );
        // Relocation moves live chunks only.
        let c = PackId::random();
        assert_eq!(
            engine
                .relocate(c, &[entry(1, c), entry(2, c)])
                .await
                .unwrap(),
            1
        );
        let recs = engine.lookup(&ids).await.unwrap();
        assert_eq!(recs[0].unwrap().location.pack, c);
        assert_eq!(recs[1].unwrap().location.pack, a);
    }

    /// The race of the GC invariant: a backup (holding a session) confirms
    /// chunks while prune condemns with the most aggressive cutoff it may
    /// ask for. A chunk the backup was told is known is never condemned; a
    /// condemned chunk is answered "unknown" from then on.
    #[test]
    fn condemnation_is_atomic_with_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let engine = std::sync::Arc::new(
            Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap(),
        );
        let p = PackId::random();
        let entries: Vec<PackEntry> = (0..=255u8).map(|i| entry(i, p)).collect();
        block(engine.register_pack(p, &entries)).unwrap();
        // Every chunk was last seen long ago.
        let cf = engine.cf(CF_CHUNKS).unwrap();
        for e in &entries {
            let mut rec = block(engine.lookup(&[e.id])).unwrap()[0].unwrap();
            rec.first_seen = 1;
            rec.last_seen = 1;
            engine
                .db
                .put_cf(cf, e.id.as_bytes(), encode_chunk(&rec))
                .unwrap();
        }
        let session = block(engine.begin_session("h", None, 60)).unwrap();
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let backup = {
            let (engine, ids) = (engine.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut known = Vec::new();
                // The backup uses the even chunks only.
                for round in 0..64usize {
                    let batch: Vec<ChunkId> = ids
                        .iter()
                        .skip(2 * (round % 2))
                        .step_by(4)
                        .copied()
                        .collect();
                    let unknown = block(engine.unknown_chunks(&batch)).unwrap();
                    known.extend(
                        batch
                            .into_iter()
                            .zip(unknown)
                            .filter(|(_, u)| !u)
                            .map(|(id, _)| id),
                    );
                }
                known
            })
        };
        // Prune asks for "now" (and the index holds it to the session's start).
        let mut condemned = Vec::new();
        for chunk in ids.chunks(16) {
            let c = block(engine.condemn(chunk, now_secs() + 3600)).unwrap();
            condemned.extend(chunk.iter().zip(c).filter(|(_, c)| *c).map(|(id, _)| *id));
        }
        let known = backup.join().unwrap();
        let condemned: std::collections::HashSet<ChunkId> = condemned.into_iter().collect();
        for id in &known {
            assert!(
                !condemned.contains(id),
                "chunk {id} was confirmed to a running backup and condemned"
            );
        }
        for id in &condemned {
            assert_eq!(block(engine.unknown_chunks(&[*id])).unwrap(), vec![true]);
        }
        // The odd chunks, which no backup confirmed, are all condemned.
        assert!(
            ids.iter()
                .skip(1)
                .step_by(2)
                .all(|id| condemned.contains(id))
        );
        assert!(session.started <= now_secs());
    }

    #[tokio::test]
    async fn a_duplicate_registration_refreshes_last_seen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let (a, b) = (PackId::random(), PackId::random());
        engine.register_pack(a, &[entry(1, a)]).await.unwrap();
        let id = ChunkId::from_bytes([1; 32]);
        // Make the record old, as if last seen long ago.
        let mut rec = engine.lookup(&[id]).await.unwrap()[0].unwrap();
        rec.first_seen = 100;
        rec.last_seen = 100;
        engine
            .db
            .put_cf(
                engine.cf(CF_CHUNKS).unwrap(),
                id.as_bytes(),
                encode_chunk(&rec),
            )
            .unwrap();
        engine.register_pack(b, &[entry(1, b)]).await.unwrap();
        let rec = engine.lookup(&[id]).await.unwrap()[0].unwrap();
        assert_eq!(rec.location.pack, a);
        assert!(rec.last_seen >= now_secs() - 1);
        assert_eq!(condemned(engine.condemn(&[id], 1000).await.unwrap()), 0);
    }

    #[tokio::test]
    async fn sessions_persist_renew_commit_and_fence() {
        let dir = tempfile::tempdir().unwrap();
        let parent = SnapshotId::from_bytes([5; 32]);
        let id = {
            let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
            let s = engine.begin_session("h", Some(parent), 60).await.unwrap();
            assert_eq!(s.expires - s.started, 60);
            s.id
        };
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let list = engine.sessions().await.unwrap();
        assert_eq!(list.sessions.len(), 1);
        assert_eq!(list.sessions[0].parent, Some(parent));
        engine.renew_session(id).await.unwrap();
        let done = SnapshotId::from_bytes([6; 32]);
        let s = engine.commit_session(id, done).await.unwrap();
        assert_eq!(s.committed, Some(done));
        let other = engine.begin_session("h", None, 60).await.unwrap();
        engine.end_session(other.id).await.unwrap();
        assert_eq!(engine.sessions().await.unwrap().sessions.len(), 1);
        // An expired lease is fenced.
        let mut expired = s.clone();
        expired.expires = now_secs() - 1;
        engine.put_session(&expired).unwrap();
        let err = engine.commit_session(id, done).await.unwrap_err();
        assert!(matches!(err, IndexError::Fenced(_)), "{err}");
        assert!(err.to_string().contains("session expired"), "{err}");
        assert!(matches!(
            engine.renew_session([0; 16]).await.unwrap_err(),
            IndexError::Fenced(_)
        ));
        // Lease requests are bounded.
        let s = engine.begin_session("h", None, 999_999).await.unwrap();
        assert_eq!(s.lease, i64::from(MAX_LEASE_SECS));
        // A replica keeps the id and start another node gave it.
        let r = engine
            .adopt_session([7; 16], "h", None, s.started - 5, 60)
            .unwrap();
        assert_eq!((r.id, r.started), ([7; 16], s.started - 5));
        engine.renew_session([7; 16]).await.unwrap();
    }

    #[tokio::test]
    async fn pack_states_keep_the_first_dead_time_and_tombstones_block_registration() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default(), &|_| {}).unwrap();
        let p = PackId::random();
        engine.register_pack(p, &[entry(1, p)]).await.unwrap();
        let dead = |since| (p, PackObservation::Dead { since });
        assert_eq!(engine.pack_states(&[dead(50)]).await.unwrap(), vec![50]);
        assert_eq!(engine.pack_states(&[dead(70)]).await.unwrap(), vec![50]);
        assert_eq!(
            engine
                .pack_states(&[(p, PackObservation::Live)])
                .await
                .unwrap(),
            vec![0]
        );
        assert_eq!(engine.pack_states(&[dead(70)]).await.unwrap(), vec![70]);
        engine
            .pack_states(&[(p, PackObservation::Deleted)])
            .await
            .unwrap();
        assert_eq!(engine.unregistered_packs(&[p]).await.unwrap(), vec![false]);
        let out = engine.register_pack(p, &[entry(9, p)]).await.unwrap();
        assert_eq!(out.new, 0);
        assert_eq!(
            engine
                .unknown_chunks(&[ChunkId::from_bytes([9; 32])])
                .await
                .unwrap(),
            vec![true]
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
