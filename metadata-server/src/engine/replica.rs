//! What replicas of a partition exchange: raw key ranges (a new owner
//! streams a partition; anti-entropy fetches a range that differs), the
//! **merge rule** that applies them, range hashes to find differences,
//! and dropping a partition a node no longer owns.
//!
//! Every record table is keyed by a uniformly random 32-byte id (chunk,
//! pack or snapshot id), so one partition of the cluster is the same key
//! range in each of them and moves with them all.
//!
//! # The merge rule, and why it keeps the GC invariant
//!
//! A record copied from a peer (by a move or by anti-entropy) is merged
//! into the local one under the engine's write lock, so it is atomic with
//! `unknown_chunks`, `register_pack` and `condemn`:
//!
//! - **absent here**: stored as it is (live or condemned: both mean the
//!   same to the peer's readers);
//! - **condemned here**: left alone. Repair never revives a condemned
//!   record: only a registration (a backup that uploaded a fresh copy)
//!   does, so a chunk that prune condemned on this replica stays
//!   "unknown" here until a backup stores it again;
//! - **live here, condemned there**: left alone. Repair never condemns
//!   either: each replica condemns by its own last-seen time, because a
//!   backup may have confirmed the chunk on this replica after the other
//!   condemned it, and prune counts a chunk as condemned only when every
//!   replica says so;
//! - **live on both**: the earlier first-seen, the later last-seen (both
//!   only make garbage collection more careful), and the location with
//!   the smaller (pack id, offset). Both copies were registered after
//!   their packs were durably stored, and prune keeps a pack while any
//!   replica holds a live record pointing into it (it reads every replica
//!   before it deletes), so either location is readable; choosing one by
//!   a fixed order makes the replicas converge.
//!
//! Pack records: a deletion tombstone wins (the pack is gone from the
//! store), "live" wins over "dead since" (a later prune re-observes it),
//! otherwise the later dead-since. Commit times: the earliest.
//!
//! Range hashes cover what the merge rule makes equal: for a chunk, its
//! id, location and state (not its times, which each replica refreshes
//! on its own); for a pack, its id and tombstone; for a commit, its
//! snapshot id and time.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{CF_CHUNKS, CF_COMMITS, CF_PACKS, Engine};
use crate::IndexError;
use crate::record::{
    decode_chunk, decode_commit, decode_pack, encode_chunk, encode_commit, encode_pack,
};

/// A table of records keyed by 32-byte ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordTable {
    /// Chunk records.
    Chunks,
    /// Pack records.
    Packs,
    /// Commit times.
    Commits,
}

impl RecordTable {
    /// Every table, in the order a move copies them.
    pub const ALL: [RecordTable; 3] = [Self::Chunks, Self::Packs, Self::Commits];

    fn cf_name(self) -> &'static str {
        match self {
            Self::Chunks => CF_CHUNKS,
            Self::Packs => CF_PACKS,
            Self::Commits => CF_COMMITS,
        }
    }
}

/// One record as stored: its key and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The 32-byte id.
    pub key: Vec<u8>,
    /// The stored encoding (with its version byte).
    pub value: Vec<u8>,
}

/// What a merge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Records this replica did not have.
    pub added: u64,
    /// Records it had and changed.
    pub updated: u64,
}

/// Hashes of one bucket of a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketHash {
    /// XOR of the records' hashes (zeros when empty).
    pub hash: [u8; 32],
    /// Records in the bucket.
    pub count: u64,
}

fn top24(key: &[u8]) -> u64 {
    let b = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    (b(0) << 16) | (b(1) << 8) | b(2)
}

/// The bucket (of `buckets` equal sub-ranges of `[start, end)`, by the
/// keys' first 24 bits) that `key` falls in. Over the whole key space with
/// 4096 buckets, a bucket is a partition; over one partition with 16, a
/// sixteenth of it.
pub fn bucket_of(key: &[u8], start: &[u8], end: Option<&[u8]>, buckets: u32) -> usize {
    let lo = top24(start);
    let hi = end.map_or(1 << 24, top24);
    let span = hi.saturating_sub(lo).max(1);
    (top24(key).saturating_sub(lo).min(span - 1) * u64::from(buckets.max(1)) / span) as usize
}

/// The first key of bucket `b` of `buckets` over `[start, end)` (see
/// [`bucket_of`]), and the first key after it (`None`: the end of the key
/// space).
pub fn bucket_range(
    start: &[u8],
    end: Option<&[u8]>,
    buckets: u32,
    b: u32,
) -> ([u8; 3], Option<[u8; 3]>) {
    let lo = top24(start);
    let hi = end.map_or(1 << 24, top24);
    let span = hi.saturating_sub(lo).max(1);
    let at = |i: u64| -> u64 { lo + (i * span).div_ceil(u64::from(buckets.max(1))) };
    let key = |t: u64| [(t >> 16) as u8, (t >> 8) as u8, t as u8];
    let next = at(u64::from(b) + 1);
    (key(at(u64::from(b))), (next < 1 << 24).then(|| key(next)))
}

