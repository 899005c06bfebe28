//! The index cluster seen from a client: routing, replication, circuit
//! breakers and the downloadable filter.
//!
//! Writes (`RegisterPack`) go to every replica of a partition; reads go to
//! the first replica whose breaker is closed and move on to the next on
//! failure. When no replica answers, a chunk counts as unknown and is
//! uploaded again: the index is an accelerator, never a reason for a backup
//! to fail (DESIGN.md, "the object store is the source of truth").
//!
//! One file per job: [`channel`] (connections, TLS, breakers), [`routing`]
//! (replicas of a partition), [`repair`] (read repair), [`filter`] (the
//! downloadable filter and its cache), [`session`] (backup sessions), and
//! the two index traits, [`dedup`] and [`gc`].

mod channel;
mod dedup;
mod filter;
mod gc;
mod offline;
mod repair;
mod routing;
mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cairn_chunk_store::RepoId;
use cairn_index::IndexError;
use cairn_proto::v1;

pub use crate::paths::cache_dir;
pub use offline::NoIndex;

use cairn_proto::v1::index_client::IndexClient;
use channel::{Breaker, NodeConn, authed, endpoint};
use filter::FilterPartition;
use routing::Cluster;

/// A client of the index cluster for one repository.
pub struct RemoteIndex {
    repo: RepoId,
    token: zeroize::Zeroizing<String>,
    cluster: RwLock<Arc<Cluster>>,
    /// Where the map was fetched from, to fetch it again.
    seeds: Vec<String>,
    timeout: Duration,
    /// Connections by address, reused across routing tables.
    conns: Mutex<HashMap<String, Arc<NodeConn>>>,
    /// The newest layout epoch a node refused a call with.
    newer_epoch: Arc<AtomicU64>,
    /// Filters by (partition, node id): one per replica, so a replica that
    /// missed writes while down cannot make a known chunk look new.
    filter: RwLock<HashMap<(u32, String), FilterPartition>>,
    cache_path: Option<PathBuf>,
    warned: AtomicBool,
    /// UnknownChunks calls made (for reports and tests).
    pub calls: AtomicU64,
    /// The token's role as the cluster reported it (nodes before roles
    /// report none).
    token_role: Option<String>,
}

tokio::task_local! {
    /// The routing table one index operation uses from start to end
    /// ([`RemoteIndex::with_layout`]): every call it makes is routed by,
    /// and names, the same epoch.
    static PINNED: Arc<Cluster>;
}

impl std::fmt::Debug for RemoteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteIndex({} nodes)", self.cluster().nodes.len())
    }
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(e.to_string())
}

/// A refused call is the token's problem and says so; anything else means
/// the node could not be reached.
fn call_error(node: &str, what: &str, s: &tonic::Status) -> IndexError {
    if s.code() == tonic::Code::PermissionDenied {
        IndexError::PermissionDenied(s.message().to_string())
    } else {
        unavailable(format!(
            "index node {node} did not answer {what}: {}",
            s.message()
        ))
    }
}

/// Fetches the cluster map from the first of `seeds` that answers.
async fn fetch_map(
    seeds: &[String],
    token: &str,
    timeout: Duration,
) -> Result<(String, v1::ClusterMapResponse), IndexError> {
    let mut last_err = String::from("no index address given");
    for seed in seeds {
        let channel = match endpoint(seed, timeout) {
            Ok(e) => e.connect_lazy(),
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        let mut client = IndexClient::new(channel);
        match client
            .cluster_map(authed(v1::ClusterMapRequest {}, token, 0))
            .await
        {
            Ok(r) => return Ok((seed.clone(), r.into_inner())),
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return Err(IndexError::Unauthorized(format!(
                    "index {seed} refused the token: {}",
                    s.message()
                )));
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                return Err(IndexError::PermissionDenied(format!(
                    "{seed}: {}",
                    s.message()
                )));
            }
            Err(s) => last_err = format!("{seed}: {}", s.message()),
        }
    }
    Err(unavailable(format!("no index node answered ({last_err})")))
}

