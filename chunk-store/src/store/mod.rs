//! The object store: where a repository's objects live.
//!
//! Every object is written **create-only** and never changes afterwards:
//! writers need no lock, and an object that exists is complete. The local
//! implementation writes a temporary file, fsyncs it, links it into place
//! (which fails if the name exists) and fsyncs the directory.

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

/// A flat key/value object store with create-only writes.
///
/// Keys are `/`-separated relative paths such as `packs/3f/3f2a…`.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location (`/path/to/repo`, `s3://bucket/prefix`) for messages.
    fn location(&self) -> String;

    /// Stores `data` under `key` unless `key` exists
    /// ([`StoreError::AlreadyExists`]). When this returns `Ok` the object is durable.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

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

/// The conformance suite every [`ObjectStore`] must pass.
///
/// Run against each implementation (`store` must be empty).
pub async fn conformance_suite(store: &dyn ObjectStore) {
    // Not-found paths.
    assert!(store.get("config").await.is_err_and(|e| e.is_not_found()));
    assert_eq!(store.head("config").await.ok(), Some(None));
    assert!(!store.exists("config").await.unwrap_or(true));
    assert!(store.list("").await.map(|l| l.is_empty()).unwrap_or(false));

    // Create-only put. Names under `packs/` are random, so stores may rely on
    // that for them (see the S3 store); every other name is checked.
    let data = Bytes::from_static(b"0123456789");
    assert!(store.put("keys/k1", data.clone()).await.is_ok());
    let again = store.put("keys/k1", Bytes::from_static(b"other")).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(store.get("keys/k1").await.ok(), Some(data.clone()));
    assert!(store.put("packs/ab/abcd", data.clone()).await.is_ok());
    assert_eq!(store.get("packs/ab/abcd").await.ok(), Some(data.clone()));
    assert_eq!(store.head("packs/ab/abcd").await.ok(), Some(Some(10)));
    assert!(store.exists("packs/ab/abcd").await.unwrap_or(false));

    // Ranges.
    assert_eq!(
        store.get_range("packs/ab/abcd", 2, 3).await.ok(),
        Some(Bytes::from_static(b"234"))
    );
    assert_eq!(
        store.get_range("packs/ab/abcd", 0, 0).await.ok(),
        Some(Bytes::new())
    );
    assert!(matches!(
        store.get_range("packs/ab/abcd", 8, 5).await,
        Err(StoreError::ShortRead { .. })
    ));

    // Listing by prefix.
    assert!(
        store
            .put("manifests/m1", Bytes::from_static(b"m"))
            .await
            .is_ok()
    );
    assert!(store.put("packs/cd/cdef", Bytes::new()).await.is_ok());
    let mut packs: Vec<(String, u64)> = store
        .list("packs/")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    packs.sort();
    assert_eq!(
        packs,
        vec![
            ("packs/ab/abcd".to_string(), 10),
            ("packs/cd/cdef".to_string(), 0)
        ]
    );
    assert_eq!(
        store.list("manifests/").await.map(|l| l.len()).ok(),
        Some(1)
    );

    // Delete is idempotent.
    assert!(store.delete("packs/ab/abcd").await.is_ok());
    assert!(store.delete("packs/ab/abcd").await.is_ok());
    assert!(
        store
            .get("packs/ab/abcd")
            .await
            .is_err_and(|e| e.is_not_found())
    );
    assert_eq!(store.list("packs/").await.map(|l| l.len()).ok(), Some(1));
}
