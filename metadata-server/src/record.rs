//! Binary records stored in RocksDB.
//!
//! Chunk record, version 1 (68 bytes, little endian):
//!
//! ```text
//! 0      version (1)
//! 1      kind (BlobKind)
//! 2      compression (0 none, 1 zstd, 2 none padded, 3 zstd padded)
//! 3      state (0 = live, 1 = condemned by garbage collection)
//! 4..36  pack id
//! 36..44 offset u64
//! 44..48 stored_len u32
//! 48..52 raw_len u32, as the client gave it (opaque here: in repositories
//!        with sealed lengths it is XORed with a keyed PRF of the chunk id
//!        that only the repository's key holders can compute, see
//!        `cairn_client::sealed_lengths`; the layout and so the version do
//!        not change, and records of either kind read alike)
//! 52..60 first_seen i64 (Unix seconds)
//! 60..68 last_seen i64 (Unix seconds)
//! ```
//!
//! Pack record, version 2 (26 bytes; version 1 is the first 14 bytes and
//! reads as "active, not dead"):
//!
//! ```text
//! 0      version (2)
//! 1      kind (BlobKind)
//! 2..6   chunk count u32
//! 6..14  registered i64 (Unix seconds)
//! 14..22 dead_since i64 (Unix seconds; 0 = holds a live chunk)
//! 22     state (0 = in the store, 1 = deleted by prune: a tombstone, so
//!        the pack is never registered again from a stale listing)
//! 23..26 reserved (0)
//! ```
//!
//! Session record, version 1:
//!
//! ```text
//! 0        version (1)
//! 1..9     started i64 (Unix seconds)
//! 9..17    expires i64 (Unix seconds)
//! 17..25   lease i64 (seconds)
//! 25       flags: bit 0 = has parent, bit 1 = committed
//! 26..58   parent snapshot id (zero when absent)
//! 58..90   committed snapshot id (zero when not committed)
//! 90..     host name (UTF-8)
//! ```
//!
//! Commit record, version 1 (17 bytes), keyed by snapshot id: when this
//! index committed the snapshot (CommitManifest) and when the session that
//! wrote it began, both by the index's own clock.
//!
//! ```text
//! 0      version (1)
//! 1..9   committed i64 (Unix seconds)
//! 9..17  session started i64 (Unix seconds)
//! ```

use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression};
use cairn_chunk_store::{PackId, SnapshotId};

use crate::{ChunkRecord, CommitTime, Session};

const CHUNK_RECORD_VERSION: u8 = 1;
/// Encoded length of a chunk record.
pub const CHUNK_RECORD_LEN: usize = 68;

/// Encodes a chunk record.
pub fn encode_chunk(r: &ChunkRecord) -> [u8; CHUNK_RECORD_LEN] {
    let mut b = [0u8; CHUNK_RECORD_LEN];
    b[0] = CHUNK_RECORD_VERSION;
    b[1] = r.location.kind as u8;
    b[2] = r.location.compression as u8;
    b[3] = u8::from(r.condemned);
    b[4..36].copy_from_slice(r.location.pack.as_bytes());
    b[36..44].copy_from_slice(&r.location.offset.to_le_bytes());
    b[44..48].copy_from_slice(&r.location.stored_len.to_le_bytes());
    b[48..52].copy_from_slice(&r.location.raw_len.to_le_bytes());
    b[52..60].copy_from_slice(&r.first_seen.to_le_bytes());
    b[60..68].copy_from_slice(&r.last_seen.to_le_bytes());
    b
}

/// Decodes a chunk record.
pub fn decode_chunk(b: &[u8]) -> Result<ChunkRecord, String> {
    if b.len() != CHUNK_RECORD_LEN || b[0] != CHUNK_RECORD_VERSION {
        return Err(format!(
            "chunk record of {} bytes, version {:?}",
            b.len(),
            b.first()
        ));
    }
    let kind = BlobKind::from_u32(u32::from(b[1])).ok_or("unknown blob kind")?;
    let compression = Compression::from_u32(u32::from(b[2])).ok_or("unknown compression")?;
    let condemned = match b[3] {
        0 => false,
        1 => true,
        other => return Err(format!("unknown chunk state {other}")),
    };
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        a
    };
    let u32_at = |i: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[i..i + 4]);
        u32::from_le_bytes(a)
    };
    Ok(ChunkRecord {
        location: BlobLocation {
            pack: PackId::from_slice(&b[4..36]).map_err(|e| e.to_string())?,
            offset: u64::from_le_bytes(u64_at(36)),
            stored_len: u32_at(44),
            raw_len: u32_at(48),
            kind,
            compression,
        },
        first_seen: i64::from_le_bytes(u64_at(52)),
        last_seen: i64::from_le_bytes(u64_at(60)),
        condemned,
    })
}

