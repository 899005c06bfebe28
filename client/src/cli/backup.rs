//! `cairn backup`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use cairn_client::backup::stream::{StreamFile, StreamSource};
use cairn_client::backup::{self, BackupOptions, early::EarlyListing, excludes::Excludes};
use cairn_client::context::{hostname, username};
use serde_json::json;
use tokio::runtime::Runtime;

use super::render::{entries, print_json};
use super::{EXIT_PARTIAL, Globals};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required_unless_present_any = ["stdin", "stdin_from_command"])]
    paths: Vec<PathBuf>,
    /// Back up standard input as one file (named by --stdin-filename).
    #[arg(long, conflicts_with_all = ["paths", "stdin_from_command"])]
    stdin: bool,
    /// The file name standard input (or the command's output) gets in the snapshot.
    #[arg(long, value_name = "NAME", default_value = "stdin")]
    stdin_filename: String,
    /// Back up the standard output of the command given after `--`
    /// (e.g. `-- pg_dump mydb`); the backup fails if it exits non-zero.
    #[arg(long, requires = "command", conflicts_with = "paths")]
    stdin_from_command: bool,
    /// The command of --stdin-from-command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
    /// Leave out entries matching GLOB (a name, or an absolute path if it contains `/`).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Leave out directories that contain a file with this name.
    #[arg(long, value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Do not cross filesystem boundaries.
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Tag the snapshot.
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// The time to record for the snapshot instead of now (2024-06-01 14:00, or RFC 3339).
    #[arg(long, value_name = "T", value_parser = super::parse_time)]
    time: Option<jiff::Timestamp>,
    /// Read and chunk everything and report what would be uploaded; write nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Lease of the backup's session in seconds (renewed every third of it;
    /// a backup that cannot renew it in time stops without a snapshot).
    #[arg(long, env = "CAIRN_SESSION_LEASE", default_value_t = cairn_index::DEFAULT_LEASE_SECS, value_name = "SECS")]
    session_lease: u32,
}

pub fn run(rt: &Runtime, g: &Globals, a: BackupArgs) -> Result<u8> {
    if !a.command.is_empty() && !a.stdin_from_command {
        anyhow::bail!("a command after `--` needs --stdin-from-command");
    }
    let stream = if a.stdin {
        Some(StreamSource::Stdin)
    } else if a.stdin_from_command {
        Some(StreamSource::Command(a.command))
    } else {
        None
    }
    .map(|source| StreamFile {
        name: a.stdin_filename,
        source,
    });
    let excludes = Excludes::new(
        &a.exclude,
        &a.exclude_file,
        &a.exclude_if_present,
        a.one_file_system,
    )?;
    // The sources are read while the key is derived (`backup::early`).
    let early_listing = stream
        .is_none()
        .then(|| Arc::new(EarlyListing::start(&a.paths, &excludes)));
    let opening = std::time::Instant::now();
    let (repo, index) = rt.block_on(g.repo.open_for_backup())?;
    tracing::debug!(
        ms = opening.elapsed().as_millis() as u64,
        "backup: repository and index open"
    );
    let options = BackupOptions {
        paths: a.paths,
        excludes,
        tags: a.tag,
        host: a.host.unwrap_or_else(hostname),
        time_ns: a
            .time
            .map(|t| i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)),
        user: username(),
        progress: g.progress,
        cancel: Some(cancel_on_signal(rt)),
        lease_secs: a.session_lease,
        stream,
        dry_run: a.dry_run,
        early_listing,
    };
    let report = backup::run(rt.handle(), &repo, index, options)?;
    let s = &report.stats;
    if g.json {
        let mut v = json!({
            "snapshot_id": report.snapshot_id,
            "parent": report.parent,
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs": s.dirs,
            "chunks_new": s.chunks_new,
            "chunks_reused": s.chunks_reused,
            "data_chunks_new": report.data_chunks_new,
            "tree_chunks_new": report.tree_chunks_new,
            "bytes_read": s.bytes_read,
            "bytes_new": s.bytes_new,
            "bytes_stored": s.bytes_stored,
            "bytes_total": s.bytes_total,
            "errors": s.errors,
            "seconds": report.seconds,
        });
        if report.dry_run {
            v["dry_run"] = json!(true);
            v["snapshot_id"] = serde_json::Value::Null;
        }
        print_json(&v);
    } else if report.dry_run {
        println!(
            "dry run: files: {} new, {} changed, {} unmodified; {} dirs",
            s.files_new, s.files_changed, s.files_unmodified, s.dirs
        );
        println!(
            "dry run: would read {}, upload {} new chunks ({}, {} stored); nothing was written",
            indicatif::HumanBytes(s.bytes_read),
            s.chunks_new,
            indicatif::HumanBytes(s.bytes_new),
            indicatif::HumanBytes(s.bytes_stored),
        );
    } else {
        println!(
            "files: {} new, {} changed, {} unmodified; {} dirs",
            s.files_new, s.files_changed, s.files_unmodified, s.dirs
        );
        println!(
            "chunks: {} new, {} reused; read {}, new {}, stored {} in {:.1}s",
            s.chunks_new,
            s.chunks_reused,
            indicatif::HumanBytes(s.bytes_read),
            indicatif::HumanBytes(s.bytes_new),
            indicatif::HumanBytes(s.bytes_stored),
            report.seconds
        );
        println!("snapshot {} saved", report.snapshot_id.short());
    }
    if s.errors > 0 {
        eprintln!(
            "warning: {} source {} could not be read; the snapshot is incomplete",
            s.errors,
            entries(s.errors as usize)
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

/// A flag raised by SIGINT or SIGTERM, so a backup stops cleanly: packs
/// already filled are stored and registered, no snapshot is written.
fn cancel_on_signal(rt: &Runtime) -> Arc<AtomicBool> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("stopping: finishing the packs in flight");
        raised.store(true, Ordering::Relaxed);
    });
    flag
}
