//! Backup sessions as etcd leases (a node with `--etcd`).
//!
//! A session is the key `PREFIX/sessions/REPO/ID` holding the `Session`
//! message, attached to an etcd lease of the session's length. The id is
//! the lease id (8 bytes, little-endian) and 8 random bytes, so any node
//! can renew, commit or end a session another node began, and a session
//! lives exactly as long as its lease: when the backup stops renewing it,
//! etcd deletes the key, and the session is fenced (it can no longer
//! commit a manifest).
//!
//! # The GC invariant with sessions in etcd
//!
//! The argument in the `cairn_index` crate docs ("Garbage collection")
//! needs three things of sessions, and etcd gives each of them for every
//! node at once rather than for the owners of one partition:
//!
//! 1. *Prune sees every session that may still write a manifest.* Prune
//!    lists sessions (one linearizable range read) before it lists
//!    manifests; a backup commits (a linearizable compare-and-put on its
//!    key, which fails once the lease is gone) before it writes its
//!    manifest, and writes it only while its lease has at least half to
//!    run. So a manifest prune does not list belongs to a session whose
//!    key prune's read saw, or that began after it (and then after the
//!    cutoff). A session whose lease expired is fenced: its key is gone
//!    and every commit fails, so it never writes a manifest, and prune
//!    need not wait for it.
//! 2. *A node never condemns past the start of a live session.* Before a
//!    node condemns, it reads the repository's sessions from etcd and
//!    clamps the cutoff to the earliest start (and to its own clock); a
//!    session that begins after that read starts after the cutoff.
//! 3. *Commit times are the index's own.* The node that commits records
//!    the time by its clock in its database (the commit-times table, which
//!    moves with the snapshot id's partition like every record); the
//!    client commits on every replica of that partition.
//!
//! Moving partitions or replacing nodes never touches a session: they live
//! in etcd, not on the owners of a partition.

use cairn_chunk_store::{RepoId, SnapshotId};
use cairn_index::{IndexError, Session, SessionId, SessionList};
use cairn_proto::v1;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use prost::Message;

use super::etcd::Etcd;

fn now() -> i64 {
    cairn_chunk_store::now_unix_nanos() / 1_000_000_000
}

fn key(repo: &RepoId, id: &SessionId) -> String {
    format!("sessions/{}/{}", repo.to_hex(), hex::encode(id))
}

fn lease_of(id: &SessionId) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    i64::from_le_bytes(b)
}

fn unavailable(e: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(format!("etcd: {e}"))
}

fn fenced() -> IndexError {
    IndexError::Fenced(
        "the backup session's lease expired (the index did not hear from the backup in time); \
         its manifest may not be written"
            .into(),
    )
}

/// The wire (and stored) form of a session.
pub fn to_wire(s: &Session) -> v1::Session {
    v1::Session {
        session_id: s.id.to_vec().into(),
        started_unix: s.started,
        expires_unix: s.expires,
        host: s.host.clone(),
        parent_snapshot: s
            .parent
            .map(|p| p.as_bytes().to_vec())
            .unwrap_or_default()
            .into(),
        committed_snapshot: s
            .committed
            .map(|p| p.as_bytes().to_vec())
            .unwrap_or_default()
            .into(),
        lease_seconds: s.lease,
    }
}

fn from_wire(s: &v1::Session) -> Option<Session> {
    let snapshot = |b: &[u8]| -> Option<Option<SnapshotId>> {
        if b.is_empty() {
            Some(None)
        } else {
            SnapshotId::from_slice(b).ok().map(Some)
        }
    };
    Some(Session {
        id: s.session_id.as_ref().try_into().ok()?,
        host: s.host.clone(),
        parent: snapshot(&s.parent_snapshot)?,
        started: s.started_unix,
        expires: s.expires_unix,
        lease: s.lease_seconds,
        committed: snapshot(&s.committed_snapshot)?,
    })
}

/// Begins a session: a new lease, and the session's key under it.
pub async fn begin(
    etcd: &Etcd,
    repo: &RepoId,
    host: &str,
    parent: Option<SnapshotId>,
    lease_secs: u32,
) -> Result<Session, IndexError> {
    let lease = cairn_index::lease_secs_of(lease_secs);
    let lease_id = etcd.grant(lease).await.map_err(unavailable)?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&lease_id.to_le_bytes());
    id[8..].copy_from_slice(&cairn_chunk_store::crypto::random_bytes::<8>());
    let started = now();
    let session = Session {
        id,
        host: host.to_string(),
        parent,
        started,
        expires: started + lease,
        lease,
        committed: None,
    };
    etcd.put(&key(repo, &id), &to_wire(&session), Some(lease_id))
        .await
        .map_err(unavailable)?;
    Ok(session)
}

