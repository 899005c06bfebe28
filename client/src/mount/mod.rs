//! `cairn mount`: the repository's snapshots as a read-only FUSE file system.
//!
//! ```text
//! MOUNTPOINT/
//!   snapshots/<short id>/…        each snapshot's tree as it was backed up
//!   latest -> snapshots/<id>      the newest snapshot
//!   hosts/<host>/<time>/…         by host, then time (RFC 3339, UTC)
//!   tags/<tag>/<time>/…           by tag, then time
//!   .stats                        what the mount has read (JSON)
//! ```
//!
//! **Inodes** are handed out as the kernel first meets a path: a
//! directory's children get theirs when it is first looked into, so a mount
//! of a huge repository costs nothing until it is walked. Each place a
//! snapshot appears (under `snapshots/`, `hosts/` and `tags/`) is its own
//! subtree of inodes, because the kernel lets a directory have only one
//! parent; inside one such subtree, the names of a hard-linked file share
//! one inode, as they did on the source.
//!
//! **Reads** go through [`content`]: a per-file table of chunk offsets
//! built on first open, a bounded cache of decrypted chunks, and read-ahead
//! for sequential readers. Memory is the cache's budget plus the inodes of
//! the paths visited, whatever the size of the snapshots.
//!
//! **Nothing is held that would stop a backup or a prune.** The embedded
//! index is not opened (it allows one process at a time, and a mount may
//! stay up for days); chunks are found through the index cluster when one
//! is configured, else through the pack trailers. A chunk that prune has
//! repacked since it was located is looked for again at its new place.
//! The list of snapshots is the one read when the mount started.

pub mod content;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_chunk_store::manifest::Snapshot;
use cairn_chunk_store::tree::{Node, NodeKind};
use cairn_chunk_store::{ChunkId, SnapshotId};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tokio::runtime::Handle;

use self::content::{ChunkCache, FileTable, MountStats, StatsSnapshot};
use crate::source::{BlobSource, PRELOAD_LIMIT};

/// How long the kernel may cache names and attributes: snapshots never
/// change.
const TTL: Duration = Duration::from_secs(3600);

/// Chunks fetched ahead of a sequential reader at most.
const READ_AHEAD_CHUNKS: usize = 4;

/// File tables kept for files no longer open, at most.
const TABLES_KEPT: usize = 1024;

/// Default budget of the chunk cache (`--cache-size`).
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Block size reported to `stat`: large, so copying tools read in large
/// requests.
const BLOCK_SIZE: u32 = 128 * 1024;

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// No FUSE device, or no helper to mount without root.
    #[error(
        "FUSE is not available: {0} (install the package fuse3, e.g. `apt-get install fuse3`, and load the fuse kernel module)"
    )]
    FuseMissing(String),
    /// The mount point does not exist.
    #[error("mount point {0}: no such directory")]
    NoMountPoint(PathBuf),
    /// The mount point is a file.
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The mount point has entries.
    #[error("mount point {0} is not empty")]
    NotEmpty(PathBuf),
    /// The kernel refused the mount.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that this process can mount a FUSE file system.
pub fn check_fuse() -> Result<(), MountError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::FuseMissing("/dev/fuse does not exist".into()));
    }
    // Root mounts directly; anyone else needs the setuid helper.
    if !crate::restore::running_as_root()
        && which("fusermount3").is_none()
        && which("fusermount").is_none()
    {
        return Err(MountError::FuseMissing(
            "fusermount3 is not installed".into(),
        ));
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Checks that `path` is an empty directory.
pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let meta = std::fs::metadata(path).map_err(|_| MountError::NoMountPoint(path.into()))?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(path.into()));
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| MountError::Mount {
        path: path.into(),
        source: e,
    })?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(path.into()));
    }
    Ok(())
}

