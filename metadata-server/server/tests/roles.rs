#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every RPC × every role: a call the token's role allows reaches the
//! engine; any other is refused with PERMISSION_DENIED naming the role it
//! needs. Tokens of another repository, revoked and expired tokens are
//! refused everywhere; a revocation takes effect at the next request
//! without a restart; every refusal is in the audit log. Served in-process
//! on 127.0.0.1:0.

use std::path::{Path, PathBuf};

use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, PackEntry};
use cairn_chunk_store::{ChunkId, PackId, RepoId, SnapshotId};
use cairn_index_server::access::{self, METHODS, NewToken, Role, required_role};
use cairn_index_server::node::{Node, NodeConfig};
use cairn_proto::convert::{entry_to_wire, pack_ids};
use cairn_proto::v1;
use cairn_proto::v1::index_client::IndexClient;
use tonic::Code;
use tonic::transport::Channel;

mod common;

struct Server {
    client: IndexClient<Channel>,
    tokens: PathBuf,
    data: PathBuf,
    repo: RepoId,
    _served: common::Served,
    _dir: tempfile::TempDir,
}

fn token(file: &Path, repo: RepoId, role: Role, expires_in: Option<i64>) -> String {
    access::add(
        file,
        &NewToken {
            repository: repo,
            role,
            expires_in,
            label: Some(format!("{role}-client")),
        },
    )
    .unwrap()
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let data = dir.path().join("data");
    let served =
        common::serve(Node::new(NodeConfig::new("n1", data.clone(), tokens.clone())).unwrap())
            .await;
    Server {
        client: served.client.clone(),
        tokens,
        data,
        repo: RepoId::random(),
        _served: served,
        _dir: dir,
    }
}

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn entry(pack: PackId, id: ChunkId) -> v1::ChunkEntry {
    entry_to_wire(&PackEntry {
        id,
        location: BlobLocation {
            pack,
            offset: 0,
            stored_len: 100,
            raw_len: 90,
            kind: BlobKind::Data,
            compression: Compression::None,
        },
    })
}

impl Server {
    fn repo_bytes(&self) -> bytes::Bytes {
        self.repo.as_bytes().to_vec().into()
    }