async fn get(etcd: &Etcd, repo: &RepoId, id: &SessionId) -> Result<(Session, i64), IndexError> {
    let full = etcd.key(&key(repo, id));
    let r = etcd.client().get(full, None).await.map_err(unavailable)?;
    let kv = r.kvs().first().ok_or_else(fenced)?;
    let s = v1::Session::decode(kv.value())
        .ok()
        .and_then(|s| from_wire(&s))
        .ok_or_else(|| {
            IndexError::Unavailable("etcd holds a session that does not decode".into())
        })?;
    Ok((s, kv.mod_revision()))
}

/// Renews a session's lease; fenced when it has expired.
pub async fn renew(etcd: &Etcd, repo: &RepoId, id: &SessionId) -> Result<Session, IndexError> {
    let (s, _) = get(etcd, repo, id).await?;
    extend(etcd, id, s).await
}

/// Renews the lease of session `s` once more; fenced when it has expired.
async fn extend(etcd: &Etcd, id: &SessionId, mut s: Session) -> Result<Session, IndexError> {
    if !etcd
        .keep_alive_once(lease_of(id))
        .await
        .map_err(unavailable)?
    {
        return Err(fenced());
    }
    s.expires = now() + s.lease;
    Ok(s)
}

/// Allows the session to write `snapshot`'s manifest: records it in the
/// session's key (only while the key, and so the lease, exists) and
/// renews the lease once more.
pub async fn commit(
    etcd: &Etcd,
    repo: &RepoId,
    id: &SessionId,
    snapshot: SnapshotId,
) -> Result<Session, IndexError> {
    let (mut s, revision) = get(etcd, repo, id).await?;
    if s.committed.is_some_and(|c| c != snapshot) {
        return Err(IndexError::Fenced(
            "the backup session already committed another snapshot".into(),
        ));
    }
    s.committed = Some(snapshot);
    let full = etcd.key(&key(repo, id));
    let r = etcd
        .client()
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    full.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(
                    full,
                    to_wire(&s).encode_to_vec(),
                    Some(PutOptions::new().with_lease(lease_of(id))),
                )]),
        )
        .await
        .map_err(unavailable)?;
    if !r.succeeded() {
        // Deleted (the lease expired) or changed by a retried commit.
        return match get(etcd, repo, id).await {
            Ok((now_s, _)) if now_s.committed == Some(snapshot) => Ok(now_s),
            Ok(_) => Err(fenced()),
            Err(e) => Err(e),
        };
    }
    extend(etcd, id, s).await
}

/// Ends a session: its lease is revoked and its key goes.
pub async fn end(etcd: &Etcd, id: &SessionId) -> Result<(), IndexError> {
    match etcd.revoke(lease_of(id)).await {
        Ok(()) => Ok(()),
        // Already gone: ending is idempotent.
        Err(super::etcd::EtcdError::Etcd { source, .. })
            if source.to_string().contains("not found") =>
        {
            Ok(())
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Every live session of `repo`, and this node's clock.
pub async fn list(etcd: &Etcd, repo: &RepoId) -> Result<SessionList, IndexError> {
    let prefix = etcd.key(&format!("sessions/{}/", repo.to_hex()));
    let r = etcd
        .client()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let now = now();
    let sessions = r
        .kvs()
        .iter()
        .filter_map(|kv| v1::Session::decode(kv.value()).ok())
        .filter_map(|s| from_wire(&s))
        .map(|mut s| {
            // The lease runs at least until now; its end by etcd's clock
            // is not known here, so count it as a full lease from now.
            s.expires = s.expires.max(now + 1);
            s
        })
        .collect();
    Ok(SessionList { sessions, now })
}

/// The cutoff a node may condemn by: no later than its clock, nor than
/// the start of any live session of `repo`.
pub async fn enforced_cutoff(etcd: &Etcd, repo: &RepoId, asked: i64) -> Result<i64, IndexError> {
    let list = list(etcd, repo).await?;
    let oldest = list
        .sessions
        .iter()
        .map(|s| s.started)
        .min()
        .unwrap_or(list.now);
    Ok(asked.min(list.now).min(oldest))
}
