//! What the fuzz targets share: fixed keys (an attacker's bytes meet the
//! decoders after authentication as often as before it), and a pack id.

use std::sync::OnceLock;

use cairn_chunk_store::PackId;
use cairn_chunk_store::crypto::{Cipher, MasterKey, RepoKeys};
use cairn_chunk_store::fingerprint::{Fingerprinter, HashAlgo};

/// The pack every target's entries belong to.
pub const PACK: PackId = PackId::from_bytes([0x5a; 32]);

/// Fixed working keys.
pub fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| RepoKeys::derive(&MasterKey::from_bytes([7; 32]), Cipher::Aes256Gcm))
}

/// The fingerprinter of [`keys`].
pub fn fingerprinter() -> &'static Fingerprinter {
    static FP: OnceLock<Fingerprinter> = OnceLock::new();
    FP.get_or_init(|| Fingerprinter::new(HashAlgo::Blake3, *keys().fingerprint_key()))
}

