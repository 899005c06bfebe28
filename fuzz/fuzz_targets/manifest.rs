//! A manifest whose envelope authenticates but whose body is anything.
#![no_main]
use cairn_chunk_store::envelope::{self, MANIFEST_MAGIC};
use cairn_chunk_store::manifest::{MANIFEST_VERSION, Snapshot};
use cairn_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let sealed = envelope::seal(keys(), MANIFEST_MAGIC, MANIFEST_VERSION, body);
    if let Ok(s) = Snapshot::open(keys(), &sealed) {
        let _ = (s.parent_id(), s.original_id(), s.copied_from_id());
    }
    // And any bytes where a manifest should be.
    let _ = Snapshot::open(keys(), body);
});
