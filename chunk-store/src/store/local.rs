//! [`ObjectStore`] on a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, ObjectWriter, StoreError};

/// Prefix of temporary files; they are never listed and may be deleted.
const TEMP_PREFIX: &str = ".tmp-";

/// Objects at least this large (packs) are written with `O_DIRECT`.
const DIRECT_FROM: usize = 1 << 20;
/// Alignment of `O_DIRECT` buffers, lengths and offsets.
const DIRECT_ALIGN: usize = 4096;
/// Bytes per `O_DIRECT` write.
const DIRECT_PIECE: usize = 2 << 20;

thread_local! {
    /// The staging buffer of `O_DIRECT` writes (one piece plus alignment).
    static DIRECT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Creates `path` (which must not exist) holding `data`.
///
/// Large objects bypass the page cache: a backup writes each pack once and
/// does not read it back, and on virtual machines the buffered path (a copy
/// into freshly allocated page-cache pages) costs more CPU than everything
/// else a backup does to the same bytes — a 2 GiB backup spent 54 % of its
/// CPU there. The aligned part goes through `O_DIRECT`, straight from `data`
/// when it starts at an aligned address (packs do: see
/// `pack::PACK_BUFFER_ALIGN`), otherwise in pieces copied to an aligned
/// buffer; the tail, and everything on file systems without `O_DIRECT`
/// (tmpfs), is written the ordinary way.
fn write_new_file(path: &Path, data: &[u8]) -> io::Result<File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let direct_len = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if data.len() >= DIRECT_FROM {
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(f) => {
                if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
                    // Already aligned (packs are built so): no copy.
                    f.write_all_at(&data[..direct_len], 0)?;
                } else {
                    DIRECT_BUFFER.with_borrow_mut(|buffer| -> io::Result<()> {
                        // Allocated once per thread; reused for every pack.
                        if buffer.is_empty() {
                            buffer.resize(DIRECT_PIECE + DIRECT_ALIGN, 0);
                        }
                        let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
                        let aligned = &mut buffer[start..start + DIRECT_PIECE];
                        let mut done = 0;
                        while done < direct_len {
                            let n = (direct_len - done).min(DIRECT_PIECE);
                            aligned[..n].copy_from_slice(&data[done..done + n]);
                            f.write_all_at(&aligned[..n], done as u64)?;
                            done += n;
                        }
                        Ok(())
                    })?;
                }
                drop(f);
                // The tail through a second, ordinary descriptor; syncing
                // either one makes the whole file durable.
                let f = OpenOptions::new().write(true).open(path)?;
                f.write_all_at(&data[direct_len..], direct_len as u64)?;
                return Ok(f);
            }
            // No O_DIRECT here; the open may still have created the file.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = fs::remove_file(path);
            }
            Err(e) => return Err(e),
        }
    }
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)?;
    Ok(f)
}

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

    /// Where a new object `key` is written first: its directory (made if
    /// missing) and a fresh temporary name in it. Fails if `key` exists.
    fn temporary_for(&self, key: &str) -> Result<(PathBuf, PathBuf), StoreError> {
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
        Ok((dir, tmp))
    }

    /// Makes the temporary file `tmp` (written through `file`) the object
    /// `key`: fsync, link to the final name (create-only), fsync of the
    /// directory. The temporary name is removed whatever happens.
    fn link_into_place(
        &self,
        key: &str,
        dir: &Path,
        tmp: &Path,
        file: io::Result<File>,
    ) -> Result<(), StoreError> {
        let result = file.and_then(|f| {
            f.sync_all()?;
            drop(f);
            fs::hard_link(tmp, self.path(key))
        });
        let _ = fs::remove_file(tmp);
        match result {
            Ok(()) => File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io_err(key, e)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::AlreadyExists {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.io_err(key, e)),
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let (dir, tmp) = self.temporary_for(key)?;
        self.link_into_place(key, &dir, &tmp, write_new_file(&tmp, data))
    }

    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        use std::os::unix::fs::FileExt;
        let f = File::open(self.path(key)).map_err(|e| self.io_err(key, e))?;
        let mut buf = vec![0u8; len as usize];
        // One positioned read; the size is asked only when the object is
        // shorter than the range (trees and restores read many small ranges).
        match f.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Bytes::from(buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let size = f.metadata().map_err(|e| self.io_err(key, e))?.len();
                Err(StoreError::ShortRead {
                    location: self.location(),
                    key: key.to_string(),
                    size,
                    wanted: offset.saturating_add(len),
                })
            }
            Err(e) => Err(self.io_err(key, e)),
        }
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
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(self.io_err(&key, e)),
                    };
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs() as i64);
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                        modified,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// A new object written piece by piece into its temporary file: aligned
/// pieces through `O_DIRECT` (see [`write_new_file`] for why), the rest
/// through an ordinary descriptor.
#[derive(Debug)]
struct LocalWriter {
    store: LocalStore,
    key: String,
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    /// The same file opened with `O_DIRECT`, where the file system allows it.
    direct: Option<File>,
    written: u64,
}

