//! File workers: read, chunk, fingerprint, deduplicate, compress and seal.
//!
//! Small files are read whole; larger ones stream through one of a fixed set
//! of chunking buffers (two maximum chunk sizes each, [`StreamBuffers`]), and
//! the chunks of large files waiting to be sealed by another worker are
//! bounded too, so memory is bounded by the number of cores, never by file
//! sizes or by the number of workers.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_chunk_store::ChunkId;
use cairn_chunk_store::chunker::ChunkStream;
use cairn_chunk_store::pack::{BlobKind, SealedBlob, seal_blob};
use crossbeam_channel::{Receiver, Sender};

use super::Shared;

/// A file to read.
pub struct FileJob {
    /// Absolute path.
    pub path: PathBuf,
    /// Size seen by `lstat` (a hint; the bytes read are what counts).
    pub size: u64,
    /// Where the result goes.
    pub reply: Sender<FileResult>,
}

/// What reading a file produced.
pub type FileResult = Result<FileChunks, String>;

/// The chunk list of a file that was read.
#[derive(Debug)]
pub struct FileChunks {
    /// Chunk ids in file order.
    pub chunks: Vec<ChunkId>,
    /// Bytes read.
    pub size: u64,
}

/// The chunking buffers that workers share: a worker streaming a file takes
/// one for the length of the file, so there are never more than were made.
#[derive(Clone)]
pub struct StreamBuffers {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl StreamBuffers {
    /// `count` buffers (allocated on first use).
    pub fn new(count: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(count);
        for _ in 0..count {
            let _ = tx.send(Vec::new());
        }
        Self { tx, rx }
    }
}

/// A chunk of a large file, fingerprinted and claimed, to compress and seal
/// on whichever worker is free.
pub struct SealJob {
    id: ChunkId,
    data: Vec<u8>,
}

/// The queue of [`SealJob`]s that all workers share. Give each worker a
/// clone and drop the original: the queue closes when every worker is done.
#[derive(Clone)]
pub struct SealQueue {
    tx: Sender<SealJob>,
    rx: Receiver<SealJob>,
}

impl SealQueue {
    /// A queue holding at most `capacity` chunks (each up to the maximum
    /// chunk size).
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Self { tx, rx }
    }
}

/// Worker loop: processes files until the job channel closes, and helps
/// seal the chunks of large files that other workers are reading (those come
/// first, so a single large file keeps every core busy). A worker whose job
/// channel has closed keeps sealing until every worker has finished reading
/// (each holds a sender of the queue until then).
pub fn worker(
    shared: Arc<Shared>,
    jobs: Receiver<FileJob>,
    seals: SealQueue,
    buffers: StreamBuffers,
    blobs: Sender<SealedBlob>,
) {
    let SealQueue { tx, rx } = seals;
    let mut reading = Some(tx);
    loop {
        let Some(tx) = &reading else {
            match rx.recv() {
                Ok(job) => {
                    seal(&shared, job.id, &job.data, &blobs);
                    continue;
                }
                Err(_) => break,
            }
        };
        crossbeam_channel::select_biased! {
            recv(rx) -> job => {
                if let Ok(job) = job {
                    seal(&shared, job.id, &job.data, &blobs);
                }
            }
            recv(jobs) -> job => match job {
                Ok(job) => {
                    let result = if shared.counters.aborted() {
                        Err("backup aborted".to_string())
                    } else {
                        process(&shared, &job, tx, &blobs, &buffers)
                    };
                    let _ = job.reply.send(result);
                }
                Err(_) => reading = None,
            },
        }
    }
}

fn seal(shared: &Shared, id: ChunkId, data: &[u8], blobs: &Sender<SealedBlob>) -> bool {
    let blob = seal_blob(
        shared.repo.keys(),
        id,
        BlobKind::Data,
        data,
        shared.repo.config().zstd_level,
    );
    shared.counters.add_new_data(data.len() as u64);
    blobs.send(blob).is_ok()
}

fn process(
    shared: &Shared,
    job: &FileJob,
    seals: &Sender<SealJob>,
    blobs: &Sender<SealedBlob>,
    buffers: &StreamBuffers,
) -> FileResult {
    let file = File::open(&job.path).map_err(|e| e.to_string())?;
    let chunker = shared.repo.chunker();
    let mut chunks = Vec::with_capacity((job.size / u64::from(chunker.params().avg)) as usize + 1);
    let mut size = 0u64;
    // `hand_off`: queue the sealing for another worker when one is free.
    let mut on_chunk = |data: &[u8], hand_off: bool| -> Result<(), String> {
        size += data.len() as u64;
        shared.counters.add_read(data.len() as u64);
        let id = shared.repo.fingerprinter().chunk_id(data);
        chunks.push(id);
        if shared.claim(id, BlobKind::Data)? {
            let queued = hand_off
                && seals
                    .try_send(SealJob {
                        id,
                        data: data.to_vec(),
                    })
                    .is_ok();
            if !queued && !seal(shared, id, data, blobs) {
                return Err("backup aborted".to_string());
            }
        }
        Ok(())
    };
    if job.size < u64::from(chunker.params().min) {
        // Small file: one read, one chunk.
        let mut data = Vec::with_capacity(job.size as usize + 1);
        file.take(u64::from(chunker.params().max))
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        if data.len() < chunker.params().max as usize {
            if !data.is_empty() {
                on_chunk(&data, false)?;
            }
            return Ok(FileChunks { chunks, size });
        }
        // The file grew past a chunk while we looked: chunk it properly.
        let file = File::open(&job.path).map_err(|e| e.to_string())?;
        stream(file, shared, buffers, |data| on_chunk(data, true))?;
        return Ok(FileChunks { chunks, size });
    }
    stream(file, shared, buffers, |data| on_chunk(data, true))?;
    Ok(FileChunks { chunks, size })
}

fn stream(
    file: File,
    shared: &Shared,
    buffers: &StreamBuffers,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    // Every buffer goes back to the pool after its file, so one is always
    // coming (and the pool outlives the workers).
    let buf = buffers.rx.recv().unwrap_or_default();
    let mut s = ChunkStream::new(shared.repo.chunker(), file, buf);
    let result = loop {
        match s.next_chunk() {
            Ok(Some(chunk)) => {
                if let Err(e) = on_chunk(chunk) {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = buffers.tx.send(s.into_buffer());
    result
}
