//! The index cluster seen from a client: routing, replication, circuit
//! breakers and the downloadable filter.
//!
//! Writes (`RegisterPack`) go to every replica of a partition; reads go to
//! the first replica whose breaker is closed and move on to the next on
//! failure. When no replica answers, a chunk counts as unknown and is
//! uploaded again: the index is an accelerator, never a reason for a backup
//! to fail (DESIGN.md, "the object store is the source of truth").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId, RepoId, SnapshotId};
use cairn_index::{
    ChunkRecord, Index, IndexError, IndexStats, PackObservation, RegisterOutcome, Session,
    SessionId, SessionList,
};
use cairn_proto::MAX_BATCH;
use cairn_proto::cluster::{PARTITIONS, owners, partition_of};
use cairn_proto::convert::{entry_from_wire, entry_to_wire, from_bitmap, pack_ids};
use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

/// How long a node that failed is skipped.
const BREAKER_OPEN: Duration = Duration::from_secs(10);
/// Failures in a row that open a breaker.
const BREAKER_THRESHOLD: u32 = 2;
/// Magic and version of the client's filter cache file.
const FILTER_CACHE_MAGIC: &[u8; 8] = b"CAIRNFLT";
const FILTER_CACHE_VERSION: u16 = 1;

struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

struct NodeConn {
    id: String,
    client: IndexClient<Channel>,
    breaker: Mutex<Breaker>,
}

impl NodeConn {
    fn available(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_none_or(|t| Instant::now() >= t)
    }

    fn succeeded(&self) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures = 0;
        b.open_until = None;
    }

    fn failed(&self, what: &str, status: &tonic::Status) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.failures += 1;
        tracing::debug!("index node {} failed {what}: {status}", self.id);
        if b.failures >= BREAKER_THRESHOLD {
            b.open_until = Some(Instant::now() + BREAKER_OPEN);
        }
    }
}

struct Cluster {
    nodes: Vec<NodeConn>,
    replication: usize,
}

impl Cluster {
    fn owners(&self, partition: u32) -> Vec<usize> {
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        owners(&ids, partition, self.replication)
    }
}

/// A downloaded filter partition.
struct FilterPartition {
    epoch: u64,
    bloom: Option<bloomfilter::Bloom<[u8]>>,
    raw: v1::FilterPart,
}

/// A client of the index cluster for one repository.
pub struct RemoteIndex {
    repo: RepoId,
    token: String,
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
}

