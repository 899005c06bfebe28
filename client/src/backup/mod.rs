//! The backup pipeline.
//!
//! ```text
//! walker ──jobs──▶ file workers (chunk, fingerprint, dedup, zstd, seal) ──┐
//!   │                                                                   blobs ──▶ packer ──▶ store, then index
//!   └──dirs──▶ tree builder (waits for file results, seals trees) ───────┘
//! ```
//!
//! Every channel is bounded, so memory stays flat whatever the input. The
//! manifest is written only after the packer has stored and registered every
//! pack (invariant 2 of `cairn_chunk_store`): a backup killed at any point
//! leaves at most unreferenced packs, which the next run reuses through the
//! index.

pub mod early;
pub mod excludes;
pub mod files;
pub mod packer;
pub mod stream;
pub mod walk;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::chunker::SegmentPool;
use cairn_chunk_store::manifest::{Snapshot, SnapshotStats};
use cairn_chunk_store::pack::BlobKind;
use cairn_chunk_store::{ChunkId, Repository, SnapshotId};
use cairn_index::Index;
use crossbeam_channel::bounded;
use tokio::runtime::Handle;

use crate::progress::Ticker;
use crate::source::BlobSource;
use crate::treecache::TreeCache;
use excludes::Excludes;

/// A backup stopped by its cancel flag (SIGINT or SIGTERM): the packs it
/// filled are stored and registered, no snapshot was written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("backup interrupted; no snapshot was written (the next run reuses what was stored)")]
pub struct Interrupted;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Source paths (made absolute here).
    pub paths: Vec<PathBuf>,
    /// Exclude rules.
    pub excludes: Excludes,
    /// Tags.
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    pub host: String,
    /// The snapshot's time (Unix nanoseconds) when not now (`--time`).
    pub time_ns: Option<i64>,
    /// User name recorded in the snapshot.
    pub user: String,
    /// Show progress on stderr.
    pub progress: bool,
    /// Set to stop the backup early (e.g. on SIGTERM): no snapshot is
    /// written, and what was already stored is reused by the next run.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Lease of the backup's session, in seconds (renewed every third of it).
    pub lease_secs: u32,
    /// Back up this stream as the snapshot's one file instead of `paths`.
    pub stream: Option<stream::StreamFile>,
    /// Read and chunk everything, ask the index without changing it, and
    /// report what would be stored; upload nothing, write no snapshot,
    /// begin no session.
    pub dry_run: bool,
    /// The sources as read while the repository opened (started with the
    /// same `paths` and `excludes`); stopped when the walk begins.
    pub early_listing: Option<Arc<early::EarlyListing>>,
}

/// The outcome of a backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// A dry run: nothing was written; `snapshot_id` is the id the snapshot
    /// would have had.
    pub dry_run: bool,
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// The snapshot used to skip unchanged files.
    pub parent: Option<SnapshotId>,
    /// Statistics (also stored in the manifest).
    pub stats: SnapshotStats,
    /// New data chunks.
    pub data_chunks_new: u64,
    /// New tree chunks.
    pub tree_chunks_new: u64,
    /// Directories whose tree was encoded and fingerprinted; the others were
    /// the parent snapshot's trees, entry for entry, and kept its ids.
    pub trees_encoded: u64,
    /// Directories read while the repository opened (`early_listing`).
    pub dirs_listed_early: u64,
    /// Wall time.
    pub seconds: f64,
    /// Entries that could not be read.
    pub warnings: Vec<String>,
}

