//! `cairn copy`.

use std::path::PathBuf;

use anyhow::Result;
use cairn_client::copy::{self, CopyMode, CopyOptions};
use cairn_client::retention::{Filter, SnapshotMeta, TagList};
use cairn_client::source::BlobSource;
use cairn_client::treecache::TreeCache;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// The repository to copy from (a directory or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "SRC")]
    from_repo: String,
    /// Read the source repository's password from this file (or set CAIRN_FROM_PASSWORD).
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE", value_name = "FILE")]
    from_password_file: Option<PathBuf>,
    /// Snapshots of the source to copy (id, prefix or `latest`; default: every one).
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Only snapshots of this host (repeatable).
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only snapshots with all these tags (a,b; repeatable: any list).
    #[arg(long, value_name = "TAGS")]
    tag: Vec<TagList>,
    /// Report what would be copied and stored; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds each snapshot's session on the target index lasts unrenewed.
    #[arg(long, default_value_t = 900, hide = true)]
    session_lease: u32,
}

pub fn run(rt: &Runtime, g: &Globals, a: CopyArgs) -> Result<u8> {
    let password = cairn_client::context::source_password(a.from_password_file.as_deref())?;
    let from = rt.block_on(g.repo.open_other(&a.from_repo, &password))?;
    let (repo, index) = rt.block_on(g.repo.open_for_backup())?;
    let mut wanted = Vec::new();
    for r in &a.snapshots {
        wanted.push(rt.block_on(from.resolve_snapshot(r))?);
    }
    let filter = Filter {
        hosts: a.host,
        tags: a.tag,
        paths: Vec::new(),
    };
    let snapshots: Vec<_> = rt
        .block_on(from.snapshots())?
        .into_iter()
        .filter(|(id, s)| {
            (wanted.is_empty() || wanted.contains(id)) && filter.matches(&SnapshotMeta::new(*id, s))
        })
        .collect();
    // The source is read through its pack trailers: its own index (if it
    // has one here) stays free for its backups.
    let cache = TreeCache::for_repo(&from);
    let source = BlobSource::new(from, None).with_tree_cache(cache);
    let options = CopyOptions {
        dry_run: a.dry_run,
        lease_secs: a.session_lease,
        progress: g.progress,
    };
    let report = copy::run(rt.handle(), &source, snapshots, &repo, index, &options)?;
    let mode = match report.mode {
        CopyMode::Chunks => "chunk for chunk (same chunker parameters)",
        CopyMode::Rechunk => "re-chunked (different chunker parameters)",
    };
    let stored: u64 = report.copied.iter().map(|c| c.stats.bytes_stored).sum();
    let new: u64 = report.copied.iter().map(|c| c.stats.chunks_new).sum();
    if g.json {
        let copied: Vec<_> = report
            .copied
            .iter()
            .map(|c| {
                json!({
                    "source": c.source,
                    "target": if report.dry_run { serde_json::Value::Null } else { json!(c.target) },
                    "time": super::render::format_time(c.snapshot.time_ns, true),
                    "host": c.snapshot.host,
                    "paths": c.snapshot.paths,
                    "chunks_new": c.stats.chunks_new,
                    "bytes_read": c.stats.bytes_read,
                    "bytes_new": c.stats.bytes_new,
                    "bytes_stored": c.stats.bytes_stored,
                })
            })
            .collect();
        print_json(&json!({
            "dry_run": report.dry_run,
            "mode": report.mode,
            "copied": copied,
            "already_present": report.already_present,
            "chunks_new": new,
            "bytes_stored": stored,
            "seconds": report.seconds,
        }));
        return Ok(0);
    }
    let verb = if report.dry_run {
        "would copy"
    } else {
        "copied"
    };
    for c in &report.copied {
        let target = if report.dry_run {
            String::new()
        } else {
            format!(" as {}", c.target.short())
        };
        println!(
            "{verb} {}{target} ({} {}): {} new chunks, {} stored",
            c.source.short(),
            c.snapshot.host,
            super::render::format_time(c.snapshot.time_ns, false),
            c.stats.chunks_new,
            indicatif::HumanBytes(c.stats.bytes_stored),
        );
    }
    if !report.copied.is_empty() {
        println!("content {mode}");
    }
    let n = report.copied.len();
    let summary = format!(
        "{n} {} {verb}, {} already present",
        if n == 1 { "snapshot" } else { "snapshots" },
        report.already_present.len()
    );
    if report.dry_run {
        println!("dry run: {summary}; nothing was written");
    } else {
        println!(
            "{summary}; {new} new chunks, {} stored",
            indicatif::HumanBytes(stored)
        );
    }
    Ok(0)
}
