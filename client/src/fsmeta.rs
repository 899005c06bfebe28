//! File metadata: from `lstat` into tree nodes, and back onto restored files.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cairn_chunk_store::tree::{Node, NodeKind, Xattr};
use filetime::FileTime;

/// The `lstat` fields a tree node records: 72 bytes where a [`Metadata`]
/// takes about 180, which counts when a backup holds tens of thousands of
/// them (`backup::early`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl From<&Metadata> for Stat {
    fn from(meta: &Metadata) -> Self {
        Self {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
            device: meta.dev(),
            nlink: meta.nlink(),
            rdev: meta.rdev(),
        }
    }
}

impl Stat {
    /// The kind of file.
    pub fn kind(&self) -> NodeKind {
        match self.mode & libc::S_IFMT {
            libc::S_IFDIR => NodeKind::Dir,
            libc::S_IFLNK => NodeKind::Symlink,
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            libc::S_IFSOCK => NodeKind::Socket,
            _ => NodeKind::File,
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == NodeKind::Dir
    }
}

/// A node for `path` with metadata `meta` (no chunks, no subtree yet).
pub fn node_from_metadata(path: &Path, name: &[u8], meta: &Metadata) -> io::Result<Node> {
    let mut node = node_without_xattrs(path, name, &Stat::from(meta))?;
    node.xattrs = read_xattrs(path);
    Ok(node)
}

/// [`node_from_metadata`] without reading the extended attributes: for an
/// entry whose xattrs are known to be those of its parent snapshot's node
/// (changing an xattr changes the ctime, so a file that is [`unchanged`]
/// has its old xattrs).
pub fn node_without_xattrs(path: &Path, name: &[u8], stat: &Stat) -> io::Result<Node> {
    let kind = stat.kind();
    let symlink_target = if kind == NodeKind::Symlink {
        fs::read_link(path)?.as_os_str().as_bytes().to_vec()
    } else {
        Vec::new()
    };
    Ok(Node {
        name: name.to_vec(),
        kind: kind as u32,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        mtime_ns: stat.mtime_ns,
        ctime_ns: stat.ctime_ns,
        size: if kind == NodeKind::File { stat.size } else { 0 },
        inode: stat.inode,
        device: stat.device,
        nlink: stat.nlink,
        xattrs: Vec::new(),
        symlink_target,
        chunks: Vec::new(),
        subtree: Vec::new(),
        rdev: stat.rdev,
    })
}

/// Extended attributes of `path` (not following symlinks), sorted by name.
/// Filesystems without xattr support simply yield none.
pub fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<Xattr> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// True when a file can be reused from its parent snapshot without reading:
/// same size, mtime, ctime and inode.
pub fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind == new.kind
        && old.size == new.size
        && old.mtime_ns == new.mtime_ns
        && old.ctime_ns == new.ctime_ns
        && old.inode == new.inode
}

fn file_time(ns: i64) -> FileTime {
    FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// Applies ownership (when root), mode, xattrs and times to a restored entry.
/// Times go last, since every other change touches them.
pub fn apply_metadata(path: &Path, node: &Node, is_root: bool) -> io::Result<()> {
    let kind = node.node_kind().unwrap_or(NodeKind::File);
    if is_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    }
    if kind != NodeKind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode))?;
    }
    for x in &node.xattrs {
        let name = std::ffi::OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value) {
            // Symlinks cannot carry user.* attributes on Linux.
            if kind != NodeKind::Symlink {
                return Err(e);
            }
        }
    }
    if kind == NodeKind::Dir && node.mtime_ns == 0 && node.ctime_ns == 0 {
        // A directory above the backed-up paths: no times were recorded.
        return Ok(());
    }
    let t = file_time(node.mtime_ns);
    filetime::set_symlink_file_times(path, t, t)
}

/// [`apply_metadata`] for a regular file that is open for writing: the same
/// changes in the same order, through the descriptor (no path lookups).
pub fn apply_file_metadata(file: &fs::File, node: &Node, is_root: bool) -> io::Result<()> {
    use xattr::FileExt;
    if is_root {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))?;
    }
    file.set_permissions(fs::Permissions::from_mode(node.mode))?;
    for x in &node.xattrs {
        file.set_xattr(std::ffi::OsStr::from_bytes(&x.name), &x.value)?;
    }
    let t = file_time(node.mtime_ns);
    filetime::set_file_handle_times(file, Some(t), Some(t))
}
