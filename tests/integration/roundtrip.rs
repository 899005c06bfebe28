//! Backup then restore reproduces the source exactly; ls, dump and
//! restore --include see the same tree.

use std::fs;

use crate::common::*;
use crate::inspect::Inspector;

#[test]
fn full_tree_round_trip_ls_dump_and_include() {
    let (_tmp, dir, cairn) = new_repo();
    let tree = build_full_tree(&dir.join("src"));
    let src = &tree.root;

    let stats = cairn.backup(&[src], &[]);
    assert_eq!(stats.u("errors"), 0, "{:?}", stats);
    assert!(
        stats.u("bytes_read") >= tree.big_len,
        "bytes_read too small: {:?}",
        stats
    );

    // Full restore: every byte, mode, mtime, owner, xattr, link.
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(src, &restored(&target, src), Compare::ALL);

    // ls lists exactly the source entries under the backed-up path.
    let listed = cairn.ls("latest");
    let prefix = format!("{}/", s(src));
    let under_src: std::collections::BTreeSet<String> = listed
        .iter()
        .filter(|l| *l == s(src) || l.starts_with(&prefix))
        .cloned()
        .collect();
    let expected = absolute_entries(src);
    let missing: Vec<_> = expected.difference(&under_src).take(10).collect();
    let extra: Vec<_> = under_src.difference(&expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ls latest differs from the source: missing {missing:?}, extra {extra:?} ({} listed)",
        under_src.len()
    );
    // The ancestors of the backed-up path are listed too (the tree mirrors absolute paths).
    for ancestor in src
        .ancestors()
        .skip(1)
        .filter(|a| *a != std::path::Path::new("/"))
    {
        assert!(
            listed.contains(s(ancestor)),
            "ls does not list ancestor {}",
            ancestor.display()
        );
    }

    // dump: exact bytes, also of an empty file.
    let out = cairn.run(["dump", "latest", s(&tree.medium)]);
    out.expect_success();
    assert!(
        out.stdout == fs::read(&tree.medium).unwrap(),
        "dump of medium.bin differs ({} bytes)",
        out.stdout.len()
    );
    let out = cairn.run(["dump", "latest", s(&tree.empty)]);
    out.expect_success();
    assert!(
        out.stdout.is_empty(),
        "dump of an empty file printed {} bytes",
        out.stdout.len()
    );

    // restore --include: only that subtree (and the directories leading to it).
    let target2 = dir.join("target-include");
    let include = &tree.include_dir;
    let out = cairn.run([
        "restore",
        "latest",
        "--target",
        s(&target2),
        "--include",
        s(include),
    ]);
    out.expect_success();
    assert_trees_equal(include, &restored(&target2, include), Compare::ALL);
    for (rel, m) in walk(&target2) {
        let abs = std::path::Path::new("/").join(&rel);
        if m.kind != Kind::Dir {
            assert!(
                abs.starts_with(include),
                "restore --include restored {} outside {}",
                abs.display(),
                include.display()
            );
        } else {
            assert!(
                abs.starts_with(include) || include.starts_with(&abs),
                "restore --include created directory {} that is neither inside nor above {}",
                abs.display(),
                include.display()
            );
        }
    }
}

#[test]
fn sha256_repository_round_trips() {
    let (_tmp, dir) = tempdir();
    let src = dir.join("src");
    write_files(
        &src,
        &[
            ("sub/a.txt", "sha-256 repository\n"),
            ("sub/deeper/b.txt", "b\n"),
        ],
    );
    write_random_file(&src.join("two-mib.bin"), 2 * MIB + 7, 0x256);
    std::os::unix::fs::symlink("sub/a.txt", src.join("link")).unwrap();
    set_mode(&src.join("sub/a.txt"), 0o640);

    let cairn = Cairn::new(dir.join("repo"));
    cairn.init_with_hash("sha256");
    assert_eq!(
        Inspector::open(&cairn.repo, PASSWORD)
            .repository()
            .config()
            .hash
            .name(),
        "sha256",
        "init --hash sha256 did not record HMAC-SHA256 in the config"
    );

    let first = cairn.backup(&[&src], &[]);
    assert!(first.u("data_chunks_new") >= 3, "{:?}", first);
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::ALL);

    // Deduplication works with this fingerprint too.
    for f in ["two-mib.bin", "sub/a.txt", "sub/deeper/b.txt"] {
        bump_mtime(&src.join(f));
    }
    let second = cairn.backup(&[&src], &[]);
    assert_eq!(second.u("data_chunks_new"), 0, "{:?}", second);
    cairn.check_clean();
}

