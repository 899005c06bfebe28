//! An independent look into a repository through the format library, used as
//! the oracle for what the CLI should report (which files a damaged chunk
//! belongs to, how many distinct data chunks a snapshot has).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_chunk_store::pack::{BlobKind, BlobLocation, PackEntry};
use cairn_chunk_store::store::LocalStore;
use cairn_chunk_store::tree::{NodeKind, Tree};
use cairn_chunk_store::{ChunkId, PackId, Repository, SnapshotId};

pub struct Inspector {
    rt: tokio::runtime::Runtime,
    repo: Repository,
}

impl Inspector {
    pub fn open(dir: &Path, password: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let store = Arc::new(LocalStore::new(dir));
        let repo = rt
            .block_on(Repository::open(store, password.as_bytes()))
            .expect("open repository with the format library");
        Self { rt, repo }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn pack_entries(&self, pack_hex: &str) -> Vec<PackEntry> {
        let id: PackId = pack_hex.parse().expect("pack id");
        self.rt
            .block_on(self.repo.read_pack_trailer(&id, None))
            .unwrap_or_else(|e| panic!("read trailer of pack {pack_hex}: {e}"))
    }

    /// Where every chunk of every pack is.
    pub fn locations(&self) -> HashMap<ChunkId, BlobLocation> {
        let packs = self
            .rt
            .block_on(self.repo.list_packs())
            .expect("list packs");
        let mut out = HashMap::new();
        for (id, size) in packs {
            let entries = self
                .rt
                .block_on(self.repo.read_pack_trailer(&id, Some(size)))
                .unwrap_or_else(|e| panic!("read trailer of pack {id}: {e}"));
            for e in entries {
                out.insert(e.id, e.location);
            }
        }
        out
    }

    /// Absolute path -> chunk list of every regular file in a snapshot.
    pub fn files(&self, snapshot_hex: &str) -> BTreeMap<PathBuf, Vec<ChunkId>> {
        let id: SnapshotId = snapshot_hex.parse().expect("snapshot id");
        let snap = self
            .rt
            .block_on(self.repo.load_snapshot(&id))
            .expect("load snapshot");
        let locations = self.locations();
        let mut out = BTreeMap::new();
        let mut stack = vec![(PathBuf::from("/"), snap.root_tree().expect("root tree id"))];
        while let Some((dir, tree_id)) = stack.pop() {
            let loc = locations
                .get(&tree_id)
                .unwrap_or_else(|| panic!("tree {tree_id} of {} is in no pack", dir.display()));
            assert_eq!(loc.kind, BlobKind::Tree, "chunk {tree_id} should be a tree");
            let bytes = self
                .rt
                .block_on(self.repo.read_blob(&tree_id, loc))
                .expect("read tree");
            let tree = Tree::decode_bytes(&bytes).expect("decode tree");
            for node in &tree.nodes {
                let path = dir.join(node.name_os());
                match node.node_kind() {
                    Some(NodeKind::File) => {
                        out.insert(path, node.chunk_ids().expect("chunk ids"));
                    }
                    Some(NodeKind::Dir) => {
                        stack.push((path, node.subtree_id().expect("subtree id")))
                    }
                    _ => {}
                }
            }
        }
        out
    }
}
