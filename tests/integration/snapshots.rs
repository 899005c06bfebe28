//! Snapshot listing, references (`latest`, prefixes) and diff.

use std::collections::BTreeSet;
use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::*;

/// Seconds since the epoch of an RFC 3339 date-time, or None if malformed.
fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn by_id<'a>(snaps: &'a [Value], id: &str) -> &'a Value {
    snaps
        .iter()
        .find(|s| s["id"].as_str() == Some(id))
        .unwrap_or_else(|| panic!("snapshot {id} not listed: {snaps:?}"))
}

#[test]
fn rfc3339_parser_accepts_and_rejects() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339("2001-09-09T01:46:40.5+00:00"),
        Some(1_000_000_000)
    );
    assert_eq!(
        parse_rfc3339("2001-09-09T03:46:40+02:00"),
        Some(1_000_000_000)
    );
    assert_eq!(parse_rfc3339("2001-09-09 01:46:40"), None);
    assert_eq!(parse_rfc3339("yesterday"), None);
}

#[test]
fn snapshots_json_latest_and_prefixes() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    write_files(&src, &[("a.txt", "a\n")]);
    let start = now();

    let s1 = cairn
        .backup(
            &[&src],
            &["--host", "test-host", "--tag", "t1", "--tag", "t2"],
        )
        .snapshot_id();
    fs::write(src.join("b.txt"), b"b\n").unwrap();
    let s2 = cairn
        .backup(&[&src], &["--host", "test-host"])
        .snapshot_id();
    // A different host has no parent among the others.
    let s3 = cairn
        .backup(&[&src], &["--host", "other-host"])
        .snapshot_id();

    let snaps = cairn.snapshots();
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    for (id, snap) in [
        (&s1, by_id(&snaps, &s1)),
        (&s2, by_id(&snaps, &s2)),
        (&s3, by_id(&snaps, &s3)),
    ] {
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "id {id:?}"
        );
        let short = snap["short_id"].as_str().expect("short_id");
        assert!(
            !short.is_empty() && short.len() < 64 && id.starts_with(short),
            "short_id {short:?} of {id}"
        );
        let time = snap["time"].as_str().expect("time");
        let t = parse_rfc3339(time).unwrap_or_else(|| panic!("time {time:?} is not RFC 3339"));
        assert!(
            t >= start - 2 && t <= now() + 2,
            "time {time} is not the backup time"
        );
        assert!(snap["user"].is_string(), "user: {snap}");
        assert_eq!(snap["paths"], serde_json::json!([s(&src)]), "{snap}");
    }
    let (j1, j2, j3) = (by_id(&snaps, &s1), by_id(&snaps, &s2), by_id(&snaps, &s3));
    assert_eq!(j1["host"], "test-host");
    assert_eq!(j3["host"], "other-host");
    let tags: BTreeSet<&str> = j1["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tags, BTreeSet::from(["t1", "t2"]));
    assert_eq!(j2["tags"], serde_json::json!([]));
    assert_eq!(j1["parent"], Value::Null);
    assert_eq!(
        j2["parent"].as_str(),
        Some(s1.as_str()),
        "parent = latest with the same host and paths"
    );
    assert_eq!(
        j3["parent"],
        Value::Null,
        "no earlier snapshot of other-host"
    );

    // latest is the newest; prefixes resolve.
    let b = s(&src.join("b.txt")).to_string();
    assert!(cairn.ls("latest").contains(&b));
    assert_eq!(cairn.ls("latest"), cairn.ls(&s3));
    assert!(
        !cairn.ls(&s1[..10]).contains(&b),
        "prefix of s1 resolved to another snapshot"
    );
    let short1 = j1["short_id"].as_str().unwrap();
    assert_eq!(cairn.ls(short1), cairn.ls(&s1));
    let out = cairn.run(["dump", &s1[..12], s(&src.join("a.txt"))]);
    out.expect_success();
    assert_eq!(out.stdout, b"a\n");
}

#[test]
fn ambiguous_and_unknown_references_are_errors() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    write_files(&src, &[("x.txt", "x\n")]);

    // Back up until two ids share their first hex digit (at most 17 times).
    let mut ids: Vec<String> = Vec::new();
    let shared = loop {
        let id = cairn
            .backup(&[&src], &["--tag", &format!("n{}", ids.len())])
            .snapshot_id();
        if let Some(other) = ids.iter().find(|o| o[..1] == id[..1]) {
            break other[..1].to_string();
        }
        ids.push(id);
        assert!(ids.len() <= 16, "17 ids with distinct first digits");
    };
    let out = cairn.run(["ls", &shared]);
    out.expect_clean_error(1, "ambiguous");

    // A well-formed id that is not in the repository.
    let mut unknown = ids[0].clone();
    let last = if unknown.ends_with('0') { "1" } else { "0" };
    unknown.replace_range(63.., last);
    let out = cairn.run(["ls", &unknown]);
    out.expect_clean_error(1, &unknown);
    let out = cairn.run(["restore", &unknown, "--target", s(&dir.join("t"))]);
    out.expect_code(1);
    assert!(
        !dir.join("t").exists() || walk(&dir.join("t")).len() == 1,
        "restore of an unknown snapshot wrote files"
    );

    let out = cairn.run(["ls", "not-hex"]);
    assert!(out.code == 1 || out.code == 2, "{}", out.describe());
    assert!(
        out.stderr.trim_start().starts_with("error: "),
        "{}",
        out.describe()
    );
}

#[test]
fn diff_shows_added_removed_modified() {
    let (_tmp, dir, cairn) = new_repo();
    let src = dir.join("src");
    write_files(
        &src,
        &[
            ("keep.txt", "unchanged\n"),
            ("remove.txt", "going away\n"),
            ("sub/modify.txt", "before\n"),
        ],
    );
    let s1 = cairn.backup(&[&src], &[]).snapshot_id();

    fs::remove_file(src.join("remove.txt")).unwrap();
    fs::write(src.join("add.txt"), b"new\n").unwrap();
    fs::write(src.join("sub/modify.txt"), b"after, and longer\n").unwrap();
    let s2 = cairn.backup(&[&src], &[]).snapshot_id();

    let out = cairn.run(["diff", &s1, &s2]);
    out.expect_success();
    let lines = out.lines();
    for want in [
        format!("+    {}", s(&src.join("add.txt"))),
        format!("-    {}", s(&src.join("remove.txt"))),
        format!("M    {}", s(&src.join("sub/modify.txt"))),
    ] {
        assert!(
            lines.contains(&want),
            "diff lacks {want:?}\n{}",
            out.describe()
        );
    }
    assert!(
        !lines.iter().any(|l| l.ends_with("keep.txt")),
        "diff lists the unchanged file\n{}",
        out.describe()
    );
    // Reversed, additions and removals swap.
    let out = cairn.run(["diff", &s2, &s1]);
    out.expect_success();
    assert!(
        out.lines()
            .contains(&format!("-    {}", s(&src.join("add.txt")))),
        "{}",
        out.describe()
    );
    assert!(
        out.lines()
            .contains(&format!("+    {}", s(&src.join("remove.txt")))),
        "{}",
        out.describe()
    );
}