impl RemoteIndex {
    /// Connects through any of `seeds` (gRPC URLs) and loads the cluster map.
    pub async fn connect(
        seeds: &[String],
        token: &str,
        repo: RepoId,
        timeout: Duration,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, IndexError> {
        let (seed, map) = fetch_map(seeds, token, timeout).await?;
        let cache_path = cache_dir.map(|d| d.join(format!("{}.filter", repo.to_hex())));
        let mut index = Self {
            repo,
            token: zeroize::Zeroizing::new(token.to_string()),
            cluster: RwLock::new(Arc::new(Cluster {
                nodes: Vec::new(),
                replication: 1,
                epoch: 0,
                layout_version: 0,
                replicas: Vec::new(),
            })),
            seeds: seeds.to_vec(),
            timeout,
            conns: Mutex::new(HashMap::new()),
            newer_epoch: Arc::new(AtomicU64::new(0)),
            filter: RwLock::new(HashMap::new()),
            cache_path,
            warned: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            token_role: Some(map.token_role.clone()).filter(|r| !r.is_empty()),
        };
        let cluster = index.cluster_from_map(&seed, &map)?;
        index.cluster = RwLock::new(Arc::new(cluster));
        index.load_filter_cache();
        Ok(index)
    }

    /// The routing table from a map a node served.
    fn cluster_from_map(
        &self,
        seed: &str,
        map: &v1::ClusterMapResponse,
    ) -> Result<Cluster, IndexError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        for n in &map.nodes {
            let address = if n.address.is_empty() {
                seed.to_string()
            } else {
                n.address.clone()
            };
            let key = format!("{}@{address}", n.id);
            if let Some(c) = conns.get(&key) {
                nodes.push(c.clone());
                continue;
            }
            let channel = endpoint(&address, self.timeout)
                .map_err(unavailable)?
                .connect_lazy();
            let conn = Arc::new(NodeConn {
                id: n.id.clone(),
                client: IndexClient::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
                breaker: Mutex::new(Breaker {
                    failures: 0,
                    open_until: None,
                }),
                newer_epoch: self.newer_epoch.clone(),
            });
            conns.insert(key, conn.clone());
            nodes.push(conn);
        }
        if nodes.is_empty() {
            return Err(unavailable(if map.layout_version == 0 && map.epoch > 0 {
                "the index cluster has no layout yet (cairn-index layout add ... && cairn-index layout apply)".to_string()
            } else {
                "the cluster map lists no nodes".to_string()
            }));
        }
        let in_range = |v: &[u32]| -> Vec<usize> {
            v.iter()
                .map(|&i| i as usize)
                .filter(|&i| i < nodes.len())
                .collect()
        };
        let replicas = if map.replicas.len() == cairn_proto::cluster::PARTITIONS as usize {
            map.replicas
                .iter()
                .map(|r| (in_range(&r.read), in_range(&r.write)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Cluster {
            nodes,
            replication: map.replication.max(1) as usize,
            epoch: map.epoch,
            layout_version: map.layout_version,
            replicas,
        })
    }

    /// The routing table this operation uses (see [`Self::with_layout`]).
    fn cluster(&self) -> Arc<Cluster> {
        PINNED.try_with(Arc::clone).unwrap_or_else(|_| {
            self.cluster
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// The layout version the client routes by (0: a cluster without
    /// layouts).
    pub fn layout_version(&self) -> u64 {
        self.cluster().layout_version
    }

    /// Fetches the cluster map again (a node said the layout changed).
    async fn refresh(&self) -> Result<(), IndexError> {
        let current = self.cluster();
        let mut seeds: Vec<String> = Vec::new();
        for conn in &current.nodes {
            if let Some((_, address)) = self
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(_, c)| Arc::ptr_eq(c, conn))
                .map(|(k, _)| k.split_once('@').unwrap_or(("", k.as_str())))
                .map(|(a, b)| (a.to_string(), b.to_string()))
            {
                seeds.push(address);
            }
        }
        seeds.extend(self.seeds.iter().cloned());
        let (seed, map) = fetch_map(&seeds, &self.token, self.timeout).await?;
        let cluster = self.cluster_from_map(&seed, &map)?;
        tracing::debug!(epoch = cluster.epoch, "index layout refreshed");
        *self.cluster.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cluster);
        Ok(())
    }

    /// Runs one index operation on one routing table; when a node said the
    /// layout changed meanwhile, fetches the map and runs it again (every
    /// operation is safe to repeat: registrations are first-writer-wins,
    /// lookups and confirmations idempotent).
    async fn with_layout<T, F, Fut>(&self, op: F) -> Result<T, IndexError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, IndexError>>,
    {
        let mut attempt = 0;
        loop {
            let cluster = self.cluster();
            let result = PINNED.scope(cluster.clone(), op()).await;
            let newer = self.newer_epoch.load(Ordering::Relaxed);
            attempt += 1;
            if newer <= cluster.epoch || attempt > 3 {
                return result;
            }
            if let Err(e) = self.refresh().await {
                tracing::debug!("index layout not refreshed: {e}");
                return result;
            }
        }
    }

    /// Fails with one line unless the token's role is `needed` or
    /// stronger (roles: restore < backup < prune < admin), so that a job
    /// given the wrong token stops before it does anything.
    pub fn require_role(&self, needed: &str, job: &str) -> Result<(), IndexError> {
        const ORDER: [&str; 4] = ["restore", "backup", "prune", "admin"];
        let rank = |r: &str| ORDER.iter().position(|o| *o == r);
        let Some(role) = &self.token_role else {
            return Ok(());
        };
        match (rank(role), rank(needed)) {
            (Some(have), Some(need)) if have < need => Err(IndexError::PermissionDenied(format!(
                "{job} needs an index token with role {needed}; CAIRN_INDEX_TOKEN has role {role}"
            ))),
            _ => Ok(()),
        }
    }

    fn warn_once(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            crate::notify::warning(format!(
                "{what}; affected chunks are treated as new and uploaded again"
            ));
        }
    }

    fn repo_bytes(&self) -> bytes::Bytes {
        self.repo.as_bytes().to_vec().into()
    }
}
