//! `cairn index`.

use anyhow::Result;
use cairn_client::rebuild;
use tokio::runtime::Runtime;

use super::Globals;

#[derive(clap::Subcommand, Debug)]
pub enum IndexCommand {
    /// Rebuild the index from the pack trailers in the store.
    Rebuild,
}

pub fn run(rt: &Runtime, g: &Globals, command: IndexCommand) -> Result<u8> {
    match command {
        IndexCommand::Rebuild => {
            let repo = rt.block_on(g.repo.open())?;
            let index = rt.block_on(g.repo.open_index(&repo, "prune", "index rebuild"))?;
            let report = rt.block_on(rebuild::run(&repo, index))?;
            for (pack, reason) in &report.bad_packs {
                eprintln!("warning: pack {pack} skipped: {reason}");
            }
            println!(
                "rebuilt index: {} chunks in {} packs",
                report.chunks, report.packs
            );
            Ok(0)
        }
    }
}
