//! A node's place in the cluster: the layout it routes by, its
//! registration in etcd, partitions it streams in ([`mover`]) or drops,
//! anti-entropy with its peers, and the calls peers make to it ([`peer`]).
//!
//! # Control plane and data plane
//!
//! etcd holds what must be agreed on (the layout, who is up, how far each
//! node has caught up, backup sessions); no consensus is written here. The
//! records themselves stay in each node's RocksDB and move node to node
//! ([`mover`]) or are repaired by anti-entropy ([`antientropy`]), merged
//! by the rule in `cairn_index`'s `engine::replica` module.
//!
//! A node without `--etcd` owns every partition ([`layout::Table::single`]).
//!
//! # Epochs
//!
//! A routing table is named by its epoch: etcd's revision of the layout
//! record. A client sends the epoch it routes by with every call
//! (`cairn-layout-epoch`); a node with a newer table refuses the call with
//! ABORTED and its epoch, and the client fetches the map and retries. The
//! check and the call run under a shared gate that installing a new table
//! takes exclusively, so once a node routes by epoch `e`, every write it
//! accepted under an older epoch is already in its database: a new owner
//! that streams from it afterwards (the stream names `e`) sees them all,
//! and every later write reaches the new owner too, because the client
//! that makes it routes by `e` or newer.

pub mod admin;
pub mod antientropy;
pub mod etcd;
pub mod layout;
pub mod mover;
pub mod peer;
pub mod progress;
pub mod sessions;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_proto::v1;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock as AsyncRwLock};

use layout::{Table, View};

/// Metadata key of the layout epoch a call routes by.
pub const EPOCH_HEADER: &str = "cairn-layout-epoch";

/// Lease of a node's registration: a node that stops renewing it for this
/// long counts as down.
pub const REGISTRATION_TTL_SECS: i64 = 10;

/// What a node knows of the cluster, updated by [`run`].
pub struct Membership {
    me: String,
    table: RwLock<Arc<Table>>,
    layout: RwLock<Arc<v1::Layout>>,
    sync: RwLock<Arc<HashMap<String, v1::SyncProgress>>>,
    gate: Arc<AsyncRwLock<()>>,
    peer_secret: RwLock<Option<Arc<Vec<u8>>>>,
    registrations: RwLock<Arc<HashMap<String, v1::Registration>>>,
    /// The etcd connection, once made (sessions go through it).
    etcd_client: RwLock<Option<etcd::Etcd>>,
    /// Wakes the mover and the publisher when the layout changes or a
    /// partition is caught up.
    pub changed: Notify,
    /// Wakes anti-entropy when a peer registers again (it may have missed
    /// writes while it was away).
    pub peer_returned: Notify,
    /// Counters for metrics and status.
    pub counters: Counters,
    etcd: bool,
}

/// What this node has done for the cluster.
#[derive(Default)]
pub struct Counters {
    /// Records repaired by anti-entropy.
    pub repairs: AtomicU64,
    /// Partitions this node must still stream.
    pub moves_pending: AtomicU64,
    /// Partitions dropped after a move.
    pub partitions_dropped: AtomicU64,
    /// Anti-entropy passes over every partition.
    pub antientropy_rounds: AtomicU64,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({}, epoch {})", self.me, self.table().epoch)
    }
}

/// A refused call: the client routes by an older table.
pub fn stale_epoch(epoch: u64) -> tonic::Status {
    let mut s = tonic::Status::aborted(format!(
        "the cluster layout changed (epoch {epoch}); fetch the cluster map and retry"
    ));
    if let Ok(v) = epoch.to_string().parse() {
        s.metadata_mut().insert(EPOCH_HEADER, v);
    }
    s
}

impl Membership {
    /// Membership of node `me`: alone (it owns everything) without etcd,
    /// empty until the layout is read with it.
    pub fn new(me: &str, etcd: bool) -> Self {
        let table = if etcd {
            Table::default()
        } else {
            Table::single(me, "")
        };
        Self {
            me: me.to_string(),
            table: RwLock::new(Arc::new(table)),
            layout: RwLock::new(Arc::new(v1::Layout::default())),
            sync: RwLock::new(Arc::new(HashMap::new())),
            gate: Arc::new(AsyncRwLock::new(())),
            peer_secret: RwLock::new(None),
            registrations: RwLock::new(Arc::new(HashMap::new())),
            etcd_client: RwLock::new(None),
            changed: Notify::new(),
            peer_returned: Notify::new(),
            counters: Counters::default(),
            etcd,
        }
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Whether the node runs with etcd.
    pub fn clustered(&self) -> bool {
        self.etcd
    }

    /// The routing table now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The applied layout now.
    pub fn layout(&self) -> Arc<v1::Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every node's sync progress as last read.
    pub fn sync(&self) -> Arc<HashMap<String, v1::SyncProgress>> {
        self.sync.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where node `id` is reached: the address it registered with, else
    /// `fallback` (the layout's).
    pub fn address_of(&self, id: &str, fallback: &str) -> String {
        self.registrations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or_else(|| fallback.to_string(), |r| r.address.clone())
    }

    /// The etcd connection of a clustered node; an error a client can act
    /// on when there is none yet.
    pub fn etcd(&self) -> Result<etcd::Etcd, cairn_index::IndexError> {
        self.etcd_client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                cairn_index::IndexError::Unavailable(
                    "this index node has not reached etcd yet; retry".into(),
                )
            })
    }

