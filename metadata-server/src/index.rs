//! The `Index` trait: what backup, restore and GC need from an index.

use async_trait::async_trait;
use cairn_chunk_store::pack::{BlobLocation, PackEntry};
use cairn_chunk_store::{ChunkId, PackId, SnapshotId};

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
    /// Condemned by garbage collection: the index answers "unknown" for it
    /// and its pack may be deleted (see the crate docs, "Garbage collection").
    pub condemned: bool,
}

/// A backup session id.
pub type SessionId = [u8; 16];

/// A backup session: the lease a running backup holds, which garbage
/// collection respects (crate docs, "Garbage collection").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random id.
    pub id: SessionId,
    /// Host that runs the backup.
    pub host: String,
    /// The snapshot whose unchanged files the backup reuses.
    pub parent: Option<SnapshotId>,
    /// Start, Unix seconds (index clock).
    pub started: i64,
    /// Lease end, Unix seconds (index clock); after it the session is fenced.
    pub expires: i64,
    /// Lease length, seconds.
    pub lease: i64,
    /// The snapshot the session was allowed to write (`commit_session`).
    pub committed: Option<SnapshotId>,
}

/// The sessions an index holds, and its clock.
#[derive(Debug, Clone, Default)]
pub struct SessionList {
    /// Every session not yet forgotten (live or recently expired).
    pub sessions: Vec<Session>,
    /// The index's current time, Unix seconds (the earliest of the nodes'
    /// clocks in a cluster).
    pub now: i64,
}

/// What prune observed about a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackObservation {
    /// It holds at least one live chunk.
    Live,
    /// It holds no live chunk; none was live after `since` (Unix seconds).
    Dead {
        /// Latest time any of its chunks was live, as far as prune knows.
        since: i64,
    },
    /// It was deleted from the store.
    Deleted,
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

/// What deduplication needs of an index: which chunks are new, recording
/// stored packs, and where chunks are. Backup, restore, check and `index
/// rebuild` hold one of these. All calls are batched.
#[async_trait]
pub trait DedupIndex: Send + Sync {
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

/// The index's own record of a snapshot's commit (Unix seconds, its clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTime {
    /// When CommitManifest allowed the snapshot.
    pub committed: i64,
    /// When the session that wrote it began.
    pub started: i64,
}

/// What garbage collection needs of an index (crate docs, "Garbage
/// collection"): the sessions backups hold, condemnation, and pack states.
/// Prune drives these; a backup only begins, renews, commits and ends its
/// own session. An index without sessions (none reachable) answers every
/// call with [`IndexError::Unavailable`], the default here.
#[async_trait]
pub trait GcIndex: Send + Sync {
    /// Opens a backup session with a lease of `lease_secs`.
    async fn begin_session(
        &self,
        _host: &str,
        _parent: Option<SnapshotId>,
        _lease_secs: u32,
    ) -> Result<Session, IndexError> {
        Err(unsupported())
    }

    /// Extends the lease; fails with [`IndexError::Fenced`] once it expired.
    async fn renew_session(&self, _id: SessionId) -> Result<Session, IndexError> {
        Err(unsupported())
    }

    /// Allows the session to write the manifest of `snapshot`, extending the
    /// lease once more; fails with [`IndexError::Fenced`] once it expired.
    async fn commit_session(
        &self,
        _id: SessionId,
        _snapshot: SnapshotId,
    ) -> Result<Session, IndexError> {
        Err(unsupported())
    }

    /// When the index committed each snapshot ([`GcIndex::commit_session`])
    /// and when its session began, by the index's clock; `None` for a
    /// snapshot it has no record of (an index without records answers
    /// `None` for all).
    async fn commit_times(
        &self,
        ids: &[SnapshotId],
    ) -> Result<Vec<Option<CommitTime>>, IndexError> {
        Ok(vec![None; ids.len()])
    }

    /// Ends a session whose manifest is written.
    async fn end_session(&self, _id: SessionId) -> Result<(), IndexError> {
        Err(unsupported())
    }

    /// Every session, and the index's clock.
    async fn sessions(&self) -> Result<SessionList, IndexError> {
        Err(unsupported())
    }

    /// Condemns each chunk that is live and whose first- and last-seen
    /// times are both before `cutoff`, atomically with respect to
    /// `unknown_chunks` and `register_pack`. For each id, whether it is
    /// condemned after the call (now or before).
    async fn condemn(&self, _ids: &[ChunkId], _cutoff: i64) -> Result<Vec<bool>, IndexError> {
        Err(unsupported())
    }

    /// The record of each chunk on every replica that holds one (a cluster
    /// may disagree while a replica catches up). Fails unless every replica
    /// answered: garbage collection must not act on a partial view.
    async fn records_everywhere(
        &self,
        _ids: &[ChunkId],
    ) -> Result<Vec<Vec<ChunkRecord>>, IndexError> {
        Err(unsupported())
    }

    /// Moves the live chunks among `entries` to `pack` (a verified copy made
    /// by repacking). Condemned and unknown chunks stay as they are.
    /// Returns how many moved.
    async fn relocate(&self, _pack: PackId, _entries: &[PackEntry]) -> Result<u64, IndexError> {
        Err(unsupported())
    }

    /// Records what prune observed about packs; returns, for each, since
    /// when it has been dead (0 = live). A pack seen dead keeps the `since`
    /// of the first observation; seen live, it is live again.
    async fn pack_states(
        &self,
        _packs: &[(PackId, PackObservation)],
    ) -> Result<Vec<i64>, IndexError> {
        Err(unsupported())
    }
}

/// Both halves, for the callers that need both: a backup (deduplication
/// and its own session) and prune (garbage collection, and registering and
/// locating chunks). One handle rather than two, so that both halves are
/// always the same index; callers that need one half take that trait
/// (`Arc<dyn Index>` upcasts to either).
pub trait Index: DedupIndex + GcIndex {}

impl<T: DedupIndex + GcIndex + ?Sized> Index for T {}

fn unsupported() -> IndexError {
    IndexError::Unavailable("this index does not support sessions or garbage collection".into())
}
