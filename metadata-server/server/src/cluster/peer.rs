//! Calls between nodes (`cairn.index.v1.Peer`): the repositories a node
//! holds, raw record ranges, and range hashes. Authorized by the
//! cluster's peer secret, which only holders of etcd credentials can read;
//! client tokens are never accepted here.

use std::sync::Arc;
use std::time::Duration;

use cairn_chunk_store::RepoId;
use cairn_index::{RawRecord, RecordTable};
use cairn_proto::v1;
use cairn_proto::v1::peer_client::PeerClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::service::blocking;

/// Most records one ReadRange answer carries.
pub const MAX_RANGE_RECORDS: u32 = 16_384;

/// The wire name of a table.
pub fn table_to_wire(t: RecordTable) -> i32 {
    match t {
        RecordTable::Chunks => v1::RecordTable::Chunks as i32,
        RecordTable::Packs => v1::RecordTable::Packs as i32,
        RecordTable::Commits => v1::RecordTable::Commits as i32,
    }
}

fn table_from_wire(t: i32) -> Result<RecordTable, Status> {
    match v1::RecordTable::try_from(t) {
        Ok(v1::RecordTable::Chunks) => Ok(RecordTable::Chunks),
        Ok(v1::RecordTable::Packs) => Ok(RecordTable::Packs),
        Ok(v1::RecordTable::Commits) => Ok(RecordTable::Commits),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown record table {t}"
        ))),
    }
}

fn header(secret: &[u8]) -> String {
    format!("Peer {}", hex::encode(secret))
}

/// The peer service of one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(secret) = self.node.cluster.peer_secret() else {
            return Err(Status::unavailable(
                "this node has not joined the cluster yet",
            ));
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Compared as BLAKE3 hashes: constant time, whatever the lengths.
        if blake3::hash(given.as_bytes()) == blake3::hash(header(&secret).as_bytes()) {
            Ok(())
        } else {
            self.node.audit.record(
                "refused",
                serde_json::json!({
                    "method": "Peer",
                    "reason": "peer_secret",
                    "peer": request.remote_addr().map(|p| p.to_string()),
                }),
            );
            Err(Status::unauthenticated(
                "peer calls need the cluster's peer secret",
            ))
        }
    }

    fn tenant(&self, repo: &[u8]) -> Result<RepoId, Status> {
        RepoId::from_slice(repo).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("peer call failed: {e}");
    Status::internal("internal index error")
}

#[tonic::async_trait]
impl v1::peer_server::Peer for PeerService {
    async fn repositories(
        &self,
        request: Request<v1::RepositoriesRequest>,
    ) -> Result<Response<v1::RepositoriesResponse>, Status> {
        self.authorize(&request)?;
        let node = self.node.clone();
        let repos = blocking(move || Ok(node.repositories())).await?;
        Ok(Response::new(v1::RepositoriesResponse {
            repo_ids: repos
                .into_iter()
                .map(|r| r.as_bytes().to_vec().into())
                .collect(),
        }))
    }

