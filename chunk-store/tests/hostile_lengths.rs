#![allow(clippy::unwrap_used, clippy::expect_used)]
// A counting allocator is the one way to see what a call allocates.
#![allow(unsafe_code)]
//! A chunk's recorded length comes from a pack trailer or from the index,
//! so a hostile writer or a lying index node chooses it. Opening a chunk
//! must not allocate what that length claims (found by the `chunk` fuzz
//! target: a 4 GiB allocation for a chunk recorded as 4 GiB long).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_chunk_store::ChunkId;
use cairn_chunk_store::PackId;
use cairn_chunk_store::crypto::{Cipher, MasterKey, RepoKeys};
use cairn_chunk_store::fingerprint::{Fingerprinter, HashAlgo};
use cairn_chunk_store::pack::{BlobKind, BlobLocation, Compression, blob_aad, open_blob};

/// Counts the largest single allocation.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn a_chunk_recorded_as_huge_is_refused_without_allocating_its_claim() {
    let keys = RepoKeys::derive(&MasterKey::from_bytes([7; 32]), Cipher::Aes256Gcm);
    let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
    let plain = vec![b'x'; 100_000];
    let payload = zstd::bulk::compress(&plain, 3).unwrap();
    for kind in [BlobKind::Data, BlobKind::Tree] {
        let id = ChunkId::from_bytes([1; 32]);
        let sealed = keys.seal(&blob_aad(&id, kind), &payload);
        for raw_len in [u32::MAX, 1 << 30, 200_000, 50_000] {
            LARGEST.store(0, Ordering::Relaxed);
            let location = BlobLocation {
                pack: PackId::from_bytes([2; 32]),
                offset: 0,
                stored_len: sealed.len() as u32,
                raw_len,
                kind,
                compression: Compression::Zstd,
            };
            let err = open_blob(&keys, &fp, &id, &location, &sealed).unwrap_err();
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(
                largest < 4 << 20,
                "{kind:?} recorded as {raw_len} bytes: an allocation of {largest} bytes ({err})"
            );
        }
    }
}
