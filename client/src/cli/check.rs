//! `cairn check`.

use anyhow::Result;
use cairn_client::check;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Also read and verify every chunk.
    #[arg(long)]
    read_data: bool,
}

pub fn run(rt: &Runtime, g: &Globals, a: CheckArgs) -> Result<u8> {
    let repo = rt.block_on(g.repo.open())?;
    let index = rt.block_on(g.repo.open_index_for_reading(&repo));
    let report = rt.block_on(check::run(&repo, index, a.read_data))?;
    for p in &report.problems {
        println!("{p}");
    }
    if g.json {
        print_json(
            &json!({"snapshots": report.snapshots, "packs": report.packs, "chunks": report.chunks, "bytes_verified": report.bytes_verified, "problems": report.problems}),
        );
    }
    if !report.problems.is_empty() {
        eprintln!("error: check found problems; see above");
        return Ok(1);
    }
    if !g.json {
        println!(
            "checked {} snapshots, {} packs, {} chunks{}: no errors were found",
            report.snapshots,
            report.packs,
            report.chunks,
            if a.read_data {
                format!(" ({} read)", indicatif::HumanBytes(report.bytes_verified))
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}
