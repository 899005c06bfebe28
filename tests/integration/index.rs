//! `cairn index rebuild` recreates the index from the packs alone.

use std::fs;

use crate::common::*;

#[test]
fn rebuilt_index_restores_dedup() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut files = Vec::new();
    for i in 0..6u64 {
        let f = src.join(format!("file-{i}.bin"));
        write_random_file(&f, 1536 * 1024 + i, 0x1DE + i);
        files.push(f);
    }
    for i in 0..20u64 {
        let f = src.join(format!("sub/text-{i}.txt"));
        fs::write(&f, format!("text {i}\n").repeat(50)).unwrap();
        files.push(f);
    }
    let total_bytes: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();

    let first = cairn.backup(&[&src], &[]);

    fs::remove_dir_all(cairn.repo.join("index")).unwrap();
    let out = cairn.run(["index", "rebuild"]);
    out.expect_success();
    let packs = pack_files(&cairn.repo).len();
    let expected = format!(
        "rebuilt index: {} chunks in {packs} packs",
        first.u("chunks_new")
    );
    assert!(
        out.stdout_text().contains(&expected),
        "expected {expected:?}\n{}",
        out.describe()
    );

    // Touch every file so the unchanged-file shortcut cannot apply: any dedup
    // now comes from the rebuilt index.
    for f in &files {
        bump_mtime(f);
    }
    let second = cairn.backup(&[&src], &[]);
    assert_eq!(
        second.u("bytes_read"),
        total_bytes,
        "every file is read again: {:?}",
        second
    );
    assert_eq!(second.u("data_chunks_new"), 0, "{:?}", second);
    cairn.check_clean();
}
