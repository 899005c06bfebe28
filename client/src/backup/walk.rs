//! Walking the sources and turning directories into trees.
//!
//! The walker runs ahead of the file workers: it emits each directory, once
//! all its entries are listed, to the tree builder (children before parents).
//! The tree builder waits for each file's chunk list in order, encodes the
//! directory's tree and stores it like any chunk. Only the walker blocks on
//! the bounded job queue, so the walk can never outrun memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::{BlobKind, PreparedBlob};
use cairn_chunk_store::tree::{Node, NodeKind, Tree};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::Shared;
use super::early::read_entries;
use super::excludes::Excludes;
use super::files::{FileJob, FileResult};
use crate::fsmeta::{node_from_metadata, node_without_xattrs, read_xattrs, unchanged};
use crate::source::BlobSource;

/// A directory entry whose node is not final yet.
pub enum Pending {
    /// Complete (symlinks, specials, unchanged files).
    Ready(Node),
    /// A file being read by a worker.
    File {
        node: Node,
        path: PathBuf,
        changed: bool,
        result: Receiver<FileResult>,
    },
    /// A directory whose tree is built under `key`.
    Dir { node: Node, key: u64 },
}

/// A listed directory, sent to the tree builder.
pub struct PendingDir {
    /// Identity for the parent's `Pending::Dir`.
    pub key: u64,
    /// The directory's tree in the parent snapshot, and its id.
    pub parent: Option<(ChunkId, Arc<Tree>)>,
    /// Entries.
    pub entries: Vec<Pending>,
}

/// The source paths as a tree of absolute path components.
#[derive(Default, Debug)]
pub struct SourceTrie {
    children: BTreeMap<OsString, SourceTrie>,
    is_source: bool,
}

impl SourceTrie {
    /// Builds the trie of absolute `paths`.
    pub fn new(paths: &[PathBuf]) -> Self {
        let mut root = SourceTrie::default();
        for p in paths {
            let mut node = &mut root;
            for comp in p.components().skip(1) {
                node = node
                    .children
                    .entry(comp.as_os_str().to_os_string())
                    .or_default();
            }
            node.is_source = true;
        }
        root
    }
}

/// A directory above the sources is recorded with its stable metadata only
/// (name, mode, owner, xattrs): its times change whenever anything else in
/// it does (think `/tmp`), and recording them would make every backup of an
/// unchanged source store new ancestor trees. Restore leaves the times of
/// such directories alone (see `fsmeta::apply_metadata`).
fn ancestor_node(mut node: Node) -> Node {
    node.mtime_ns = 0;
    node.ctime_ns = 0;
    node.inode = 0;
    node.device = 0;
    node.nlink = 0;
    node
}

/// Walks the sources; emits directories to `dirs` and files to `jobs`.
pub struct Walker<'a> {
    pub shared: &'a Shared,
    pub source: &'a BlobSource,
    pub excludes: &'a Excludes,
    pub jobs: Sender<FileJob>,
    pub dirs: Sender<PendingDir>,
    next_key: u64,
    prefetch: Option<&'a Prefetch>,
    /// Directories handed to the prefetch pool, by path.
    ahead: HashMap<PathBuf, Receiver<Option<Listing>>>,
}

/// Directories listed ahead of the walker at most: bounds the memory held
/// by listings not consumed yet.
const LIST_AHEAD: usize = 256;

/// One directory for the prefetch pool: its path, its tree in the parent
/// snapshot, and where to send the listing.
type ListJob = (PathBuf, Option<ChunkId>, Sender<Option<Listing>>);

/// A pool of threads that list directories ahead of the walker (read the
/// directory, `lstat` and read the xattrs of every entry, load the parent
/// snapshot's tree, confirm unchanged files with the index). On a cold cache
/// these are waits on the disk, which the pool overlaps; the walker still
/// consumes directories in its own order, so the snapshot is the same.
/// Jobs are taken from the front: the walker pushes the subdirectories of
/// the directory it enters there, so the pool works in the walker's order.
pub struct Prefetch {
    queue: Mutex<VecDeque<ListJob>>,
    wake: Condvar,
    closed: AtomicBool,
}

