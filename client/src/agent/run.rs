//! One run of a job: back up through the library (no subprocess), apply the
//! retention policy, and run the job's hooks.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cairn_chunk_store::{Repository, SnapshotId};
use cairn_index::{Engine, EngineOptions, Index, IndexError};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::runtime::Handle;

use super::config::Job;
use super::log::Logger;
use super::state::RunResult;
use crate::backup::{self, BackupOptions, early::EarlyListing, excludes::Excludes};
use crate::context::username;
use crate::retention::{self, SnapshotMeta};

/// A hook gets this long before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub result: RunResult,
    /// Why it failed (or, for a partial run, what could not be read).
    pub error: Option<String>,
    /// The snapshot it wrote.
    pub snapshot: Option<SnapshotId>,
    /// Backup wall time, seconds.
    pub seconds: f64,
    /// Raw bytes of new chunks.
    pub bytes_new: u64,
    /// Bytes written to the store.
    pub bytes_stored: u64,
    /// Snapshots the retention policy removed.
    pub forgotten: u64,
}

impl RunOutcome {
    fn failed(error: String, seconds: f64) -> Self {
        RunOutcome {
            result: RunResult::Failure,
            error: Some(error),
            snapshot: None,
            seconds,
            bytes_new: 0,
            bytes_stored: 0,
            forgotten: 0,
        }
    }
}

/// Backs up `job` and applies its retention policy. Blocking: call on a
/// thread outside the runtime. Setting `cancel` stops the backup cleanly
/// (packs already filled are stored, no snapshot is written).
pub fn backup(handle: &Handle, job: &Job, cancel: &Arc<AtomicBool>, log: &Logger) -> RunOutcome {
    let start = Instant::now();
    match backup_inner(handle, job, cancel, log) {
        Ok(outcome) => outcome,
        Err(_) if cancel.load(Ordering::Relaxed) => RunOutcome {
            result: RunResult::Interrupted,
            error: Some("stopped by a signal before the snapshot was written; the next run reuses what was stored".into()),
            ..RunOutcome::failed(String::new(), start.elapsed().as_secs_f64())
        },
        Err(e) => RunOutcome::failed(format!("{e:#}"), start.elapsed().as_secs_f64()),
    }
}

fn backup_inner(
    handle: &Handle,
    job: &Job,
    cancel: &Arc<AtomicBool>,
    log: &Logger,
) -> Result<RunOutcome> {
    let excludes = Excludes::new(
        &job.exclude,
        &job.exclude_file,
        &job.exclude_if_present,
        job.one_file_system,
    )?;
    // The sources are read while the key is derived (`backup::early`).
    let early_listing = job
        .stream
        .is_none()
        .then(|| Arc::new(EarlyListing::start(&job.paths, &excludes)));
    let mut repo_args = job.repo_args();
    let store = handle.block_on(repo_args.store())?;
    let password = job.password()?;
    let repo = handle.block_on(Repository::open(store, password.as_bytes()))?;
    let repo_args_cluster = repo_args.index.is_some();
    let index = if repo_args_cluster {
        // The cluster: an index that does not answer makes the backup
        // upload more, never fail (see the crate docs of cairn-index).
        repo_args.index_token = job.index_token()?;
        handle.block_on(repo_args.open_index(&repo, "backup", "a backup"))?
    } else {
        crate::sealed_lengths::seal_index(
            &repo,
            open_index(job, &repo_args.index_path()?, cancel, log)?,
        )
    };
    let report = backup::run(
        handle,
        &repo,
        index.clone(),
        BackupOptions {
            paths: job.paths.clone(),
            excludes,
            tags: job.tags.clone(),
            host: job.host.clone(),
            time_ns: None,
            user: username(),
            progress: false,
            cancel: Some(cancel.clone()),
            lease_secs: cairn_index::DEFAULT_LEASE_SECS,
            stream: job.stream.clone(),
            dry_run: false,
            early_listing,
        },
    )?;
    let stats = &report.stats;
    let mut outcome = RunOutcome {
        result: RunResult::Success,
        error: None,
        snapshot: Some(report.snapshot_id),
        seconds: report.seconds,
        bytes_new: stats.bytes_new,
        bytes_stored: stats.bytes_stored,
        forgotten: 0,
    };
    if stats.errors > 0 {
        outcome.result = RunResult::Partial;
        outcome.error = Some(format!(
            "snapshot {} was written, but {} source entr{} could not be read{}",
            report.snapshot_id.short(),
            stats.errors,
            if stats.errors == 1 { "y" } else { "ies" },
            report
                .warnings
                .first()
                .map(|w| format!(" (first: {w})"))
                .unwrap_or_default()
        ));
        // An incomplete snapshot does not make older complete ones expendable.
        return Ok(outcome);
    }
    if let Some(policy) = &job.retention {
        // A cluster's index keeps its own record of when each snapshot was
        // committed, and retention goes by it (crate docs of `retention`).
        let cluster = repo_args_cluster.then_some(&*index as &dyn cairn_index::GcIndex);
        match apply_retention(handle, &repo, job, policy, cluster, log) {
            Ok(n) => {
                outcome.forgotten = n;
                if policy.prune && n > 0 {
                    prune_after_retention(handle, &repo, index, job, log);
                }
            }
            Err(e) => {
                outcome.result = RunResult::Failure;
                outcome.error = Some(format!(
                    "snapshot {} was written, but the retention policy failed: {e:#}",
                    report.snapshot_id.short()
                ));
            }
        }
    }
    Ok(outcome)
}