impl std::fmt::Debug for RemoteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteIndex({} nodes)", self.cluster.nodes.len())
    }
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(e.to_string())
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
            token: token.to_string(),
            cluster: Cluster {
                nodes,
                replication: map.replication.max(1) as usize,
            },
            filter: RwLock::new(HashMap::new()),
            cache_path,
            warned: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            session_nodes: Mutex::new(HashMap::new()),
        };
        index.load_filter_cache();
        Ok(index)
    }

    fn warn_once(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("warning: {what}; affected chunks are treated as new and uploaded again");
        }
    }

    fn repo_bytes(&self) -> bytes::Bytes {
        self.repo.as_bytes().to_vec().into()
    }

    /// Groups positions of `ids` by the first available owner; ids whose
    /// owners have all failed (`tried`) get `None`.
    fn route(&self, ids: &[ChunkId], tried: &[Vec<usize>]) -> HashMap<Option<usize>, Vec<usize>> {
        let mut groups: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let node = self
                .cluster
                .owners(partition_of(id))
                .into_iter()
                .find(|n| !tried[i].contains(n) && self.cluster.nodes[*n].available());
            groups.entry(node).or_default().push(i);
        }
        groups
    }

    /// Downloads, from every replica, the filter partitions that changed
    /// since the cached copy. Partitions of a replica that does not answer
    /// keep no filter (their chunks are then asked about).
    pub async fn refresh_filter(&self) -> Result<u64, IndexError> {
        let mut by_node: HashMap<usize, Vec<u32>> = HashMap::new();
        for p in 0..PARTITIONS {
            for n in self.cluster.owners(p) {
                if self.cluster.nodes[n].available() {
                    by_node.entry(n).or_default().push(p);
                }
            }
        }
        let mut fetched = 0u64;
        for (n, partitions) in by_node {
            let node = &self.cluster.nodes[n];
            let known: Vec<v1::PartitionEpoch> = {
                let f = self.filter.read().unwrap_or_else(|p| p.into_inner());
                partitions
                    .iter()
                    .filter_map(|p| {
                        f.get(&(*p, node.id.clone())).map(|fp| v1::PartitionEpoch {
                            partition: *p,
                            epoch: fp.epoch,
                        })
                    })
                    .collect()
            };
            let request = v1::GetFilterRequest {
                repo_id: self.repo_bytes(),
                first_partition: 0,
                last_partition: 0,
                known,
                partitions: partitions.clone(),
            };
            let mut stream = match node
                .client
                .clone()
                .get_filter(authed(request, &self.token))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    node.failed("GetFilter", &s);
                    let mut f = self.filter.write().unwrap_or_else(|p| p.into_inner());
                    for p in &partitions {
                        f.remove(&(*p, node.id.clone()));
                    }
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(part)) => {
                        fetched += part.filter.len() as u64;
                        if let Some(fp) = FilterPartition::from_wire(part) {
                            self.filter
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert((fp.raw.partition, node.id.clone()), fp);
                        }
                    }
                    Ok(None) => {
                        node.succeeded();
                        break;
                    }
                    Err(s) => {
                        node.failed("GetFilter", &s);
                        break;
                    }
                }
            }
        }
        self.save_filter_cache();
        Ok(fetched)
    }

    /// True if every replica's filter proves `id` is new (no RPC needed).
    fn certainly_new(&self, id: &ChunkId) -> bool {
        let p = partition_of(id);
        let f = self.filter.read().unwrap_or_else(|p| p.into_inner());
        self.cluster.owners(p).into_iter().all(|n| {
            match f.get(&(p, self.cluster.nodes[n].id.clone())) {
                Some(FilterPartition { bloom: None, .. }) => true,
                Some(FilterPartition { bloom: Some(b), .. }) => !b.check(id.as_bytes().as_slice()),
                None => false,
            }
        })
    }

    fn load_filter_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        if bytes.len() < 10
            || &bytes[..8] != FILTER_CACHE_MAGIC
            || bytes[8..10] != FILTER_CACHE_VERSION.to_le_bytes()
        {
            return;
        }
        let Ok(cache) = FilterCacheRecord::decode(&bytes[10..]) else {
            return;
        };
        let mut f = self.filter.write().unwrap_or_else(|p| p.into_inner());
        for entry in cache.entries {
            let Some(part) = entry.part else { continue };
            if let Some(fp) = FilterPartition::from_wire(part) {
                f.insert((fp.raw.partition, entry.node), fp);
            }
        }
    }

    fn save_filter_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        let record = FilterCacheRecord {
            entries: self
                .filter
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|((_, node), p)| CachedFilter {
                    node: node.clone(),
                    part: Some(p.raw.clone()),
                })
                .collect(),
        };
        let mut bytes = FILTER_CACHE_MAGIC.to_vec();
        bytes.extend_from_slice(&FILTER_CACHE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&record.encode_to_vec());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    /// Read repair: a replica that answered "unknown" for chunks another
    /// replica knows (it missed writes while down) is sent their locations.
    async fn repair(&self, stale: HashMap<usize, Vec<ChunkId>>, knower: HashMap<ChunkId, usize>) {
        for (n, ids) in stale {
            let records = {
                let mut by_knower: HashMap<usize, Vec<ChunkId>> = HashMap::new();
                for id in ids {
                    if let Some(k) = knower.get(&id) {
                        by_knower.entry(*k).or_default().push(id);
                    }
                }
                let mut found = Vec::new();
                for (k, ids) in by_knower {
                    if let Ok(recs) = self.locate_on(k, &ids).await {
                        found.extend(
                            ids.into_iter()
                                .zip(recs)
                                .filter_map(|(id, r)| Some((id, r?))),
                        );
                    }
                }
                found
            };
            let mut by_pack: HashMap<PackId, Vec<v1::ChunkEntry>> = HashMap::new();
            for (id, rec) in records {
                by_pack
                    .entry(rec.location.pack)
                    .or_default()
                    .push(entry_to_wire(&PackEntry {
                        id,
                        location: rec.location,
                    }));
            }
            let conn = &self.cluster.nodes[n];
            for (pack, entries) in by_pack {
                let request = v1::RegisterPackRequest {
                    repo_id: self.repo_bytes(),
                    pack_id: pack.as_bytes().to_vec().into(),
                    entries,
                    relocate: false,
                };
                if let Err(s) = conn
                    .client
                    .clone()
                    .register_pack(authed(request, &self.token))
                    .await
                {
                    conn.failed("RegisterPack (repair)", &s);
                    break;
                }
            }
        }
    }

    async fn locate_on(
        &self,
        n: usize,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, tonic::Status> {
        let conn = &self.cluster.nodes[n];
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_BATCH) {
            let request = v1::LocateRequest {
                repo_id: self.repo_bytes(),
                ids: pack_ids(batch).into(),
            };
            let r = conn
                .client
                .clone()
                .locate(authed(request, &self.token))
                .await?;
            for loc in r.into_inner().locations {
                out.push(record_from_wire(&loc));
            }
        }
        Ok(out)
    }
}

