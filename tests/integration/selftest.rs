//! The helpers the other tests rely on can fail: each kind of difference a
//! restore could get wrong is detected by `compare_trees`.

use std::fs;
use std::path::Path;

use crate::common::*;

type Mutation = Box<dyn Fn(&Path)>;

fn sample(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("f"), b"content").unwrap();
    fs::write(root.join("d/g"), b"g").unwrap();
    fs::hard_link(root.join("d/g"), root.join("d/h")).unwrap();
    std::os::unix::fs::symlink("f", root.join("l")).unwrap();
    xattr::set(root.join("f"), "user.k", b"v").unwrap();
    set_mtime_ns(&root.join("f"), 1_000_000_000, 5);
    set_mtime_ns(&root.join("d/g"), 1_000_000_000, 9);
    set_mtime_ns(&root.join("l"), 1_000_000_000, 6);
    set_mtime_ns(&root.join("d"), 1_000_000_000, 7);
    set_mtime_ns(root, 1_000_000_000, 8);
}

fn copy_with_metadata(from: &Path, to: &Path) {
    sample(to);
    // Same content and metadata as `from`, checked below.
    let diffs = compare_trees(from, to, Compare::ALL);
    assert!(
        diffs.is_empty(),
        "identical trees compare unequal: {diffs:?}"
    );
}

#[test]
fn compare_trees_detects_each_difference() {
    let (_tmp, dir) = tempdir();
    let a = dir.join("a");
    sample(&a);

    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "content",
            Box::new(|b| fs::write(b.join("d/g"), b"G").unwrap()),
        ),
        (
            "size",
            Box::new(|b| fs::write(b.join("f"), b"content!").unwrap()),
        ),
        ("mode", Box::new(|b| set_mode(&b.join("f"), 0o600))),
        (
            "file mtime",
            Box::new(|b| set_mtime_ns(&b.join("f"), 1_000_000_000, 4)),
        ),
        (
            "dir mtime",
            Box::new(|b| set_mtime_ns(&b.join("d"), 1_000_000_001, 7)),
        ),
        (
            "symlink mtime",
            Box::new(|b| set_mtime_ns(&b.join("l"), 1_000_000_000, 0)),
        ),
        (
            "symlink target",
            Box::new(|b| {
                fs::remove_file(b.join("l")).unwrap();
                std::os::unix::fs::symlink("d", b.join("l")).unwrap();
                set_mtime_ns(&b.join("l"), 1_000_000_000, 6);
            }),
        ),
        (
            "xattr",
            Box::new(|b| xattr::set(b.join("f"), "user.k", b"w").unwrap()),
        ),
        (
            "missing entry",
            Box::new(|b| fs::remove_file(b.join("f")).unwrap()),
        ),
        (
            "extra entry",
            Box::new(|b| fs::write(b.join("extra"), b"").unwrap()),
        ),
        (
            "broken hardlink",
            Box::new(|b| {
                fs::remove_file(b.join("d/h")).unwrap();
                fs::write(b.join("d/h"), b"g").unwrap();
                set_mtime_ns(&b.join("d/h"), 1_000_000_000, 9);
                set_mtime_ns(&b.join("d"), 1_000_000_000, 7);
            }),
        ),
    ];
    for (i, (what, mutate)) in mutations.iter().enumerate() {
        let b = dir.join(format!("b{i}"));
        copy_with_metadata(&a, &b);
        mutate(&b);
        assert!(
            !compare_trees(&a, &b, Compare::ALL).is_empty(),
            "a changed {what} went unnoticed"
        );
    }
}
