//! Damaged packs are found by `check --read-data`, named with the files that
//! need them, and a restore saves everything else.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_chunk_store::pack::BlobKind;

use crate::common::*;
use crate::inspect::Inspector;

/// Six 6 MiB random files (several packs) and a few small ones. No file name
/// is a prefix of another, so "named in the output" checks are exact.
fn build_source(src: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(src.join("small")).unwrap();
    let mut files = Vec::new();
    for i in 0..6u64 {
        let f = src.join(format!("large-{i:02}.bin"));
        write_random_file(&f, 6 * MIB + i * 1001, 0xC0 + i);
        files.push(f);
    }
    for i in 0..8u64 {
        let f = src.join(format!("small/note-{i:02}.txt"));
        fs::write(&f, format!("note {i}\n").repeat(100)).unwrap();
        files.push(f);
    }
    files
}

#[test]
fn truncated_pack_is_named_by_check() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    build_source(&src);
    cairn.backup(&[&src], &[]);
    cairn.check_clean();

    let pack = largest_pack(&cairn.repo);
    let f = OpenOptions::new().write(true).open(&pack.path).unwrap();
    f.set_len(pack.size - 100).unwrap();
    drop(f);

    let out = cairn.run(["check", "--read-data"]);
    out.expect_code(1);
    let named = format!("pack {}", pack.id);
    assert!(
        out.all_text().contains(&named),
        "check does not name {named:?}\n{}",
        out.describe()
    );
    assert!(
        !out.all_text().contains("no errors were found"),
        "{}",
        out.describe()
    );
}

#[test]
fn flipped_byte_is_named_and_restore_saves_the_rest() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    let files = build_source(&src);
    let stats = cairn.backup(&[&src], &[]);
    cairn.check_clean();
    let snapshot = stats.snapshot_id();
    let short_id = cairn.snapshots()[0]["short_id"]
        .as_str()
        .expect("short_id")
        .to_string();

    // Oracle: which chunk sits at the middle of the largest pack, and which
    // files use it.
    let pack = largest_pack(&cairn.repo);
    let middle = pack.size / 2;
    let inspector = Inspector::open(&cairn.repo, PASSWORD);
    let hit = inspector
        .pack_entries(&pack.id)
        .into_iter()
        .find(|e| {
            e.location.offset <= middle
                && middle < e.location.offset + u64::from(e.location.stored_len)
        })
        .expect("the middle of the pack is inside a chunk");
    assert_eq!(
        hit.location.kind,
        BlobKind::Data,
        "the largest pack should hold file data"
    );
    let damaged: BTreeSet<PathBuf> = inspector
        .files(&snapshot)
        .into_iter()
        .filter(|(_, chunks)| chunks.contains(&hit.id))
        .map(|(path, _)| path)
        .collect();
    assert!(!damaged.is_empty(), "no file uses chunk {}", hit.id);
    drop(inspector);

    // Flip one byte.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack.path)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(middle)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(middle)).unwrap();
    f.write_all(&[byte[0] ^ 0x5A]).unwrap();
    drop(f);

    let out = cairn.run(["check", "--read-data"]);
    out.expect_code(1);
    let text = out.all_text();
    assert!(
        text.contains(&format!("pack {}", pack.id)),
        "check does not name pack {}\n{}",
        pack.id,
        out.describe()
    );
    for path in &damaged {
        let line = format!("needed by snapshot {short_id}: {}", s(path));
        assert!(
            text.contains(&line),
            "check does not say {line:?}\n{}",
            out.describe()
        );
    }
    for path in files.iter().filter(|p| !damaged.contains(*p)) {
        assert!(
            !text.contains(s(path)),
            "check names intact file {}\n{}",
            path.display(),
            out.describe()
        );
    }

    let target = dir.join("target");
    let out = cairn.run(["restore", "latest", "--target", s(&target)]);
    out.expect_code(1);
    for path in &damaged {
        assert!(
            out.stderr.contains(s(path)),
            "restore does not name damaged {}\n{}",
            path.display(),
            out.describe()
        );
    }
    for path in files.iter().filter(|p| !damaged.contains(*p)) {
        assert!(
            !out.stderr.contains(s(path)),
            "restore names intact file {}\n{}",
            path.display(),
            out.describe()
        );
        assert!(
            files_equal(path, &restored(&target, path)),
            "intact file {} was not restored exactly",
            path.display()
        );
    }
}
