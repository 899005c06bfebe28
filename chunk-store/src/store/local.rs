//! [`ObjectStore`] on a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, StoreError};

/// Prefix of temporary files; they are never listed and may be deleted.
const TEMP_PREFIX: &str = ".tmp-";

/// A repository in a directory.
///
/// Writes go to `.tmp-<random>` in the destination directory, are fsynced,
/// then hard-linked to their final name — `link(2)` fails with `EEXIST`
/// rather than replacing, which makes the write create-only and atomic — and
/// the directory is fsynced so the name survives a crash.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io_err(&self, key: &str, source: io::Error) -> StoreError {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            }
        } else {
            StoreError::Io {
                location: self.location(),
                key: key.to_string(),
                source,
            }
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.path(key);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| self.io_err(key, e))?;
        if dest.exists() {
            return Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            });
        }
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}",
            hex::encode(crate::crypto::random_bytes::<8>())
        ));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::hard_link(&tmp, &dest)?;
            Ok(())
        })();
        // The temporary name is removed whether or not the link succeeded.
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| self.io_err(key, e))?;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.io_err(key, e)),
        }
    }

    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let mut f = File::open(self.path(key)).map_err(|e| self.io_err(key, e))?;
        let size = f.metadata().map_err(|e| self.io_err(key, e))?.len();
        if offset.saturating_add(len) > size {
            return Err(StoreError::ShortRead {
                location: self.location(),
                key: key.to_string(),
                size,
                wanted: offset.saturating_add(len),
            });
        }
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.io_err(key, e))?;
        f.read_exact(&mut buf).map_err(|e| self.io_err(key, e))?;
        Ok(Bytes::from(buf))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // Walk only the directory that the prefix names (e.g. `packs/`).
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = self.path(dir_part);
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err(prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_err(prefix, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| self.io_err(prefix, e))?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if ft.is_dir() {
                    // The index directory is not part of the object namespace.
                    if dir == self.root && name == "index" {
                        continue;
                    }
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.is_empty()
                    {
                        stack.push(path);
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    // An object deleted since the directory was read is simply
                    // not listed: a listing races with deletes (forget, prune).
                    let size = match entry.metadata() {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(self.io_err(&key, e)),
                    };
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        Ok(out)
    }
}

/// Runs blocking filesystem work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            location: String::new(),
            key: String::new(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.put_blocking(&key, &data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            fs::read(this.path(&key))
                .map(Bytes::from)
                .map_err(|e| this.io_err(&key, e))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.get_range_blocking(&key, offset, len)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        crate::store::conformance_suite(&store).await;
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("repo/packs/cd"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }
}
