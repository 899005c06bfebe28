//! Listing the sources while the repository opens.
//!
//! Opening a repository derives its key with Argon2id, a fifth of a second
//! of one core by design, and the other cores wait. Reading directories and
//! `lstat`-ing their entries needs no key, and it is most of what a backup
//! of unchanged files does: an [`EarlyListing`] reads the sources meanwhile,
//! depth first in name order like the walker, and the walker takes each
//! directory it finds there instead of reading it again.
//!
//! What it reads is what the walker would read: the same exclude rules
//! (markers of `--exclude-if-present` are the walker's to check), the same
//! device rule. It stops when the walk begins ([`EarlyListing::stop`]) or
//! after [`EARLY_ENTRIES`] entries, so its memory is bounded; a directory it
//! could not read whole is left to the walker, which reports the error.
//! The snapshot records each entry as it was when it was read, a moment
//! earlier than without it: a backup of a changing tree never was one
//! instant.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::excludes::Excludes;
use crate::fsmeta::Stat;

/// Entries read ahead at most (about 130 bytes each with their names).
/// Measured on a kernel tree: 65,536 held an unchanged re-backup at
/// 100 MB resident, this at 98 MB, without a difference in time that the
/// noise of the machine showed.
pub const EARLY_ENTRIES: usize = 40_960;

/// A directory's entries in name order, without the excluded ones, each
/// with its metadata or the error reading it.
pub type Entries = Vec<(OsString, io::Result<Stat>)>;

/// Reads the entries of directory `path`. An entry the directory stream
/// cannot return is passed to `skipped` (the others are still read).
pub fn read_entries(
    path: &Path,
    excludes: &Excludes,
    skipped: &mut dyn FnMut(io::Error),
) -> io::Result<Entries> {
    let mut items = Vec::new();
    for item in std::fs::read_dir(path)? {
        match item {
            Ok(item) => items.push((item.file_name(), item)),
            Err(e) => skipped(e),
        }
    }
    items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(items
        .into_iter()
        .filter(|(name, _)| !excludes.excluded(path, name))
        // Relative to the open directory (statx on its descriptor, without
        // following a symlink): the kernel does not walk the whole path
        // again for every entry.
        .map(|(name, item)| (name, item.metadata().map(|m| Stat::from(&m))))
        .collect())
}

/// The sources' directories read by a thread of their own until the walk
/// begins.
pub struct EarlyListing {
    shared: Arc<Listed>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Listed {
    dirs: Mutex<HashMap<PathBuf, Entries>>,
    stop: AtomicBool,
    taken: AtomicU64,
}

impl std::fmt::Debug for EarlyListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyListing")
            .field("taken", &self.taken())
            .finish_non_exhaustive()
    }
}

