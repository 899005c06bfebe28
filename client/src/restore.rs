//! Restore: rebuild files from a snapshot.
//!
//! Directories are created first, files are written by a pool of threads
//! (each reading neighbouring chunks of one pack with one ranged read), then
//! hard links are made, and directory metadata is applied deepest first so
//! that writing into a directory does not disturb its restored mtime.
//! A file whose chunks are damaged or missing fails alone; the rest restores.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::BlobLocation;
use cairn_chunk_store::tree::{Node, NodeKind};
use tokio::runtime::Handle;

use crate::browse::{self, Entry};
use crate::fsmeta::apply_metadata;
use crate::progress::Ticker;
use crate::source::BlobSource;

/// Largest single ranged read when coalescing chunks.
const MAX_RUN_BYTES: u64 = 32 * 1024 * 1024;
/// Block size for detecting runs of zeros to leave as holes.
const SPARSE_BLOCK: usize = 4096;
/// Reads in flight per file: a large file is fetched several runs ahead of
/// the writer, which keeps a remote store busy (many ranged GETs at once).
const READ_AHEAD: usize = 4;
/// Bytes read ahead by all files together, in MiB: memory stays bounded
/// whatever the number of writers and the size of the files.
const READ_BUDGET_MIB: u32 = 256;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Target directory; snapshot paths are recreated below it.
    pub target: PathBuf,
    /// Only these snapshot paths (and what is below them); empty = everything.
    pub includes: Vec<PathBuf>,
    /// Show progress.
    pub progress: bool,
}

/// The outcome.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Files that could not be restored, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Entries restored incompletely (metadata) or skipped.
    pub warnings: Vec<String>,
}

/// True when running as root (ownership is then restored too).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn included(path: &Path, includes: &[PathBuf]) -> bool {
    includes.is_empty()
        || includes
            .iter()
            .any(|i| path.starts_with(i) || i.starts_with(path))
}

fn target_path(target: &Path, snapshot_path: &Path) -> PathBuf {
    target.join(snapshot_path.strip_prefix("/").unwrap_or(snapshot_path))
}

/// Restores the snapshot with root tree `root`. Blocking.
pub fn run(
    handle: &Handle,
    source: &BlobSource,
    root: &ChunkId,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let is_root = running_as_root();
    let mut entries: Vec<Entry> = Vec::new();
    let includes = options.includes.clone();
    let mut start_points: Vec<PathBuf> = Vec::new();
    for inc in &includes {
        if browse::components(inc)?.is_empty() {
            start_points.clear();
            break;
        }
        start_points.push(inc.clone());
    }
    if start_points.is_empty() {
        start_points.push(PathBuf::from("/"));
    }
    for start in &start_points {
        // Directories leading to an included path are restored too.
        let parts = browse::components(start)?;
        let mut prefix = PathBuf::from("/");
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix.push(std::ffi::OsStr::from_bytes(part));
            if let Some(node) = handle.block_on(browse::find(source, root, &prefix))? {
                entries.push(Entry {
                    path: prefix.clone(),
                    node,
                });
            }
        }
        handle.block_on(browse::walk(source, root, start, &mut |e: &Entry| {
            if included(&e.path, &includes) {
                entries.push(e.clone());
            }
            Ok(())
        }))?;
    }
    fs::create_dir_all(&options.target)
        .with_context(|| format!("cannot create target {}", options.target.display()))?;

    let mut report = RestoreReport::default();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut files: Vec<(PathBuf, Node)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if !seen.insert(e.path.clone()) {
            continue;
        }
        let dest = target_path(&options.target, &e.path);
        match e.node.node_kind() {
            Some(NodeKind::Dir) => {
                match fs::create_dir_all(&dest) {
                    Ok(()) => report.dirs += 1,
                    Err(err) => report
                        .failed
                        .push((e.path.clone(), format!("cannot create directory: {err}"))),
                }
                dirs.push((dest, e.node));
            }
            Some(NodeKind::File) => {
                if e.node.nlink > 1 {
                    let key = (e.node.device, e.node.inode);
                    if let Some(primary) = first_link.get(&key) {
                        links.push((dest, primary.clone()));
                        continue;
                    }
                    first_link.insert(key, dest.clone());
                }
                files.push((dest, e.node));
            }
            Some(NodeKind::Symlink) => {
                let _ = fs::remove_file(&dest);
                let target = std::ffi::OsStr::from_bytes(&e.node.symlink_target);
                let made = std::os::unix::fs::symlink(target, &dest)
                    .map_err(|err| err.to_string())
                    .and_then(|()| {
                        apply_metadata(&dest, &e.node, is_root).map_err(|err| err.to_string())
                    });
                if let Err(err) = made {
                    report
                        .failed
                        .push((e.path.clone(), format!("cannot create symlink: {err}")));
                }
            }
            _ => report
                .warnings
                .push(format!("{}: special file not restored", e.path.display())),
        }
    }

    let total: u64 = files.iter().map(|(_, n)| n.size).sum();
    let done = Arc::new(AtomicU64::new(0));
    let ticker = options.progress.then(|| {
        let done = done.clone();
        Ticker::start("restore", Some(total), move || {
            (done.load(Ordering::Relaxed), String::new())
        })
    });
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2;
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_BUDGET_MIB as usize));
    let (tx, rx) = crossbeam_channel::bounded::<(PathBuf, Node)>(threads * 2);
    let (res_tx, res_rx) = crossbeam_channel::unbounded();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (rx, res_tx, done) = (rx.clone(), res_tx.clone(), done.clone());
            let budget = budget.clone();
            scope.spawn(move || {
                for (dest, node) in rx {
                    let r = restore_file(handle, source, &budget, &dest, &node, is_root, &done);
                    if r.is_err() {
                        let _ = fs::remove_file(&dest);
                    }
                    let _ = res_tx.send((dest, node.size, r));
                }
            });
        }
        for f in files {
            let _ = tx.send(f);
        }
        drop(tx);
    });
    drop(res_tx);
    let mut failed_paths = std::collections::HashSet::new();
    for (dest, size, r) in res_rx {
        match r {
            Ok(()) => {
                report.files += 1;
                report.bytes += size;
            }
            Err(e) => {
                failed_paths.insert(dest.clone());
                report
                    .failed
                    .push((snapshot_path(&options.target, &dest), format!("{e:#}")));
            }
        }
    }
    if let Some(t) = ticker {
        t.finish();
    }
    for (dest, primary) in links {
        if failed_paths.contains(&primary) {
            report.failed.push((
                snapshot_path(&options.target, &dest),
                "hard link target could not be restored".into(),
            ));
            continue;
        }
        let _ = fs::remove_file(&dest);
        match fs::hard_link(&primary, &dest) {
            Ok(()) => report.files += 1,
            Err(e) => report.failed.push((
                snapshot_path(&options.target, &dest),
                format!("cannot create hard link: {e}"),
            )),
        }
    }
    for (dest, node) in dirs.iter().rev() {
        if let Err(e) = apply_metadata(dest, node, is_root) {
            report
                .warnings
                .push(format!("{}: cannot set metadata: {e}", dest.display()));
        }
    }
    report.failed.sort();
    Ok(report)
}