impl LocalWriter {
    fn create(store: LocalStore, key: &str) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let (dir, tmp) = store.temporary_for(key)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| store.io_err(key, e))?;
        // EINVAL: no O_DIRECT on this file system (tmpfs); write ordinarily.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp)
            .ok();
        Ok(Self {
            store,
            key: key.to_string(),
            dir,
            tmp,
            file: Some(file),
            direct,
            written: 0,
        })
    }
}

impl ObjectWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let aligned = self.written.is_multiple_of(DIRECT_ALIGN as u64)
            && bytes.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        let direct_len = match &self.direct {
            Some(_) if aligned => bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN,
            _ => 0,
        };
        let result = (|| {
            if let (Some(direct), true) = (&self.direct, direct_len > 0) {
                direct.write_all_at(&bytes[..direct_len], self.written)?;
            }
            match &self.file {
                Some(f) => f.write_all_at(&bytes[direct_len..], self.written + direct_len as u64),
                None => Err(io::Error::other("written after a failure")),
            }
        })();
        match result {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // What was written is incomplete: nothing more goes in.
                self.file = None;
                Err(self.store.io_err(&self.key, e))
            }
        }
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.direct = None;
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("committed after a failed write"));
        self.store
            .link_into_place(&self.key, &self.dir, &self.tmp, file)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Committed or not, the temporary name goes (commit removed it already).
        let _ = fs::remove_file(&self.tmp);
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

    fn writer(&self, key: &str) -> Result<Option<Box<dyn ObjectWriter>>, StoreError> {
        Ok(Some(Box::new(LocalWriter::create(self.clone(), key)?)))
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

    #[test]
    fn objects_of_every_size_are_written_exactly_on_disk_and_tmpfs() {
        let sizes = [
            0,
            100,
            DIRECT_FROM - 1,
            DIRECT_FROM,
            DIRECT_FROM + 3 * DIRECT_ALIGN + 17,
            2 * DIRECT_PIECE + 5,
        ];
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in &dirs {
            for (i, size) in sizes.into_iter().enumerate() {
                // From an aligned address (packs, written without a copy)
                // and from an unaligned one (through the staging buffer).
                for skew in [0, 1] {
                    let mut buf = vec![0u8; size + DIRECT_ALIGN + 1];
                    let start = buf.as_ptr().align_offset(DIRECT_ALIGN) + skew;
                    let data = &mut buf[start..start + size];
                    for (k, b) in data.iter_mut().enumerate() {
                        *b = (k * 7 + i + skew) as u8;
                    }
                    let data = &*data;
                    let path = dir.path().join(format!("object-{size}-{skew}"));
                    write_new_file(&path, data).unwrap().sync_all().unwrap();
                    assert!(
                        fs::read(&path).unwrap() == data,
                        "{size} bytes (skew {skew}) in {:?}",
                        dir.path()
                    );
                    // Create-only, as every object write.
                    assert!(write_new_file(&path, data).is_err());
                }
            }
        }
    }

    #[tokio::test]
    async fn an_object_written_in_pieces_appears_whole_only_when_committed() {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in &dirs {
            let store = LocalStore::new(dir.path().join("repo"));
            // Two aligned pieces from an aligned address (O_DIRECT where
            // the file system has it), then an unaligned tail.
            let mut buf = vec![0u8; 2 * DIRECT_PIECE + 5000 + DIRECT_ALIGN];
            let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
            let data = &mut buf[start..start + 2 * DIRECT_PIECE + 5000];
            for (k, b) in data.iter_mut().enumerate() {
                *b = (k * 13 + k / 4096) as u8;
            }
            let data = &*data;
            let key = "packs/ab/abcd";
            let mut w = store
                .writer(key)
                .unwrap()
                .expect("the local store writes in pieces");
            w.write(&data[..DIRECT_PIECE]).unwrap();
            w.write(&data[DIRECT_PIECE..2 * DIRECT_PIECE]).unwrap();
            w.write(&data[2 * DIRECT_PIECE..]).unwrap();
            assert_eq!(
                store.head(key).await.unwrap(),
                None,
                "visible before commit"
            );
            w.commit().unwrap();
            assert!(store.get(key).await.unwrap() == data, "in {:?}", dir.path());

            // Create-only: a taken key is refused when the writer is made
            // and when a writer made before commits.
            assert!(matches!(
                store.writer(key),
                Err(StoreError::AlreadyExists { .. })
            ));
            let mut early = store.writer("packs/ab/ef").unwrap().unwrap();
            early.write(b"late").unwrap();
            store
                .put("packs/ab/ef", Bytes::from_static(b"first"))
                .await
                .unwrap();
            assert!(matches!(
                early.commit(),
                Err(StoreError::AlreadyExists { .. })
            ));
            assert_eq!(store.get("packs/ab/ef").await.unwrap(), &b"first"[..]);

            // A writer dropped uncommitted (a failed backup) leaves nothing.
            let mut dropped = store.writer("packs/ab/0123").unwrap().unwrap();
            dropped.write(&data[..DIRECT_PIECE]).unwrap();
            drop(dropped);
            assert_eq!(store.head("packs/ab/0123").await.unwrap(), None);
            let mut names: Vec<String> = fs::read_dir(dir.path().join("repo/packs/ab"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["abcd", "ef"], "temporary files left");
        }
    }

    #[tokio::test]
    async fn local_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        crate::store::conformance::conformance_suite(&store).await;
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("repo/packs/cd"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }
}
