//! The fleet path without a round trip per directory: an unchanged
//! re-backup through a three-node cluster asks the index a bounded number
//! of times, not once per directory (counted by the nodes themselves).

use std::fs;

use crate::cluster::ClusterFixture;

const DIRS: usize = 2_000;

#[test]
fn an_unchanged_rebackup_makes_few_index_requests() {
    let f = ClusterFixture::start(3, 2);
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

    let first = f.cairn.backup(&[&src], &[]);
    assert_eq!(first.u("dirs") as usize, DIRS + 1 + ancestors(&src));
    let before = f.total("cairn_index_requests_total");
    let again = f.cairn.backup(&[&src], &[]);
    let requests = f.total("cairn_index_requests_total") - before;
    assert_eq!(again.u("files_unmodified") as usize, 40 * 49);
    assert_eq!(again.u("chunks_new"), 0, "{:?}", again);
    let bound = 10 + DIRS / 100;
    assert!(
        requests <= bound as f64,
        "an unchanged re-backup of {DIRS} directories made {requests} index requests (at most {bound})"
    );
}

/// Directories above `src` that a snapshot records (its ancestors and `/`).
fn ancestors(src: &std::path::Path) -> usize {
    src.components().count() - 1
}