/// Mounts `fs` at `mountpoint`, served by background threads until the
/// returned session is unmounted or dropped.
pub fn mount(fs: SnapshotFs, mountpoint: &Path) -> Result<fuser::BackgroundSession, MountError> {
    check_fuse()?;
    check_mountpoint(mountpoint)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::Subtype("cairn".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    config.n_threads = Some(4);
    let session = fuser::spawn_mount2(fs, mountpoint, &config).map_err(|e| MountError::Mount {
        path: mountpoint.into(),
        source: e,
    })?;
    raise_read_ahead(mountpoint);
    Ok(session)
}

/// Read-ahead of the mount, in KiB: sequential readers get requests of up
/// to 1 MiB instead of the kernel's default 128 KiB (a 1 GiB file: 1.2 s →
/// 0.7 s on a 2-core machine).
const READ_AHEAD_KB: u32 = 1024;

/// Sets the mount's read-ahead through its backing device's sysfs entry.
/// Only root may; for anyone else the kernel's default stays.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    // The kernel's encoding of a device number (see makedev(3)).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        tracing::debug!("read-ahead not raised ({knob}: {e})");
    }
}

/// Unmounts `session`'s file system at `mountpoint` and waits for its
/// threads. If files are still open there, the mount is detached instead
/// (it leaves the tree at once; those files fail when next read); returns
/// whether that happened.
pub fn unmount(session: fuser::BackgroundSession, mountpoint: &Path) -> std::io::Result<bool> {
    if session.guard.is_finished() {
        // Unmounted from outside (`umount`, `fusermount3 -u`).
        session.join()?;
        return Ok(false);
    }
    match session.umount_and_join() {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let detached = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(mountpoint)
                .status()?;
            if detached.success() { Ok(true) } else { Err(e) }
        }
        Err(e) => Err(e),
    }
}

/// A directory's entries: name and inode, sorted by name.
type Entries = Vec<(Vec<u8>, u64)>;

/// One inode.
struct Inode {
    parent: u64,
    /// The inode of the snapshot directory this one is under (0 outside
    /// snapshots): hard links are shared within it.
    root: u64,
    kind: Kind,
    /// A directory's entries, sorted by name, once looked into.
    children: Option<Arc<Entries>>,
}

enum Kind {
    /// A directory of the layout (root, `snapshots`, a host, a tag).
    Dir { time_ns: i64 },
    /// `latest`.
    Link(Vec<u8>),
    /// `.stats`.
    Stats,
    /// A snapshot's top directory.
    Snapshot { tree: ChunkId, time_ns: i64 },
    /// An entry of a snapshot's tree.
    Node(Box<Node>),
}

/// An open file.
struct OpenFile {
    table: Arc<FileTable>,
    /// Where the next sequential read would start.
    next: u64,
    /// Sequential reads in a row.
    streak: usize,
}

/// The file system of `cairn mount`.
pub struct SnapshotFs {
    source: BlobSource,
    rt: Handle,
    inodes: RwLock<Vec<Inode>>,
    hardlinks: Mutex<HashMap<(u64, u64, u64), u64>>,
    tables: Mutex<HashMap<u64, Arc<FileTable>>>,
    open: Mutex<HashMap<u64, OpenFile>>,
    next_fh: AtomicU64,
    cache: Arc<ChunkCache>,
    /// The inode of `.stats`, whose size changes with every read.
    stats_ino: u64,
    uid: u32,
    gid: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A snapshot's time as a directory name: RFC 3339 in UTC, to the second.
pub fn time_name(time_ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(time_ns))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| time_ns.to_string())
}

