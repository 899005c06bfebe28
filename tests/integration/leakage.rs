//! What an honest-but-curious object store and index node learn.
//!
//! The attacker of "Breaking and Fixing Content-Defined Chunking" (Truong
//! et al., 2025) knows a file and asks whether a repository holds it, from
//! what it sees without any key: every chunk record the index holds (its
//! pack, offset, sealed length and the length field) and the packs in the
//! order they were uploaded (object times and sizes). [`Attacker`] plays it
//! with both of the paper's footprints of a file: the plaintext lengths of
//! its chunks, which add up to the file's length, and their sealed sizes,
//! which add up to the file's length plus 40 bytes per chunk (plus Padmé's
//! rounding when the repository pads). A file's chunks are uploaded
//! together, a few apart at most when files are read in parallel, so the
//! attacker looks at every small set of records within a short stretch of
//! the upload order.
//!
//! Against a repository made the old way (`--chunker fastcdc --padding none
//! --index-lengths clear`) the test must succeed, which shows the helper
//! works; against one made with the defaults it must do no better than a
//! coin, over 100 known files of which 50 are stored.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cairn_chunk_store::ChunkId;
use cairn_chunk_store::pack::{BlobKind, padme};
use cairn_index::{DedupIndex, Engine, EngineOptions};

use crate::common::*;
use crate::inspect::Inspector;

/// Known files in the trial, half of them stored.
const TRIALS: usize = 100;
/// The records of one file lie within this many consecutive uploads.
const STRETCH: usize = 12;
/// Files of 1 to 3 MiB have at most this many chunks (512 KiB minimum).
const MAX_PARTS: usize = 6;
/// What sealing adds to a chunk: nonce and tag.
const SEAL: u64 = 40;

/// One data chunk as the store and the index see it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    id: ChunkId,
    /// Sealed length (the index's record; the store's range reads).
    stored: u64,
    /// The record's length field as the index holds it.
    length_field: u64,
}

/// Every data chunk record of the repository's index, in upload order
/// (packs by the time the store wrote them, chunks by offset).
fn observe(repo: &Path) -> Vec<Seen> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::open(&repo.join("index"), EngineOptions::default(), &|_| {}).unwrap();
    let ids = engine.ids_in_range(&[], None).unwrap();
    let records = rt.block_on(engine.lookup(&ids)).unwrap();
    let mut packs: HashMap<String, std::time::SystemTime> = HashMap::new();
    for dir in std::fs::read_dir(repo.join("packs")).unwrap() {
        for pack in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let pack = pack.unwrap();
            let name = pack.file_name().to_string_lossy().into_owned();
            packs.insert(name, pack.metadata().unwrap().modified().unwrap());
        }
    }
    let mut seen: Vec<(std::time::SystemTime, u64, Seen)> = ids
        .iter()
        .zip(records)
        .filter_map(|(id, r)| {
            let r = r?;
            (r.location.kind == BlobKind::Data).then(|| {
                let l = r.location;
                let written = packs[&l.pack.to_string()];
                let seen = Seen {
                    id: *id,
                    stored: u64::from(l.stored_len),
                    length_field: u64::from(l.raw_len),
                };
                (written, l.offset, seen)
            })
        })
        .collect();
    seen.sort_by_key(|(written, offset, _)| (*written, *offset));
    seen.into_iter().map(|(_, _, s)| s).collect()
}

/// The file-presence test, from observed records only.
struct Attacker {
    /// Totals of the length fields of every small set of nearby records.
    length_totals: HashSet<u64>,
    /// Totals of their sealed sizes, with the set's size.
    size_totals: Vec<(u64, usize)>,
    /// Every sealed size is a Padmé size: the repository pads.
    padded: bool,
}

impl Attacker {
    fn new(seen: &[Seen]) -> Self {
        let mut length_totals = HashSet::new();
        let mut size_totals = Vec::new();
        for start in 0..seen.len() {
            let end = (start + STRETCH).min(seen.len());
            // Every set of at most MAX_PARTS records that starts at `start`.
            let rest = end - start - 1;
            for mask in 0u32..(1 << rest) {
                if mask.count_ones() as usize >= MAX_PARTS {
                    continue;
                }
                let mut lengths = seen[start].length_field;
                let mut sizes = seen[start].stored;
                for bit in 0..rest {
                    if mask & (1 << bit) != 0 {
                        lengths += seen[start + 1 + bit].length_field;
                        sizes += seen[start + 1 + bit].stored;
                    }
                }
                length_totals.insert(lengths);
                size_totals.push((sizes, mask.count_ones() as usize + 1));
            }
        }
        size_totals.sort_unstable();
        Self {
            length_totals,
            size_totals,
            padded: seen.iter().all(|s| padme(s.stored) == s.stored),
        }
    }

    /// Some nearby records' length fields add up to the file's length.
    fn lengths_say_present(&self, len: u64) -> bool {
        self.length_totals.contains(&len)
    }

