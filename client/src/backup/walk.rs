//! Walking the sources and turning directories into trees.
//!
//! The walker runs ahead of the file workers: it emits each directory, once
//! all its entries are listed, to the tree builder (children before parents).
//! The tree builder waits for each file's chunk list in order, encodes the
//! directory's tree and stores it like any chunk. Only the walker blocks on
//! the bounded job queue, so the walk can never outrun memory.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::{BlobKind, SealedBlob, seal_blob};
use cairn_chunk_store::tree::{Node, NodeKind, Tree};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::Shared;
use super::excludes::Excludes;
use super::files::{FileJob, FileResult};
use crate::fsmeta::{node_from_metadata, unchanged};
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
        }
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn parent_subtree(&self, parent: Option<&Node>) -> Option<Arc<Tree>> {
        let node = parent?;
        if node.node_kind() != Some(NodeKind::Dir) {
            return None;
        }
        let id = node.subtree_id().ok()?;
        // A parent tree that cannot be read only costs re-reading files.
        self.source.tree_blocking(&self.shared.handle, &id).ok()
    }

    fn emit(&self, dir: PendingDir) -> Result<()> {
        self.dirs.send(dir).map_err(|_| anyhow!("backup aborted"))
    }

    /// Walks the virtual directories leading to the sources; returns the root key.
    pub fn walk_root(&mut self, trie: &SourceTrie, parent_root: Option<Arc<Tree>>) -> Result<u64> {
        self.walk_virtual(Path::new("/"), trie, parent_root)
    }

    fn walk_virtual(
        &mut self,
        path: &Path,
        trie: &SourceTrie,
        parent: Option<Arc<Tree>>,
    ) -> Result<u64> {
        let mut entries = Vec::new();
        for (name, child) in &trie.children {
            let child_path = path.join(name);
            let meta = child_path
                .symlink_metadata()
                .map_err(|e| anyhow!("cannot back up {}: {e}", child_path.display()))?;
            let node = node_from_metadata(&child_path, name.as_bytes(), &meta)
                .map_err(|e| anyhow!("cannot back up {}: {e}", child_path.display()))?;
            let parent_node = parent.as_ref().and_then(|t| t.find(name.as_bytes()));
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
        let key = self.key();
        self.emit(PendingDir { key, entries })?;
        Ok(key)
    }

    /// One entry; for a file, `confirmed` says whether the index already
    /// confirmed the parent's chunks (`None`: ask now).
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
                let sub_parent = self.parent_subtree(parent);
                let descend = !(self.excludes.one_file_system && node.device != root_dev);
                let Some(key) = self.walk_dir(path, root_dev, sub_parent, descend)? else {
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
                        && confirmed.unwrap_or_else(|| self.shared.confirm_known(&[old])[0])
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
        parent: Option<Arc<Tree>>,
        descend: bool,
    ) -> Result<Option<u64>> {
        let mut entries = Vec::new();
        if descend {
            let listing = match std::fs::read_dir(path) {
                Ok(l) => l,
                Err(e) => {
                    self.shared
                        .warn(format!("cannot read {}: {e}", path.display()));
                    return Ok(None);
                }
            };
            let mut names: Vec<OsString> = Vec::new();
            for item in listing {
                match item {
                    Ok(item) => names.push(item.file_name()),
                    Err(e) => self
                        .shared
                        .warn(format!("cannot read {}: {e}", path.display())),
                }
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut listed = Vec::with_capacity(names.len());
            for name in names {
                let child = path.join(&name);
                if self.excludes.excluded(&child, &name) {
                    continue;
                }
                let meta = match child.symlink_metadata() {
                    Ok(m) => m,
                    Err(e) => {
                        self.shared
                            .warn(format!("cannot read {}: {e}", child.display()));
                        continue;
                    }
                };
                if meta.is_dir() && self.excludes.marked(&child) {
                    continue;
                }
                let node = match node_from_metadata(&child, name.as_bytes(), &meta) {
                    Ok(n) => n,
                    Err(e) => {
                        self.shared
                            .warn(format!("cannot read {}: {e}", child.display()));
                        continue;
                    }
                };
                listed.push((child, node));
            }
            // The unchanged files of the directory are confirmed with one index call.
            let olds: Vec<Option<&Node>> = listed
                .iter()
                .map(|(_, node)| parent.as_ref().and_then(|t| t.find(&node.name)))
                .collect();
            // Unchanged files: the parent's node, to be confirmed.
            let reusable: Vec<Option<&Node>> = listed
                .iter()
                .zip(&olds)
                .map(|((_, node), old)| {
                    old.filter(|o| node.node_kind() == Some(NodeKind::File) && unchanged(o, node))
                })
                .collect();
            let candidates: Vec<&Node> = reusable.iter().flatten().copied().collect();
            let mut confirmed = self.shared.confirm_known(&candidates).into_iter();
            for (((child, node), old), reuse) in listed.into_iter().zip(olds).zip(&reusable) {
                let known = reuse.map(|_| confirmed.next().unwrap_or(false));
                if let Some(p) = self.entry(&child, node, root_dev, old, known.or(Some(false)))? {
                    entries.push(p);
                }
            }
        }
        let key = self.key();
        self.emit(PendingDir { key, entries })?;
        Ok(Some(key))
    }
}

/// Builds and stores trees as directories complete; returns every tree id by key.
pub fn build_trees(
    shared: Arc<Shared>,
    dirs: Receiver<PendingDir>,
    blobs: Sender<SealedBlob>,
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
        let bytes = Tree::new(nodes).encode();
        let id = shared.repo.fingerprinter().chunk_id(&bytes);
        if shared.claim(id, BlobKind::Tree).map_err(|e| anyhow!(e))? {
            shared.counters.add_new_tree(bytes.len() as u64);
            let blob = seal_blob(
                shared.repo.keys(),
                id,
                BlobKind::Tree,
                &bytes,
                shared.repo.config().zstd_level,
            );
            blobs.send(blob).map_err(|_| anyhow!("backup aborted"))?;
        }
        done.insert(dir.key, id);
    }
    Ok(done)
}
