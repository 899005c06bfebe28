//! Snapshot manifests (`manifests/<id>`): sealed, one object per snapshot.
//!
//! A manifest names the root tree and says when, where and what was backed
//! up. Its id is the keyed hash of its sealed bytes' plaintext, so it is
//! stable and unforgeable without the key. It is written last, after every
//! chunk it reaches is durably stored.

use crate::crypto::RepoKeys;
use crate::envelope::{self, MANIFEST_MAGIC};
use crate::error::FormatError;
use crate::id::{ChunkId, SnapshotId};

/// Current manifest format version.
pub const MANIFEST_VERSION: u16 = 1;

/// Statistics of the backup that wrote a snapshot.
#[derive(Clone, PartialEq, Eq, serde::Serialize, prost::Message)]
pub struct SnapshotStats {
    /// Files read because they were new.
    #[prost(uint64, tag = "1")]
    pub files_new: u64,
    /// Files read because they changed.
    #[prost(uint64, tag = "2")]
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    #[prost(uint64, tag = "3")]
    pub files_unmodified: u64,
    /// Directories.
    #[prost(uint64, tag = "4")]
    pub dirs: u64,
    /// Chunks stored by this backup.
    #[prost(uint64, tag = "5")]
    pub chunks_new: u64,
    /// Chunks found already stored.
    #[prost(uint64, tag = "6")]
    pub chunks_reused: u64,
    /// Bytes read from source files.
    #[prost(uint64, tag = "7")]
    pub bytes_read: u64,
    /// Raw bytes of new chunks.
    #[prost(uint64, tag = "8")]
    pub bytes_new: u64,
    /// Bytes written to the store.
    #[prost(uint64, tag = "9")]
    pub bytes_stored: u64,
    /// Total size of all files in the snapshot.
    #[prost(uint64, tag = "10")]
    pub bytes_total: u64,
    /// Source entries that could not be read.
    #[prost(uint64, tag = "11")]
    pub errors: u64,
    /// Wall time, milliseconds.
    #[prost(uint64, tag = "12")]
    pub duration_ms: u64,
}

/// A snapshot manifest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// Root tree id.
    #[prost(bytes = "vec", tag = "1")]
    pub root: Vec<u8>,
    /// Start time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub time_ns: i64,
    /// Host name.
    #[prost(string, tag = "3")]
    pub host: String,
    /// User name.
    #[prost(string, tag = "4")]
    pub user: String,
    /// Absolute source paths.
    #[prost(string, repeated, tag = "5")]
    pub paths: Vec<String>,
    /// Tags.
    #[prost(string, repeated, tag = "6")]
    pub tags: Vec<String>,
    /// Parent snapshot id (empty if none).
    #[prost(bytes = "vec", tag = "7")]
    pub parent: Vec<u8>,
    /// Chunker minimum used.
    #[prost(uint32, tag = "8")]
    pub chunk_min: u32,
    /// Chunker average used.
    #[prost(uint32, tag = "9")]
    pub chunk_avg: u32,
    /// Chunker maximum used.
    #[prost(uint32, tag = "10")]
    pub chunk_max: u32,
    /// Statistics.
    #[prost(message, optional, tag = "11")]
    pub stats: Option<SnapshotStats>,
    /// Version of the program that wrote it.
    #[prost(string, tag = "12")]
    pub program: String,
    /// The snapshot this one rewrites with other tags (`cairn tag`): the id
    /// the backup wrote, kept through every rewrite. Empty for a backup.
    #[prost(bytes = "vec", tag = "13")]
    pub original: Vec<u8>,
    /// The snapshot of another repository this one is a copy of (`cairn
    /// copy`); empty for a backup. A client that predates the field reads
    /// the copy as an ordinary snapshot.
    #[prost(bytes = "vec", tag = "14")]
    pub copied_from: Vec<u8>,
}

impl Snapshot {
    /// Root tree id.
    pub fn root_tree(&self) -> Result<ChunkId, FormatError> {
        ChunkId::from_slice(&self.root).map_err(|e| FormatError::Corrupt {
            what: "manifest",
            detail: e.to_string(),
        })
    }

    /// Parent snapshot id, if any.
    pub fn parent_id(&self) -> Option<SnapshotId> {
        SnapshotId::from_slice(&self.parent).ok()
    }

    /// The snapshot the backup wrote, if this one is a rewrite of it.
    pub fn original_id(&self) -> Option<SnapshotId> {
        SnapshotId::from_slice(&self.original).ok()
    }

    /// The snapshot of another repository this one was copied from.
    pub fn copied_from_id(&self) -> Option<SnapshotId> {
        SnapshotId::from_slice(&self.copied_from).ok()
    }

    /// Seals the manifest; returns its id and bytes.
    pub fn seal(&self, keys: &RepoKeys, fingerprint_key: &[u8; 32]) -> (SnapshotId, Vec<u8>) {
        use prost::Message;
        let body = self.encode_to_vec();
        let id = SnapshotId::from_bytes(*blake3::keyed_hash(fingerprint_key, &body).as_bytes());
        (
            id,
            envelope::seal(keys, MANIFEST_MAGIC, MANIFEST_VERSION, &body),
        )
    }

    /// Opens a stored manifest.
    pub fn open(keys: &RepoKeys, bytes: &[u8]) -> Result<Self, FormatError> {
        use prost::Message;
        let (_, body) = envelope::open(keys, MANIFEST_MAGIC, "manifest", MANIFEST_VERSION, bytes)?;
        let snap =
            <Self as Message>::decode(&body[..]).map_err(|e| FormatError::from(("manifest", e)))?;
        snap.root_tree()?;
        Ok(snap)
    }
}

/// Object key of a manifest.
pub fn manifest_key(id: &SnapshotId) -> String {
    format!("manifests/{id}")
}