    async fn read_range(
        &self,
        request: Request<v1::ReadRangeRequest>,
    ) -> Result<Response<v1::ReadRangeResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let now = self.node.cluster.table().epoch;
        if req.layout_epoch > now {
            return Err(Status::unavailable(format!(
                "this node routes by layout epoch {now}, behind the caller's {}; retry",
                req.layout_epoch
            )));
        }
        let repo = self.tenant(&req.repo_id)?;
        let table = table_from_wire(req.table)?;
        let node = self.node.clone();
        let (records, done) = blocking(move || {
            let tenant = node.tenant(&repo).map_err(internal)?;
            let end = (!req.end.is_empty()).then_some(req.end.as_ref());
            let after = (!req.after.is_empty()).then_some(req.after.as_ref());
            let limit = req.limit.clamp(1, MAX_RANGE_RECORDS) as usize;
            tenant
                .engine
                .read_range(table, &req.start, end, after, limit)
                .map_err(internal)
        })
        .await?;
        Ok(Response::new(v1::ReadRangeResponse {
            records: records
                .into_iter()
                .map(|r| v1::RawRecord {
                    key: r.key.into(),
                    value: r.value.into(),
                })
                .collect(),
            done,
        }))
    }

    async fn range_hashes(
        &self,
        request: Request<v1::RangeHashesRequest>,
    ) -> Result<Response<v1::RangeHashesResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let repo = self.tenant(&req.repo_id)?;
        let table = table_from_wire(req.table)?;
        let node = self.node.clone();
        let hashes = blocking(move || {
            let tenant = node.tenant(&repo).map_err(internal)?;
            let end = (!req.end.is_empty()).then_some(req.end.as_ref());
            tenant
                .engine
                .range_hashes(table, &req.start, end, req.buckets.clamp(1, 4096))
                .map_err(internal)
        })
        .await?;
        Ok(Response::new(v1::RangeHashesResponse {
            hashes: hashes
                .iter()
                .flat_map(|h| h.hash)
                .collect::<Vec<u8>>()
                .into(),
            counts: hashes.iter().map(|h| h.count).collect(),
        }))
    }
}

/// A connection to a peer.
#[derive(Clone)]
pub struct Peer {
    /// The peer's node id.
    pub id: String,
    client: PeerClient<Channel>,
    auth: String,
}

impl Peer {
    /// A lazy connection to the peer at `address`.
    pub fn connect(id: &str, address: &str, secret: &[u8]) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("peer {id} at {address}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(Self {
            id: id.to_string(),
            client: PeerClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            auth: header(secret),
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.auth.parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// The repositories the peer holds.
    pub async fn repositories(&self) -> Result<Vec<RepoId>, Status> {
        let r = self
            .client
            .clone()
            .repositories(self.request(v1::RepositoriesRequest {}))
            .await?;
        Ok(r.into_inner()
            .repo_ids
            .iter()
            .filter_map(|b| RepoId::from_slice(b).ok())
            .collect())
    }

    /// Up to `limit` records of a range after `after`, and whether that
    /// was the last of it.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_range(
        &self,
        repo: &RepoId,
        table: RecordTable,
        start: &[u8],
        end: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: u32,
        epoch: u64,
    ) -> Result<(Vec<RawRecord>, bool), Status> {
        let r = self
            .client
            .clone()
            .read_range(self.request(v1::ReadRangeRequest {
                repo_id: repo.as_bytes().to_vec().into(),
                table: table_to_wire(table),
                start: start.to_vec().into(),
                end: end.map(<[u8]>::to_vec).unwrap_or_default().into(),
                after: after.map(<[u8]>::to_vec).unwrap_or_default().into(),
                limit,
                layout_epoch: epoch,
            }))
            .await?
            .into_inner();
        Ok((
            r.records
                .into_iter()
                .map(|r| RawRecord {
                    key: r.key.to_vec(),
                    value: r.value.to_vec(),
                })
                .collect(),
            r.done,
        ))
    }

    /// Hashes of a partition's range in `buckets` buckets: (hash, count).
    pub async fn range_hashes(
        &self,
        repo: &RepoId,
        table: RecordTable,
        start: &[u8],
        end: Option<&[u8]>,
        buckets: u32,
    ) -> Result<Vec<([u8; 32], u64)>, Status> {
        let r = self
            .client
            .clone()
            .range_hashes(self.request(v1::RangeHashesRequest {
                repo_id: repo.as_bytes().to_vec().into(),
                table: table_to_wire(table),
                start: start.to_vec().into(),
                end: end.map(<[u8]>::to_vec).unwrap_or_default().into(),
                buckets,
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        for (h, c) in r.hashes.chunks_exact(32).zip(r.counts) {
            let mut a = [0u8; 32];
            a.copy_from_slice(h);
            out.push((a, c));
        }
        Ok(out)
    }
}
