//! `cairn completions SHELL` and `cairn generate man DIR`: shell completion
//! scripts and manual pages, both generated from the clap definitions so
//! they never drift from the real flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish.
    shell: Shell,
}

#[derive(clap::Subcommand, Debug)]
pub enum GenerateCommand {
    /// Write a manual page for cairn and one for each subcommand into DIR
    /// (cairn.1, cairn-backup.1, …; install them under /usr/share/man/man1).
    Man {
        /// Directory to write the pages to (created if missing).
        dir: PathBuf,
    },
}

/// Prints the completion script of `shell` for `cairn`.
pub fn completions(a: CompletionsArgs) -> Result<u8> {
    let mut command = Cli::command();
    clap_complete::generate(a.shell, &mut command, "cairn", &mut std::io::stdout());
    Ok(0)
}

pub fn run(command: GenerateCommand) -> Result<u8> {
    match command {
        GenerateCommand::Man { dir } => {
            let written = man_pages(&dir)?;
            println!("wrote {written} manual pages to {}", dir.display());
            Ok(0)
        }
    }
}

/// Writes `cairn.1` and a page per subcommand (nested ones too); returns
/// how many.
fn man_pages(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Cli::command();
    command.build();
    write_pages(dir, &command, "cairn")
}

fn write_pages(dir: &Path, command: &clap::Command, name: &str) -> Result<usize> {
    let command = command.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(written)
}
