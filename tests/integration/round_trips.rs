//! The fleet path without a round trip per directory: an unchanged
//! re-backup through a three-node cluster asks the index a bounded number
//! of times, not once per directory (counted by the nodes themselves), and
//! a client that kept its tree packs does not ask where its trees are.

use std::fs;

use crate::cluster::ClusterFixture;
use crate::common::s;

const DIRS: usize = 2_000;

#[test]
fn an_unchanged_rebackup_makes_few_index_requests() {
    let Some(f) = ClusterFixture::new(3, 2) else {
        return;
    };
    let src = f.dir.join("src");
    // 2,000 directories below src: 40 groups and 49 in each.
    let mut dirs = 0;
    for g in 0..40 {
        let group = src.join(format!("g{g:02}"));
        for d in 0..49 {
            let leaf = group.join(format!("d{d:02}"));
            fs::create_dir_all(&leaf).unwrap();
            fs::write(leaf.join("f"), format!("{g} {d}\n")).unwrap();
            dirs += 1;
        }
        dirs += 1;
    }
    assert_eq!(dirs, DIRS);

    // The client that backs up keeps its tree packs in its cache; another
    // (a fresh machine, or one whose cache was cleared) has none.
    let client = f.cairn.with_env("XDG_CACHE_HOME", s(&f.dir.join("cache")));
    let cold = f
        .cairn
        .with_env("XDG_CACHE_HOME", s(&f.dir.join("cold-cache")));
    let first = client.backup(&[&src], &[]);
    assert_eq!(first.u("dirs") as usize, DIRS + 1 + ancestors(&src));

    let bound = 10 + DIRS / 100;
    for (cairn, what) in [(&cold, "without"), (&client, "with")] {
        let before = f.total("cairn_index_requests_total");
        let locates = f.total(LOCATES);
        let again = cairn.backup(&[&src], &[]);
        let requests = f.total("cairn_index_requests_total") - before;
        assert_eq!(again.u("files_unmodified") as usize, 40 * 49);
        assert_eq!(again.u("chunks_new"), 0, "{:?}", again);
        assert!(
            requests <= bound as f64,
            "an unchanged re-backup of {DIRS} directories {what} its tree packs made {requests} index requests (at most {bound})"
        );
        let locates = f.total(LOCATES) - locates;
        if what == "with" {
            assert_eq!(locates, 0.0, "trees were located through the index");
        } else {
            assert!(
                locates > 0.0,
                "the cold client read its trees from somewhere"
            );
        }
    }
}

const LOCATES: &str = "cairn_index_requests_total{method=\"Locate\"";

/// Directories above `src` that a snapshot records (its ancestors and `/`).
fn ancestors(src: &std::path::Path) -> usize {
    src.components().count() - 1
}
