//! Reading snapshots: `cairn snapshots`, `ls`, `dump` and `diff`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use cairn_chunk_store::manifest::Snapshot;
use cairn_chunk_store::{Repository, SnapshotId};
use cairn_client::browse::{self, Change};
use cairn_client::context::RepoArgs;
use cairn_client::retention::{Filter, SnapshotMeta};
use cairn_client::source::BlobSource;
use cairn_client::treecache::TreeCache;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::{format_time, kind_name, print_json, snapshot_json};

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, unique prefix, or `latest`.
    snapshot: String,
    /// Only below this path.
    path: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix, or `latest`.
    snapshot: String,
    /// Absolute path of the file in the snapshot.
    path: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Older snapshot.
    first: String,
    /// Newer snapshot.
    second: String,
}

pub fn snapshots(rt: &Runtime, g: &Globals) -> Result<u8> {
    let repo = rt.block_on(g.repo.open())?;
    let snaps = rt.block_on(repo.snapshots())?;
    let metas = commit_times(rt, g, &repo, &snaps);
    let suspects = metas.iter().filter(|m| m.suspect).count();
    if g.json {
        let list: Vec<_> = snaps
            .iter()
            .zip(&metas)
            .map(|((id, s), m)| {
                let mut v = snapshot_json(id, s);
                if let Some(c) = m.committed {
                    v["committed_time"] = json!(format_time(
                        i64::try_from(c.as_nanosecond()).unwrap_or(0),
                        false
                    ));
                    v["suspect"] = json!(m.suspect);
                }
                v
            })
            .collect();
        print_json(&serde_json::Value::Array(list));
    } else {
        println!(
            "{:<10} {:<20} {:<16} {:<16} paths",
            "id", "time", "host", "tags"
        );
        for ((id, s), m) in snaps.iter().zip(&metas) {
            let mark = match m.committed.filter(|_| m.suspect) {
                Some(c) => format!(
                    "  ! committed {}",
                    format_time(i64::try_from(c.as_nanosecond()).unwrap_or(0), false)
                ),
                None => String::new(),
            };
            println!(
                "{:<10} {:<20} {:<16} {:<16} {}{mark}",
                id.short(),
                format_time(s.time_ns, false),
                s.host,
                s.tags.join(","),
                s.paths.join(" ")
            );
        }
        println!("{} snapshot(s)", snaps.len());
        if suspects > 0 {
            println!(
                "{suspects} snapshot(s) marked ! claim a time more than {} away from when \
                 their backup began on the index; retention goes by the committed time",
                cairn_client::duration::format(std::time::Duration::from_secs(
                    cairn_client::prune::DEFAULT_SKEW_SECS as u64
                ))
            );
        }
    }
    Ok(0)
}

/// The snapshots with the index cluster's record of their commits; without
/// a cluster (or when it does not answer: listing never needs it) the
/// times they claim.
fn commit_times(
    rt: &Runtime,
    g: &Globals,
    repo: &cairn_chunk_store::Repository,
    snaps: &[(SnapshotId, Snapshot)],
) -> Vec<SnapshotMeta> {
    let metas: Vec<SnapshotMeta> = snaps
        .iter()
        .map(|(id, s)| SnapshotMeta::new(*id, s))
        .collect();
    let cluster = match rt.block_on(g.repo.open_remote(repo)) {
        Ok(Some(c)) => c,
        Ok(None) => return metas,
        Err(e) => {
            cairn_client::notify::warning(format!("{e:#}; showing the times snapshots claim only"));
            return metas;
        }
    };
    match rt.block_on(cairn_client::retention::with_commit_times(
        &*cluster,
        metas.clone(),
    )) {
        Ok(m) => m,
        Err(e) => {
            cairn_client::notify::warning(format!("{e:#}; showing the times snapshots claim only"));
            metas
        }
    }
}

