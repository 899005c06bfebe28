//! `cairn find`.

use anyhow::Result;
use cairn_client::find::{self, FindQuery};
use cairn_client::retention::{Filter, TagList, local_time};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::browse::select_snapshots;
use super::render::{format_time, kind_name, print_json};

#[derive(clap::Args, Debug)]
pub struct FindArgs {
    /// Globs on file names (`*.conf`, `report-202?.pdf`); with --path, on absolute paths.
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Match the patterns against whole paths (`/home/*/notes/**`).
    #[arg(long)]
    path: bool,
    /// Only in these snapshots (id, prefix or `latest`; repeatable).
    #[arg(long, value_name = "SNAPSHOT")]
    snapshot: Vec<String>,
    /// Only in snapshots of this host (repeatable).
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only in snapshots with all these tags (a,b; repeatable: any list).
    #[arg(long, value_name = "TAGS")]
    tag: Vec<TagList>,
    /// Only entries modified at or after T (2024-06-01, 2024-06-01 14:00, or RFC 3339).
    #[arg(long, value_name = "T", value_parser = super::parse_time)]
    oldest: Option<Timestamp>,
    /// Only entries modified at or before T.
    #[arg(long, value_name = "T", value_parser = super::parse_time)]
    newest: Option<Timestamp>,
}

pub fn run(rt: &Runtime, g: &Globals, a: FindArgs) -> Result<u8> {
    let filter = Filter {
        hosts: a.host,
        tags: a.tag,
        paths: Vec::new(),
    };
    let (source, snapshots) = select_snapshots(rt, &g.repo, &a.snapshot, &filter)?;
    // Nanoseconds, clamped to what a tree can record.
    let ns = |t: Option<Timestamp>| {
        t.map(|t| {
            i64::try_from(t.as_nanosecond()).unwrap_or(if t.as_second() < 0 {
                i64::MIN
            } else {
                i64::MAX
            })
        })
    };
    let report = rt.block_on(find::find(
        &source,
        &snapshots,
        &FindQuery {
            patterns: a.patterns,
            match_path: a.path,
            oldest_ns: ns(a.oldest),
            newest_ns: ns(a.newest),
        },
    ))?;
    if g.json {
        let found: Vec<_> = report
            .found
            .iter()
            .map(|f| {
                json!({
                    "snapshot": f.snapshot,
                    "short_id": f.snapshot.short(),
                    "path": f.path,
                    "type": kind_name(f.node.node_kind()),
                    "size": f.node.size,
                    "mtime": format_time(f.node.mtime_ns, true),
                })
            })
            .collect();
        print_json(&json!({
            "found": found,
            "snapshots": report.snapshots,
            "trees_read": report.trees_read,
        }));
        return Ok(0);
    }
    let tz = TimeZone::system();
    for f in &report.found {
        let mtime = Timestamp::from_nanosecond(i128::from(f.node.mtime_ns))
            .map(|t| local_time(t, &tz))
            .unwrap_or_default();
        println!(
            "{}  {}  {:>10}  {}",
            f.snapshot.short(),
            mtime,
            indicatif::HumanBytes(f.node.size).to_string(),
            f.path.display()
        );
    }
    println!(
        "{} match(es) in {} snapshot(s)",
        report.found.len(),
        report.snapshots
    );
    Ok(0)
}