impl EarlyListing {
    /// Starts reading `paths` (as given to the backup) with `excludes`.
    pub fn start(paths: &[PathBuf], excludes: &Excludes) -> Self {
        // The walker's spelling of each source: absolute, one component at
        // a time (see `walk::SourceTrie`).
        let sources: Vec<PathBuf> = paths
            .iter()
            .filter_map(|p| std::path::absolute(p).ok())
            .map(|p| p.components().collect())
            .collect();
        let shared = Arc::new(Listed::default());
        let thread = {
            let (shared, excludes) = (shared.clone(), excludes.clone());
            std::thread::Builder::new()
                .name("list-early".into())
                .spawn(move || list(&sources, &excludes, &shared, EARLY_ENTRIES))
                .ok()
        };
        Self {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Stops reading and waits for the thread; what was read stays to be
    /// taken.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wait();
    }

    /// Waits until everything within the budget is read (or it stopped).
    pub fn wait(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The entries of `dir`, if they were read (once: they are handed over).
    pub fn take(&self, dir: &Path) -> Option<Entries> {
        let entries = self
            .shared
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dir)?;
        self.shared.taken.fetch_add(1, Ordering::Relaxed);
        Some(entries)
    }

    /// Directories taken so far.
    pub fn taken(&self) -> u64 {
        self.shared.taken.load(Ordering::Relaxed)
    }
}

impl Drop for EarlyListing {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the directories below `sources`, depth first in name order, until
/// stopped or `budget` entries were read.
fn list(sources: &[PathBuf], excludes: &Excludes, listed: &Listed, mut budget: usize) {
    for source in sources {
        let Ok(meta) = source.symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let root_dev = meta.dev();
        let mut stack = vec![source.clone()];
        while let Some(dir) = stack.pop() {
            if listed.stop.load(Ordering::Acquire) {
                return;
            }
            let mut whole = true;
            let Ok(entries) = read_entries(&dir, excludes, &mut |_| whole = false) else {
                continue;
            };
            if !whole || entries.iter().any(|(_, m)| m.is_err()) {
                continue;
            }
            if entries.len() > budget {
                return;
            }
            budget -= entries.len();
            let below = entries
                .iter()
                .rev()
                .filter(|(_, m)| {
                    m.as_ref().is_ok_and(|m| {
                        m.is_dir() && !(excludes.one_file_system && m.device != root_dev)
                    })
                })
                .map(|(name, _)| dir.join(name));
            stack.extend(below);
            listed
                .dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(dir, entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &Entries) -> Vec<String> {
        entries
            .iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect()
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["src/b", "src/a/deep", "src/skip.tmp", "src/c"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in [
            "src/z",
            "src/b/1",
            "src/a/deep/2",
            "src/skip.tmp/3",
            "src/x.tmp",
        ] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        dir
    }

    #[test]
    fn reads_what_the_walker_would_in_name_order() {
        let dir = tree();
        let src = dir.path().join("src");
        let excludes = Excludes::new(&["*.tmp".into()], &[], &[], false).unwrap();
        let listed = Listed::default();
        list(std::slice::from_ref(&src), &excludes, &listed, 100);
        let mut dirs = listed.dirs.into_inner().unwrap();
        let root = dirs.remove(&src).unwrap();
        assert_eq!(names(&root), ["a", "b", "c", "z"]);
        assert!(root.iter().all(|(_, m)| m.is_ok()));
        assert_eq!(names(&dirs.remove(&src.join("a")).unwrap()), ["deep"]);
        assert_eq!(names(&dirs.remove(&src.join("a/deep")).unwrap()), ["2"]);
        assert_eq!(names(&dirs.remove(&src.join("b")).unwrap()), ["1"]);
        assert!(dirs.remove(&src.join("c")).unwrap().is_empty());
        // The excluded directory was not read.
        assert!(dirs.is_empty(), "{:?}", dirs.keys().collect::<Vec<_>>());
    }

    #[test]
    fn stops_before_the_budget_is_exceeded() {
        let dir = tree();
        let src = dir.path().join("src");
        let excludes = Excludes::default();
        let listed = Listed::default();
        // The root's 6 entries, then `a` (1) and `a/deep` (1); `b` would
        // pass 9.
        list(std::slice::from_ref(&src), &excludes, &listed, 8);
        let dirs = listed.dirs.into_inner().unwrap();
        let mut read: Vec<_> = dirs.keys().cloned().collect();
        read.sort();
        assert_eq!(read, [src.clone(), src.join("a"), src.join("a/deep")]);
    }

    #[test]
    fn hands_each_directory_over_once() {
        let dir = tree();
        let src = dir.path().join("src");
        let early = EarlyListing::start(std::slice::from_ref(&src), &Excludes::default());
        early.wait();
        assert_eq!(
            names(&early.take(&src).unwrap()),
            ["a", "b", "c", "skip.tmp", "x.tmp", "z"]
        );
        assert!(early.take(&src).is_none());
        assert_eq!(early.taken(), 1);
        early.stop();
    }
}