impl Default for Prefetch {
    fn default() -> Self {
        Self::new()
    }
}

impl Prefetch {
    /// An empty pool (start threads with [`Prefetch::serve`]).
    pub fn new() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Lists directories until [`Prefetch::close`]; run on each pool thread.
    pub fn serve(&self, shared: &Shared, source: &BlobSource, excludes: &Excludes) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if self.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(job) = queue.pop_front() {
                        break job;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            let (path, parent, reply) = job;
            let _ = reply.send(list_dir(shared, source, excludes, &path, parent));
        }
    }

    /// Stops the pool threads (jobs not started are dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
    }

    /// Queues `jobs` at the front, keeping their order.
    fn push_front(&self, jobs: Vec<ListJob>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for job in jobs.into_iter().rev() {
            queue.push_front(job);
        }
        self.wake.notify_all();
    }
}

/// A directory's entries in name order, compared with the parent snapshot.
pub struct Listing {
    /// The directory's tree in the parent snapshot.
    parent: Option<Arc<Tree>>,
    /// Entries with their nodes (no chunks yet).
    entries: Vec<(PathBuf, Node)>,
    /// Per entry: for an unchanged file, whether the parent's chunks may be
    /// reused (`Shared::reuse_from_parent`); `None` for everything else.
    confirmed: Vec<Option<bool>>,
}

/// Lists `path` (`None` when it cannot be read, after a warning).
fn list_dir(
    shared: &Shared,
    source: &BlobSource,
    excludes: &Excludes,
    path: &Path,
    parent: Option<ChunkId>,
) -> Option<Listing> {
    // A parent tree that cannot be read only costs re-reading files. The
    // listing holds the decoded tree as long as it needs it; the source keeps
    // only its encoding.
    let parent = parent.and_then(|id| {
        let tree = source.tree_blocking(&shared.handle, &id).ok();
        source.release_tree(&id);
        tree
    });
    let listed = shared.early.as_ref().and_then(|early| early.take(path));
    let entries = match listed {
        Some(entries) => entries,
        None => {
            let skipped = &mut |e| shared.warn(format!("cannot read {}: {e}", path.display()));
            match read_entries(path, excludes, skipped) {
                Ok(entries) => entries,
                Err(e) => {
                    shared.warn(format!("cannot read {}: {e}", path.display()));
                    return None;
                }
            }
        }
    };
    let mut nodes = Vec::with_capacity(entries.len());
    // Per entry: the parent's node of an unchanged file.
    let mut reusable: Vec<Option<&Node>> = Vec::with_capacity(entries.len());
    for (name, meta) in entries {
        let child = path.join(&name);
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                shared.warn(format!("cannot read {}: {e}", child.display()));
                continue;
            }
        };
        if meta.is_dir() && excludes.marked(&child) {
            continue;
        }
        match node_without_xattrs(&child, name.as_bytes(), &meta) {
            Ok(mut node) => {
                let old = parent
                    .as_ref()
                    .and_then(|t| t.find(&node.name))
                    .filter(|old| {
                        node.node_kind() == Some(NodeKind::File) && unchanged(old, &node)
                    });
                // One syscall fewer per unchanged file: its xattrs are the
                // parent's (see `node_without_xattrs`).
                node.xattrs = match old {
                    Some(old) => old.xattrs.clone(),
                    None => read_xattrs(&child),
                };
                nodes.push((child, node));
                reusable.push(old);
            }
            Err(e) => shared.warn(format!("cannot read {}: {e}", child.display())),
        }
    }
    // The unchanged files of the directory are settled with one call.
    let candidates: Vec<&Node> = reusable.iter().flatten().copied().collect();
    let mut known = shared.reuse_from_parent(&candidates).into_iter();
    let confirmed = reusable
        .iter()
        .map(|r| r.map(|_| known.next().unwrap_or(false)))
        .collect();
    Some(Listing {
        parent,
        entries: nodes,
        confirmed,
    })
}