/// Opens the repository's embedded index, waiting up to the job's
/// `lock_wait` for another process (a manual `cairn backup`) to release it;
/// the wait ends early when the run is cancelled.
fn open_index(
    job: &Job,
    path: &std::path::Path,
    cancel: &Arc<AtomicBool>,
    log: &Logger,
) -> Result<Arc<dyn Index>> {
    let deadline = Instant::now() + job.lock_wait;
    let mut told = false;
    loop {
        match Engine::open(path, EngineOptions::default(), &|_| {}) {
            Ok(engine) => return Ok(Arc::new(engine)),
            Err(e @ IndexError::Locked { .. }) => {
                if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return Err(e.into());
                }
                if !told {
                    log.warn(
                        Some(&job.name),
                        "index_busy",
                        &format!(
                            "{e}; waiting up to {}",
                            crate::duration::format(job.lock_wait)
                        ),
                        json!({}),
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs prune with its default options after retention removed snapshots.
/// A prune that fails is logged; the backup itself succeeded.
fn prune_after_retention(
    handle: &Handle,
    repo: &Repository,
    index: Arc<dyn Index>,
    job: &Job,
    log: &Logger,
) {
    let options = crate::prune::PruneOptions::default();
    match handle.block_on(crate::prune::run(repo, index, &options)) {
        Ok(r) => log.info(
            Some(&job.name),
            "prune_done",
            &format!(
                "prune: {} chunks condemned, {} packs deleted, {} bytes freed, {} bytes waiting for the grace period",
                r.chunks_condemned, r.packs_deleted, r.bytes_freed, r.bytes_waiting
            ),
            serde_json::to_value(&r).unwrap_or_default(),
        ),
        Err(e) => log.warn(
            Some(&job.name),
            "prune_failed",
            &format!("prune failed: {e:#}"),
            json!({}),
        ),
    }
}

/// Forgets the job's snapshots (same host, same paths) that its policy does
/// not keep; returns how many.
fn apply_retention(
    handle: &Handle,
    repo: &Repository,
    job: &Job,
    policy: &retention::Policy,
    cluster: Option<&dyn cairn_index::GcIndex>,
    log: &Logger,
) -> Result<u64> {
    let mut paths: Vec<String> = job
        .paths
        .iter()
        .map(|p| std::path::absolute(p).map(|a| a.display().to_string()))
        .collect::<std::io::Result<_>>()
        .context("job paths")?;
    paths.sort();
    let mut mine: Vec<SnapshotMeta> = handle
        .block_on(repo.snapshots())?
        .iter()
        .map(|(id, s)| SnapshotMeta::new(*id, s))
        .filter(|m| m.host == job.host && m.paths == paths)
        .collect();
    if let Some(index) = cluster {
        mine = handle.block_on(retention::with_commit_times(index, mine))?;
    }
    let plans = policy.plan(mine, &TimeZone::system());
    let remove: Vec<SnapshotId> = plans
        .iter()
        .flat_map(|g| g.remove.iter().map(|s| s.id))
        .collect();
    if remove.is_empty() {
        return Ok(0);
    }
    handle.block_on(retention::remove_snapshots(repo, &remove))?;
    let kept: usize = plans.iter().map(|g| g.keep.len()).sum();
    log.info(
        Some(&job.name),
        "retention_applied",
        &format!(
            "{policy}: removed {} snapshot(s), kept {kept}",
            remove.len()
        ),
        json!({"removed": remove, "kept": kept}),
    );
    Ok(remove.len() as u64)
}

/// Runs `command` with `sh -c`, the outcome in `CAIRN_*` variables, and logs
/// its output. A hook that fails is logged; it does not change the result.
pub async fn hook(
    which: &str,
    command: &str,
    job: &Job,
    outcome: &RunOutcome,
    started: Timestamp,
    log: &Logger,
) {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("CAIRN_JOB", &job.name)
        .env("CAIRN_RESULT", outcome.result.as_str())
        .env("CAIRN_ERROR", outcome.error.as_deref().unwrap_or(""))
        .env(
            "CAIRN_SNAPSHOT_ID",
            outcome.snapshot.map(|s| s.to_hex()).unwrap_or_default(),
        )
        .env("CAIRN_STARTED", started.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let name = &job.name;
    let result = match cmd.spawn() {
        Ok(child) => tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("killed after {}s", HOOK_TIMEOUT.as_secs()))
            .and_then(|r| r.map_err(anyhow::Error::from)),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    match result {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = text.trim();
            let fields = json!({"hook": which, "exit_code": out.status.code(), "output": text});
            if out.status.success() {
                log.info(
                    Some(name),
                    "hook_finished",
                    &format!("{which} hook finished{}", suffix(text)),
                    fields,
                );
            } else {
                log.warn(
                    Some(name),
                    "hook_failed",
                    &format!("{which} hook failed ({}){}", out.status, suffix(text)),
                    fields,
                );
            }
        }
        Err(e) => log.warn(
            Some(name),
            "hook_failed",
            &format!("{which} hook could not run: {e:#}"),
            json!({"hook": which}),
        ),
    }
}

fn suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {}", output.replace('\n', " | "))
    }
}
