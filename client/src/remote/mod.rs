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
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use cairn_chunk_store::RepoId;
use cairn_index::{IndexError, SessionId};
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
    cluster: Cluster,
    /// Filters by (partition, node id): one per replica, so a replica that
    /// missed writes while down cannot make a known chunk look new.
    filter: RwLock<HashMap<(u32, String), FilterPartition>>,
    cache_path: Option<PathBuf>,
    warned: AtomicBool,
    /// UnknownChunks calls made (for reports and tests).
    pub calls: AtomicU64,
    /// The nodes that hold each session this client began.
    session_nodes: Mutex<HashMap<SessionId, Vec<usize>>>,
    /// The token's role as the cluster reported it (nodes before roles
    /// report none).
    token_role: Option<String>,
}

impl std::fmt::Debug for RemoteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteIndex({} nodes)", self.cluster.nodes.len())
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

impl RemoteIndex {
    /// Connects through any of `seeds` (gRPC URLs) and loads the cluster map.
    pub async fn connect(
        seeds: &[String],
        token: &str,
        repo: RepoId,
        timeout: Duration,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, IndexError> {
        let mut last_err = String::from("no index address given");
        let mut map = None;
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
                .cluster_map(authed(v1::ClusterMapRequest {}, token))
                .await
            {
                Ok(r) => {
                    map = Some((seed.clone(), r.into_inner()));
                    break;
                }
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
        let (seed, map) =
            map.ok_or_else(|| unavailable(format!("no index node answered ({last_err})")))?;
        let mut nodes = Vec::new();
        for n in &map.nodes {
            let address = if n.address.is_empty() {
                seed.clone()
            } else {
                n.address.clone()
            };
            let channel = endpoint(&address, timeout)
                .map_err(unavailable)?
                .connect_lazy();
            nodes.push(NodeConn {
                id: n.id.clone(),
                client: IndexClient::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
                breaker: Mutex::new(Breaker {
                    failures: 0,
                    open_until: None,
                }),
            });
        }
        if nodes.is_empty() {
            return Err(unavailable("the cluster map lists no nodes"));
        }
        let cache_path = cache_dir.map(|d| d.join(format!("{}.filter", repo.to_hex())));
        let index = Self {
            repo,
            token: zeroize::Zeroizing::new(token.to_string()),
            cluster: Cluster {
                nodes,
                replication: map.replication.max(1) as usize,
            },
            filter: RwLock::new(HashMap::new()),
            cache_path,
            warned: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            session_nodes: Mutex::new(HashMap::new()),
            token_role: Some(map.token_role.clone()).filter(|r| !r.is_empty()),
        };
        index.load_filter_cache();
        Ok(index)
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
