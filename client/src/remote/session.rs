//! Backup sessions through the cluster: a session lives in etcd (or on the
//! one node of a cluster without it), so any node begins, renews, commits
//! and ends it; the client asks the nodes in turn until one answers (see
//! the `cairn_index` crate docs, "Garbage collection", and the server's
//! `cluster::sessions`).

use cairn_chunk_store::SnapshotId;
use cairn_index::{IndexError, Session};
use cairn_proto::v1;

use cairn_proto::v1::index_client::IndexClient;
use tonic::transport::Channel;

use super::channel::NodeConn;
use super::routing::Cluster;
use super::{RemoteIndex, unavailable};

pub(super) fn session_from_wire(s: &v1::Session) -> Result<Session, IndexError> {
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

/// The answers of the nodes asked about a session: the first success
/// counts; fenced or refused is final; anything else means that node could
/// not be reached, and the next is asked.
#[derive(Default)]
pub(super) struct SessionCall {
    pub(super) session: Option<Session>,
    pub(super) fenced: Option<IndexError>,
    pub(super) unreachable: Option<IndexError>,
}

impl SessionCall {
    /// Adds one node's answer; `true` when no other node need be asked.
    pub(super) fn add(
        &mut self,
        conn: &NodeConn,
        what: &str,
        answer: Result<Option<v1::Session>, tonic::Status>,
    ) -> bool {
        match answer {
            Ok(Some(s)) => {
                conn.succeeded();
                match session_from_wire(&s) {
                    Ok(s) => {
                        self.session.get_or_insert(s);
                    }
                    Err(e) => self.unreachable = Some(e),
                }
            }
            Ok(None) => conn.succeeded(),
            Err(status) => {
                conn.failed(what, &status);
                match session_error(&conn.id, &status) {
                    e @ (IndexError::Fenced(_) | IndexError::PermissionDenied(_)) => {
                        self.fenced = Some(e)
                    }
                    e => self.unreachable = Some(e),
                }
            }
        }
        self.session.is_some() || self.fenced.is_some()
    }

    pub(super) fn finish(self) -> Result<Session, IndexError> {
        match (self.session, self.fenced, self.unreachable) {
            (Some(s), _, _) => Ok(s),
            (None, Some(e), _) | (None, None, Some(e)) => Err(e),
            (None, None, None) => Err(unavailable("no index node answered")),
        }
    }
}

/// Nodes to ask about a session, in turn: those whose breaker is closed
/// first.
pub(super) fn session_order(cluster: &Cluster) -> Vec<usize> {
    let (mut open, closed): (Vec<usize>, Vec<usize>) =
        (0..cluster.nodes.len()).partition(|&n| cluster.nodes[n].available());
    open.extend(closed);
    open
}

/// A failed session call: an expired lease is fencing, anything else means
/// the index could not be reached.
pub(super) fn session_error(node: &str, s: &tonic::Status) -> IndexError {
    match s.code() {
        tonic::Code::FailedPrecondition => IndexError::Fenced(s.message().to_string()),
        tonic::Code::PermissionDenied => IndexError::PermissionDenied(s.message().to_string()),
        _ => unavailable(format!("index node {node}: {}", s.message())),
    }
}

impl RemoteIndex {
    /// Asks the nodes in turn ([`session_order`]) until one answers a
    /// session call, given each node's client and the table's epoch.
    pub(super) async fn ask_in_turn<F, Fut>(
        &self,
        what: &str,
        call: F,
    ) -> Result<Session, IndexError>
    where
        F: Fn(IndexClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<v1::Session>, tonic::Status>>,
    {
        let cluster = self.cluster();
        let mut outcome = SessionCall::default();
        for n in session_order(&cluster) {
            let conn = &cluster.nodes[n];
            let r = call(conn.client.clone(), cluster.epoch).await;
            if outcome.add(conn, what, r.map(|r| Some(r.into_inner()))) {
                break;
            }
        }
        outcome.finish()
    }

    /// Every node must answer a garbage-collection call.
    pub(super) fn gc_error(&self, n: usize, what: &str, s: &tonic::Status) -> IndexError {
        let cluster = self.cluster();
        let conn = &cluster.nodes[n];
        conn.failed(what, s);
        if s.code() == tonic::Code::PermissionDenied {
            return IndexError::PermissionDenied(s.message().to_string());
        }
        unavailable(format!(
            "index node {} did not answer {what} ({}); garbage collection needs every node",
            conn.id,
            s.message()
        ))
    }
}
