//! Conversions between wire messages and domain types.

use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, PackEntry};
use cairn_chunk_store::{ChunkId, PackId};

use crate::v1;

/// A wire value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// Packs ids into one bytes field.
pub fn pack_ids(ids: &[ChunkId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Unpacks ids; fails unless the length is a multiple of 32 and within `max`.
pub fn unpack_ids(bytes: &[u8], max: usize) -> Result<Vec<ChunkId>, WireError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(WireError(format!(
            "ids field is {} bytes, not a multiple of 32",
            bytes.len()
        )));
    }
    let n = bytes.len() / 32;
    if n > max {
        return Err(WireError(format!(
            "{n} ids in one call; at most {max} are allowed"
        )));
    }
    Ok(bytes
        .chunks_exact(32)
        .filter_map(|c| ChunkId::from_slice(c).ok())
        .collect())
}

/// A bitmap of `bits`.
pub fn to_bitmap(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Reads `n` bits from a bitmap; missing bytes read as unset.
pub fn from_bitmap(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .collect()
}

/// A pack entry on the wire.
pub fn entry_to_wire(e: &PackEntry) -> v1::ChunkEntry {
    v1::ChunkEntry {
        id: e.id.as_bytes().to_vec().into(),
        offset: e.location.offset,
        stored_len: e.location.stored_len,
        raw_len: e.location.raw_len,
        kind: e.location.kind as u32,
        compression: e.location.compression as u32,
    }
}

/// A pack entry from the wire.
pub fn entry_from_wire(pack: PackId, e: &v1::ChunkEntry) -> Result<PackEntry, WireError> {
    let id = ChunkId::from_slice(&e.id).map_err(|err| WireError(err.to_string()))?;
    let kind =
        BlobKind::from_u32(e.kind).ok_or_else(|| WireError(format!("unknown kind {}", e.kind)))?;
    let compression = Compression::from_u32(e.compression)
        .ok_or_else(|| WireError(format!("unknown compression {}", e.compression)))?;
    Ok(PackEntry {
        id,
        location: BlobLocation {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            kind,
            compression,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_and_ids_round_trip() {
        let bits = vec![true, false, false, true, true, false, true, false, true];
        let map = to_bitmap(&bits);
        assert_eq!(map, vec![0b0101_1001, 0b1]);
        assert_eq!(from_bitmap(&map, bits.len()), bits);
        let ids = vec![ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32])];
        assert_eq!(unpack_ids(&pack_ids(&ids), 10).unwrap(), ids);
        assert!(unpack_ids(&[0; 33], 10).is_err());
        assert!(unpack_ids(&[0; 64], 1).is_err());
    }

    /// The garbage-collection messages as they travel: field numbers and
    /// types are part of the wire format and never change.
    #[test]
    fn gc_wire_bytes_are_pinned() {
        use prost::Message;
        let hex = |m: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            m(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let session = v1::Session {
            session_id: vec![1; 2].into(),
            started_unix: 3,
            expires_unix: 4,
            host: "h".into(),
            parent_snapshot: vec![5].into(),
            committed_snapshot: vec![6].into(),
            lease_seconds: 7,
        };
        assert_eq!(
            hex(&|b| session.encode(b).unwrap()),
            "0a020101100318042201682a01053201063807"
        );
        let condemn = v1::CondemnRequest {
            repo_id: vec![9].into(),
            ids: vec![8].into(),
            cutoff_unix: 300,
        };
        assert_eq!(hex(&|b| condemn.encode(b).unwrap()), "0a010912010818ac02");
        let state = v1::PackState {
            pack_id: vec![2].into(),
            observed: 1,
            dead_since_unix: 5,
        };
        assert_eq!(hex(&|b| state.encode(b).unwrap()), "0a010210011805");
        // The forms clients before RelocatePack and EndSession send, which
        // servers still accept.
        #[allow(deprecated)]
        let register = v1::RegisterPackRequest {
            repo_id: Default::default(),
            pack_id: Default::default(),
            entries: vec![],
            relocate: true,
        };
        assert_eq!(hex(&|b| register.encode(b).unwrap()), "2001");
        #[allow(deprecated)]
        let commit = v1::CommitManifestRequest {
            finished: true,
            ..Default::default()
        };
        assert_eq!(hex(&|b| commit.encode(b).unwrap()), "2001");
        let relocate = v1::RelocatePackRequest {
            repo_id: vec![9].into(),
            pack_id: vec![2].into(),
            entries: vec![],
        };
        assert_eq!(hex(&|b| relocate.encode(b).unwrap()), "0a0109120102");
        let end = v1::EndSessionRequest {
            repo_id: vec![9].into(),
            session_id: vec![1].into(),
        };
        assert_eq!(hex(&|b| end.encode(b).unwrap()), "0a0109120101");
        let replica = v1::BeginSessionRequest {
            session_id: vec![1].into(),
            started_unix: 2,
            ..Default::default()
        };
        assert_eq!(hex(&|b| replica.encode(b).unwrap()), "2a01013002");
        let location = v1::Location {
            condemned: true,
            ..Default::default()
        };
        assert_eq!(hex(&|b| location.encode(b).unwrap()), "3001");
    }
}
