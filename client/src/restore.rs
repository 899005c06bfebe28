//! Restore: rebuild files from a snapshot.
//!
//! Directories are created first, files are written by a pool of threads
//! (each reading neighbouring chunks of one pack with one ranged read), then
//! hard links are made, and directory metadata is applied deepest first so
//! that writing into a directory does not disturb its restored mtime.
//! A file whose chunks are damaged or missing fails alone; the rest restores.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::pack::{BlobLocation, pack_key};
use cairn_chunk_store::tree::{Node, NodeKind};
use cairn_chunk_store::{ChunkId, PackId};
use tokio::runtime::Handle;

use crate::browse::{self, Entry};
use crate::fsmeta::{apply_file_metadata, apply_metadata};
use crate::progress::Ticker;
use crate::source::BlobSource;

/// Most bytes one run of a large file holds in memory, sealed and opened
/// together: one ranged read, opened whole (a run is at least one chunk).
const MAX_RUN_BYTES: u64 = 8 * 1024 * 1024;
/// Block size for detecting runs of zeros to leave as holes.
const SPARSE_BLOCK: usize = 4096;
/// Reads in flight per file: a large file is fetched several runs ahead of
/// the writer, which keeps a remote store busy (many ranged GETs at once).
const READ_AHEAD: usize = 4;
/// Bytes read ahead by all files together, in MiB, counting each run's
/// sealed and opened bytes: memory stays bounded whatever the number of
/// writers and the size of the files (and however well they compressed).
const READ_BUDGET_MIB: u32 = 16;

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
///
/// Three stages run at once: a walker thread reads the trees, the calling
/// thread creates directories and symlinks and plans the reads of each batch
/// of files (one index lookup per batch), and a pool of writer threads reads
/// and writes the files.
pub fn run(
    handle: &Handle,
    source: &BlobSource,
    root: &ChunkId,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let is_root = running_as_root();
    handle.block_on(crate::browse::preload(source, &[*root]));
    fs::create_dir_all(&options.target)
        .with_context(|| format!("cannot create target {}", options.target.display()))?;

    let done = Arc::new(AtomicU64::new(0));
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2;
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_BUDGET_MIB as usize));
    let (entry_tx, entry_rx) = crossbeam_channel::bounded::<Entry>(4096);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(threads * 4);
    let outcomes = Outcomes::default();
    let mut report = RestoreReport::default();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    // The total is unknown until the trees are read: progress counts bytes.
    let ticker = options.progress.then(|| {
        let done = done.clone();
        Ticker::start("restore", None, move || {
            (done.load(Ordering::Relaxed), String::new())
        })
    });

    let walked = std::thread::scope(|scope| -> Result<()> {
        let walker = scope.spawn(move || walk_selection(handle, source, root, options, entry_tx));
        for _ in 0..threads {
            let (rx, done) = (job_rx.clone(), done.clone());
            let (budget, outcomes) = (budget.clone(), &outcomes);
            scope.spawn(move || {
                let writer = Writer {
                    handle,
                    source,
                    budget: &budget,
                    is_root,
                    done: &done,
                    outcomes,
                };
                for job in rx {
                    writer.run(job);
                }
            });
        }
        drop(job_rx);

        let mut planner = Planner::new(handle, source, job_tx, &outcomes);
        let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut seen = HashSet::new();
        for e in entry_rx {
            if options.includes.len() > 1 && !seen.insert(e.path.clone()) {
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
                    planner.add(dest, e.node)?;
                }
                Some(NodeKind::Symlink) => {
                    if let Err(err) = restore_symlink(&dest, &e.node, is_root) {
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
        planner.finish()?;
        walker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    report.files = outcomes.files.into_inner();
    report.bytes = outcomes.bytes.into_inner();
    let mut failed_paths = HashSet::new();
    for (dest, e) in outcomes
        .failed
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        report
            .failed
            .push((snapshot_path(&options.target, &dest), format!("{e:#}")));
        failed_paths.insert(dest);
    }
    walked?;
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

/// Sends every selected entry of the snapshot, parents before children.
fn walk_selection(
    handle: &Handle,
    source: &BlobSource,
    root: &ChunkId,
    options: &RestoreOptions,
    out: crossbeam_channel::Sender<Entry>,
) -> Result<()> {
    let includes = &options.includes;
    let mut start_points: Vec<PathBuf> = Vec::new();
    for inc in includes {
        if browse::components(inc)?.is_empty() {
            start_points.clear();
            break;
        }
        start_points.push(inc.clone());
    }
    if start_points.is_empty() {
        start_points.push(PathBuf::from("/"));
    }
    // A closed channel means the receiver stopped: nothing more to send.
    let stopped = || anyhow!("restore stopped");
    for start in &start_points {
        // Directories leading to an included path are restored too.
        let parts = browse::components(start)?;
        let mut prefix = PathBuf::from("/");
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix.push(std::ffi::OsStr::from_bytes(part));
            if let Some(node) = handle.block_on(browse::find(source, root, &prefix))? {
                let entry = Entry {
                    path: prefix.clone(),
                    node,
                };
                out.send(entry).map_err(|_| stopped())?;
            }
        }
        handle.block_on(browse::walk(source, root, start, &mut |e: &Entry| {
            if included(&e.path, includes) {
                out.send(e.clone()).map_err(|_| stopped())?;
            }
            Ok(())
        }))?;
    }
    Ok(())
}

fn snapshot_path(target: &Path, dest: &Path) -> PathBuf {
    Path::new("/").join(dest.strip_prefix(target).unwrap_or(dest))
}

/// Makes a symlink, replacing whatever is at `dest`.
fn restore_symlink(dest: &Path, node: &Node, is_root: bool) -> std::io::Result<()> {
    let target = std::ffi::OsStr::from_bytes(&node.symlink_target);
    match std::os::unix::fs::symlink(target, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_existing(dest)?;
            std::os::unix::fs::symlink(target, dest)?;
        }
        other => other?,
    }
    apply_metadata(dest, node, is_root)
}

/// Removes whatever is at `dest` (a file, a symlink or a directory tree).
fn remove_existing(dest: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest),
        Ok(_) => fs::remove_file(dest),
        Err(_) => Ok(()),
    }
}