fn snapshot_path(target: &Path, dest: &Path) -> PathBuf {
    Path::new("/").join(dest.strip_prefix(target).unwrap_or(dest))
}

fn restore_file(
    handle: &Handle,
    source: &BlobSource,
    budget: &Arc<tokio::sync::Semaphore>,
    dest: &Path,
    node: &Node,
    is_root: bool,
    done: &AtomicU64,
) -> Result<()> {
    let ids = node.chunk_ids()?;
    let locations = handle.block_on(source.locate(&ids))?;
    let mut located: Vec<(ChunkId, BlobLocation)> = Vec::with_capacity(ids.len());
    for (id, loc) in ids.iter().zip(locations) {
        let loc = loc.ok_or_else(|| anyhow!("chunk {id} is not stored in any pack"))?;
        located.push((*id, loc));
    }
    // Never write through whatever is at the destination (it may be a symlink).
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest)?,
        Ok(_) => fs::remove_file(dest)?,
        Err(_) => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let runs = runs(&located);
    let mut pending = VecDeque::new();
    let mut next_run = runs.iter();
    let mut offset = 0u64;
    loop {
        while pending.len() < READ_AHEAD {
            let Some(run) = next_run.next() else { break };
            let part = located[run.clone()].to_vec();
            let bytes: u64 = part.iter().map(|(_, l)| u64::from(l.stored_len)).sum();
            let mib = (bytes.div_ceil(1 << 20) as u32).clamp(1, READ_BUDGET_MIB);
            let permit = handle.block_on(budget.clone().acquire_many_owned(mib))?;
            let source = source.clone();
            let task = handle.spawn(async move {
                let blobs = source.read_run(&part).await;
                drop(permit);
                (part, blobs)
            });
            pending.push_back(task);
        }
        let Some(task) = pending.pop_front() else {
            break;
        };
        let (part, blobs) = handle.block_on(task)?;
        for (k, blob) in blobs?.into_iter().enumerate() {
            let data = blob.with_context(|| format!("chunk {}", part[k].0))?;
            write_sparse(&file, &data, offset)?;
            offset += data.len() as u64;
            done.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }
    // Trailing holes need the length set explicitly.
    file.set_len(offset)?;
    drop(file);
    apply_metadata(dest, node, is_root)
        .with_context(|| format!("{}: cannot set metadata", dest.display()))?;
    Ok(())
}

/// Splits a file's chunks into runs: neighbouring chunks of one pack, read
/// with one request of at most [`MAX_RUN_BYTES`].
fn runs(located: &[(ChunkId, BlobLocation)]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < located.len() {
        let mut j = i + 1;
        while j < located.len() {
            let (prev, next) = (&located[j - 1].1, &located[j].1);
            let contiguous =
                next.pack == prev.pack && next.offset == prev.offset + u64::from(prev.stored_len);
            if !contiguous
                || next.offset + u64::from(next.stored_len) - located[i].1.offset > MAX_RUN_BYTES
            {
                break;
            }
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

/// Writes `data` at `offset`, leaving 4 KiB blocks of zeros as holes.
fn write_sparse(file: &fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + SPARSE_BLOCK).min(data.len());
        if data[pos..end].iter().all(|&b| b == 0) {
            pos = end;
            continue;
        }
        // Extend the write over following non-zero blocks.
        let mut stop = end;
        while stop < data.len() {
            let next = (stop + SPARSE_BLOCK).min(data.len());
            if data[stop..next].iter().all(|&b| b == 0) {
                break;
            }
            stop = next;
        }
        file.write_all_at(&data[pos..stop], offset + pos as u64)?;
        pos = stop;
    }
    Ok(())
}
