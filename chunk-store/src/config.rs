//! The repository config (`config`): sealed, written once by `init`.
//!
//! Versions: 1 = repositories whose objects are sealed with
//! XChaCha20-Poly1305 (the `cipher` field is absent); 2 = the `cipher` field
//! names the cipher of every other object (see [`crate::crypto`]). A config
//! is written at the lowest version that can express it, so a repository
//! created with `--cipher xchacha20-poly1305` stays readable by version-1
//! clients, and a version-1 client refuses an AES repository with
//! "unsupported format version" instead of failing to authenticate every
//! chunk. Version 3 adds `chunker_seed`: the seed of the chunker's gear
//! table, copied from another repository (`cairn init
//! --copy-chunker-params-from`) so that both cut the same data at the same
//! places; without it the seed is derived from the master key. A client that
//! knows only versions 1 and 2 would cut such a repository's data elsewhere,
//! so it is refused the version instead. The config itself is always sealed
//! with XChaCha20-Poly1305, so the seed is as secret as the keys. Version 4
//! adds the object lock (`object_lock_days`, `object_lock_mode`): every
//! object is written with an S3 Object Lock retention, and prune never
//! deletes one before its date. A version-3 client would write unlocked
//! objects and try to delete locked ones, so it is refused the version.
//! Version 5 adds what an observer of the store and the index may learn:
//! the cut rule (`chunker_rule`, [`CutRule`]), the padding of sealed chunks
//! (`padding`, [`Padding`]) and `sealed_lengths` (the chunk lengths a client
//! gives the index are sealed under a key the index does not have; see
//! `cairn_client`'s `sealed_lengths` module). A version-4 client would cut,
//! pad or read lengths otherwise, so it is refused the version.

use crate::chunker::{ChunkerParams, CutRule};
use crate::crypto::{Cipher, RepoKeys};
use crate::envelope::{self, CONFIG_MAGIC};
use crate::error::FormatError;
use crate::fingerprint::HashAlgo;
use crate::id::RepoId;
use crate::pack::Padding;
use crate::store::{LockMode, ObjectLock};

/// Newest config format version (read: 1 to 5).
pub const CONFIG_VERSION: u16 = 5;

/// Default target size of a pack: 16 MiB, large enough that request costs
/// are negligible on S3, small enough that a repack moves little.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;

/// Default zstd level: level 3 compresses source code about 4x at several
/// hundred MB/s per core; higher levels cost far more CPU for a few percent.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// What a repository hides of its chunk sizes from the store and the index
/// (config version 5; `docs/SECURITY.md`, "What the store and the index
/// learn").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeProtection {
    /// How chunks are cut.
    pub rule: CutRule,
    /// How sealed chunks are padded.
    pub padding: Padding,
    /// Chunk lengths reach the index sealed.
    pub sealed_lengths: bool,
}

impl SizeProtection {
    /// The default of new repositories: cuts chosen by a keyed PRF, Padmé
    /// padding, sealed lengths (costs measured in `docs/SECURITY.md`).
    pub const DEFAULT: Self = Self {
        rule: CutRule::Prf,
        padding: Padding::Padme,
        sealed_lengths: true,
    };

    /// What repositories made before config version 5 have: keyed
    /// FastCDC, no padding, lengths in the clear.
    pub const NONE: Self = Self {
        rule: CutRule::FastCdc,
        padding: Padding::None,
        sealed_lengths: false,
    };
}