/// Creates `dest` for writing. Whatever is already there is replaced, never
/// written through (it may be a symlink); on a fresh target this costs one
/// `open`.
fn create_file(dest: &Path) -> Result<fs::File> {
    let open = || OpenOptions::new().write(true).create_new(true).open(dest);
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_existing(dest).and_then(|()| open())
        }
        other => other,
    };
    file.with_context(|| format!("cannot create {}", dest.display()))
}

/// What became of the files handed to the writers: counts of those
/// restored (a restore of millions of files keeps no record of each), and
/// each failure.
#[derive(Default)]
struct Outcomes {
    files: AtomicU64,
    bytes: AtomicU64,
    failed: std::sync::Mutex<Vec<(PathBuf, anyhow::Error)>>,
}

impl Outcomes {
    fn record(&self, dest: PathBuf, size: u64, result: Result<()>) {
        match result {
            Ok(()) => {
                self.files.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(size, Ordering::Relaxed);
            }
            Err(e) => self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dest, e)),
        }
    }
}

/// A file to restore, with the location of each of its chunks.
struct FileJob {
    dest: PathBuf,
    node: Node,
    chunks: Vec<(ChunkId, BlobLocation)>,
}

/// Work for one writer thread.
enum Job {
    /// Small files whose chunks lie close together in one pack, fetched with
    /// one read of `len` bytes at `start` (no read when they are all empty).
    Segment {
        read: Option<(PackId, u64, u64)>,
        files: Vec<FileJob>,
    },
    /// A large file, read run by run with read-ahead.
    Large(FileJob),
}

