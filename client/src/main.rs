//! `cairn`: the command-line client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cairn_chunk_store::crypto::Cipher;
use cairn_chunk_store::fingerprint::HashAlgo;
use cairn_chunk_store::manifest::Snapshot;
use cairn_chunk_store::repository::InitOptions;
use cairn_chunk_store::{KeyId, Repository, SnapshotId};
use cairn_client::backup::{self, BackupOptions, excludes::Excludes};
use cairn_client::browse::{self, Change};
use cairn_client::context::{
    RepoArgs, S3Addressing, S3Settings, hostname, kdf_params, new_password, username,
};
use cairn_client::restore::{self, RestoreOptions};
use cairn_client::source::BlobSource;
use cairn_client::{check, progress, rebuild};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::runtime::Runtime;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (nothing was written, or the command could not complete)
  2  invalid command line
  3  backup: the snapshot was written, but some source files could not be read";

/// Exit code for a snapshot written with unreadable source files.
const EXIT_PARTIAL: u8 = 3;

/// Deduplicating, encrypted backups.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, after_help = EXIT_CODES)]
struct Cli {
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
    /// S3 endpoint URL of a self-hosted server (MinIO, Garage, Ceph…); AWS S3 if unset.
    #[arg(long, env = "CAIRN_S3_ENDPOINT", global = true, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region (default: the AWS chain, e.g. AWS_REGION, else us-east-1).
    #[arg(long, env = "CAIRN_S3_REGION", global = true)]
    s3_region: Option<String>,
    /// S3 addressing: auto is path style with --s3-endpoint, virtual-hosted on AWS.
    #[arg(
        long,
        env = "CAIRN_S3_ADDRESSING",
        global = true,
        default_value = "auto"
    )]
    s3_addressing: S3Addressing,
    /// S3 requests in flight at most.
    #[arg(
        long,
        env = "CAIRN_S3_CONNECTIONS",
        global = true,
        default_value_t = 16
    )]
    s3_connections: usize,
    /// Seconds one S3 request attempt may take.
    #[arg(long, env = "CAIRN_S3_TIMEOUT", global = true, default_value_t = 60)]
    s3_timeout: u64,
    /// Seconds one S3 call may take, retries included; then the command fails.
    #[arg(long, env = "CAIRN_S3_DEADLINE", global = true, default_value_t = 300)]
    s3_deadline: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository.
    Init {
        /// Fingerprint algorithm: blake3 (keyed BLAKE3) or sha256 (HMAC-SHA256).
        #[arg(long, default_value = "blake3")]
        hash: HashAlgo,
        /// Cipher of the repository's objects: aes-256-gcm (fastest wherever
        /// the processor has AES instructions) or xchacha20-poly1305 (for
        /// processors without them, and also readable by clients that know only config version 1).
        #[arg(long, default_value = "aes-256-gcm")]
        cipher: Cipher,
    },
    /// Back up files and directories.
    Backup {
        /// Files and directories to back up.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
        /// Lease of the backup's session in seconds (renewed every third of it;
        /// a backup that cannot renew it in time stops without a snapshot).
        #[arg(long, env = "CAIRN_SESSION_LEASE", default_value_t = cairn_index::DEFAULT_LEASE_SECS, value_name = "SECS")]
        session_lease: u32,
    },
    /// List snapshots.
    Snapshots,
    /// List the files in a snapshot.
    Ls {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Only below this path.
        path: Option<PathBuf>,
    },
    /// Restore a snapshot.
    Restore {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Directory to restore into (snapshot paths are recreated below it).
        #[arg(long, short = 't')]
        target: PathBuf,
        /// Restore only this path (repeatable).
        #[arg(long, short = 'i')]
        include: Vec<PathBuf>,
    },
    /// Write one file of a snapshot to standard output.
    Dump {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Absolute path of the file in the snapshot.
        path: PathBuf,
    },
    /// Show what changed between two snapshots.
    Diff {
        /// Older snapshot.
        first: String,
        /// Newer snapshot.
        second: String,
    },
    /// Verify the repository.
    Check {
        /// Also read and verify every chunk.
        #[arg(long)]
        read_data: bool,
    },
    /// Manage the index.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Manage passwords.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Remove snapshots by a keep policy (or by id); `prune` reclaims their data.
    Forget(cairn_client::retention::ForgetArgs),
    /// Reclaim the space of data that no snapshot needs (safe beside running backups).
    Prune(cairn_client::prune::PruneArgs),
    /// Run the backup jobs of a config file on their schedules (foreground service).
    Agent(cairn_client::agent::AgentArgs),
    /// Install, remove or inspect systemd timers for the config file's jobs.
    Schedule(cairn_client::schedule::ScheduleArgs),
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Rebuild the index from the pack trailers in the store.
    Rebuild,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// List key files.
    List,
    /// Add a password.
    Add {
        /// Read the new password from this file (or set CAIRN_NEW_PASSWORD).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key file.
    Remove {
        /// Key id (from `key list`).
        id: String,
    },
    /// Change the password of the key in use.
    Passwd {
        /// Read the new password from this file (or set CAIRN_NEW_PASSWORD).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
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
    match run(cli, &rt) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A closed stdout (`cairn ls | head`) is not an error worth reporting.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli, rt: &Runtime) -> Result<u8> {
    let args = RepoArgs {
        repo: cli.repo.clone(),
        password_file: cli.password_file.clone(),
        lock_wait: cli.lock_wait,
        index: cli.index.clone(),
        index_token: std::env::var("CAIRN_INDEX_TOKEN").ok(),
        s3: S3Settings {
            endpoint: cli.s3_endpoint.clone(),
            region: cli.s3_region.clone(),
            addressing: cli.s3_addressing,
            connections: cli.s3_connections,
            attempt_timeout: Duration::from_secs(cli.s3_timeout),
            deadline: Duration::from_secs(cli.s3_deadline),
        },
    };
    let show_progress = progress::wanted(cli.quiet, cli.json);
    match cli.command {
        Command::Init { hash, cipher } => {
            let store = rt.block_on(args.store())?;
            if rt.block_on(store.exists("config"))? {
                bail!("a repository already exists at {}", store.location());
            }
            let password = args.password(true)?;
            let repo = rt.block_on(Repository::init(
                store,
                password.as_bytes(),
                InitOptions {
                    hash,
                    cipher,
                    kdf: kdf_params(),
                    host: hostname(),
                    user: username(),
                },
            ))?;
            if cli.json {
                println!(
                    "{}",
                    json!({"repo_id": repo.config().repo_id, "location": repo.location(), "cipher": repo.config().cipher.name()})
                );
            } else {
                println!(
                    "created repository {} at {}",
                    repo.config().repo_id.short(),
                    repo.location()
                );
            }
            Ok(0)
        }
        Command::Backup {
            paths,
            exclude,
            exclude_file,
            exclude_if_present,
            one_file_system,
            tag,
            host,
            session_lease,
        } => {
            let (repo, index) = rt.block_on(args.open_for_backup())?;
            let options = BackupOptions {
                paths,
                excludes: Excludes::new(
                    &exclude,
                    &exclude_file,
                    &exclude_if_present,
                    one_file_system,
                )?,
                tags: tag,
                host: host.unwrap_or_else(hostname),
                user: username(),
                progress: show_progress,
                cancel: Some(cancel_on_signal(rt)),
                lease_secs: session_lease,
            };
            let report = backup::run(rt.handle(), &repo, index, options)?;
            let s = &report.stats;
            if cli.json {
                println!(
                    "{}",
                    json!({
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
                    })
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
                    "warning: {} source entr{} could not be read; the snapshot is incomplete",
                    s.errors,
                    if s.errors == 1 { "y" } else { "ies" }
                );
                return Ok(EXIT_PARTIAL);
            }
            Ok(0)
        }
        Command::Snapshots => {
            let repo = rt.block_on(args.open())?;
            let snaps = rt.block_on(repo.snapshots())?;
            if cli.json {
                let list: Vec<_> = snaps.iter().map(|(id, s)| snapshot_json(id, s)).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<10} {:<20} {:<16} {:<16} paths",
                    "id", "time", "host", "tags"
                );
                for (id, s) in &snaps {
                    println!(
                        "{:<10} {:<20} {:<16} {:<16} {}",
                        id.short(),
                        format_time(s.time_ns, false),
                        s.host,
                        s.tags.join(","),
                        s.paths.join(" ")
                    );
                }
                println!("{} snapshot(s)", snaps.len());
            }
            Ok(0)
        }
        Command::Ls { snapshot, path } => {
            let (source, _, snap) = open_snapshot(rt, &args, &snapshot)?;
            let root = snap.root_tree()?;
            let start = path.unwrap_or_else(|| PathBuf::from("/"));
            let json = cli.json;
            let mut out = std::io::stdout().lock();
            rt.block_on(browse::walk(&source, &root, &start, &mut |e| {
                use std::io::Write;
                if json {
                    let kind = match e.node.node_kind() {
                        Some(cairn_chunk_store::tree::NodeKind::Dir) => "dir",
                        Some(cairn_chunk_store::tree::NodeKind::File) => "file",
                        Some(cairn_chunk_store::tree::NodeKind::Symlink) => "symlink",
                        _ => "other",
                    };
                    writeln!(
                        out,
                        "{}",
                        json!({"path": e.path, "type": kind, "size": e.node.size, "mode": e.node.mode, "mtime": format_time(e.node.mtime_ns, true)})
                    )?;
                } else {
                    writeln!(out, "{}", e.path.display())?;
                }
                Ok(())
            }))?;
            Ok(0)
        }
        Command::Restore {
            snapshot,
            target,
            include,
        } => {
            let (source, id, snap) = open_snapshot(rt, &args, &snapshot)?;
            let root = snap.root_tree()?;
            let report = restore::run(
                rt.handle(),
                &source,
                &root,
                &RestoreOptions {
                    target: target.clone(),
                    includes: include,
                    progress: show_progress,
                },
            )?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for (path, reason) in &report.failed {
                eprintln!("error: cannot restore {}: {reason}", path.display());
            }
            if cli.json {
                println!(
                    "{}",
                    json!({"snapshot_id": id, "files": report.files, "dirs": report.dirs, "bytes": report.bytes, "failed": report.failed.len()})
                );
            } else {
                println!(
                    "restored {} files, {} dirs, {} from snapshot {} to {}",
                    report.files,
                    report.dirs,
                    indicatif::HumanBytes(report.bytes),
                    id.short(),
                    target.display()
                );
            }
            if !report.failed.is_empty() {
                eprintln!(
                    "error: {} entr{} could not be restored",
                    report.failed.len(),
                    if report.failed.len() == 1 { "y" } else { "ies" }
                );
                return Ok(1);
            }
            Ok(0)
        }
        Command::Dump { snapshot, path } => {
            let (source, _, snap) = open_snapshot(rt, &args, &snapshot)?;
            let root = snap.root_tree()?;
            let mut out = std::io::stdout().lock();
            rt.block_on(browse::dump(&source, &root, &path, &mut out))?;
            Ok(0)
        }
        Command::Diff { first, second } => {
            let (source, _, a) = open_snapshot(rt, &args, &first)?;
            let repo = source.repo().clone();
            let b_id = rt.block_on(repo.resolve_snapshot(&second))?;
            let b = rt.block_on(repo.load_snapshot(&b_id))?;
            let changes = rt.block_on(browse::diff(&source, &a.root_tree()?, &b.root_tree()?))?;
            for c in &changes {
                match c {
                    Change::Added(p) => println!("+    {}", p.display()),
                    Change::Removed(p) => println!("-    {}", p.display()),
                    Change::Modified(p) => println!("M    {}", p.display()),
                }
            }
            Ok(0)
        }
        Command::Check { read_data } => {
            let repo = rt.block_on(args.open())?;
            let index = rt.block_on(args.open_index_for_reading(&repo));
            let report = rt.block_on(check::run(&repo, index, read_data))?;
            for p in &report.problems {
                println!("{p}");
            }
            if cli.json {
                println!(
                    "{}",
                    json!({"snapshots": report.snapshots, "packs": report.packs, "chunks": report.chunks, "bytes_verified": report.bytes_verified, "problems": report.problems})
                );
            }
            if report.problems.is_empty() {
                if !cli.json {
                    println!(
                        "checked {} snapshots, {} packs, {} chunks{}: no errors were found",
                        report.snapshots,
                        report.packs,
                        report.chunks,
                        if read_data {
                            format!(" ({} read)", indicatif::HumanBytes(report.bytes_verified))
                        } else {
                            String::new()
                        }
                    );
                }
                Ok(0)
            } else {
                eprintln!("error: check found problems; see above");
                Ok(1)
            }
        }
        Command::Index {
            command: IndexCommand::Rebuild,
        } => {
            let repo = rt.block_on(args.open())?;
            let index = rt.block_on(args.open_index(&repo))?;
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
        Command::Key { command } => key_command(rt, &args, command, cli.json),
        Command::Forget(forget) => {
            cairn_client::retention::forget_command(rt, &args, forget, cli.json)
        }
        Command::Prune(prune) => cairn_client::prune::command(rt, &args, &prune, cli.json),
        Command::Agent(agent) => cairn_client::agent::command(rt, agent, cli.json),
        Command::Schedule(schedule) => cairn_client::schedule::command(rt, schedule, cli.json),
    }
}

