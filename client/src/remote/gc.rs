//! Garbage collection through the cluster: sessions through any node
//! (they live in etcd, or on the one node of a cluster without it), and
//! condemnation, records, relocation and pack states on every replica
//! (prune acts only when every replica answered).

use async_trait::async_trait;
use cairn_chunk_store::pack::PackEntry;
use cairn_chunk_store::{ChunkId, PackId, SnapshotId};
use cairn_index::{
    ChunkRecord, CommitTime, GcIndex, IndexError, PackObservation, Session, SessionId, SessionList,
};
use cairn_proto::MAX_BATCH;
use cairn_proto::cluster::partition_of;
use cairn_proto::convert::{entry_to_wire, from_bitmap, pack_ids};
use cairn_proto::v1;

use super::channel::authed;
use super::session::{SessionCall, session_error, session_from_wire, session_order};
use super::{RemoteIndex, unavailable};

#[async_trait]
impl GcIndex for RemoteIndex {
    async fn begin_session(
        &self,
        host: &str,
        parent: Option<SnapshotId>,
        lease_secs: u32,
    ) -> Result<Session, IndexError> {
        self.with_layout(move || async move {
            let request = v1::BeginSessionRequest {
                repo_id: self.repo_bytes(),
                host: host.to_string(),
                parent_snapshot: parent
                    .map(|p| p.as_bytes().to_vec())
                    .unwrap_or_default()
                    .into(),
                lease_seconds: lease_secs,
                ..Default::default()
            };
            self.ask_in_turn("BeginSession", |mut c, epoch| {
                let r = authed(request.clone(), &self.token, epoch);
                async move { c.begin_session(r).await }
            })
            .await
        })
        .await
    }

