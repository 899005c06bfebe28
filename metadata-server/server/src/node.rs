//! One `cairn-index` node: configuration, tenants, membership, and the
//! per-repository engines it serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cairn_chunk_store::RepoId;
use cairn_proto::cluster::PARTITIONS;

use cairn_index::{DedupIndex, Engine, EngineOptions, IndexError, LockWait};

/// Node configuration (`node.toml`; flags override).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id as listed in the membership file.
    pub node_id: String,
    /// gRPC listen address (`127.0.0.1:0` picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Where RocksDB data lives (one database per repository).
    pub data_dir: PathBuf,
    /// Membership file (TOML, `[[node]] id, address`).
    pub members: Option<PathBuf>,
    /// Replicas per partition.
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// Token file (TOML, `[[token]] hash, repository`).
    pub tokens: PathBuf,
    /// Requests handled at once; more are refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Longest a request may run.
    #[serde(default = "default_timeout_secs")]
    pub request_timeout_secs: u64,
    /// PEM certificate chain; with `tls_key`, the node serves gRPC over TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl NodeConfig {
    /// A node `node_id` keeping its databases in `data_dir` and its tokens
    /// in `tokens`, every other setting at its default (no membership file:
    /// it owns every partition).
    pub fn new(node_id: &str, data_dir: PathBuf, tokens: PathBuf) -> Self {
        Self {
            node_id: node_id.to_string(),
            listen: default_listen(),
            metrics_listen: None,
            data_dir,
            members: None,
            replication: default_replication(),
            tokens,
            max_in_flight: default_in_flight(),
            request_timeout_secs: default_timeout_secs(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7420))
}
fn default_replication() -> u32 {
    1
}
fn default_in_flight() -> usize {
    256
}
fn default_timeout_secs() -> u64 {
    30
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// gRPC URL (`http://127.0.0.1:7420`).
    pub address: String,
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    #[serde(default)]
    node: Vec<Member>,
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// A token as stored: only its BLAKE3 hash is kept on disk.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Hex BLAKE3 hash of the bearer token.
    pub hash: String,
    /// Repository id (64 hex) the token is bound to.
    pub repository: String,
}

/// Hash under which a token is stored.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Appends a new random token for `repo` to the token file; returns the token.
pub fn add_token(file: &Path, repo: &RepoId) -> Result<String, String> {
    let mut tokens: TokensFile = match std::fs::read_to_string(file) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokensFile::default(),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let token = format!(
        "cairn_{}",
        hex::encode(cairn_chunk_store::crypto::random_bytes::<24>())
    );
    tokens.token.push(TokenEntry {
        hash: token_hash(&token),
        repository: repo.to_hex(),
    });
    let text = toml::to_string(&tokens).map_err(|e| e.to_string())?;
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(token)
}

/// A file re-read when its modification time changes (a `stat` per use:
/// a token added a moment ago works at once).
struct Watched<T> {
    path: Option<PathBuf>,
    state: RwLock<(Option<SystemTime>, Instant, Arc<T>)>,
    parse: fn(&str) -> Result<T, String>,
}

impl<T: Default> Watched<T> {
    fn new(path: Option<PathBuf>, parse: fn(&str) -> Result<T, String>) -> Result<Self, String> {
        let w = Self {
            path,
            state: RwLock::new((None, Instant::now(), Arc::new(T::default()))),
            parse,
        };
        w.reload(true)?;
        Ok(w)
    }

