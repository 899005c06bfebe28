//! The object store: where a repository's objects live.
//!
//! Every object is written **create-only** and never changes afterwards:
//! writers need no lock, and an object that exists is complete. The local
//! implementation writes a temporary file, fsyncs it, links it into place
//! (which fails if the name exists) and fsyncs the directory.

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
mod local;
mod s3;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

use async_trait::async_trait;
use bytes::Bytes;

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was written (Unix seconds, the store's clock), when known.
    pub modified: Option<i64>,
}

/// How locked objects are protected (S3 Object Lock modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Only identities with `s3:BypassGovernanceRetention` may delete early.
    Governance,
    /// Nobody may delete before the date, not even the account's root.
    Compliance,
}

impl LockMode {
    /// The S3 header value.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Object lock: every object written carries a retention of `days` days
/// from its writing, during which the store refuses to delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// The mode.
    pub mode: LockMode,
    /// Days of retention from when an object is written.
    pub days: u32,
}

impl ObjectLock {
    /// Until when an object written at `written` (Unix seconds) is locked.
    pub fn retain_until(&self, written: i64) -> i64 {
        written.saturating_add(i64::from(self.days) * 86_400)
    }
}

/// Errors of an object store, each naming the location and key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{location}/{key}: not found")]
    NotFound {
        /// Store description.
        location: String,
        /// Object key.
        key: String,
    },
    /// A create-only write found the name taken.
    #[error("{location}/{key}: already exists")]
    AlreadyExists {
        /// Store description.
        location: String,
        /// Object key.
        key: String,
    },
    /// A read asked for bytes past the end of the object.
    #[error(
        "{location}/{key}: object is {size} bytes, shorter than the {wanted} bytes needed (truncated?)"
    )]
    ShortRead {
        /// Store description.
        location: String,
        /// Object key.
        key: String,
        /// Actual size.
        size: u64,
        /// Bytes up to the end of the requested range.
        wanted: u64,
    },
    /// The store did not answer in time or kept failing transiently.
    #[error(
        "{location}/{key}: object store unavailable (gave up after {attempts} attempts in {:.1}s): {reason}",
        elapsed.as_secs_f64()
    )]
    Unavailable {
        /// Store description.
        location: String,
        /// Object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: std::time::Duration,
        /// The last failure.
        reason: String,
    },
    /// The store refused the request in a way a retry cannot fix (credentials,
    /// missing bucket, bad request).
    #[error("{location}{}: {reason}", if key.is_empty() { String::new() } else { format!("/{key}") })]
    Rejected {
        /// Store description.
        location: String,
        /// Object key (empty for bucket-wide checks).
        key: String,
        /// What was refused, in the user's terms.
        reason: String,
    },
    /// An I/O failure.
    #[error("{location}/{key}: {source}")]
    Io {
        /// Store description.
        location: String,
        /// Object key.
        key: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl StoreError {
    /// True if the object was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A new object written in pieces ([`ObjectStore::writer`]); blocking.
///
/// Dropped without [`ObjectWriter::commit`], it leaves nothing behind.
pub trait ObjectWriter: Send + std::fmt::Debug {
    /// Appends `bytes`. Pieces that start at an offset and an address
    /// aligned to 4096 bytes and are a multiple of it long are written
    /// without a copy where the store can (`O_DIRECT`).
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError>;

    /// Makes what was written durable as the object, with
    /// [`ObjectStore::put`]'s guarantees: create-only
    /// ([`StoreError::AlreadyExists`] if the key was taken meanwhile), and
    /// durable once this returns `Ok`.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A flat key/value object store with create-only writes.
///
/// Keys are `/`-separated relative paths such as `packs/3f/3f2a…`.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location (`/path/to/repo`, `s3://bucket/prefix`) for messages.
    fn location(&self) -> String;

    /// Writes every object from now on under `lock`. Only S3 stores can
    /// (S3 Object Lock); others refuse.
    fn set_object_lock(&self, _lock: ObjectLock) -> Result<(), StoreError> {
        Err(StoreError::Rejected {
            location: self.location(),
            key: String::new(),
            reason: "object lock needs an S3 repository (S3 Object Lock); this store \
                     cannot keep objects from being deleted"
                .into(),
        })
    }

    /// Checks, without changing anything, that these credentials may
    /// delete objects, so that a command that deletes (forget, prune)
    /// fails before it starts rather than halfway. Stores without
    /// per-request permissions say yes.
    async fn check_delete(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Stores `data` under `key` unless `key` exists
    /// ([`StoreError::AlreadyExists`]). When this returns `Ok` the object is durable.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Starts writing a new object under `key` in pieces, for a store that
    /// can take it so without holding it whole (the local store writes a
    /// temporary file); `None` when the object must be given whole to
    /// [`ObjectStore::put`]. The object exists only once
    /// [`ObjectWriter::commit`] returns `Ok`. Blocking: call it off the
    /// async runtime's threads.
    fn writer(&self, _key: &str) -> Result<Option<Box<dyn ObjectWriter>>, StoreError> {
        Ok(None)
    }

    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// `len` bytes from `offset`; fails with [`StoreError::ShortRead`] past the end.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;

    /// Size of the object, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// True if the object exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.head(key).await?.is_some())
    }

    /// Every object whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}
