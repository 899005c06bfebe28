//! Walking snapshot trees: `ls`, `dump`, `diff`, and the shared visitor.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::tree::{Node, NodeKind, Tree};

use crate::source::{BlobSource, PRELOAD_LIMIT};

/// A tree entry with its absolute path in the snapshot.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path inside the snapshot (`/home/u/file`).
    pub path: PathBuf,
    /// The node.
    pub node: Node,
}

/// Splits an absolute snapshot path into its components.
pub fn components(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            _ => bail!("path {} must be absolute, without `..`", path.display()),
        }
    }
    Ok(out)
}

/// Loads the trees under `roots` in batches before a walk (see
/// [`BlobSource::preload_trees`]). Only a speed-up: a tree it could not load
/// is read on demand by the walk, which reports any error.
pub async fn preload(source: &BlobSource, roots: &[ChunkId]) {
    if let Err(e) = source.preload_trees(roots, PRELOAD_LIMIT).await {
        tracing::debug!("trees not preloaded: {e:#}");
    }
}

/// [`preload`] for the root trees of `snapshots`.
pub async fn preload_snapshots(
    source: &BlobSource,
    snapshots: &[(
        cairn_chunk_store::SnapshotId,
        cairn_chunk_store::manifest::Snapshot,
    )],
) -> Result<()> {
    let roots = snapshots
        .iter()
        .map(|(_, s)| s.root_tree())
        .collect::<Result<Vec<_>, _>>()?;
    preload(source, &roots).await;
    Ok(())
}

/// Finds the node at `path` under `root` (`None` for `/` itself).
pub async fn find(source: &BlobSource, root: &ChunkId, path: &Path) -> Result<Option<Node>> {
    let mut tree_id = *root;
    let parts = components(path)?;
    let mut found = None;
    for (i, name) in parts.iter().enumerate() {
        let tree = source.tree(&tree_id).await?;
        let node = tree
            .find(name)
            .ok_or_else(|| {
                anyhow!(
                    "{}: no such file or directory in the snapshot",
                    path.display()
                )
            })?
            .clone();
        if i + 1 < parts.len() {
            if node.node_kind() != Some(NodeKind::Dir) {
                bail!("{}: not a directory in the snapshot", path.display());
            }
            tree_id = node.subtree_id()?;
        }
        found = Some(node);
    }
    Ok(found)
}

/// Visits every entry under `start` (depth first, sorted), including `start`.
pub async fn walk(
    source: &BlobSource,
    root: &ChunkId,
    start: &Path,
    visit: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<()> {
    preload(source, &[*root]).await;
    let start_node = find(source, root, start).await?;
    let mut stack: Vec<(PathBuf, ChunkId)> = Vec::new();
    match start_node {
        None => stack.push((PathBuf::from("/"), *root)),
        Some(node) => {
            let entry = Entry {
                path: start.to_path_buf(),
                node,
            };
            visit(&entry)?;
            if entry.node.node_kind() == Some(NodeKind::Dir) {
                stack.push((entry.path.clone(), entry.node.subtree_id()?));
            }
        }
    }
    while let Some((dir, id)) = stack.pop() {
        let tree = source.tree(&id).await?;
        let mut subdirs = Vec::new();
        for node in &tree.nodes {
            let entry = Entry {
                path: dir.join(node.name_os()),
                node: node.clone(),
            };
            visit(&entry)?;
            if node.node_kind() == Some(NodeKind::Dir) {
                subdirs.push((entry.path, node.subtree_id()?));
            }
        }
        source.release_tree(&id);
        // Reverse so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Writes a file's content to `out`.
pub async fn dump(
    source: &BlobSource,
    root: &ChunkId,
    path: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let node = find(source, root, path)
        .await?
        .ok_or_else(|| anyhow!("/ is a directory; dump needs a file"))?;
    if node.node_kind() != Some(NodeKind::File) {
        bail!("{} is not a regular file", path.display());
    }
    for id in node.chunk_ids()? {
        out.write_all(&source.read(&id).await?)?;
    }
    out.flush()?;
    Ok(())
}

/// A difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only in the second.
    Added(PathBuf),
    /// Only in the first.
    Removed(PathBuf),
    /// In both, with different content or metadata.
    Modified(PathBuf),
}

/// Compares two trees; unchanged subtrees (same id) are skipped unread.
pub async fn diff(source: &BlobSource, a: &ChunkId, b: &ChunkId) -> Result<Vec<Change>> {
    preload(source, &[*a, *b]).await;
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::from("/"), Some(*a), Some(*b))];
    while let Some((dir, ta, tb)) = stack.pop() {
        if ta == tb {
            continue;
        }
        let empty = Tree::new(Vec::new());
        let ta = match ta {
            Some(id) => source.tree(&id).await?,
            None => std::sync::Arc::new(empty.clone()),
        };
        let tb = match tb {
            Some(id) => source.tree(&id).await?,
            None => std::sync::Arc::new(empty),
        };
        let mut names: Vec<&Vec<u8>> = ta.nodes.iter().chain(&tb.nodes).map(|n| &n.name).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (na, nb) = (ta.find(name), tb.find(name));
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let sub = |n: Option<&Node>| {
                n.filter(|n| n.node_kind() == Some(NodeKind::Dir))
                    .and_then(|n| n.subtree_id().ok())
            };
            match (na, nb) {
                (Some(_), None) => out.push(Change::Removed(path.clone())),
                (None, Some(_)) => out.push(Change::Added(path.clone())),
                (Some(x), Some(y)) => {
                    let same = x.kind == y.kind
                        && x.chunks == y.chunks
                        && x.mode == y.mode
                        && x.symlink_target == y.symlink_target
                        && (x.node_kind() == Some(NodeKind::Dir) || x.mtime_ns == y.mtime_ns)
                        && x.uid == y.uid
                        && x.gid == y.gid
                        && x.xattrs == y.xattrs;
                    if !same {
                        out.push(Change::Modified(path.clone()));
                    }
                }
                (None, None) => {}
            }
            let (sa, sb) = (sub(na), sub(nb));
            if sa.is_some() || sb.is_some() {
                stack.push((path, sa, sb));
            }
        }
    }
    out.sort_by(|x, y| change_path(x).cmp(change_path(y)));
    Ok(out)
}

fn change_path(c: &Change) -> &Path {
    match c {
        Change::Added(p) | Change::Removed(p) | Change::Modified(p) => p,
    }
}