pub fn ls(rt: &Runtime, g: &Globals, a: LsArgs) -> Result<u8> {
    let (source, _, snap) = open_snapshot(rt, &g.repo, &a.snapshot)?;
    let root = snap.root_tree()?;
    let start = a.path.unwrap_or_else(|| PathBuf::from("/"));
    let json = g.json;
    let mut out = std::io::stdout().lock();
    rt.block_on(browse::walk(&source, &root, &start, &mut |e| {
        if json {
            let kind = kind_name(e.node.node_kind());
            writeln!(
                out,
                "{}",
                json!({"path": e.path, "type": kind, "size": e.node.size, "mode": e.node.mode, "mtime": format_time(e.node.mtime_ns, true)})
            )?;
        } else {
            writeln!(out, "{}", e.path.display())?;
        }
        Ok(())
    }))?;
    Ok(0)
}

pub fn dump(rt: &Runtime, g: &Globals, a: DumpArgs) -> Result<u8> {
    let (source, _, snap) = open_snapshot(rt, &g.repo, &a.snapshot)?;
    let root = snap.root_tree()?;
    let mut out = std::io::stdout().lock();
    rt.block_on(browse::dump(&source, &root, &a.path, &mut out))?;
    Ok(0)
}

pub fn diff(rt: &Runtime, g: &Globals, a: DiffArgs) -> Result<u8> {
    let (source, _, first) = open_snapshot(rt, &g.repo, &a.first)?;
    let repo = source.repo().clone();
    let second_id = rt.block_on(repo.resolve_snapshot(&a.second))?;
    let second = rt.block_on(repo.load_snapshot(&second_id))?;
    let changes = rt.block_on(browse::diff(
        &source,
        &first.root_tree()?,
        &second.root_tree()?,
    ))?;
    for c in &changes {
        match c {
            Change::Added(p) => println!("+    {}", p.display()),
            Change::Removed(p) => println!("-    {}", p.display()),
            Change::Modified(p) => println!("M    {}", p.display()),
        }
    }
    Ok(0)
}

/// The snapshots named by `refs` (every one if none) that pass `filter`,
/// oldest first, and where their chunks are read from.
pub fn select_snapshots(
    rt: &Runtime,
    args: &RepoArgs,
    refs: &[String],
    filter: &Filter,
) -> Result<(BlobSource, Vec<(SnapshotId, Snapshot)>)> {
    let repo = rt.block_on(args.open())?;
    let mut wanted = Vec::new();
    for r in refs {
        wanted.push(rt.block_on(repo.resolve_snapshot(r))?);
    }
    let snapshots = rt
        .block_on(repo.snapshots())?
        .into_iter()
        .filter(|(id, s)| {
            (wanted.is_empty() || wanted.contains(id)) && filter.matches(&SnapshotMeta::new(*id, s))
        })
        .collect();
    let index = rt.block_on(args.open_index_for_reading(&repo));
    Ok((source(repo, index), snapshots))
}

/// The repository, a snapshot named by id, prefix or `latest`, and where
/// its chunks are read from (the index if it can be opened, else the pack
/// trailers).
pub fn open_snapshot(
    rt: &Runtime,
    args: &RepoArgs,
    reference: &str,
) -> Result<(BlobSource, SnapshotId, Snapshot)> {
    let repo = rt.block_on(args.open())?;
    let id = rt.block_on(repo.resolve_snapshot(reference))?;
    let snap = rt.block_on(repo.load_snapshot(&id))?;
    let index: Option<Arc<dyn cairn_index::DedupIndex>> =
        rt.block_on(args.open_index_for_reading(&repo));
    Ok((source(repo, index), id, snap))
}

/// Where a browsing command reads chunks: the index if open, the client's
/// tree cache for trees, the pack trailers for the rest.
fn source(repo: Repository, index: Option<Arc<dyn cairn_index::DedupIndex>>) -> BlobSource {
    let cache = TreeCache::for_repo(&repo);
    BlobSource::new(repo, index).with_tree_cache(cache)
}
