#![allow(clippy::unwrap_used, clippy::expect_used)]
//! RelocatePack and EndSession, and the older forms of the same operations
//! that clients built before them still send (RegisterPack with `relocate`,
//! CommitManifest with `finished`): a node answers both alike. Served
//! in-process on 127.0.0.1:0.

use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, PackEntry};
use cairn_chunk_store::{ChunkId, PackId, RepoId};
use cairn_index_server::access::add_token;
use cairn_index_server::node::{Node, NodeConfig};
use cairn_proto::convert::{entry_to_wire, pack_ids};
use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;
use tonic::transport::Channel;

mod common;

struct Fixture {
    client: IndexClient<Channel>,
    token: String,
    repo: RepoId,
    _served: common::Served,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoId::random();
        let token = add_token(&dir.path().join("tokens.toml"), &repo).unwrap();
        let node = Node::new(NodeConfig::new(
            "n1",
            dir.path().join("data"),
            dir.path().join("tokens.toml"),
        ))
        .unwrap();
        let served = common::serve(node).await;
        Fixture {
            client: served.client.clone(),
            token,
            repo,
            _served: served,
            _dir: dir,
        }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }

    fn repo(&self) -> bytes::Bytes {
        self.repo.as_bytes().to_vec().into()
    }

    /// Where the index says each chunk is.
    async fn packs_of(&mut self, ids: &[ChunkId]) -> Vec<Vec<u8>> {
        let r = self
            .client
            .clone()
            .locate(self.req(v1::LocateRequest {
                repo_id: self.repo(),
                ids: pack_ids(ids).into(),
            }))
            .await
            .unwrap()
            .into_inner();
        r.locations.iter().map(|l| l.pack_id.to_vec()).collect()
    }

    async fn sessions(&mut self) -> usize {
        self.client
            .clone()
            .list_sessions(self.req(v1::ListSessionsRequest {
                repo_id: self.repo(),
            }))
            .await
            .unwrap()
            .into_inner()
            .sessions
            .len()
    }

    async fn begin(&mut self) -> bytes::Bytes {
        self.client
            .clone()
            .begin_session(self.req(v1::BeginSessionRequest {
                repo_id: self.repo(),
                host: "h".into(),
                lease_seconds: 60,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .session_id
    }
}

fn entries(pack: PackId, ids: &[ChunkId]) -> Vec<v1::ChunkEntry> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            entry_to_wire(&PackEntry {
                id: *id,
                location: BlobLocation {
                    pack,
                    offset: i as u64 * 100,
                    stored_len: 100,
                    raw_len: 90,
                    kind: BlobKind::Data,
                    compression: Compression::None,
                },
            })
        })
        .collect()
}

#[tokio::test]
async fn relocating_by_the_new_and_the_old_request_moves_live_chunks_alike() {
    let mut f = Fixture::start().await;
    let ids = [ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32])];
    let (first, second, third) = (PackId::random(), PackId::random(), PackId::random());
    let r = f
        .client
        .clone()
        .register_pack(f.req(v1::RegisterPackRequest {
            repo_id: f.repo(),
            pack_id: first.as_bytes().to_vec().into(),
            entries: entries(first, &ids),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.new_chunks, 2);

    let moved = f
        .client
        .clone()
        .relocate_pack(f.req(v1::RelocatePackRequest {
            repo_id: f.repo(),
            pack_id: second.as_bytes().to_vec().into(),
            entries: entries(second, &ids),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.relocated, 2);
    assert_eq!(f.packs_of(&ids).await, vec![second.as_bytes().to_vec(); 2]);

    #[allow(deprecated)]
    let old = v1::RegisterPackRequest {
        repo_id: f.repo(),
        pack_id: third.as_bytes().to_vec().into(),
        entries: entries(third, &ids),
        relocate: true,
    };
    let r = f
        .client
        .clone()
        .register_pack(f.req(old))
        .await
        .unwrap()
        .into_inner();
    #[allow(deprecated)]
    let relocated = r.relocated;
    assert_eq!((r.new_chunks, r.duplicates, relocated), (0, 0, 2));
    assert_eq!(f.packs_of(&ids).await, vec![third.as_bytes().to_vec(); 2]);
}

#[tokio::test]
async fn ending_a_session_by_the_new_and_the_old_request_ends_it_alike() {
    let mut f = Fixture::start().await;
    let session = f.begin().await;
    assert_eq!(f.sessions().await, 1);
    f.client
        .clone()
        .end_session(f.req(v1::EndSessionRequest {
            repo_id: f.repo(),
            session_id: session,
        }))
        .await
        .unwrap();
    assert_eq!(f.sessions().await, 0);

    let session = f.begin().await;
    assert_eq!(f.sessions().await, 1);
    #[allow(deprecated)]
    let old = v1::CommitManifestRequest {
        repo_id: f.repo(),
        session_id: session,
        snapshot_id: Default::default(),
        finished: true,
    };
    let r = f
        .client
        .clone()
        .commit_manifest(f.req(old))
        .await
        .unwrap()
        .into_inner();
    assert!(r.session.is_none());
    assert_eq!(f.sessions().await, 0);

    // A commit is no longer an end: the session stays, committed.
    let session = f.begin().await;
    let r = f
        .client
        .clone()
        .commit_manifest(f.req(v1::CommitManifestRequest {
            repo_id: f.repo(),
            session_id: session,
            snapshot_id: vec![9; 32].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.session.unwrap().committed_snapshot.to_vec(), vec![9; 32]);
    assert_eq!(f.sessions().await, 1);
}
