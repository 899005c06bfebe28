//! A second process on the same repository is refused while the first holds
//! the index, and the first is not disturbed.

use std::fs;
use std::time::Duration;

use crate::common::*;

#[test]
fn second_backup_is_refused_while_first_runs() {
    let src = big_source();
    let (_tmp, dir, cairn) = new_repo();
    let small = dir.join("small");
    fs::create_dir_all(&small).unwrap();
    fs::write(small.join("f.txt"), b"small\n").unwrap();

    let mut first = cairn.spawn(["backup", s(src), "--json"], &dir.join("first"));
    let pid = first.id().to_string();
    let lock_file = cairn.repo.join("index/LOCK.cairn");
    // The lock records its holder's pid once it is taken.
    poll_until(
        "the first backup to take the index lock",
        Duration::from_secs(120),
        || {
            if let Some(status) = first.try_wait().unwrap() {
                panic!("first backup ended ({status}) before it was seen holding the lock");
            }
            fs::read_to_string(&lock_file).is_ok_and(|holder| holder.trim() == pid)
        },
    );

    let second = cairn.run(["backup", s(&small), "--lock-wait", "0"]);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first backup finished while the second ran; the test proves nothing (make big_source() bigger)\n{}",
        second.describe()
    );
    second.expect_clean_error(12, "in use by another cairn process");
    assert!(
        second.stderr.contains(&format!("pid {pid}")),
        "the error names the holder\n{}",
        second.describe()
    );

    let status =
        wait_with_deadline(&mut first, Duration::from_secs(600)).expect("first backup finishes");
    let stdout = fs::read_to_string(dir.join("first/stdout")).unwrap();
    let stderr = fs::read_to_string(dir.join("first/stderr")).unwrap();
    assert!(
        status.success(),
        "first backup failed: {status}\n{stdout}\n{stderr}"
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("stats line");
    let stats: serde_json::Value = serde_json::from_str(last).expect("stats JSON");
    assert_eq!(
        cairn.snapshots().len(),
        1,
        "only the first backup wrote a snapshot"
    );
    assert_eq!(cairn.snapshots()[0]["id"], stats["snapshot_id"]);
    cairn.check_clean();
}