impl<'a> Walker<'a> {
    /// A walker.
    pub fn new(
        shared: &'a Shared,
        source: &'a BlobSource,
        excludes: &'a Excludes,
        jobs: Sender<FileJob>,
        dirs: Sender<PendingDir>,
    ) -> Self {
        Self {
            shared,
            source,
            excludes,
            jobs,
            dirs,
            next_key: 0,
            prefetch: None,
            ahead: HashMap::new(),
        }
    }

    /// Lists directories ahead through `pool`.
    pub fn with_prefetch(mut self, pool: &'a Prefetch) -> Self {
        self.prefetch = Some(pool);
        self
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// The parent snapshot's tree of the directory `parent`, with its id.
    fn parent_subtree(&self, parent: Option<&Node>) -> Option<(ChunkId, Arc<Tree>)> {
        let id = subtree_of(parent)?;
        // A parent tree that cannot be read only costs re-reading files.
        let tree = self.source.tree_blocking(&self.shared.handle, &id).ok()?;
        Some((id, tree))
    }

    fn emit(&self, dir: PendingDir) -> Result<()> {
        self.dirs.send(dir).map_err(|_| anyhow!("backup aborted"))
    }

    /// Walks the virtual directories leading to the sources; returns the
    /// root key. `parent_root` is the parent snapshot's root tree and its id.
    pub fn walk_root(
        &mut self,
        trie: &SourceTrie,
        parent_root: Option<(ChunkId, Arc<Tree>)>,
    ) -> Result<u64> {
        self.walk_virtual(Path::new("/"), trie, parent_root)
    }

    /// A snapshot of one stream: a root tree holding the file `name`
    /// (mode 0644, owned by this process, modified now), read from `reader`.
    pub fn walk_stream(
        &mut self,
        name: &str,
        reader: Box<dyn std::io::Read + Send>,
    ) -> Result<u64> {
        let owner = std::fs::metadata("/proc/self").ok();
        let now = cairn_chunk_store::now_unix_nanos();
        let node = Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File as u32,
            mode: 0o644,
            uid: owner.as_ref().map_or(0, |m| m.uid()),
            gid: owner.as_ref().map_or(0, |m| m.gid()),
            mtime_ns: now,
            ctime_ns: now,
            nlink: 1,
            ..Node::default()
        };
        let path = Path::new("/").join(name);
        let (reply, result) = bounded(1);
        self.jobs
            .send(FileJob {
                path: path.clone(),
                stream: Some(reader),
                size: 0,
                reply,
            })
            .map_err(|_| anyhow!("backup aborted"))?;
        let key = self.key();
        self.emit(PendingDir {
            key,
            parent: None,
            entries: vec![Pending::File {
                node,
                path,
                changed: false,
                result,
            }],
        })?;
        Ok(key)
    }

    fn walk_virtual(
        &mut self,
        path: &Path,
        trie: &SourceTrie,
        parent: Option<(ChunkId, Arc<Tree>)>,
    ) -> Result<u64> {
        let mut entries = Vec::new();
        for (name, child) in &trie.children {
            let child_path = path.join(name);
            let meta = child_path
                .symlink_metadata()
                .map_err(|e| anyhow!("cannot back up {}: {e}", child_path.display()))?;
            let node = node_from_metadata(&child_path, name.as_bytes(), &meta)
                .map_err(|e| anyhow!("cannot back up {}: {e}", child_path.display()))?;
            let parent_node = parent.as_ref().and_then(|(_, t)| t.find(name.as_bytes()));
            if child.is_source {
                if let Some(p) = self.entry(&child_path, node, meta.dev(), parent_node, None)? {
                    entries.push(p);
                }
            } else {
                if !meta.is_dir() {
                    bail!(
                        "cannot back up below {}: not a directory",
                        child_path.display()
                    );
                }
                let sub_parent = self.parent_subtree(parent_node);
                let key = self.walk_virtual(&child_path, child, sub_parent)?;
                entries.push(Pending::Dir {
                    node: ancestor_node(node),
                    key,
                });
            }
        }
        // Like any directory, an ancestor equal to the parent's is the
        // parent's tree (`build_trees`).
        let key = self.key();
        self.emit(PendingDir {
            key,
            parent,
            entries,
        })?;
        Ok(key)
    }