/// Both ciphers seal and restore every kind of entry; the config records the
/// cipher at the lowest version that can name it (1 for XChaCha20-Poly1305,
/// readable by clients that know only version 1), and an unknown cipher is
/// refused before anything is written.
#[test]
fn each_cipher_round_trips_and_is_recorded() {
    let (_tmp, dir) = tempdir();
    let src = dir.join("src");
    write_files(&src, &[("sub/a.txt", &"sealed either way\n".repeat(100))]);
    // Over the 8 MiB maximum chunk, so the file is cut at least once whatever
    // the repository's (random) chunker key: at least three data chunks.
    write_random_file(&src.join("nine-mib.bin"), 9 * MIB + 11, 0xC1);
    std::os::unix::fs::symlink("sub/a.txt", src.join("link")).unwrap();

    // Without the size protection of config version 5, each cipher is
    // written at the lowest version that has it; with it (the default), 5.
    for (cipher, sizes, version) in [
        ("aes-256-gcm", &NO_SIZE_PROTECTION[..], 2u16),
        ("xchacha20-poly1305", &NO_SIZE_PROTECTION[..], 1),
        ("aes-256-gcm", &[][..], 5),
        ("xchacha20-poly1305", &[][..], 5),
    ] {
        let name = format!("{cipher}-v{version}");
        let cairn = Cairn::new(dir.join(format!("repo-{name}")));
        let mut init = vec!["init", "--cipher", cipher];
        init.extend_from_slice(sizes);
        cairn.run(init).expect_success();
        let config = fs::read(cairn.repo.join("config")).unwrap();
        assert_eq!(
            u16::from_le_bytes([config[8], config[9]]),
            version,
            "{cipher}"
        );
        assert_eq!(
            Inspector::open(&cairn.repo, PASSWORD)
                .repository()
                .config()
                .cipher
                .name(),
            cipher
        );
        let first = cairn.backup(&[&src], &[]);
        assert!(first.u("data_chunks_new") >= 3, "{cipher}: {first:?}");
        let target = dir.join(format!("target-{name}"));
        cairn.restore("latest", &target);
        assert_trees_equal(&src, &restored(&target, &src), Compare::ALL);
        cairn.run(["check", "--read-data"]).expect_success();
    }
    // The default is AES-256-GCM.
    let cairn = Cairn::new(dir.join("repo-default"));
    let out = cairn.run(["init", "--json"]);
    out.expect_success();
    assert_eq!(out.json_last_line()["cipher"], "aes-256-gcm");

    let cairn = Cairn::new(dir.join("repo-rot13"));
    let out = cairn.run(["init", "--cipher", "rot13"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("unknown cipher \"rot13\" (expected aes-256-gcm or xchacha20-poly1305)"),
        "{}",
        out.describe()
    );
    assert!(
        !cairn.repo.exists(),
        "a refused init wrote {:?}",
        cairn.repo
    );
}

/// Whatever is already at a restored path is replaced, never written
/// through: a symlink pointing outside the target, a directory, a longer
/// stale file. A second restore over the first gives the same tree.
#[test]
fn restore_replaces_what_is_already_in_the_target() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    write_files(
        &src,
        &[("a.txt", "restored content of a\n"), ("sub/b.txt", "b\n")],
    );
    write_random_file(&src.join("large.bin"), 6 * MIB + 7, 0x1A);
    cairn.backup(&[&src], &[]);

    let target = dir.join("target");
    let at = restored(&target, &src);
    fs::create_dir_all(at.join("sub/b.txt/inner")).unwrap();
    fs::write(at.join("sub/b.txt/inner/file"), b"in the way\n").unwrap();
    let victim = dir.join("victim.txt");
    fs::write(&victim, b"must stay as it is\n").unwrap();
    std::os::unix::fs::symlink(&victim, at.join("a.txt")).unwrap();
    fs::write(at.join("large.bin"), vec![7u8; 9 * MIB as usize]).unwrap();

    cairn.restore("latest", &target);
    assert_eq!(fs::read(&victim).unwrap(), b"must stay as it is\n");
    assert_trees_equal(&src, &at, Compare::ALL);

    cairn.restore("latest", &target);
    assert_trees_equal(&src, &at, Compare::ALL);
}

/// An unchanged file keeps the extended attributes of its parent snapshot's
/// node (they are not read again); changing one changes the file's ctime, so
/// the next backup records it.
#[test]
fn xattrs_follow_their_files_across_backups() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    for (name, value) in [("kept.txt", "one"), ("changed.txt", "one")] {
        fs::write(src.join(name), format!("{name}\n")).unwrap();
        xattr::set(src.join(name), "user.cairn.v", value.as_bytes()).unwrap();
    }
    cairn.backup(&[&src], &[]);

    xattr::set(src.join("changed.txt"), "user.cairn.v", b"two").unwrap();
    xattr::set(src.join("changed.txt"), "user.cairn.added", b"three").unwrap();
    let second = cairn.backup(&[&src], &[]);
    assert_eq!(second.u("files_unmodified"), 1, "{:?}", second);
    assert_eq!(second.u("files_changed"), 1, "{:?}", second);
    let target = dir.join("target");
    cairn.restore("latest", &target);
    let restored = restored(&target, &src);
    assert_trees_equal(&src, &restored, Compare::ALL);
    assert_eq!(
        xattr::get(restored.join("kept.txt"), "user.cairn.v").unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        xattr::get(restored.join("changed.txt"), "user.cairn.added").unwrap(),
        Some(b"three".to_vec())
    );
}