const PACK_RECORD_VERSION: u8 = 2;
/// Encoded length of a pack record.
pub const PACK_RECORD_LEN: usize = 26;

/// What the index keeps about one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRecord {
    /// Kind of its chunks.
    pub kind: u8,
    /// Chunks in its trailer (as registered).
    pub count: u32,
    /// When it was registered (Unix seconds).
    pub registered: i64,
    /// Since when it has held no live chunk, as prune observed (0 = live).
    pub dead_since: i64,
    /// Deleted from the store by prune.
    pub deleted: bool,
}

/// Encodes a pack record.
pub fn encode_pack(r: &PackRecord) -> [u8; PACK_RECORD_LEN] {
    let mut b = [0u8; PACK_RECORD_LEN];
    b[0] = PACK_RECORD_VERSION;
    b[1] = r.kind;
    b[2..6].copy_from_slice(&r.count.to_le_bytes());
    b[6..14].copy_from_slice(&r.registered.to_le_bytes());
    b[14..22].copy_from_slice(&r.dead_since.to_le_bytes());
    b[22] = u8::from(r.deleted);
    b
}

/// Decodes a pack record of version 1 or 2.
pub fn decode_pack(b: &[u8]) -> Result<PackRecord, String> {
    let i64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        i64::from_le_bytes(a)
    };
    let ok = match b.first() {
        Some(1) => b.len() == 14,
        Some(2) => b.len() == PACK_RECORD_LEN,
        _ => false,
    };
    if !ok {
        return Err(format!(
            "pack record of {} bytes, version {:?}",
            b.len(),
            b.first()
        ));
    }
    let mut count = [0u8; 4];
    count.copy_from_slice(&b[2..6]);
    let (dead_since, deleted) = if b[0] == 2 {
        (i64_at(14), b[22] == 1)
    } else {
        (0, false)
    };
    Ok(PackRecord {
        kind: b[1],
        count: u32::from_le_bytes(count),
        registered: i64_at(6),
        dead_since,
        deleted,
    })
}

const SESSION_RECORD_VERSION: u8 = 1;
const SESSION_FIXED_LEN: usize = 90;

/// Encodes a session record (the id is the key).
pub fn encode_session(s: &Session) -> Vec<u8> {
    let mut b = vec![0u8; SESSION_FIXED_LEN];
    b[0] = SESSION_RECORD_VERSION;
    b[1..9].copy_from_slice(&s.started.to_le_bytes());
    b[9..17].copy_from_slice(&s.expires.to_le_bytes());
    b[17..25].copy_from_slice(&s.lease.to_le_bytes());
    let mut flags = 0u8;
    if let Some(p) = &s.parent {
        flags |= 1;
        b[26..58].copy_from_slice(p.as_bytes());
    }
    if let Some(c) = &s.committed {
        flags |= 2;
        b[58..90].copy_from_slice(c.as_bytes());
    }
    b[25] = flags;
    b.extend_from_slice(s.host.as_bytes());
    b
}

/// Decodes a session record stored under `id`.
pub fn decode_session(id: [u8; 16], b: &[u8]) -> Result<Session, String> {
    if b.len() < SESSION_FIXED_LEN || b[0] != SESSION_RECORD_VERSION {
        return Err(format!(
            "session record of {} bytes, version {:?}",
            b.len(),
            b.first()
        ));
    }
    let i64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        i64::from_le_bytes(a)
    };
    let snapshot = |range: std::ops::Range<usize>| {
        SnapshotId::from_slice(&b[range]).map_err(|e| e.to_string())
    };
    let flags = b[25];
    Ok(Session {
        id,
        started: i64_at(1),
        expires: i64_at(9),
        lease: i64_at(17),
        parent: if flags & 1 != 0 {
            Some(snapshot(26..58)?)
        } else {
            None
        },
        committed: if flags & 2 != 0 {
            Some(snapshot(58..90)?)
        } else {
            None
        },
        host: String::from_utf8(b[SESSION_FIXED_LEN..].to_vec())
            .map_err(|_| "session host is not UTF-8".to_string())?,
    })
}

const COMMIT_RECORD_VERSION: u8 = 1;

