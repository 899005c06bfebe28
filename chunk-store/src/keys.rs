//! Key files (`keys/<id>`): the master key wrapped under a password.
//!
//! A repository may have several key files, one per password; any of them
//! unlocks the same master key. The wrapping key is Argon2id(password, salt)
//! with the parameters stored in the file, so they can be raised later
//! without breaking old files.
//!
//! Layout: envelope header (magic `CAIRNKEY`, version 1, flags 0) followed by
//! the protobuf [`KeyRecord`] in the clear; the only secret in it, the master
//! key, is sealed with the Argon2id-derived key and the associated data
//! `"cairn key v1"`.

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::crypto::{MasterKey, open_with_key, random_bytes, seal_with_key};
use crate::envelope::{self, KEY_MAGIC};
use crate::error::FormatError;

/// Current key file version.
pub const KEY_VERSION: u16 = 1;
const WRAP_AAD: &[u8] = b"cairn key v1";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 4 lanes — the second recommended
    /// setting of RFC 9106. The lanes are computed on as many cores as the
    /// machine has: about 0.1 s on two cores of this class of machine, the
    /// same work as one lane in half the time. Key files written with one
    /// lane keep deriving with one.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };
}

/// A key file as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyRecord {
    /// 1 = Argon2id.
    #[prost(uint32, tag = "1")]
    pub kdf: u32,
    /// Argon2 memory, KiB.
    #[prost(uint32, tag = "2")]
    pub memory_kib: u32,
    /// Argon2 passes.
    #[prost(uint32, tag = "3")]
    pub iterations: u32,
    /// Argon2 lanes.
    #[prost(uint32, tag = "4")]
    pub parallelism: u32,
    /// Random salt.
    #[prost(bytes = "vec", tag = "5")]
    pub salt: Vec<u8>,
    /// Sealed master key.
    #[prost(bytes = "vec", tag = "6")]
    pub wrapped_key: Vec<u8>,
    /// Creation time, Unix seconds.
    #[prost(int64, tag = "7")]
    pub created_unix: i64,
    /// Host that created the key.
    #[prost(string, tag = "8")]
    pub host: String,
    /// User that created the key.
    #[prost(string, tag = "9")]
    pub user: String,
}

fn derive_wrapping_key(
    password: &[u8],
    salt: &[u8],
    p: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, FormatError> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32)).map_err(|e| {
        FormatError::Corrupt {
            what: "key file",
            detail: format!("invalid Argon2 parameters: {e}"),
        }
    })?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut *out)
        .map_err(|e| FormatError::Corrupt {
            what: "key file",
            detail: format!("Argon2 failed: {e}"),
        })?;
    Ok(out)
}

/// Wraps `master` under `password`; returns the key file bytes.
pub fn wrap(
    master: &MasterKey,
    password: &[u8],
    params: KdfParams,
    host: &str,
    user: &str,
) -> Result<Vec<u8>, FormatError> {
    use prost::Message;
    let salt = random_bytes::<16>();
    let kek = derive_wrapping_key(password, &salt, params)?;
    let record = KeyRecord {
        kdf: 1,
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        parallelism: params.parallelism,
        salt: salt.to_vec(),
        wrapped_key: seal_with_key(&kek, WRAP_AAD, master.as_bytes()),
        created_unix: crate::now_unix_nanos() / 1_000_000_000,
        host: host.to_string(),
        user: user.to_string(),
    };
    let mut out = envelope::header(KEY_MAGIC, KEY_VERSION, 0).to_vec();
    out.extend_from_slice(&record.encode_to_vec());
    Ok(out)
}

/// Decodes a key file without unlocking it.
pub fn decode(bytes: &[u8]) -> Result<KeyRecord, FormatError> {
    use prost::Message;
    let (version, _, body) = envelope::parse(KEY_MAGIC, "key file", bytes)?;
    if version == 0 || version > KEY_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what: "key file",
            version,
        });
    }
    KeyRecord::decode(body).map_err(|e| FormatError::from(("key file", e)))
}