impl FilterPartition {
    fn from_wire(part: v1::FilterPart) -> Option<Self> {
        let bloom = if part.filter.is_empty() {
            None
        } else {
            Some(bloomfilter::Bloom::from_bytes(part.filter.to_vec()).ok()?)
        };
        Some(Self {
            epoch: part.epoch,
            bloom,
            raw: part,
        })
    }
}

fn record_from_wire(loc: &v1::Location) -> Option<ChunkRecord> {
    if !loc.found {
        return None;
    }
    let pack = PackId::from_slice(&loc.pack_id).ok()?;
    let e = entry_from_wire(pack, loc.entry.as_ref()?).ok()?;
    Some(ChunkRecord {
        location: e.location,
        first_seen: loc.first_seen,
        last_seen: loc.last_seen,
        condemned: loc.condemned,
    })
}

fn session_from_wire(s: &v1::Session) -> Result<Session, IndexError> {
    let bad = |what: &str| IndexError::Unavailable(format!("index sent a bad session: {what}"));
    let snapshot = |b: &[u8]| -> Result<Option<SnapshotId>, IndexError> {
        if b.is_empty() {
            Ok(None)
        } else {
            SnapshotId::from_slice(b)
                .map(Some)
                .map_err(|_| bad("snapshot id"))
        }
    };
    Ok(Session {
        id: s.session_id.as_ref().try_into().map_err(|_| bad("id"))?,
        host: s.host.clone(),
        parent: snapshot(&s.parent_snapshot)?,
        started: s.started_unix,
        expires: s.expires_unix,
        lease: s.lease_seconds,
        committed: snapshot(&s.committed_snapshot)?,
    })
}

/// The answers of a session's replicas: any success is a success; fenced
/// only when every replica that answered says so.
#[derive(Default)]
struct SessionCall {
    session: Option<Session>,
    fenced: Option<IndexError>,
    unreachable: Option<IndexError>,
}

impl SessionCall {
    fn add(&mut self, node: &str, answer: Result<Option<v1::Session>, tonic::Status>) {
        match answer {
            Ok(Some(s)) => {
                if let Ok(s) = session_from_wire(&s) {
                    self.session.get_or_insert(s);
                }
            }
            Ok(None) => {}
            Err(status) => match session_error(node, &status) {
                e @ IndexError::Fenced(_) => self.fenced = Some(e),
                e => self.unreachable = Some(e),
            },
        }
    }

    fn finish(self) -> Result<Session, IndexError> {
        match (self.session, self.fenced, self.unreachable) {
            (Some(s), _, _) => Ok(s),
            (None, Some(e), _) | (None, None, Some(e)) => Err(e),
            (None, None, None) => Err(unavailable("no node holds the session")),
        }
    }
}

/// A failed session call: an expired lease is fencing, anything else means
/// the index could not be reached.
fn session_error(node: &str, s: &tonic::Status) -> IndexError {
    if s.code() == tonic::Code::FailedPrecondition {
        IndexError::Fenced(s.message().to_string())
    } else {
        unavailable(format!("index node {node}: {}", s.message()))
    }
}

impl RemoteIndex {
    /// Every node must answer a garbage-collection call.
    fn gc_error(&self, n: usize, what: &str, s: &tonic::Status) -> IndexError {
        let conn = &self.cluster.nodes[n];
        conn.failed(what, s);
        unavailable(format!(
            "index node {} did not answer {what} ({}); garbage collection needs every node",
            conn.id,
            s.message()
        ))
    }

