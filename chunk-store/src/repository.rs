//! An opened repository: store, config and keys together.

use std::sync::Arc;

use bytes::Bytes;

use crate::chunker::{Chunker, ChunkerParams};
use crate::config::RepoConfig;
use crate::crypto::{Cipher, MasterKey, RepoKeys};
use crate::error::{FormatError, RepoError};
use crate::fingerprint::{Fingerprinter, HashAlgo};
use crate::id::{ChunkId, KeyId, PackId, SnapshotId};
use crate::keys::{self, KdfParams};
use crate::manifest::{Snapshot, manifest_key};
use crate::pack::{self, BlobLocation, FOOTER_LEN, PackBody, PackEntry, pack_key};
use crate::store::{ObjectStore, ObjectWriter, StoreError};

/// Object key of the config.
pub const CONFIG_KEY: &str = "config";

/// Options of `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Fingerprint algorithm.
    pub hash: HashAlgo,
    /// Cipher of the repository's objects.
    pub cipher: Cipher,
    /// Argon2id cost of the first key.
    pub kdf: KdfParams,
    /// Host recorded in the key file.
    pub host: String,
    /// User recorded in the key file.
    pub user: String,
    /// The chunker bounds and gear-table seed of another repository
    /// ([`Repository::chunker_params`]), so that both cut data alike;
    /// `None`: the defaults and a seed derived from the new master key.
    pub chunker: Option<(ChunkerParams, [u8; 32])>,
    /// Write every object under this S3 Object Lock (S3 stores only).
    pub object_lock: Option<crate::store::ObjectLock>,
    /// What the repository hides of chunk sizes; the cut rule of a copied
    /// `chunker` wins over this one's.
    pub sizes: crate::config::SizeProtection,
}

/// A key file as listed by `cairn key list`.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Key id.
    pub id: KeyId,
    /// Creation time, Unix seconds.
    pub created_unix: i64,
    /// Host that created it.
    pub host: String,
    /// User that created it.
    pub user: String,
    /// True for the key that opened this session.
    pub current: bool,
}

/// Manifests read at once when listing snapshots.
pub const MANIFEST_READS: usize = 16;

/// An open repository. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    config: RepoConfig,
    keys: Arc<RepoKeys>,
    master: MasterKey,
    key_id: KeyId,
    fingerprinter: Fingerprinter,
    chunker: Arc<Chunker>,
}