/// Encodes a commit record: the index's times of a snapshot's commit.
pub fn encode_commit(t: &CommitTime) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[0] = COMMIT_RECORD_VERSION;
    b[1..9].copy_from_slice(&t.committed.to_le_bytes());
    b[9..17].copy_from_slice(&t.started.to_le_bytes());
    b
}

/// Decodes a commit record.
pub fn decode_commit(b: &[u8]) -> Result<CommitTime, String> {
    let i64_at = |at: usize| {
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[at..at + 8]);
        i64::from_le_bytes(t)
    };
    match b.first() {
        Some(&COMMIT_RECORD_VERSION) if b.len() >= 17 => Ok(CommitTime {
            committed: i64_at(1),
            started: i64_at(9),
        }),
        Some(&COMMIT_RECORD_VERSION) => Err(format!("commit record of {} bytes", b.len())),
        Some(v) => Err(format!("commit record version {v}")),
        None => Err("empty commit record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_record_bytes_are_pinned() {
        let t = CommitTime {
            committed: 1_733_280_000,
            started: 1_733_279_000,
        };
        let bytes = encode_commit(&t);
        assert_eq!(hex::encode(bytes), "0100c14f670000000018bd4f6700000000");
        assert_eq!(decode_commit(&bytes).unwrap(), t);
        assert!(decode_commit(&bytes[..9]).is_err());
        let mut v2 = bytes;
        v2[0] = 2;
        assert!(decode_commit(&v2).is_err());
        assert!(decode_commit(&[]).is_err());
    }

    #[test]
    fn chunk_record_bytes_are_pinned() {
        let r = ChunkRecord {
            location: BlobLocation {
                pack: PackId::from_bytes([0xaa; 32]),
                offset: 1,
                stored_len: 2,
                raw_len: 3,
                kind: BlobKind::Tree,
                compression: Compression::Zstd,
            },
            first_seen: 4,
            last_seen: 5,
            condemned: false,
        };
        let bytes = encode_chunk(&r);
        assert_eq!(
            hex::encode(bytes),
            concat!(
                "01010100",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "0100000000000000",
                "02000000",
                "03000000",
                "0400000000000000",
                "0500000000000000"
            )
        );
        assert_eq!(decode_chunk(&bytes).unwrap(), r);
        assert!(decode_chunk(&bytes[..10]).is_err());

        let condemned = ChunkRecord {
            condemned: true,
            ..r
        };
        let bytes = encode_chunk(&condemned);
        assert_eq!(bytes[3], 1);
        assert_eq!(decode_chunk(&bytes).unwrap(), condemned);
        let mut bad = bytes;
        bad[3] = 7;
        assert!(decode_chunk(&bad).is_err());

        // A padded zstd chunk is compression 3; 4 is unknown.
        let mut padded = encode_chunk(&r);
        padded[2] = 3;
        assert_eq!(
            decode_chunk(&padded).unwrap().location.compression,
            Compression::ZstdPadded
        );
        padded[2] = 4;
        assert!(decode_chunk(&padded).is_err());
    }

    #[test]
    fn pack_record_bytes_are_pinned_and_version_1_still_reads() {
        let r = PackRecord {
            kind: 1,
            count: 3,
            registered: 4,
            dead_since: 5,
            deleted: true,
        };
        let bytes = encode_pack(&r);
        assert_eq!(
            hex::encode(bytes),
            concat!(
                "0201",
                "03000000",
                "0400000000000000",
                "0500000000000000",
                "01",
                "000000"
            )
        );
        assert_eq!(decode_pack(&bytes).unwrap(), r);
        // Version 1, as written before garbage collection existed.
        let v1 = hex::decode(concat!("0100", "03000000", "0400000000000000")).unwrap();
        assert_eq!(
            decode_pack(&v1).unwrap(),
            PackRecord {
                kind: 0,
                count: 3,
                registered: 4,
                dead_since: 0,
                deleted: false
            }
        );
        assert!(decode_pack(&bytes[..20]).is_err());
    }

    #[test]
    fn session_record_bytes_are_pinned() {
        let s = Session {
            id: [9; 16],
            host: "h".into(),
            parent: Some(SnapshotId::from_bytes([0xbb; 32])),
            started: 1,
            expires: 2,
            lease: 3,
            committed: None,
        };
        let bytes = encode_session(&s);
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "01",
                "0100000000000000",
                "0200000000000000",
                "0300000000000000",
                "01",
                "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "0000000000000000000000000000000000000000000000000000000000000000",
                "68"
            )
        );
        assert_eq!(decode_session([9; 16], &bytes).unwrap(), s);
        assert!(decode_session([9; 16], &bytes[..50]).is_err());
    }
}
