//! The 16-byte header that starts every top-level repository object.
//!
//! ```text
//! offset 0  magic    8 bytes  ASCII "CAIRN" + a 3-letter object type
//! offset 8  version  u16 LE   format version of the body
//! offset 10 flags    u16 LE   bit 0: body is zstd-compressed before sealing
//! offset 12 reserved u32      zero
//! offset 16 body              sealed (nonce || ciphertext || tag) or plain
//! ```
//!
//! For sealed objects the header is the AEAD's associated data, so a header
//! cannot be swapped or altered without detection. The magic numbers are
//! frozen: they are "CAIRN" followed by a mnemonic of the object type.

use crate::crypto::RepoKeys;
use crate::error::FormatError;

/// Header length.
pub const HEADER_LEN: usize = 16;

/// Magic of the repository config object (`config`).
pub const CONFIG_MAGIC: [u8; 8] = *b"CAIRNCFG";
/// Magic of a key file (`keys/<id>`).
pub const KEY_MAGIC: [u8; 8] = *b"CAIRNKEY";
/// Magic of a snapshot manifest (`manifests/<id>`).
pub const MANIFEST_MAGIC: [u8; 8] = *b"CAIRNSNP";
/// Magic at the very end of every pack (in its footer).
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPAK";

const FLAG_ZSTD: u16 = 1;

/// Builds a header.
pub fn header(magic: [u8; 8], version: u16, flags: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&magic);
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Splits and checks a header; returns (version, flags, body).
pub fn parse<'a>(
    magic: [u8; 8],
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(u16, u16, &'a [u8]), FormatError> {
    if bytes.len() < HEADER_LEN || bytes[..8] != magic {
        return Err(FormatError::BadMagic { what });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    Ok((version, flags, &bytes[HEADER_LEN..]))
}

/// Compresses and seals a body under `magic`/`version`.
pub fn seal(keys: &RepoKeys, magic: [u8; 8], version: u16, body: &[u8]) -> Vec<u8> {
    let (flags, payload) = match zstd::bulk::compress(body, 3) {
        Ok(z) if z.len() < body.len() => (FLAG_ZSTD, z),
        _ => (0, body.to_vec()),
    };
    let h = header(magic, version, flags);
    let mut out = h.to_vec();
    out.extend_from_slice(&keys.seal(&h, &payload));
    out
}

/// Opens an object made by [`seal`]; returns (version, plaintext body).
pub fn open(
    keys: &RepoKeys,
    magic: [u8; 8],
    what: &'static str,
    max_version: u16,
    bytes: &[u8],
) -> Result<(u16, Vec<u8>), FormatError> {
    let (version, flags, body) = parse(magic, what, bytes)?;
    if version == 0 || version > max_version {
        return Err(FormatError::UnsupportedVersion { what, version });
    }
    let plain = keys
        .open(&bytes[..HEADER_LEN], body)
        .map_err(|_| FormatError::Auth { what })?;
    if flags & FLAG_ZSTD != 0 {
        let out = zstd::stream::decode_all(&plain[..]).map_err(|_| FormatError::Corrupt {
            what,
            detail: "zstd body does not decompress".into(),
        })?;
        Ok((version, out))
    } else {
        Ok((version, plain))
    }
}
