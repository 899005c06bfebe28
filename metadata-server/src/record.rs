//! Binary records stored in RocksDB.
//!
//! Chunk record, version 1 (68 bytes, little endian):
//!
//! ```text
//! 0      version (1)
//! 1      kind (BlobKind)
//! 2      compression
//! 3      state (0 = live)
//! 4..36  pack id
//! 36..44 offset u64
//! 44..48 stored_len u32
//! 48..52 raw_len u32
//! 52..60 first_seen i64 (Unix seconds)
//! 60..68 last_seen i64 (Unix seconds)
//! ```

use cairn_chunk_store::PackId;
use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression};

use crate::ChunkRecord;

const CHUNK_RECORD_VERSION: u8 = 1;
/// Encoded length of a chunk record.
pub const CHUNK_RECORD_LEN: usize = 68;

/// Encodes a chunk record.
pub fn encode_chunk(r: &ChunkRecord) -> [u8; CHUNK_RECORD_LEN] {
    let mut b = [0u8; CHUNK_RECORD_LEN];
    b[0] = CHUNK_RECORD_VERSION;
    b[1] = r.location.kind as u8;
    b[2] = r.location.compression as u8;
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
    let compression = match b[2] {
        0 => Compression::None,
        1 => Compression::Zstd,
        _ => return Err("unknown compression".into()),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
