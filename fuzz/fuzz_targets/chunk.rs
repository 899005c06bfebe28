//! A chunk that authenticates, with any recorded length and compression:
//! what restore does with a location from a lying index or trailer.
#![no_main]
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, blob_aad, open_blob};
use cairn_fuzz::{PACK, fingerprinter, keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, u8, bool, &[u8])| {
    // The compression byte: 0 none, 1 zstd, 2 and 3 the same padded.
    let (raw_len, compression, tree, payload) = input;
    let Some(compression) = Compression::from_u32(u32::from(compression % 4)) else {
        return;
    };
    let kind = if tree { BlobKind::Tree } else { BlobKind::Data };
    let id = ChunkId::from_bytes(*blake3::hash(payload).as_bytes());
    let sealed = keys().seal(&blob_aad(&id, kind), payload);
    let location = BlobLocation {
        pack: PACK,
        offset: 0,
        stored_len: sealed.len() as u32,
        raw_len,
        kind,
        compression,
    };
    let _ = open_blob(keys(), fingerprinter(), &id, &location, &sealed);
});
