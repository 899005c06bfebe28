//! Content-defined chunking: FastCDC (2020) with a key-derived gear table.
//!
//! The cut-point search is `fastcdc::v2020::cut_gear`; the gear table is not
//! the public default but 256 words drawn from BLAKE3's extendable output
//! keyed with the repository's chunker key, so chunk sizes cannot be used by
//! an outsider to recognise a known file. Min/avg/max are recorded in the
//! repository config so every client of one repository cuts alike.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, select_masks};

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

    /// The size of buffer a [`ChunkStream`] needs.
    pub fn stream_buffer_len(&self) -> usize {
        self.params.max as usize * 2
    }
}

/// Chunks a reader through one reusable buffer, so memory stays at two
/// maximum chunk sizes whatever the file size.
pub struct ChunkStream<'c, R> {
    chunker: &'c Chunker,
    reader: R,
    /// Bytes read and not yet cut start at `start` and end at `buf.len()`;
    /// the capacity is [`Chunker::stream_buffer_len`]. Only what was read is
    /// ever written, so a small file touches only its own size of memory.
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    bytes_read: u64,
}

impl<'c, R: Read> ChunkStream<'c, R> {
    /// Wraps `reader`; `buf` is reused (pass the one from [`ChunkStream::into_buffer`]).
    pub fn new(chunker: &'c Chunker, reader: R, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.reserve(chunker.stream_buffer_len());
        Self {
            chunker,
            reader,
            buf,
            start: 0,
            eof: false,
            bytes_read: 0,
        }
    }

    /// The next chunk, or `None` at the end of the input.
    ///
    /// The buffer is refilled only when the bytes held cannot decide the next
    /// cut, so the unread tail moved to the front on a refill is one partial
    /// chunk, not up to a maximum chunk size. That is exact: a cut found
    /// inside fewer than `max` bytes is the cut the whole input has, because
    /// FastCDC scans forward from `min` and each candidate depends only on
    /// the bytes before it and on its distance from the chunk start
    /// (`prefix_cuts_are_final` checks it).
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        let max = self.chunker.params.max as usize;
        loop {
            let held = self.buf.len() - self.start;
            if self.eof || held >= max {
                break;
            }
            let n = self.chunker.cut(&self.buf[self.start..]);
            if n < held {
                let chunk = &self.buf[self.start..self.start + n];
                self.start += n;
                return Ok(Some(chunk));
            }
            self.refill()?;
        }
        if self.start == self.buf.len() {
            return Ok(None);
        }
        let n = self.chunker.cut(&self.buf[self.start..]);
        let chunk = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(Some(chunk))
    }

    fn refill(&mut self) -> io::Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let want = self.chunker.stream_buffer_len() - self.buf.len();
        let n = (&mut self.reader)
            .take(want as u64)
            .read_to_end(&mut self.buf)?;
        self.bytes_read += n as u64;
        self.eof = n < want;
        Ok(())
    }

    /// Bytes read from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
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
        let mut stream = ChunkStream::new(&chunker, &data[..], Vec::new());
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
        let mut stream = ChunkStream::new(&chunker, Trickle(&data, 0), Vec::new());
        let mut count = 0;
        while let Some(c) = stream.next_chunk().unwrap() {
            assert_eq!(c, mem[count], "chunk {count}");
            count += 1;
        }
        assert_eq!(count, mem.len());
        assert_eq!(stream.bytes_read(), data.len() as u64);
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

    #[test]
    fn cut_points_are_pinned() {
        // Frozen: the same key and bounds must cut the same data identically
        // forever, or deduplication against old snapshots is lost.
        let data = pseudo_random(200_000, 9);
        let lens: Vec<usize> = Chunker::new(SMALL, &[5; 32])
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        let again: Vec<usize> = Chunker::new(SMALL, &[5; 32])
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        assert_eq!(lens, again);
        assert_eq!(lens.iter().sum::<usize>(), 200_000);
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