    async fn renew_session(&self, id: SessionId) -> Result<Session, IndexError> {
        self.with_layout(move || async move {
            let request = v1::RenewSessionRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
            };
            self.ask_in_turn("RenewSession", |mut c, epoch| {
                let r = authed(request.clone(), &self.token, epoch);
                async move { c.renew_session(r).await }
            })
            .await
        })
        .await
    }

    async fn commit_session(
        &self,
        id: SessionId,
        snapshot: SnapshotId,
    ) -> Result<Session, IndexError> {
        // Every replica of the snapshot id's partition records its own
        // commit time (retention reads the earliest); the session itself is
        // one record, which any of them checks and commits.
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let request = v1::CommitManifestRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
                snapshot_id: snapshot.as_bytes().to_vec().into(),
                ..Default::default()
            };
            let mut outcome = SessionCall::default();
            let partition = partition_of(&ChunkId::from_bytes(*snapshot.as_bytes()));
            for n in cluster.writers(partition) {
                let conn = &cluster.nodes[n];
                let r = conn
                    .client
                    .clone()
                    .commit_manifest(authed(request.clone(), &self.token, cluster.epoch))
                    .await;
                outcome.add(conn, "CommitManifest", r.map(|r| r.into_inner().session));
                if outcome.fenced.is_some() {
                    break;
                }
            }
            outcome.finish()
        })
        .await
    }

    async fn end_session(&self, id: SessionId) -> Result<(), IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let request = v1::EndSessionRequest {
                repo_id: self.repo_bytes(),
                session_id: id.to_vec().into(),
            };
            let mut last = Err(unavailable("no index node to end the session on"));
            for n in session_order(&cluster) {
                let conn = &cluster.nodes[n];
                match conn
                    .client
                    .clone()
                    .end_session(authed(request.clone(), &self.token, cluster.epoch))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(s) => {
                        conn.failed("EndSession", &s);
                        last = Err(session_error(&conn.id, &s));
                    }
                }
            }
            last
        })
        .await
    }

    async fn commit_times(
        &self,
        ids: &[SnapshotId],
    ) -> Result<Vec<Option<CommitTime>>, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            // Every node that held a session recorded its own time of the
            // commit; the earliest any of them recorded counts. Nodes that do
            // not answer are skipped, but some node must answer: retention
            // never falls back to the times snapshots claim.
            let mut out: Vec<Option<CommitTime>> = vec![None; ids.len()];
            let mut answered = false;
            let mut last = String::from("no index node");
            for (n, conn) in cluster.nodes.iter().enumerate() {
                let mut node_ok = true;
                for (k, batch) in ids.chunks(MAX_BATCH).enumerate() {
                    let request = v1::CommitTimesRequest {
                        repo_id: self.repo_bytes(),
                        snapshot_ids: batch
                            .iter()
                            .map(|id| id.as_bytes().to_vec().into())
                            .collect(),
                    };
                    match conn
                        .client
                        .clone()
                        .commit_times(authed(request, &self.token, cluster.epoch))
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            let started =
                                r.started_unix.iter().copied().chain(std::iter::repeat(0));
                            let times = r.committed_unix.iter().copied().zip(started);
                            for (i, (committed, started)) in times.take(batch.len()).enumerate() {
                                let slot = &mut out[k * MAX_BATCH + i];
                                if committed <= 0 {
                                    continue;
                                }
                                let started = if started > 0 { started } else { committed };
                                let t = CommitTime { committed, started };
                                *slot = Some(match *slot {
                                    Some(have) if have.committed <= committed => have,
                                    _ => t,
                                });
                            }
                        }
                        Err(s) if s.code() == tonic::Code::PermissionDenied => {
                            return Err(self.gc_error(n, "CommitTimes", &s));
                        }
                        // A node from before commit times has no record of any.
                        Err(s) if s.code() == tonic::Code::Unimplemented => break,
                        Err(s) => {
                            conn.failed("CommitTimes", &s);
                            last = format!("{}: {}", conn.id, s.message());
                            node_ok = false;
                            break;
                        }
                    }
                }
                answered |= node_ok;
            }
            if !answered {
                return Err(unavailable(format!(
                    "no index node answered CommitTimes ({last})"
                )));
            }
            Ok(out)
        })
        .await
    }

    async fn sessions(&self) -> Result<SessionList, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let mut list = SessionList {
                sessions: Vec::new(),
                now: i64::MAX,
            };
            for (n, conn) in cluster.nodes.iter().enumerate() {
                let request = v1::ListSessionsRequest {
                    repo_id: self.repo_bytes(),
                };
                let r = conn
                    .client
                    .clone()
                    .list_sessions(authed(request, &self.token, cluster.epoch))
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
        })
        .await
    }

    async fn condemn(&self, ids: &[ChunkId], cutoff: i64) -> Result<Vec<bool>, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            // A chunk is condemned when every replica condemned it; a replica
            // that refused keeps it live (prune reads every replica).
            let mut all = vec![true; ids.len()];
            for (n, positions) in self.by_every_owner(ids) {
                let conn = &cluster.nodes[n];
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
                        .condemn(authed(request, &self.token, cluster.epoch))
                        .await
                        .map_err(|s| self.gc_error(n, "Condemn", &s))?;
                    let bits = from_bitmap(&r.into_inner().condemned, batch.len());
                    for (&i, c) in batch.iter().zip(bits) {
                        all[i] &= c;
                    }
                }
            }
            Ok(all)
        })
        .await
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
        self.with_layout(move || async move {
            let cluster = self.cluster();
            let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
            let mut moved = 0u64;
            for (n, positions) in self.by_every_owner(&ids) {
                let conn = &cluster.nodes[n];
                let request = v1::RelocatePackRequest {
                    repo_id: self.repo_bytes(),
                    pack_id: pack.as_bytes().to_vec().into(),
                    entries: positions
                        .iter()
                        .map(|&i| entry_to_wire(&entries[i]))
                        .collect(),
                };
                let r = conn
                    .client
                    .clone()
                    .relocate_pack(authed(request, &self.token, cluster.epoch))
                    .await
                    .map_err(|s| self.gc_error(n, "RelocatePack", &s))?;
                moved += u64::from(r.into_inner().relocated);
            }
            Ok(moved / cluster.replication.max(1) as u64)
        })
        .await
    }

    async fn pack_states(
        &self,
        packs: &[(PackId, PackObservation)],
    ) -> Result<Vec<i64>, IndexError> {
        self.with_layout(move || async move {
            let cluster = self.cluster();
            // Pack states live on the owners of the pack id's partition; the
            // latest answer wins (a replica that lost the state restarts the clock).
            let keys: Vec<ChunkId> = packs
                .iter()
                .map(|(p, _)| ChunkId::from_bytes(*p.as_bytes()))
                .collect();
            let mut out = vec![0i64; packs.len()];
            for (n, positions) in self.by_every_owner(&keys) {
                let conn = &cluster.nodes[n];
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
                        .pack_states(authed(request, &self.token, cluster.epoch))
                        .await
                        .map_err(|s| self.gc_error(n, "PackStates", &s))?
                        .into_inner();
                    for (&i, since) in batch.iter().zip(r.dead_since_unix) {
                        out[i] = out[i].max(since);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}
