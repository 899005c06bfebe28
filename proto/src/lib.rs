//! Wire formats shared by the index service and its clients, and the
//! partitioning rules both sides must agree on.

pub mod cluster;
pub mod convert;

/// Generated code of `cairn.index.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod v1 {
    tonic::include_proto!("cairn.index.v1");
}

/// Largest number of fingerprints in one call.
pub const MAX_BATCH: usize = 4096;
