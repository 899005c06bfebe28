//! Content-defined chunking: FastCDC (2020) with a key-derived gear table.
//!
//! The cut-point search is `fastcdc::v2020::cut_gear`; the gear table is not
//! the public default but 256 words drawn from BLAKE3's extendable output
//! keyed with the repository's chunker key, so chunk sizes cannot be used by
//! an outsider to recognise a known file. Min/avg/max are recorded in the
//! repository config so every client of one repository cuts alike.

use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

use fastcdc::v2020::{Normalization, cut_gear, select_masks};

use crate::cut_ahead::{AheadParts, CutHelpers};

/// Chunk size bounds in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No cut before this many bytes (except at the end of a file).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// A cut is forced at this many bytes.
    pub max: u32,
}

impl ChunkerParams {
    /// The defaults: 512 KiB / 1 MiB / 8 MiB.
    ///
    /// Restic's proven bounds. Around 1 MiB keeps the index at roughly a
    /// million entries per TiB of unique data while an edit in a large file
    /// still costs only one or two new chunks; most source files are far
    /// below the minimum and become a single chunk whatever the bounds.
    pub const DEFAULT: Self = Self {
        min: 512 * 1024,
        avg: 1024 * 1024,
        max: 8 * 1024 * 1024,
    };

    /// Checks the bounds against what FastCDC supports.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker bounds min={min} avg={avg} max={max} are outside FastCDC's limits"
            ))
        }
    }
}

/// A FastCDC chunker bound to one repository's key and bounds.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunker({:?})", self.params)
    }
}