/// Files are located and planned this many at a time.
const PLAN_FILES: usize = 2048;
/// A file is small when its chunks form one run of at most this many bytes.
const SMALL_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest read that serves a segment of small files.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes between two small files of a pack that are read through rather
/// than split into two reads.
const SEGMENT_GAP: u64 = 256 * 1024;
/// Empty files handled by one job.
const EMPTY_FILES_PER_JOB: usize = 256;

/// Groups files into batches, locates their chunks with one index lookup per
/// batch, and turns each batch into writer jobs: small files sorted by pack
/// position and merged into segments, large files alone.
struct Planner<'a> {
    handle: &'a Handle,
    source: &'a BlobSource,
    jobs: crossbeam_channel::Sender<Job>,
    outcomes: &'a Outcomes,
    pending: Vec<(PathBuf, Node)>,
}

impl<'a> Planner<'a> {
    fn new(
        handle: &'a Handle,
        source: &'a BlobSource,
        jobs: crossbeam_channel::Sender<Job>,
        outcomes: &'a Outcomes,
    ) -> Self {
        Self {
            handle,
            source,
            jobs,
            outcomes,
            pending: Vec::new(),
        }
    }

    fn add(&mut self, dest: PathBuf, node: Node) -> Result<()> {
        self.pending.push((dest, node));
        if self.pending.len() >= PLAN_FILES {
            self.plan()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.plan()
    }

    fn fail(&self, dest: PathBuf, size: u64, error: anyhow::Error) {
        self.outcomes.record(dest, size, Err(error));
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("restore writers stopped"))
    }

    fn plan(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        let mut ids = Vec::new();
        let mut files = Vec::with_capacity(batch.len());
        for (dest, node) in batch {
            match node.chunk_ids() {
                Ok(chunks) => {
                    ids.extend_from_slice(&chunks);
                    files.push((dest, node, chunks));
                }
                Err(e) => self.fail(dest, node.size, e.into()),
            }
        }
        let mut locations = self.handle.block_on(self.source.locate(&ids))?.into_iter();
        let mut small: Vec<FileJob> = Vec::new();
        let mut empty: Vec<FileJob> = Vec::new();
        for (dest, node, chunks) in files {
            let mut located = Vec::with_capacity(chunks.len());
            let mut missing = None;
            for id in chunks {
                match locations.next().flatten() {
                    Some(loc) => located.push((id, loc)),
                    None => missing = missing.or(Some(id)),
                }
            }
            if let Some(id) = missing {
                self.fail(
                    dest,
                    node.size,
                    anyhow!("chunk {id} is not stored in any pack"),
                );
                continue;
            }
            let job = FileJob {
                dest,
                node,
                chunks: located,
            };
            let (from, to) = span(&job.chunks);
            match runs(&job.chunks).as_slice() {
                [] => empty.push(job),
                [_] if to - from <= SMALL_FILE_BYTES => small.push(job),
                _ => self.send(Job::Large(job))?,
            }
        }
        for files in chunked(empty, EMPTY_FILES_PER_JOB) {
            self.send(Job::Segment { read: None, files })?;
        }
        small.sort_by_key(|f| (f.chunks[0].1.pack, span(&f.chunks).0));
        let mut segment: Vec<FileJob> = Vec::new();
        let (mut start, mut end) = (0, 0);
        for file in small {
            let (from, to) = span(&file.chunks);
            let joins = segment.first().is_some_and(|first| {
                first.chunks[0].1.pack == file.chunks[0].1.pack
                    && from <= end + SEGMENT_GAP
                    && to.max(end) - start <= SEGMENT_BYTES
            });
            if !joins && !segment.is_empty() {
                let pack = segment[0].chunks[0].1.pack;
                let files = std::mem::take(&mut segment);
                self.send(Job::Segment {
                    read: Some((pack, start, end - start)),
                    files,
                })?;
            }
            if segment.is_empty() {
                (start, end) = (from, to);
            }
            end = end.max(to);
            segment.push(file);
        }
        if !segment.is_empty() {
            let pack = segment[0].chunks[0].1.pack;
            self.send(Job::Segment {
                read: Some((pack, start, end - start)),
                files: segment,
            })?;
        }
        Ok(())
    }
}

