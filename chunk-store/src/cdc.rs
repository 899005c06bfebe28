//! The cut rule of content-defined chunking: FastCDC (2020) with a
//! key-derived gear table.
//!
//! The cut-point search is `fastcdc::v2020::cut_gear`; the gear table is not
//! the public default but 256 words drawn from BLAKE3's extendable output
//! keyed with the repository's chunker key, so chunk sizes cannot be used by
//! an outsider to recognise a known file. Min/avg/max are recorded in the
//! repository config so every client of one repository cuts alike.
//!
//! A second cut rule, [`CutRule::Prf`], answers "Breaking and Fixing
//! Content-Defined Chunking" (Truong, Merz, Scarlata, Günther, Paterson,
//! 2025), which recovers gear tables like FastCDC's from the chunk sizes an
//! observer sees: there the keyed gear hash only proposes candidates (about
//! one position in 1024), and a candidate becomes a cut only if a keyed PRF
//! of the 64 bytes that end there (keyed BLAKE3, under a key derived apart
//! from the gear table's) falls below the threshold of its stage. Chunk
//! sizes then say which candidates the PRF took, which tells nothing about
//! the PRF's key or about any other window, so neither key can be solved
//! for; the gear table only makes the PRF cheap to afford (one call per
//! 1024 bytes scanned). The bounds and the two stages of normalization level 1
//! are FastCDC's, so chunk size distributions and deduplication match.
//!
//! This is the part of chunking that is frozen (the golden tests below pin
//! it) and that the rest builds on: the `chunker` module re-exports
//! [`Chunker`] and [`ChunkerParams`] (their public path) and runs them over
//! readers, and `cut_ahead` runs them on helper threads.

use fastcdc::v2020::{Normalization, cut_gear, select_masks};

/// How a cut point is chosen (recorded in the repository config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CutRule {
    /// FastCDC 2020 with a keyed gear table.
    #[default]
    FastCdc = 0,
    /// Keyed gear candidates, each taken or not by a keyed PRF (module docs).
    Prf = 1,
}

impl CutRule {
    /// Decodes the stored discriminant.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::FastCdc),
            1 => Some(Self::Prf),
            _ => None,
        }
    }

    /// The name `cairn init --chunker` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::FastCdc => "fastcdc",
            Self::Prf => "prf",
        }
    }
}

/// Chunk size bounds in bytes, and the cut rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No cut before this many bytes (except at the end of a file).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// A cut is forced at this many bytes.
    pub max: u32,
    /// How cut points are chosen.
    pub rule: CutRule,
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
        rule: CutRule::FastCdc,
    };

    /// The same bounds with another cut rule.
    pub fn with_rule(self, rule: CutRule) -> Self {
        Self { rule, ..self }
    }

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

/// A chunker bound to one repository's key, bounds and cut rule.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    /// Key of the PRF of [`CutRule::Prf`].
    prf_key: [u8; 32],
}

