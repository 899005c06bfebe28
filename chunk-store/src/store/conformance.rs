//! The conformance suite every [`ObjectStore`] must pass, run against the
//! local store here and against S3 servers by the integration tests.
//!
//! Test machinery: compiled only for this crate's tests and with the
//! `test-support` feature, never into release binaries.

use bytes::Bytes;

use super::{ObjectStore, StoreError};

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