impl Engine {
    /// Up to `limit` records of `table` in `[start, end)` after `after`,
    /// in key order, and whether the range has nothing more.
    pub fn read_range(
        &self,
        table: RecordTable,
        start: &[u8],
        end: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<RawRecord>, bool), IndexError> {
        let cf = self.cf(table.cf_name())?;
        let from = after.unwrap_or(start);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(from, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| self.db_err(e))?;
            if after.is_some_and(|a| *key == *a) {
                continue;
            }
            if end.is_some_and(|e| *key >= *e) {
                return Ok((out, true));
            }
            if out.len() == limit {
                return Ok((out, false));
            }
            out.push(RawRecord {
                key: key.to_vec(),
                value: value.to_vec(),
            });
        }
        Ok((out, true))
    }

    /// Merges records from a peer by the rule in the module docs.
    pub fn merge_records(
        &self,
        table: RecordTable,
        records: &[RawRecord],
    ) -> Result<MergeOutcome, IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cf = self.cf(table.cf_name())?;
        let keys: Vec<&[u8]> = records.iter().map(|r| r.key.as_slice()).collect();
        let existing = self.db.batched_multi_get_cf(cf, keys, false);
        let mut batch = WriteBatch::default();
        let mut outcome = MergeOutcome::default();
        for (rec, old) in records.iter().zip(existing) {
            if rec.key.len() != 32 {
                return Err(self.corrupt(format!("a peer sent a key of {} bytes", rec.key.len())));
            }
            let old = old.map_err(|e| self.db_err(e))?;
            let merged = match old {
                None => {
                    // Check the peer's encoding before storing it.
                    self.check_value(table, &rec.value)?;
                    outcome.added += 1;
                    batch.put_cf(cf, &rec.key, &rec.value);
                    continue;
                }
                Some(old) => self.merge_one(table, &old, &rec.value)?,
            };
            if let Some(value) = merged {
                outcome.updated += 1;
                batch.put_cf(cf, &rec.key, value);
            }
        }
        if !batch.is_empty() {
            self.db.write(batch).map_err(|e| self.db_err(e))?;
        }
        Ok(outcome)
    }

    fn check_value(&self, table: RecordTable, value: &[u8]) -> Result<(), IndexError> {
        let checked = match table {
            RecordTable::Chunks => decode_chunk(value).map(drop),
            RecordTable::Packs => decode_pack(value).map(drop),
            RecordTable::Commits => decode_commit(value).map(drop),
        };
        checked.map_err(|d| self.corrupt(format!("a peer sent a bad record: {d}")))
    }

    /// The merged encoding, or `None` when the local record stays.
    fn merge_one(
        &self,
        table: RecordTable,
        local: &[u8],
        theirs: &[u8],
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let bad = |d: String| self.corrupt(format!("a peer sent a bad record: {d}"));
        Ok(match table {
            RecordTable::Chunks => {
                let mine = decode_chunk(local).map_err(|d| self.corrupt(d))?;
                let other = decode_chunk(theirs).map_err(bad)?;
                if mine.condemned || other.condemned {
                    return Ok(None);
                }
                let mut merged = mine;
                merged.first_seen = mine.first_seen.min(other.first_seen);
                merged.last_seen = mine.last_seen.max(other.last_seen);
                let key = |r: &crate::ChunkRecord| (*r.location.pack.as_bytes(), r.location.offset);
                if key(&other) < key(&mine) {
                    merged.location = other.location;
                }
                (merged != mine).then(|| encode_chunk(&merged).to_vec())
            }
            RecordTable::Packs => {
                let mine = decode_pack(local).map_err(|d| self.corrupt(d))?;
                let other = decode_pack(theirs).map_err(bad)?;
                let mut merged = mine;
                merged.registered = mine.registered.min(other.registered);
                if mine.count == 0 {
                    merged.kind = other.kind;
                    merged.count = other.count;
                }
                merged.deleted = mine.deleted || other.deleted;
                merged.dead_since = if merged.deleted {
                    mine.dead_since.max(other.dead_since)
                } else if mine.dead_since == 0 || other.dead_since == 0 {
                    0
                } else {
                    mine.dead_since.max(other.dead_since)
                };
                (merged != mine).then(|| encode_pack(&merged).to_vec())
            }
            RecordTable::Commits => {
                let mine = decode_commit(local).map_err(|d| self.corrupt(d))?;
                let other = decode_commit(theirs).map_err(bad)?;
                let merged = crate::CommitTime {
                    committed: mine.committed.min(other.committed),
                    started: mine.started.min(other.started),
                };
                (merged != mine).then(|| encode_commit(&merged).to_vec())
            }
        })
    }

    /// Hashes of the records of `table` in `[start, end)`, in `buckets`
    /// equal sub-ranges (see [`bucket_of`]).
    pub fn range_hashes(
        &self,
        table: RecordTable,
        start: &[u8],
        end: Option<&[u8]>,
        buckets: u32,
    ) -> Result<Vec<BucketHash>, IndexError> {
        let mut out = vec![BucketHash::default(); buckets.max(1) as usize];
        let cf = self.cf(table.cf_name())?;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(start, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| self.db_err(e))?;
            if end.is_some_and(|e| *key >= *e) {
                break;
            }
            let h = self.record_hash(table, &key, &value)?;
            let b = &mut out[bucket_of(&key, start, end, buckets)];
            for (x, y) in b.hash.iter_mut().zip(h.as_bytes()) {
                *x ^= y;
            }
            b.count += 1;
        }
        Ok(out)
    }

    fn record_hash(
        &self,
        table: RecordTable,
        key: &[u8],
        value: &[u8],
    ) -> Result<blake3::Hash, IndexError> {
        let mut h = blake3::Hasher::new();
        h.update(key);
        match table {
            RecordTable::Chunks => {
                let r = decode_chunk(value).map_err(|d| self.corrupt(d))?;
                let mut identity = encode_chunk(&r);
                // Not the times: each replica refreshes them on its own.
                identity[52..68].fill(0);
                h.update(&identity);
            }
            RecordTable::Packs => {
                let r = decode_pack(value).map_err(|d| self.corrupt(d))?;
                h.update(&[u8::from(r.deleted)]);
            }
            RecordTable::Commits => {
                let r = decode_commit(value).map_err(|d| self.corrupt(d))?;
                h.update(&r.committed.to_le_bytes());
            }
        }
        Ok(h.finalize())
    }

    /// Whether any table holds a record in `[start, end)`.
    pub fn holds_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<bool, IndexError> {
        for table in RecordTable::ALL {
            let (first, _) = self.read_range(table, start, end, None, 1)?;
            if !first.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes every record in `[start, end)` of every table (a partition
    /// this node no longer owns).
    pub fn drop_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), IndexError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let end: &[u8] = end.unwrap_or(&[0xffu8; 33]);
        for table in RecordTable::ALL {
            let cf = self.cf(table.cf_name())?;
            self.db
                .delete_range_cf(cf, start, end)
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkRecord, DedupIndex, GcIndex};
    use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, PackEntry};
    use cairn_chunk_store::{ChunkId, PackId};

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn entry(id: u8, pack: u8) -> PackEntry {
        let mut b = [id; 32];
        b[0] = 0x12;
        PackEntry {
            id: ChunkId::from_bytes(b),
            location: BlobLocation {
                pack: PackId::from_bytes([pack; 32]),
                offset: u64::from(id) * 100,
                stored_len: 100,
                raw_len: 90,
                kind: BlobKind::Data,
                compression: Compression::None,
            },
        }
    }

    fn engine(dir: &tempfile::TempDir, name: &str) -> Engine {
        Engine::open(&dir.path().join(name), Default::default(), &|_| {}).unwrap()
    }

    fn everything(e: &Engine, table: RecordTable) -> Vec<RawRecord> {
        e.read_range(table, &[0u8; 32], None, None, usize::MAX)
            .unwrap()
            .0
    }

    #[test]
    fn a_copied_range_makes_replicas_equal_and_reads_resume_after_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (engine(&dir, "a"), engine(&dir, "b"));
        let entries: Vec<PackEntry> = (1..=5).map(|i| entry(i, 9)).collect();
        block(a.register_pack(PackId::from_bytes([9; 32]), &entries)).unwrap();
        block(b.register_pack(PackId::from_bytes([9; 32]), &entries[..2])).unwrap();
        let hashes = |e: &Engine| {
            e.range_hashes(RecordTable::Chunks, &[0x12, 0], None, 16)
                .unwrap()
        };
        assert_ne!(hashes(&a), hashes(&b));

        let (first, done) = a
            .read_range(RecordTable::Chunks, &[0u8; 32], None, None, 2)
            .unwrap();
        assert!(!done);
        assert_eq!(first.len(), 2);
        let (rest, done) = a
            .read_range(
                RecordTable::Chunks,
                &[0u8; 32],
                None,
                Some(&first[1].key),
                10,
            )
            .unwrap();
        assert!(done);
        assert_eq!(rest.len(), 3);
        for table in RecordTable::ALL {
            b.merge_records(table, &everything(&a, table)).unwrap();
        }
        assert_eq!(hashes(&a), hashes(&b));
        assert_eq!(hashes(&a).iter().map(|h| h.count).sum::<u64>(), 5);
        // Merging again changes nothing.
        let again = b.merge_records(RecordTable::Chunks, &everything(&a, RecordTable::Chunks));
        assert_eq!(again.unwrap(), MergeOutcome::default());
    }

    #[test]
    fn repair_neither_revives_nor_condemns() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (engine(&dir, "a"), engine(&dir, "b"));
        let e = entry(1, 9);
        // One old record on both replicas, condemned on a only.
        let old = RawRecord {
            key: e.id.as_bytes().to_vec(),
            value: encode_chunk(&ChunkRecord {
                location: e.location,
                first_seen: 1,
                last_seen: 1,
                condemned: false,
            })
            .to_vec(),
        };
        for x in [&a, &b] {
            x.merge_records(RecordTable::Chunks, std::slice::from_ref(&old))
                .unwrap();
        }
        assert_eq!(block(a.condemn(&[e.id], 100)).unwrap(), vec![true]);
        let from_a = everything(&a, RecordTable::Chunks);
        assert_eq!(
            b.merge_records(RecordTable::Chunks, &from_a).unwrap(),
            MergeOutcome::default()
        );
        assert!(!block(b.lookup(&[e.id])).unwrap()[0].unwrap().condemned);
        let from_b = everything(&b, RecordTable::Chunks);
        assert_eq!(
            a.merge_records(RecordTable::Chunks, &from_b).unwrap(),
            MergeOutcome::default()
        );
        assert!(block(a.lookup(&[e.id])).unwrap()[0].unwrap().condemned);
        // Absent here: a condemned record is copied as it is.
        let c = engine(&dir, "c");
        c.merge_records(RecordTable::Chunks, &from_a).unwrap();
        assert!(block(c.lookup(&[e.id])).unwrap()[0].unwrap().condemned);
    }

    #[test]
    fn live_replicas_converge_on_one_location_and_the_widest_times() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (engine(&dir, "a"), engine(&dir, "b"));
        let (in_high, in_low) = (entry(1, 9), entry(1, 3));
        block(a.register_pack(PackId::from_bytes([9; 32]), &[in_high])).unwrap();
        block(b.register_pack(PackId::from_bytes([3; 32]), &[in_low])).unwrap();
        a.merge_records(RecordTable::Chunks, &everything(&b, RecordTable::Chunks))
            .unwrap();
        b.merge_records(RecordTable::Chunks, &everything(&a, RecordTable::Chunks))
            .unwrap();
        let rec =
            |e: &Engine| -> ChunkRecord { block(e.lookup(&[in_high.id])).unwrap()[0].unwrap() };
        assert_eq!(rec(&a).location, in_low.location);
        assert_eq!(rec(&a), rec(&b));
    }

    #[test]
    fn buckets_split_the_key_space_into_partitions_and_partitions_into_sixteenths() {
        assert_eq!(bucket_of(&[0x12, 0x34, 0x56], &[0], None, 4096), 0x123);
        assert_eq!(bucket_of(&[0xff, 0xff, 0xff], &[0], None, 4096), 4095);
        let (p_start, p_end) = ([0x12u8, 0x30], [0x12u8, 0x40]);
        assert_eq!(
            bucket_of(&[0x12, 0x34, 0x56], &p_start, Some(&p_end), 16),
            4
        );
        assert_eq!(
            bucket_range(&p_start, Some(&p_end), 16, 4),
            ([0x12, 0x34, 0x00], Some([0x12, 0x35, 0x00]))
        );
        assert_eq!(
            bucket_range(&[0], None, 4096, 4095),
            ([0xff, 0xf0, 0], None)
        );
    }

    #[test]
    fn a_peer_record_that_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = engine(&dir, "a");
        let bad = RawRecord {
            key: vec![1; 32],
            value: vec![9; 5],
        };
        assert!(a.merge_records(RecordTable::Chunks, &[bad]).is_err());
        let short = RawRecord {
            key: vec![1; 3],
            value: vec![],
        };
        assert!(a.merge_records(RecordTable::Packs, &[short]).is_err());
        assert!(everything(&a, RecordTable::Chunks).is_empty());
    }

    #[test]
    fn a_dropped_partition_is_gone_from_every_table_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let a = engine(&dir, "a");
        let mut other = entry(2, 9);
        other.id = ChunkId::from_bytes([0x77; 32]);
        block(a.register_pack(PackId::from_bytes([0x12; 32]), &[entry(1, 0x12), other])).unwrap();
        let (start, end) = ([0x12u8, 0], [0x12u8, 0x10]);
        assert!(a.holds_range(&start, Some(&end)).unwrap());
        a.drop_range(&start, Some(&end)).unwrap();
        assert!(!a.holds_range(&start, Some(&end)).unwrap());
        assert_eq!(everything(&a, RecordTable::Chunks).len(), 1);
    }
}
