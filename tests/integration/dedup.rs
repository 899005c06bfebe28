//! Deduplication: unchanged files are not read, shifted content reuses
//! chunks, identical content is stored once.

use std::fs;

use crate::common::*;

#[test]
fn unchanged_tree_stores_nothing_and_one_byte_insert_few_chunks() {
    let (_tmp, dir, cairn) = new_repo();
    let tree = build_full_tree(&dir.join("src"));
    let src = &tree.root;

    let first = cairn.backup(&[src], &[]);
    assert!(first.u("data_chunks_new") > 10_000, "{:?}", first);

    // Same tree again: nothing read, no data stored, every file unmodified.
    let second = cairn.backup(&[src], &[]);
    assert_eq!(
        second.0["parent"].as_str(),
        Some(first.snapshot_id().as_str()),
        "{:?}",
        second
    );
    for (field, expected) in [
        ("data_chunks_new", 0),
        ("bytes_read", 0),
        ("files_unmodified", tree.regular_files as u64),
        ("files_new", 0),
        ("files_changed", 0),
    ] {
        assert_eq!(second.u(field), expected, "{field}: {:?}", second);
    }
    assert_eq!(
        second.u("chunks_new"),
        second.u("data_chunks_new") + second.u("tree_chunks_new"),
        "{:?}",
        second
    );
    // Nothing at all is stored: not a data chunk, not a tree (directories
    // above the source are recorded without their ever-changing times).
    assert_eq!(second.u("chunks_new"), 0, "{:?}", second);

    // Insert one byte at the start of the 100 MiB file.
    write_random_file_with_prefix(&tree.big, b"!", tree.big_len, tree.big_seed);
    let third = cairn.backup(&[src], &[]);
    assert!(
        third.u("data_chunks_new") <= 3,
        "a one-byte insertion stored {} new data chunks: {:?}",
        third.u("data_chunks_new"),
        third
    );
    assert_eq!(
        third.u("bytes_read"),
        tree.big_len + 1,
        "only the edited file is read: {:?}",
        third
    );
    assert_eq!(third.u("files_changed"), 1, "{:?}", third);
    assert_eq!(
        third.u("files_unmodified"),
        tree.regular_files as u64 - 1,
        "{:?}",
        third
    );
}

/// Two distinct files with the same content in one backup are stored once.
///
/// Chunk boundaries depend on the repository's key, so the single-copy count
/// comes from a byte-for-byte copy of the same freshly initialised repository.
#[test]
fn identical_files_in_one_backup_are_stored_once() {
    let (_tmp, dir) = tempdir();
    let one = dir.join("one");
    let two = dir.join("two");
    fs::create_dir_all(&one).unwrap();
    fs::create_dir_all(&two).unwrap();
    let len = 3 * MIB + 333;
    write_random_file(&one.join("a.bin"), len, 0xD0D0);
    write_random_file(&two.join("a.bin"), len, 0xD0D0);
    write_random_file(&two.join("b.bin"), len, 0xD0D0);
    assert_ne!(meta(&two.join("a.bin")).ino, meta(&two.join("b.bin")).ino);

    let single = Cairn::new(dir.join("repo-single"));
    single.init();
    let double = Cairn::new(dir.join("repo-double"));
    copy_dir(&single.repo, &double.repo);

    let n = single.backup(&[&one], &[]).u("data_chunks_new");
    assert!(n >= 1, "a 3 MiB file stored no chunk");
    let stats = double.backup(&[&two], &[]);
    assert_eq!(
        stats.u("bytes_read"),
        2 * len,
        "both copies are read: {:?}",
        stats
    );
    assert_eq!(
        stats.u("data_chunks_new"),
        n,
        "two identical files stored {} data chunks, one copy stores {n}: {:?}",
        stats.u("data_chunks_new"),
        stats
    );
    // And both restore.
    let target = dir.join("target");
    double.restore("latest", &target);
    assert_trees_equal(&two, &restored(&target, &two), Compare::ALL);
}
