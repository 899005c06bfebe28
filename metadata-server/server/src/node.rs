//! One `cairn-index` node: configuration, tenants, its place in the
//! cluster ([`crate::cluster`]), and the per-repository engines it serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cairn_chunk_store::RepoId;
use cairn_proto::cluster::PARTITIONS;

use cairn_index::{DedupIndex, Engine, EngineOptions, IndexError, LockWait};

use crate::access::{Refusal, TokenEntry, TokensFile};
use crate::audit::AuditLog;
use crate::cluster::Membership;
use crate::cluster::progress::Progress;

/// Node configuration (`node.toml`; flags override).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in the cluster layout.
    pub node_id: String,
    /// gRPC listen address (`127.0.0.1:0` picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Where RocksDB data lives (one database per repository).
    pub data_dir: PathBuf,
    /// etcd client URLs: the cluster's control plane. Empty: a node alone,
    /// owning every partition.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The key prefix of this cluster in etcd (one etcd may hold several).
    #[serde(default = "default_etcd_prefix")]
    pub etcd_prefix: String,
    /// The gRPC URL clients and peers reach this node at (default:
    /// `http://` and the listen address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Relative weight in placement: a node of capacity 2 owns twice the
    /// partitions of one of capacity 1.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Seconds between anti-entropy rounds (each partition compared with
    /// its other replicas).
    #[serde(default = "default_antientropy_secs")]
    pub antientropy_secs: u64,
    /// Token file (TOML, `[[token]]`; see [`crate::access`]).
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
    /// The audit log (JSON lines; default `DATA_DIR/audit.log`).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated.
    #[serde(default = "default_audit_max_bytes")]
    pub audit_max_bytes: u64,
}

impl NodeConfig {
    /// A node `node_id` keeping its databases in `data_dir` and its tokens
    /// in `tokens`, every other setting at its default (no etcd: it owns
    /// every partition).
    pub fn new(node_id: &str, data_dir: PathBuf, tokens: PathBuf) -> Self {
        Self {
            node_id: node_id.to_string(),
            listen: default_listen(),
            metrics_listen: None,
            data_dir,
            etcd: Vec::new(),
            etcd_prefix: default_etcd_prefix(),
            advertise: None,
            capacity: default_capacity(),
            antientropy_secs: default_antientropy_secs(),
            tokens,
            max_in_flight: default_in_flight(),
            request_timeout_secs: default_timeout_secs(),
            tls_cert: None,
            tls_key: None,
            audit_log: None,
            audit_max_bytes: default_audit_max_bytes(),
        }
    }

    /// Where the audit log is written.
    pub fn audit_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.log"))
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7420))
}
fn default_etcd_prefix() -> String {
    "/cairn/".to_string()
}
fn default_capacity() -> u32 {
    1
}
fn default_antientropy_secs() -> u64 {
    60
}
fn default_in_flight() -> usize {
    256
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_audit_max_bytes() -> u64 {
    64 << 20
}

/// What tells one version of a watched file from the next: its inode
/// (files are replaced by a rename), size and modification time (whose
/// granularity, a kernel tick, can be coarser than two quick edits).
type Version = Option<(u64, u64, SystemTime)>;

fn version(path: &Path) -> Version {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// A file re-read when it changes (a `stat` per use: a token added or
/// revoked a moment ago is honoured at once).
struct Watched<T> {
    path: Option<PathBuf>,
    state: RwLock<(Version, Instant, Arc<T>)>,
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
        let mtime = version(path);
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

/// The tokens of the token file, by hash.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<String, TokenEntry>,
    /// The same hashes, parsed, for the constant-time search.
    hashes: Vec<(blake3::Hash, String)>,
}

impl Tokens {
    /// The entry whose hash is `hash`. Every stored hash is compared, each
    /// in constant time (`blake3::Hash`'s equality), so the time taken
    /// says nothing about which hash matched or how much of it.
    fn find(&self, hash: &blake3::Hash) -> Option<&TokenEntry> {
        let mut found = None;
        for (h, key) in &self.hashes {
            if h == hash {
                found = Some(key);
            }
        }
        found.and_then(|k| self.by_hash.get(k))
    }
}

/// A running node.
pub struct Node {
    /// Configuration.
    pub config: NodeConfig,
    /// The audit trail.
    pub audit: AuditLog,
    /// The layout this node routes by, and its counters.
    pub cluster: Membership,
    /// How far this node has caught up on partitions it streams in.
    pub progress: Progress,
    /// When the node started (Unix seconds).
    pub started_unix: i64,
    tokens: Watched<Tokens>,
    /// The version the audit log last saw, to record what changed.
    seen_tokens: Mutex<Option<Arc<Tokens>>>,
    /// Token id → last use not yet written to the last-use file.
    last_use: Mutex<(HashMap<String, i64>, i64)>,
    tenants: Mutex<HashMap<RepoId, Arc<Tenant>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.config.node_id)
    }
}

/// How often a node writes the last-use times of tokens.
const LAST_USE_EVERY_SECS: i64 = 60;

