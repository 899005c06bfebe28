//! Backup sessions across the cluster: a session is held by every owner of
//! partition 0, renewed and committed on each, and answered by the nodes
//! that hold it (see the `cairn_index` crate docs, "Garbage collection").

use cairn_chunk_store::SnapshotId;
use cairn_index::{IndexError, Session, SessionId};
use cairn_proto::v1;

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

/// The answers of a session's replicas: any success is a success; fenced
/// only when every replica that answered says so.
#[derive(Default)]
pub(super) struct SessionCall {
    pub(super) session: Option<Session>,
    pub(super) fenced: Option<IndexError>,
    pub(super) unreachable: Option<IndexError>,
}

impl SessionCall {
    pub(super) fn add(&mut self, node: &str, answer: Result<Option<v1::Session>, tonic::Status>) {
        match answer {
            Ok(Some(s)) => {
                if let Ok(s) = session_from_wire(&s) {
                    self.session.get_or_insert(s);
                }
            }
            Ok(None) => {}
            Err(status) => match session_error(node, &status) {
                e @ (IndexError::Fenced(_) | IndexError::PermissionDenied(_)) => {
                    self.fenced = Some(e)
                }
                e => self.unreachable = Some(e),
            },
        }
    }

    pub(super) fn finish(self) -> Result<Session, IndexError> {
        match (self.session, self.fenced, self.unreachable) {
            (Some(s), _, _) => Ok(s),
            (None, Some(e), _) | (None, None, Some(e)) => Err(e),
            (None, None, None) => Err(unavailable("no node holds the session")),
        }
    }
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
    /// Every node must answer a garbage-collection call.
    pub(super) fn gc_error(&self, n: usize, what: &str, s: &tonic::Status) -> IndexError {
        let conn = &self.cluster.nodes[n];
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

    pub(super) fn session_nodes(&self, id: &SessionId) -> Result<Vec<usize>, IndexError> {
        self.session_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| IndexError::Fenced("unknown backup session".into()))
    }
}
