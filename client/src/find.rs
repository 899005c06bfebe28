//! `cairn find`: which snapshots hold files whose name (or path) matches a
//! pattern. Reads trees only, never file data, and each distinct tree once
//! however many snapshots share it: snapshots of one machine share most of
//! their trees, so searching thirty of them costs little more than one.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::tree::{Node, NodeKind, Tree};
use cairn_chunk_store::{SnapshotId, manifest::Snapshot};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::source::BlobSource;

/// What to look for.
#[derive(Debug, Clone)]
pub struct FindQuery {
    /// Globs; an entry matches if any does.
    pub patterns: Vec<String>,
    /// Match the globs against the whole absolute path instead of the name.
    pub match_path: bool,
    /// Only entries modified at or after this time (Unix nanoseconds).
    pub oldest_ns: Option<i64>,
    /// Only entries modified at or before this time (Unix nanoseconds).
    pub newest_ns: Option<i64>,
}

/// One matching entry.
#[derive(Debug, Clone)]
pub struct Found {
    /// The snapshot that holds it.
    pub snapshot: SnapshotId,
    /// Its absolute path in the snapshot.
    pub path: PathBuf,
    /// Its node (kind, size, times, mode).
    pub node: Node,
}

/// What `find` found.
#[derive(Debug, Clone, Default)]
pub struct FindReport {
    /// Matches, by snapshot in the order given, then by path.
    pub found: Vec<Found>,
    /// Snapshots searched.
    pub snapshots: usize,
    /// Distinct trees read from the repository.
    pub trees_read: usize,
}

/// Matches under one tree, relative to it (name patterns only).
type Matches = Arc<Vec<(PathBuf, Node)>>;

struct Search<'a> {
    source: &'a BlobSource,
    query: &'a FindQuery,
    globs: GlobSet,
    trees: HashMap<ChunkId, Arc<Tree>>,
    /// With name patterns, what matched under each tree, whatever its path.
    matches: HashMap<ChunkId, Matches>,
}

/// Searches `snapshots` (in that order).
pub async fn find(
    source: &BlobSource,
    snapshots: &[(SnapshotId, Snapshot)],
    query: &FindQuery,
) -> Result<FindReport> {
    let mut builder = GlobSetBuilder::new();
    for p in &query.patterns {
        builder.add(Glob::new(p).with_context(|| format!("pattern {p:?}"))?);
    }
    let mut search = Search {
        source,
        query,
        globs: builder.build()?,
        trees: HashMap::new(),
        matches: HashMap::new(),
    };
    let mut report = FindReport {
        snapshots: snapshots.len(),
        ..FindReport::default()
    };
    crate::browse::preload_snapshots(source, snapshots).await?;
    for (id, snap) in snapshots {
        let root = snap.root_tree()?;
        let mut found: Vec<(PathBuf, Node)> = if query.match_path {
            let mut out = Vec::new();
            search.by_path(root, Path::new("/"), &mut out).await?;
            out
        } else {
            search
                .by_name(root)
                .await?
                .iter()
                .map(|(rel, node)| (Path::new("/").join(rel), node.clone()))
                .collect()
        };
        found.sort_by(|a, b| a.0.cmp(&b.0));
        report
            .found
            .extend(found.into_iter().map(|(path, node)| Found {
                snapshot: *id,
                path,
                node,
            }));
    }
    report.trees_read = search.trees.len();
    Ok(report)
}

impl Search<'_> {
    async fn tree(&mut self, id: ChunkId) -> Result<Arc<Tree>> {
        if let Some(t) = self.trees.get(&id) {
            return Ok(t.clone());
        }
        let tree = self.source.tree(&id).await?;
        self.trees.insert(id, tree.clone());
        Ok(tree)
    }

    fn in_time(&self, node: &Node) -> bool {
        self.query.oldest_ns.is_none_or(|t| node.mtime_ns >= t)
            && self.query.newest_ns.is_none_or(|t| node.mtime_ns <= t)
    }

    /// Name matches under `id`, relative to it; each tree is searched once.
    async fn by_name(&mut self, id: ChunkId) -> Result<Matches> {
        if let Some(m) = self.matches.get(&id) {
            return Ok(m.clone());
        }
        let tree = self.tree(id).await?;
        let mut out = Vec::new();
        for node in &tree.nodes {
            let name = Path::new(std::ffi::OsStr::from_bytes(&node.name));
            if self.globs.is_match(name) && self.in_time(node) {
                out.push((name.to_path_buf(), node.clone()));
            }
            if node.node_kind() == Some(NodeKind::Dir) {
                let below = Box::pin(self.by_name(node.subtree_id()?)).await?;
                out.extend(below.iter().map(|(rel, n)| (name.join(rel), n.clone())));
            }
        }
        let out = Arc::new(out);
        self.matches.insert(id, out.clone());
        Ok(out)
    }

    /// Whole-path matches under `id`, which lies at `path`.
    async fn by_path(
        &mut self,
        id: ChunkId,
        path: &Path,
        out: &mut Vec<(PathBuf, Node)>,
    ) -> Result<()> {
        let tree = self.tree(id).await?;
        for node in &tree.nodes {
            let child = path.join(std::ffi::OsStr::from_bytes(&node.name));
            if self.globs.is_match(&child) && self.in_time(node) {
                out.push((child.clone(), node.clone()));
            }
            if node.node_kind() == Some(NodeKind::Dir) {
                Box::pin(self.by_path(node.subtree_id()?, &child, out)).await?;
            }
        }
        Ok(())
    }
}
