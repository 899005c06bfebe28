//! File workers: read, chunk, fingerprint, deduplicate and compress.
//!
//! Small files are read whole; larger ones stream through segments of a
//! shared [`SegmentPool`], and each chunk is a slice of its segment that
//! travels without a copy to the packer, which seals it into the pack. The
//! worker reading a large file only reads and cuts: fingerprinting, the
//! index question and compression of its chunks go to a free worker
//! ([`ChunkQueue`]), so one large file keeps every core busy. Memory is
//! bounded by the pool and the queues, never by file sizes or by the number
//! of workers.
//!
//! Cutting itself is sequential in FastCDC, so the reader also hands the
//! later parts of each segment to free workers, which cut them ahead of it
//! ([`cairn_chunk_store::cut_ahead`]); the cuts are those of one sequential
//! pass, and a part nobody has started is cut by the reader.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_chunk_store::ChunkId;
use cairn_chunk_store::chunker::{ChunkStream, SegmentPool};
use cairn_chunk_store::cut_ahead::{CutAhead, CutHelpers};
use cairn_chunk_store::pack::{BlobKind, PreparedBlob};
use crossbeam_channel::{Receiver, Sender};

use super::Shared;

/// A file to read.
pub struct FileJob {
    /// Absolute path (for a stream, its path in the snapshot).
    pub path: PathBuf,
    /// A stream to read instead of the file at `path` (standard input, a
    /// command's output).
    pub stream: Option<Box<dyn Read + Send>>,
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

/// A chunk of a large file, cut and not yet fingerprinted, for whichever
/// worker is free.
pub struct ChunkJob {
    /// Position of the chunk in its file.
    index: usize,
    data: Bytes,
    reply: Sender<(usize, Result<ChunkId, String>)>,
}

/// Work a reader of a large file hands to free workers.
enum HandedOn {
    /// Fingerprint a chunk and store it if it is new.
    Chunk(ChunkJob),
    /// Cut a part of a segment ahead of its reader.
    Cut(CutAhead),
}

/// The work handed from readers of large files to free workers. Give each
/// worker a clone and drop the original: the queue closes when every worker
/// is done.
///
/// At most `limit` chunks are handed on at once (queued or being worked
/// on); a reader that finds them all taken does the work itself. With one
/// fewer than the cores, the reader and its helpers share the cores instead
/// of piling runnable threads onto them, and memory stays flat. The limit is
/// also below the segment pool's spare count, which keeps the pool from
/// waiting forever on chunks that only a waiting reader could drain.
///
/// Parts to cut are not counted: each pins only the segment its reader
/// holds anyway, and a part withdrawn before a worker took it lets go of
/// that at once (see `CutAhead`). The channel has room for a part per core
/// and stream besides the chunks; when it is full the reader cuts alone.
#[derive(Clone)]
pub struct ChunkQueue {
    /// `None` once this worker has stopped reading files.
    tx: Option<Sender<HandedOn>>,
    rx: Receiver<HandedOn>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    /// Parts each segment of a large file is cut in at once.
    cut_parts: usize,
}

impl ChunkQueue {
    /// A queue handing on at most `limit` chunks at once, and segments cut
    /// in `cut_parts` parts by up to `streams` readers.
    pub fn new(limit: usize, cut_parts: usize, streams: usize) -> Self {
        let limit = limit.max(1);
        let (tx, rx) = crossbeam_channel::bounded(limit + cut_parts * streams);
        Self {
            tx: Some(tx),
            rx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit,
            cut_parts,
        }
    }

    /// Where a reader hands the parts of its segments (none once this
    /// worker has stopped reading files).
    fn cut_helpers(&self) -> Option<CutHelpers> {
        let tx = self.tx.clone()?;
        Some(Arc::new(move |part| {
            tx.try_send(HandedOn::Cut(part)).is_ok()
        }))
    }

