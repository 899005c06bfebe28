//! Content-defined chunking: FastCDC (2020) with a key-derived gear table.
//!
//! [`Chunker`] decides where chunks end; that rule is frozen and lives in
//! its own module (`cdc.rs`), re-exported here. This module applies it to
//! readers: a [`ChunkStream`] cuts a file through the segments of a shared
//! [`SegmentPool`], optionally with helpers that cut ahead of it on other
//! threads ([`crate::cut_ahead`]).

use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

pub use crate::cdc::{Chunker, ChunkerParams, CutRule};
use crate::cut_ahead::{AheadParts, CutHelpers};

impl Chunker {
    /// The size of the segments a [`ChunkStream`] reads into: what a refill
    /// carries over (less than a maximum chunk) and one read.
    pub fn stream_buffer_len(&self) -> usize {
        self.params().max as usize * 2
    }

    /// What a [`ChunkStream`] reads at a time: one maximum chunk. A segment
    /// is touched only as far as it is read, so each stays near one read
    /// and its carry-over (a large file's segments on two cores: about
    /// 9 MiB each rather than 16), and a read is still long enough to cut
    /// in parts on every core.
    pub fn stream_read_len(&self) -> usize {
        self.params().max as usize
    }
}

/// The segments that [`ChunkStream`]s read into, shared by every stream of
/// a backup so that memory is bounded by the pool, never by file sizes.
///
/// A chunk is a [`Bytes`] slice of its segment, handed on without a copy; a
/// segment returns to the pool when the last chunk cut from it is dropped.
/// At most `streams` streams are open at once (opening another waits), and
/// there are `streams + spare` segments. Each open stream holds one segment
/// while it waits for the next, so progress needs only that the chunks
/// pinning the other `spare` segments are eventually dropped; a caller that
/// parks at most `spare - 1` chunks where nobody may consume them (such as a
/// queue that only blocked streams could drain) keeps that true.
#[derive(Clone)]
pub struct SegmentPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    state: Mutex<PoolState>,
    changed: Condvar,
    streams: usize,
    segments: usize,
    segment_len: usize,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    allocated: usize,
    open: usize,
}

impl std::fmt::Debug for SegmentPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SegmentPool({} streams, {} segments of {} bytes)",
            self.shared.streams, self.shared.segments, self.shared.segment_len
        )
    }
}

impl SegmentPool {
    /// A pool for `chunker`'s streams (segments of
    /// [`Chunker::stream_buffer_len`], allocated on first use).
    pub fn new(chunker: &Chunker, streams: usize, spare: usize) -> Self {
        let streams = streams.max(1);
        Self {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState {
                    free: Vec::new(),
                    allocated: 0,
                    open: 0,
                }),
                changed: Condvar::new(),
                streams,
                segments: streams + spare.max(1),
                segment_len: chunker.stream_buffer_len(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        guard: std::sync::MutexGuard<'a, PoolState>,
    ) -> std::sync::MutexGuard<'a, PoolState> {
        self.shared
            .changed
            .wait(guard)
            .unwrap_or_else(|p| p.into_inner())
    }

    fn open_stream(&self) {
        let mut state = self.lock();
        while state.open >= self.shared.streams {
            state = self.wait(state);
        }
        state.open += 1;
    }

    fn close_stream(&self) {
        let mut state = self.lock();
        state.open -= 1;
        state.release_if_idle();
        drop(state);
        self.shared.changed.notify_all();
    }

    fn take_segment(&self) -> Vec<u8> {
        let mut state = self.lock();
        loop {
            if let Some(buf) = state.free.pop() {
                return buf;
            }
            if state.allocated < self.shared.segments {
                state.allocated += 1;
                return Vec::with_capacity(self.shared.segment_len);
            }
            state = self.wait(state);
        }
    }

    fn give_segment(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut state = self.lock();
        state.free.push(buf);
        state.release_if_idle();
        drop(state);
        self.shared.changed.notify_all();
    }
}