    fn reload(&self, force: bool) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if !force && self.state.read().unwrap_or_else(|p| p.into_inner()).0 == mtime {
            return Ok(());
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.1 = Instant::now();
        if !force && mtime == st.0 {
            return Ok(());
        }
        let value = match std::fs::read_to_string(path) {
            Ok(text) => (self.parse)(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        *st = (mtime, Instant::now(), Arc::new(value));
        Ok(())
    }

    fn get(&self) -> Arc<T> {
        if let Err(e) = self.reload(false) {
            tracing::warn!("keeping the previous version: {e}");
        }
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .2
            .clone()
    }
}

/// Filter epochs of one repository: a random incarnation (so a restarted
/// node never reuses an epoch) and a change counter per partition.
pub struct Epochs {
    incarnation: u64,
    counters: Vec<AtomicU64>,
}

impl Epochs {
    fn new() -> Self {
        Self {
            incarnation: u64::from(u32::from_le_bytes(
                cairn_chunk_store::crypto::random_bytes::<4>(),
            )) << 32,
            counters: (0..PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The current epoch of a partition.
    pub fn get(&self, partition: u32) -> u64 {
        self.incarnation | self.counters[partition as usize].load(Ordering::Relaxed)
    }

    /// Marks a partition changed.
    pub fn bump(&self, partition: u32) {
        self.counters[partition as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What a node serves for one repository.
pub struct Tenant {
    /// The index.
    pub engine: Engine,
    /// Filter epochs.
    pub epochs: Epochs,
    /// Built filters by partition: (epoch, items, bytes).
    pub filters: Mutex<HashMap<u32, (u64, u64, bytes::Bytes)>>,
}

/// A running node.
pub struct Node {
    /// Configuration.
    pub config: NodeConfig,
    members: Watched<Vec<Member>>,
    tokens: Watched<HashMap<String, RepoId>>,
    tenants: Mutex<HashMap<RepoId, Arc<Tenant>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.config.node_id)
    }
}

impl Node {
    /// Loads membership and tokens; opens nothing until a repository is used.
    pub fn new(config: NodeConfig) -> Result<Self, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
        let members = Watched::new(config.members.clone(), |text| {
            toml::from_str::<MembersFile>(text)
                .map(|m| m.node)
                .map_err(|e| e.to_string())
        })?;
        let tokens = Watched::new(Some(config.tokens.clone()), |text| {
            let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
            let mut map = HashMap::new();
            for t in file.token {
                let repo: RepoId = t
                    .repository
                    .parse()
                    .map_err(|e| format!("token for {}: {e}", t.repository))?;
                map.insert(t.hash.to_ascii_lowercase(), repo);
            }
            Ok(map)
        })?;
        Ok(Self {
            config,
            members,
            tokens,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// Current members (this node alone when no membership file is given).
    pub fn members(&self) -> Vec<Member> {
        let m = self.members.get();
        if m.is_empty() {
            vec![Member {
                id: self.config.node_id.clone(),
                address: String::new(),
            }]
        } else {
            m.as_ref().clone()
        }
    }

    /// The repository a bearer token is bound to.
    pub fn token_repo(&self, token: &str) -> Option<RepoId> {
        self.tokens.get().get(&token_hash(token)).copied()
    }

    /// The tenant of `repo`, opening its database on first use.
    pub fn tenant(&self, repo: &RepoId) -> Result<Arc<Tenant>, IndexError> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tenants.get(repo) {
            return Ok(t.clone());
        }
        let path = self.config.data_dir.join("repos").join(repo.to_hex());
        let engine = Engine::open(
            &path,
            EngineOptions {
                lock_wait: LockWait(Duration::ZERO),
            },
            &|_| {},
        )?;
        let tenant = Arc::new(Tenant {
            engine,
            epochs: Epochs::new(),
            filters: Mutex::new(HashMap::new()),
        });
        tenants.insert(*repo, tenant.clone());
        Ok(tenant)
    }

    /// Partitions this node owns under the current membership.
    pub fn partitions_owned(&self) -> usize {
        let members = self.members();
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let Some(me) = ids.iter().position(|id| *id == self.config.node_id) else {
            return 0;
        };
        (0..PARTITIONS)
            .filter(|&p| {
                cairn_proto::cluster::owners(&ids, p, self.config.replication as usize)
                    .contains(&me)
            })
            .count()
    }

    /// Total size of the data directory.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.config.data_dir)
    }

    /// Flushes every open database (shutdown). Call on a blocking thread:
    /// RocksDB flushes are disk writes.
    pub fn flush_all(&self) {
        let tenants: Vec<Arc<Tenant>> = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in tenants {
            if let Err(e) = tokio::runtime::Handle::current().block_on(t.engine.flush()) {
                tracing::error!("flush failed: {e}");
            }
        }
    }
}
