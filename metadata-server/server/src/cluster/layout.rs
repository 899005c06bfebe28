//! The partition layout: versions, staging, and who reads and writes each
//! partition while partitions move.
//!
//! A layout *version* is a list of nodes with capacities and a replication
//! factor R; the owners of a partition in a version are its top R nodes by
//! weighted rendezvous score ([`cairn_proto::cluster::owners_weighted`]),
//! so a version is small (no per-partition table is stored) and one node
//! more or less moves about 1/N of the partitions.
//!
//! Operators *stage* changes (add, remove, replication) and *apply* them as
//! the next version, by compare-and-swap on the layout record in etcd, so
//! two operators cannot race. An applied version does not replace the
//! previous one at once: the layout keeps a **history**, oldest first, in
//! which the oldest version's owners of every partition hold it in full.
//! For each partition `p`:
//!
//! - **write set**: its owners in every version of the history (new owners
//!   receive every write while they copy; leaving owners keep receiving
//!   writes until they may drop their copy);
//! - **read set**: its owners in the oldest version, plus the newest
//!   version's owners that have caught up on `p` (every one of them once
//!   all have);
//! - a newest owner is **caught up** on `p` when it owned `p` in the oldest
//!   version too (it has held `p` in full and received every write since),
//!   or when it has streamed `p` from a full replica and says so in its
//!   sync progress for the newest version.
//!
//! When every newest owner has caught up on every partition, any node
//! shrinks the history to the newest version alone (again by
//! compare-and-swap); only then does a node that owns a partition in no
//! remaining version drop its copy. So at every moment each partition has
//! full replicas in its read set, and no write misses a replica that will
//! serve reads (DESIGN.md, "Cluster membership and repair").

use std::collections::{BTreeSet, HashMap};

use cairn_proto::cluster::{PARTITIONS, owners_weighted};
use cairn_proto::v1;

/// The record format this code writes and reads.
pub const FORMAT: u32 = 1;

/// Replicas of one partition, as indices into [`Table::nodes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Full replicas, best first.
    pub read: Vec<u16>,
    /// Every replica a write must reach.
    pub write: Vec<u16>,
}

/// The routing table of one layout: what clients fetch with `ClusterMap`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Names this table (etcd's revision of the layout record); calls made
    /// with an older one are refused.
    pub epoch: u64,
    /// The newest applied version (0: none yet).
    pub version: u64,
    /// R of the newest version.
    pub replication: u32,
    /// Nodes of every version in the history, the newest version's first.
    pub nodes: Vec<v1::LayoutNode>,
    /// One per partition.
    pub replicas: Vec<Replicas>,
}

impl Table {
    /// The table of a node without etcd: it owns every partition.
    pub fn single(id: &str, address: &str) -> Self {
        Self {
            epoch: 0,
            version: 0,
            replication: 1,
            nodes: vec![v1::LayoutNode {
                id: id.to_string(),
                address: address.to_string(),
                capacity: 1,
            }],
            replicas: vec![
                Replicas {
                    read: vec![0],
                    write: vec![0]
                };
                PARTITIONS as usize
            ],
        }
    }

    /// The position of node `id` in [`Self::nodes`].
    pub fn index_of(&self, id: &str) -> Option<u16> {
        self.nodes.iter().position(|n| n.id == id).map(|i| i as u16)
    }

    /// Partitions whose write set includes node `id`.
    pub fn writes_to(&self, id: &str) -> Vec<bool> {
        let me = self.index_of(id);
        self.replicas
            .iter()
            .map(|r| me.is_some_and(|m| r.write.contains(&m)))
            .collect()
    }
}

/// Owners of a partition in one version, as node ids, best first.
pub fn owners(version: &v1::LayoutVersion, partition: u32) -> Vec<&str> {
    let nodes: Vec<(&str, u32)> = version
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.capacity))
        .collect();
    owners_weighted(&nodes, partition, version.replication as usize)
        .into_iter()
        .map(|i| nodes[i].0)
        .collect()
}

/// Bit `p` of a little-endian bitmap.
pub fn bit(bitmap: &[u8], p: u32) -> bool {
    bitmap
        .get(p as usize / 8)
        .is_some_and(|b| b & (1 << (p % 8)) != 0)
}

/// Sets bit `p` of a bitmap of [`PARTITIONS`] bits.
pub fn set_bit(bitmap: &mut Vec<u8>, p: u32) {
    bitmap.resize(PARTITIONS as usize / 8, 0);
    bitmap[p as usize / 8] |= 1 << (p % 8);
}

