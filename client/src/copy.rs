//! `cairn copy`: snapshots of one repository stored into another, which may
//! have another password, backend and index (an off-site copy).
//!
//! Each snapshot is copied like a backup of its own content: its trees are
//! walked depth first, every file's content is read from the source and
//! stored in the target as a backup stores data (fingerprinted under the
//! target's key, asked of the target's index, uploaded only if unknown),
//! and every tree is rewritten with the new ids. The manifest keeps the
//! source's time, host, user, paths and tags and records the source
//! snapshot's id (`copied_from`), so the next copy skips it.
//!
//! **Chunks or files.** Where both repositories cut data alike (same chunker
//! bounds and gear-table seed, which `init --copy-chunker-params-from`
//! arranges), each source chunk becomes exactly one target chunk: nothing
//! is cut again, and a chunk whose target id this run already knows is not
//! even read unless the target lacks it. Otherwise each file is re-chunked
//! by the target's chunker.
//!
//! **Safety beside prune, and resuming.** Each snapshot is copied under a
//! backup session of the target's index and committed like a backup (the
//! GC protocol of the `cairn_index` crate docs holds unchanged). Packs are
//! registered as they are stored, so a copy that is interrupted leaves
//! them known to the index and the rerun uploads only what is missing.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use cairn_chunk_store::chunker::{ChunkStream, SegmentPool};
use cairn_chunk_store::manifest::{Snapshot, SnapshotStats};
use cairn_chunk_store::pack::{BlobKind, PreparedBlob};
use cairn_chunk_store::tree::{Node, NodeKind, Tree};
use cairn_chunk_store::{ChunkId, Repository, SnapshotId};
use cairn_index::Index;
use crossbeam_channel::{Sender, bounded};
use tokio::runtime::Handle;

use crate::backup::{SessionGuard, Shared, packer, register_orphan_packs};
use crate::progress::Ticker;
use crate::source::BlobSource;

/// Source chunks read ahead of the copy.
const READ_AHEAD: usize = 8;

/// Chunks located per index call or trailer lookup.
const LOCATE_BATCH: usize = 4096;

/// How the content moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// Both repositories cut data alike: chunk for chunk.
    Chunks,
    /// Files are cut again by the target's chunker.
    Rechunk,
}

/// What to copy and how.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Count what would be stored; store nothing, write no snapshot.
    pub dry_run: bool,
    /// Lease of each snapshot's session, in seconds.
    pub lease_secs: u32,
    /// Show progress on stderr.
    pub progress: bool,
}

/// One snapshot copied.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Its id in the source.
    pub source: SnapshotId,
    /// Its id in the target (what it would be, in a dry run).
    pub target: SnapshotId,
    /// Its time, host and paths, as in the source.
    pub snapshot: Snapshot,
    /// What storing it took.
    pub stats: SnapshotStats,
}

/// The outcome of a copy.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Nothing was stored.
    pub dry_run: bool,
    /// How the content moved.
    pub mode: CopyMode,
    /// Snapshots copied, oldest first.
    pub copied: Vec<Copied>,
    /// Source snapshots the target already holds a copy of.
    pub already_present: Vec<SnapshotId>,
    /// Wall time.
    pub seconds: f64,
}

