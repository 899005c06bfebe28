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
    use crate::crypto::{Cipher, MasterKey, RepoKeys};

    /// The fingerprint key of the golden tests.
    const KEY: [u8; 32] = *b"cairn fingerprint golden key 001";

    /// Bytes 0, 1, …, 250, 0, 1, …: the input of BLAKE3's published test
    /// vectors. A 1 MiB input takes BLAKE3's multi-chunk (SIMD) paths.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn id_hex(algo: HashAlgo, key: [u8; 32], plaintext: &[u8]) -> String {
        Fingerprinter::new(algo, key).chunk_id(plaintext).to_hex()
    }

    /// Frozen: a chunk's id under a given fingerprint key never changes, or
    /// existing repositories stop deduplicating (and `check` fails).
    #[test]
    fn blake3_fingerprints_are_pinned() {
        let big = pattern(1 << 20);
        for (plaintext, expected) in [
            (
                &b""[..],
                "27992e068d069ff411a14b83e5af87847f025c316c603f144f27c8d47fb3e0fa",
            ),
            (
                b"cairn",
                "93ad50678bc50e160fbe0756e946f3f40d2ef00f75ad9a70c806ef430d4ee458",
            ),
            (
                &big,
                "d582a1676c63ca4000cbdad0febf0f88388e67915f74db4cae0906bd5edd360b",
            ),
        ] {
            assert_eq!(
                id_hex(HashAlgo::Blake3, KEY, plaintext),
                expected,
                "{} bytes",
                plaintext.len()
            );
        }
    }

    /// Frozen, as the BLAKE3 ids. Python's `hmac` module computes the same
    /// values.
    #[test]
    fn hmac_sha256_fingerprints_are_pinned() {
        let big = pattern(1 << 20);
        for (plaintext, expected) in [
            (
                &b""[..],
                "791d9afb4bbd75aa774722a976e5092e98f25414b0e32c1875c7c42d12cc99a0",
            ),
            (
                b"cairn",
                "6946e8598ab15560a5bfc36361eb3522d6d42f2f4af8257bd17b87c7a0c66814",
            ),
            (
                &big,
                "f17b3b4b60930f0f26a857575cdbd59929a81a12aac99c0d7b33097de80f5fd5",
            ),
        ] {
            assert_eq!(
                id_hex(HashAlgo::HmacSha256, KEY, plaintext),
                expected,
                "{} bytes",
                plaintext.len()
            );
        }
    }

    /// The whole path a repository takes: master key, derived fingerprint
    /// key (pinned in `crypto`), chunk id.
    #[test]
    fn fingerprints_from_a_master_key_are_pinned() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([0x42; 32]), Cipher::DEFAULT);
        let key = *keys.fingerprint_key();
        assert_eq!(
            id_hex(HashAlgo::Blake3, key, b"cairn"),
            "c88a27a793b995614391572e27ca605a72ce56c1466ad4b43543f21107353a80"
        );
        assert_eq!(
            id_hex(HashAlgo::HmacSha256, key, b"cairn"),
            "93fb0f8fc8b17c0de897f0616d7ac11dab984bc84843da7e50b86cef8ce80bbb"
        );
    }

    /// Published vectors, computed by other implementations: the algorithms
    /// are the standard ones, not merely stable.
    #[test]
    fn published_test_vectors() {
        // BLAKE3's test_vectors.json: keyed_hash, input_len 1023, the first
        // 32 bytes of the output.
        assert_eq!(
            id_hex(
                HashAlgo::Blake3,
                *b"whats the Elvish word for friend",
                &pattern(1023)
            ),
            "c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e"
        );
        // RFC 4231 test case 2. HMAC pads a short key with zeros to the
        // block size, so "Jefe" and "Jefe" followed by 28 zero bytes are
        // the same key.
        let mut jefe = [0u8; 32];
        jefe[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            id_hex(HashAlgo::HmacSha256, jefe, b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_and_algorithms_give_unrelated_ids() {
        let b3 = Fingerprinter::new(HashAlgo::Blake3, [1; 32]);
        let sha = Fingerprinter::new(HashAlgo::HmacSha256, [1; 32]);
        assert_ne!(b3.chunk_id(b"cairn"), sha.chunk_id(b"cairn"));
        let other = Fingerprinter::new(HashAlgo::Blake3, [2; 32]);
        assert_ne!(b3.chunk_id(b"cairn"), other.chunk_id(b"cairn"));
    }

    #[test]
    fn algorithm_values_and_names_are_pinned() {
        // Config format: the discriminants never change.
        assert_eq!(HashAlgo::Blake3 as u32, 1);
        assert_eq!(HashAlgo::HmacSha256 as u32, 2);
        for algo in [HashAlgo::Blake3, HashAlgo::HmacSha256] {
            assert_eq!(HashAlgo::from_u32(algo as u32), Some(algo));
            assert_eq!(algo.name().parse::<HashAlgo>(), Ok(algo));
        }
        assert_eq!(HashAlgo::from_u32(0), None);
    }
}
