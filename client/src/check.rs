//! `cairn check`: is every snapshot fully restorable?
//!
//! Without `--read-data`: every manifest opens, every pack trailer
//! authenticates, every tree reachable from a snapshot reads and verifies,
//! and every chunk a file needs is listed in some pack trailer. With
//! `--read-data`: additionally every chunk of every pack is read, decrypted
//! and re-fingerprinted, and each damaged chunk is traced to the files that
//! need it. The store is checked on its own: the index is consulted only to
//! say which pack a chunk was in when that pack's trailer is unreadable.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use cairn_chunk_store::pack::{self, PackEntry, pack_key};
use cairn_chunk_store::tree::NodeKind;
use cairn_chunk_store::{ChunkId, PackId, Repository};
use cairn_index::DedupIndex;

use crate::source::{BlobSource, bounded_map, read_all_trailers};

/// The findings.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs found.
    pub packs: usize,
    /// Chunks listed in pack trailers.
    pub chunks: usize,
    /// Bytes of pack data read and verified.
    pub bytes_verified: u64,
    /// Human-readable problems; empty means the repository is sound.
    pub problems: Vec<String>,
}

/// Why a chunk cannot be read.
#[derive(Debug, Clone)]
struct Damage {
    pack: Option<PackId>,
    reason: String,
}