/// The source snapshots that `target_snapshots` already hold: copies of them
/// (`copied_from`), or the very snapshots a copy in the other direction
/// came from.
pub fn already_present(
    source: &[(SnapshotId, Snapshot)],
    target_snapshots: &[(SnapshotId, Snapshot)],
) -> HashSet<SnapshotId> {
    let mut held: HashSet<SnapshotId> = HashSet::new();
    for (id, s) in target_snapshots {
        held.insert(*id);
        held.extend(s.copied_from_id());
    }
    source
        .iter()
        .filter(|(id, s)| {
            held.contains(id) || s.copied_from_id().is_some_and(|c| held.contains(&c))
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Copies `snapshots` (oldest first) from `source` into `target`, whose
/// index is `index`. Blocking: call from a thread outside the runtime.
pub fn run(
    handle: &Handle,
    source: &BlobSource,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    target: &Repository,
    index: Arc<dyn Index>,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let start = Instant::now();
    let mode = if source.repo().chunker_params() == target.chunker_params() {
        CopyMode::Chunks
    } else {
        CopyMode::Rechunk
    };
    let target_snapshots = handle.block_on(target.snapshots())?;
    let present = already_present(&snapshots, &target_snapshots);
    let (skip, todo): (Vec<_>, Vec<_>) = snapshots
        .into_iter()
        .partition(|(id, _)| present.contains(id));
    let mut report = CopyReport {
        dry_run: options.dry_run,
        mode,
        copied: Vec::new(),
        already_present: skip.into_iter().map(|(id, _)| id).collect(),
        seconds: 0.0,
    };
    if todo.is_empty() {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    if !options.dry_run {
        handle.block_on(register_orphan_packs(target, &*index))?;
    }
    let mut copier = Copier {
        handle,
        source,
        mode,
        ids: HashMap::new(),
        pool: SegmentPool::new(target.chunker(), 1, 2),
    };
    let roots: Vec<ChunkId> = todo
        .iter()
        .filter_map(|(_, s)| s.root_tree().ok())
        .collect();
    handle.block_on(crate::browse::preload(source, &roots));
    for (id, snap) in todo {
        let copied = copier
            .snapshot(target, &index, options, id, snap)
            .with_context(|| format!("copying snapshot {}", id.short()))?;
        report.copied.push(copied);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// State kept across the snapshots of one run.
struct Copier<'a> {
    handle: &'a Handle,
    source: &'a BlobSource,
    mode: CopyMode,
    /// Source chunk → target chunk ([`CopyMode::Chunks`]): a pure function
    /// of the chunk's bytes and the target's key, so it holds for the whole
    /// run; each snapshot's session still claims every chunk it uses.
    ids: HashMap<ChunkId, ChunkId>,
    pool: SegmentPool,
}

impl Copier<'_> {
    /// Copies one snapshot under its own session; returns what it wrote.
    fn snapshot(
        &mut self,
        target: &Repository,
        index: &Arc<dyn Index>,
        options: &CopyOptions,
        id: SnapshotId,
        snap: Snapshot,
    ) -> Result<Copied> {
        let start = Instant::now();
        let handle = self.handle;
        let mut session = if options.dry_run {
            SessionGuard::none(handle, index)
        } else {
            SessionGuard::begin(handle, index, &snap.host, None, options.lease_secs)
        };
        let shared = Arc::new(Shared::without_parent(
            target,
            index.clone(),
            handle,
            options.dry_run,
            session.stop.clone(),
        ));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (blob_tx, blob_rx) = bounded(cores * 4);
        let failure = Arc::new(Mutex::new(None));
        let packer = packer::start(shared.clone(), blob_rx, failure)?;
        let ticker = options.progress.then(|| {
            let s = shared.clone();
            Ticker::start("copy", None, move || {
                (
                    s.counters.bytes_read(),
                    format!("{} files", s.counters.files()),
                )
            })
        });
        let root = self.tree(&shared, &blob_tx, &snap.root_tree()?, &mut HashMap::new());
        drop(blob_tx);
        let packed = packer.join().map_err(|_| anyhow!("packer panicked"))?;
        if let Some(t) = ticker {
            t.finish();
        }
        if let Some(e) = session.fenced() {
            return Err(e);
        }
        packed?;
        let root = root?;
        handle.block_on(index.flush())?;

        let params = target.config().chunker;
        let copy = Snapshot {
            root: root.as_bytes().to_vec(),
            parent: Vec::new(),
            chunk_min: params.min,
            chunk_avg: params.avg,
            chunk_max: params.max,
            program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
            original: Vec::new(),
            copied_from: id.as_bytes().to_vec(),
            ..snap.clone()
        };
        let stats = shared.counters.stats(start.elapsed().as_millis() as u64);
        let (target_id, sealed) = target.seal_snapshot(&copy);
        if !options.dry_run {
            session.commit(handle, target_id)?;
            handle.block_on(target.put_sealed_snapshot(&target_id, sealed))?;
            session.end();
        }
        Ok(Copied {
            source: id,
            target: target_id,
            snapshot: snap,
            stats,
        })
    }

    /// Copies the tree `id` and everything under it; returns the target's
    /// id of the rewritten tree. `done` maps the source trees of this
    /// snapshot already copied.
    fn tree(
        &mut self,
        shared: &Shared,
        blobs: &Sender<PreparedBlob>,
        id: &ChunkId,
        done: &mut HashMap<ChunkId, ChunkId>,
    ) -> Result<ChunkId> {
        if let Some(copied) = done.get(id) {
            return Ok(*copied);
        }
        let tree = self.source.tree_blocking(self.handle, id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for node in &tree.nodes {
            let mut node = node.clone();
            match node.node_kind() {
                Some(NodeKind::Dir) => {
                    let sub = self.tree(shared, blobs, &node.subtree_id()?, done)?;
                    node.subtree = sub.as_bytes().to_vec();
                }
                Some(NodeKind::File) => {
                    let chunks = self.file(shared, blobs, &node).with_context(|| {
                        format!("file {:?}", String::from_utf8_lossy(&node.name))
                    })?;
                    node.set_chunk_ids(&chunks);
                    shared.counters.file_read(false);
                }
                _ => {}
            }
            nodes.push(node);
        }
        shared.counters.dir();
        if shared.counters.aborted() {
            return Err(anyhow!("copy aborted"));
        }
        let bytes = Tree::new(nodes).encode();
        let copied = shared.repo.fingerprinter().chunk_id(&bytes);
        if shared
            .claim(copied, BlobKind::Tree)
            .map_err(|e| anyhow!(e))?
        {
            shared.counters.add_new_tree(bytes.len() as u64);
            let blob = shared
                .repo
                .prepare_blob(copied, BlobKind::Tree, Bytes::from(bytes));
            blobs.send(blob).map_err(|_| anyhow!("copy aborted"))?;
        }
        done.insert(*id, copied);
        Ok(copied)
    }

    /// Stores one file's content in the target; returns its chunk ids there.
    fn file(
        &mut self,
        shared: &Shared,
        blobs: &Sender<PreparedBlob>,
        node: &Node,
    ) -> Result<Vec<ChunkId>> {
        let ids = node.chunk_ids()?;
        match self.mode {
            CopyMode::Chunks => self.file_by_chunks(shared, blobs, &ids),
            CopyMode::Rechunk => {
                let reader = ChunkReader::start(self.handle, self.source, ids);
                let mut stream = ChunkStream::new(shared.repo.chunker(), reader, &self.pool);
                let mut out = Vec::new();
                while let Some(data) = stream.next_chunk()? {
                    shared.counters.add_read(data.len() as u64);
                    out.push(store(shared, blobs, None, data)?);
                }
                Ok(out)
            }
        }
    }

    /// [`CopyMode::Chunks`]: each source chunk is one target chunk. A chunk
    /// whose target id is known from earlier in the run is read only if the
    /// target lacks it.
    fn file_by_chunks(
        &mut self,
        shared: &Shared,
        blobs: &Sender<PreparedBlob>,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>> {
        let mut out: Vec<Option<ChunkId>> = vec![None; ids.len()];
        // (position, source id, target id if known and claimed for upload)
        let mut reads = Vec::new();
        for (i, sid) in ids.iter().enumerate() {
            match self.ids.get(sid) {
                Some(tid) => {
                    if shared.claim(*tid, BlobKind::Data).map_err(|e| anyhow!(e))? {
                        reads.push((i, *sid, Some(*tid)));
                    } else {
                        out[i] = Some(*tid);
                    }
                }
                None => reads.push((i, *sid, None)),
            }
        }
        if reads.is_empty() {
            // Every chunk mapped earlier in the run and held by the target.
            return Ok(out.into_iter().flatten().collect());
        }
        let wanted = reads.iter().map(|(_, sid, _)| *sid).collect();
        let mut reader = ChunkReader::start(self.handle, self.source, wanted);
        for (i, sid, claimed) in reads {
            let data = reader
                .next_chunk()
                .ok_or_else(|| anyhow!("the chunk reader stopped early"))??;
            shared.counters.add_read(data.len() as u64);
            let tid = store(shared, blobs, claimed, Bytes::from(data))?;
            self.ids.insert(sid, tid);
            out[i] = Some(tid);
        }
        out.into_iter()
            .map(|id| id.ok_or_else(|| anyhow!("a chunk was not copied")))
            .collect()
    }
}

/// Stores one chunk in the target if this run must (`claimed`: already
/// claimed for upload under that id); returns its id.
fn store(
    shared: &Shared,
    blobs: &Sender<PreparedBlob>,
    claimed: Option<ChunkId>,
    data: Bytes,
) -> Result<ChunkId> {
    let id = match claimed {
        Some(id) => id,
        None => shared.repo.fingerprinter().chunk_id(&data),
    };
    let upload = claimed.is_some() || shared.claim(id, BlobKind::Data).map_err(|e| anyhow!(e))?;
    if upload {
        shared.counters.add_new_data(data.len() as u64);
        let blob = shared.repo.prepare_blob(id, BlobKind::Data, data);
        blobs.send(blob).map_err(|_| anyhow!("copy aborted"))?;
    }
    Ok(id)
}

/// A source file's chunks, read in order with a few reads in flight, as
/// chunks or as one byte stream.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn start(handle: &Handle, source: &BlobSource, ids: Vec<ChunkId>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let source = source.clone();
        handle.spawn(async move {
            let mut inflight = std::collections::VecDeque::new();
            for batch in ids.chunks(LOCATE_BATCH) {
                let located = match source.locate(batch).await {
                    Ok(located) => located,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for (id, location) in batch.iter().copied().zip(located) {
                    let source = source.clone();
                    inflight.push_back(tokio::spawn(async move {
                        let location = location.ok_or_else(|| {
                            anyhow!("chunk {id} is not stored in any pack of the source")
                        })?;
                        source.read_at(&id, &location).await
                    }));
                    if inflight.len() >= READ_AHEAD
                        && let Some(next) = inflight.pop_front()
                        && tx.send(joined(next.await)).await.is_err()
                    {
                        return;
                    }
                }
            }
            while let Some(next) = inflight.pop_front() {
                if tx.send(joined(next.await)).await.is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            current: Vec::new(),
            pos: 0,
        }
    }

    /// The next chunk's plaintext; `None` after the last.
    fn next_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        self.rx.blocking_recv()
    }
}

fn joined(r: Result<Result<Vec<u8>>, tokio::task::JoinError>) -> Result<Vec<u8>> {
    r.map_err(|e| anyhow!("chunk read failed: {e}"))?
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.next_chunk() {
                Some(Ok(next)) => {
                    self.current = next;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(format!("{e:#}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(copied_from: Option<SnapshotId>) -> Snapshot {
        Snapshot {
            root: vec![0; 32],
            copied_from: copied_from
                .map(|c| c.as_bytes().to_vec())
                .unwrap_or_default(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn copies_in_either_direction_count_as_present() {
        let (a, b, c, d) = (
            SnapshotId::from_bytes([1; 32]),
            SnapshotId::from_bytes([2; 32]),
            SnapshotId::from_bytes([3; 32]),
            SnapshotId::from_bytes([4; 32]),
        );
        let x = SnapshotId::from_bytes([9; 32]);
        // The source holds a, b (a copy of x), c and d; the target holds a
        // copy of a, and x itself.
        let source = vec![
            (a, snap(None)),
            (b, snap(Some(x))),
            (c, snap(None)),
            (d, snap(None)),
        ];
        let target = vec![
            (SnapshotId::from_bytes([7; 32]), snap(Some(a))),
            (x, snap(None)),
        ];
        let present = already_present(&source, &target);
        assert_eq!(present, HashSet::from([a, b]));
    }
}