/// What one layout says about who is where (placements computed once).
pub struct View<'a> {
    layout: &'a v1::Layout,
    /// Per version of the history, per partition: its owners.
    placements: Vec<Vec<Vec<&'a str>>>,
}

impl<'a> View<'a> {
    /// A view of `layout`; `None` when nothing has been applied yet.
    pub fn new(layout: &'a v1::Layout) -> Option<Self> {
        if layout.history.is_empty() {
            return None;
        }
        let placements = layout
            .history
            .iter()
            .map(|v| (0..PARTITIONS).map(|p| owners(v, p)).collect())
            .collect();
        Some(Self { layout, placements })
    }

    /// Owners of `p` in the newest version, best first.
    pub fn newest_owners(&self, p: u32) -> &[&'a str] {
        &self.placements[self.placements.len() - 1][p as usize]
    }

    /// Owners of `p` in the oldest version in use, best first.
    pub fn oldest_owners(&self, p: u32) -> &[&'a str] {
        &self.placements[0][p as usize]
    }

    /// The oldest version in use (its owners hold partitions in full).
    pub fn oldest(&self) -> &'a v1::LayoutVersion {
        &self.layout.history[0]
    }

    /// The newest applied version.
    pub fn newest(&self) -> &'a v1::LayoutVersion {
        &self.layout.history[self.layout.history.len() - 1]
    }

    /// Whether node `id` must stream partition `p` to catch up: it owns `p`
    /// in the newest version but did not in the oldest.
    pub fn must_stream(&self, id: &str, p: u32) -> bool {
        self.newest_owners(p).contains(&id) && !self.oldest_owners(p).contains(&id)
    }

    /// Whether node `id` has caught up on `p` (see the module docs).
    pub fn caught_up(&self, id: &str, p: u32, sync: &HashMap<String, v1::SyncProgress>) -> bool {
        self.oldest_owners(p).contains(&id)
            || sync
                .get(id)
                .is_some_and(|s| s.layout_version == self.newest().version && bit(&s.caught_up, p))
    }

    /// Whether every newest owner of every partition has caught up: the
    /// history may then shrink to the newest version.
    pub fn settled(&self, sync: &HashMap<String, v1::SyncProgress>) -> bool {
        (0..PARTITIONS).all(|p| {
            self.newest_owners(p)
                .iter()
                .all(|n| self.caught_up(n, p, sync))
        })
    }

    /// The routing table, given each node's sync progress.
    pub fn table(&self, epoch: u64, sync: &HashMap<String, v1::SyncProgress>) -> Table {
        let mut nodes: Vec<v1::LayoutNode> = Vec::new();
        for v in self.layout.history.iter().rev() {
            for n in &v.nodes {
                if !nodes.iter().any(|have| have.id == n.id) {
                    nodes.push(n.clone());
                }
            }
        }
        let index: HashMap<&str, u16> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i as u16))
            .collect();
        let at = |id: &str| index[id];
        let replicas = (0..PARTITIONS)
            .map(|p| {
                let newest = self.newest_owners(p);
                let oldest = self.oldest_owners(p);
                let ready: Vec<&str> = newest
                    .iter()
                    .copied()
                    .filter(|n| self.caught_up(n, p, sync))
                    .collect();
                let mut read: Vec<u16> = Vec::new();
                if ready.len() == newest.len() {
                    read.extend(ready.iter().map(|n| at(n)));
                } else {
                    read.extend(oldest.iter().map(|n| at(n)));
                    read.extend(ready.iter().map(|n| at(n)));
                }
                dedup(&mut read);
                let mut write = read.clone();
                for v in &self.placements {
                    write.extend(v[p as usize].iter().map(|n| at(n)));
                }
                dedup(&mut write);
                Replicas { read, write }
            })
            .collect();
        Table {
            epoch,
            version: self.newest().version,
            replication: self.newest().replication,
            nodes,
            replicas,
        }
    }
}

fn dedup(v: &mut Vec<u16>) {
    let mut seen = BTreeSet::new();
    v.retain(|x| seen.insert(*x));
}

