//! Key derivation and authenticated encryption.
//!
//! A repository has one random 32-byte master key. Everything else is derived
//! from it with BLAKE3's `derive_key`, under context strings that are frozen
//! (changing one would make every existing repository unreadable):
//!
//! | context string                              | use                                  |
//! |---------------------------------------------|--------------------------------------|
//! | `cairn 2026-11-25 encryption key v1`        | XChaCha20-Poly1305 key for all blobs |
//! | `cairn 2026-11-25 fingerprint key v1`       | key of the chunk fingerprint         |
//! | `cairn 2026-11-25 chunker gear table v1`    | seed of the FastCDC gear table       |
//!
//! Sealed bytes are `nonce (24) || ciphertext || tag (16)`. XChaCha20's
//! 192-bit nonces are drawn at random for every message, which is safe
//! without any coordination between concurrent writers.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Nonce length of sealed bytes.
pub const NONCE_LEN: usize = 24;
/// Authentication tag length of sealed bytes.
pub const TAG_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const ENCRYPTION_CONTEXT: &str = "cairn 2026-11-25 encryption key v1";
const FINGERPRINT_CONTEXT: &str = "cairn 2026-11-25 fingerprint key v1";
const CHUNKER_CONTEXT: &str = "cairn 2026-11-25 chunker gear table v1";

/// Authentication failed: wrong key, or the bytes were altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (wrong key or altered bytes)")]
pub struct AuthError;

/// The repository's random master key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Wraps key bytes recovered from a key file.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (only for wrapping into a key file).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The working keys derived from a [`MasterKey`].
#[derive(Clone)]
pub struct RepoKeys {
    cipher: XChaCha20Poly1305,
    fingerprint: [u8; 32],
    chunker: [u8; 32],
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

impl RepoKeys {
    /// Derives the working keys (see the module docs for the contexts).
    pub fn derive(master: &MasterKey) -> Self {
        let enc = blake3::derive_key(ENCRYPTION_CONTEXT, master.as_bytes());
        Self {
            cipher: XChaCha20Poly1305::new(&enc.into()),
            fingerprint: blake3::derive_key(FINGERPRINT_CONTEXT, master.as_bytes()),
            chunker: blake3::derive_key(CHUNKER_CONTEXT, master.as_bytes()),
        }
    }

    /// Key of the chunk fingerprint.
    pub fn fingerprint_key(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// Seed of the chunker's gear table.
    pub fn chunker_key(&self) -> &[u8; 32] {
        &self.chunker
    }

    /// Encrypts `plaintext`, binding `aad` (authenticated, not stored).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, aad, plaintext)
    }

    /// Decrypts bytes made by [`RepoKeys::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        open_with(&self.cipher, aad, sealed)
    }
}

/// Seals with an explicit 32-byte key (used to wrap the master key).
pub fn seal_with_key(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(&XChaCha20Poly1305::new(key.into()), aad, plaintext)
}

/// Opens bytes sealed by [`seal_with_key`].
pub fn open_with_key(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
    open_with(&XChaCha20Poly1305::new(key.into()), aad, sealed)
}

fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    // Encryption with a valid key and nonce length cannot fail; an error here
    // would only come from a plaintext beyond 256 GiB.
    match cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: plaintext,
            aad,
        },
    ) {
        Ok(ct) => out.extend_from_slice(&ct),
        Err(_) => unreachable!("XChaCha20-Poly1305 encryption of an in-memory buffer"),
    }
    out
}

fn open_with(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(AuthError);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| AuthError)
}

/// Fills a buffer from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([7; 32]));
        let sealed = keys.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(keys.open(b"aad", &sealed).unwrap(), b"hello");
        assert_eq!(keys.open(b"other", &sealed), Err(AuthError));
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(keys.open(b"aad", &bad), Err(AuthError));
        assert_eq!(keys.open(b"aad", &sealed[..10]), Err(AuthError));
        let other = RepoKeys::derive(&MasterKey::from_bytes([8; 32]));
        assert_eq!(other.open(b"aad", &sealed), Err(AuthError));
    }

    #[test]
    fn derived_keys_are_pinned() {
        // Frozen: a change here breaks every repository ever written.
        let keys = RepoKeys::derive(&MasterKey::from_bytes([0; 32]));
        assert_eq!(
            hex::encode(keys.fingerprint_key()),
            hex::encode(blake3::derive_key(FINGERPRINT_CONTEXT, &[0; 32]))
        );
        assert_ne!(keys.fingerprint_key(), keys.chunker_key());
    }
}
