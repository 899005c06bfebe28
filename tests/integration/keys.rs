//! Passwords: add, list, remove, change; the data stays readable throughout.

use std::fs;

use crate::common::*;

const FIRST: &str = "first password";
const SECOND: &str = "second password";
const THIRD: &str = "third password";

fn key_count(cairn: &Cairn) -> usize {
    let out = cairn.run(["key", "list", "--json"]);
    out.expect_success();
    out.json()
        .as_array()
        .unwrap_or_else(|| panic!("key list --json is not an array\n{}", out.describe()))
        .len()
}

#[test]
fn add_remove_and_change_passwords() {
    let (_tmp, dir) = tempdir();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("data.bin"), 600_000, 9);
    let first = Cairn::new(dir.join("repo")).with_password(FIRST);
    first.init();
    first.backup(&[&src], &[]);
    let first_id = key_files(&first.repo);
    assert_eq!(first_id.len(), 1, "{first_id:?}");
    let first_id = first_id[0].clone();

    // key add, new password from CAIRN_NEW_PASSWORD.
    first
        .with_env("CAIRN_NEW_PASSWORD", SECOND)
        .run(["key", "add"])
        .expect_success();
    assert_eq!(key_files(&first.repo).len(), 2);
    let second = first.with_password(SECOND);
    second.run(["snapshots"]).expect_success();
    assert_eq!(key_count(&second), 2);
    assert_eq!(key_count(&first), 2);

    // Remove the first key while opened with the second.
    second.run(["key", "remove", &first_id]).expect_success();
    assert_eq!(key_files(&first.repo).len(), 1);
    first
        .run(["snapshots"])
        .expect_clean_error(11, "wrong password");
    assert_eq!(key_count(&second), 1);

    // The key that opened the repository (here the last one) is not removed.
    let second_id = key_files(&first.repo)[0].clone();
    second
        .run(["key", "remove", &second_id])
        .expect_clean_error(1, "");
    assert_eq!(key_files(&first.repo), vec![second_id]);

    // key passwd, new password from --new-password-file.
    let pw_file = dir.join("new-pw");
    fs::write(&pw_file, format!("{THIRD}\n")).unwrap();
    second
        .run(["key", "passwd", "--new-password-file", s(&pw_file)])
        .expect_success();
    second
        .run(["snapshots"])
        .expect_clean_error(11, "wrong password");
    let third = first.with_password(THIRD);
    assert_eq!(key_count(&third), 1);

    // The same master key: the old snapshot restores with the new password.
    let target = dir.join("target");
    third.restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), Compare::ALL);
}