/// Context of the PRF key, derived from the chunker key (frozen).
const PRF_KEY_CONTEXT: &str = "cairn 2026-12 chunker cut PRF v1";
/// Bytes the PRF of [`CutRule::Prf`] reads: the window that ends at a
/// candidate (the gear hash of a position depends on as many).
const PRF_WINDOW: usize = 64;
/// A position is a candidate of [`CutRule::Prf`] when the top bits of its
/// gear hash are zero: one in 2^10 (fewer with the smallest bounds, where
/// the looser stage's own odds are higher), so the PRF costs a tenth of a
/// nanosecond per byte scanned.
const CANDIDATE_BITS: u32 = 10;

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
            prf_key: blake3::derive_key(PRF_KEY_CONTEXT, key),
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
        if self.params.rule == CutRule::Prf {
            return self.prf_cut(data);
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

    /// [`CutRule::Prf`]: the first candidate at or past `min` that the PRF
    /// takes, with FastCDC's stages (a stricter threshold before `avg`, a
    /// looser one after), else `max`. `data` is longer than `min`.
    fn prf_cut(&self, data: &[u8]) -> usize {
        let min = self.params.min as usize;
        let end = data.len().min(self.params.max as usize);
        let normal = (self.params.avg as usize).min(end);
        // FastCDC's per-position odds: 2^-bits_s before `avg`, 2^-bits_l after.
        let bits_s = self.mask_s.count_ones();
        let bits_l = self.mask_l.count_ones();
        let candidate_bits = CANDIDATE_BITS.min(bits_l);
        let take_s = (1u64 << (bits_s - candidate_bits)) - 1;
        let take_l = (1u64 << (bits_l - candidate_bits)) - 1;
        let candidate = !(u64::MAX >> candidate_bits);
        // The hash at `min` covers the window before it, as every later one does.
        let mut h = 0u64;
        for &b in &data[min - PRF_WINDOW..min] {
            h = (h << 1).wrapping_add(self.gear[b as usize]);
        }
        // Two bytes a step, as FastCDC steps: the hash two bytes on is
        // `(h << 2) + (gear[b0] << 1) + gear[b1]`, one shift and add on the
        // chain that carries it, and the hash in between is computed beside
        // it, so every position is tested exactly as one byte a step would.
        let takes = |i: usize| {
            let take = if i < normal { take_s } else { take_l };
            self.prf(&data[i + 1 - PRF_WINDOW..=i]) & take == 0
        };
        let mut pairs = data[min..end].chunks_exact(2);
        let mut at = min;
        for pair in &mut pairs {
            let (b0, b1) = (pair[0] as usize, pair[1] as usize);
            let between = (h << 1).wrapping_add(self.gear[b0]);
            h = (h << 2)
                .wrapping_add(self.gear_ls[b0])
                .wrapping_add(self.gear[b1]);
            if between & candidate == 0 && takes(at) {
                return at + 1;
            }
            if h & candidate == 0 && takes(at + 1) {
                return at + 2;
            }
            at += 2;
        }
        if let [b] = pairs.remainder() {
            h = (h << 1).wrapping_add(self.gear[*b as usize]);
            if h & candidate == 0 && takes(at) {
                return at + 1;
            }
        }
        end
    }

    fn prf(&self, window: &[u8]) -> u64 {
        let out = blake3::keyed_hash(&self.prf_key, window);
        let mut word = [0u8; 8];
        word.copy_from_slice(&out.as_bytes()[..8]);
        u64::from_le_bytes(word)
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keyed BLAKE3 output: random-looking input that differs by seed.
    pub(crate) fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new_keyed(&[seed; 32])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// Bounds small enough for tests to cut many chunks quickly.
    pub(crate) const SMALL: ChunkerParams = ChunkerParams {
        min: 2048,
        avg: 8192,
        max: 32768,
        rule: CutRule::FastCdc,
    };

    /// A cut found in a prefix shorter than `max` is the cut of the whole
    /// input, whatever the prefix length; a prefix without one reports its
    /// own length. The chunk stream relies on both.
    #[test]
    fn prefix_cuts_are_final() {
        // FastCDC tests candidates in pairs, so a prefix that ends just
        // after the cut may not have tested it yet; the PRF rule tests every
        // position of a pair.
        for (rule, slack) in [(CutRule::FastCdc, 1), (CutRule::Prf, 0)] {
            let chunker = Chunker::new(SMALL.with_rule(rule), &[3; 32]);
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
                        assert_eq!(n, full, "{rule:?}, seed {seed}, prefix {len}");
                    } else {
                        assert_eq!(n, len);
                        assert!(
                            len <= full + slack,
                            "{rule:?}, seed {seed}: prefix {len} missed the cut {full}"
                        );
                    }
                }
            }
        }
    }

    fn cut_lengths(params: ChunkerParams, key: u8, data: &[u8]) -> Vec<usize> {
        Chunker::new(params, &[key; 32])
            .chunks(data)
            .map(<[u8]>::len)
            .collect()
    }

    #[test]
    fn key_and_rule_change_cut_points() {
        let data = pseudo_random(1 << 20, 2);
        for rule in [CutRule::FastCdc, CutRule::Prf] {
            let params = SMALL.with_rule(rule);
            assert_ne!(cut_lengths(params, 1, &data), cut_lengths(params, 2, &data));
        }
        // Same bounds and key, other rule: other cuts.
        assert_ne!(
            cut_lengths(SMALL, 1, &data),
            cut_lengths(SMALL.with_rule(CutRule::Prf), 1, &data)
        );
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
            rule: CutRule::FastCdc,
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
            rule: CutRule::FastCdc,
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

    /// The PRF rule's cuts with small bounds. Frozen like FastCDC's.
    #[test]
    fn prf_cuts_are_pinned_with_small_bounds() {
        assert_eq!(
            golden_cut_offsets(SMALL.with_rule(CutRule::Prf), 256 << 10),
            [
                11209, 22392, 39199, 49562, 52304, 60720, 72351, 74502, 85547, 102931, 119790,
                127310, 138477, 144751, 149239, 170268, 173376, 189990, 194563, 198389, 207244,
                218036, 221419, 232919, 241880, 253420, 262144,
            ]
        );
    }

    /// The PRF rule keeps FastCDC's size distribution: on 8 MiB of random
    /// bytes, the mean chunk is within 15 % of FastCDC's.
    #[test]
    fn prf_chunks_are_as_large_as_fastcdc_chunks() {
        let data = pseudo_random(8 << 20, 7);
        let mean = |rule: CutRule| {
            let n = Chunker::new(SMALL.with_rule(rule), &[5; 32])
                .chunks(&data)
                .count();
            data.len() / n
        };
        let (prf, fastcdc) = (mean(CutRule::Prf), mean(CutRule::FastCdc));
        assert!(
            prf * 100 >= fastcdc * 85 && prf * 100 <= fastcdc * 115,
            "mean chunk: prf {prf}, fastcdc {fastcdc}"
        );
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let data = pseudo_random(1 << 20, 4);
        for rule in [CutRule::FastCdc, CutRule::Prf] {
            let chunker = Chunker::new(SMALL.with_rule(rule), &[6; 32]);
            let before: std::collections::HashSet<Vec<u8>> =
                chunker.chunks(&data).map(<[u8]>::to_vec).collect();
            let mut edited = vec![0x42];
            edited.extend_from_slice(&data);
            let new = chunker
                .chunks(&edited)
                .filter(|c| !before.contains(*c))
                .count();
            assert!(
                new <= 2,
                "{rule:?}: {new} new chunks after a one-byte insertion"
            );
        }
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::DEFAULT.validate().unwrap();
        assert!(
            ChunkerParams {
                min: 10,
                avg: 20,
                max: 30,
                rule: CutRule::FastCdc,
            }
            .validate()
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn prf_chunks_concatenate_to_input(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let chunker = Chunker::new(SMALL.with_rule(CutRule::Prf), &[9; 32]);
            let joined: Vec<u8> = chunker.chunks(&data).flat_map(|c| c.to_vec()).collect();
            prop_assert_eq!(joined, data);
        }

        #[test]
        fn chunks_concatenate_to_input(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let chunker = Chunker::new(SMALL, &[9; 32]);
            let joined: Vec<u8> = chunker.chunks(&data).flat_map(|c| c.to_vec()).collect();
            prop_assert_eq!(joined, data);
        }
    }
}
