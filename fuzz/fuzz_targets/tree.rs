//! A tree object's bytes (trees are chunks: they authenticate, but a
//! writer with the key makes them).
#![no_main]
use cairn_chunk_store::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(tree) = Tree::decode_bytes(bytes) {
        for node in &tree.nodes {
            let _ = node.node_kind();
            let _ = node.chunk_ids();
            let _ = node.subtree_id();
            let _ = tree.find(&node.name);
        }
        let _ = Tree::decode_bytes(&tree.encode());
    }
});
