//! The Cairn deduplication index.
//!
//! The index maps chunk ids to where they are stored, with the first and
//! last time each was seen. It is an **accelerator**: the object store is
//! the source of truth, every entry can be rebuilt from pack trailers
//! (`cairn index rebuild`), and losing the index never loses data. A backup
//! that gets no answer treats the chunk as unknown and uploads it again.
//!
//! Two traits are the seam, one per caller: [`DedupIndex`] (which chunks
//! are new, register, locate: backup, restore, check) and [`GcIndex`]
//! (sessions, condemnation, pack states: prune, and a backup's own
//! session); [`Index`] is both. The embedded [`Engine`] (RocksDB
//! in-process, used in local mode) implements them, and so does the client
//! for the remote cluster. The engine's methods are async, like every
//! index's; a synchronous caller (the server's handlers, on blocking
//! threads) bridges with `Handle::block_on` in one place.
//!
//! # Garbage collection
//!
//! `cairn prune` runs beside backups, without a repository lock. It relies
//! on **sessions**: a backup begins one (a lease, renewed while it runs),
//! and asks the index for permission (`commit_session`) before it writes
//! its manifest; a session whose lease expired is *fenced* and may not
//! write one. Prune, given the sessions and the index clock `now`:
//!
//! 1. fixes the **cutoff** `C = min(now, start of every session that may
//!    still write a manifest) − skew margin`;
//! 2. marks every chunk reachable from the manifests in the store;
//! 3. **condemns** each unmarked chunk whose first-seen and last-seen times
//!    are both before `C`, unless the parent of one of those sessions is no
//!    longer in the store (then it condemns nothing: see below);
//! 4. computes which packs hold no live chunk (on every replica), repacks
//!    mostly-dead packs, and deletes a pack only after it has been dead for
//!    the grace period, re-checking right before the delete.
//!
//! **The invariant**: every chunk that a committed manifest references, or
//! that a backup holding a live session will reference, is live (not
//! condemned) in a pack that is not deleted. Why it holds:
//!
//! - a backup references only chunks it uploaded and registered, chunks the
//!   index confirmed as known (`unknown_chunks` → `false`), and chunks of
//!   unchanged files from its parent. Registering and confirming set
//!   last-seen to the current time `t`, and `t` ≥ the session's start > `C`
//!   (a session that began after prune fixed `C` started after `now`; one
//!   that began before bounds `C` itself). So prune never condemns such a
//!   chunk;
//! - a backup that holds a session reuses its parent's chunks **without
//!   asking the index** (asking would rewrite the record of every unchanged
//!   chunk on every backup). Once its manifest is written, and before its
//!   session ends, it checks that the parent's manifest is still in the
//!   store; if not, it confirms those chunks then, and withdraws its
//!   manifest and fails if one is no longer known. Why no prune condemns
//!   such a chunk `c` of parent `P` reused by backup `B`: a prune that
//!   listed sessions while `B` ran counts `B` as running, and either lists
//!   `P` (which marks `c`) or condemns nothing. A prune that listed sessions
//!   before `B` began lists manifests afterwards: if after `B`'s manifest
//!   was written, that marks `c`; if before, `P` was still in the store
//!   (it was when `B` began and when `B` checked, and a forgotten manifest
//!   never comes back), which marks `c`, unless `P` was not written yet,
//!   in which case `c` was confirmed by `P`'s backup after that prune's
//!   `C` or is, by the same argument one parent further, marked through
//!   `P`'s own parent. If `B` finds `P` gone, its confirmation either comes
//!   before any condemnation of `c` (and moves last-seen past every such
//!   prune's `C`) or sees `c` condemned and withdraws `B`;
//! - the index enforces the cutoff it can check: a node never condemns a
//!   chunk seen at or after its own clock or the start of a live session it
//!   holds, whatever cutoff a client sends (in local mode and on a node
//!   without etcd that is every session; in a cluster on etcd, the node
//!   reads the repository's sessions from etcd before it condemns, so the
//!   same holds for every session of the cluster: `cairn-index`'s
//!   `cluster::sessions` re-argues this invariant for sessions kept as
//!   etcd leases);
//! - the check "last-seen < C" and the condemnation happen under the same
//!   lock as the refresh in `unknown_chunks` and `register_pack` (one mutex
//!   per engine): either the backup's confirmation comes first (the chunk
//!   is then not condemned) or the condemnation does (the index then
//!   answers "unknown", and the backup uploads a fresh copy, which
//!   `register_pack` revives at its new location). A duplicate registration
//!   refreshes last-seen too, because the registering backup references
//!   the chunk even though its own copy is the garbage one;
//! - a committed manifest whose chunks were confirmed under a session is
//!   either listed by prune (and marked) or was committed under a session
//!   prune saw (and which bounds `C`): prune lists sessions *before* it
//!   lists manifests, and a backup commits its session *before* it writes
//!   the manifest, writing it only while its lease still has at least half
//!   to run (if no node can be reached to renew it, the backup writes its
//!   manifest only while the lease last confirmed has at least half to run,
//!   by the backup's own monotonic clock: until then prune still counts the
//!   session as running);
//! - a pack is live while any replica holds a live record pointing to it;
//!   prune acts only when every replica answered, so a confirmation that
//!   reached one replica is never outvoted by a stale one. While partitions
//!   move, "every replica" is the partition's whole write set (full
//!   replicas, nodes catching up, nodes draining), and records copied
//!   between replicas (moves, anti-entropy) follow a merge rule that never
//!   revives a condemned record nor condemns a live one
//!   (`engine::replica`): a copy read before prune condemned the source
//!   and merged after it is a live record, which prune sees when it
//!   re-reads every replica right before a delete (a copy is read and
//!   merged within one call's deadline, 30 seconds, far inside the grace
//!   period that separates condemnation from deletion);
//! - packs are deleted object first, tombstone second: a backup that lists
//!   the store and registers packs the index does not know (left by a killed
//!   backup) either sees the tombstone or fails to read the deleted pack, so
//!   a deleted pack never comes back into the index;
//! - a backup that began while no index node answered runs without a
//!   session: it confirms nothing (every chunk counts as unknown, every
//!   file is read and uploaded), and its packs enter the index only when a
//!   later backup or prune registers them. If prune registered and condemned
//!   them before the manifest appeared, the next prune finds the manifest
//!   and makes its condemned chunks live again at a copy still in the store
//!   (revival), so their packs are not deleted. The remaining exposure is a
//!   session-less backup that takes longer than the grace period after a
//!   prune registered its first pack (a later backup that takes such a
//!   snapshot as its parent reuses its data unconfirmed, and shares that
//!   exposure); a backup that did hold a session and lost it is fenced
//!   instead.
//!
//! A prune that is killed at any point leaves a state the next prune rolls
//! forward: each step is one atomic index write (condemn, relocate, pack
//! state) or an idempotent store operation (writing a new pack, deleting a
//! dead one), in an order where every prefix is safe. A repacked copy that
//! was stored but not yet recorded is registered like any pack a killed
//! backup left, and then collected as a duplicate.
//!
//! **Grace period** (default one hour, `prune --grace`): a dead pack is
//! deleted only after it has held no live chunk for that long. Sessions
//! protect what backups write; the grace period protects what they cannot
//! see: a reader (restore, check, a backup reading its parent's trees) that
//! looked a chunk up before it was repacked finishes reading the old copy
//! (or falls back to the pack trailers, which name the new one), and a
//! session-less backup's manifest still finds its packs for revival. One
//! hour is longer than the longest lease ([`engine::MAX_LEASE_SECS`],
//! 30 minutes) plus the default skew margin (5 minutes), so every session
//! that could have been running when a pack died has ended or been fenced
//! before the pack goes, whatever the clocks say.
//!
//! **Local mode**. The embedded index is one RocksDB database that only one
//! process may open; a backup holds it for its whole run, and prune opens
//! it like any writer (waiting up to `--lock-wait`). That exclusion is a
//! property of the embedded database, not part of the protocol above:
//! sessions, the cutoff, condemnation and the grace rule are the same code
//! in both modes, stored in the same column families, and prune never
//! needs backups to stop for the repository (in a cluster they run side by
//! side). Removing the exclusion would mean serving the embedded index from
//! one process (a local `cairn-index`), which changes nothing here.

mod engine;
mod error;
mod index;
mod lock;
pub mod record;

pub use engine::{
    BucketHash, DEFAULT_LEASE_SECS, Engine, EngineOptions, MAX_LEASE_SECS, MergeOutcome, RawRecord,
    RecordTable, bucket_of, bucket_range, lease_secs_of,
};
pub use error::IndexError;
pub use index::{
    ChunkRecord, CommitTime, DedupIndex, GcIndex, Index, IndexStats, PackObservation,
    RegisterOutcome, Session, SessionId, SessionList,
};
pub use lock::LockWait;