/// Why a staged change or an apply is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Nothing staged.
    #[error("nothing is staged: use `cairn-index layout add` or `remove` first")]
    NothingStaged,
    /// Removing a node that is not in the layout.
    #[error("node {0} is not in the layout")]
    UnknownNode(String),
    /// The result would have no node, or fewer than R.
    #[error(
        "the layout would have {nodes} node(s), fewer than the replication factor {replication}"
    )]
    TooFewNodes {
        /// Nodes left.
        nodes: usize,
        /// R.
        replication: u32,
    },
    /// A record written by a newer version of cairn-index.
    #[error("layout record format {0} is newer than this cairn-index understands ({FORMAT})")]
    Format(u32),
}

/// Stages adding (or re-weighting) nodes.
pub fn stage_add(
    staged: &mut v1::StagedLayout,
    nodes: Vec<v1::LayoutNode>,
    replication: Option<u32>,
) {
    staged.format = FORMAT;
    for n in nodes {
        staged.remove.retain(|id| *id != n.id);
        staged.add.retain(|have| have.id != n.id);
        staged.add.push(n);
    }
    if let Some(r) = replication {
        staged.replication = r;
    }
}

/// Stages removing nodes of the current layout.
pub fn stage_remove(
    staged: &mut v1::StagedLayout,
    layout: &v1::Layout,
    ids: &[String],
) -> Result<(), LayoutError> {
    staged.format = FORMAT;
    let newest = layout.history.last();
    for id in ids {
        let known = newest.is_some_and(|v| v.nodes.iter().any(|n| n.id == *id))
            || staged.add.iter().any(|n| n.id == *id);
        if !known {
            return Err(LayoutError::UnknownNode(id.clone()));
        }
        staged.add.retain(|n| n.id != *id);
        if !staged.remove.contains(id) {
            staged.remove.push(id.clone());
        }
    }
    Ok(())
}

/// The layout after applying `staged`: one more version at the end of the
/// history.
pub fn apply(layout: &v1::Layout, staged: &v1::StagedLayout) -> Result<v1::Layout, LayoutError> {
    if layout.format > FORMAT {
        return Err(LayoutError::Format(layout.format));
    }
    if staged.add.is_empty() && staged.remove.is_empty() && staged.replication == 0 {
        return Err(LayoutError::NothingStaged);
    }
    let newest = layout.history.last();
    let mut nodes: Vec<v1::LayoutNode> = newest.map(|v| v.nodes.clone()).unwrap_or_default();
    for n in &staged.add {
        match nodes.iter_mut().find(|have| have.id == n.id) {
            Some(have) => *have = n.clone(),
            None => nodes.push(n.clone()),
        }
    }
    nodes.retain(|n| !staged.remove.contains(&n.id));
    let replication = match staged.replication {
        0 => newest.map_or(1, |v| v.replication),
        r => r,
    };
    if nodes.is_empty() || nodes.len() < replication as usize {
        return Err(LayoutError::TooFewNodes {
            nodes: nodes.len(),
            replication,
        });
    }
    let mut history = layout.history.clone();
    history.push(v1::LayoutVersion {
        version: newest.map_or(1, |v| v.version + 1),
        replication,
        nodes,
    });
    Ok(v1::Layout {
        format: FORMAT,
        history,
    })
}

