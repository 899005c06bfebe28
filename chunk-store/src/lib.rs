//! The Cairn repository format and its storage.
//!
//! # Repository layout
//!
//! The same keys under a directory or an object-store prefix:
//!
//! | key                      | content                                              |
//! |--------------------------|------------------------------------------------------|
//! | `config`                 | sealed [`config::ConfigRecord`] (magic `CAIRNCFG`)   |
//! | `keys/<id>`              | master key wrapped under Argon2id (magic `CAIRNKEY`) |
//! | `packs/<2 hex>/<id>`     | sealed chunks + sealed trailer + footer (`CAIRNPAK`) |
//! | `manifests/<id>`         | sealed [`manifest::Snapshot`] (magic `CAIRNSNP`)     |
//!
//! Every top-level object starts with the 16-byte [`envelope`] header (packs
//! end with a footer instead, so they can be streamed out), carries a format
//! version, and is read by every later version of Cairn. Fixture tests pin
//! the bytes of each format; `tests/fixtures/` holds a whole repository that
//! every version must restore.
//!
//! # Invariants that cross files
//!
//! 1. **Create-only**: every object is written once under a name nobody else
//!    picks (random pack ids; content-derived manifest ids) and never
//!    changes. Writers need no lock. See [`store`].
//! 2. **Manifest last**: a manifest is written only after every chunk
//!    reachable from it is durably stored, so no manifest names a missing
//!    chunk, whatever point a backup dies at.
//! 3. **Verify before trust**: every chunk read is authenticated (AEAD with
//!    the chunk id as associated data), decompressed and re-fingerprinted.
//! 4. **The store is the truth**: packs describe themselves (trailers), so
//!    any index can be rebuilt from the store alone.
//! 5. **Ciphertext at rest**: only ids, sizes and sealed bytes are visible
//!    without a key; fingerprints are keyed, and chunk boundaries depend on
//!    the key ([`chunker`]).
//! 6. **Garbage collection** deletes packs (the only objects besides
//!    manifests and keys that are ever removed) under the protocol written
//!    in the `cairn_index` crate docs: a chunk a committed manifest needs is
//!    never in a deleted pack.
//!
//! # Features
//!
//! `test-support` (off by default) compiles `store::conformance`, the suite
//! every [`store::ObjectStore`] must pass, for the tests of other crates,
//! and turns on the crash points of [`fault`]; release binaries carry no
//! test machinery.

mod cdc;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod cut_ahead;
pub mod duration;
pub mod envelope;
pub mod error;
pub mod fault;
pub mod fingerprint;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod repository;
pub mod store;
pub mod tree;

pub use error::{FormatError, RepoError};
pub use id::{ChunkId, KeyId, PackId, RepoId, SnapshotId};
pub use repository::Repository;

/// Current time, nanoseconds since the Unix epoch: the one clock of the
/// client and the index (snapshot times, sessions, prune's cutoffs, commit
/// times). With the `test-support` feature, `CAIRN_TEST_CLOCK_OFFSET_SECS`
/// shifts it, so tests can run a process days in the past or future.
pub fn now_unix_nanos() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    now.saturating_add(fault::clock_offset_secs().saturating_mul(1_000_000_000))
}
