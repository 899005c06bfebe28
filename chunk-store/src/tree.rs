//! Directory trees: one tree chunk per directory.
//!
//! A tree lists a directory's entries sorted by name (bytewise). Files carry
//! their ordered chunk list; directories carry the id of their own tree, so
//! an unchanged subtree encodes to the same bytes and deduplicates like any
//! other chunk. Trees are protobuf (prost) with a version field; prost
//! encodes fields in tag order with no maps, so equal trees give equal bytes.

use crate::error::FormatError;
use crate::id::ChunkId;

/// Current tree format version.
pub const TREE_VERSION: u32 = 1;

/// Kind of a tree entry. Discriminants are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
    /// Named pipe.
    Fifo = 4,
    /// Character device.
    CharDevice = 5,
    /// Block device.
    BlockDevice = 6,
    /// Unix socket (recorded, not restored).
    Socket = 7,
}

impl NodeKind {
    /// Decodes the stored discriminant.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::File,
            2 => Self::Dir,
            3 => Self::Symlink,
            4 => Self::Fifo,
            5 => Self::CharDevice,
            6 => Self::BlockDevice,
            7 => Self::Socket,
            _ => return None,
        })
    }
}

/// An extended attribute.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Xattr {
    /// Attribute name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// Attribute value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// One directory entry.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Node {
    /// File name (raw bytes; Unix names need not be UTF-8).
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// [`NodeKind`].
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    /// Permission bits (`st_mode & 0o7777`).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// Owner uid.
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    /// Owner gid.
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "6")]
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub ctime_ns: i64,
    /// Size in bytes (files).
    #[prost(uint64, tag = "8")]
    pub size: u64,
    /// Inode number at backup time.
    #[prost(uint64, tag = "9")]
    pub inode: u64,
    /// Device number at backup time.
    #[prost(uint64, tag = "10")]
    pub device: u64,
    /// Hard link count at backup time.
    #[prost(uint64, tag = "11")]
    pub nlink: u64,
    /// Extended attributes, sorted by name.
    #[prost(message, repeated, tag = "12")]
    pub xattrs: Vec<Xattr>,
    /// Symlink target (raw bytes).
    #[prost(bytes = "vec", tag = "13")]
    pub symlink_target: Vec<u8>,
    /// Files: concatenated 32-byte chunk ids, in file order.
    #[prost(bytes = "vec", tag = "14")]
    pub chunks: Vec<u8>,
    /// Directories: id of the subtree (32 bytes).
    #[prost(bytes = "vec", tag = "15")]
    pub subtree: Vec<u8>,
    /// Device number for device nodes (`st_rdev`).
    #[prost(uint64, tag = "16")]
    pub rdev: u64,
}

impl Node {
    /// The decoded kind.
    pub fn node_kind(&self) -> Option<NodeKind> {
        NodeKind::from_u32(self.kind)
    }

    /// The name as a path component.
    pub fn name_os(&self) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.name)
    }

    /// The chunk ids of a file.
    pub fn chunk_ids(&self) -> Result<Vec<ChunkId>, FormatError> {
        if !self.chunks.len().is_multiple_of(32) {
            return Err(FormatError::Corrupt {
                what: "tree",
                detail: "chunk list is not a multiple of 32 bytes".into(),
            });
        }
        self.chunks
            .chunks_exact(32)
            .map(|c| {
                ChunkId::from_slice(c).map_err(|e| FormatError::Corrupt {
                    what: "tree",
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Sets a file's chunk list.
    pub fn set_chunk_ids(&mut self, ids: &[ChunkId]) {
        self.chunks.clear();
        for id in ids {
            self.chunks.extend_from_slice(id.as_bytes());
        }
    }

    /// The subtree of a directory.
    pub fn subtree_id(&self) -> Result<ChunkId, FormatError> {
        ChunkId::from_slice(&self.subtree).map_err(|e| FormatError::Corrupt {
            what: "tree",
            detail: format!("directory {:?}: {e}", String::from_utf8_lossy(&self.name)),
        })
    }
}

/// A directory listing.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Tree {
    /// Format version ([`TREE_VERSION`]).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Entries sorted by name.
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree of `nodes` (sorted here).
    pub fn new(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            version: TREE_VERSION,
            nodes,
        }
    }

    /// Canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        self.encode_to_vec()
    }

    /// Decodes and checks the version.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        use prost::Message;
        let tree = <Self as Message>::decode(bytes).map_err(|e| FormatError::from(("tree", e)))?;
        if tree.version == 0 || tree.version > TREE_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "tree",
                version: tree.version as u16,
            });
        }
        Ok(tree)
    }

    /// The entry named `name`.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tree_bytes_are_pinned() {
        let mut node = Node {
            name: b"a".to_vec(),
            kind: NodeKind::File as u32,
            mode: 0o644,
            size: 3,
            mtime_ns: 1,
            ..Default::default()
        };
        node.set_chunk_ids(&[ChunkId::from_bytes([0xcc; 32])]);
        let tree = Tree::new(vec![node]);
        // Frozen bytes of format version 1.
        assert_eq!(
            hex::encode(tree.encode()),
            concat!(
                "0801122e0a0161100118a4033001400372",
                "20cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
            )
        );
        assert_eq!(Tree::decode_bytes(&tree.encode()).unwrap(), tree);
    }

    #[test]
    fn rejects_future_versions_and_garbage() {
        let t = Tree {
            version: 99,
            nodes: vec![],
        };
        assert!(matches!(
            Tree::decode_bytes(&t.encode()),
            Err(FormatError::UnsupportedVersion { .. })
        ));
        assert!(Tree::decode_bytes(&[0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(t) = Tree::decode_bytes(&bytes) {
                for n in &t.nodes { let _ = n.chunk_ids(); let _ = n.subtree_id(); }
            }
        }

        #[test]
        fn round_trip(names in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..20), 0..20), size in any::<u64>()) {
            let nodes: Vec<Node> = names.into_iter().map(|name| Node { name, size, kind: 1, ..Default::default() }).collect();
            let tree = Tree::new(nodes);
            prop_assert_eq!(Tree::decode_bytes(&tree.encode()).unwrap(), tree);
        }
    }
}
