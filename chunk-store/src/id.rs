//! Typed 256-bit identifiers.
//!
//! Every id in a repository is 32 bytes and is shown as 64 lowercase hex
//! characters. Chunk ids are keyed fingerprints of plaintext (see
//! [`crate::fingerprint`]); pack, snapshot and key ids are either random or
//! keyed hashes, but callers never need to know which: the types only keep
//! one kind of id from being passed where another is expected.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;

/// A string or byte slice that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {input:?}: expected 64 hex characters (32 bytes)")]
pub struct InvalidId {
    /// What was given (truncated for display).
    pub input: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = 32;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// Parses raw bytes from a decoded record; fails unless exactly 32 bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidId> {
                <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| InvalidId {
                    input: format!("{} bytes", bytes.len()),
                })
            }

            /// A fresh id from the operating system's random source.
            pub fn random() -> Self {
                let mut bytes = [0u8; 32];
                OsRng.fill_bytes(&mut bytes);
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex form (64 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidId {
                    input: s.chars().take(80).collect(),
                })?;
                Ok(Self(bytes))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// Keyed fingerprint of a chunk's plaintext: the chunk's name everywhere.
    ChunkId
);
typed_id!(
    /// Random name of a pack object (`packs/<2 hex>/<id>`).
    PackId
);
typed_id!(
    /// Name of a snapshot manifest (`manifests/<id>`): keyed hash of its plaintext.
    SnapshotId
);
typed_id!(
    /// Random name of a key file (`keys/<id>`).
    KeyId
);
typed_id!(
    /// Random identity of a repository, fixed at `init`.
    RepoId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = ChunkId::from_bytes([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert!("xyz".parse::<ChunkId>().is_err());
        assert!(ChunkId::from_slice(&[1, 2, 3]).is_err());
        assert_ne!(PackId::random(), PackId::random());
    }
}
