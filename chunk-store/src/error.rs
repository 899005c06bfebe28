//! Errors of the repository format.

use crate::store::StoreError;

/// A repository object that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes do not start (or, for packs, end) with the expected magic.
    #[error("{what}: not a Cairn object (magic missing; truncated or foreign file)")]
    BadMagic {
        /// Kind of object.
        what: &'static str,
    },
    /// Written by a newer Cairn.
    #[error("{what}: format version {version} is not supported by this version of cairn")]
    UnsupportedVersion {
        /// Kind of object.
        what: &'static str,
        /// Version found.
        version: u16,
    },
    /// AEAD authentication failed.
    #[error("{what}: authentication failed (wrong key, or the object was altered)")]
    Auth {
        /// Kind of object.
        what: &'static str,
    },
    /// Structurally invalid.
    #[error("{what}: corrupt: {detail}")]
    Corrupt {
        /// Kind of object.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl From<(&'static str, prost::DecodeError)> for FormatError {
    fn from((what, e): (&'static str, prost::DecodeError)) -> Self {
        FormatError::Corrupt {
            what,
            detail: e.to_string(),
        }
    }
}

/// Errors of repository-level operations.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No repository at this location.
    #[error("no repository at {location} (run `cairn init` to create one)")]
    NotFound {
        /// Where we looked.
        location: String,
    },
    /// `init` on an existing repository.
    #[error("a repository already exists at {location}")]
    AlreadyExists {
        /// Where.
        location: String,
    },
    /// No key file opens with this password.
    #[error("wrong password: no key in {location} opens with it")]
    WrongPassword {
        /// Where.
        location: String,
    },
    /// An object failed to decode.
    #[error("{object} in {location}: {source}")]
    Format {
        /// Which object (e.g. `packs/ab/ab12…`).
        object: String,
        /// Where.
        location: String,
        /// Why.
        source: FormatError,
    },
    /// A chunk's plaintext does not hash to its id.
    #[error("chunk {chunk} in pack {pack} ({location}): content does not match its fingerprint")]
    HashMismatch {
        /// Chunk id.
        chunk: String,
        /// Pack id.
        pack: String,
        /// Where.
        location: String,
    },
    /// A snapshot reference that matches nothing or several snapshots.
    #[error("{0}")]
    SnapshotRef(String),
    /// Anything else the caller did wrong (e.g. removing the last key).
    #[error("{0}")]
    Invalid(String),
}
