//! `cairn restore`.

use std::path::PathBuf;

use anyhow::Result;
use cairn_client::restore::{self, RestoreOptions};
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::browse::open_snapshot;
use super::render::{entries, print_json};

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest`.
    snapshot: String,
    /// Directory to restore into (snapshot paths are recreated below it).
    #[arg(long, short = 't')]
    target: PathBuf,
    /// Restore only this path (repeatable).
    #[arg(long, short = 'i')]
    include: Vec<PathBuf>,
}

pub fn run(rt: &Runtime, g: &Globals, a: RestoreArgs) -> Result<u8> {
    let (source, id, snap) = open_snapshot(rt, &g.repo, &a.snapshot)?;
    let root = snap.root_tree()?;
    let report = restore::run(
        rt.handle(),
        &source,
        &root,
        &RestoreOptions {
            target: a.target.clone(),
            includes: a.include,
            progress: g.progress,
        },
    )?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for (path, reason) in &report.failed {
        eprintln!("error: cannot restore {}: {reason}", path.display());
    }
    if g.json {
        print_json(
            &json!({"snapshot_id": id, "files": report.files, "dirs": report.dirs, "bytes": report.bytes, "failed": report.failed.len()}),
        );
    } else {
        println!(
            "restored {} files, {} dirs, {} from snapshot {} to {}",
            report.files,
            report.dirs,
            indicatif::HumanBytes(report.bytes),
            id.short(),
            a.target.display()
        );
    }
    if !report.failed.is_empty() {
        eprintln!(
            "error: {} {} could not be restored",
            report.failed.len(),
            entries(report.failed.len())
        );
        return Ok(1);
    }
    Ok(0)
}