impl Node {
    /// Loads tokens and move progress; opens nothing until a repository
    /// is used. The cluster layout is read by [`crate::cluster::run`].
    pub fn new(config: NodeConfig) -> Result<Self, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
        let progress = Progress::load(config.data_dir.join("sync.json"))?;
        let tokens = Watched::new(Some(config.tokens.clone()), |text| {
            let file = TokensFile::parse(text)?;
            let by_hash: HashMap<String, TokenEntry> = file
                .token
                .into_iter()
                .map(|t| (t.hash.to_ascii_lowercase(), t))
                .collect();
            let hashes = by_hash
                .keys()
                .filter_map(|k| blake3::Hash::from_hex(k).ok().map(|h| (h, k.clone())))
                .collect();
            Ok(Tokens { by_hash, hashes })
        })?;
        let audit = AuditLog::new(config.audit_path(), &config.node_id, config.audit_max_bytes);
        Ok(Self {
            seen_tokens: Mutex::new(Some(tokens.get())),
            cluster: Membership::new(&config.node_id, !config.etcd.is_empty()),
            progress,
            started_unix: crate::access::now_secs(),
            audit,
            config,
            tokens,
            last_use: Mutex::new((HashMap::new(), 0)),
            tenants: Mutex::new(HashMap::new()),
        })
    }

    fn note_tokens(&self, now: &Arc<Tokens>) {
        let mut seen = self.seen_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(before) = seen.as_ref()
            && !Arc::ptr_eq(before, now)
        {
            for (hash, t) in &now.by_hash {
                let old = before.by_hash.get(hash);
                let fields = || {
                    serde_json::json!({
                        "token": t.name(),
                        "token_id": t.id(),
                        "repository": t.repository,
                        "role": t.role().map(|r| r.name()).unwrap_or("?"),
                    })
                };
                if old.is_none() {
                    self.audit.record("token_added", fields());
                }
                if t.revoked.is_some() && old.is_none_or(|o| o.revoked.is_none()) {
                    self.audit.record("token_revoked", fields());
                }
            }
            for (hash, t) in &before.by_hash {
                if !now.by_hash.contains_key(hash) {
                    self.audit.record(
                        "token_removed",
                        serde_json::json!({"token": t.name(), "token_id": t.id()}),
                    );
                }
            }
        }
        *seen = Some(now.clone());
    }

    /// The token a bearer token is, if it may be used now; else why not.
    pub fn token(&self, token: &str) -> Result<TokenEntry, (Refusal, Option<Box<TokenEntry>>)> {
        let tokens = self.tokens.get();
        self.note_tokens(&tokens);
        let Some(t) = tokens.find(&blake3::hash(token.as_bytes())) else {
            return Err((Refusal::UnknownToken, None));
        };
        let now = crate::access::now_secs();
        if t.revoked.is_some() {
            return Err((Refusal::Revoked, Some(Box::new(t.clone()))));
        }
        if t.expires.is_some_and(|e| e <= now) {
            return Err((Refusal::Expired, Some(Box::new(t.clone()))));
        }
        self.note_use(t.id(), now);
        Ok(t.clone())
    }

    /// Remembers that token `id` was used, writing the last-use file at
    /// most once a minute.
    fn note_use(&self, id: &str, now: i64) {
        let mut guard = self.last_use.lock().unwrap_or_else(|p| p.into_inner());
        let (pending, written) = &mut *guard;
        pending.insert(id.to_string(), now);
        if now - *written < LAST_USE_EVERY_SECS {
            return;
        }
        *written = now;
        let uses = std::mem::take(pending);
        let file = self.config.tokens.clone();
        let write = move || {
            if let Err(e) = crate::access::write_last_use(&file, &uses) {
                tracing::warn!("token last-use times not written: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }

    /// Writes the last-use times not yet written (shutdown).
    pub fn flush_last_use(&self) {
        let uses = std::mem::take(&mut self.last_use.lock().unwrap_or_else(|p| p.into_inner()).0);
        if !uses.is_empty()
            && let Err(e) = crate::access::write_last_use(&self.config.tokens, &uses)
        {
            tracing::warn!("token last-use times not written: {e}");
        }
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

    /// Partitions this node owns in the newest layout version.
    pub fn partitions_owned(&self) -> usize {
        self.cluster.partitions_owned()
    }

    /// The repositories this node holds a database of.
    pub fn repositories(&self) -> Vec<RepoId> {
        let Ok(rd) = std::fs::read_dir(self.config.data_dir.join("repos")) else {
            return Vec::new();
        };
        let mut repos: Vec<RepoId> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let bytes = hex::decode(name.to_str()?).ok()?;
                RepoId::from_slice(&bytes).ok()
            })
            .collect();
        repos.sort_by_key(|r| r.to_hex());
        repos
    }

    /// Deletes this node's copy of partition `p` in every repository;
    /// returns in how many repositories it held any record.
    pub fn drop_partition(&self, p: u32) -> Result<usize, String> {
        let (start, end) = cairn_proto::cluster::partition_range(p);
        let end = end.as_ref().map(|e| &e[..]);
        let mut dropped = 0;
        for repo in self.repositories() {
            let tenant = self.tenant(&repo).map_err(|e| e.to_string())?;
            if tenant
                .engine
                .holds_range(&start, end)
                .map_err(|e| e.to_string())?
            {
                tenant
                    .engine
                    .drop_range(&start, end)
                    .map_err(|e| e.to_string())?;
                tenant.epochs.bump(p);
                dropped += 1;
            }
        }
        Ok(dropped)
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
        self.flush_last_use();
        for t in tenants {
            if let Err(e) = tokio::runtime::Handle::current().block_on(t.engine.flush()) {
                tracing::error!("flush failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example is a valid node configuration of a cluster on
    /// etcd, and says what it says.
    #[test]
    fn the_example_node_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/cairn-index.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.etcd.len(), 3);
        assert_eq!(config.etcd_prefix, "/cairn/");
        assert_eq!(config.capacity, 1);
        assert_eq!(
            config.advertise.as_deref(),
            Some("http://index1.example.net:7420")
        );
        let unknown = format!("{text}\nmembers = \"members.toml\"\n");
        assert!(
            toml::from_str::<NodeConfig>(&unknown).is_err(),
            "unknown keys are refused"
        );
    }
}
