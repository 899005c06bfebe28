//! Reading chunks and trees back: locate through the index, or through the
//! pack trailers when the index is absent, busy or incomplete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use cairn_chunk_store::pack::{BlobLocation, PackEntry, pack_key};
use cairn_chunk_store::tree::{NodeKind, Tree};
use cairn_chunk_store::{ChunkId, PackId, RepoError, Repository};
use cairn_index::DedupIndex;
use tokio::runtime::Handle;

use crate::treecache::{CachedTrees, TreeCache};

/// Trees held in memory at most (a kernel source tree has about 5,000).
pub const TREE_CACHE: usize = 20_000;

/// Trees a walk preloads at most ([`BlobSource::preload_trees`]); the
/// rest of a larger snapshot loads on demand.
pub const PRELOAD_LIMIT: usize = TREE_CACHE * 3 / 4;

/// Trees located per index call when preloading.
const PRELOAD_BATCH: usize = 4096;

/// Store reads in flight when preloading trees.
const PRELOAD_READS: usize = 16;

/// Neighbouring trees in a pack are read together if at most this many
/// bytes lie between them.
const RUN_GAP: u64 = 64 * 1024;

/// Trees read together at most.
const RUN_TREES: usize = 256;

/// Chunk locations read from every pack trailer in the store.
pub type TrailerMap = HashMap<ChunkId, BlobLocation>;

/// The trailer of every pack in the store, read with bounded concurrency.
pub async fn read_trailers(
    repo: &Repository,
) -> Result<Vec<(PackId, Result<Vec<PackEntry>, RepoError>)>> {
    let packs = repo.list_packs().await?;
    Ok(bounded_map(packs, 16, |(id, size)| {
        let repo = repo.clone();
        async move { (id, repo.read_pack_trailer(&id, Some(size)).await) }
    })
    .await)
}

/// Where every chunk is according to the pack trailers.
#[derive(Debug, Default)]
pub struct Trailers {
    /// Chunk locations (the first pack listing a chunk wins).
    pub map: TrailerMap,
    /// Packs whose trailer cannot be read, with the reason.
    pub bad: Vec<(PackId, String)>,
    /// Packs found.
    pub packs: usize,
}

/// Reads every pack trailer into one map.
pub async fn read_all_trailers(repo: &Repository) -> Result<Trailers> {
    let mut out = Trailers::default();
    for (id, r) in read_trailers(repo).await? {
        out.packs += 1;
        match r {
            Ok(entries) => {
                for e in entries {
                    out.map.entry(e.id).or_insert(e.location);
                }
            }
            Err(e) => out.bad.push((id, e.to_string())),
        }
    }
    Ok(out)
}