/// Runs the check.
pub async fn run(
    repo: &Repository,
    index: Option<Arc<dyn DedupIndex>>,
    read_data: bool,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let all = read_all_trailers(repo).await?;
    let (trailers, bad_packs) = (all.map, all.bad);
    report.packs = all.packs;
    report.chunks = trailers.len();
    // Per pack: the problem, and the files that need it.
    let mut pack_problems: BTreeMap<PackId, String> = BTreeMap::new();
    for (id, reason) in &bad_packs {
        pack_problems.insert(*id, reason.clone());
    }

    let mut damaged: HashMap<ChunkId, Damage> = HashMap::new();
    if read_data {
        let mut by_pack: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
        for (id, loc) in &trailers {
            by_pack.entry(loc.pack).or_default().push(PackEntry {
                id: *id,
                location: *loc,
            });
        }
        let packs: Vec<(PackId, Vec<PackEntry>)> = by_pack.into_iter().collect();
        let results = bounded_map(packs, 4, |(pack_id, entries)| {
            let repo = repo.clone();
            async move {
                let bytes = repo.store().get(&pack_key(&pack_id)).await;
                let checked = tokio::task::spawn_blocking(
                    move || -> Result<(u64, Vec<(ChunkId, String)>), String> {
                        let bytes = bytes.map_err(|e| e.to_string())?;
                        let mut bad = Vec::new();
                        if let Err(e) = pack::read_trailer(repo.keys(), pack_id, &bytes) {
                            return Err(e.to_string());
                        }
                        for e in &entries {
                            let l = &e.location;
                            let end = (l.offset + u64::from(l.stored_len)) as usize;
                            let Some(sealed) = bytes.get(l.offset as usize..end) else {
                                bad.push((e.id, "beyond the end of the pack".to_string()));
                                continue;
                            };
                            if let Err(err) = repo.open_blob(&e.id, l, sealed) {
                                bad.push((e.id, err.to_string()));
                            }
                        }
                        Ok((bytes.len() as u64, bad))
                    },
                )
                .await;
                (pack_id, checked)
            }
        })
        .await;
        for (pack_id, r) in results {
            match r {
                Ok(Ok((len, bad))) => {
                    report.bytes_verified += len;
                    if !bad.is_empty() {
                        pack_problems.insert(pack_id, format!("{} damaged chunk(s)", bad.len()));
                    }
                    for (chunk, reason) in bad {
                        damaged.insert(
                            chunk,
                            Damage {
                                pack: Some(pack_id),
                                reason,
                            },
                        );
                    }
                }
                Ok(Err(reason)) => {
                    pack_problems.insert(pack_id, reason);
                }
                Err(e) => {
                    pack_problems.insert(pack_id, format!("verification failed: {e}"));
                }
            }
        }
    }

    // Which pack an unlisted chunk was in, according to the index.
    let index_pack = |index: &Option<Arc<dyn DedupIndex>>, id: ChunkId| {
        let index = index.clone();
        async move {
            let index = index?;
            index
                .lookup(&[id])
                .await
                .ok()?
                .first()
                .copied()
                .flatten()
                .map(|r| r.location.pack)
        }
    };

    let source = BlobSource::new(repo.clone(), None);
    let snapshots = match repo.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("cannot read snapshots: {e}"));
            Vec::new()
        }
    };
    report.snapshots = snapshots.len();
    // Trees in batches first; the walk below reads (and reports) any tree
    // the preload could not verify.
    let _ = crate::browse::preload_snapshots(&source, &snapshots).await;
    let mut needed_by: BTreeMap<Option<PackId>, Vec<String>> = BTreeMap::new();
    let mut other: Vec<String> = Vec::new();
    for (snap_id, snap) in &snapshots {
        let root = match snap.root_tree() {
            Ok(r) => r,
            Err(e) => {
                report
                    .problems
                    .push(format!("snapshot {}: {e}", snap_id.short()));
                continue;
            }
        };
        // Walk by hand so an unreadable tree is reported and skipped, not fatal.
        let mut stack: Vec<(PathBuf, ChunkId)> = vec![(PathBuf::from("/"), root)];
        while let Some((dir, tree_id)) = stack.pop() {
            let tree = match source.tree(&tree_id).await {
                Ok(t) => t,
                Err(e) => {
                    let pack = match trailers.get(&tree_id) {
                        Some(l) => Some(l.pack),
                        None => index_pack(&index, tree_id).await,
                    };
                    let line = format!(
                        "  needed by snapshot {}: {} (directory listing unreadable: {e:#})",
                        snap_id.short(),
                        dir.display()
                    );
                    needed_by.entry(pack).or_default().push(line);
                    continue;
                }
            };
            for node in &tree.nodes {
                let path = dir.join(node.name_os());
                match node.node_kind() {
                    Some(NodeKind::Dir) => match node.subtree_id() {
                        Ok(id) => stack.push((path, id)),
                        Err(e) => other.push(format!(
                            "snapshot {}: {}: {e}",
                            snap_id.short(),
                            path.display()
                        )),
                    },
                    Some(NodeKind::File) => {
                        let ids = match node.chunk_ids() {
                            Ok(ids) => ids,
                            Err(e) => {
                                other.push(format!(
                                    "snapshot {}: {}: {e}",
                                    snap_id.short(),
                                    path.display()
                                ));
                                continue;
                            }
                        };
                        let mut reported = false;
                        for id in ids {
                            if reported {
                                break;
                            }
                            let damage = if let Some(d) = damaged.get(&id) {
                                Some(d.clone())
                            } else if !trailers.contains_key(&id) {
                                Some(Damage {
                                    pack: index_pack(&index, id).await,
                                    reason: format!("chunk {id} is not in any pack"),
                                })
                            } else {
                                None
                            };
                            if let Some(d) = damage {
                                reported = true;
                                let line = format!(
                                    "  needed by snapshot {}: {}",
                                    snap_id.short(),
                                    path.display()
                                );
                                if d.pack.is_none() {
                                    other.push(format!("{}: {}", d.reason, path.display()));
                                }
                                needed_by.entry(d.pack).or_default().push(line);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    for (pack, reason) in &pack_problems {
        report.problems.push(format!("pack {pack}: {reason}"));
        if let Some(lines) = needed_by.remove(&Some(*pack)) {
            report.problems.extend(lines);
        }
    }
    for (pack, lines) in needed_by {
        match pack {
            Some(p) => report
                .problems
                .push(format!("pack {p}: missing from the repository")),
            None => report
                .problems
                .push("chunks missing from every pack:".to_string()),
        }
        report.problems.extend(lines);
    }
    report.problems.extend(other);
    Ok(report)
}