    /// Queues `job` if fewer than `limit` chunks are handed on; gives it
    /// back otherwise.
    fn try_hand_on(&self, job: ChunkJob) -> Result<(), ChunkJob> {
        let Some(tx) = &self.tx else {
            return Err(job);
        };
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(job);
        }
        tx.try_send(HandedOn::Chunk(job)).map_err(|e| {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            match e.into_inner() {
                HandedOn::Chunk(job) => job,
                HandedOn::Cut(_) => unreachable!("a chunk was sent"),
            }
        })
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Worker loop: processes files until the job channel closes, and works on
/// the chunks that readers of large files hand on (those come first, so a
/// single large file keeps every core busy). A worker whose job channel has
/// closed keeps working on chunks until every worker has finished reading
/// (each holds a sender of the queue until then).
pub fn worker(
    shared: Arc<Shared>,
    jobs: Receiver<FileJob>,
    mut queue: ChunkQueue,
    segments: SegmentPool,
    blobs: Sender<PreparedBlob>,
) {
    loop {
        if queue.tx.is_none() {
            match queue.rx.recv() {
                Ok(job) => work_on(&shared, &queue, job, &blobs),
                Err(_) => break,
            }
            continue;
        }
        crossbeam_channel::select_biased! {
            recv(queue.rx) -> job => {
                if let Ok(job) = job {
                    work_on(&shared, &queue, job, &blobs);
                }
            }
            recv(jobs) -> job => match job {
                Ok(mut job) => {
                    let result = if shared.counters.aborted() {
                        Err("backup aborted".to_string())
                    } else if let Some(reader) = job.stream.take() {
                        stream(reader, 0, &shared, &queue, &blobs, &segments)
                    } else {
                        process(&shared, &job, &queue, &blobs, &segments)
                    };
                    let _ = job.reply.send(result);
                }
                Err(_) => queue.tx = None,
            },
        }
    }
}

/// Does what a reader handed on: fingerprints a chunk and stores it if it
/// is new, or cuts a part of a segment.
fn work_on(shared: &Shared, queue: &ChunkQueue, work: HandedOn, blobs: &Sender<PreparedBlob>) {
    match work {
        HandedOn::Chunk(job) => {
            let result = store_chunk(shared, job.data, blobs);
            queue.done();
            let _ = job.reply.send((job.index, result));
        }
        HandedOn::Cut(part) => part.run(shared.repo.chunker()),
    }
}

/// Fingerprints one chunk and, if this run must store it, compresses it and
/// sends it to the packer. Returns its id.
fn store_chunk(
    shared: &Shared,
    data: Bytes,
    blobs: &Sender<PreparedBlob>,
) -> Result<ChunkId, String> {
    let id = shared.repo.fingerprinter().chunk_id(&data);
    if shared.claim(id, BlobKind::Data)? {
        shared.counters.add_new_data(data.len() as u64);
        let blob = shared.repo.prepare_blob(id, BlobKind::Data, data);
        blobs.send(blob).map_err(|_| "backup aborted".to_string())?;
    }
    Ok(id)
}

fn process(
    shared: &Shared,
    job: &FileJob,
    queue: &ChunkQueue,
    blobs: &Sender<PreparedBlob>,
    segments: &SegmentPool,
) -> FileResult {
    let file = File::open(&job.path).map_err(|e| e.to_string())?;
    let params = shared.repo.chunker().params();
    if job.size < u64::from(params.min) {
        // Small file: one read, one chunk.
        let mut data = Vec::with_capacity(job.size as usize + 1);
        file.take(u64::from(params.max))
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        if data.len() < params.max as usize {
            let size = data.len() as u64;
            shared.counters.add_read(size);
            let chunks = if data.is_empty() {
                Vec::new()
            } else {
                vec![store_chunk(shared, Bytes::from(data), blobs)?]
            };
            return Ok(FileChunks { chunks, size });
        }
        // The file grew past a chunk while we looked: chunk it properly.
        let file = File::open(&job.path).map_err(|e| e.to_string())?;
        return stream(file, job.size, shared, queue, blobs, segments);
    }
    stream(file, job.size, shared, queue, blobs, segments)
}

fn stream(
    file: impl Read,
    size_hint: u64,
    shared: &Shared,
    queue: &ChunkQueue,
    blobs: &Sender<PreparedBlob>,
    segments: &SegmentPool,
) -> FileResult {
    let chunker = shared.repo.chunker();
    let expected = (size_hint / u64::from(chunker.params().avg)) as usize + 1;
    let mut chunks: Vec<Option<ChunkId>> = Vec::with_capacity(expected);
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    let mut pending = 0usize;
    let mut size = 0u64;
    let mut failure = None;
    {
        let mut s = ChunkStream::new(chunker, file, segments);
        if let Some(helpers) = queue.cut_helpers() {
            s = s.with_helpers(helpers, queue.cut_parts);
        }
        loop {
            let data = match s.next_chunk() {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            size += data.len() as u64;
            shared.counters.add_read(data.len() as u64);
            let index = chunks.len();
            chunks.push(None);
            let job = ChunkJob {
                index,
                data,
                reply: reply_tx.clone(),
            };
            match queue.try_hand_on(job) {
                Ok(()) => pending += 1,
                Err(job) => match store_chunk(shared, job.data, blobs) {
                    Ok(id) => chunks[index] = Some(id),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
            }
        }
        // The stream (and its hold on the pool) ends here, before waiting.
    }
    // Collect what other workers did, working on handed-on chunks meanwhile:
    // a reader that only waited could wait on chunks nobody else is free for.
    while pending > 0 {
        crossbeam_channel::select_biased! {
            recv(reply_rx) -> reply => {
                let Ok((index, result)) = reply else { break };
                pending -= 1;
                match result {
                    Ok(id) => chunks[index] = Some(id),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            recv(queue.rx) -> job => {
                if let Ok(job) = job {
                    work_on(shared, queue, job, blobs);
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let chunks: Vec<ChunkId> = chunks.into_iter().flatten().collect();
    Ok(FileChunks { chunks, size })
}