    /// Whether node `id` is registered (up), as last read.
    pub fn is_up(&self, id: &str) -> bool {
        self.registrations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Records who is registered; wakes anti-entropy when a node appeared
    /// or restarted since the last look.
    fn set_registrations(&self, now: HashMap<String, v1::Registration>) {
        let mut regs = self
            .registrations
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let started = |m: &HashMap<String, v1::Registration>| -> HashMap<String, i64> {
            m.iter().map(|(k, r)| (k.clone(), r.started_unix)).collect()
        };
        if antientropy::returned(&started(&regs), &started(&now)) && !regs.is_empty() {
            self.peer_returned.notify_one();
        }
        *regs = Arc::new(now);
    }

    /// The peer secret (once read from etcd).
    pub fn peer_secret(&self) -> Option<Arc<Vec<u8>>> {
        self.peer_secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Admits a call that routes by `epoch` (`None`: a client from before
    /// layouts, or a tool): refused when this node has a newer table;
    /// otherwise the gate is held until the guard drops.
    pub async fn admit(
        &self,
        epoch: Option<u64>,
    ) -> Result<OwnedRwLockReadGuard<()>, tonic::Status> {
        let guard = self.gate.clone().read_owned().await;
        let now = self.table().epoch;
        match epoch {
            Some(e) if e < now => Err(stale_epoch(now)),
            _ => Ok(guard),
        }
    }

    /// Installs what was read from etcd. A new epoch waits until every
    /// call admitted under the old one has finished.
    pub async fn install(
        &self,
        layout: v1::Layout,
        epoch: u64,
        sync: HashMap<String, v1::SyncProgress>,
    ) {
        let mut table = match View::new(&layout) {
            Some(view) => view.table(epoch, &sync),
            None => Table {
                epoch,
                ..Table::default()
            },
        };
        // A node restarted on another port registers its new address.
        for n in &mut table.nodes {
            n.address = self.address_of(&n.id, &n.address);
        }
        let new_epoch = table.epoch != self.table().epoch;
        let _exclusive = if new_epoch {
            Some(self.gate.write().await)
        } else {
            None
        };
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(layout);
        *self.sync.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sync);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        if new_epoch {
            tracing::info!(epoch, "routing by a new layout");
            self.changed.notify_waiters();
        }
    }

    /// Reads the layout from etcd now instead of at the next change (a
    /// client asked before this node had read any).
    pub async fn catch_up(&self) -> Result<(), etcd::EtcdError> {
        let Ok(etcd) = self.etcd() else {
            return Ok(());
        };
        let layout = etcd.layout().await?;
        let sync = etcd.sync_progress().await?;
        self.set_registrations(etcd.registrations().await?);
        if layout.revision as u64 > self.table().epoch {
            self.install(layout.value, layout.revision as u64, sync)
                .await;
        }
        Ok(())
    }

    fn set_peer_secret(&self, secret: Vec<u8>) {
        *self.peer_secret.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(secret));
    }

    /// Partitions this node owns in the newest layout version.
    pub fn partitions_owned(&self) -> usize {
        let layout = self.layout();
        match View::new(&layout) {
            Some(view) => (0..cairn_proto::cluster::PARTITIONS)
                .filter(|&p| view.newest_owners(p).contains(&self.me.as_str()))
                .count(),
            None if !self.etcd => cairn_proto::cluster::PARTITIONS as usize,
            None => 0,
        }
    }

    /// Partitions of the newest version with fewer caught-up owners that
    /// are up than R, as this node sees them.
    pub fn under_replicated(&self, up: &dyn Fn(&str) -> bool) -> usize {
        let layout = self.layout();
        let sync = self.sync();
        View::new(&layout).map_or(0, |view| status::under_replicated(&view, &sync, up))
    }

    /// Sets the cluster gauges of `/metrics`.
    pub fn report(&self, g: &crate::metrics::ClusterGauges, progress: &progress::Progress) {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        let (moves_done, records_copied, _) = progress.totals();
        g.layout_version.set(self.table().version as i64);
        g.moves_in_flight.set(count(&self.counters.moves_pending));
        g.moves_done.set(moves_done as i64);
        g.records_copied.set(records_copied as i64);
        g.partitions_dropped
            .set(count(&self.counters.partitions_dropped));
        g.under_replicated
            .set(self.under_replicated(&|id| self.is_up(id)) as i64);
        g.antientropy_rounds
            .set(count(&self.counters.antientropy_rounds));
        g.antientropy_repairs.set(count(&self.counters.repairs));
    }
}

/// How often a node re-reads the cluster's records when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);

/// Keeps a node's membership current until `stop`: registers the node
/// under a lease, reads the layout and every node's progress on each
/// change, retires old layout versions once every partition has caught
/// up, and drops partitions the node no longer holds. The mover and
/// anti-entropy run beside it.
pub async fn run(
    node: Arc<crate::node::Node>,
    advertise: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = &node.config;
    let mut delay = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        let etcd = match etcd::Etcd::connect(&config.etcd, &config.etcd_prefix).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot reach etcd: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        match member(&node, &etcd, &advertise, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("cluster membership interrupted: {e}; reconnecting"),
        }
    }
}