impl SnapshotFs {
    /// The file system over `snapshots` (oldest first), reading through
    /// `source` with a chunk cache of `cache_bytes`; `rt` runs the reads.
    pub fn new(
        source: BlobSource,
        rt: Handle,
        snapshots: &[(SnapshotId, Snapshot)],
        cache_bytes: u64,
    ) -> anyhow::Result<Self> {
        let stats = Arc::new(MountStats::default());
        let cache = Arc::new(ChunkCache::new(source.clone(), cache_bytes, stats));
        let newest = snapshots.iter().map(|(_, s)| s.time_ns).max().unwrap_or(0);
        let mut inodes = vec![Inode {
            parent: 1,
            root: 0,
            kind: Kind::Dir { time_ns: newest },
            children: None,
        }];
        let snaps_dir = add_inode(&mut inodes, 1, Kind::Dir { time_ns: newest });
        let hosts_dir = add_inode(&mut inodes, 1, Kind::Dir { time_ns: newest });
        let tags_dir = add_inode(&mut inodes, 1, Kind::Dir { time_ns: newest });
        let stats_file = add_inode(&mut inodes, 1, Kind::Stats);
        let mut root = vec![
            (b".stats".to_vec(), stats_file),
            (b"hosts".to_vec(), hosts_dir),
            (b"snapshots".to_vec(), snaps_dir),
            (b"tags".to_vec(), tags_dir),
        ];
        if let Some((id, _)) = snapshots.iter().max_by_key(|(_, s)| s.time_ns) {
            let target = format!("snapshots/{}", id.short()).into_bytes();
            root.push((
                b"latest".to_vec(),
                add_inode(&mut inodes, 1, Kind::Link(target)),
            ));
        }

        let mut by_id = Vec::new();
        let mut hosts: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
        let mut tags: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
        let mut host_dirs: HashMap<String, u64> = HashMap::new();
        let mut tag_dirs: HashMap<String, u64> = HashMap::new();
        for (id, snap) in snapshots {
            let tree = snap.root_tree()?;
            let kind = || Kind::Snapshot {
                tree,
                time_ns: snap.time_ns,
            };
            by_id.push((
                id.short().into_bytes(),
                add_inode(&mut inodes, snaps_dir, kind()),
            ));
            let host_dir = *host_dirs.entry(snap.host.clone()).or_insert_with(|| {
                add_inode(
                    &mut inodes,
                    hosts_dir,
                    Kind::Dir {
                        time_ns: snap.time_ns,
                    },
                )
            });
            let entry = add_inode(&mut inodes, host_dir, kind());
            push_timed(hosts.entry(snap.host.clone()).or_default(), snap, id, entry);
            for tag in &snap.tags {
                let tag_dir = *tag_dirs.entry(tag.clone()).or_insert_with(|| {
                    add_inode(
                        &mut inodes,
                        tags_dir,
                        Kind::Dir {
                            time_ns: snap.time_ns,
                        },
                    )
                });
                let entry = add_inode(&mut inodes, tag_dir, kind());
                push_timed(tags.entry(tag.clone()).or_default(), snap, id, entry);
            }
        }
        let mut set = |ino: u64, mut children: Vec<(Vec<u8>, u64)>| {
            children.sort();
            inodes[(ino - 1) as usize].children = Some(Arc::new(children));
        };
        set(1, root);
        set(snaps_dir, by_id);
        let named = |dirs: &HashMap<String, u64>| {
            dirs.iter()
                .map(|(name, ino)| (name.as_bytes().to_vec(), *ino))
                .collect::<Vec<_>>()
        };
        set(hosts_dir, named(&host_dirs));
        set(tags_dir, named(&tag_dirs));
        for (host, entries) in hosts {
            set(host_dirs[&host], entries);
        }
        for (tag, entries) in tags {
            set(tag_dirs[&tag], entries);
        }

        // The layout's own directories belong to whoever mounted it (the
        // owner of /proc/self is this process's user).
        let (uid, gid) = std::fs::metadata("/proc/self")
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.uid(), m.gid())
            })
            .unwrap_or((0, 0));
        Ok(Self {
            source,
            rt,
            inodes: RwLock::new(inodes),
            hardlinks: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cache,
            stats_ino: stats_file,
            uid,
            gid,
        })
    }

    /// How long the kernel may keep what it learns of `ino`.
    fn ttl(&self, ino: u64) -> Duration {
        if ino == self.stats_ino {
            Duration::ZERO
        } else {
            TTL
        }
    }

    /// What the mount has read so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.cache.snapshot()
    }

    fn stats_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.stats()).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn read_inodes(&self) -> std::sync::RwLockReadGuard<'_, Vec<Inode>> {
        self.inodes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries of directory `ino`, loading its tree on first use.
    fn children(&self, ino: u64) -> Result<Arc<Entries>, Errno> {
        let (tree_id, root, top) = {
            let inodes = self.read_inodes();
            let inode = inodes.get(index(ino)?).ok_or(Errno::ENOENT)?;
            if let Some(children) = &inode.children {
                return Ok(children.clone());
            }
            match &inode.kind {
                Kind::Snapshot { tree, .. } => (*tree, inode.root, true),
                Kind::Node(node) if node.node_kind() == Some(NodeKind::Dir) => {
                    let id = node.subtree_id().map_err(|e| {
                        tracing::warn!("inode {ino}: {e}");
                        Errno::EIO
                    })?;
                    (id, inode.root, false)
                }
                _ => return Err(Errno::ENOTDIR),
            }
        };
        if top {
            // Load the snapshot's trees in batches, ahead of the walk that
            // a listing usually starts.
            let source = self.source.clone();
            self.rt.spawn(async move {
                let _ = source.preload_trees(&[tree_id], PRELOAD_LIMIT).await;
            });
        }
        let tree = self.rt.block_on(self.source.tree(&tree_id)).map_err(|e| {
            tracing::warn!("cannot read directory: {e:#}");
            Errno::EIO
        })?;
        let mut inodes = self.inodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(children) = &inodes[index(ino)?].children {
            return Ok(children.clone());
        }
        let mut links = lock(&self.hardlinks);
        let mut children = Vec::with_capacity(tree.nodes.len());
        for node in &tree.nodes {
            let shared =
                node.node_kind() == Some(NodeKind::File) && node.nlink > 1 && node.inode != 0;
            let key = (root, node.device, node.inode);
            let existing = if shared {
                links.get(&key).copied()
            } else {
                None
            };
            let child = match existing {
                Some(child) => child,
                None => {
                    inodes.push(Inode {
                        parent: ino,
                        root,
                        kind: Kind::Node(Box::new(node.clone())),
                        children: None,
                    });
                    let child = inodes.len() as u64;
                    if shared {
                        links.insert(key, child);
                    }
                    child
                }
            };
            children.push((node.name.clone(), child));
        }
        children.sort();
        let children = Arc::new(children);
        inodes[index(ino)?].children = Some(children.clone());
        Ok(children)
    }

    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        let at = |ns: i64| {
            if ns >= 0 {
                UNIX_EPOCH + Duration::from_nanos(ns as u64)
            } else {
                UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
            }
        };
        let mut attr = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        };
        let time = |attr: &mut FileAttr, t: SystemTime| {
            attr.atime = t;
            attr.mtime = t;
            attr.ctime = t;
            attr.crtime = t;
        };
        match &inode.kind {
            Kind::Dir { time_ns } => time(&mut attr, at(*time_ns)),
            Kind::Snapshot { time_ns, .. } => {
                time(&mut attr, at(*time_ns));
                attr.perm = 0o755;
            }
            Kind::Link(target) => {
                attr.kind = FileType::Symlink;
                attr.perm = 0o777;
                attr.size = target.len() as u64;
            }
            Kind::Stats => {
                attr.kind = FileType::RegularFile;
                attr.perm = 0o444;
                attr.size = self.stats_json().len() as u64;
            }
            Kind::Node(node) => {
                attr.kind = match node.node_kind() {
                    Some(NodeKind::File) | None => FileType::RegularFile,
                    Some(NodeKind::Dir) => FileType::Directory,
                    Some(NodeKind::Symlink) => FileType::Symlink,
                    Some(NodeKind::Fifo) => FileType::NamedPipe,
                    Some(NodeKind::CharDevice) => FileType::CharDevice,
                    Some(NodeKind::BlockDevice) => FileType::BlockDevice,
                    Some(NodeKind::Socket) => FileType::Socket,
                };
                attr.perm = (node.mode & 0o7777) as u16;
                attr.uid = node.uid;
                attr.gid = node.gid;
                attr.size = match attr.kind {
                    FileType::Symlink => node.symlink_target.len() as u64,
                    FileType::Directory => 0,
                    _ => node.size,
                };
                attr.blocks = attr.size.div_ceil(512);
                attr.atime = at(node.mtime_ns);
                attr.mtime = at(node.mtime_ns);
                attr.ctime = at(node.ctime_ns);
                attr.crtime = at(node.mtime_ns);
                attr.rdev = node.rdev as u32;
                if attr.kind == FileType::RegularFile {
                    attr.nlink = node.nlink.clamp(1, u64::from(u32::MAX)) as u32;
                }
            }
        }
        attr
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inodes = self.read_inodes();
        let inode = inodes.get(index(ino)?).ok_or(Errno::ENOENT)?;
        Ok(self.attr(ino, inode))
    }

    fn node(&self, ino: u64) -> Result<Option<Node>, Errno> {
        let inodes = self.read_inodes();
        let inode = inodes.get(index(ino)?).ok_or(Errno::ENOENT)?;
        Ok(match &inode.kind {
            Kind::Node(node) => Some((**node).clone()),
            _ => None,
        })
    }

    /// The chunk table of file `ino`, built on first use.
    fn table(&self, ino: u64, node: &Node) -> Result<Arc<FileTable>, Errno> {
        if let Some(table) = lock(&self.tables).get(&ino) {
            return Ok(table.clone());
        }
        let table = self
            .rt
            .block_on(FileTable::build(&self.source, node))
            .map_err(|e| {
                tracing::warn!(
                    "cannot open {:?}: {e:#}",
                    String::from_utf8_lossy(&node.name)
                );
                Errno::EIO
            })?;
        self.cache
            .stats
            .files_opened
            .fetch_add(1, Ordering::Relaxed);
        let table = Arc::new(table);
        let mut tables = lock(&self.tables);
        if tables.len() >= TABLES_KEPT {
            tables.clear();
        }
        tables.insert(ino, table.clone());
        Ok(table)
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<cairn_chunk_store::tree::Xattr>, Errno> {
        Ok(self.node(ino)?.map(|n| n.xattrs).unwrap_or_default())
    }
}

