//! Tree packs kept on the client.
//!
//! A backup reads the trees of its parent before it walks, and restore, `ls`
//! and `find` read the trees of a snapshot. Preloading makes that one index
//! call and one store read per level of the tree, but a level still waits
//! for both: against S3 or an index cluster across a network, the depth of
//! the tree times two round trips. The trees a client wrote are the ones its
//! next backup reads, so the packer keeps a copy of every tree pack it
//! stores, byte for byte, in `$XDG_CACHE_HOME/cairn/trees/<repository id>/`.
//! The copy is a pack (its format is the store's, versioned there), so its
//! own trailer says where each tree is, and no index is asked.
//!
//! Nothing in the cache is trusted. A tree read from it is opened with the
//! repository keys and checked against its keyed fingerprint, exactly as one
//! read from the store; a pack that fails either is deleted from the cache
//! and the tree is read from the store. Trees are content-addressed, so the
//! copy of a pack that prune has since repacked or deleted still holds the
//! right bytes for every id in it; a stale copy costs only space. The cache
//! keeps at most [`MAX_BYTES`]; the packs written longest ago go first.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_chunk_store::pack::{self, BlobKind, BlobLocation};
use cairn_chunk_store::{ChunkId, PackId, Repository};

/// Bytes of tree packs a repository's cache holds at most (trees only are
/// read from it, and only when asked for, so its size costs disk, not
/// memory).
pub const MAX_BYTES: u64 = 256 << 20;

/// The tree packs of one repository on this client.
#[derive(Debug, Clone)]
pub struct TreeCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// The trees of every cached pack, read once.
#[derive(Debug, Default)]
pub struct CachedTrees {
    packs: Vec<(PathBuf, fs::File)>,
    trees: HashMap<ChunkId, (usize, BlobLocation)>,
}

impl TreeCache {
    /// The cache of `repo` under the client's cache directory, or `None`
    /// when there is no cache directory (no `$HOME`).
    pub fn for_repo(repo: &Repository) -> Option<Self> {
        let root = crate::paths::cache_dir()?;
        let dir = root.join("trees").join(repo.config().repo_id.to_hex());
        Some(Self::at(dir, MAX_BYTES))
    }

    /// A cache in `dir` holding at most `max_bytes`.
    pub fn at(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// Keeps a copy of tree pack `id`, then trims the cache to its bound.
    /// Best effort: a cache that cannot be written costs speed, not the
    /// backup.
    pub fn keep(&self, id: &PackId, bytes: &[u8]) {
        if let Err(e) = self.write(id, bytes) {
            tracing::debug!("tree cache {}: {e}", self.dir.display());
            return;
        }
        self.trim();
    }

    fn write(&self, id: &PackId, bytes: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{}.pack", id.to_hex()));
        let tmp = self.dir.join(format!(".{}.tmp", id.to_hex()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// Deletes the packs written longest ago until the cache fits its bound.
    fn trim(&self) {
        let mut packs = self.files();
        let mut total: u64 = packs.iter().map(|(_, len, _)| len).sum();
        packs.sort_by_key(|(_, _, modified)| *modified);
        for (path, len, _) in packs {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// The cached pack files: path, length, modification time.
    fn files(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".pack")))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((e.path(), meta.len(), meta.modified().ok()?))
            })
            .collect()
    }

    /// Reads every cached pack's trailer (not its trees: those are read
    /// when asked for). A pack whose name is not its id, or whose trailer
    /// does not open under the repository's keys, is deleted.
    pub fn load(&self, repo: &Repository) -> CachedTrees {
        let mut out = CachedTrees::default();
        for (path, len, _) in self.files() {
            let opened = pack_id(&path).and_then(|id| {
                let file = fs::File::open(&path).ok()?;
                let entries = read_trailer(repo, id, &file, len)?;
                Some((file, entries))
            });
            let Some((file, entries)) = opened else {
                discard(&path);
                continue;
            };
            let n = out.packs.len();
            for e in entries {
                if e.location.kind == BlobKind::Tree {
                    out.trees.entry(e.id).or_insert((n, e.location));
                }
            }
            out.packs.push((path, file));
        }
        out
    }
}

/// The entries of the pack in `file`, `len` bytes long, named `id`.
fn read_trailer(
    repo: &Repository,
    id: PackId,
    file: &fs::File,
    len: u64,
) -> Option<Vec<cairn_chunk_store::pack::PackEntry>> {
    let mut footer = [0u8; pack::FOOTER_LEN];
    file.read_exact_at(&mut footer, len.checked_sub(pack::FOOTER_LEN as u64)?)
        .ok()?;
    let trailer_len = u64::from(pack::parse_footer(&footer, len).ok()?);
    let data_len = len - pack::FOOTER_LEN as u64 - trailer_len;
    let mut sealed = vec![0u8; trailer_len as usize];
    file.read_exact_at(&mut sealed, data_len).ok()?;
    pack::parse_trailer(repo.keys(), id, &sealed, data_len).ok()
}

impl CachedTrees {
    /// Trees the cache holds.
    pub fn len(&self) -> usize {
        self.trees.len()
    }

    /// True when the cache holds no tree.
    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
    }