/// One connection's worth of membership; returns `Ok` only on `stop`.
async fn member(
    node: &Arc<crate::node::Node>,
    etcd: &etcd::Etcd,
    advertise: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), etcd::EtcdError> {
    let membership = &node.cluster;
    membership.set_peer_secret(etcd.peer_secret().await?);
    *membership
        .etcd_client
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Some(etcd.clone());
    let registration = |bytes: u64| v1::Registration {
        format: layout::FORMAT,
        id: membership.me.clone(),
        address: advertise.to_string(),
        capacity: node.config.capacity.max(1),
        bytes,
        started_unix: node.started_unix,
    };
    let lease = etcd.grant(REGISTRATION_TTL_SECS).await?;
    etcd.put(
        &format!("nodes/{}", membership.me),
        &registration(node.disk_bytes()),
        Some(lease),
    )
    .await?;
    tracing::info!(node = %membership.me, "registered in etcd as {advertise}");
    let mut renewed = tokio::time::Instant::now();
    let mut published: Option<v1::SyncProgress> = None;
    // The epoch whose unowned partitions were last dropped.
    let mut dropped_at = 0;
    let result = async {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if renewed.elapsed() >= Duration::from_secs(REGISTRATION_TTL_SECS as u64 / 3) {
                if !etcd.keep_alive_once(lease).await? {
                    // The lease expired (etcd was out of reach too long):
                    // register again from scratch.
                    return Err(etcd::EtcdError::Conflict(
                        "the node's registration lease".into(),
                    ));
                }
                etcd.put(
                    &format!("nodes/{}", membership.me),
                    &registration(node.disk_bytes()),
                    Some(lease),
                )
                .await?;
                renewed = tokio::time::Instant::now();
            }
            let layout = etcd.layout().await?;
            let sync = etcd.sync_progress().await?;
            membership.set_registrations(etcd.registrations().await?);
            if let Some(view) = View::new(&layout.value)
                && layout.value.history.len() > 1
                && view.settled(&sync)
            {
                let retired = layout::retire_old_versions(&layout.value);
                match etcd
                    .put_if_unchanged("layout", &retired, layout.revision, None)
                    .await
                {
                    Ok(()) => {
                        tracing::info!("every partition caught up: older layout versions retired")
                    }
                    Err(etcd::EtcdError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            membership
                .install(layout.value, layout.revision as u64, sync)
                .await;
            if membership.table().epoch != dropped_at {
                dropped_at = membership.table().epoch;
                let n = node.clone();
                let dropped = tokio::task::spawn_blocking(move || mover::drop_unowned(&n))
                    .await
                    .unwrap_or(Ok(0));
                match dropped {
                    Ok(0) => {}
                    Ok(k) => {
                        tracing::info!("dropped {k} partition copies this node no longer holds")
                    }
                    Err(e) => tracing::warn!("dropping partitions: {e}"),
                }
            }
            if let Err(e) = node.progress.follow(&membership.layout(), &membership.me) {
                tracing::warn!("move progress: {e}");
            }
            let mine = node.progress.published();
            if published.as_ref() != Some(&mine) {
                etcd.put(&format!("sync/{}", membership.me), &mine, None)
                    .await?;
                published = Some(mine);
            }
            tokio::select! {
                r = etcd.changed(POLL) => r?,
                _ = membership.changed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
    .await;
    if *stop.borrow() {
        let _ = etcd.revoke(lease).await;
    }
    result
}