/// The config as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    /// Random repository identity.
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    /// [`HashAlgo`] discriminant.
    #[prost(uint32, tag = "2")]
    pub hash_algo: u32,
    /// Chunker minimum.
    #[prost(uint32, tag = "3")]
    pub chunk_min: u32,
    /// Chunker average.
    #[prost(uint32, tag = "4")]
    pub chunk_avg: u32,
    /// Chunker maximum.
    #[prost(uint32, tag = "5")]
    pub chunk_max: u32,
    /// Target pack size in bytes.
    #[prost(uint32, tag = "6")]
    pub pack_size: u32,
    /// zstd level for chunks.
    #[prost(int32, tag = "7")]
    pub zstd_level: i32,
    /// Creation time, Unix seconds.
    #[prost(int64, tag = "8")]
    pub created_unix: i64,
    /// [`Cipher`] discriminant (version 2; absent = XChaCha20-Poly1305).
    #[prost(uint32, tag = "9")]
    pub cipher: u32,
    /// Seed of the chunker's gear table (version 3; absent = derived from
    /// the master key).
    #[prost(bytes = "vec", tag = "10")]
    pub chunker_seed: Vec<u8>,
    /// Days of S3 Object Lock retention of every object (version 4; 0 = none).
    #[prost(uint32, tag = "11")]
    pub object_lock_days: u32,
    /// Object lock mode: 1 = governance, 2 = compliance (version 4).
    #[prost(uint32, tag = "12")]
    pub object_lock_mode: u32,
    /// [`CutRule`] discriminant (version 5; absent = FastCDC).
    #[prost(uint32, tag = "13")]
    pub chunker_rule: u32,
    /// [`Padding`] discriminant of sealed chunks (version 5; absent = none).
    #[prost(uint32, tag = "14")]
    pub padding: u32,
    /// Chunk lengths reach the index sealed (version 5).
    #[prost(bool, tag = "15")]
    pub sealed_lengths: bool,
}

/// The decoded, validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository identity.
    pub repo_id: RepoId,
    /// Fingerprint algorithm.
    pub hash: HashAlgo,
    /// Chunker bounds.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// Creation time, Unix seconds.
    pub created_unix: i64,
    /// Cipher of every object but the config.
    pub cipher: Cipher,
    /// The chunker's gear-table seed when copied from another repository;
    /// `None`: derived from the master key.
    pub chunker_seed: Option<[u8; 32]>,
    /// The object lock every object is written with (S3 only).
    pub object_lock: Option<ObjectLock>,
    /// How sealed chunks are padded.
    pub padding: Padding,
    /// The index is given chunk lengths sealed under a client key.
    pub sealed_lengths: bool,
}

impl RepoConfig {
    /// A new config with the defaults, [`SizeProtection::DEFAULT`] included.
    pub fn new(hash: HashAlgo, cipher: Cipher) -> Self {
        Self {
            repo_id: RepoId::random(),
            hash,
            cipher,
            chunker: ChunkerParams::DEFAULT,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            created_unix: crate::now_unix_nanos() / 1_000_000_000,
            chunker_seed: None,
            object_lock: None,
            padding: Padding::None,
            sealed_lengths: false,
        }
        .with_size_protection(SizeProtection::DEFAULT)
    }

    /// The same config with another [`SizeProtection`].
    pub fn with_size_protection(mut self, p: SizeProtection) -> Self {
        self.chunker.rule = p.rule;
        self.padding = p.padding;
        self.sealed_lengths = p.sealed_lengths;
        self
    }

    /// What this repository hides of chunk sizes.
    pub fn size_protection(&self) -> SizeProtection {
        SizeProtection {
            rule: self.chunker.rule,
            padding: self.padding,
            sealed_lengths: self.sealed_lengths,
        }
    }

    /// The protobuf body.
    pub fn to_record(&self) -> ConfigRecord {
        ConfigRecord {
            repo_id: self.repo_id.as_bytes().to_vec(),
            hash_algo: self.hash as u32,
            chunk_min: self.chunker.min,
            chunk_avg: self.chunker.avg,
            chunk_max: self.chunker.max,
            pack_size: self.pack_size,
            zstd_level: self.zstd_level,
            created_unix: self.created_unix,
            cipher: self.cipher as u32,
            chunker_seed: self.chunker_seed.map(|s| s.to_vec()).unwrap_or_default(),
            object_lock_days: self.object_lock.map_or(0, |l| l.days),
            object_lock_mode: match self.object_lock.map(|l| l.mode) {
                None => 0,
                Some(LockMode::Governance) => 1,
                Some(LockMode::Compliance) => 2,
            },
            chunker_rule: self.chunker.rule as u32,
            padding: self.padding as u32,
            sealed_lengths: self.sealed_lengths,
        }
    }