    /// The plaintext of tree `id`, verified against its id, if the cache
    /// holds it. A pack holding a tree that fails verification is deleted
    /// from the disk (the caller reads the tree from the store).
    pub fn read(&self, repo: &Repository, id: &ChunkId) -> Option<Vec<u8>> {
        let (n, loc) = self.trees.get(id)?;
        let (path, file) = &self.packs[*n];
        let mut sealed = vec![0u8; loc.stored_len as usize];
        let verified = file
            .read_exact_at(&mut sealed, loc.offset)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(repo.open_blob(id, loc, &sealed)?));
        match verified {
            Ok(plain) => Some(plain),
            Err(e) => {
                tracing::debug!("tree cache {}: {e:#}", path.display());
                discard(path);
                None
            }
        }
    }
}

fn discard(path: &Path) {
    let _ = fs::remove_file(path);
}

/// The pack id a cache file is named after.
fn pack_id(path: &Path) -> Option<PackId> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".pack")?;
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use cairn_chunk_store::crypto::Cipher;
    use cairn_chunk_store::fingerprint::HashAlgo;
    use cairn_chunk_store::keys::KdfParams;
    use cairn_chunk_store::pack::{PackBody, PackWriter, Padding, prepare_blob};
    use cairn_chunk_store::repository::InitOptions;
    use cairn_chunk_store::store::LocalStore;

    use super::*;

    fn repo(dir: &Path) -> Repository {
        let options = InitOptions {
            hash: HashAlgo::Blake3,
            cipher: Cipher::DEFAULT,
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            host: "h".into(),
            user: "u".into(),
            chunker: None,
            object_lock: None,
            sizes: cairn_chunk_store::config::SizeProtection::DEFAULT,
        };
        let store = Arc::new(LocalStore::new(dir.join("repo")));
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(Repository::init(store, b"pw", options))
            .expect("init")
    }

    /// A tree pack holding `trees`: its id, its bytes and the trees' ids.
    fn tree_pack(repo: &Repository, trees: &[&[u8]]) -> (PackId, Bytes, Vec<ChunkId>) {
        let mut writer = PackWriter::new(BlobKind::Tree, 1 << 16);
        let mut ids = Vec::new();
        for plain in trees {
            let id = repo.fingerprinter().chunk_id(plain);
            writer.seal(
                repo.keys(),
                &prepare_blob(
                    id,
                    BlobKind::Tree,
                    Bytes::copy_from_slice(plain),
                    3,
                    Padding::None,
                ),
            );
            ids.push(id);
        }
        match writer.finish(repo.keys()).unwrap() {
            (id, PackBody::Memory(bytes), _) => (id, bytes, ids),
            (_, body, _) => panic!("a pack without a spool came back as {body:?}"),
        }
    }

    #[test]
    fn kept_trees_read_back_verified_and_a_tampered_pack_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let cache = TreeCache::at(dir.path().join("cache"), MAX_BYTES);
        let (pack, bytes, ids) = tree_pack(&repo, &[b"first tree", b"second tree"]);
        cache.keep(&pack, &bytes);

        let loaded = cache.load(&repo);
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded.read(&repo, &ids[0]).as_deref(),
            Some(&b"first tree"[..])
        );
        assert_eq!(
            loaded.read(&repo, &ids[1]).as_deref(),
            Some(&b"second tree"[..])
        );
        assert_eq!(loaded.read(&repo, &ChunkId::from_bytes([1; 32])), None);

        // One flipped byte in the first tree: it is refused, and the pack
        // leaves the cache.
        let path = dir
            .path()
            .join("cache")
            .join(format!("{}.pack", pack.to_hex()));
        let mut tampered = bytes.to_vec();
        tampered[3] ^= 1;
        fs::write(&path, &tampered).unwrap();
        let loaded = cache.load(&repo);
        assert_eq!(loaded.len(), 2, "the trailer is intact");
        assert_eq!(loaded.read(&repo, &ids[0]), None);
        assert!(!path.exists());
        assert!(cache.load(&repo).is_empty());
    }

    #[test]
    fn packs_of_another_repository_or_misnamed_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (repo(&dir.path().join("a")), repo(&dir.path().join("b")));
        let cache = TreeCache::at(dir.path().join("cache"), MAX_BYTES);
        let (pack, bytes, _) = tree_pack(&theirs, &[b"a tree of theirs"]);
        cache.keep(&pack, &bytes);
        let (_, bytes, _) = tree_pack(&ours, &[b"our tree"]);
        fs::write(dir.path().join("cache/not-an-id.pack"), &bytes).unwrap();

        assert!(cache.load(&ours).is_empty());
        assert_eq!(cache.files().len(), 0, "both files were deleted");
    }

    #[test]
    fn the_oldest_packs_go_when_the_cache_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let packs: Vec<_> = (0..3u8)
            .map(|n| tree_pack(&repo, &[&[n; 2000][..]]))
            .collect();
        let one = packs[0].1.len() as u64;
        let cache = TreeCache::at(dir.path().join("cache"), 2 * one + one / 2);
        for (n, (pack, bytes, _)) in packs.iter().enumerate() {
            cache.keep(pack, bytes);
            // Distinct modification times, oldest first.
            let path = dir.path().join(format!("cache/{}.pack", pack.to_hex()));
            let time = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(n as u64);
            if let Ok(f) = fs::File::options().write(true).open(path) {
                f.set_modified(time).unwrap();
            }
        }
        let loaded = cache.load(&repo);
        assert_eq!(loaded.len(), 2);
        assert!(loaded.read(&repo, &packs[0].2[0]).is_none());
        assert!(loaded.read(&repo, &packs[2].2[0]).is_some());
    }
}
