//! Formatting shared by the commands' text and JSON output.

use cairn_chunk_store::SnapshotId;
use cairn_chunk_store::manifest::Snapshot;
use serde_json::json;

/// Prints one JSON value as one line.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A snapshot as `snapshots --json` lists it.
pub fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    json!({
        "id": id,
        "short_id": id.short(),
        "time": format_time(s.time_ns, true),
        "host": s.host,
        "user": s.user,
        "paths": s.paths,
        "tags": s.tags,
        "parent": s.parent_id(),
        "original": s.original_id(),
        "stats": s.stats,
    })
}

/// RFC 3339 in UTC: to the nanosecond when `precise`, else to the second.
pub fn format_time(ns: i64, precise: bool) -> String {
    let t = if ns >= 0 {
        jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    } else {
        jiff::Timestamp::UNIX_EPOCH
    };
    // Nine fractional digits always, or none: what scripts have parsed
    // since the first release.
    let format = if precise {
        "%Y-%m-%dT%H:%M:%S.%NZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    t.strftime(format).to_string()
}

/// The `type` of a tree entry in JSON output.
pub fn kind_name(kind: Option<cairn_chunk_store::tree::NodeKind>) -> &'static str {
    use cairn_chunk_store::tree::NodeKind;
    match kind {
        Some(NodeKind::Dir) => "dir",
        Some(NodeKind::File) => "file",
        Some(NodeKind::Symlink) => "symlink",
        _ => "other",
    }
}

/// `entry` or `entries`.
pub fn entries(n: usize) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_nine_digits_or_none() {
        let ns = 1_700_000_000_123_456_789;
        assert_eq!(format_time(ns, true), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(format_time(ns, false), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(0, true), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_time(-5, false), "1970-01-01T00:00:00Z");
    }
}