impl PoolState {
    /// Lets the free segments go while no stream is open: a large file's
    /// segments are the largest buffers of a backup, and most files are
    /// small, so a pool that kept them would hold that memory to the end.
    /// The next stream allocates again (only the pages it reads into are
    /// ever touched).
    fn release_if_idle(&mut self) {
        if self.open == 0 {
            self.allocated -= self.free.len();
            self.free.clear();
        }
    }
}

/// A segment's bytes, returned to the pool when the last chunk drops.
struct Segment {
    buf: Vec<u8>,
    pool: SegmentPool,
}

impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.pool.give_segment(std::mem::take(&mut self.buf));
    }
}

/// Chunks a reader through segments of a [`SegmentPool`]: each chunk is a
/// slice of the segment it was read into (no copy), and memory stays within
/// the pool whatever the file size.
///
/// With [`ChunkStream::with_helpers`], other threads cut the later parts of
/// each segment while the stream cuts the first (see [`crate::cut_ahead`]);
/// the chunks are the same either way.
pub struct ChunkStream<'c, R> {
    chunker: &'c Chunker,
    reader: R,
    pool: SegmentPool,
    /// Bytes read and not yet cut are `segment[start..]`. Only what was read
    /// is ever written, so a small file touches only its own size of memory.
    segment: Bytes,
    start: usize,
    eof: bool,
    bytes_read: u64,
    helpers: Option<(CutHelpers, usize)>,
    ahead: AheadParts,
    cuts_computed: u64,
}

impl<'c, R: Read> ChunkStream<'c, R> {
    /// Wraps `reader`, waiting until `pool` has room for another stream.
    pub fn new(chunker: &'c Chunker, reader: R, pool: &SegmentPool) -> Self {
        pool.open_stream();
        Self {
            chunker,
            reader,
            pool: pool.clone(),
            segment: Bytes::new(),
            start: 0,
            eof: false,
            bytes_read: 0,
            helpers: None,
            ahead: AheadParts::default(),
            cuts_computed: 0,
        }
    }

    /// Cuts each segment in `parts` parts at once: the first here, the
    /// others on whatever threads `helpers` hands them to.
    pub fn with_helpers(mut self, helpers: CutHelpers, parts: usize) -> Self {
        self.helpers = (parts > 1).then_some((helpers, parts));
        self
    }

    /// The next chunk, or `None` at the end of the input.
    ///
    /// A new segment is read only when the bytes held cannot decide the next
    /// cut ([`Chunker::final_cut`]), so what is carried over into it is one
    /// partial chunk, not up to a maximum chunk size.
    pub fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(end) = self.ahead.cut_from(self.start) {
                return Ok(Some(self.take(end - self.start)));
            }
            let rest = &self.segment[self.start..];
            if let Some(n) = self.chunker.final_cut(rest, self.eof) {
                self.cuts_computed += 1;
                return Ok(Some(self.take(n)));
            }
            if self.eof {
                return Ok(None);
            }
            self.refill()?;
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        let chunk = self.segment.slice(self.start..self.start + n);
        self.start += n;
        chunk
    }

    fn refill(&mut self) -> io::Result<()> {
        // The parts of the old segment are withdrawn before anything waits.
        self.ahead.clear();
        let mut buf = self.pool.take_segment();
        buf.extend_from_slice(&self.segment[self.start..]);
        // What is carried over is shorter than a maximum chunk (a longer
        // rest always has a final cut), so the read fits the segment.
        let want = self.chunker.stream_read_len();
        debug_assert!(buf.len() + want <= self.pool.shared.segment_len);
        let read = (&mut self.reader).take(want as u64).read_to_end(&mut buf);
        let segment = Bytes::from_owner(Segment {
            buf,
            pool: self.pool.clone(),
        });
        let n = read?;
        self.segment = segment;
        self.start = 0;
        self.bytes_read += n as u64;
        self.eof = n < want;
        if let Some((helpers, parts)) = &self.helpers {
            // A part shorter than a few chunks is not worth a hand-off.
            let min_part = 4 * self.chunker.params().avg as usize;
            self.ahead
                .hand_out(helpers, &self.segment, self.eof, *parts, min_part);
        }
        Ok(())
    }

    /// Bytes read from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// How many cuts this stream computed itself (the others came from
    /// helpers).
    pub fn cuts_computed(&self) -> u64 {
        self.cuts_computed
    }
}

