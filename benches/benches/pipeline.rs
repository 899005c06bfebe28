//! Micro-benchmarks of the backup pipeline's CPU stages.
//!
//! Each stage is measured alone on the library code a backup runs
//! (`cairn-chunk-store`), with throughput in bytes of plaintext, so the
//! numbers compare directly with each other and with disk and network rates:
//!
//! | group                    | what                                                   |
//! |--------------------------|--------------------------------------------------------|
//! | `chunking`               | FastCDC and the PRF rule, default bounds, 64 MiB of    |
//! |                          | random data; and                                       |
//! |                          | one stream of it cut alone and in parts on every core  |
//! | `fingerprint`            | keyed BLAKE3 and HMAC-SHA256 of a 1 MiB chunk          |
//! | `compress`               | zstd level 3 of 1 MiB of log-like text                 |
//! | `seal`                   | AES-256-GCM and XChaCha20-Poly1305 of a 1 MiB chunk    |
//! | `pack`                   | `seal_blob` + `PackWriter` for 16 MiB of 1 MiB chunks, |
//! |                          | unpadded and Padmé-padded                              |
//! | `tree`                   | encoding one directory of 1000 files                   |
//! | `ceiling`                | chunk + fingerprint of 2 GiB on every core: the best a |
//! |                          | backup from the page cache could do before compression |
//!
//! Run: `cargo bench -p cairn-benches` (or add `-- chunking` to pick a group).

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use cairn_benches::{pseudo_random, text_like, worker_count};
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::chunker::{ChunkStream, Chunker, ChunkerParams, CutRule, SegmentPool};
use cairn_chunk_store::crypto::{Cipher, MasterKey, RepoKeys};
use cairn_chunk_store::cut_ahead::{CutAhead, CutHelpers};
use cairn_chunk_store::fingerprint::{Fingerprinter, HashAlgo};
use cairn_chunk_store::pack::{BlobKind, PackWriter, Padding, seal_blob};
use cairn_chunk_store::tree::{Node, NodeKind, Tree};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;
const ZSTD_LEVEL: i32 = 3;

fn keys() -> RepoKeys {
    RepoKeys::derive(&MasterKey::from_bytes([7; 32]), Cipher::DEFAULT)
}

fn chunking(c: &mut Criterion) {
    let keys = keys();
    let chunker = Chunker::new(ChunkerParams::DEFAULT, keys.chunker_key());
    let data = pseudo_random(64 * MIB, 1);
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("fastcdc_default_64MiB", |b| {
        b.iter(|| chunker.chunks(black_box(&data)).count())
    });
    let prf = Chunker::new(
        ChunkerParams::DEFAULT.with_rule(CutRule::Prf),
        keys.chunker_key(),
    );
    group.bench_function("prf_default_64MiB", |b| {
        b.iter(|| prf.chunks(black_box(&data)).count())
    });
    // A stream as a backup reads one large file: segments copied from the
    // source, cut by the stream alone, then in parts with helper threads.
    let stream = |helpers: Option<(CutHelpers, usize)>| {
        let pool = SegmentPool::new(&chunker, 1, 4);
        let mut s = ChunkStream::new(&chunker, black_box(&data[..]), &pool);
        if let Some((helpers, parts)) = helpers {
            s = s.with_helpers(helpers, parts);
        }
        let mut n = 0;
        while let Ok(Some(chunk)) = s.next_chunk() {
            n += chunk.len();
        }
        n
    };
    group.bench_function("stream_64MiB_1_thread", |b| b.iter(|| stream(None)));
    let threads = worker_count();
    if threads > 1 {
        let (tx, rx) = std::sync::mpsc::channel::<CutAhead>();
        let rx = std::sync::Mutex::new(rx);
        thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|| {
                    loop {
                        let part = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        match part {
                            Ok(part) => part.run(&chunker),
                            Err(_) => break,
                        }
                    }
                });
            }
            let helpers: CutHelpers = std::sync::Arc::new(move |part| tx.send(part).is_ok());
            group.bench_function(format!("stream_64MiB_{threads}_threads"), |b| {
                b.iter(|| stream(Some((helpers.clone(), threads))))
            });
            // Dropping the last sender stops the helpers.
            drop(helpers);
        });
    }
    group.finish();
}

fn fingerprint(c: &mut Criterion) {
    let keys = keys();
    let data = pseudo_random(MIB, 2);
    let mut group = c.benchmark_group("fingerprint");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for algo in [HashAlgo::Blake3, HashAlgo::HmacSha256] {
        let fingerprinter = Fingerprinter::new(algo, *keys.fingerprint_key());
        group.bench_function(format!("{}_1MiB", algo.name()), |b| {
            b.iter(|| fingerprinter.chunk_id(black_box(&data)))
        });
    }
    group.finish();
}

