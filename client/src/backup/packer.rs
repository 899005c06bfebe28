//! Packing: prepared chunks in, durable registered packs out.
//!
//! One thread owns the open data pack and the open tree pack and seals each
//! chunk straight into its pack (one copy of its bytes; AES-GCM seals at
//! several GB/s, so one thread keeps up with every core cutting and
//! hashing). Pack buffers are recycled once their upload is done. A full pack is
//! uploaded on the async runtime (a bounded number in flight, so memory stays
//! at a few packs) and registered in the index only after the store has
//! acknowledged it: the index never points at bytes that are not durable.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::PackId;
use cairn_chunk_store::pack::{
    BlobKind, PackBody, PackBuffers, PackWriter, PreparedBlob, SPILL_PIECE,
};
use crossbeam_channel::Receiver;
use tokio::sync::Semaphore;

use super::Shared;

/// Uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 3;

/// Runs [`run`] on a thread of its own; a failure aborts the pipeline.
pub fn start(
    shared: Arc<Shared>,
    blobs: Receiver<PreparedBlob>,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("packer".into())
        .spawn(move || {
            let r = run(shared.clone(), blobs, failure);
            if r.is_err() {
                shared.counters.abort();
            }
            r
        })
        .map_err(|e| anyhow!("starting the packer: {e}"))
}

/// Runs the packer until every sender is dropped; then flushes and waits for
/// all uploads. Returns the first failure.
pub fn run(
    shared: Arc<Shared>,
    blobs: Receiver<PreparedBlob>,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
) -> Result<()> {
    let (handle, repo) = (&shared.handle, &shared.repo);
    let target = repo.config().pack_size as usize;
    let sem = Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT));
    let mut uploads = Vec::new();
    // A pack closes once it reaches the target, so it holds at most one
    // maximum chunk more (plus its trailer): room for that keeps the buffer
    // from moving, and so aligned. Every upload in flight and the open pack
    // each hold a buffer, unless the store takes data packs in pieces (a
    // local repository): such a pack is written out as it fills, by a
    // thread of its own while this one seals the next chunks, and holds
    // two buffers of at most `SPILL_PIECE` and a chunk (the piece being
    // written and the one filling), which go back to the pool once
    // written.
    let max_chunk = repo.config().chunker.max as usize;
    let (whole, spooled) = (
        target + max_chunk + (1 << 20),
        SPILL_PIECE + max_chunk + (1 << 20),
    );
    let pool = PackBuffers::new(UPLOADS_IN_FLIGHT + 2);
    let new_pack = |kind: BlobKind| -> Result<PackWriter> {
        let id = PackId::random();
        Ok(match kind {
            // A dry run stores nothing, so it writes nothing out.
            BlobKind::Data if !shared.dry_run => match repo.pack_writer(&id)? {
                Some(out) => PackWriter::spooled_in(id, kind, spooled, &pool, out)
                    .context("starting a pack's writer")?,
                None => PackWriter::new_in(kind, whole, &pool),
            },
            BlobKind::Data => PackWriter::new_in(kind, whole, &pool),
            BlobKind::Tree => PackWriter::new(kind, 1 << 20),
        })
    };
    let mut data = new_pack(BlobKind::Data)?;
    let mut trees = new_pack(BlobKind::Tree)?;

    let mut ship = |pack: PackWriter| -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let permit = handle
            .block_on(sem.clone().acquire_owned())
            .map_err(|e| anyhow!("upload queue closed: {e}"))?;
        let kind = pack.kind();
        let (id, body, entries) = pack.finish(repo.keys())?;
        let len = body.size();
        // Tree packs are built in memory; the tree cache keeps a copy.
        let kept = match (&body, &shared.tree_cache) {
            (PackBody::Memory(bytes), Some(cache)) if kind == BlobKind::Tree => {
                Some((bytes.clone(), cache.clone()))
            }
            _ => None,
        };
        let shared = shared.clone();
        let failure = failure.clone();
        uploads.push(handle.spawn(async move {
            let _permit = permit;
            let result: Result<()> = async {
                if shared.dry_run {
                    // What would be stored, counted; nothing leaves.
                    shared.counters.add_stored(len);
                    return Ok(());
                }
                shared.repo.put_pack(&id, body).await?;
                shared.counters.add_stored(len);
                if let Some((bytes, cache)) = kept {
                    // Off the runtime's threads: it writes a file.
                    let _ = tokio::task::spawn_blocking(move || cache.keep(&id, &bytes)).await;
                }
                shared.index.register_pack(id, &entries).await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                shared.counters.abort();
                let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e.context(format!("storing pack {id}")));
            }
        }));
        Ok(())
    };

    for blob in blobs {
        let writer = match blob.kind {
            BlobKind::Data => &mut data,
            BlobKind::Tree => &mut trees,
        };
        writer.seal(repo.keys(), &blob);
        writer
            .spill()
            .with_context(|| format!("writing pack {}", writer.id()))?;
        if writer.len() >= target {
            // Finished first, so that its buffer is free for the next.
            let kind = writer.kind();
            let full = std::mem::replace(writer, PackWriter::new(kind, 0));
            ship(full)?;
            *writer = new_pack(kind)?;
        }
    }
    ship(data)?;
    ship(trees)?;
    for u in uploads {
        handle
            .block_on(u)
            .map_err(|e| anyhow!("upload task failed: {e}"))?;
    }
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    Ok(())
}