impl<R> Drop for ChunkStream<'_, R> {
    fn drop(&mut self) {
        self.pool.close_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::tests::{SMALL, pseudo_random};
    use crate::cut_ahead::CutAhead;

    #[test]
    fn stream_matches_in_memory_and_covers_input() {
        let data = pseudo_random(1 << 20, 1);
        let chunker = Chunker::new(SMALL, &[3; 32]);
        let mem: Vec<Vec<u8>> = chunker.chunks(&data).map(<[u8]>::to_vec).collect();
        let pool = SegmentPool::new(&chunker, 1, 1);
        let mut stream = ChunkStream::new(&chunker, &data[..], &pool);
        let mut streamed = Vec::new();
        while let Some(c) = stream.next_chunk().unwrap() {
            streamed.push(c.to_vec());
        }
        assert_eq!(mem, streamed);
        assert_eq!(mem.concat(), data);
        assert!(mem.len() > 60 && mem.len() < 250, "{} chunks", mem.len());
        for c in &mem[..mem.len() - 1] {
            assert!(c.len() >= SMALL.min as usize && c.len() <= SMALL.max as usize);
        }
    }

    #[test]
    fn a_refill_reads_one_maximum_chunk_beside_what_it_carries_over() {
        let data = pseudo_random(1 << 20, 2);
        let chunker = Chunker::new(SMALL, &[3; 32]);
        let max = SMALL.max as usize;
        let pool = SegmentPool::new(&chunker, 1, 1);
        let mut stream = ChunkStream::new(&chunker, &data[..], &pool);
        let (mut read, mut refills) = (0, 0);
        while stream.next_chunk().unwrap().is_some() {
            let now = stream.bytes_read() as usize;
            if now > read {
                refills += 1;
                assert!(now - read <= max, "a refill read {} bytes", now - read);
                // The segment: less than a maximum chunk carried over, and the read.
                assert!(stream.segment.len() < max + (now - read));
            }
            read = now;
        }
        assert_eq!(read, data.len());
        assert_eq!(refills, data.len().div_ceil(max));
    }

    /// Reads in small, uneven pieces, as a pipe or a slow disk does.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 7919 + 1;
            let n = self.0.len().min(out.len()).min(self.1 * 13);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn stream_matches_in_memory_with_short_reads() {
        let data = pseudo_random(3 << 20, 5);
        let chunker = Chunker::new(SMALL, &[4; 32]);
        let mem: Vec<&[u8]> = chunker.chunks(&data).collect();
        // Chunks are kept (pinning their segments) while more are cut: the
        // stream waits for a segment only when all are pinned, so release
        // all but the newest few as a consumer would.
        let pool = SegmentPool::new(&chunker, 1, 2);
        let mut stream = ChunkStream::new(&chunker, Trickle(&data, 0), &pool);
        let mut count = 0;
        let mut held = std::collections::VecDeque::new();
        while let Some(c) = stream.next_chunk().unwrap() {
            assert_eq!(&c[..], mem[count], "chunk {count}");
            count += 1;
            held.push_back(c);
            if held.len() > 2 {
                held.pop_front();
            }
            let allocated = pool.lock().allocated;
            assert!(allocated <= 3, "{allocated} segments");
        }
        assert_eq!(count, mem.len());
        assert_eq!(stream.bytes_read(), data.len() as u64);
        drop(stream);
        // The stream is closed: the segments free go at once, and those
        // still pinned by chunks as the chunks drop.
        let pinned = pool.lock().allocated;
        assert!((1..=held.len()).contains(&pinned), "{pinned} segments");
        drop(held);
        let state = pool.lock();
        assert_eq!((state.allocated, state.free.len()), (0, 0));
    }

    /// How helpers treat the parts handed to them.
    #[derive(Clone, Copy, Debug)]
    enum Helper {
        /// A thread per part, started at once.
        Thread,
        /// Accepts every part and never runs one.
        Idle,
        /// Refuses every part.
        Refuse,
        /// Runs every part before the stream goes on.
        Inline,
    }

    fn helpers(chunker: &Chunker, how: Helper) -> CutHelpers {
        let chunker = Arc::new(chunker.clone());
        Arc::new(move |part: CutAhead| match how {
            Helper::Thread => {
                let chunker = chunker.clone();
                std::thread::spawn(move || part.run(&chunker));
                true
            }
            Helper::Idle => true,
            Helper::Refuse => false,
            Helper::Inline => {
                part.run(&chunker);
                true
            }
        })
    }

    /// Streams `data` and returns the chunk lengths and the cuts the stream
    /// computed itself.
    fn stream(chunker: &Chunker, data: &[u8], how: Option<(Helper, usize)>) -> (Vec<usize>, u64) {
        let pool = SegmentPool::new(chunker, 1, 2);
        let mut s = ChunkStream::new(chunker, data, &pool);
        if let Some((how, parts)) = how {
            s = s.with_helpers(helpers(chunker, how), parts);
        }
        let mut lens = Vec::new();
        while let Some(c) = s.next_chunk().unwrap() {
            lens.push(c.len());
        }
        (lens, s.cuts_computed())
    }

    #[test]
    fn helpers_never_change_the_cuts() {
        for rule in [CutRule::FastCdc, CutRule::Prf] {
            helpers_never_change_the_cuts_of(&Chunker::new(SMALL.with_rule(rule), &[7; 32]));
        }
    }

    fn helpers_never_change_the_cuts_of(chunker: &Chunker) {
        let chunker = chunker.clone();
        let data = pseudo_random(3 << 20, 1);
        let sequential: Vec<usize> = chunker.chunks(&data).map(<[u8]>::len).collect();
        let (alone, computed) = stream(&chunker, &data, None);
        assert_eq!(alone, sequential);
        assert_eq!(computed, sequential.len() as u64);
        for how in [Helper::Thread, Helper::Idle, Helper::Refuse, Helper::Inline] {
            for parts in [2, 3, 7] {
                for len in [0, 1, 5000, 70_000, 1 << 20, data.len()] {
                    let expected: Vec<usize> =
                        chunker.chunks(&data[..len]).map(<[u8]>::len).collect();
                    let (lens, _) = stream(&chunker, &data[..len], Some((how, parts)));
                    assert_eq!(lens, expected, "{how:?}, {parts} parts, {len} bytes");
                }
            }
        }
    }

    /// With helpers that run, the stream computes only the first part of
    /// each segment and the few cuts before its chain meets a helper's: of
    /// a default segment (one 8 MiB read and what was carried over), its
    /// own 4 MiB and about two average chunks, two thirds of the cuts; a
    /// stream alone computes all of them.
    #[test]
    fn helpers_share_the_cutting() {
        let chunker = Chunker::new(ChunkerParams::DEFAULT, &[8; 32]);
        let data = pseudo_random(256 << 20, 2);
        let (lens, computed) = stream(&chunker, &data, Some((Helper::Inline, 2)));
        let share = computed as f64 / lens.len() as f64;
        assert!(
            share < 0.72,
            "the stream computed {computed} of {} cuts",
            lens.len()
        );
        let (idle, computed) = stream(&chunker, &data, Some((Helper::Idle, 2)));
        assert_eq!(idle, lens);
        assert_eq!(computed, lens.len() as u64);
    }
}