impl Repository {
    /// Creates a repository in an empty location.
    pub async fn init(
        store: Arc<dyn ObjectStore>,
        password: &[u8],
        options: InitOptions,
    ) -> Result<Self, RepoError> {
        if store.exists(CONFIG_KEY).await? {
            return Err(RepoError::AlreadyExists {
                location: store.location(),
            });
        }
        let master = MasterKey::generate();
        let keys = RepoKeys::derive(&master, options.cipher);
        let mut config =
            RepoConfig::new(options.hash, options.cipher).with_size_protection(options.sizes);
        if let Some((params, seed)) = options.chunker {
            config.chunker = params;
            config.chunker_seed = Some(seed);
        }
        if let Some(lock) = options.object_lock {
            // Before the first write: the key file and the config are locked too.
            store.set_object_lock(lock)?;
            config.object_lock = Some(lock);
        }
        let key_id = KeyId::random();
        let key_file = keys::wrap(&master, password, options.kdf, &options.host, &options.user)
            .map_err(|source| format_err(&*store, "key file", source))?;
        // The key first: a config without a key would be unreadable forever.
        store
            .put(&format!("keys/{key_id}"), Bytes::from(key_file))
            .await?;
        match store.put(CONFIG_KEY, Bytes::from(config.seal(&keys))).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                let _ = store.delete(&format!("keys/{key_id}")).await;
                return Err(RepoError::AlreadyExists {
                    location: store.location(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Self::assemble(store, config, keys, master, key_id))
    }

    /// Opens a repository with a password.
    pub async fn open(store: Arc<dyn ObjectStore>, password: &[u8]) -> Result<Self, RepoError> {
        let config_bytes = match store.get(CONFIG_KEY).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(RepoError::NotFound {
                    location: store.location(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let (master, key_id) = unlock(&*store, password).await?;
        // The config names the cipher of everything else.
        let keys = RepoKeys::derive(&master, Cipher::XChaCha20Poly1305);
        let config = RepoConfig::open(&keys, &config_bytes)
            .map_err(|source| format_err(&*store, CONFIG_KEY, source))?;
        let keys = keys.with_cipher(config.cipher);
        if let Some(lock) = config.object_lock {
            store.set_object_lock(lock)?;
        }
        Ok(Self::assemble(store, config, keys, master, key_id))
    }

    fn assemble(
        store: Arc<dyn ObjectStore>,
        config: RepoConfig,
        keys: RepoKeys,
        master: MasterKey,
        key_id: KeyId,
    ) -> Self {
        let fingerprinter = Fingerprinter::new(config.hash, *keys.fingerprint_key());
        let seed = config.chunker_seed.as_ref().unwrap_or(keys.chunker_key());
        let chunker = Arc::new(Chunker::new(config.chunker, seed));
        Self {
            store,
            config,
            keys: Arc::new(keys),
            master,
            key_id,
            fingerprinter,
            chunker,
        }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The chunker's bounds and gear-table seed: what another repository
    /// needs to cut data at the same places (`init
    /// --copy-chunker-params-from`). As secret as the keys.
    pub fn chunker_params(&self) -> (ChunkerParams, [u8; 32]) {
        let seed = self.config.chunker_seed.unwrap_or(*self.keys.chunker_key());
        (self.config.chunker, seed)
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The working keys.
    pub fn keys(&self) -> &RepoKeys {
        &self.keys
    }

    /// The fingerprinter.
    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.fingerprinter
    }

    /// Compresses one chunk (when that helps) and marks it for padding, as
    /// this repository's config says: the blob a pack writer seals.
    pub fn prepare_blob(
        &self,
        id: crate::ChunkId,
        kind: crate::pack::BlobKind,
        plaintext: bytes::Bytes,
    ) -> crate::pack::PreparedBlob {
        crate::pack::prepare_blob(
            id,
            kind,
            plaintext,
            self.config.zstd_level,
            self.config.padding,
        )
    }

    /// The chunker.
    pub fn chunker(&self) -> &Arc<Chunker> {
        &self.chunker
    }

    /// Where the repository lives, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }

    // ---- keys ----

    /// Adds a key file for another password.
    pub async fn add_key(
        &self,
        password: &[u8],
        kdf: KdfParams,
        host: &str,
        user: &str,
    ) -> Result<KeyId, RepoError> {
        let id = KeyId::random();
        let file = keys::wrap(&self.master, password, kdf, host, user)
            .map_err(|source| format_err(&*self.store, "key file", source))?;
        self.store
            .put(&format!("keys/{id}"), Bytes::from(file))
            .await?;
        Ok(id)
    }

    /// Lists key files.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, RepoError> {
        let mut out = Vec::new();
        for obj in self.store.list("keys/").await? {
            let Some(Ok(id)) = obj.key.strip_prefix("keys/").map(str::parse::<KeyId>) else {
                continue;
            };
            let bytes = self.store.get(&obj.key).await?;
            let rec = keys::decode(&bytes)
                .map_err(|source| format_err(&*self.store, &obj.key, source))?;
            out.push(KeyInfo {
                id,
                created_unix: rec.created_unix,
                host: rec.host,
                user: rec.user,
                current: id == self.key_id,
            });
        }
        out.sort_by_key(|k| (k.created_unix, k.id));
        Ok(out)
    }

    /// Removes a key file; the current key and the last key cannot be removed.
    pub async fn remove_key(&self, id: &KeyId) -> Result<(), RepoError> {
        let keys = self.list_keys().await?;
        if !keys.iter().any(|k| k.id == *id) {
            return Err(RepoError::Invalid(format!(
                "no key {id} in {}",
                self.location()
            )));
        }
        if *id == self.key_id {
            return Err(RepoError::Invalid(
                "refusing to remove the key that opened the repository; open it with another password first"
                    .into(),
            ));
        }
        self.store.delete(&format!("keys/{id}")).await?;
        Ok(())
    }

    /// Replaces the current password: adds a key for `new`, then removes the old key.
    pub async fn change_password(
        &self,
        new: &[u8],
        kdf: KdfParams,
        host: &str,
        user: &str,
    ) -> Result<KeyId, RepoError> {
        let id = self.add_key(new, kdf, host, user).await?;
        self.store.delete(&format!("keys/{}", self.key_id)).await?;
        Ok(id)
    }

    // ---- snapshots ----

    /// Stores a manifest (create-only) and returns its id.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, RepoError> {
        let (id, bytes) = self.seal_snapshot(snapshot);
        self.put_sealed_snapshot(&id, bytes).await?;
        Ok(id)
    }

    /// A manifest sealed but not yet stored, with its id (a backup asks the
    /// index for permission to write it first).
    pub fn seal_snapshot(&self, snapshot: &Snapshot) -> (SnapshotId, Vec<u8>) {
        snapshot.seal(&self.keys, self.keys.fingerprint_key())
    }

    /// Stores a manifest sealed by [`Self::seal_snapshot`] (create-only).
    pub async fn put_sealed_snapshot(
        &self,
        id: &SnapshotId,
        bytes: Vec<u8>,
    ) -> Result<(), RepoError> {
        match self.store.put(&manifest_key(id), Bytes::from(bytes)).await {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ids of all snapshots.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, RepoError> {
        Ok(self
            .store
            .list("manifests/")
            .await?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix("manifests/")
                    .and_then(|s| s.parse().ok())
            })
            .collect())
    }

    /// Loads one snapshot.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        let key = manifest_key(id);
        let bytes = self.store.get(&key).await?;
        Snapshot::open(&self.keys, &bytes).map_err(|source| format_err(&*self.store, &key, source))
    }

    /// All snapshots, oldest first. A snapshot removed between the listing
    /// and its reading (`forget` running meanwhile) is left out.
    ///
    /// Manifests are read [`MANIFEST_READS`] at a time, so against a store
    /// with a long round trip the listing costs a few round trips, not one
    /// per snapshot.
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(MANIFEST_READS));
        let mut reads = tokio::task::JoinSet::new();
        for id in self.snapshot_ids().await? {
            let (repo, limit) = (self.clone(), limit.clone());
            reads.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (id, repo.load_snapshot(&id).await)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = reads.join_next().await {
            let (id, loaded) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            match loaded {
                Ok(s) => out.push((id, s)),
                Err(RepoError::Store(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        Ok(out)
    }

    /// Resolves a full id, a unique prefix, or `latest`.
    pub async fn resolve_snapshot(&self, reference: &str) -> Result<SnapshotId, RepoError> {
        if reference == "latest" {
            return self
                .snapshots()
                .await?
                .last()
                .map(|(id, _)| *id)
                .ok_or_else(|| {
                    RepoError::SnapshotRef(format!("no snapshots in {}", self.location()))
                });
        }
        let reference = reference.to_ascii_lowercase();
        if reference.is_empty() || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(RepoError::SnapshotRef(format!(
                "invalid snapshot reference {reference:?} (expected an id, an id prefix, or `latest`)"
            )));
        }
        let matches: Vec<SnapshotId> = self
            .snapshot_ids()
            .await?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&reference))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(RepoError::SnapshotRef(format!(
                "no snapshot matches {reference:?} in {}",
                self.location()
            ))),
            many => Err(RepoError::SnapshotRef(format!(
                "snapshot prefix {reference:?} is ambiguous: it matches {} snapshots",
                many.len()
            ))),
        }
    }

    // ---- packs ----

    /// Where a new pack's bytes can be written as it fills
    /// ([`pack::PackWriter::spooled_in`]), if the store takes objects in
    /// pieces. Blocking.
    pub fn pack_writer(&self, id: &PackId) -> Result<Option<Box<dyn ObjectWriter>>, RepoError> {
        Ok(self.store.writer(&pack_key(id))?)
    }

    /// Stores a finished pack (create-only): puts it, or commits what its
    /// writer wrote.
    pub async fn put_pack(&self, id: &PackId, body: PackBody) -> Result<(), RepoError> {
        match body {
            PackBody::Memory(bytes) => self.store.put(&pack_key(id), bytes).await?,
            PackBody::Written { out, .. } => tokio::task::spawn_blocking(move || out.commit())
                .await
                .map_err(|e| StoreError::Io {
                    location: self.location(),
                    key: pack_key(id),
                    source: std::io::Error::other(e.to_string()),
                })??,
        }
        Ok(())
    }

    /// Reads a pack's trailer using two ranged reads at most.
    pub async fn read_pack_trailer(
        &self,
        id: &PackId,
        size: Option<u64>,
    ) -> Result<Vec<PackEntry>, RepoError> {
        let key = pack_key(id);
        let size = match size {
            Some(s) => s,
            None => self
                .store
                .head(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    location: self.location(),
                    key: key.clone(),
                })?,
        };
        let bad = |source| format_err(&*self.store, &key, source);
        if size < FOOTER_LEN as u64 {
            return Err(bad(FormatError::BadMagic { what: "pack" }));
        }
        // Most trailers fit in the last 64 KiB: read that in one request.
        let tail_len = size.min(64 * 1024);
        let tail = self
            .store
            .get_range(&key, size - tail_len, tail_len)
            .await?;
        let footer = &tail[tail.len() - FOOTER_LEN..];
        let trailer_len = u64::from(pack::parse_footer(footer, size).map_err(bad)?);
        let trailer_start = size - FOOTER_LEN as u64 - trailer_len;
        let sealed = if trailer_len + FOOTER_LEN as u64 <= tail_len {
            let from = (tail_len - FOOTER_LEN as u64 - trailer_len) as usize;
            tail.slice(from..tail.len() - FOOTER_LEN)
        } else {
            self.store
                .get_range(&key, trailer_start, trailer_len)
                .await?
        };
        pack::parse_trailer(&self.keys, *id, &sealed, trailer_start).map_err(bad)
    }

    /// Reads, decrypts and verifies one chunk.
    pub async fn read_blob(
        &self,
        id: &ChunkId,
        location: &BlobLocation,
    ) -> Result<Vec<u8>, RepoError> {
        let key = pack_key(&location.pack);
        let sealed = self
            .store
            .get_range(&key, location.offset, u64::from(location.stored_len))
            .await?;
        self.open_blob(id, location, &sealed)
    }

    /// Decrypts and verifies one sealed chunk already in memory.
    pub fn open_blob(
        &self,
        id: &ChunkId,
        location: &BlobLocation,
        sealed: &[u8],
    ) -> Result<Vec<u8>, RepoError> {
        pack::open_blob(&self.keys, &self.fingerprinter, id, location, sealed).map_err(|source| {
            match source {
                FormatError::Corrupt { ref detail, .. } if detail.contains("fingerprint") => {
                    RepoError::HashMismatch {
                        chunk: id.to_hex(),
                        pack: location.pack.to_hex(),
                        location: self.location(),
                    }
                }
                source => RepoError::Format {
                    object: format!("chunk {} in {}", id, pack_key(&location.pack)),
                    location: self.location(),
                    source,
                },
            }
        })
    }

    /// All pack ids with their sizes.
    pub async fn list_packs(&self) -> Result<Vec<(PackId, u64)>, RepoError> {
        Ok(self
            .store
            .list("packs/")
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                Some((name.parse().ok()?, o.size))
            })
            .collect())
    }
}

async fn unlock(store: &dyn ObjectStore, password: &[u8]) -> Result<(MasterKey, KeyId), RepoError> {
    let mut any = false;
    for obj in store.list("keys/").await? {
        let Some(Ok(id)) = obj.key.strip_prefix("keys/").map(str::parse::<KeyId>) else {
            continue;
        };
        any = true;
        let bytes = store.get(&obj.key).await?;
        match keys::unwrap(&bytes, password) {
            Ok(Some(master)) => return Ok((master, id)),
            Ok(None) => {}
            // A damaged key file must not stop another key from working.
            Err(_) => {}
        }
    }
    if !any {
        return Err(RepoError::Invalid(format!(
            "{}: repository has no key files (keys/ is empty or unreadable)",
            store.location()
        )));
    }
    Err(RepoError::WrongPassword {
        location: store.location(),
    })
}

fn format_err(store: &dyn ObjectStore, object: &str, source: FormatError) -> RepoError {
    RepoError::Format {
        object: object.to_string(),
        location: store.location(),
        source,
    }
}