/// Runs `f` over `items` with at most `limit` futures in flight; results in
/// input order.
pub async fn bounded_map<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut handles = Vec::with_capacity(items.len());
    for item in items {
        let fut = f(item);
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(r) => out.push(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// A tree in memory: its verified plaintext, and its decoded form while a
/// walk uses it. A decoded tree takes four to five times the bytes of its
/// encoding (a kernel source tree: 36 MB against 8), so a preloaded tree is
/// kept encoded until it is asked for, and a walk that is done with a tree
/// lets its decoded form go ([`BlobSource::release_tree`]).
struct HeldTree {
    plain: Arc<[u8]>,
    decoded: Option<Arc<Tree>>,
}

/// Finds and reads chunks for restore, listing and check.
#[derive(Clone)]
pub struct BlobSource {
    repo: Repository,
    index: Option<Arc<dyn DedupIndex>>,
    trailers: Arc<tokio::sync::OnceCell<TrailerMap>>,
    trees: Arc<Mutex<HashMap<ChunkId, HeldTree>>>,
    /// Tree packs kept on this client, read once on first use.
    tree_cache: Option<TreeCache>,
    cached: Arc<tokio::sync::OnceCell<CachedTrees>>,
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobSource({})", self.repo.location())
    }
}

impl BlobSource {
    /// A source reading through `index` when given.
    pub fn new(repo: Repository, index: Option<Arc<dyn DedupIndex>>) -> Self {
        Self {
            repo,
            index,
            trailers: Arc::new(tokio::sync::OnceCell::new()),
            trees: Arc::new(Mutex::new(HashMap::new())),
            tree_cache: None,
            cached: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Reads trees from `cache` first when it holds them
    /// ([`crate::treecache`]); every tree is verified either way.
    pub fn with_tree_cache(mut self, cache: Option<TreeCache>) -> Self {
        self.tree_cache = cache;
        self
    }

    /// The cached trees, read on first use; empty without a cache.
    async fn cached_trees(&self) -> &CachedTrees {
        self.cached
            .get_or_init(|| async {
                let (Some(cache), repo) = (self.tree_cache.clone(), self.repo.clone()) else {
                    return CachedTrees::default();
                };
                tokio::task::spawn_blocking(move || cache.load(&repo))
                    .await
                    .unwrap_or_default()
            })
            .await
    }

    /// The plaintext of tree `id` from the client's tree cache, if it holds
    /// it intact.
    async fn cached_tree(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.cached_trees().await.read(&self.repo, id)
    }

    fn held_trees(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, HeldTree>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    async fn trailer_map(&self) -> Result<&TrailerMap> {
        self.trailers
            .get_or_try_init(|| async {
                let map = read_all_trailers(&self.repo).await?.map;
                Ok::<_, anyhow::Error>(map)
            })
            .await
    }

    /// Locations of `ids` (`None` for chunks stored nowhere).
    pub async fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<BlobLocation>>> {
        let mut out: Vec<Option<BlobLocation>> = vec![None; ids.len()];
        if let Some(index) = &self.index {
            // An index error is not fatal: the trailers answer instead.
            if let Ok(found) = index.lookup(ids).await {
                for (slot, rec) in out.iter_mut().zip(found) {
                    *slot = rec.map(|r| r.location);
                }
            }
        }
        if out.iter().any(Option::is_none) {
            let map = self.trailer_map().await?;
            for (slot, id) in out.iter_mut().zip(ids) {
                if slot.is_none() {
                    *slot = map.get(id).copied();
                }
            }
        }
        Ok(out)
    }

    /// Reads and verifies one chunk.
    pub async fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(std::slice::from_ref(id)).await?[0].ok_or_else(|| {
            anyhow!(
                "chunk {id} is not stored in any pack of {}",
                self.repo.location()
            )
        })?;
        match self.repo.read_blob(id, &loc).await {
            Ok(plain) => Ok(plain),
            // The index may name a copy that prune has since repacked and
            // deleted: the pack trailers name the current one.
            Err(e) if self.index.is_some() => {
                match self.trailer_map().await?.get(id).filter(|l| **l != loc) {
                    Some(other) => Ok(self.repo.read_blob(id, other).await?),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads chunk `id` at `location`, located earlier; if it is no longer
    /// there, where it has moved since ([`BlobSource::read_moved`]).
    pub async fn read_at(&self, id: &ChunkId, location: &BlobLocation) -> Result<Vec<u8>> {
        match self.repo.read_blob(id, location).await {
            Ok(plain) => Ok(plain),
            Err(first) => self
                .read_moved(id, location)
                .await
                .map_err(|e| anyhow!("{first}; {e:#}")),
        }
    }

    /// Reads chunk `id`, which is no longer at `stale` (prune repacked it
    /// since it was located): asks the index again, then reads every pack
    /// trailer afresh, since the ones read earlier may predate the repack.
    pub async fn read_moved(&self, id: &ChunkId, stale: &BlobLocation) -> Result<Vec<u8>> {
        if let Some(index) = &self.index
            && let Ok(found) = index.lookup(std::slice::from_ref(id)).await
            && let Some(Some(rec)) = found.first()
            && rec.location != *stale
            && let Ok(plain) = self.repo.read_blob(id, &rec.location).await
        {
            return Ok(plain);
        }
        let fresh = read_all_trailers(&self.repo).await?;
        match fresh.map.get(id).filter(|l| *l != stale) {
            Some(location) => Ok(self.repo.read_blob(id, location).await?),
            None => Err(anyhow!(
                "chunk {id} is no longer stored in any pack of {}",
                self.repo.location()
            )),
        }
    }

    /// Reads a run of chunks, coalescing neighbours in one pack into one read.
    pub async fn read_run(&self, run: &[(ChunkId, BlobLocation)]) -> Result<Vec<Result<Vec<u8>>>> {
        let Some((_, first)) = run.first() else {
            return Ok(Vec::new());
        };
        let start = first.offset;
        let end = run
            .iter()
            .map(|(_, l)| l.offset + u64::from(l.stored_len))
            .max()
            .unwrap_or(start);
        let bytes = self
            .repo
            .store()
            .get_range(&pack_key(&first.pack), start, end - start)
            .await?;
        Ok(run
            .iter()
            .map(|(id, l)| {
                let from = (l.offset - start) as usize;
                let sealed = &bytes[from..from + l.stored_len as usize];
                self.repo
                    .open_blob(id, l, sealed)
                    .map_err(anyhow::Error::from)
            })
            .collect())
    }

    /// Loads a tree (cached).
    pub async fn tree(&self, id: &ChunkId) -> Result<Arc<Tree>> {
        let held = self
            .held_trees()
            .get(id)
            .map(|t| (t.plain.clone(), t.decoded.clone()));
        let plain: Arc<[u8]> = match held {
            Some((_, Some(tree))) => return Ok(tree),
            Some((plain, None)) => plain,
            None => match self.cached_tree(id).await {
                Some(plain) => plain.into(),
                None => self
                    .read(id)
                    .await
                    .map_err(|e| anyhow!("tree {id}: {e:#}"))?
                    .into(),
            },
        };
        let tree = Arc::new(Tree::decode_bytes(&plain).map_err(|e| anyhow!("tree {id}: {e}"))?);
        let mut held = self.held_trees();
        if held.len() > TREE_CACHE {
            held.clear();
        }
        held.insert(
            *id,
            HeldTree {
                plain,
                decoded: Some(tree.clone()),
            },
        );
        Ok(tree)
    }

    /// Lets go of the decoded form of tree `id`, for a walk that is done
    /// with it; its plaintext stays, so a second visit decodes it again
    /// without a read.
    pub fn release_tree(&self, id: &ChunkId) {
        if let Some(held) = self.held_trees().get_mut(id) {
            held.decoded = None;
        }
    }

    /// Loads the trees below `roots` ahead of a walk, level by level: one
    /// index call per level (per [`PRELOAD_BATCH`] trees) and one store read
    /// per run of neighbouring trees in a pack, instead of one of each per
    /// directory. On a cluster across a network, or on S3, that turns a
    /// walk's thousands of round trips into tens. Stops after `limit` trees
    /// (the rest load on demand); a tree that cannot be preloaded is simply
    /// left to [`BlobSource::tree`], which reports the error. Returns how
    /// many trees it loaded.
    pub async fn preload_trees(&self, roots: &[ChunkId], limit: usize) -> Result<usize> {
        let mut level: Vec<ChunkId> = roots.to_vec();
        let mut loaded = 0usize;
        while !level.is_empty() && loaded < limit {
            level.sort_unstable();
            level.dedup();
            {
                let held = self.held_trees();
                level.retain(|id| !held.contains_key(id));
            }
            level.truncate(limit - loaded);
            // The client's own tree packs first: no index call, no store read.
            let mut trees = Vec::new();
            let mut remote = Vec::with_capacity(level.len());
            for id in level {
                match self.cached_tree(&id).await {
                    Some(plain) => trees.push((id, plain)),
                    None => remote.push(id),
                }
            }
            let mut located = Vec::with_capacity(remote.len());
            for batch in remote.chunks(PRELOAD_BATCH) {
                for (id, loc) in batch.iter().zip(self.locate(batch).await?) {
                    if let Some(loc) = loc {
                        located.push((*id, loc));
                    }
                }
            }
            trees.extend(self.read_trees(located).await);
            let mut next = Vec::new();
            let mut held = self.held_trees();
            for (id, plain) in trees {
                // A tree that does not decode is left to `tree`, which says so.
                let Ok(tree) = Tree::decode_bytes(&plain) else {
                    continue;
                };
                for node in &tree.nodes {
                    if node.node_kind() == Some(NodeKind::Dir)
                        && let Ok(sub) = node.subtree_id()
                    {
                        next.push(sub);
                    }
                }
                if held.len() >= TREE_CACHE {
                    break;
                }
                let plain = plain.into();
                held.insert(
                    id,
                    HeldTree {
                        plain,
                        decoded: None,
                    },
                );
                loaded += 1;
            }
            level = next;
        }
        Ok(loaded)
    }

    /// Reads the plaintext of located trees, neighbours in a pack in one
    /// read, with bounded concurrency; trees that fail to read are left out.
    async fn read_trees(
        &self,
        mut located: Vec<(ChunkId, BlobLocation)>,
    ) -> Vec<(ChunkId, Vec<u8>)> {
        located.sort_by_key(|(_, l)| (l.pack, l.offset));
        let mut runs: Vec<Vec<(ChunkId, BlobLocation)>> = Vec::new();
        for (id, loc) in located {
            match runs.last_mut() {
                Some(run)
                    if run.last().is_some_and(|(_, prev)| {
                        prev.pack == loc.pack
                            && loc.offset <= prev.offset + u64::from(prev.stored_len) + RUN_GAP
                    }) && run.len() < RUN_TREES =>
                {
                    run.push((id, loc));
                }
                _ => runs.push(vec![(id, loc)]),
            }
        }
        let read = bounded_map(runs, PRELOAD_READS, |run| {
            let source = self.clone();
            async move {
                let plain = source.read_run(&run).await;
                (run, plain)
            }
        })
        .await;
        let mut out = Vec::new();
        for (run, plain) in read {
            let Ok(plain) = plain else { continue };
            for ((id, _), bytes) in run.into_iter().zip(plain) {
                if let Ok(bytes) = bytes {
                    out.push((id, bytes));
                }
            }
        }
        out
    }

    /// Blocking form of [`BlobSource::tree`] for pipeline threads.
    pub fn tree_blocking(&self, handle: &Handle, id: &ChunkId) -> Result<Arc<Tree>> {
        handle.block_on(self.tree(id))
    }
}
