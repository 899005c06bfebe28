//! The client's tree packs: an unchanged re-backup, `ls` and restore read
//! the trees from the client's cache, not the store; a cache that lies is
//! caught, dropped and read around; `check` never trusts it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

/// A source of three levels of directories with a small file in each leaf.
fn source(dir: &Path) -> (PathBuf, usize) {
    let src = dir.join("src");
    let mut files = 0;
    for a in 0..4 {
        for b in 0..5 {
            let leaf = src.join(format!("a{a}/b{b}"));
            fs::create_dir_all(&leaf).unwrap();
            fs::write(leaf.join("f.txt"), format!("{a} {b}\n")).unwrap();
            files += 1;
        }
    }
    (src, files)
}

/// The tree packs the client kept: (cache file, the pack's path in the store).
fn kept_packs(cache: &Path, repo: &Path) -> Vec<(PathBuf, PathBuf)> {
    let trees = cache.join("cairn/trees");
    let repo_dir = fs::read_dir(&trees)
        .expect("the backup kept its tree packs")
        .next()
        .expect("one repository")
        .unwrap()
        .path();
    fs::read_dir(repo_dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let id = path.file_stem().unwrap().to_str().unwrap().to_string();
            (path, repo.join("packs").join(&id[..2]).join(&id))
        })
        .collect()
}

#[test]
fn trees_are_read_from_the_clients_cache_and_a_lying_cache_is_dropped() {
    let (_tmp, dir, cairn) = new_repo();
    let cache = dir.join("cache");
    let cairn = cairn.with_env("XDG_CACHE_HOME", s(&cache));
    let (src, files) = source(&dir);
    cairn.backup(&[&src], &[]);

    let kept = kept_packs(&cache, &cairn.repo);
    assert_eq!(kept.len(), 1, "one tree pack: {kept:?}");
    let (cached, stored) = &kept[0];
    assert_eq!(fs::read(cached).unwrap(), fs::read(stored).unwrap());

    // With the tree pack gone from the store, the client still knows its
    // parent: every file is unmodified, and `ls` lists the snapshot.
    let aside = dir.join("aside");
    fs::rename(stored, &aside).unwrap();
    let again = cairn.backup(&[&src], &[]);
    assert_eq!(again.u("files_unmodified") as usize, files, "{again:?}");
    let listed = cairn.run(["ls", "latest"]);
    listed.expect_success();
    assert!(
        listed.stdout_text().contains("a3/b4/f.txt"),
        "{}",
        listed.describe()
    );
    // check reads the store, never the cache: it finds the pack missing.
    let checked = cairn.run(["check"]);
    assert_ne!(checked.code, 0, "{}", checked.describe());
    fs::rename(&aside, stored).unwrap();

    // A cache file changed under the client: its trees fail verification,
    // the file is deleted, and the trees come from the store.
    let mut bytes = fs::read(cached).unwrap();
    bytes[5] ^= 0x40;
    fs::write(cached, &bytes).unwrap();
    let third = cairn.backup(&[&src], &[]);
    assert_eq!(third.u("files_unmodified") as usize, files, "{third:?}");
    assert!(!cached.exists(), "the changed pack left the cache");

    let target = dir.join("restore");
    cairn.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::ALL);
    cairn.check_clean();
}