fn key_command(rt: &Runtime, args: &RepoArgs, command: KeyCommand, json: bool) -> Result<u8> {
    let repo = rt.block_on(args.open())?;
    match command {
        KeyCommand::List => {
            let keys = rt.block_on(repo.list_keys())?;
            if json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"id": k.id, "current": k.current, "host": k.host, "user": k.user, "created": format_time(k.created_unix * 1_000_000_000, true)}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for k in &keys {
                    println!(
                        "{} {} {}@{} {}",
                        if k.current { "*" } else { " " },
                        k.id,
                        k.user,
                        k.host,
                        format_time(k.created_unix * 1_000_000_000, false)
                    );
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let id = rt.block_on(repo.add_key(
                password.as_bytes(),
                kdf_params(),
                &hostname(),
                &username(),
            ))?;
            println!("added key {id}");
        }
        KeyCommand::Remove { id } => {
            let id: KeyId = id.parse().context("key id")?;
            rt.block_on(repo.remove_key(&id))?;
            println!("removed key {id}");
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let id = rt.block_on(repo.change_password(
                password.as_bytes(),
                kdf_params(),
                &hostname(),
                &username(),
            ))?;
            println!("password changed (new key {id})");
        }
    }
    Ok(0)
}

/// A flag raised by SIGINT or SIGTERM, so a backup stops cleanly: packs
/// already filled are stored and registered, no snapshot is written.
fn cancel_on_signal(rt: &Runtime) -> Arc<std::sync::atomic::AtomicBool> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        raised.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    flag
}

fn open_snapshot(
    rt: &Runtime,
    args: &RepoArgs,
    reference: &str,
) -> Result<(BlobSource, SnapshotId, Snapshot)> {
    let repo = rt.block_on(args.open())?;
    let id = rt.block_on(repo.resolve_snapshot(reference))?;
    let snap = rt.block_on(repo.load_snapshot(&id))?;
    let index: Option<Arc<dyn cairn_index::Index>> =
        rt.block_on(args.open_index_for_reading(&repo));
    Ok((BlobSource::new(repo, index), id, snap))
}

fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    json!({
        "id": id,
        "short_id": id.short(),
        "time": format_time(s.time_ns, true),
        "host": s.host,
        "user": s.user,
        "paths": s.paths,
        "tags": s.tags,
        "parent": s.parent_id(),
        "stats": s.stats,
    })
}

fn format_time(ns: i64, precise: bool) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    };
    if precise {
        humantime::format_rfc3339_nanos(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    }
}
