//! Index errors.

use std::path::PathBuf;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Another process holds the index.
    #[error(
        "index {path} is in use by another cairn process{holder}; wait for it to finish or pass --lock-wait SECONDS"
    )]
    Locked {
        /// Index directory.
        path: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
    /// RocksDB failed.
    #[error("index {path}: {source}")]
    Db {
        /// Index directory.
        path: PathBuf,
        /// Cause.
        source: rocksdb::Error,
    },
    /// A stored record does not decode.
    #[error("index {path}: corrupt record: {detail} (run `cairn index rebuild`)")]
    Corrupt {
        /// Index directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Filesystem error around the database.
    #[error("index {path}: {source}")]
    Io {
        /// Index directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The index refused our credentials (a configuration error).
    #[error("{0}")]
    Unauthorized(String),
    /// The index refused the call for the token's role, repository,
    /// revocation or expiry (the message says which and what is needed).
    #[error("the index refused: {0}")]
    PermissionDenied(String),
    /// The index answered nothing usable (remote index down, timeout).
    #[error("index unavailable: {0}")]
    Unavailable(String),
    /// A backup session whose lease expired: it may not write a snapshot.
    #[error("{0}")]
    Fenced(String),
}
