//! The `cairn` command: the only code of the client that prints, reads the
//! terminal or picks an exit code.
//!
//! One module per command, each a thin adapter from its clap arguments to an
//! engine of the library and a renderer of the engine's report (text, or
//! one JSON value with `--json`). Shared pieces: [`render`] (times, JSON
//! shapes) and [`log`] (how engine events reach stderr).

mod agent;
mod backup;
mod browse;
mod check;
mod copy;
mod find;
mod forget;
mod generate;
mod index;
mod init;
mod key;
pub mod log;
mod mount;
mod prune;
pub mod render;
mod restore;
mod schedule;
mod stats;
mod tag;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cairn_client::context::{RepoArgs, S3Settings};
use clap::{Parser, Subcommand};
use tokio::runtime::Runtime;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    failure (nothing was written, or the command could not complete)
  2    invalid command line
  3    backup: the snapshot was written, but some source files could not be read
  10   the repository does not exist
  11   wrong password
  12   the repository's index is in use by another cairn process
  130  interrupted (SIGINT or SIGTERM)";

/// Exit code for a snapshot written with unreadable source files.
const EXIT_PARTIAL: u8 = 3;

/// The exit code of a command that failed with `e`: the documented codes
/// for the failures scripts act on (restic's where it has one), else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    use cairn_chunk_store::RepoError;
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            match r {
                RepoError::NotFound { .. } => return 10,
                RepoError::WrongPassword { .. } => return 11,
                _ => {}
            }
        }
        if let Some(cairn_index::IndexError::Locked { .. }) = cause.downcast_ref() {
            return 12;
        }
        if cause.is::<cairn_client::backup::Interrupted>() {
            return 130;
        }
    }
    1
}

/// Deduplicating, encrypted backups.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Repository location (default: $XDG_DATA_HOME/cairn/repo or ~/.local/share/cairn/repo).
    #[arg(long, short = 'r', env = "CAIRN_REPO", global = true)]
    repo: Option<String>,
    /// Read the password from this file (or set CAIRN_PASSWORD).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for another cairn process that holds the repository index.
    #[arg(long, env = "CAIRN_LOCK_WAIT", default_value_t = 0, global = true)]
    lock_wait: u64,
    /// No progress output.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Index cluster (comma-separated gRPC URLs) instead of the embedded index.
    #[arg(long, env = "CAIRN_INDEX", global = true)]
    index: Option<String>,
    #[command(flatten)]
    s3: S3Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository.
    Init(init::InitArgs),
    /// Back up files and directories.
    Backup(backup::BackupArgs),
    /// List snapshots.
    Snapshots,
    /// List the files in a snapshot.
    Ls(browse::LsArgs),
    /// Restore a snapshot.
    Restore(restore::RestoreArgs),
    /// Write one file of a snapshot to standard output.
    Dump(browse::DumpArgs),
    /// Show what changed between two snapshots.
    Diff(browse::DiffArgs),
    /// Find files by name or path in every snapshot (reads trees only).
    Find(find::FindArgs),
    /// Sizes of the snapshots, and what deduplication and compression save.
    Stats(stats::StatsArgs),
    /// Add, remove or set the tags of snapshots.
    Tag(tag::TagArgs),
    /// Verify the repository.
    Check(check::CheckArgs),
    /// Copy snapshots from another repository into this one (an off-site copy).
    Copy(copy::CopyArgs),
    /// Browse the snapshots as a read-only file system (FUSE) until Ctrl-C.
    Mount(mount::MountArgs),
    /// Manage the index.
    Index {
        #[command(subcommand)]
        command: index::IndexCommand,
    },
    /// Manage passwords.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Remove snapshots by a keep policy (or by id); `prune` reclaims their data.
    Forget(forget::ForgetArgs),
    /// Reclaim the space of data that no snapshot needs (safe beside running backups).
    Prune(prune::PruneArgs),
    /// Run the backup jobs of a config file on their schedules (foreground service).
    Agent(agent::AgentArgs),
    /// Install, remove or inspect systemd timers for the config file's jobs.
    Schedule(schedule::ScheduleArgs),
    /// Print the shell completion script (e.g. `source <(cairn completions bash)`).
    Completions(generate::CompletionsArgs),
    /// Generate files from the command-line definitions (manual pages).
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
}