    /// One entry; for a file, `confirmed` says whether the parent's chunks
    /// may be reused (`None`: decide now).
    fn entry(
        &mut self,
        path: &Path,
        node: Node,
        root_dev: u64,
        parent: Option<&Node>,
        confirmed: Option<bool>,
    ) -> Result<Option<Pending>> {
        if self.shared.counters.aborted() {
            bail!("backup aborted");
        }
        match node.node_kind() {
            Some(NodeKind::Dir) => {
                let descend = !(self.excludes.one_file_system && node.device != root_dev);
                let Some(key) = self.walk_dir(path, root_dev, subtree_of(parent), descend)? else {
                    return Ok(None);
                };
                Ok(Some(Pending::Dir { node, key }))
            }
            Some(NodeKind::File) => {
                self.shared.counters.add_total(node.size);
                // Unchanged files reuse the parent's chunks only once the index
                // confirms them (GC invariant, `cairn_index` crate docs).
                if let Some(old) = parent.filter(|old| {
                    unchanged(old, &node)
                        && confirmed.unwrap_or_else(|| self.shared.reuse_from_parent(&[old])[0])
                }) {
                    let mut node = node;
                    node.chunks = old.chunks.clone();
                    self.shared.counters.unmodified();
                    return Ok(Some(Pending::Ready(node)));
                }
                let (reply, result) = bounded(1);
                self.jobs
                    .send(FileJob {
                        path: path.to_path_buf(),
                        stream: None,
                        size: node.size,
                        reply,
                    })
                    .map_err(|_| anyhow!("backup aborted"))?;
                Ok(Some(Pending::File {
                    node,
                    path: path.to_path_buf(),
                    changed: parent.is_some(),
                    result,
                }))
            }
            _ => Ok(Some(Pending::Ready(node))),
        }
    }

    fn walk_dir(
        &mut self,
        path: &Path,
        root_dev: u64,
        parent: Option<ChunkId>,
        descend: bool,
    ) -> Result<Option<u64>> {
        let mut entries = Vec::new();
        if descend {
            let listing = match self.ahead.remove(path) {
                Some(ahead) => match ahead.recv() {
                    Ok(listing) => listing,
                    Err(_) => list_dir(self.shared, self.source, self.excludes, path, parent),
                },
                None => list_dir(self.shared, self.source, self.excludes, path, parent),
            };
            let Some(listing) = listing else {
                return Ok(None);
            };
            self.list_ahead(&listing, root_dev);
            let Listing {
                parent: parent_tree,
                entries: listed,
                confirmed,
            } = listing;
            for ((child, node), known) in listed.into_iter().zip(confirmed) {
                let old = parent_tree.as_ref().and_then(|t| t.find(&node.name));
                if let Some(p) = self.entry(&child, node, root_dev, old, known.or(Some(false)))? {
                    entries.push(p);
                }
            }
            let key = self.key();
            self.emit(PendingDir {
                key,
                parent: parent.zip(parent_tree),
                entries,
            })?;
            return Ok(Some(key));
        }
        let key = self.key();
        self.emit(PendingDir {
            key,
            parent: None,
            entries,
        })?;
        Ok(Some(key))
    }

