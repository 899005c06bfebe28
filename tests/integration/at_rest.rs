//! Nothing of the source is readable at rest: contents, names, link targets
//! and xattrs are all sealed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

fn all_files(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(_, m)| m.kind == Kind::File)
        .map(|(rel, _)| root.join(rel))
        .collect()
}

fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    all_files(root)
        .into_iter()
        .filter(|f| contains_bytes(&fs::read(f).unwrap(), needle))
        .collect()
}

#[test]
fn repository_holds_no_plaintext() {
    let (_tmp, dir, cairn) = new_repo();
    let marker = random_marker();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    // Highly compressible: the marker repeated.
    fs::write(src.join("small.txt"), format!("{marker}\n").repeat(200)).unwrap();
    // Embedded in a large random file, across chunk boundaries as they fall.
    let mut big = random_bytes(5 * MIB as usize, 0xA7);
    for at in [
        0usize,
        1_000_003,
        2_500_000,
        4_000_000,
        big.len() - marker.len(),
    ] {
        big[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    fs::write(src.join("large.bin"), &big).unwrap();
    // Metadata too: a file name, a symlink target, an xattr value.
    fs::write(src.join(format!("name-{marker}.txt")), b"named\n").unwrap();
    std::os::unix::fs::symlink(format!("target-{marker}"), src.join("link")).unwrap();
    xattr::set(src.join("small.txt"), "user.note", marker.as_bytes()).unwrap();

    // The search itself finds the marker where it is (the test can fail).
    assert!(files_containing(&src, marker.as_bytes()).len() >= 2);

    let stats = cairn.backup(&[&src], &[]);
    assert!(
        stats.u("bytes_new") >= 5 * MIB,
        "the data was not stored: {:?}",
        stats
    );

    let repo_files = all_files(&cairn.repo);
    assert!(
        repo_files
            .iter()
            .any(|f| f.starts_with(cairn.repo.join("packs"))),
        "no packs written"
    );
    let leaks = files_containing(&cairn.repo, marker.as_bytes());
    assert!(
        leaks.is_empty(),
        "plaintext marker found in repository files: {leaks:?}"
    );
    // Also not the marker's bytes in any simple encoding of a name (hex of the hex).
    let hex_of_marker = hex::encode(marker.as_bytes());
    let leaks = files_containing(&cairn.repo, hex_of_marker.as_bytes());
    assert!(
        leaks.is_empty(),
        "hex-encoded marker found in repository files: {leaks:?}"
    );

    // The data is really there: a restore gets the marker back.
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::ALL);
}