    /// The format version this config is written at (module docs).
    pub fn version(&self) -> u16 {
        if self.chunker.rule != CutRule::FastCdc
            || self.padding != Padding::None
            || self.sealed_lengths
        {
            return 5;
        }
        if self.object_lock.is_some() {
            return 4;
        }
        match (self.chunker_seed, self.cipher) {
            (Some(_), _) => 3,
            (None, Cipher::XChaCha20Poly1305) => 1,
            (None, Cipher::Aes256Gcm) => 2,
        }
    }

    /// Validates a decoded body.
    pub fn from_record(r: ConfigRecord) -> Result<Self, FormatError> {
        Self::from_versioned_record(CONFIG_VERSION, r)
    }

    fn from_versioned_record(version: u16, r: ConfigRecord) -> Result<Self, FormatError> {
        let corrupt = |detail: String| FormatError::Corrupt {
            what: "config",
            detail,
        };
        let repo_id = RepoId::from_slice(&r.repo_id).map_err(|e| corrupt(e.to_string()))?;
        let hash = HashAlgo::from_u32(r.hash_algo)
            .ok_or_else(|| corrupt(format!("unknown hash algorithm {}", r.hash_algo)))?;
        let v5 = version >= 5;
        let rule = match v5 {
            false => CutRule::FastCdc,
            true => CutRule::from_u32(r.chunker_rule)
                .ok_or_else(|| corrupt(format!("unknown chunker rule {}", r.chunker_rule)))?,
        };
        let padding = match v5 {
            false => Padding::None,
            true => Padding::from_u32(r.padding)
                .ok_or_else(|| corrupt(format!("unknown padding {}", r.padding)))?,
        };
        let chunker = ChunkerParams {
            min: r.chunk_min,
            avg: r.chunk_avg,
            max: r.chunk_max,
            rule,
        };
        chunker.validate().map_err(corrupt)?;
        let cipher = match version {
            1 => Cipher::XChaCha20Poly1305,
            _ => Cipher::from_u32(r.cipher)
                .ok_or_else(|| corrupt(format!("unknown cipher {}", r.cipher)))?,
        };
        let chunker_seed = match (version, r.chunker_seed.len()) {
            (1 | 2, _) | (_, 0) => None,
            (_, 32) => {
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&r.chunker_seed);
                Some(seed)
            }
            (_, n) => return Err(corrupt(format!("chunker seed of {n} bytes"))),
        };
        let object_lock = match (version, r.object_lock_days, r.object_lock_mode) {
            (1..=3, _, _) | (_, 0, _) => None,
            (_, days, 1) => Some(ObjectLock {
                mode: LockMode::Governance,
                days,
            }),
            (_, days, 2) => Some(ObjectLock {
                mode: LockMode::Compliance,
                days,
            }),
            (_, _, mode) => return Err(corrupt(format!("unknown object lock mode {mode}"))),
        };
        if r.pack_size < 1024 * 1024 {
            return Err(corrupt(format!("pack size {} is below 1 MiB", r.pack_size)));
        }
        Ok(Self {
            repo_id,
            hash,
            chunker,
            pack_size: r.pack_size,
            zstd_level: r.zstd_level,
            created_unix: r.created_unix,
            cipher,
            chunker_seed,
            object_lock,
            padding,
            sealed_lengths: v5 && r.sealed_lengths,
        })
    }

    /// Seals the config for storage (always with XChaCha20-Poly1305).
    pub fn seal(&self, keys: &RepoKeys) -> Vec<u8> {
        use prost::Message;
        envelope::seal(
            &keys.with_cipher(Cipher::XChaCha20Poly1305),
            CONFIG_MAGIC,
            self.version(),
            &self.to_record().encode_to_vec(),
        )
    }

    /// Opens a stored config.
    pub fn open(keys: &RepoKeys, bytes: &[u8]) -> Result<Self, FormatError> {
        use prost::Message;
        let (version, body) = envelope::open(
            &keys.with_cipher(Cipher::XChaCha20Poly1305),
            CONFIG_MAGIC,
            "config",
            CONFIG_VERSION,
            bytes,
        )?;
        let record =
            ConfigRecord::decode(&body[..]).map_err(|e| FormatError::from(("config", e)))?;
        Self::from_versioned_record(version, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use prost::Message;

    fn config(cipher: Cipher) -> RepoConfig {
        RepoConfig {
            repo_id: RepoId::from_slice(&[0x11; 32]).unwrap(),
            hash: HashAlgo::Blake3,
            chunker: ChunkerParams::DEFAULT,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            created_unix: 1_764_633_600,
            cipher,
            chunker_seed: None,
            object_lock: None,
            padding: Padding::None,
            sealed_lengths: false,
        }
    }

    #[test]
    fn new_repositories_protect_sizes_at_version_5() {
        let c = RepoConfig::new(HashAlgo::Blake3, Cipher::DEFAULT);
        assert_eq!(c.version(), 5);
        assert_eq!(c.chunker.rule, CutRule::Prf);
        assert_eq!(c.padding, Padding::Padme);
        assert!(c.sealed_lengths);
        assert_eq!(c.size_protection(), SizeProtection::DEFAULT);
        let old = c.with_size_protection(SizeProtection::NONE);
        assert_eq!(old.version(), 2);
    }

    #[test]
    fn seal_open_round_trip_at_the_lowest_version() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([3; 32]), Cipher::DEFAULT);
        for (cipher, version) in [(Cipher::XChaCha20Poly1305, 1u16), (Cipher::Aes256Gcm, 2)] {
            let c = config(cipher);
            let sealed = c.seal(&keys);
            assert_eq!(u16::from_le_bytes([sealed[8], sealed[9]]), version);
            // Opened with keys of either cipher: the config is always XChaCha.
            for k in [&keys, &keys.with_cipher(Cipher::XChaCha20Poly1305)] {
                assert_eq!(RepoConfig::open(k, &sealed).unwrap(), c);
            }
        }
    }

    /// Frozen: the config body of each version decodes the same forever.
    #[test]
    fn record_bytes_are_pinned() {
        let v1 = config(Cipher::XChaCha20Poly1305).to_record();
        let v2 = config(Cipher::Aes256Gcm).to_record();
        // repo_id (1), hash 1 (2), 512 KiB / 1 MiB / 8 MiB (3-5), 16 MiB
        // packs (6), zstd 3 (7), created (8); version 2 adds cipher 1 (9).
        let common = "0a20111111111111111111111111111111111111111111111111111111111111111110011880802020808040288080800430808080083803\
                      4080d8b8c906";
        assert_eq!(hex::encode(v1.encode_to_vec()), common.replace(' ', ""));
        assert_eq!(
            hex::encode(v2.encode_to_vec()),
            format!("{}4801", common.replace(' ', ""))
        );
        // A version-1 body has no cipher field: XChaCha20-Poly1305.
        let decoded = RepoConfig::from_versioned_record(1, v1).unwrap();
        assert_eq!(decoded.cipher, Cipher::XChaCha20Poly1305);
        let decoded = RepoConfig::from_versioned_record(2, v2).unwrap();
        assert_eq!(decoded.cipher, Cipher::Aes256Gcm);
        // Version 3 adds the chunker seed (10).
        let mut c3 = config(Cipher::Aes256Gcm);
        c3.chunker_seed = Some([0x22; 32]);
        assert_eq!(c3.version(), 3);
        let v3 = c3.to_record();
        assert_eq!(
            hex::encode(v3.encode_to_vec()),
            format!("{}48015220{}", common.replace(' ', ""), "22".repeat(32))
        );
        assert_eq!(RepoConfig::from_versioned_record(3, v3).unwrap(), c3);
        // Version 4 adds the object lock: 30 days (11), compliance (12).
        let mut c4 = config(Cipher::Aes256Gcm);
        c4.object_lock = Some(ObjectLock {
            mode: LockMode::Compliance,
            days: 30,
        });
        assert_eq!(c4.version(), 4);
        let v4 = c4.to_record();
        assert_eq!(
            hex::encode(v4.encode_to_vec()),
            format!("{}4801581e6002", common.replace(' ', ""))
        );
        assert_eq!(
            RepoConfig::from_versioned_record(4, v4.clone()).unwrap(),
            c4
        );
        // Read as version 3 (it cannot be: the envelope says 4), the lock
        // would be ignored; a mode beyond 2 is refused.
        let mut bad = v4;
        bad.object_lock_mode = 3;
        assert!(RepoConfig::from_versioned_record(4, bad).is_err());
        // Version 5 adds the PRF cut rule (13), Padmé (14), sealed lengths (15).
        let mut c5 = config(Cipher::Aes256Gcm);
        c5.chunker.rule = CutRule::Prf;
        c5.padding = Padding::Padme;
        c5.sealed_lengths = true;
        assert_eq!(c5.version(), 5);
        let v5 = c5.to_record();
        assert_eq!(
            hex::encode(v5.encode_to_vec()),
            format!("{}4801680170017801", common.replace(' ', ""))
        );
        assert_eq!(
            RepoConfig::from_versioned_record(5, v5.clone()).unwrap(),
            c5
        );
        // The same fields in a version-4 envelope are not read.
        let as_v4 = RepoConfig::from_versioned_record(4, v5.clone()).unwrap();
        assert_eq!(as_v4, c5.clone().with_size_protection(SizeProtection::NONE));
        for (field, value) in [("rule", 2u32), ("padding", 9)] {
            let mut bad = v5.clone();
            match field {
                "rule" => bad.chunker_rule = value,
                _ => bad.padding = value,
            }
            let err = RepoConfig::from_versioned_record(5, bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "unknown {}",
                    if field == "rule" {
                        "chunker rule 2"
                    } else {
                        "padding 9"
                    }
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_copied_chunker_seed_round_trips_at_version_3() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([3; 32]), Cipher::DEFAULT);
        for cipher in [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm] {
            let mut c = config(cipher);
            c.chunker_seed = Some([7; 32]);
            let sealed = c.seal(&keys);
            assert_eq!(u16::from_le_bytes([sealed[8], sealed[9]]), 3);
            assert_eq!(RepoConfig::open(&keys, &sealed).unwrap(), c);
        }
        let mut record = config(Cipher::Aes256Gcm).to_record();
        record.chunker_seed = vec![1; 5];
        let err = RepoConfig::from_versioned_record(3, record).unwrap_err();
        assert!(err.to_string().contains("chunker seed of 5 bytes"), "{err}");
    }

    #[test]
    fn unknown_cipher_and_version_are_refused() {
        let mut record = config(Cipher::Aes256Gcm).to_record();
        record.cipher = 9;
        let err = RepoConfig::from_versioned_record(2, record).unwrap_err();
        assert!(err.to_string().contains("unknown cipher 9"), "{err}");

        let keys = RepoKeys::derive(&MasterKey::from_bytes([3; 32]), Cipher::DEFAULT);
        let body = config(Cipher::Aes256Gcm).to_record().encode_to_vec();
        let future = envelope::seal(
            &keys.with_cipher(Cipher::XChaCha20Poly1305),
            CONFIG_MAGIC,
            6,
            &body,
        );
        assert!(matches!(
            RepoConfig::open(&keys, &future),
            Err(FormatError::UnsupportedVersion { version: 6, .. })
        ));
    }
}
