//! A repository written by any earlier format must restore with every later
//! cairn.
//!
//! `tests/fixtures/repo-v1/` (config version 1: XChaCha20-Poly1305) and
//! `tests/fixtures/repo-v2/` (config version 2: AES-256-GCM) hold the store
//! objects (config, keys, packs, manifests) of one backup each of
//! `tests/fixtures/source-v1/`. Once committed, a fixture is never
//! regenerated: it pins what that version wrote. The RocksDB
//! index is deliberately not part of the fixture: it is a cache whose bytes
//! depend on the RocksDB version, and the store alone must be enough
//! (crate docs of cairn-chunk-store, invariant 4), so the test rebuilds it.
//!
//! A new format version adds a fixture (by hand, once):
//! `cargo test -p cairn-client --test integration -- --ignored generate_fixture`
//! writes `repo-v<newest>` with the defaults of the current cairn.

use cairn_chunk_store::pack::Compression;
use cairn_index::{DedupIndex, Engine, EngineOptions};
use std::fs;
use std::path::PathBuf;

use crate::common::*;
use crate::inspect::Inspector;

const FIXTURE_PASSWORD: &str = "cairn-fixture";

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

/// Writes the deterministic fixture source tree.
fn write_source(root: &std::path::Path) {
    fs::create_dir_all(root.join("docs/nested/deeper")).unwrap();
    fs::write(
        root.join("README.txt"),
        "Cairn repository format v1 fixture.\nThis tree is backed up into ../repo-v1.\n",
    )
    .unwrap();
    fs::write(root.join("docs/a.txt"), "alpha\n".repeat(40)).unwrap();
    fs::write(
        root.join("docs/nested/deeper/b.txt"),
        (0..200).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    // 1.5 MiB of pseudo-random bytes: one or more chunks depending on the key
    // (the generator picks a repository where it is several).
    fs::write(
        root.join("data.bin"),
        random_bytes(1536 * 1024, 0xF1C5_7E01),
    )
    .unwrap();
    std::os::unix::fs::symlink("docs/a.txt", root.join("link-to-a")).unwrap();
}

/// The newest format version, whose fixture `generate_fixture` writes.
const NEWEST: u16 = 2;

#[test]
#[ignore = "writes tests/fixtures; run once by hand when the format changes"]
fn generate_fixture() {
    let base = fixtures();
    let source = base.join("source-v1");
    let repo = base.join(format!("repo-v{NEWEST}"));
    if !source.is_dir() {
        write_source(&source);
    }
    let source = source.canonicalize().unwrap();

    // Chunk boundaries depend on the (random) repository key: retry with a
    // fresh repository until data.bin spans several chunks.
    for attempt in 1.. {
        let _ = fs::remove_dir_all(&repo);
        let cairn = Cairn::new(&repo).with_password(FIXTURE_PASSWORD);
        cairn.init();
        let tag = format!("fixture-v{NEWEST}");
        let stats = cairn.backup(&[&source], &["--host", "fixture", "--tag", &tag]);
        assert_eq!(stats.u("errors"), 0);
        let files = Inspector::open(&repo, FIXTURE_PASSWORD).files(&stats.snapshot_id());
        if files[&source.join("data.bin")].len() >= 2 {
            break;
        }
        assert!(attempt < 20, "data.bin never spanned two chunks");
    }
    fs::remove_dir_all(repo.join("index")).unwrap();

    let size: u64 = walk(&repo)
        .into_iter()
        .filter(|(_, m)| m.kind == Kind::File)
        .map(|(_, m)| m.size)
        .sum();
    assert!(size < 3_000_000, "fixture is {size} bytes");
}

#[test]
fn fixture_v1_restores() {
    fixture_restores(1);
}

#[test]
fn fixture_v2_restores() {
    fixture_restores(2);
}

fn fixture_restores(version: u16) {
    let base = fixtures();
    let source = base.join("source-v1");
    let fixture_repo = base.join(format!("repo-v{version}"));
    assert!(
        fixture_repo.join("config").is_file() && source.is_dir(),
        "fixture missing: run `cargo test -p cairn-client --test integration -- --ignored generate_fixture`"
    );
    // The generator wrote source-v1 deterministically: a checkout that
    // changed it would make this test meaningless.
    let (_check_tmp, check_dir) = tempdir();
    write_source(&check_dir.join("source-v1"));
    assert_trees_equal(&check_dir.join("source-v1"), &source, Compare::CONTENT);

    // The config of a fixture is at the fixture's own version.
    let config = fs::read(fixture_repo.join("config")).unwrap();
    assert_eq!(&config[..8], b"CAIRNCFG");
    assert_eq!(u16::from_le_bytes([config[8], config[9]]), version);

    // Never write into tests/fixtures: work on a copy.
    let (_tmp, dir) = tempdir();
    let repo = dir.join("repo");
    copy_dir(&fixture_repo, &repo);
    let cairn = Cairn::new(&repo).with_password(FIXTURE_PASSWORD);
    cairn.run(["index", "rebuild"]).expect_success();
    cairn.check_clean();

    let snaps = cairn.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["host"], "fixture");
    let backed_up = PathBuf::from(snaps[0]["paths"][0].as_str().expect("snapshot path"));
    // The fixture exercises a file of several chunks.
    let snapshot = snaps[0]["id"].as_str().expect("snapshot id");
    let files = Inspector::open(&repo, FIXTURE_PASSWORD).files(snapshot);
    let data_chunks = files.get(&backed_up.join("data.bin")).map_or(0, Vec::len);
    assert!(
        data_chunks >= 2,
        "data.bin is stored in {data_chunks} chunks; the fixture needs a multi-chunk file"
    );
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(&source, &restored(&target, &backed_up), Compare::CONTENT);

    // Backed up again by this client, the old repository keeps its format:
    // the same cuts (every data chunk deduplicates), no padding, its
    // config version, and plaintext lengths in its index as before.
    let again = cairn.backup(&[&source], &[]);
    assert_eq!(again.u("data_chunks_new"), 0, "{again:?}");
    let config = fs::read(repo.join("config")).unwrap();
    assert_eq!(u16::from_le_bytes([config[8], config[9]]), version);
    let inspector = Inspector::open(&repo, FIXTURE_PASSWORD);
    let locations = inspector.locations();
    assert!(
        locations
            .values()
            .all(|l| matches!(l.compression, Compression::None | Compression::Zstd)),
        "a chunk of an old repository was padded"
    );
    let engine = Engine::open(&repo.join("index"), EngineOptions::default(), &|_| {}).unwrap();
    let ids: Vec<_> = locations.keys().copied().collect();
    let records = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(engine.lookup(&ids))
        .unwrap();
    for (id, r) in ids.iter().zip(records) {
        assert_eq!(
            r.unwrap().location.raw_len,
            locations[id].raw_len,
            "chunk {id}"
        );
    }
}