    /// A live session, begun with `admin`.
    async fn session(&self, admin: &str) -> bytes::Bytes {
        self.client
            .clone()
            .begin_session(req(
                v1::BeginSessionRequest {
                    repo_id: self.repo_bytes(),
                    host: "h".into(),
                    lease_seconds: 60,
                    ..Default::default()
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .session_id
    }

    /// Calls `method` with a well-formed request; the status code.
    async fn call(&self, method: &str, token: &str, admin: &str) -> Code {
        let mut c = self.client.clone();
        let repo_id = self.repo_bytes();
        let id = ChunkId::from_bytes([7; 32]);
        let ids: bytes::Bytes = pack_ids(&[id]).into();
        let pack = PackId::random();
        let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
        fn ok<T>(_: T) {}
        match method {
            "UnknownChunks" => code(
                c.unknown_chunks(req(v1::UnknownChunksRequest { repo_id, ids }, token))
                    .await
                    .map(ok),
            ),
            "RegisterPack" => code(
                c.register_pack(req(
                    v1::RegisterPackRequest {
                        repo_id,
                        pack_id: pack.as_bytes().to_vec().into(),
                        entries: vec![entry(pack, id)],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "RelocatePack" => code(
                c.relocate_pack(req(
                    v1::RelocatePackRequest {
                        repo_id,
                        pack_id: pack.as_bytes().to_vec().into(),
                        entries: vec![entry(pack, id)],
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "Locate" => code(
                c.locate(req(v1::LocateRequest { repo_id, ids }, token))
                    .await
                    .map(ok),
            ),
            "GetFilter" => code(
                c.get_filter(req(
                    v1::GetFilterRequest {
                        repo_id,
                        first_partition: 0,
                        last_partition: 1,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "ClearRepository" => code(
                c.clear_repository(req(v1::ClearRepositoryRequest { repo_id }, token))
                    .await
                    .map(ok),
            ),
            "BeginSession" => code(
                c.begin_session(req(
                    v1::BeginSessionRequest {
                        repo_id,
                        host: "h".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "RenewSession" => {
                let session_id = self.session(admin).await;
                code(
                    c.renew_session(req(
                        v1::RenewSessionRequest {
                            repo_id,
                            session_id,
                        },
                        token,
                    ))
                    .await
                    .map(ok),
                )
            }
            "CommitManifest" => {
                let session_id = self.session(admin).await;
                code(
                    c.commit_manifest(req(
                        v1::CommitManifestRequest {
                            repo_id,
                            session_id,
                            snapshot_id: SnapshotId::random().as_bytes().to_vec().into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(ok),
                )
            }
            "EndSession" => {
                let session_id = self.session(admin).await;
                code(
                    c.end_session(req(
                        v1::EndSessionRequest {
                            repo_id,
                            session_id,
                        },
                        token,
                    ))
                    .await
                    .map(ok),
                )
            }
            "ListSessions" => code(
                c.list_sessions(req(v1::ListSessionsRequest { repo_id }, token))
                    .await
                    .map(ok),
            ),
            "Condemn" => code(
                c.condemn(req(
                    v1::CondemnRequest {
                        repo_id,
                        ids,
                        cutoff_unix: 0,
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "PackStates" => code(
                c.pack_states(req(
                    v1::PackStatesRequest {
                        repo_id,
                        packs: vec![v1::PackState {
                            pack_id: pack.as_bytes().to_vec().into(),
                            observed: 0,
                            dead_since_unix: 0,
                        }],
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            "ClusterMap" => code(
                c.cluster_map(req(v1::ClusterMapRequest {}, token))
                    .await
                    .map(ok),
            ),
            "CommitTimes" => code(
                c.commit_times(req(
                    v1::CommitTimesRequest {
                        repo_id,
                        snapshot_ids: vec![SnapshotId::random().as_bytes().to_vec().into()],
                    },
                    token,
                ))
                .await
                .map(ok),
            ),
            other => panic!("no request for {other}: add it to this test"),
        }
    }

    fn refusals_in_audit_log(&self) -> usize {
        cairn_index_server::audit::read(&self.data.join("audit.log"))
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "refused")
            .count()
    }
}

#[tokio::test]
async fn every_call_for_every_role_is_allowed_or_refused_as_the_role_says() {
    let s = start().await;
    let admin = token(&s.tokens, s.repo, Role::Admin, None);
    let mut refused = 0;
    for role in Role::ALL {
        let t = token(&s.tokens, s.repo, role, None);
        for method in METHODS {
            let code = s.call(method, &t, &admin).await;
            if role >= required_role(method) {
                assert_eq!(code, Code::Ok, "{method} with role {role}");
            } else {
                assert_eq!(code, Code::PermissionDenied, "{method} with role {role}");
                refused += 1;
            }
        }
    }
    // The table the docs and README give: backup adds, never removes.
    for m in [
        "Condemn",
        "PackStates",
        "RelocatePack",
        "ClearRepository",
        "ListSessions",
    ] {
        assert_eq!(required_role(m), Role::Prune, "{m}");
    }
    // restore: 6 backup calls and 5 prune calls refused; backup: the 5 prune calls.
    assert_eq!(refused, 11 + 5);
    assert_eq!(s.refusals_in_audit_log(), refused);
}

#[tokio::test]
async fn wrong_repository_revoked_and_expired_tokens_are_refused_on_every_call() {
    let s = start().await;
    let admin = token(&s.tokens, s.repo, Role::Admin, None);
    let other_repo = token(&s.tokens, RepoId::random(), Role::Admin, None);
    let expired = token(&s.tokens, s.repo, Role::Admin, Some(-60));
    let revoked = token(&s.tokens, s.repo, Role::Admin, None);
    let revoked_id = access::token_hash(&revoked)[..12].to_string();
    access::revoke(&s.tokens, &revoked_id).unwrap();
    for method in METHODS {
        let code = s.call(method, &other_repo, &admin).await;
        // The cluster map names no repository: any valid token may read it.
        let expected = if method == "ClusterMap" {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(code, expected, "{method} with another repository's token");
        assert_eq!(
            s.call(method, &expired, &admin).await,
            Code::PermissionDenied,
            "{method} with an expired token"
        );
        assert_eq!(
            s.call(method, &revoked, &admin).await,
            Code::PermissionDenied,
            "{method} with a revoked token"
        );
        assert_eq!(
            s.call(method, "cairn_not_a_token", &admin).await,
            Code::Unauthenticated,
            "{method} with an unknown token"
        );
    }
}

#[tokio::test]
async fn a_refusal_names_the_role_needed_and_revocation_needs_no_restart() {
    let s = start().await;
    let backup = token(&s.tokens, s.repo, Role::Backup, None);
    let status = s
        .client
        .clone()
        .condemn(req(
            v1::CondemnRequest {
                repo_id: s.repo_bytes(),
                ids: pack_ids(&[ChunkId::from_bytes([1; 32])]).into(),
                cutoff_unix: 0,
            },
            &backup,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "Condemn needs a token with role prune; token backup-client has role backup"
    );

    let locate = || async {
        s.client
            .clone()
            .locate(req(
                v1::LocateRequest {
                    repo_id: s.repo_bytes(),
                    ids: pack_ids(&[ChunkId::from_bytes([1; 32])]).into(),
                },
                &backup,
            ))
            .await
    };
    assert!(locate().await.is_ok());
    access::revoke(&s.tokens, "backup-client").unwrap();
    let status = locate().await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .starts_with("token backup-client was revoked at "),
        "{}",
        status.message()
    );
    let events = cairn_index_server::audit::read(&s.data.join("audit.log")).unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds.contains(&"token_revoked"), "{kinds:?}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "refused");
    assert_eq!(last["reason"], "revoked");
    assert_eq!(last["method"], "Locate");
    assert_eq!(last["token"], "backup-client");
    assert!(last["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}