/// Splits `items` into vectors of at most `n`.
fn chunked<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(n).collect());
    }
    out
}

/// The byte range of a pack that holds `chunks` (which lie in one pack).
fn span(chunks: &[(ChunkId, BlobLocation)]) -> (u64, u64) {
    let start = chunks.iter().map(|(_, l)| l.offset).min().unwrap_or(0);
    let end = chunks
        .iter()
        .map(|(_, l)| l.offset + u64::from(l.stored_len))
        .max()
        .unwrap_or(0);
    (start, end)
}

/// One writer thread's view of the restore.
struct Writer<'a> {
    handle: &'a Handle,
    source: &'a BlobSource,
    budget: &'a Arc<tokio::sync::Semaphore>,
    is_root: bool,
    done: &'a AtomicU64,
    outcomes: &'a Outcomes,
}

impl Writer<'_> {
    fn run(&self, job: Job) {
        match job {
            Job::Segment { read, files } => {
                let bytes = match read {
                    Some((pack, start, len)) => self
                        .handle
                        .block_on(self.source.repo().store().get_range(
                            &pack_key(&pack),
                            start,
                            len,
                        ))
                        .map(|b| (b, start))
                        .map_err(|e| anyhow!("pack {pack}: {e}")),
                    None => Ok((Default::default(), 0)),
                };
                for file in files {
                    let r = match &bytes {
                        Ok((bytes, start)) => self.write_small(&file, bytes, *start),
                        Err(e) => Err(anyhow!("{e:#}")),
                    };
                    self.finish(file, r);
                }
            }
            Job::Large(file) => {
                let r = self.write_large(&file);
                self.finish(file, r);
            }
        }
    }

    fn finish(&self, file: FileJob, r: Result<()>) {
        if r.is_err() {
            let _ = fs::remove_file(&file.dest);
        }
        self.outcomes.record(file.dest, file.node.size, r);
    }

    /// Writes a file whose sealed chunks are all in `bytes` (read from the
    /// pack at offset `start`).
    fn write_small(&self, file: &FileJob, bytes: &[u8], start: u64) -> Result<()> {
        let out = create_file(&file.dest)?;
        let mut sink = Sink::new(&out);
        let repo = self.source.repo();
        for (id, loc) in &file.chunks {
            let from = (loc.offset - start) as usize;
            let sealed = &bytes[from..from + loc.stored_len as usize];
            let data = repo
                .open_blob(id, loc, sealed)
                .with_context(|| format!("chunk {id}"))?;
            sink.write(&data)?;
            self.done.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        sink.finish()?;
        apply_file_metadata(&out, &file.node, self.is_root)
            .with_context(|| format!("{}: cannot set metadata", file.dest.display()))
    }

    /// Writes a large file, fetching up to [`READ_AHEAD`] runs ahead under
    /// the restore-wide read budget.
    fn write_large(&self, file: &FileJob) -> Result<()> {
        let out = create_file(&file.dest)?;
        let mut sink = Sink::new(&out);
        let located = &file.chunks;
        let runs = runs(located);
        let mut pending = VecDeque::new();
        let mut next_run = runs.iter();
        loop {
            while pending.len() < READ_AHEAD {
                let Some(run) = next_run.next() else { break };
                let part = located[run.clone()].to_vec();
                let bytes: u64 = part.iter().map(|(_, l)| held_bytes(l)).sum();
                let mib = (bytes.div_ceil(1 << 20) as u32).clamp(1, READ_BUDGET_MIB);
                let permit = self
                    .handle
                    .block_on(self.budget.clone().acquire_many_owned(mib))?;
                let source = self.source.clone();
                let task = self.handle.spawn(async move {
                    let blobs = source.read_run(&part).await;
                    drop(permit);
                    (part, blobs)
                });
                pending.push_back(task);
            }
            let Some(task) = pending.pop_front() else {
                break;
            };
            let (part, blobs) = self.handle.block_on(task)?;
            for (k, blob) in blobs?.into_iter().enumerate() {
                let data = blob.with_context(|| format!("chunk {}", part[k].0))?;
                sink.write(&data)?;
                self.done.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        sink.finish()?;
        apply_file_metadata(&out, &file.node, self.is_root)
            .with_context(|| format!("{}: cannot set metadata", file.dest.display()))
    }
}

/// Writes a file's content in order, leaving runs of zeros as holes.
struct Sink<'a> {
    file: &'a fs::File,
    /// Bytes of content so far.
    len: u64,
    /// End of the last byte actually written.
    written: u64,
}

impl<'a> Sink<'a> {
    fn new(file: &'a fs::File) -> Self {
        Self {
            file,
            len: 0,
            written: 0,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(end) = write_sparse(self.file, data, self.len)? {
            self.written = end;
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Trailing holes need the length set explicitly.
    fn finish(self) -> std::io::Result<()> {
        if self.written < self.len {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }
}

/// The bytes a chunk holds in memory while its run is read and opened.
fn held_bytes(loc: &BlobLocation) -> u64 {
    u64::from(loc.stored_len) + u64::from(loc.raw_len)
}

/// Splits a file's chunks into runs: neighbouring chunks of one pack, read
/// with one request and holding at most [`MAX_RUN_BYTES`] (see
/// [`held_bytes`]).
fn runs(located: &[(ChunkId, BlobLocation)]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < located.len() {
        let mut held = held_bytes(&located[i].1);
        let mut j = i + 1;
        while j < located.len() {
            let (prev, next) = (&located[j - 1].1, &located[j].1);
            let contiguous =
                next.pack == prev.pack && next.offset == prev.offset + u64::from(prev.stored_len);
            held += held_bytes(next);
            if !contiguous || held > MAX_RUN_BYTES {
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
/// Returns the end of the last byte written, if any was.
fn write_sparse(file: &fs::File, data: &[u8], offset: u64) -> std::io::Result<Option<u64>> {
    let mut pos = 0;
    let mut written = None;
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
        written = Some(offset + stop as u64);
        pos = stop;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_chunk_store::pack::{BlobKind, Compression};

    /// Chunks of one pack laid end to end, with these sealed and plain
    /// lengths in MiB.
    fn laid_out(lengths: &[(u32, u32)]) -> Vec<(ChunkId, BlobLocation)> {
        let mut offset = 0;
        lengths
            .iter()
            .enumerate()
            .map(|(i, &(stored, raw))| {
                let loc = BlobLocation {
                    pack: PackId::from_bytes([7; 32]),
                    offset,
                    stored_len: stored << 20,
                    raw_len: raw << 20,
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                };
                offset += u64::from(loc.stored_len);
                (ChunkId::from_bytes([i as u8; 32]), loc)
            })
            .collect()
    }

    #[test]
    fn a_run_holds_at_most_its_share_of_sealed_and_opened_bytes() {
        // Well-compressed chunks: 1 MiB sealed opens to 3 MiB, so two of
        // them fill a run although only 2 MiB are read.
        let located = laid_out(&[(1, 3), (1, 3), (1, 3), (1, 3), (1, 3)]);
        assert_eq!(runs(&located), vec![0..2, 2..4, 4..5]);
        // A chunk larger than a run is a run of its own.
        let located = laid_out(&[(1, 1), (8, 8), (1, 1), (1, 1)]);
        assert_eq!(runs(&located), vec![0..1, 1..2, 2..4]);
        // A gap in the pack ends a run.
        let mut located = laid_out(&[(1, 1), (1, 1)]);
        located[1].1.offset += 1;
        assert_eq!(runs(&located), vec![0..1, 1..2]);
    }
}
