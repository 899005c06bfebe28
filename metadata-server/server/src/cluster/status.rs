//! The operator's one view of the cluster (`cairn-index status`), computed
//! from etcd's records alone: the layout, who is registered (up), and how
//! far each node has caught up.

use std::collections::HashMap;

use cairn_proto::cluster::PARTITIONS;
use cairn_proto::v1;

use super::layout::View;

/// One node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: String,
    /// gRPC URL.
    pub address: String,
    /// `active` (owns partitions, caught up on all), `joining` (still
    /// streaming some), `leaving` (in an older version only, draining),
    /// `standby` (registered, not in the layout).
    pub state: String,
    /// Registered in etcd (its lease is alive).
    pub up: bool,
    /// Partitions it owns in the newest version.
    pub partitions: usize,
    /// Size of its data directory (as it last registered).
    pub bytes: u64,
    /// Partitions it has streamed in, ever.
    pub moves_done: u64,
    /// Records repaired by anti-entropy, ever.
    pub repairs: u64,
}

/// The cluster's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The newest applied version (0: none).
    pub layout_version: u64,
    /// Applied versions still in use (more than one while partitions move).
    pub versions_in_use: usize,
    /// Replicas per partition.
    pub replication: u32,
    /// Nodes of the layout, then registered nodes outside it.
    pub nodes: Vec<NodeStatus>,
    /// Partitions with fewer caught-up replicas on up nodes than R.
    pub under_replicated: usize,
    /// (node, partition) pairs still being streamed.
    pub moves_in_flight: usize,
    /// Partitions streamed by every node, ever.
    pub moves_done: u64,
    /// Changes staged and not yet applied.
    pub staged: bool,
    /// Every partition has R caught-up replicas on up nodes and nothing
    /// moves.
    pub healthy: bool,
}

/// Partitions of the newest version with fewer caught-up owners that are
/// up than R.
pub fn under_replicated(
    view: &View<'_>,
    sync: &HashMap<String, v1::SyncProgress>,
    up: &dyn Fn(&str) -> bool,
) -> usize {
    let r = view.newest().replication as usize;
    (0..PARTITIONS)
        .filter(|&p| {
            view.newest_owners(p)
                .iter()
                .filter(|n| up(n) && view.caught_up(n, p, sync))
                .count()
                < r
        })
        .count()
}

/// The status from the records in etcd.
pub fn status(
    layout: &v1::Layout,
    staged: &v1::StagedLayout,
    registrations: &HashMap<String, v1::Registration>,
    sync: &HashMap<String, v1::SyncProgress>,
) -> Status {
    let staged = !(staged.add.is_empty() && staged.remove.is_empty() && staged.replication == 0);
    let up = |id: &str| registrations.contains_key(id);
    let Some(view) = View::new(layout) else {
        let nodes = standby(registrations, sync, &[]);
        return Status {
            layout_version: 0,
            versions_in_use: 0,
            replication: 0,
            healthy: false,
            nodes,
            under_replicated: 0,
            moves_in_flight: 0,
            moves_done: sync.values().map(|s| s.moves_done).sum(),
            staged,
        };
    };
    let mut nodes = Vec::new();
    let mut moves_in_flight = 0;
    let mut listed: Vec<String> = Vec::new();
    for version in layout.history.iter().rev() {
        for n in &version.nodes {
            if listed.contains(&n.id) {
                continue;
            }
            listed.push(n.id.clone());
            let newest = view.newest().nodes.iter().any(|m| m.id == n.id);
            let owned: Vec<u32> = (0..PARTITIONS)
                .filter(|&p| view.newest_owners(p).contains(&n.id.as_str()))
                .collect();
            let behind = owned
                .iter()
                .filter(|&&p| !view.caught_up(&n.id, p, sync))
                .count();
            moves_in_flight += behind;
            let state = match (newest, behind) {
                (false, _) => "leaving",
                (true, 0) => "active",
                (true, _) => "joining",
            };
            let reg = registrations.get(&n.id);
            let progress = sync.get(&n.id);
            nodes.push(NodeStatus {
                id: n.id.clone(),
                address: reg.map_or(n.address.clone(), |r| r.address.clone()),
                state: state.to_string(),
                up: up(&n.id),
                partitions: owned.len(),
                bytes: reg.map_or(0, |r| r.bytes),
                moves_done: progress.map_or(0, |s| s.moves_done),
                repairs: progress.map_or(0, |s| s.repairs),
            });
        }
    }
    nodes.extend(standby(registrations, sync, &listed));
    let under = under_replicated(&view, sync, &up);
    let all_up = view
        .newest()
        .nodes
        .iter()
        .all(|n| registrations.contains_key(&n.id));
    Status {
        layout_version: view.newest().version,
        versions_in_use: layout.history.len(),
        replication: view.newest().replication,
        healthy: under == 0 && moves_in_flight == 0 && layout.history.len() == 1 && all_up,
        nodes,
        under_replicated: under,
        moves_in_flight,
        moves_done: sync.values().map(|s| s.moves_done).sum(),
        staged,
    }
}

fn standby(
    registrations: &HashMap<String, v1::Registration>,
    sync: &HashMap<String, v1::SyncProgress>,
    listed: &[String],
) -> Vec<NodeStatus> {
    let mut ids: Vec<&String> = registrations
        .keys()
        .filter(|id| !listed.contains(id))
        .collect();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let r = &registrations[id];
            NodeStatus {
                id: id.clone(),
                address: r.address.clone(),
                state: "standby".into(),
                up: true,
                partitions: 0,
                bytes: r.bytes,
                moves_done: sync.get(id).map_or(0, |s| s.moves_done),
                repairs: sync.get(id).map_or(0, |s| s.repairs),
            }
        })
        .collect()
}