/// What every command gets besides its own arguments.
struct Globals {
    repo: RepoArgs,
    json: bool,
    /// Progress bars on a terminal (not with `--quiet` or `--json`).
    progress: bool,
    agent_log: log::AgentFormat,
}

/// Runs `cairn` and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent_log = log::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match run(cli, &rt, agent_log) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `e` and its causes on one line, `outer: inner: …`, leaving out a cause
/// whose text the line already ends with (an error that shows its source
/// in its own message, as I/O errors naming their file do).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// A closed stdout (`cairn ls | head`) is not an error worth reporting.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli, rt: &Runtime, agent_log: log::AgentFormat) -> Result<u8> {
    let g = Globals {
        repo: RepoArgs {
            repo: cli.repo,
            password_file: cli.password_file,
            lock_wait: cli.lock_wait,
            index: cli.index,
            index_token: RepoArgs::index_token_from_env(),
            s3: cli.s3,
        },
        json: cli.json,
        progress: cairn_client::progress::wanted(cli.quiet, cli.json),
        agent_log,
    };
    match cli.command {
        Command::Init(a) => init::run(rt, &g, a),
        Command::Backup(a) => backup::run(rt, &g, a),
        Command::Snapshots => browse::snapshots(rt, &g),
        Command::Ls(a) => browse::ls(rt, &g, a),
        Command::Restore(a) => restore::run(rt, &g, a),
        Command::Dump(a) => browse::dump(rt, &g, a),
        Command::Diff(a) => browse::diff(rt, &g, a),
        Command::Find(a) => find::run(rt, &g, a),
        Command::Stats(a) => stats::run(rt, &g, a),
        Command::Tag(a) => tag::run(rt, &g, a),
        Command::Check(a) => check::run(rt, &g, a),
        Command::Mount(a) => mount::run(rt, &g, a),
        Command::Copy(a) => copy::run(rt, &g, a),
        Command::Index { command } => index::run(rt, &g, command),
        Command::Key { command } => key::run(rt, &g, command),
        Command::Forget(a) => forget::run(rt, &g, a),
        Command::Prune(a) => prune::run(rt, &g, &a),
        Command::Agent(a) => agent::run(rt, &g, a),
        Command::Schedule(a) => schedule::run(rt, &g, a),
        Command::Completions(a) => generate::completions(a),
        Command::Generate { command } => generate::run(command),
    }
}

/// A point in time as people write it: RFC 3339, or a local date and time.
pub(crate) fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let local = s.parse::<jiff::civil::DateTime>().or_else(|_| {
        s.parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    local
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::system()))
        .map(|z| z.timestamp())
        .map_err(|_| {
            format!(
                "invalid time {s:?} (e.g. 2024-06-01, \"2024-06-01 14:00\", 2024-06-01T14:00:00Z)"
            )
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, error_line};

    /// A cause that an error already shows in its own text is said once.
    #[test]
    fn the_error_line_says_each_cause_once() {
        let store = cairn_chunk_store::store::StoreError::Io {
            location: "/backup".into(),
            key: "packs/3b/3b4a".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let e = anyhow::Error::new(store).context("writing pack 3b4a");
        assert_eq!(
            error_line(&e),
            "writing pack 3b4a: /backup/packs/3b/3b4a: No space left on device (os error 28)"
        );
        let e = anyhow::anyhow!("connection refused").context("index node 2");
        assert_eq!(error_line(&e), "index node 2: connection refused");
    }

    /// Every command, subcommand and option says what it does in `--help`
    /// (and so in the manual pages, which are made from the same text).
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "cairn", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