/// The most memory a key file may ask Argon2 for (4 GiB): a larger cost is
/// refused before any is spent, so a hostile key file in the store cannot
/// make a client allocate without bound.
pub const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// The most passes a key file may ask for.
pub const MAX_KDF_ITERATIONS: u32 = 64;
/// The most lanes a key file may ask for.
pub const MAX_KDF_PARALLELISM: u32 = 64;

/// The Argon2 cost a key file asks for, if it is within bounds.
pub fn params_of(record: &KeyRecord) -> Result<KdfParams, FormatError> {
    if record.memory_kib > MAX_KDF_MEMORY_KIB
        || record.iterations > MAX_KDF_ITERATIONS
        || record.parallelism > MAX_KDF_PARALLELISM
    {
        return Err(FormatError::Corrupt {
            what: "key file",
            detail: format!(
                "Argon2 cost of {} KiB, {} passes, {} lanes is beyond what a key file may ask",
                record.memory_kib, record.iterations, record.parallelism
            ),
        });
    }
    Ok(KdfParams {
        memory_kib: record.memory_kib,
        iterations: record.iterations,
        parallelism: record.parallelism,
    })
}

/// Unlocks a key file: `Ok(None)` if the password is wrong.
pub fn unwrap(bytes: &[u8], password: &[u8]) -> Result<Option<MasterKey>, FormatError> {
    let record = decode(bytes)?;
    if record.kdf != 1 {
        return Err(FormatError::Corrupt {
            what: "key file",
            detail: format!("unknown key derivation function {}", record.kdf),
        });
    }
    let params = params_of(&record)?;
    let kek = derive_wrapping_key(password, &record.salt, params)?;
    match open_with_key(&kek, WRAP_AAD, &record.wrapped_key).map(Zeroizing::new) {
        Ok(bytes) => {
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| FormatError::Corrupt {
                    what: "key file",
                    detail: "wrapped key is not 32 bytes".into(),
                })?;
            Ok(Some(MasterKey::from_bytes(key)))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn wrap_unwrap() {
        let master = MasterKey::from_bytes([9; 32]);
        let file = wrap(&master, b"secret", FAST, "host", "user").unwrap();
        assert_eq!(&file[..8], b"CAIRNKEY");
        let got = unwrap(&file, b"secret").unwrap().unwrap();
        assert_eq!(got.as_bytes(), master.as_bytes());
        assert!(unwrap(&file, b"wrong").unwrap().is_none());
        assert!(unwrap(&file[..10], b"secret").is_err());
        let rec = decode(&file).unwrap();
        assert_eq!((rec.host.as_str(), rec.user.as_str()), ("host", "user"));
    }

    /// The wrapping key is Argon2id exactly as the reference implementation
    /// computes it, whether its lanes run on one thread or several: these
    /// answers come from libargon2 (256 KiB, 2 passes, 1 and 4 lanes).
    #[test]
    fn the_wrapping_key_matches_the_reference_implementation_for_one_lane_and_four() {
        let salt = b"0123456789abcdef";
        for (lanes, expected) in [
            (
                1,
                "05a5b87e96872a309958018361dbedaf12ef4a1fd245350fa04881eb2b646c2b",
            ),
            (
                4,
                "dc838a133d1ebc38ee7e6aed18636036e7db76e5486472a3c7300f0f0c48d25e",
            ),
        ] {
            let params = KdfParams {
                memory_kib: 256,
                iterations: 2,
                parallelism: lanes,
            };
            let key = derive_wrapping_key(b"correct horse", salt, params).unwrap();
            assert_eq!(hex::encode(*key), expected, "{lanes} lanes");
        }
    }

    #[test]
    fn the_default_cost_is_the_second_recommendation_of_rfc_9106() {
        assert_eq!(
            KdfParams::DEFAULT,
            KdfParams {
                memory_kib: 64 * 1024,
                iterations: 3,
                parallelism: 4,
            }
        );
    }
}