fn compress(c: &mut Criterion) {
    let text = text_like(MIB, 3);
    let mut group = c.benchmark_group("compress");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("zstd3_text_1MiB", |b| {
        b.iter(
            || match zstd::bulk::compress(black_box(&text), ZSTD_LEVEL) {
                Ok(packed) => packed.len(),
                Err(e) => panic!("zstd failed on an in-memory buffer: {e}"),
            },
        )
    });
    group.finish();
}

fn seal(c: &mut Criterion) {
    let keys = keys();
    let data = pseudo_random(MIB, 4);
    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let keys = keys.with_cipher(cipher);
        group.bench_function(format!("{}_1MiB", cipher.name()), |b| {
            b.iter(|| keys.seal(b"bench", black_box(&data)))
        });
        let sealed = keys.seal(b"bench", &data);
        group.bench_function(format!("{}_open_1MiB", cipher.name()), |b| {
            b.iter(|| keys.open(b"bench", black_box(&sealed)).map(|p| p.len()))
        });
    }
    group.finish();
}

fn pack(c: &mut Criterion) {
    let keys = keys();
    let fingerprinter = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
    let mut group = c.benchmark_group("pack");
    group.throughput(Throughput::Bytes(16 * MIB as u64));
    group.sample_size(20);
    // Log-like text exercises compression; random data takes the path where
    // zstd is tried, does not help, and the plaintext is sealed as is.
    for (name, data) in [
        ("write_16MiB_text", text_like(16 * MIB, 5)),
        ("write_16MiB_random", pseudo_random(16 * MIB, 6)),
    ] {
        let chunks: Vec<(ChunkId, &[u8])> = data
            .chunks(MIB)
            .map(|chunk| (fingerprinter.chunk_id(chunk), chunk))
            .collect();
        for (suffix, padding) in [("", Padding::None), ("_padme", Padding::Padme)] {
            group.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| {
                    let mut writer = PackWriter::new(BlobKind::Data, 17 * MIB);
                    for (id, chunk) in &chunks {
                        writer.add(seal_blob(
                            &keys,
                            *id,
                            BlobKind::Data,
                            chunk,
                            ZSTD_LEVEL,
                            padding,
                        ));
                    }
                    writer.finish(&keys).map_or(0, |(_, body, _)| body.size())
                })
            });
        }
    }
    group.finish();
}

fn tree(c: &mut Criterion) {
    let nodes: Vec<Node> = (0..1000u64)
        .map(|i| {
            let mut node = Node {
                name: format!("file-{i:05}.dat").into_bytes(),
                kind: NodeKind::File as u32,
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                mtime_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_003,
                ctime_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_007,
                size: 3 * MIB as u64 + i,
                inode: 1_000_000 + i,
                device: 2049,
                nlink: 1,
                ..Default::default()
            };
            let ids: Vec<ChunkId> = (0..3u8)
                .map(|k| {
                    ChunkId::from_bytes(*blake3::hash(&[k, i as u8, (i >> 8) as u8]).as_bytes())
                })
                .collect();
            node.set_chunk_ids(&ids);
            node
        })
        .collect();
    let tree = Tree::new(nodes);
    let mut group = c.benchmark_group("tree");
    group.throughput(Throughput::Bytes(tree.encode().len() as u64));
    group.bench_function("encode_1000_nodes", |b| {
        b.iter(|| black_box(&tree).encode())
    });
    group.finish();
}

/// Chunking and fingerprinting 2 GiB already in memory, split evenly across
/// every core: the ceiling of a backup whose source is in the page cache and
/// whose chunks are all known already (nothing to compress, seal or upload).
fn ceiling(c: &mut Criterion) {
    const LEN: usize = 2 << 30;
    let keys = keys();
    let chunker = Chunker::new(ChunkerParams::DEFAULT, keys.chunker_key());
    let fingerprinter = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
    let threads = worker_count();
    // Built on first use, so filtering this group out does not cost 2 GiB.
    let mut data: Option<Vec<u8>> = None;
    let mut group = c.benchmark_group("ceiling");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(format!("chunk_fingerprint_2GiB_{threads}_threads"), |b| {
        let data = data.get_or_insert_with(|| pseudo_random(LEN, 7));
        let slice = data.len().div_ceil(threads);
        b.iter(|| {
            thread::scope(|scope| {
                let workers: Vec<_> = data
                    .chunks(slice)
                    .map(|part| {
                        scope.spawn(|| {
                            chunker
                                .chunks(part)
                                .map(|chunk| fingerprinter.chunk_id(chunk).as_bytes()[0] as usize)
                                .sum::<usize>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .sum::<usize>()
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    chunking,
    fingerprint,
    compress,
    seal,
    pack,
    tree,
    ceiling
);
criterion_main!(benches);