/// Live counters of a running backup.
#[derive(Debug, Default)]
pub struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    data_new: AtomicU64,
    tree_new: AtomicU64,
    trees_encoded: AtomicU64,
    reused: AtomicU64,
    bytes_read: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
    bytes_total: AtomicU64,
    errors: AtomicU64,
    aborted: AtomicBool,
    cancel: Option<Arc<AtomicBool>>,
    /// Raised when the backup's session is fenced.
    fenced: Option<Arc<AtomicBool>>,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    /// Bytes read from a source file.
    pub fn add_read(&self, n: u64) {
        Self::add(&self.bytes_read, n)
    }
    /// A new data chunk of `n` raw bytes.
    pub fn add_new_data(&self, n: u64) {
        Self::add(&self.data_new, 1);
        Self::add(&self.bytes_new, n);
    }
    /// A new tree chunk of `n` raw bytes.
    pub fn add_new_tree(&self, n: u64) {
        Self::add(&self.tree_new, 1);
        Self::add(&self.bytes_new, n);
    }
    /// A directory's tree encoded and fingerprinted (not the parent's).
    pub fn tree_encoded(&self) {
        Self::add(&self.trees_encoded, 1)
    }
    /// Bytes written to the store.
    pub fn add_stored(&self, n: u64) {
        Self::add(&self.bytes_stored, n)
    }
    /// Size of a file in the snapshot.
    pub fn add_total(&self, n: u64) {
        Self::add(&self.bytes_total, n)
    }
    /// A file reused from the parent.
    pub fn unmodified(&self) {
        Self::add(&self.files_unmodified, 1)
    }
    /// A file read (new or changed).
    pub fn file_read(&self, changed: bool) {
        Self::add(
            if changed {
                &self.files_changed
            } else {
                &self.files_new
            },
            1,
        )
    }
    /// A directory.
    pub fn dir(&self) {
        Self::add(&self.dirs, 1)
    }
    /// Stops the pipeline.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed)
    }
    /// True once something failed.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
            || self.cancelled()
            || self
                .fenced
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
    }
    /// True if the caller asked the backup to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
    /// Files processed so far.
    pub fn files(&self) -> u64 {
        Self::get(&self.files_new)
            + Self::get(&self.files_changed)
            + Self::get(&self.files_unmodified)
    }
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        Self::get(&self.bytes_read)
    }
    pub(crate) fn stats(&self, duration_ms: u64) -> SnapshotStats {
        SnapshotStats {
            files_new: Self::get(&self.files_new),
            files_changed: Self::get(&self.files_changed),
            files_unmodified: Self::get(&self.files_unmodified),
            dirs: Self::get(&self.dirs),
            chunks_new: Self::get(&self.data_new) + Self::get(&self.tree_new),
            chunks_reused: Self::get(&self.reused),
            bytes_read: Self::get(&self.bytes_read),
            bytes_new: Self::get(&self.bytes_new),
            bytes_stored: Self::get(&self.bytes_stored),
            bytes_total: Self::get(&self.bytes_total),
            errors: Self::get(&self.errors),
            duration_ms,
        }
    }
}

/// State shared by the pipeline's threads.
pub struct Shared {
    /// The repository.
    pub repo: Repository,
    /// The index.
    pub index: Arc<dyn Index>,
    /// The async runtime, for store and index calls.
    pub handle: Handle,
    /// Chunks already handled by this run (uploading or known).
    claimed: Mutex<HashSet<ChunkId>>,
    /// True when the backup holds a session and has a parent: the chunks of
    /// unchanged files are then reused without asking the index (crate docs
    /// of `cairn_index`, "Garbage collection").
    reuse_unasked: bool,
    /// The chunks reused that way. The index confirms them only if the
    /// parent is forgotten before the snapshot is written.
    unconfirmed: Mutex<Vec<ChunkId>>,
    /// Counters.
    pub counters: Counters,
    warnings: Mutex<Vec<String>>,
    index_warned: AtomicBool,
    /// A dry run: the index is read, never written, and nothing is stored.
    pub dry_run: bool,
    /// Where the tree packs this backup stores are kept for the next one.
    pub tree_cache: Option<TreeCache>,
    /// Directories read while the repository opened, stopped.
    early: Option<Arc<early::EarlyListing>>,
}