    /// Hands the subdirectories of `listing` to the prefetch pool, within
    /// [`LIST_AHEAD`].
    fn list_ahead(&mut self, listing: &Listing, root_dev: u64) {
        let Some(pool) = self.prefetch else { return };
        let mut jobs = Vec::new();
        for (path, node) in &listing.entries {
            if self.ahead.len() + jobs.len() >= LIST_AHEAD {
                break;
            }
            if node.node_kind() != Some(NodeKind::Dir)
                || (self.excludes.one_file_system && node.device != root_dev)
            {
                continue;
            }
            let old = listing.parent.as_ref().and_then(|t| t.find(&node.name));
            let (tx, rx) = bounded(1);
            self.ahead.insert(path.clone(), rx);
            jobs.push((path.clone(), subtree_of(old), tx));
        }
        if !jobs.is_empty() {
            pool.push_front(jobs);
        }
    }
}

/// The subtree id of `node` when it is a directory.
fn subtree_of(node: Option<&Node>) -> Option<ChunkId> {
    node.filter(|n| n.node_kind() == Some(NodeKind::Dir))
        .and_then(|n| n.subtree_id().ok())
}

/// Builds and stores trees as directories complete; returns every tree id by key.
pub fn build_trees(
    shared: Arc<Shared>,
    dirs: Receiver<PendingDir>,
    blobs: Sender<PreparedBlob>,
) -> Result<HashMap<u64, ChunkId>> {
    let mut done: HashMap<u64, ChunkId> = HashMap::new();
    for dir in dirs {
        let mut nodes = Vec::with_capacity(dir.entries.len());
        for entry in dir.entries {
            match entry {
                Pending::Ready(node) => nodes.push(node),
                Pending::Dir { mut node, key } => {
                    if let Some(id) = done.remove(&key) {
                        node.subtree = id.as_bytes().to_vec();
                        nodes.push(node);
                    }
                }
                Pending::File {
                    mut node,
                    path,
                    changed,
                    result,
                } => match result.recv() {
                    Ok(Ok(file)) => {
                        node.size = file.size;
                        node.set_chunk_ids(&file.chunks);
                        shared.counters.file_read(changed);
                        nodes.push(node);
                    }
                    Ok(Err(e)) => {
                        if shared.counters.aborted() {
                            bail!("backup aborted");
                        }
                        shared.warn(format!("cannot read {}: {e}", path.display()));
                    }
                    Err(_) => bail!("backup aborted"),
                },
            }
        }
        shared.counters.dir();
        let tree = Tree::new(nodes);
        // A directory whose entries all equal the parent snapshot's is the
        // parent's tree: its id is known without encoding or hashing it (the
        // encoding is canonical, so equal trees of one version have one id).
        let same = dir
            .parent
            .as_ref()
            .filter(|(_, old)| old.version == tree.version && old.nodes == tree.nodes)
            .map(|(id, _)| *id);
        let mut bytes = None;
        let id = match same {
            Some(id) => id,
            None => {
                shared.counters.tree_encoded();
                let encoded = tree.encode();
                let id = shared.repo.fingerprinter().chunk_id(&encoded);
                bytes = Some(encoded);
                id
            }
        };
        let unchanged =
            dir.parent.as_ref().map(|(old, _)| *old) == Some(id) && shared.reuse_parent_tree(id);
        if !unchanged && shared.claim(id, BlobKind::Tree).map_err(|e| anyhow!(e))? {
            let bytes = bytes.unwrap_or_else(|| tree.encode());
            shared.counters.add_new_tree(bytes.len() as u64);
            let blob = shared
                .repo
                .prepare_blob(id, BlobKind::Tree, Bytes::from(bytes));
            blobs.send(blob).map_err(|_| anyhow!("backup aborted"))?;
        }
        done.insert(dir.key, id);
    }
    Ok(done)
}