impl Chunker {
    /// A chunker whose gear table is derived from `key`.
    pub fn new(params: ChunkerParams, key: &[u8; 32]) -> Self {
        let mut xof = blake3::Hasher::new_keyed(key).finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        xof.fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (slot, word) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            *slot = u64::from_le_bytes(le);
        }
        let mut gear_ls = Box::new([0u64; 256]);
        for (ls, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *ls = g << 1;
        }
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Self {
            params,
            gear,
            gear_ls,
            mask_s,
            mask_l,
        }
    }

    /// The bounds in use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk that starts at `data[0]`. `data` must hold at least
    /// `max` bytes unless it is the end of the input.
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.len() <= self.params.min as usize {
            return data.len();
        }
        let (_, cut) = cut_gear(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        cut.clamp(1, data.len())
    }

    /// The length of the chunk that starts at `data[0]` if `data` decides it:
    /// when a cut is found before its end, when it holds a maximum chunk, or
    /// when it ends the input (`eof`). `None` means more input is needed.
    ///
    /// A cut found inside fewer than `max` bytes is the cut the whole input
    /// has, because FastCDC scans forward from `min` and each candidate
    /// depends only on the bytes before it and on its distance from the
    /// chunk start (`prefix_cuts_are_final` checks it).
    pub fn final_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        let n = self.cut(data);
        (eof || n < data.len() || data.len() >= self.params.max as usize).then_some(n)
    }

    /// Splits an in-memory buffer into chunks.
    pub fn chunks<'a>(&'a self, mut data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::from_fn(move || {
            if data.is_empty() {
                return None;
            }
            let n = self.cut(data);
            let (chunk, rest) = data.split_at(n);
            data = rest;
            Some(chunk)
        })
    }

    /// The size of the segments a [`ChunkStream`] reads into.
    pub fn stream_buffer_len(&self) -> usize {
        self.params.max as usize * 2
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
        self.lock().open -= 1;
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
        self.lock().free.push(buf);
        self.shared.changed.notify_all();
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
        let want = self.pool.shared.segment_len.saturating_sub(buf.len());
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
            let min_part = 4 * self.chunker.params.avg as usize;
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
    use proptest::prelude::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut xof = blake3::Hasher::new_keyed(&[seed as u8; 32]).finalize_xof();
        xof.fill(&mut out);
        out
    }

    const SMALL: ChunkerParams = ChunkerParams {
        min: 2048,
        avg: 8192,
        max: 32768,
    };

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

    /// A cut found in a prefix shorter than `max` is the cut of the whole
    /// input, whatever the prefix length; a prefix without one reports its
    /// own length. [`ChunkStream`] relies on both.
    #[test]
    fn prefix_cuts_are_final() {
        let chunker = Chunker::new(SMALL, &[3; 32]);
        for seed in 0..8 {
            let data = pseudo_random(4 * SMALL.max as usize, 100 + seed);
            let full = chunker.cut(&data);
            for len in (0..SMALL.max as usize)
                .step_by(97)
                .chain([full, full + 1, full + 2])
            {
                let len = len.min(data.len());
                let n = chunker.cut(&data[..len]);
                if n < len {
                    assert_eq!(n, full, "seed {seed}, prefix {len}");
                } else {
                    assert_eq!(n, len);
                    // Candidates are tested in pairs, so a prefix that ends
                    // just after the cut may not have tested it yet.
                    assert!(
                        len <= full + 1,
                        "seed {seed}: prefix {len} missed the cut {full}"
                    );
                }
            }
        }
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
        }
        assert_eq!(count, mem.len());
        assert_eq!(stream.bytes_read(), data.len() as u64);
        drop(held);
        drop(stream);
        // Every segment came back, and at most three were ever made.
        let state = pool.lock();
        assert_eq!(state.free.len(), state.allocated);
        assert!(state.allocated <= 3, "{} segments", state.allocated);
    }

    #[test]
    fn key_changes_cut_points() {
        let data = pseudo_random(1 << 20, 2);
        let a: Vec<usize> = Chunker::new(SMALL, &[1; 32])
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        let b: Vec<usize> = Chunker::new(SMALL, &[2; 32])
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        assert_ne!(a, b);
    }

    /// The chunker key of the golden tests.
    const GOLDEN_KEY: [u8; 32] = *b"cairn chunker golden test key 01";

    /// Deterministic input for the golden tests: xorshift64 words, little
    /// endian, independent of the code under test.
    fn xorshift_bytes(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The end offset of every chunk of the first `len` golden bytes.
    fn golden_cut_offsets(params: ChunkerParams, len: usize) -> Vec<usize> {
        let data = xorshift_bytes(len);
        let mut end = 0;
        Chunker::new(params, &GOLDEN_KEY)
            .chunks(&data)
            .map(|chunk| {
                end += chunk.len();
                end
            })
            .collect()
    }

    // Frozen: the same key and bounds must cut the same data identically
    // forever, or deduplication against old snapshots is lost. The config
    // records min/avg/max (FastCDC 2020, normalization level 1, is the only
    // algorithm); `init` writes the defaults, and the bounds at FastCDC's
    // limits pin mask selection at both ends of the range a config may hold.

    #[test]
    fn gear_table_is_pinned() {
        let chunker = Chunker::new(ChunkerParams::DEFAULT, &GOLDEN_KEY);
        assert_eq!(chunker.gear[0], 0x5de9_e81d_8872_73f2);
        assert_eq!(chunker.gear[255], 0x988a_4107_e24a_b361);
        assert!(
            chunker
                .gear
                .iter()
                .zip(chunker.gear_ls.iter())
                .all(|(g, ls)| *ls == g << 1)
        );
        assert_eq!(
            xorshift_bytes(8),
            [0xad, 0x4d, 0xf3, 0x0b, 0xae, 0x77, 0x1b, 0xdc]
        );
    }

    #[test]
    fn cuts_are_pinned_with_the_default_bounds() {
        assert_eq!(
            golden_cut_offsets(ChunkerParams::DEFAULT, 32 << 20),
            [
                1090695, 2401361, 4006530, 6012856, 7593426, 8714143, 9776132, 10881383, 11558900,
                12950716, 13926444, 15304605, 16489331, 18127062, 19645240, 21557593, 22611990,
                23828627, 25414092, 26312325, 27323752, 29021151, 30143312, 31482304, 33047471,
                33554432,
            ]
        );
    }

    #[test]
    fn cuts_are_pinned_with_small_bounds() {
        assert_eq!(
            golden_cut_offsets(SMALL, 1 << 20),
            [
                10198, 22168, 32615, 43692, 56624, 68404, 71683, 79627, 88778, 102367, 104597,
                114414, 116591, 124522, 134940, 141380, 149761, 155906, 164160, 180201, 190833,
                206848, 217580, 223863, 237229, 244464, 253480, 265084, 267227, 273402, 276276,
                281845, 291641, 302243, 311744, 325214, 337106, 346443, 353643, 371685, 380656,
                403886, 415248, 422422, 432280, 442597, 453315, 477977, 500009, 508330, 512756,
                523839, 530620, 539060, 547115, 557008, 566792, 580206, 584973, 593640, 601208,
                606926, 613746, 619423, 623626, 625989, 638645, 641603, 648017, 658025, 667848,
                677753, 680828, 685549, 695422, 702193, 713686, 725750, 738837, 746759, 752383,
                756187, 771634, 787218, 802745, 812420, 828602, 836903, 840315, 844138, 855143,
                866344, 869699, 881171, 897224, 907754, 917257, 925651, 932543, 937549, 946297,
                957810, 962922, 971665, 976167, 984924, 992674, 995041, 1007986, 1011182, 1015226,
                1026440, 1039879, 1048576,
            ]
        );
    }

    #[test]
    fn cuts_are_pinned_with_the_smallest_bounds() {
        let smallest = ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
        };
        smallest.validate().unwrap();
        assert_eq!(
            golden_cut_offsets(smallest, 16 << 10),
            [
                272, 567, 852, 989, 1351, 1944, 2175, 2507, 3167, 3278, 3573, 3711, 4371, 4701,
                4894, 5261, 5540, 5749, 6132, 6400, 6709, 7032, 7389, 7680, 7760, 8061, 8261, 8560,
                8704, 8778, 9220, 9517, 9869, 10015, 10332, 10631, 10833, 11125, 11442, 11755,
                12037, 12311, 12794, 13133, 13456, 13627, 13883, 14256, 14914, 15202, 15473, 15762,
                16145, 16345, 16384,
            ]
        );
    }

    #[test]
    fn cuts_are_pinned_with_the_largest_bounds() {
        let largest = ChunkerParams {
            min: 1 << 20,
            avg: 4 << 20,
            max: 16 << 20,
        };
        largest.validate().unwrap();
        assert_eq!(
            golden_cut_offsets(largest, 96 << 20),
            [
                9810969, 18365435, 25440602, 29021151, 33805539, 35621306, 41488326, 45800258,
                48097248, 56396839, 61013134, 68153624, 74224817, 82319805, 83870161, 89154777,
                92275580, 95352983, 100517827, 100663296,
            ]
        );
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let data = pseudo_random(1 << 20, 4);
        let chunker = Chunker::new(SMALL, &[6; 32]);
        let before: std::collections::HashSet<Vec<u8>> =
            chunker.chunks(&data).map(<[u8]>::to_vec).collect();
        let mut edited = vec![0x42];
        edited.extend_from_slice(&data);
        let new = chunker
            .chunks(&edited)
            .filter(|c| !before.contains(*c))
            .count();
        assert!(new <= 2, "{new} new chunks after a one-byte insertion");
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::DEFAULT.validate().unwrap();
        assert!(
            ChunkerParams {
                min: 10,
                avg: 20,
                max: 30
            }
            .validate()
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_input(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let chunker = Chunker::new(SMALL, &[9; 32]);
            let joined: Vec<u8> = chunker.chunks(&data).flat_map(|c| c.to_vec()).collect();
            prop_assert_eq!(joined, data);
        }
    }
}
