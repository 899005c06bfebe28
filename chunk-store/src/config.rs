//! The repository config (`config`): sealed, written once by `init`.

use crate::chunker::ChunkerParams;
use crate::crypto::RepoKeys;
use crate::envelope::{self, CONFIG_MAGIC};
use crate::error::FormatError;
use crate::fingerprint::HashAlgo;
use crate::id::RepoId;

/// Current config format version.
pub const CONFIG_VERSION: u16 = 1;

/// Default target size of a pack: 16 MiB, large enough that request costs
/// are negligible on S3, small enough that a repack moves little.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;

/// Default zstd level: level 3 compresses source code about 4x at several
/// hundred MB/s per core; higher levels cost far more CPU for a few percent.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The config as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    /// Random repository identity.
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    /// [`HashAlgo`] discriminant.
    #[prost(uint32, tag = "2")]
    pub hash_algo: u32,
    /// Chunker minimum.
    #[prost(uint32, tag = "3")]
    pub chunk_min: u32,
    /// Chunker average.
    #[prost(uint32, tag = "4")]
    pub chunk_avg: u32,
    /// Chunker maximum.
    #[prost(uint32, tag = "5")]
    pub chunk_max: u32,
    /// Target pack size in bytes.
    #[prost(uint32, tag = "6")]
    pub pack_size: u32,
    /// zstd level for chunks.
    #[prost(int32, tag = "7")]
    pub zstd_level: i32,
    /// Creation time, Unix seconds.
    #[prost(int64, tag = "8")]
    pub created_unix: i64,
}

/// The decoded, validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository identity.
    pub repo_id: RepoId,
    /// Fingerprint algorithm.
    pub hash: HashAlgo,
    /// Chunker bounds.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// Creation time, Unix seconds.
    pub created_unix: i64,
}

impl RepoConfig {
    /// A new config with the defaults.
    pub fn new(hash: HashAlgo) -> Self {
        Self {
            repo_id: RepoId::random(),
            hash,
            chunker: ChunkerParams::DEFAULT,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            created_unix: crate::now_unix_nanos() / 1_000_000_000,
        }
    }

    /// The protobuf body.
    pub fn to_record(&self) -> ConfigRecord {
        ConfigRecord {
            repo_id: self.repo_id.as_bytes().to_vec(),
            hash_algo: self.hash as u32,
            chunk_min: self.chunker.min,
            chunk_avg: self.chunker.avg,
            chunk_max: self.chunker.max,
            pack_size: self.pack_size,
            zstd_level: self.zstd_level,
            created_unix: self.created_unix,
        }
    }

    /// Validates a decoded body.
    pub fn from_record(r: ConfigRecord) -> Result<Self, FormatError> {
        let corrupt = |detail: String| FormatError::Corrupt {
            what: "config",
            detail,
        };
        let repo_id = RepoId::from_slice(&r.repo_id).map_err(|e| corrupt(e.to_string()))?;
        let hash = HashAlgo::from_u32(r.hash_algo)
            .ok_or_else(|| corrupt(format!("unknown hash algorithm {}", r.hash_algo)))?;
        let chunker = ChunkerParams {
            min: r.chunk_min,
            avg: r.chunk_avg,
            max: r.chunk_max,
        };
        chunker.validate().map_err(corrupt)?;
        if r.pack_size < 1024 * 1024 {
            return Err(corrupt(format!("pack size {} is below 1 MiB", r.pack_size)));
        }
        Ok(Self {
            repo_id,
            hash,
            chunker,
            pack_size: r.pack_size,
            zstd_level: r.zstd_level,
            created_unix: r.created_unix,
        })
    }

    /// Seals the config for storage.
    pub fn seal(&self, keys: &RepoKeys) -> Vec<u8> {
        use prost::Message;
        envelope::seal(
            keys,
            CONFIG_MAGIC,
            CONFIG_VERSION,
            &self.to_record().encode_to_vec(),
        )
    }

    /// Opens a stored config.
    pub fn open(keys: &RepoKeys, bytes: &[u8]) -> Result<Self, FormatError> {
        use prost::Message;
        let (_, body) = envelope::open(keys, CONFIG_MAGIC, "config", CONFIG_VERSION, bytes)?;
        let record =
            ConfigRecord::decode(&body[..]).map_err(|e| FormatError::from(("config", e)))?;
        Self::from_record(record)
    }
}