impl Shared {
    /// The state of a pipeline storing into `repo` without a parent (a
    /// copy), raising `stop` when its session is fenced.
    pub(crate) fn without_parent(
        repo: &Repository,
        index: Arc<dyn Index>,
        handle: &Handle,
        dry_run: bool,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            repo: repo.clone(),
            index,
            handle: handle.clone(),
            claimed: Mutex::new(HashSet::new()),
            reuse_unasked: false,
            unconfirmed: Mutex::new(Vec::new()),
            counters: Counters {
                fenced: Some(stop),
                ..Counters::default()
            },
            warnings: Mutex::new(Vec::new()),
            index_warned: AtomicBool::new(false),
            dry_run,
            tree_cache: TreeCache::for_repo(repo),
            early: None,
        }
    }

    /// For a dry run: whether the index lacks `id` (or holds it condemned),
    /// asked without refreshing anything.
    fn unknown_read_only(&self, id: ChunkId) -> Result<Vec<bool>, cairn_index::IndexError> {
        let found = self.handle.block_on(self.index.lookup(&[id]))?;
        Ok(found
            .iter()
            .map(|r| r.is_none_or(|r| r.condemned))
            .collect())
    }

    /// Decides whether this run must store chunk `id`: true exactly once per
    /// chunk the index does not know. An index that does not answer counts
    /// as "unknown": the chunk is uploaded again rather than the backup failing.
    pub fn claim(&self, id: ChunkId, _kind: BlobKind) -> Result<bool, String> {
        if !self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            Counters::add(&self.counters.reused, 1);
            return Ok(false);
        }
        let answer = if self.dry_run {
            self.unknown_read_only(id)
        } else {
            self.handle.block_on(self.index.unknown_chunks(&[id]))
        };
        match answer {
            Ok(unknown) if unknown.first() == Some(&false) => {
                Counters::add(&self.counters.reused, 1);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => {
                if !self.index_warned.swap(true, Ordering::Relaxed) {
                    self.warn_only(format!(
                        "index did not answer ({e}); uploading chunks it may already have"
                    ));
                }
                Ok(true)
            }
        }
    }

    /// For each unchanged file from the parent: true if its chunks may be
    /// reused. A backup that holds a session reuses them without asking the
    /// index: the parent lists them, and prune keeps what a running backup's
    /// parent lists (crate docs of `cairn_index`); `confirm_parent_reuse`
    /// covers the parent being forgotten meanwhile. Without a session, true
    /// only if the index confirms every chunk (refreshing its last-seen
    /// time); any other answer means the file is read again, so a chunk
    /// garbage collection condemned is never reused. One call serves all the
    /// files of a directory (the walker asks once per directory).
    pub fn reuse_from_parent(&self, olds: &[&cairn_chunk_store::tree::Node]) -> Vec<bool> {
        if self.reuse_unasked {
            let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
            return olds
                .iter()
                .map(|o| o.chunk_ids().map(|ids| unconfirmed.extend(ids)).is_ok())
                .collect();
        }
        let lists: Vec<Option<Vec<ChunkId>>> = olds.iter().map(|o| o.chunk_ids().ok()).collect();
        let ask: Vec<ChunkId> = {
            let claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = HashSet::new();
            lists
                .iter()
                .flatten()
                .flatten()
                .filter(|id| !claimed.contains(*id) && seen.insert(**id))
                .copied()
                .collect()
        };
        let known: HashSet<ChunkId> = if ask.is_empty() {
            HashSet::new()
        } else {
            match self.handle.block_on(self.index.unknown_chunks(&ask)) {
                Ok(unknown) if unknown.len() == ask.len() => ask
                    .iter()
                    .zip(unknown)
                    .filter(|(_, u)| !u)
                    .map(|(id, _)| *id)
                    .collect(),
                _ => HashSet::new(),
            }
        };
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        claimed.extend(known.iter().copied());
        lists
            .iter()
            .map(|list| {
                list.as_ref()
                    .is_some_and(|ids| ids.iter().all(|id| claimed.contains(id)))
            })
            .collect()
    }

    /// True if tree `id`, the same as the parent snapshot's tree of its
    /// directory, is reused without asking the index, like the chunks of an
    /// unchanged file (see [`Shared::reuse_from_parent`]).
    pub fn reuse_parent_tree(&self, id: ChunkId) -> bool {
        if !self.reuse_unasked {
            return false;
        }
        self.unconfirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        Counters::add(&self.counters.reused, 1);
        true
    }

    /// Records an unreadable source entry.
    pub fn warn(&self, message: String) {
        Counters::add(&self.counters.errors, 1);
        self.warn_only(message);
    }

    fn warn_only(&self, message: String) {
        crate::notify::warning(&message);
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

/// Registers packs that are in the store but not in the index: a backup
/// killed between storing a pack and recording it leaves such packs, and
/// their chunks are then reused instead of uploaded again.
pub(crate) async fn register_orphan_packs(repo: &Repository, index: &dyn Index) -> Result<()> {
    let packs = repo.list_packs().await?;
    let ids: Vec<cairn_chunk_store::PackId> = packs.iter().map(|(id, _)| *id).collect();
    let unregistered = index.unregistered_packs(&ids).await?;
    for ((id, size), missing) in packs.into_iter().zip(unregistered) {
        if !missing {
            continue;
        }
        // A pack that cannot be read is left for `check` to report.
        if let Ok(entries) = repo.read_pack_trailer(&id, Some(size)).await {
            index.register_pack(id, &entries).await?;
        }
    }
    Ok(())
}

/// A backup's session: begun once the parent is chosen (before its trees
/// are read), renewed in the background, committed before the manifest is
/// written (the GC protocol of
/// the `cairn_index` crate docs). Without an index that keeps sessions (the
/// cluster is down) the backup runs without one: it then confirms no chunk,
/// so it uploads everything, and its packs enter the index only when a
/// later backup or prune registers them.
pub(crate) struct SessionGuard {
    handle: Handle,
    index: Arc<dyn Index>,
    ended: bool,
    pub(crate) session: Option<(cairn_index::SessionId, u32)>,
    /// Raised to stop the pipeline when the session is fenced.
    pub(crate) stop: Arc<AtomicBool>,
    fenced: Arc<Mutex<Option<String>>>,
    /// When the index last confirmed the lease (begin or renew).
    confirmed: Arc<Mutex<Instant>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

const FENCED: &str = "backup session expired (its lease was not renewed in time), so prune may have removed data this backup relies on; no snapshot was written, run the backup again";

impl SessionGuard {
    /// No session (a dry run).
    pub(crate) fn none(handle: &Handle, index: &Arc<dyn Index>) -> Self {
        Self {
            handle: handle.clone(),
            index: index.clone(),
            ended: true,
            session: None,
            stop: Arc::new(AtomicBool::new(false)),
            fenced: Arc::new(Mutex::new(None)),
            confirmed: Arc::new(Mutex::new(Instant::now())),
            renewer: None,
        }
    }

    pub(crate) fn begin(
        handle: &Handle,
        index: &Arc<dyn Index>,
        host: &str,
        parent: Option<SnapshotId>,
        lease_secs: u32,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fenced = Arc::new(Mutex::new(None));
        let confirmed = Arc::new(Mutex::new(Instant::now()));
        let session = match handle.block_on(index.begin_session(host, parent, lease_secs)) {
            Ok(s) => Some((s.id, u32::try_from(s.lease).unwrap_or(lease_secs).max(1))),
            Err(e) => {
                tracing::warn!("backup runs without a session: {e}");
                None
            }
        };
        let renewer = session.map(|(id, lease)| {
            let (index, stop, fenced) = (index.clone(), stop.clone(), fenced.clone());
            let confirmed = confirmed.clone();
            handle.spawn(async move {
                let every = std::time::Duration::from_millis(u64::from(lease) * 1000 / 3);
                loop {
                    tokio::time::sleep(every).await;
                    let asked = Instant::now();
                    match index.renew_session(id).await {
                        Ok(_) => *confirmed.lock().unwrap_or_else(|p| p.into_inner()) = asked,
                        Err(cairn_index::IndexError::Fenced(_)) => {
                            *fenced.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(FENCED.to_string());
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                        // A node that does not answer now may answer next time;
                        // if the lease runs out meanwhile, the commit is refused.
                        Err(e) => tracing::warn!("session not renewed: {e}"),
                    }
                }
            })
        });
        Self {
            handle: handle.clone(),
            index: index.clone(),
            ended: false,
            session,
            stop,
            fenced,
            confirmed,
            renewer,
        }
    }

    /// The fencing error, if the lease was lost while the backup ran.
    pub(crate) fn fenced(&self) -> Option<anyhow::Error> {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| anyhow!("{m}"))
    }

    /// Asks the index for permission to write the manifest of `snapshot`.
    /// The manifest must then be written within half a lease.
    pub(crate) fn commit(&self, handle: &Handle, snapshot: SnapshotId) -> Result<()> {
        let Some((id, lease)) = self.session else {
            return Ok(());
        };
        let asked = Instant::now();
        match handle.block_on(self.index.commit_session(id, snapshot)) {
            Ok(_) => {}
            Err(cairn_index::IndexError::Fenced(_)) => return Err(anyhow!("{FENCED}")),
            // The node holding the session is unreachable. While the lease it
            // last confirmed still runs (half of it, for clock rates and the
            // write itself), prune treats the session as running, so writing
            // is safe and an unreachable index costs nothing. Past that, the
            // session may have expired and prune acted: no snapshot.
            Err(e) => {
                let since = self
                    .confirmed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                if since.as_secs_f64() < f64::from(lease) / 2.0 {
                    crate::notify::warning(format!(
                        "the index did not confirm the backup session ({e}); its lease still runs, writing the snapshot"
                    ));
                    return Ok(());
                }
                return Err(anyhow!(
                    "the index has not confirmed the backup session for {}s, more than half its {lease}s lease ({e}); no snapshot was written, run the backup again",
                    since.as_secs()
                ));
            }
        }
        if asked.elapsed().as_secs_f64() > f64::from(lease) / 2.0 {
            return Err(anyhow!("{FENCED}"));
        }
        Ok(())
    }

    /// Ends the session: once the manifest is stored, or when the backup
    /// stops without one (what it stored is then unreferenced, and garbage
    /// collection need not wait for it). If the index does not hear it, the
    /// session simply expires one lease later.
    pub(crate) fn end(&mut self) {
        self.finish();
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some((id, _)) = self.session
            && let Err(e) = self.handle.block_on(self.index.end_session(id))
        {
            tracing::warn!("session not ended: {e}");
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // `run` is called outside the runtime, so blocking here is allowed.
        self.end();
    }
}

/// Runs once the snapshot is written, while the session still holds: makes
/// sure the chunks reused from `parent` without asking the index are live.
/// If the parent's manifest is still in the store, they are: every prune
/// that could condemn them either listed the parent or lists this snapshot
/// (crate docs of `cairn_index`). If it was forgotten meanwhile, the index
/// confirms them now (refreshing their last-seen times); a chunk it no
/// longer knows means prune may remove it, and the snapshot cannot stand.
fn confirm_parent_reuse(
    handle: &Handle,
    repo: &Repository,
    index: &dyn Index,
    parent: SnapshotId,
    mut reused: Vec<ChunkId>,
) -> Result<()> {
    if reused.is_empty() {
        return Ok(());
    }
    let key = cairn_chunk_store::manifest::manifest_key(&parent);
    if let Ok(true) = handle.block_on(repo.store().exists(&key)) {
        return Ok(());
    }
    reused.sort_unstable();
    reused.dedup();
    let lost = |why: String| {
        anyhow!(
            "the parent snapshot {} was forgotten while this backup ran, and {why}; the new snapshot was withdrawn, run the backup again",
            parent.short()
        )
    };
    for batch in reused.chunks(crate::prune::GC_BATCH) {
        let unknown = handle.block_on(index.unknown_chunks(batch)).map_err(|e| {
            lost(format!(
                "the index could not confirm the data reused from it ({e})"
            ))
        })?;
        if unknown.len() != batch.len() || unknown.iter().any(|u| *u) {
            return Err(lost(
                "prune may remove data this backup reused from it".to_string(),
            ));
        }
    }
    Ok(())
}

/// The latest snapshot of the same host and paths.
fn find_parent(
    snapshots: &[(SnapshotId, Snapshot)],
    host: &str,
    paths: &[String],
) -> Option<SnapshotId> {
    let mut want = paths.to_vec();
    want.sort();
    snapshots
        .iter()
        .rev()
        .find(|(_, s)| {
            let mut have = s.paths.clone();
            have.sort();
            s.host == host && have == want
        })
        .map(|(id, _)| *id)
}

/// Runs a backup. Blocking: call from a thread outside the runtime.
pub fn run(
    handle: &Handle,
    repo: &Repository,
    index: Arc<dyn Index>,
    options: BackupOptions,
) -> Result<BackupReport> {
    let start = Instant::now();
    let time_ns = options
        .time_ns
        .unwrap_or_else(cairn_chunk_store::now_unix_nanos);
    let mut paths = Vec::new();
    for p in &options.paths {
        let abs =
            std::path::absolute(p).with_context(|| format!("cannot back up {}", p.display()))?;
        abs.symlink_metadata()
            .map_err(|e| anyhow!("cannot back up {}: {e}", abs.display()))?;
        paths.push(abs);
    }
    let path_strings: Vec<String> = match &options.stream {
        Some(_) if !paths.is_empty() => {
            return Err(anyhow!(
                "give either paths or a stream to back up, not both"
            ));
        }
        Some(s) => vec![s.snapshot_path()?],
        None if paths.is_empty() => {
            return Err(anyhow!("nothing to back up: give at least one path"));
        }
        None => paths.iter().map(|p| p.display().to_string()).collect(),
    };
    // A command starts before anything else, so a typo fails at once; its
    // guard stops it on any early return.
    let (stream_reader, stream_finish) = match &options.stream {
        Some(s) => {
            let (reader, finish) = s.open()?;
            (Some(reader), Some(finish))
        }
        None => (None, None),
    };

    // Where the time goes, for `CAIRN_LOG=cairn_client=debug`.
    let phase =
        |what: &str| tracing::debug!(ms = start.elapsed().as_millis() as u64, "backup: {what}");
    if !options.dry_run {
        handle.block_on(register_orphan_packs(repo, &*index))?;
        phase("orphan packs registered");
    }
    let snapshots = handle.block_on(repo.snapshots())?;
    phase("snapshots listed");
    let parent = find_parent(&snapshots, &options.host, &path_strings);
    let mut session = if options.dry_run {
        SessionGuard::none(handle, &index)
    } else {
        SessionGuard::begin(handle, &index, &options.host, parent, options.lease_secs)
    };
    phase("session begun");
    let tree_cache = TreeCache::for_repo(repo);
    let source =
        BlobSource::new(repo.clone(), Some(index.clone())).with_tree_cache(tree_cache.clone());
    let parent_root = match parent {
        Some(id) => {
            let snap = snapshots
                .iter()
                .find(|(s, _)| *s == id)
                .map(|(_, s)| s.clone());
            snap.and_then(|s| s.root_tree().ok()).and_then(|root| {
                // The walk compares every directory with the parent's: its
                // trees load in batches now, not one round trip each later.
                handle.block_on(crate::browse::preload(&source, &[root]));
                source
                    .tree_blocking(handle, &root)
                    .ok()
                    .map(|tree| (root, tree))
            })
        }
        None => None,
    };
    phase("parent trees loaded");

    // The walk begins: the early listing stops; what it read stays.
    if let Some(early) = &options.early_listing {
        early.stop();
    }
    let shared = Arc::new(Shared {
        repo: repo.clone(),
        index: index.clone(),
        handle: handle.clone(),
        claimed: Mutex::new(HashSet::new()),
        // A dry run changes nothing prune relies on, so it need not confirm.
        reuse_unasked: (options.dry_run || session.session.is_some()) && parent.is_some(),
        unconfirmed: Mutex::new(Vec::new()),
        counters: Counters {
            cancel: options.cancel.clone(),
            fenced: Some(session.stop.clone()),
            ..Counters::default()
        },
        warnings: Mutex::new(Vec::new()),
        index_warned: AtomicBool::new(false),
        dry_run: options.dry_run,
        tree_cache,
        early: options.early_listing.clone(),
    });

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Four file workers per core: with a cold cache most of a small file's
    // time is the wait for its read, which the other workers overlap (a
    // kernel tree's first backup: 7.3-7.7 s with two per core, 6.0-6.2 s
    // with four). Chunking buffers and sealed chunks in flight are bounded
    // by cores, not workers.
    let workers = cores * 4;
    let (job_tx, job_rx) = bounded(workers * 4);
    let (blob_tx, blob_rx) = bounded(cores * 4);
    let (dir_tx, dir_rx) = bounded(4096);
    let failure = Arc::new(Mutex::new(None));

    let ticker = options.progress.then(|| {
        let s = shared.clone();
        Ticker::start("backup", None, move || {
            (
                s.counters.bytes_read(),
                format!("{} files", s.counters.files()),
            )
        })
    });

    let packer = packer::start(shared.clone(), blob_rx, failure.clone())?;
    let mut worker_handles = Vec::new();
    // Chunks of large files handed on: one fewer than the cores, so a reader
    // and its helpers fill the cores without crowding them. Streams and
    // their segments: one large file streams at a time (it keeps every core
    // busy through its helpers, and the other workers go on with smaller
    // files, which never take a segment); the spare segments carry chunks
    // still on their way to the packer, and outnumber the handed-on chunks
    // by one (see `SegmentPool`). A segment is touched as far as it is
    // read, one maximum chunk beside what a read carries over, and stays in
    // memory while the stream is open: 1 + 2 segments of about 9 MiB on two
    // cores, most of the backup's peak memory. Each segment of a large file
    // is cut in as many parts as there are cores.
    let streams = 1;
    let handed_on = cores.saturating_sub(1).max(1);
    let queue = files::ChunkQueue::new(handed_on, cores, streams);
    let segments = SegmentPool::new(repo.chunker(), streams, handed_on + 1);
    for i in 0..workers {
        let (shared, jobs, blobs) = (shared.clone(), job_rx.clone(), blob_tx.clone());
        let (queue, segments) = (queue.clone(), segments.clone());
        worker_handles.push(
            std::thread::Builder::new()
                .name(format!("chunker-{i}"))
                .spawn(move || files::worker(shared, jobs, queue, segments, blobs))
                .context("starting workers")?,
        );
    }
    drop(queue);
    drop(job_rx);
    let builder = {
        let (shared, blobs) = (shared.clone(), blob_tx.clone());
        std::thread::Builder::new()
            .name("trees".into())
            .spawn(move || walk::build_trees(shared, dir_rx, blobs))
            .context("starting the tree builder")?
    };
    drop(blob_tx);

    let walked = if let (Some(reader), Some(s)) = (stream_reader, &options.stream) {
        let mut walker = walk::Walker::new(&shared, &source, &options.excludes, job_tx, dir_tx);
        walker.walk_stream(&s.name, reader)
    } else {
        let trie = walk::SourceTrie::new(&paths);
        let pool = walk::Prefetch::new();
        std::thread::scope(|scope| {
            for _ in 0..(cores * 2).min(8) {
                scope.spawn(|| pool.serve(&shared, &source, &options.excludes));
            }
            let mut walker = walk::Walker::new(&shared, &source, &options.excludes, job_tx, dir_tx)
                .with_prefetch(&pool);
            let walked = walker.walk_root(&trie, parent_root);
            pool.close();
            walked
            // The walker drops its senders here, which lets the workers and
            // the tree builder finish.
        })
    };
    if walked.is_err() {
        shared.counters.abort();
    }
    phase("walked");
    let trees = builder
        .join()
        .map_err(|_| anyhow!("tree builder panicked"))?;
    for w in worker_handles {
        w.join().map_err(|_| anyhow!("file worker panicked"))?;
    }
    let packed = packer.join().map_err(|_| anyhow!("packer panicked"))?;
    phase("packs stored");
    if let Some(t) = ticker {
        t.finish();
    }
    if let Some(e) = session.fenced() {
        return Err(e);
    }
    if shared.counters.cancelled() {
        return Err(Interrupted.into());
    }
    packed?;
    if let Some(finish) = stream_finish {
        finish.check()?;
        if let Some(w) = shared
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
        {
            return Err(anyhow!("{w}; no snapshot was written"));
        }
    }
    let root_key = walked?;
    let trees = trees?;
    let root = *trees
        .get(&root_key)
        .ok_or_else(|| anyhow!("root tree missing"))?;
    handle.block_on(index.flush())?;
    phase("index flushed");

    let stats = shared.counters.stats(start.elapsed().as_millis() as u64);
    let params = repo.config().chunker;
    let snapshot = Snapshot {
        root: root.as_bytes().to_vec(),
        time_ns,
        host: options.host.clone(),
        user: options.user.clone(),
        paths: path_strings,
        tags: options.tags.clone(),
        parent: parent.map(|p| p.as_bytes().to_vec()).unwrap_or_default(),
        chunk_min: params.min,
        chunk_avg: params.avg,
        chunk_max: params.max,
        stats: Some(stats.clone()),
        program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        original: Vec::new(),
        copied_from: Vec::new(),
    };
    let (snapshot_id, sealed) = repo.seal_snapshot(&snapshot);
    let report = |dry_run: bool| BackupReport {
        dry_run,
        snapshot_id,
        parent,
        data_chunks_new: Counters::get(&shared.counters.data_new),
        tree_chunks_new: Counters::get(&shared.counters.tree_new),
        trees_encoded: Counters::get(&shared.counters.trees_encoded),
        dirs_listed_early: shared.early.as_ref().map_or(0, |e| e.taken()),
        stats: stats.clone(),
        seconds: start.elapsed().as_secs_f64(),
        warnings: shared
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    if options.dry_run {
        return Ok(report(true));
    }
    session.commit(handle, snapshot_id)?;
    handle.block_on(repo.put_sealed_snapshot(&snapshot_id, sealed))?;
    phase("snapshot written");
    let unconfirmed =
        std::mem::take(&mut *shared.unconfirmed.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(parent) = parent
        && let Err(e) = confirm_parent_reuse(handle, repo, &*index, parent, unconfirmed)
    {
        // The snapshot references data prune may remove: withdrawn, so that
        // nothing in the repository points at it.
        if let Err(w) = handle.block_on(crate::retention::remove_snapshots(repo, &[snapshot_id])) {
            tracing::warn!("snapshot {} not withdrawn: {w:#}", snapshot_id.short());
        }
        session.end();
        return Err(e);
    }
    session.end();
    phase("session ended");
    Ok(report(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_chunk_store::PackId;
    use cairn_chunk_store::crypto::Cipher;
    use cairn_chunk_store::fingerprint::HashAlgo;
    use cairn_chunk_store::keys::KdfParams;
    use cairn_chunk_store::pack::{BlobLocation, Compression, PackEntry};
    use cairn_chunk_store::repository::InitOptions;
    use cairn_chunk_store::store::LocalStore;
    use cairn_index::{DedupIndex, Engine, EngineOptions};

    /// A local repository, its embedded index, and one stored snapshot.
    struct Fixture {
        _dir: tempfile::TempDir,
        runtime: tokio::runtime::Runtime,
        repo: Repository,
        index: Engine,
        snapshot: SnapshotId,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let options = InitOptions {
            hash: HashAlgo::Blake3,
            cipher: Cipher::DEFAULT,
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            host: "h".into(),
            user: "u".into(),
            chunker: None,
            object_lock: None,
            sizes: cairn_chunk_store::config::SizeProtection::DEFAULT,
        };
        let repo = runtime
            .block_on(Repository::init(store, b"pw", options))
            .expect("init");
        let index = Engine::open(&dir.path().join("index"), EngineOptions::default(), &|_| {})
            .expect("index");
        let snapshot = Snapshot {
            root: vec![7; 32],
            host: "h".into(),
            ..Snapshot::default()
        };
        let (snapshot, sealed) = repo.seal_snapshot(&snapshot);
        runtime
            .block_on(repo.put_sealed_snapshot(&snapshot, sealed))
            .expect("snapshot");
        Fixture {
            _dir: dir,
            runtime,
            repo,
            index,
            snapshot,
        }
    }

    fn id(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    /// Registers chunks `ids` in one pack.
    fn register(f: &Fixture, ids: &[u8]) {
        let pack = PackId::from_bytes([9; 32]);
        let entries: Vec<PackEntry> = ids
            .iter()
            .map(|n| PackEntry {
                id: id(*n),
                location: BlobLocation {
                    pack,
                    offset: u64::from(*n) * 100,
                    stored_len: 100,
                    raw_len: 100,
                    kind: BlobKind::Data,
                    compression: Compression::None,
                },
            })
            .collect();
        f.runtime
            .block_on(f.index.register_pack(pack, &entries))
            .expect("register");
    }

    fn confirm(f: &Fixture, parent: SnapshotId, reused: &[u8]) -> Result<()> {
        let reused = reused.iter().map(|n| id(*n)).collect();
        confirm_parent_reuse(f.runtime.handle(), &f.repo, &f.index, parent, reused)
    }

    /// Backs up `src` into the fixture's repository.
    fn back_up(f: &Fixture, index: &Arc<dyn Index>, src: &std::path::Path) -> BackupReport {
        back_up_listed(f, index, src, None)
    }

    /// Backs up `src`, with its directories read ahead by `early_listing`.
    fn back_up_listed(
        f: &Fixture,
        index: &Arc<dyn Index>,
        src: &std::path::Path,
        early_listing: Option<Arc<early::EarlyListing>>,
    ) -> BackupReport {
        let options = BackupOptions {
            paths: vec![src.to_path_buf()],
            excludes: Excludes::default(),
            tags: Vec::new(),
            host: "h".into(),
            time_ns: None,
            user: "u".into(),
            progress: false,
            cancel: None,
            lease_secs: 60,
            stream: None,
            dry_run: false,
            early_listing,
        };
        run(f.runtime.handle(), &f.repo, index.clone(), options).expect("backup")
    }

    /// The fixture with a fresh index of its own (the snapshot's chunks
    /// unknown to it), and a source directory `src` of three files in four
    /// directories.
    fn fixture_with_source() -> (Fixture, Arc<dyn Index>, std::path::PathBuf) {
        let mut f = fixture();
        let engine = Engine::open(
            &f._dir.path().join("index-2"),
            EngineOptions::default(),
            &|_| {},
        )
        .expect("index");
        let index: Arc<dyn Index> = Arc::new(std::mem::replace(&mut f.index, engine));
        let src = f._dir.path().join("src");
        for dir in ["a/b", "a/c", "d"] {
            std::fs::create_dir_all(src.join(dir)).expect("mkdir");
        }
        for (file, body) in [("a/b/x", "one"), ("a/c/y", "two"), ("d/z", "three")] {
            std::fs::write(src.join(file), body).expect("write");
        }
        (f, index, src)
    }

    #[test]
    fn directories_equal_to_the_parent_keep_its_trees_without_encoding() {
        let (f, index, src) = fixture_with_source();
        // The directories from / down to `src`, and the four below it.
        let to_src = src.components().count() as u64;
        let first = back_up(&f, &index, &src);
        assert_eq!(first.trees_encoded, to_src + 4, "{first:?}");

        let unchanged = back_up(&f, &index, &src);
        assert_eq!(unchanged.parent, Some(first.snapshot_id));
        assert_eq!(unchanged.trees_encoded, 0, "{unchanged:?}");
        assert_eq!(unchanged.tree_chunks_new, 0, "{unchanged:?}");

        // One file changes: the trees from / down to its directory are new,
        // its sibling directories are the parent's.
        std::fs::write(src.join("a/b/x"), "one, longer now").expect("write");
        let changed = back_up(&f, &index, &src);
        let path_to_b = src.join("a/b").components().count() as u64;
        assert_eq!(changed.trees_encoded, path_to_b, "{changed:?}");
        assert_eq!(changed.tree_chunks_new, path_to_b, "{changed:?}");
        assert_eq!(changed.data_chunks_new, 1, "{changed:?}");
    }

    #[test]
    fn directories_read_while_the_repository_opens_make_the_same_trees() {
        let (f, index, src) = fixture_with_source();
        let read = back_up(&f, &index, &src);
        assert_eq!(read.dirs_listed_early, 0);

        let early = Arc::new(early::EarlyListing::start(
            std::slice::from_ref(&src),
            &Excludes::default(),
        ));
        early.wait();
        let listed = back_up_listed(&f, &index, &src, Some(early));
        // Every directory below the source came from the early listing, and
        // every tree equals the one the walker made by reading.
        assert_eq!(listed.dirs_listed_early, 5, "{listed:?}");
        assert_eq!(listed.parent, Some(read.snapshot_id));
        assert_eq!(listed.trees_encoded, 0, "{listed:?}");
        assert_eq!(listed.stats.files_unmodified, 3, "{listed:?}");

        // A change made after the early listing read the directory is in
        // the next backup, not lost.
        let early = Arc::new(early::EarlyListing::start(
            std::slice::from_ref(&src),
            &Excludes::default(),
        ));
        early.wait();
        std::fs::write(src.join("d/z"), "three, longer now").expect("write");
        let before = back_up_listed(&f, &index, &src, Some(early));
        assert_eq!(before.stats.files_unmodified, 3, "{before:?}");
        let after = back_up(&f, &index, &src);
        assert_eq!(after.stats.files_changed, 1, "{after:?}");
        assert_eq!(after.data_chunks_new, 1, "{after:?}");
    }

    #[test]
    fn reuse_stands_while_the_parent_is_in_the_store() {
        let f = fixture();
        // Not even known to the index: the parent's manifest lists them, so
        // every prune marks them.
        confirm(&f, f.snapshot, &[1, 2, 3]).expect("parent present");
    }

    #[test]
    fn a_forgotten_parent_makes_the_index_confirm_the_reused_chunks() {
        let f = fixture();
        register(&f, &[1, 2, 3]);
        f.runtime
            .block_on(crate::retention::remove_snapshots(&f.repo, &[f.snapshot]))
            .expect("forget");
        confirm(&f, f.snapshot, &[1, 2, 2, 3]).expect("every chunk known");

        let err = confirm(&f, f.snapshot, &[1, 4]).expect_err("chunk 4 is unknown");
        assert_eq!(
            err.to_string(),
            format!(
                "the parent snapshot {} was forgotten while this backup ran, and prune may remove data this backup reused from it; the new snapshot was withdrawn, run the backup again",
                f.snapshot.short()
            )
        );
    }

    #[test]
    fn confirming_refreshes_last_seen() {
        let f = fixture();
        register(&f, &[5]);
        let before = f
            .runtime
            .block_on(f.index.lookup(&[id(5)]))
            .expect("lookup")[0]
            .expect("record");
        let missing = SnapshotId::from_bytes([1; 32]);
        // Whole seconds: wait for the next one.
        let second = before.last_seen;
        while cairn_chunk_store::now_unix_nanos() / 1_000_000_000 <= second {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        confirm(&f, missing, &[5]).expect("known");
        let after = f
            .runtime
            .block_on(f.index.lookup(&[id(5)]))
            .expect("lookup")[0]
            .expect("record");
        assert!(after.last_seen > before.last_seen, "{before:?} → {after:?}");
    }
}
