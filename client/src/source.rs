//! Reading chunks and trees back: locate through the index, or through the
//! pack trailers when the index is absent, busy or incomplete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use cairn_chunk_store::pack::{BlobLocation, PackEntry, pack_key};
use cairn_chunk_store::tree::Tree;
use cairn_chunk_store::{ChunkId, PackId, RepoError, Repository};
use cairn_index::Index;
use tokio::runtime::Handle;

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

/// Finds and reads chunks for restore, listing and check.
#[derive(Clone)]
pub struct BlobSource {
    repo: Repository,
    index: Option<Arc<dyn Index>>,
    trailers: Arc<tokio::sync::OnceCell<TrailerMap>>,
    trees: Arc<Mutex<HashMap<ChunkId, Arc<Tree>>>>,
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobSource({})", self.repo.location())
    }
}

impl BlobSource {
    /// A source reading through `index` when given.
    pub fn new(repo: Repository, index: Option<Arc<dyn Index>>) -> Self {
        Self {
            repo,
            index,
            trailers: Arc::new(tokio::sync::OnceCell::new()),
            trees: Arc::new(Mutex::new(HashMap::new())),
        }
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
        if let Some(t) = self.trees.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(t.clone());
        }
        let bytes = self
            .read(id)
            .await
            .map_err(|e| anyhow!("tree {id}: {e:#}"))?;
        let tree = Arc::new(Tree::decode_bytes(&bytes).map_err(|e| anyhow!("tree {id}: {e}"))?);
        let mut cache = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 20_000 {
            cache.clear();
        }
        cache.insert(*id, tree.clone());
        Ok(tree)
    }

    /// Blocking form of [`BlobSource::tree`] for pipeline threads.
    pub fn tree_blocking(&self, handle: &Handle, id: &ChunkId) -> Result<Arc<Tree>> {
        handle.block_on(self.tree(id))
    }
}
