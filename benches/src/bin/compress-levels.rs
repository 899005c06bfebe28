//! What each zstd level costs and saves on real files, chunk by chunk as a
//! backup stores them (`docs/BENCHMARKS.md`, "Compression level"):
//!
//!   compress-levels [--levels 1,2,3] DIR...
//!
//! Every regular file under DIR is cut by the default chunker (a fixed key)
//! and each chunk is prepared by `cairn_chunk_store::pack::prepare_blob` at
//! every level, exactly as a backup does: the sampled "store raw" probe for
//! large chunks, then compression when it saves at least 16 bytes, then
//! Padmé padding. Prints one JSON line per level: the padded bytes stored, the ratio
//! to the raw bytes, the chunks kept raw, and the CPU seconds and MB/s of one
//! core. Level 0 stands for "never compress".

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::chunker::{Chunker, ChunkerParams};
use cairn_chunk_store::pack::{BlobKind, Padding, padme, prepare_blob};

struct Totals {
    level: i32,
    stored: u64,
    raw_chunks: u64,
    seconds: f64,
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let kind = e.file_type()?;
        if kind.is_dir() {
            files_under(&e.path(), out)?;
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let mut levels = vec![0, 1, 2, 3];
    let mut dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--levels" => {
                let list = args.next().ok_or("--levels needs a list")?;
                levels = list
                    .split(',')
                    .map(|l| l.parse().map_err(|e| format!("level {l}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    if dirs.is_empty() {
        return Err("usage: compress-levels [--levels 1,2,3] DIR...".into());
    }
    let mut files = Vec::new();
    for d in &dirs {
        files_under(d, &mut files).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let chunker = Chunker::new(ChunkerParams::DEFAULT, &[7; 32]);
    let mut totals: Vec<Totals> = levels
        .iter()
        .map(|&level| Totals {
            level,
            stored: 0,
            raw_chunks: 0,
            seconds: 0.0,
        })
        .collect();
    let (mut raw, mut chunks) = (0u64, 0u64);
    for f in &files {
        let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for chunk in chunker.chunks(&data) {
            raw += chunk.len() as u64;
            chunks += 1;
            let plain = Bytes::copy_from_slice(chunk);
            let id = ChunkId::from_bytes(*blake3::hash(chunk).as_bytes());
            for t in &mut totals {
                let start = Instant::now();
                let blob = if t.level == 0 {
                    None
                } else {
                    Some(prepare_blob(
                        id,
                        BlobKind::Data,
                        plain.clone(),
                        t.level,
                        Padding::Padme,
                    ))
                };
                t.seconds += start.elapsed().as_secs_f64();
                // Padded as in a pack (the AEAD tag, the same for every
                // level, is left out).
                let (payload, compressed) = match &blob {
                    Some(b) => (b.payload.len(), b.compression.is_zstd()),
                    None => (chunk.len(), false),
                };
                let stored = padme(payload as u64 + 4);
                t.stored += stored;
                t.raw_chunks += u64::from(!compressed);
            }
        }
    }
    for t in &totals {
        println!(
            "{{\"level\":{},\"files\":{},\"chunks\":{},\"raw_bytes\":{},\"stored_bytes\":{},\"ratio\":{:.4},\"chunks_raw\":{},\"cpu_s\":{:.3},\"mb_per_s\":{:.1}}}",
            t.level,
            files.len(),
            chunks,
            raw,
            t.stored,
            raw as f64 / t.stored.max(1) as f64,
            t.raw_chunks,
            t.seconds,
            if t.seconds > 0.0 {
                raw as f64 / t.seconds / 1e6
            } else {
                0.0
            },
        );
    }
    Ok(())
}