    /// Positions of `ids` grouped by every owner (each id appears once per replica).
    fn by_every_owner(&self, ids: &[ChunkId]) -> HashMap<usize, Vec<usize>> {
        let mut by_node: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            for n in self.cluster.owners(partition_of(id)) {
                by_node.entry(n).or_default().push(i);
            }
        }
        by_node
    }

    fn session_nodes(&self, id: &SessionId) -> Result<Vec<usize>, IndexError> {
        self.session_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| IndexError::Fenced("unknown backup session".into()))
    }
}

/// One cached filter partition and the node it came from.
#[derive(Clone, PartialEq, prost::Message)]
struct CachedFilter {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(message, optional, tag = "2")]
    part: Option<v1::FilterPart>,
}

/// The client's filter cache file body (after magic and version).
#[derive(Clone, PartialEq, prost::Message)]
struct FilterCacheRecord {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<CachedFilter>,
}

/// An endpoint for `url`. `https://` URLs use TLS, trusting the PEM file
/// named by `CAIRN_INDEX_CA` when set, else the public web PKI roots.
fn endpoint(url: &str, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    let mut e = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        match std::env::var_os("CAIRN_INDEX_CA").map(std::fs::read) {
            Some(Ok(pem)) => tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            Some(Err(err)) => {
                tracing::warn!("CAIRN_INDEX_CA unreadable ({err}); using the public roots")
            }
            None => tls = tls.with_webpki_roots(),
        }
        e = e.tls_config(tls)?;
    }
    Ok(e)
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[async_trait]
impl Index for RemoteIndex {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        // A chunk is known if any replica knows it. "Unknown" from one
        // replica is confirmed with the next (it may have missed writes while
        // down); with the filter in front, truly new chunks are rarely asked.
        let mut unknown = vec![true; ids.len()];
        let ask: Vec<usize> = (0..ids.len())
            .filter(|&i| !self.certainly_new(&ids[i]))
            .collect();
        let mut tried: Vec<Vec<usize>> = vec![Vec::new(); ask.len()];
        let mut said_unknown: Vec<Vec<usize>> = vec![Vec::new(); ask.len()];
        let mut knower: HashMap<ChunkId, usize> = HashMap::new();
        let mut pending: Vec<usize> = (0..ask.len()).collect();
        while !pending.is_empty() {
            let subset: Vec<ChunkId> = pending.iter().map(|&k| ids[ask[k]]).collect();
            let sub_tried: Vec<Vec<usize>> = pending.iter().map(|&k| tried[k].clone()).collect();
            let mut next = Vec::new();
            for (node, positions) in self.route(&subset, &sub_tried) {
                let Some(n) = node else {
                    // Every replica tried: unknown (or unreachable) everywhere.
                    if positions
                        .iter()
                        .any(|&j| said_unknown[pending[j]].is_empty())
                    {
                        self.warn_once("no replica of some index partitions answered");
                    }
                    continue;
                };
                let conn = &self.cluster.nodes[n];
                for batch in positions.chunks(MAX_BATCH) {
                    let batch_ids: Vec<ChunkId> = batch.iter().map(|&j| subset[j]).collect();
                    self.calls.fetch_add(1, Ordering::Relaxed);
                    let request = v1::UnknownChunksRequest {
                        repo_id: self.repo_bytes(),
                        ids: pack_ids(&batch_ids).into(),
                    };
                    let answer = conn
                        .client
                        .clone()
                        .unknown_chunks(authed(request, &self.token))
                        .await;
                    match answer {
                        Ok(r) => {
                            conn.succeeded();
                            let bits = from_bitmap(&r.into_inner().unknown, batch.len());
                            for (&j, is_unknown) in batch.iter().zip(bits) {
                                let k = pending[j];
                                tried[k].push(n);
                                if is_unknown {
                                    said_unknown[k].push(n);
                                    next.push(k);
                                } else {
                                    unknown[ask[k]] = false;
                                    knower.insert(ids[ask[k]], n);
                                }
                            }
                        }
                        Err(s) => {
                            conn.failed("UnknownChunks", &s);
                            for &j in batch {
                                tried[pending[j]].push(n);
                                next.push(pending[j]);
                            }
                        }
                    }
                }
            }
            pending = next;
        }
        let mut stale: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for (k, nodes) in said_unknown.iter().enumerate() {
            if !unknown[ask[k]] {
                for &n in nodes {
                    stale.entry(n).or_default().push(ids[ask[k]]);
                }
            }
        }
        if !stale.is_empty() {
            self.repair(stale, knower).await;
        }
        Ok(unknown)
    }

    async fn register_pack(
        &self,
        pack: PackId,
        entries: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        // Every replica of every partition gets its entries.
        let mut by_node: HashMap<usize, Vec<v1::ChunkEntry>> = HashMap::new();
        for e in entries {
            for n in self.cluster.owners(partition_of(&e.id)) {
                by_node.entry(n).or_default().push(entry_to_wire(e));
            }
        }
        let mut outcome = RegisterOutcome::default();
        let mut any_ok = false;
        for (n, wire) in by_node {
            let conn = &self.cluster.nodes[n];
            let request = v1::RegisterPackRequest {
                repo_id: self.repo_bytes(),
                pack_id: pack.as_bytes().to_vec().into(),
                entries: wire,
                relocate: false,
            };
            match conn
                .client
                .clone()
                .register_pack(authed(request, &self.token))
                .await
            {
                Ok(r) => {
                    conn.succeeded();
                    any_ok = true;
                    let r = r.into_inner();
                    outcome.new += r.new_chunks as usize;
                    outcome.duplicates += r.duplicates as usize;
                }
                Err(s) => {
                    conn.failed("RegisterPack", &s);
                    self.warn_once(&format!(
                        "index node {} did not record pack {}",
                        conn.id,
                        pack.short()
                    ));
                }
            }
        }
        if !any_ok && !entries.is_empty() {
            self.warn_once("no index node recorded a pack");
        }
        Ok(outcome)
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        let mut out = vec![None; ids.len()];
        let tried = vec![Vec::new(); ids.len()];
        for (node, positions) in self.route(ids, &tried) {
            let Some(n) = node else { continue };
            let wanted: Vec<ChunkId> = positions.iter().map(|&k| ids[k]).collect();
            match self.locate_on(n, &wanted).await {
                Ok(records) => {
                    self.cluster.nodes[n].succeeded();
                    for (&k, rec) in positions.iter().zip(records) {
                        out[k] = rec;
                    }
                }
                // The caller falls back to pack trailers.
                Err(s) => self.cluster.nodes[n].failed("Locate", &s),
            }
        }
        Ok(out)
    }

    async fn clear(&self) -> Result<(), IndexError> {
        for conn in &self.cluster.nodes {
            let request = v1::ClearRepositoryRequest {
                repo_id: self.repo_bytes(),
            };
            conn.client
                .clone()
                .clear_repository(authed(request, &self.token))
                .await
                .map_err(|s| unavailable(format!("index node {}: {}", conn.id, s.message())))?;
        }
        self.filter
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    async fn flush(&self) -> Result<(), IndexError> {
        Ok(())
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats::default())
    }

    async fn begin_session(
        &self,
        host: &str,
        parent: Option<SnapshotId>,
        lease_secs: u32,
    ) -> Result<Session, IndexError> {
        // Sessions live on the owners of partition 0: the first that answers
        // begins it, the others keep replicas, so the session survives one
        // of them going down (prune asks every node and merges).
        let request = |replica_of: Option<&Session>| v1::BeginSessionRequest {
            repo_id: self.repo_bytes(),
            host: host.to_string(),
            parent_snapshot: parent
                .map(|p| p.as_bytes().to_vec())
                .unwrap_or_default()
                .into(),
            lease_seconds: lease_secs,
            session_id: replica_of.map(|s| s.id.to_vec()).unwrap_or_default().into(),
            started_unix: replica_of.map_or(0, |s| s.started),
        };
        let mut last = String::from("no node owns partition 0");
        let mut begun: Option<Session> = None;
        let mut holders = Vec::new();
        for n in self.cluster.owners(0) {
            let conn = &self.cluster.nodes[n];
            match conn
                .client
                .clone()
                .begin_session(authed(request(begun.as_ref()), &self.token))
                .await
            {
                Ok(r) => {
                    conn.succeeded();
                    holders.push(n);
                    if begun.is_none() {
                        begun = Some(session_from_wire(&r.into_inner())?);
                    }
                }
                Err(s) => {
                    conn.failed("BeginSession", &s);
                    last = format!("{}: {}", conn.id, s.message());
                }
            }
        }
        let session =
            begun.ok_or_else(|| unavailable(format!("no node began a session ({last})")))?;
        self.session_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id, holders);
        Ok(session)
    }

    async fn renew_session(&self, id: SessionId) -> Result<Session, IndexError> {
        let mut outcome = SessionCall::default();
        for n in self.session_nodes(&id)? {
            let conn = &self.cluster.nodes[n];
            let request = v1::RenewSessionRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
            };
            let r = conn
                .client
                .clone()
                .renew_session(authed(request, &self.token))
                .await;
            outcome.add(&conn.id, r.map(|r| Some(r.into_inner())));
        }
        outcome.finish()
    }

    async fn commit_session(
        &self,
        id: SessionId,
        snapshot: SnapshotId,
    ) -> Result<Session, IndexError> {
        let mut outcome = SessionCall::default();
        for n in self.session_nodes(&id)? {
            let conn = &self.cluster.nodes[n];
            let request = v1::CommitManifestRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
                snapshot_id: snapshot.as_bytes().to_vec().into(),
                finished: false,
            };
            let r = conn
                .client
                .clone()
                .commit_manifest(authed(request, &self.token))
                .await;
            outcome.add(&conn.id, r.map(|r| r.into_inner().session));
        }
        outcome.finish()
    }

    async fn end_session(&self, id: SessionId) -> Result<(), IndexError> {
        let mut last = Ok(());
        for n in self.session_nodes(&id)? {
            let conn = &self.cluster.nodes[n];
            let request = v1::CommitManifestRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
                snapshot_id: Default::default(),
                finished: true,
            };
            if let Err(s) = conn
                .client
                .clone()
                .commit_manifest(authed(request, &self.token))
                .await
            {
                last = Err(session_error(&conn.id, &s));
            }
        }
        last
    }

    async fn sessions(&self) -> Result<SessionList, IndexError> {
        let mut list = SessionList {
            sessions: Vec::new(),
            now: i64::MAX,
        };
        for (n, conn) in self.cluster.nodes.iter().enumerate() {
            let request = v1::ListSessionsRequest {
                repo_id: self.repo_bytes(),
            };
            let r = conn
                .client
                .clone()
                .list_sessions(authed(request, &self.token))
                .await
                .map_err(|s| self.gc_error(n, "ListSessions", &s))?
                .into_inner();
            list.now = list.now.min(r.now_unix);
            for s in &r.sessions {
                let s = session_from_wire(s)?;
                // Replicas of one session: the latest lease and any commit.
                match list.sessions.iter_mut().find(|have| have.id == s.id) {
                    Some(have) => {
                        have.started = have.started.min(s.started);
                        have.expires = have.expires.max(s.expires);
                        have.committed = have.committed.or(s.committed);
                    }
                    None => list.sessions.push(s),
                }
            }
        }
        Ok(list)
    }

    async fn condemn(&self, ids: &[ChunkId], cutoff: i64) -> Result<u64, IndexError> {
        // A chunk is condemned when every replica condemned it; a replica
        // that refused keeps it live (prune reads every replica).
        let mut all = vec![true; ids.len()];
        for (n, positions) in self.by_every_owner(ids) {
            let conn = &self.cluster.nodes[n];
            for batch in positions.chunks(MAX_BATCH) {
                let batch_ids: Vec<ChunkId> = batch.iter().map(|&i| ids[i]).collect();
                let request = v1::CondemnRequest {
                    repo_id: self.repo_bytes(),
                    ids: pack_ids(&batch_ids).into(),
                    cutoff_unix: cutoff,
                };
                let r = conn
                    .client
                    .clone()
                    .condemn(authed(request, &self.token))
                    .await
                    .map_err(|s| self.gc_error(n, "Condemn", &s))?;
                let bits = from_bitmap(&r.into_inner().condemned, batch.len());
                for (&i, c) in batch.iter().zip(bits) {
                    all[i] &= c;
                }
            }
        }
        Ok(all.into_iter().filter(|c| *c).count() as u64)
    }

    async fn records_everywhere(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<Vec<ChunkRecord>>, IndexError> {
        let mut out = vec![Vec::new(); ids.len()];
        for (n, positions) in self.by_every_owner(ids) {
            let wanted: Vec<ChunkId> = positions.iter().map(|&i| ids[i]).collect();
            let records = self
                .locate_on(n, &wanted)
                .await
                .map_err(|s| self.gc_error(n, "Locate", &s))?;
            for (&i, rec) in positions.iter().zip(records) {
                out[i].extend(rec);
            }
        }
        Ok(out)
    }

    async fn relocate(&self, pack: PackId, entries: &[PackEntry]) -> Result<u64, IndexError> {
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let mut moved = 0u64;
        for (n, positions) in self.by_every_owner(&ids) {
            let conn = &self.cluster.nodes[n];
            let request = v1::RegisterPackRequest {
                repo_id: self.repo_bytes(),
                pack_id: pack.as_bytes().to_vec().into(),
                entries: positions
                    .iter()
                    .map(|&i| entry_to_wire(&entries[i]))
                    .collect(),
                relocate: true,
            };
            let r = conn
                .client
                .clone()
                .register_pack(authed(request, &self.token))
                .await
                .map_err(|s| self.gc_error(n, "RegisterPack (relocate)", &s))?;
            moved += u64::from(r.into_inner().relocated);
        }
        Ok(moved / self.cluster.replication.max(1) as u64)
    }

    async fn pack_states(
        &self,
        packs: &[(PackId, PackObservation)],
    ) -> Result<Vec<i64>, IndexError> {
        // Pack states live on the owners of the pack id's partition; the
        // latest answer wins (a replica that lost the state restarts the clock).
        let keys: Vec<ChunkId> = packs
            .iter()
            .map(|(p, _)| ChunkId::from_bytes(*p.as_bytes()))
            .collect();
        let mut out = vec![0i64; packs.len()];
        for (n, positions) in self.by_every_owner(&keys) {
            let conn = &self.cluster.nodes[n];
            for batch in positions.chunks(MAX_BATCH) {
                let request = v1::PackStatesRequest {
                    repo_id: self.repo_bytes(),
                    packs: batch
                        .iter()
                        .map(|&i| {
                            let (pack, seen) = &packs[i];
                            let (observed, since) = match seen {
                                PackObservation::Live => (0, 0),
                                PackObservation::Dead { since } => (1, *since),
                                PackObservation::Deleted => (2, 0),
                            };
                            v1::PackState {
                                pack_id: pack.as_bytes().to_vec().into(),
                                observed,
                                dead_since_unix: since,
                            }
                        })
                        .collect(),
                };
                let r = conn
                    .client
                    .clone()
                    .pack_states(authed(request, &self.token))
                    .await
                    .map_err(|s| self.gc_error(n, "PackStates", &s))?
                    .into_inner();
                for (&i, since) in batch.iter().zip(r.dead_since_unix) {
                    out[i] = out[i].max(since);
                }
            }
        }
        Ok(out)
    }
}

/// The client's cache directory: `$XDG_CACHE_HOME/cairn` or `~/.cache/cairn`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) =
        std::env::var_os("XDG_CACHE_HOME").filter(|d| std::path::Path::new(d).is_absolute())
    {
        return Some(PathBuf::from(d).join("cairn"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn"))
}

/// The index used when no cluster node answers at all: every chunk is
/// unknown (and uploaded), nothing is recorded. A backup then costs more
/// upload, never a failure.
#[derive(Debug, Default)]
pub struct NoIndex;

#[async_trait]
impl Index for NoIndex {
    async fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, IndexError> {
        Ok(vec![true; ids.len()])
    }

    async fn register_pack(
        &self,
        _: PackId,
        _: &[PackEntry],
    ) -> Result<RegisterOutcome, IndexError> {
        Ok(RegisterOutcome::default())
    }

    async fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, IndexError> {
        Ok(vec![None; ids.len()])
    }

    async fn clear(&self) -> Result<(), IndexError> {
        Err(unavailable("no index node answered"))
    }

    async fn flush(&self) -> Result<(), IndexError> {
        Ok(())
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats::default())
    }
}