/// The layout with its history shrunk to the newest version (only once
/// [`View::settled`]).
pub fn retire_old_versions(layout: &v1::Layout) -> v1::Layout {
    v1::Layout {
        format: FORMAT,
        history: layout.history.last().cloned().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> v1::LayoutNode {
        v1::LayoutNode {
            id: id.into(),
            address: format!("http://{id}"),
            capacity: 1,
        }
    }

    fn applied(ids: &[&str], r: u32) -> v1::Layout {
        let mut staged = v1::StagedLayout::default();
        stage_add(&mut staged, ids.iter().map(|i| node(i)).collect(), Some(r));
        apply(&v1::Layout::default(), &staged).unwrap()
    }

    fn synced(
        node: &str,
        version: u64,
        parts: impl Iterator<Item = u32>,
    ) -> (String, v1::SyncProgress) {
        let mut bits = Vec::new();
        for p in parts {
            set_bit(&mut bits, p);
        }
        (
            node.to_string(),
            v1::SyncProgress {
                format: FORMAT,
                layout_version: version,
                caught_up: bits.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_first_layout_is_settled_and_reads_where_it_writes() {
        let layout = applied(&["n0", "n1", "n2"], 2);
        let view = View::new(&layout).unwrap();
        assert!(view.settled(&HashMap::new()));
        let table = view.table(7, &HashMap::new());
        assert_eq!((table.epoch, table.version, table.nodes.len()), (7, 1, 3));
        for r in &table.replicas {
            assert_eq!(r.read.len(), 2);
            assert_eq!(r.read, r.write);
        }
    }

    #[test]
    fn a_replacement_writes_to_both_and_reads_from_full_replicas_until_caught_up() {
        let layout = applied(&["n0", "n1", "n2"], 2);
        let mut staged = v1::StagedLayout::default();
        stage_add(&mut staged, vec![node("n3")], None);
        stage_remove(&mut staged, &layout, &["n0".into()]).unwrap();
        let layout = apply(&layout, &staged).unwrap();
        assert_eq!(layout.history.len(), 2);
        let view = View::new(&layout).unwrap();
        let none = HashMap::new();
        assert!(!view.settled(&none));
        let table = view.table(8, &none);
        let n3 = table.index_of("n3").unwrap();
        let n0 = table.index_of("n0").unwrap();
        let moving: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| view.must_stream("n3", p))
            .collect();
        assert!(!moving.is_empty());
        for &p in &moving {
            let r = &table.replicas[p as usize];
            assert!(r.write.contains(&n3) && !r.read.contains(&n3), "{p}: {r:?}");
        }
        // Partitions n0 owned keep n0 in both sets until the history shrinks.
        let held_by_n0 = (0..PARTITIONS)
            .filter(|&p| view.oldest_owners(p).contains(&"n0"))
            .count();
        assert_eq!(
            held_by_n0,
            table
                .replicas
                .iter()
                .filter(|r| r.read.contains(&n0))
                .count()
        );

        // n3 catching up is not enough: n1 and n2 take over some of n0's
        // partitions too.
        let sync: HashMap<_, _> = [synced("n3", 2, moving.iter().copied())].into();
        assert!(!view.settled(&sync));
        // Everyone catches up: settled; reads move to the newest owners.
        let sync: HashMap<_, _> = ["n1", "n2", "n3"]
            .map(|n| synced(n, 2, (0..PARTITIONS).filter(|&p| view.must_stream(n, p))))
            .into();
        assert!(view.settled(&sync));
        let table = view.table(9, &sync);
        for &p in &moving {
            assert!(table.replicas[p as usize].read.contains(&n3));
        }
        assert!(table.replicas.iter().all(|r| !r.read.contains(&n0)));
        // Progress for an older version counts for nothing.
        let stale: HashMap<_, _> = [synced("n3", 1, moving.iter().copied())].into();
        assert!(!view.settled(&stale));

        let settled = retire_old_versions(&layout);
        let table = View::new(&settled).unwrap().table(10, &sync);
        assert!(table.index_of("n0").is_none());
        assert_eq!(table.nodes.len(), 3);
    }

    #[test]
    fn adding_a_node_moves_about_the_ideal_share() {
        // Rendezvous: the new node takes about R/(N+1) of the replicas.
        let layout = applied(&["n0", "n1", "n2"], 2);
        let mut staged = v1::StagedLayout::default();
        stage_add(&mut staged, vec![node("n3")], None);
        let layout = apply(&layout, &staged).unwrap();
        let view = View::new(&layout).unwrap();
        let moved = (0..PARTITIONS)
            .filter(|&p| view.must_stream("n3", p))
            .count();
        let ideal = f64::from(PARTITIONS) * 2.0 / 4.0;
        assert!(
            (moved as f64 - ideal).abs() < ideal * 0.1,
            "{moved} vs {ideal}"
        );
    }

    #[test]
    fn staging_refuses_what_cannot_be_applied() {
        let layout = applied(&["n0", "n1"], 2);
        let mut staged = v1::StagedLayout::default();
        assert_eq!(
            stage_remove(&mut staged, &layout, &["nx".into()]),
            Err(LayoutError::UnknownNode("nx".into()))
        );
        assert_eq!(apply(&layout, &staged), Err(LayoutError::NothingStaged));
        stage_remove(&mut staged, &layout, &["n1".into()]).unwrap();
        assert_eq!(
            apply(&layout, &staged),
            Err(LayoutError::TooFewNodes {
                nodes: 1,
                replication: 2
            })
        );
        let newer = v1::Layout {
            format: FORMAT + 1,
            ..layout
        };
        assert_eq!(apply(&newer, &staged), Err(LayoutError::Format(FORMAT + 1)));
    }
}
