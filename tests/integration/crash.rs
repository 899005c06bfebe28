//! A backup killed with SIGKILL leaves a repository that the next backup
//! completes, reusing the chunks already stored.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cairn_chunk_store::pack::BlobKind;

use crate::common::*;
use crate::inspect::Inspector;

fn kill_after_packs_then_rerun(k: usize) {
    let src = big_source();
    let (_tmp, dir, cairn) = new_repo();

    let mut child = cairn.spawn(["backup", s(src), "--json"], &dir.join("killed-run"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if pack_files(&cairn.repo).len() >= k {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(dir.join("killed-run/stderr")).unwrap_or_default();
            panic!(
                "backup ended ({status}) before it wrote {k} packs; make big_source() bigger\n{stderr}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "backup wrote fewer than {k} packs in 300 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "backup finished before the kill: {status}"
    );

    let stored_before = pack_files(&cairn.repo);
    assert!(stored_before.len() >= k);
    assert!(
        cairn.snapshots().is_empty(),
        "a killed backup left a snapshot"
    );

    let rerun = cairn.backup(&[src], &[]);
    assert_eq!(rerun.u("errors"), 0, "{:?}", rerun);
    cairn.check_clean();
    let target = dir.join("target");
    cairn.restore("latest", &target);
    assert_trees_equal(src, &restored(&target, src), Compare::ALL);

    // Chunk accounting through the format library.
    let inspector = Inspector::open(&cairn.repo, PASSWORD);
    let total: HashSet<_> = inspector
        .files(&rerun.snapshot_id())
        .into_values()
        .flatten()
        .collect();
    let mut before = HashSet::new();
    for pack in &stored_before {
        before.extend(
            inspector
                .pack_entries(&pack.id)
                .into_iter()
                .filter(|e| e.location.kind == BlobKind::Data)
                .map(|e| e.id),
        );
    }
    assert!(
        before.is_subset(&total),
        "packs from the killed run hold chunks the source does not have"
    );
    let (total, before) = (total.len() as u64, before.len() as u64);
    let new = rerun.u("data_chunks_new");
    assert!(
        new < total,
        "the rerun stored all {total} data chunks again, although {} packs holding {before} of them \
         were in the repository before the rerun: {:?}",
        stored_before.len(),
        rerun
    );
    // Every chunk in a pack that reached the store is reused, including a
    // pack the killed run stored but had not yet recorded in the index.
    assert_eq!(
        new,
        total - before,
        "{before} of {total} data chunks were in packs before the rerun: {:?}",
        rerun
    );
}

#[test]
fn sigkill_after_1_pack_then_rerun() {
    kill_after_packs_then_rerun(1);
}

#[test]
fn sigkill_after_3_packs_then_rerun() {
    kill_after_packs_then_rerun(3);
}

#[test]
fn sigkill_after_6_packs_then_rerun() {
    kill_after_packs_then_rerun(6);
}