    /// Some nearby records' sealed sizes add up to what the file's chunks
    /// would be sealed to: exactly `len + 40 k` when the repository does
    /// not pad (some sealed size is not a Padmé size), else within Padmé's
    /// rounding of it (3.2 % for chunks over 512 KiB, plus the 4-byte
    /// padding length).
    fn sizes_say_present(&self, len: u64) -> bool {
        let from = self.size_totals.partition_point(|(s, _)| *s < len);
        self.size_totals[from..]
            .iter()
            .take_while(|(s, _)| *s <= len + len / 30 + 2 * SEAL * MAX_PARTS as u64)
            .any(|(s, k)| {
                let bare = len + (SEAL + 4 * u64::from(self.padded)) * *k as u64;
                match self.padded {
                    false => *s == bare,
                    true => *s >= bare && *s <= bare + bare * 32 / 1000,
                }
            })
    }
}

/// Share of right answers of `says_present` over the known files.
fn accuracy(files: &[(u64, bool)], says_present: impl Fn(u64) -> bool) -> f64 {
    let right = files
        .iter()
        .filter(|(len, stored)| says_present(*len) == *stored)
        .count();
    right as f64 / files.len() as f64
}

/// At most this share right is "no better than a coin" over 100 trials
/// (one-sided, 99 %: 0.5 + 2.33 standard deviations of 0.05).
const CHANCE_AT_MOST: f64 = 0.62;

#[test]
fn the_file_presence_test_works_on_the_old_format_and_fails_on_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 100 known files of 1 to 3 MiB of random bytes (nothing compresses, so
    // sizes say the most); exactly 50 of them, chosen at random, stored.
    let mut rng = XorShift::new(0x5EED_F11E);
    let mut stored_flags: Vec<bool> = (0..TRIALS).map(|i| i < TRIALS / 2).collect();
    for i in (1..TRIALS).rev() {
        stored_flags.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let files: Vec<(u64, bool)> = stored_flags
        .iter()
        .map(|stored| (MIB + rng.next_u64() % (2 * MIB), *stored))
        .collect();
    for (i, (len, stored)) in files.iter().enumerate() {
        if *stored {
            write_random_file(&src.join(format!("f{i:03}")), *len, 1000 + i as u64);
        }
    }

    let mut results = Vec::new();
    for (mode, sizes) in [("old", &NO_SIZE_PROTECTION[..]), ("defaults", &[][..])] {
        let cairn = Cairn::new(dir.path().join(format!("repo-{mode}")));
        let mut init = vec!["init"];
        init.extend_from_slice(sizes);
        cairn.run(init).expect_success();
        cairn.backup(&[&src], &[]);
        let seen = observe(&cairn.repo);
        let attacker = Attacker::new(&seen);
        let by_lengths = accuracy(&files, |len| attacker.lengths_say_present(len));
        let by_sizes = accuracy(&files, |len| attacker.sizes_say_present(len));
        eprintln!(
            "{mode}: {} data chunk records; file-presence test right for {:.0} % (lengths) and {:.0} % (sealed sizes) of {TRIALS} files",
            seen.len(),
            by_lengths * 100.0,
            by_sizes * 100.0
        );
        results.push((mode, seen, by_lengths, by_sizes));
        // Whatever the mode, the backup restores.
        let target = dir.path().join(format!("restore-{mode}"));
        cairn.restore("latest", &target);
        assert_trees_equal(&src, &restored(&target, &src), Compare::CONTENT);

        if mode == "defaults" {
            // No record holds a plaintext length, and every sealed size is
            // a Padmé size.
            let truth = Inspector::open(&cairn.repo, PASSWORD).locations();
            for s in &results[1].1 {
                let real = u64::from(truth[&s.id].raw_len);
                assert_ne!(s.length_field, real, "chunk {} shows its length", s.id);
                assert_eq!(s.stored, padme(s.stored), "chunk {} is not padded", s.id);
            }
        }
    }
    let (_, _, old_lengths, _) = results[0];
    let (_, _, new_lengths, new_sizes) = results[1];
    let (_, _, _, old_sizes) = results[0];
    assert!(
        old_lengths >= 0.9 && old_sizes >= 0.9,
        "the test should find stored files in the old format: lengths {old_lengths}, sizes {old_sizes}"
    );
    assert!(
        new_lengths <= CHANCE_AT_MOST && new_sizes <= CHANCE_AT_MOST,
        "the defaults should leave the test at chance: lengths {new_lengths}, sizes {new_sizes}"
    );
}

/// The index holds what a restore needs of every record, and no more:
/// through the client the lengths read back whole.
#[test]
fn sealed_lengths_read_back_whole_through_the_client() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("a"), 2 * MIB + 5, 7);
    write_files(&src, &[("b.txt", &"compressible text\n".repeat(5000))]);
    cairn.backup(&[&src], &[]);
    // The index beneath the client holds sealed lengths; stats reads them
    // through the client and sums the real ones.
    let out = cairn.run(["stats", "--json"]);
    out.expect_success();
    let v = out.json_last_line();
    assert_eq!(
        v["raw_data_size"].as_u64(),
        Some(2 * MIB + 5 + 18 * 5000),
        "{}",
        out.describe()
    );
}
