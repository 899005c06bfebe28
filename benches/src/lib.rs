//! Inputs for Cairn's benchmarks.
//!
//! The micro-benchmarks live in `benches/pipeline.rs` (`cargo bench -p
//! cairn-benches`). This library holds what they share: deterministic
//! generators of benchmark data, so every run (and every machine) measures
//! the same bytes.

use std::thread;

/// `len` bytes of incompressible, deterministic data derived from `seed`.
///
/// Generated with BLAKE3's extendable output on every core, so even the
/// multi-GiB buffers of the throughput-ceiling benchmark take about a
/// second to build.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // Fixed-size segments, each with its own key, so the bytes do not depend
    // on the number of cores that produced them.
    const SEGMENT: usize = 64 << 20;
    let threads = worker_count();
    let segments: Vec<(usize, &mut [u8])> = out.chunks_mut(SEGMENT).enumerate().collect();
    let per_thread = segments.len().div_ceil(threads).max(1);
    let mut segments = segments.into_iter();
    thread::scope(|scope| {
        loop {
            let batch: Vec<(usize, &mut [u8])> = segments.by_ref().take(per_thread).collect();
            if batch.is_empty() {
                break;
            }
            scope.spawn(move || {
                for (index, segment) in batch {
                    let mut key = [0u8; 32];
                    key[..8].copy_from_slice(&seed.to_le_bytes());
                    key[8..16].copy_from_slice(&(index as u64).to_le_bytes());
                    blake3::Hasher::new_keyed(&key).finalize_xof().fill(segment);
                }
            });
        }
    });
    out
}

/// `len` bytes of text that compresses roughly like logs or source code:
/// lines of words from a small vocabulary, with a random number and a
/// random hex token on each line as noise.
pub fn text_like(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "chunk",
        "pack",
        "index",
        "tree",
        "snapshot",
        "backup",
        "restore",
        "the",
        "of",
        "a",
        "repository",
        "fingerprint",
        "manifest",
        "store",
        "object",
        "key",
        "error",
        "warning",
        "info",
        "debug",
        "session",
        "partition",
        "node",
        "filter",
        "upload",
        "download",
        "bytes",
        "file",
        "directory",
        "stored",
        "reused",
        "new",
    ];
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let words = 4 + (rng.next() % 9) as usize;
        for _ in 0..words {
            out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        let number = rng.next();
        out.extend_from_slice(format!("{} {:08x}\n", number % 100_000, number >> 32).as_bytes());
    }
    out.truncate(len);
    out
}

/// Threads to use for data generation and the parallel benchmarks: one per
/// core the process may run on.
pub fn worker_count() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// A tiny deterministic generator (SplitMix64); quality is ample for
/// picking words, and it keeps the benchmark inputs free of any RNG crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic() {
        assert_eq!(pseudo_random(100_000, 1), pseudo_random(100_000, 1));
        assert_ne!(pseudo_random(1000, 1), pseudo_random(1000, 2));
        assert_eq!(text_like(10_000, 3), text_like(10_000, 3));
        assert_eq!(text_like(10_000, 3).len(), 10_000);
    }

    #[test]
    fn text_compresses_but_not_trivially() {
        let text = text_like(1 << 20, 4);
        let packed = zstd::bulk::compress(&text, 3).unwrap();
        let ratio = text.len() as f64 / packed.len() as f64;
        assert!((1.5..10.0).contains(&ratio), "ratio {ratio}");
        let random = pseudo_random(1 << 20, 5);
        assert!(zstd::bulk::compress(&random, 3).unwrap().len() >= random.len());
    }
}