/// Appends an inode of the layout and returns its number.
fn add_inode(inodes: &mut Vec<Inode>, parent: u64, kind: Kind) -> u64 {
    let ino = inodes.len() as u64 + 1;
    // A snapshot's top directory is the root of its own inodes.
    let root = if matches!(kind, Kind::Snapshot { .. }) {
        ino
    } else {
        0
    };
    inodes.push(Inode {
        parent,
        root,
        kind,
        children: None,
    });
    ino
}

/// The slot of inode `ino`.
fn index(ino: u64) -> Result<usize, Errno> {
    usize::try_from(ino)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .ok_or(Errno::ENOENT)
}

/// Adds a snapshot's entry named by its time, made unique with its id if
/// another snapshot in the directory has the same second.
fn push_timed(dir: &mut Vec<(Vec<u8>, u64)>, snap: &Snapshot, id: &SnapshotId, ino: u64) {
    let mut name = time_name(snap.time_ns).into_bytes();
    if dir.iter().any(|(n, _)| *n == name) {
        name.extend_from_slice(format!("-{}", id.short()).as_bytes());
    }
    dir.push((name, ino));
}

/// Answers a getxattr or listxattr request for `value`.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.children(parent.0).and_then(|children| {
            let name = name.as_bytes();
            children
                .binary_search_by(|(n, _)| n.as_slice().cmp(name))
                .map(|i| children[i].1)
                .map_err(|_| Errno::ENOENT)
        });
        match found.and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.entry(&self.ttl(attr.ino.0), &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&self.ttl(ino.0), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inodes = self.read_inodes();
        match inodes
            .get(index(ino.0).unwrap_or(usize::MAX))
            .map(|i| &i.kind)
        {
            Some(Kind::Link(target)) => reply.data(target),
            Some(Kind::Node(node)) if node.node_kind() == Some(NodeKind::Symlink) => {
                reply.data(&node.symlink_target)
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if ino.0 == self.stats_ino {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let node = match self.node(ino.0) {
            Ok(Some(node)) if node.node_kind() == Some(NodeKind::File) => node,
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        match self.table(ino.0, &node) {
            Ok(table) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.open).insert(
                    fh,
                    OpenFile {
                        table,
                        next: 0,
                        streak: 0,
                    },
                );
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.cache.stats.reads.fetch_add(1, Ordering::Relaxed);
        if fh.0 == 0 {
            let json = self.stats_json();
            let from = (offset as usize).min(json.len());
            let to = from.saturating_add(size as usize).min(json.len());
            return reply.data(&json[from..to]);
        }
        let (table, streak) = {
            let mut open = lock(&self.open);
            let Some(file) = open.get_mut(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            file.streak = if offset == file.next && offset > 0 {
                file.streak + 1
            } else {
                0
            };
            file.next = offset + u64::from(size);
            (file.table.clone(), file.streak)
        };
        match self
            .rt
            .block_on(table.read(&self.cache, offset, u64::from(size)))
        {
            Ok(data) => {
                if streak > 0 {
                    let next = table.covering(offset, u64::from(size)).end;
                    let _guard = self.rt.enter();
                    table.read_ahead(&self.cache, next..next + streak.min(READ_AHEAD_CHUNKS));
                }
                reply.data(&data)
            }
            Err(e) => {
                tracing::warn!("read failed: {e:#}");
                reply.error(Errno::EIO)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.open).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.children(ino.0) {
            Ok(children) => children,
            Err(e) => return reply.error(e),
        };
        let inodes = self.read_inodes();
        let parent = inodes
            .get(index(ino.0).unwrap_or(0))
            .map_or(1, |i| i.parent);
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        let entries = dots.into_iter().chain(children.iter().map(|(name, child)| {
            let kind = inodes
                .get(index(*child).unwrap_or(usize::MAX))
                .map_or(FileType::RegularFile, |i| self.attr(*child, i).kind);
            (*child, kind, OsStr::from_bytes(name))
        }));
        for (i, (child, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.read_inodes().len() as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(xattrs) => match xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(x) => reply_xattr(reply, size, &x.value),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(xattrs) => {
                let mut names = Vec::new();
                for x in &xattrs {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (`default_permissions`).
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_name_directories_in_utc_to_the_second() {
        assert_eq!(time_name(1_700_000_000_123_456_789), "2023-11-14T22:13:20Z");
        assert_eq!(time_name(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn snapshots_in_one_second_get_distinct_names() {
        let snap = Snapshot {
            time_ns: 1_700_000_000_000_000_000,
            ..Snapshot::default()
        };
        let mut dir = Vec::new();
        let a = SnapshotId::from_bytes([1; 32]);
        let b = SnapshotId::from_bytes([2; 32]);
        push_timed(&mut dir, &snap, &a, 10);
        push_timed(&mut dir, &snap, &b, 11);
        assert_eq!(dir[0].0, b"2023-11-14T22:13:20Z");
        assert_eq!(dir[1].0, b"2023-11-14T22:13:20Z-02020202");
    }

    #[test]
    fn missing_fuse_names_the_package_to_install() {
        let e = MountError::FuseMissing("/dev/fuse does not exist".into()).to_string();
        assert!(e.contains("/dev/fuse does not exist"), "{e}");
        assert!(e.contains("install the package fuse3"), "{e}");
    }

    #[test]
    fn a_mount_point_must_be_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_mountpoint(dir.path()).is_ok());
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let full = check_mountpoint(dir.path()).unwrap_err().to_string();
        assert!(full.ends_with("is not empty"), "{full}");
        let file = check_mountpoint(&dir.path().join("f"))
            .unwrap_err()
            .to_string();
        assert!(file.ends_with("is not a directory"), "{file}");
        let gone = check_mountpoint(&dir.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(gone.ends_with("no such directory"), "{gone}");
    }

    #[test]
    fn inode_numbers_start_at_one() {
        assert_eq!(index(1).ok(), Some(0));
        assert_eq!(index(7).ok(), Some(6));
        assert!(index(0).is_err());
    }
}
