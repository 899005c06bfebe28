//! `cairn stats`.

use anyhow::Result;
use cairn_client::retention::Filter;
use cairn_client::stats;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::browse::select_snapshots;
use super::render::print_json;

/// What `stats` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// What a restore of the snapshots would write: files and bytes.
    RestoreSize,
    /// The distinct chunks they need: plaintext and stored bytes, and the
    /// deduplication and compression ratios.
    RawData,
    /// Files with distinct contents and their bytes.
    FilesByContents,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (id, prefix or `latest`); all if none.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// What to count.
    #[arg(long, value_enum, default_value = "restore-size")]
    mode: Mode,
}

pub fn run(rt: &Runtime, g: &Globals, a: StatsArgs) -> Result<u8> {
    let (source, snapshots) = select_snapshots(rt, &g.repo, &a.snapshots, &Filter::default())?;
    let r = rt.block_on(stats::stats(&source, &snapshots))?;
    if g.json {
        print_json(&json!({
            "snapshots": r.snapshots,
            "files": r.files,
            "restore_size": r.restore_size,
            "unique_files": r.unique_files,
            "unique_files_size": r.unique_files_size,
            "chunks": r.chunks,
            "tree_chunks": r.tree_chunks,
            "raw_size": r.raw_size,
            "raw_data_size": r.raw_data_size,
            "stored_size": r.stored_size,
            "dedup_ratio": r.dedup_ratio(),
            "compression_ratio": r.compression_ratio(),
        }));
        return Ok(0);
    }
    let bytes = |n: u64| indicatif::HumanBytes(n).to_string();
    println!("snapshots:         {}", r.snapshots);
    match a.mode {
        Mode::RestoreSize => {
            println!("files:             {}", r.files);
            println!("restore size:      {}", bytes(r.restore_size));
        }
        Mode::FilesByContents => {
            println!("unique files:      {}", r.unique_files);
            println!("their size:        {}", bytes(r.unique_files_size));
        }
        Mode::RawData => {
            println!("unique chunks:     {} ({} trees)", r.chunks, r.tree_chunks);
            println!("raw size:          {}", bytes(r.raw_size));
            println!("stored size:       {}", bytes(r.stored_size));
            println!("deduplication:     {:.2}x", r.dedup_ratio());
            println!("compression:       {:.2}x", r.compression_ratio());
        }
    }
    Ok(0)
}
