//! `cairn agent`: runs the backup jobs of a config file on their schedules,
//! in the foreground, as a long-running service.
//!
//! Guarantees:
//! - **One run of a job at a time.** Each job has one task that waits for
//!   its next firing, runs, and only then computes the next firing after the
//!   present: firings that pass while a run is still going are skipped (and
//!   counted), never queued or overlapped. A per-job file lock extends this
//!   to other processes (systemd timers running `--run-once`). Jobs that
//!   share a repository take turns, since its embedded index has one writer.
//! - **Missed runs run once.** The start of every run is saved in the state
//!   file; at startup a job whose next firing after that stamp is already
//!   past runs once, right away (plus jitter), however many firings were
//!   missed: systemd's `Persistent=true`. A run cut short by a signal or a
//!   crash also runs again at the next start.
//! - **Jitter** delays each run by a uniformly random time in `[0, jitter]`.
//! - **SIGTERM/SIGINT** set the running backups' cancel flag: they store the
//!   packs they have filled, write no snapshot, and the next run reuses what
//!   they stored. The agent exits once they have stopped.
//! - A failed run (repository unreachable, wrong password, ...) runs the
//!   `on_failure` hook and is retried at the next firing; the metrics show
//!   the age of the last success growing meanwhile.
//!
//! Times are wall-clock times in the local time zone. Waits are cut into
//! slices of at most a minute and re-checked against the wall clock,
//! because monotonic timers stand still while the machine sleeps.

pub mod config;
pub mod cron;
pub mod log;
pub mod metrics;
pub mod run;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;

use config::{Config, Job};
use log::Logger;
use metrics::Metrics;
use run::RunOutcome;
use state::{JobState, RunRecord, RunResult, Running, StateStore};

/// How long the agent waits for running backups to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The longest single sleep: waits re-check the wall clock this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Loads the config named by `--config` (or the default one).
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => crate::paths::default_config()?,
    };
    Ok(config::load(&path)?)
}

/// The state directory: `--state-dir`, the config's, or the default.
pub fn state_dir(flag: Option<&Path>, config: &Config) -> Result<PathBuf> {
    match flag
        .map(Path::to_path_buf)
        .or_else(|| config.agent.state_dir.clone())
    {
        Some(d) => Ok(std::path::absolute(&d)?),
        None => crate::paths::default_state_dir(),
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every run stopped after the shutdown signal.
    Cleanly,
    /// A run did not stop within the grace period; the caller should end
    /// the process (a backup thread that ignores its cancel flag would keep
    /// the runtime from shutting down; the repository stays consistent
    /// whenever the process ends: packs are create-only, no snapshot yet).
    TimedOut,
}

/// A job's schedule as `--check-config` shows it.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// The job.
    pub job: Job,
    /// Its next firings after the given time, at most the number asked for.
    pub next: Vec<Timestamp>,
    /// The systemd `OnCalendar=` equivalent, or why there is none.
    pub on_calendar: Result<String, String>,
}

/// The next `count` firings of every job after `now`.
pub fn plan(config: &Config, now: Timestamp, tz: &TimeZone, count: usize) -> Vec<JobPlan> {
    config
        .jobs
        .iter()
        .map(|job| {
            let mut next = Vec::new();
            let mut t = now;
            while next.len() < count {
                match job.schedule.next_after(t, tz) {
                    Some(n) => {
                        next.push(n);
                        t = n;
                    }
                    None => break,
                }
            }
            JobPlan {
                job: job.clone(),
                next,
                on_calendar: job.schedule.on_calendar(),
            }
        })
        .collect()
}

/// What all job tasks share.
struct Agent {
    store: StateStore,
    metrics: Arc<Metrics>,
    log: Logger,
    /// Raised on SIGTERM/SIGINT: running backups stop.
    cancel: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    /// One lock per repository: jobs sharing one take turns.
    repo_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    handle: tokio::runtime::Handle,
    tz: TimeZone,
}

impl Agent {
    fn new(
        handle: &Handle,
        config: &Config,
        store: StateStore,
    ) -> Result<(Self, watch::Sender<bool>)> {
        let now = Timestamp::now();
        let names: Vec<String> = config.jobs.iter().map(|j| j.name.clone()).collect();
        let saved = store.update(|s| {
            names
                .iter()
                .map(|n| {
                    let j = s.jobs.entry(n.clone()).or_default();
                    j.first_seen.get_or_insert(now);
                    (n.clone(), j.clone())
                })
                .collect::<Vec<(String, JobState)>>()
        })?;
        let mut repo_locks = HashMap::new();
        for job in &config.jobs {
            repo_locks
                .entry(repo_key(job))
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())));
        }
        let (tx, rx) = watch::channel(false);
        Ok((
            Agent {
                store,
                metrics: Arc::new(Metrics::new(&saved)),
                log: Logger,
                cancel: Arc::new(AtomicBool::new(false)),
                shutdown: rx,
                repo_locks,
                handle: handle.clone(),
                tz: TimeZone::system(),
            },
            tx,
        ))
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

fn repo_key(job: &Job) -> String {
    job.repo_args()
        .local_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| job.repository.clone().unwrap_or_default())
}

/// Raises the cancel flag and the shutdown signal on SIGTERM or SIGINT.
fn watch_signals(agent: &Agent, tx: watch::Sender<bool>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = agent.cancel.clone();
    let log = agent.log;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log.info(
            None,
            "stopping",
            &format!(
                "{name}: stopping; running backups store the packs in flight and write no snapshot"
            ),
            json!({"signal": name}),
        );
        cancel.store(true, Ordering::Relaxed);
        let _ = tx.send(true);
    });
    Ok(())
}

/// Runs every job on its schedule until SIGTERM or SIGINT, serving the
/// agent's metrics on `metrics_listener` if given.
pub async fn serve(
    handle: &Handle,
    config: Config,
    store: StateStore,
    metrics_listener: Option<TcpListener>,
) -> Result<Stopped> {
    let (agent, tx) = Agent::new(handle, &config, store)?;
    let log = agent.log;
    watch_signals(&agent, tx)?;
    if let Some(listener) = metrics_listener {
        let mut shutdown = agent.shutdown.clone();
        let metrics = agent.metrics.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = metrics::serve(listener, metrics, stop).await {
                log.error(None, "metrics_failed", &format!("{e:#}"), json!({}));
            }
        });
    }
    log.info(
        None,
        "started",
        &format!(
            "agent started: {} job(s) from {}, state in {}",
            config.jobs.len(),
            config.path.display(),
            agent.store.dir().display()
        ),
        json!({"config": config.path, "jobs": config.jobs.iter().map(|j| &j.name).collect::<Vec<_>>(), "pid": std::process::id()}),
    );
    let agent = Arc::new(agent);
    let mut tasks = tokio::task::JoinSet::new();
    for job in config.jobs {
        tasks.spawn(job_loop(agent.clone(), job));
    }
    let mut shutdown = agent.shutdown.clone();
    let _ = shutdown.wait_for(|s| *s).await;
    let stopped = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        log.error(
            None,
            "stop_timeout",
            &format!(
                "runs did not stop within {}s; exiting anyway",
                STOP_GRACE.as_secs()
            ),
            json!({}),
        );
        return Ok(Stopped::TimedOut);
    }
    log.info(None, "stopped", "agent stopped", json!({}));
    Ok(Stopped::Cleanly)
}

/// Why a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// Its scheduled time came.
    Schedule,
    /// Firings passed while the agent was not running.
    Missed(u64),
    /// The previous run was cut short.
    Interrupted,
    /// `--run-once`.
    Manual,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Schedule => "schedule",
            Reason::Missed(_) => "missed",
            Reason::Interrupted => "interrupted",
            Reason::Manual => "manual",
        }
    }
}

/// The next run of a job: when it is due (before jitter) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    at: Timestamp,
    reason: Reason,
}

/// The first run after startup, from the saved state.
fn first_due(job: &Job, saved: &JobState, now: Timestamp, tz: &TimeZone) -> Option<Due> {
    let cut_short = saved.run_was_cut_short()
        || saved.last_run.as_ref().is_some_and(|r| {
            r.result == RunResult::Interrupted && Some(r.started) >= saved.last_trigger
        });
    if cut_short {
        return Some(Due {
            at: now,
            reason: Reason::Interrupted,
        });
    }
    match saved.last_trigger {
        Some(last) => {
            let next = job.schedule.next_after(last, tz)?;
            if next <= now {
                let missed = job.schedule.count_between(last, now, tz, 10_000);
                Some(Due {
                    at: now,
                    reason: Reason::Missed(missed),
                })
            } else {
                Some(Due {
                    at: next,
                    reason: Reason::Schedule,
                })
            }
        }
        None => job.schedule.next_after(now, tz).map(|at| Due {
            at,
            reason: Reason::Schedule,
        }),
    }
}

/// A uniformly random delay in `[0, bound]`.
fn jitter(bound: Duration) -> Duration {
    if bound.is_zero() {
        return Duration::ZERO;
    }
    let r = u64::from_le_bytes(cairn_chunk_store::crypto::random_bytes::<8>());
    bound.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// Sleeps until the wall clock reaches `target`; false if shutdown came first.
async fn sleep_until(target: Timestamp, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        let now = Timestamp::now();
        if now >= target {
            return true;
        }
        let left = now.duration_until(target).unsigned_abs().min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
    }
}

async fn job_loop(agent: Arc<Agent>, job: Job) {
    let name = job.name.clone();
    let saved = agent
        .store
        .load()
        .ok()
        .and_then(|s| s.jobs.get(&name).cloned())
        .unwrap_or_default();
    let mut next = first_due(&job, &saved, Timestamp::now(), &agent.tz);
    let mut shutdown = agent.shutdown.clone();
    while let Some(due) = next {
        agent.metrics.next_run(&name, Some(due.at));
        let delay = jitter(job.jitter);
        let fire_at = due.at.max(Timestamp::now()) + delay;
        match due.reason {
            Reason::Missed(n) => agent.log.info(
                Some(&name),
                "run_missed",
                &format!("{n} scheduled run(s) were missed while the agent was not running; running once now"),
                json!({"missed": n, "delay_seconds": delay.as_secs_f64()}),
            ),
            Reason::Interrupted => agent.log.info(
                Some(&name),
                "run_resumed",
                "the last run was cut short; running again now",
                json!({"delay_seconds": delay.as_secs_f64()}),
            ),
            Reason::Schedule | Reason::Manual => agent.log.info(
                Some(&name),
                "run_scheduled",
                &format!("next run at {} (+{:.1}s jitter)", due.at, delay.as_secs_f64()),
                json!({"due": due.at.to_string(), "delay_seconds": delay.as_secs_f64()}),
            ),
        }
        if !sleep_until(fire_at, &mut shutdown).await {
            break;
        }
        let repo_lock = agent.repo_locks.get(&repo_key(&job)).cloned();
        let _turn = match repo_lock {
            Some(lock) => tokio::select! {
                guard = lock.lock_owned() => Some(guard),
                _ = shutdown.wait_for(|s| *s) => break,
            },
            None => None,
        };
        execute(&agent, &job, due, delay).await;
        if agent.stopping() {
            break;
        }
        let now = Timestamp::now();
        // Firings that came and went during the run are skipped, not queued.
        let skipped = job.schedule.count_between(due.at, now, &agent.tz, 10_000);
        if skipped > 0 {
            agent.metrics.skipped(&name, skipped);
            agent.log.warn(
                Some(&name),
                "run_skipped",
                &format!("the run outlasted the schedule: {skipped} scheduled run(s) skipped"),
                json!({"skipped": skipped}),
            );
        }
        next = job.schedule.next_after(now, &agent.tz).map(|at| Due {
            at,
            reason: Reason::Schedule,
        });
    }
    if next.is_none() {
        agent.metrics.next_run(&name, None);
        agent.log.warn(
            Some(&name),
            "no_next_run",
            "the schedule never fires again",
            json!({}),
        );
        let _ = shutdown.wait_for(|s| *s).await;
    }
}

/// One run: lock, record the start, back up, run hooks, record the end.
/// `None` if another process is running the job.
async fn execute(agent: &Agent, job: &Job, due: Due, delay: Duration) -> Option<RunRecord> {
    let name = job.name.as_str();
    let log = &agent.log;
    let job_lock = match agent.store.try_lock_job(name) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            log.warn(
                Some(name),
                "run_skipped",
                "another process is running this job; skipping this run",
                json!({"skipped": 1}),
            );
            return None;
        }
        Err(e) => {
            log.error(Some(name), "state_error", &format!("{e:#}"), json!({}));
            return None;
        }
    };
    let started = Timestamp::now();
    if let Err(e) = agent.store.update(|s| {
        let j = s.jobs.entry(name.to_string()).or_default();
        j.first_seen.get_or_insert(started);
        j.last_trigger = Some(started);
        j.running = Some(Running {
            pid: std::process::id(),
            started,
        });
    }) {
        log.error(Some(name), "state_error", &format!("{e:#}"), json!({}));
    }
    agent.metrics.run_started(name);
    log.info(
        Some(name),
        "run_started",
        &format!("backup started ({})", due.reason.as_str()),
        json!({
            "reason": due.reason.as_str(),
            "due": due.at.to_string(),
            "delay_seconds": delay.as_secs_f64(),
            "started": started.to_string(),
        }),
    );
    let outcome = {
        let (handle, job, cancel, log) = (
            agent.handle.clone(),
            job.clone(),
            agent.cancel.clone(),
            agent.log,
        );
        tokio::task::spawn_blocking(move || run::backup(&handle, &job, &cancel, &log))
            .await
            .unwrap_or_else(|e| RunOutcome {
                result: RunResult::Failure,
                error: Some(format!("the backup thread failed: {e}")),
                snapshot: None,
                seconds: 0.0,
                bytes_new: 0,
                bytes_stored: 0,
                forgotten: 0,
            })
    };
    // The result is recorded before the hooks run, so that a hook that
    // looks at the state or the metrics sees this run.
    let record = RunRecord {
        started,
        finished: Timestamp::now(),
        result: outcome.result,
        error: outcome.error.clone(),
        snapshot: outcome.snapshot.map(|s| s.to_hex()),
        duration_seconds: outcome.seconds,
        bytes_new: outcome.bytes_new,
        bytes_stored: outcome.bytes_stored,
        forgotten: outcome.forgotten,
    };
    if let Err(e) = agent.store.update(|s| {
        let j = s.jobs.entry(name.to_string()).or_default();
        j.runs_total += 1;
        if matches!(record.result, RunResult::Failure | RunResult::Partial) {
            j.failures_total += 1;
        }
        if record.result.wrote_snapshot() {
            j.last_success = Some(record.started);
            j.last_success_snapshot = record.snapshot.clone();
        }
        j.last_run = Some(record.clone());
    }) {
        log.error(Some(name), "state_error", &format!("{e:#}"), json!({}));
    }
    agent.metrics.run_recorded(name, &record);
    match outcome.result {
        RunResult::Success => {
            if let Some(cmd) = &job.on_success {
                run::hook("on_success", cmd, job, &outcome, started, log).await;
            }
        }
        RunResult::Partial | RunResult::Failure => {
            if let Some(cmd) = &job.on_failure {
                run::hook("on_failure", cmd, job, &outcome, started, log).await;
            }
        }
        // Stopping is not a failure of the job: no hook, retried at the next start.
        RunResult::Interrupted => {}
    }
    // The run, hooks included, is over.
    if let Err(e) = agent.store.update(|s| {
        s.jobs.entry(name.to_string()).or_default().running = None;
    }) {
        log.error(Some(name), "state_error", &format!("{e:#}"), json!({}));
    }
    drop(job_lock);
    agent.metrics.run_ended(name);
    let finished = Timestamp::now();
    let fields = json!({
        "result": record.result.as_str(),
        "reason": due.reason.as_str(),
        "started": record.started.to_string(),
        "finished": finished.to_string(),
        "snapshot": record.snapshot,
        "error": record.error,
        "seconds": record.duration_seconds,
        "bytes_new": record.bytes_new,
        "bytes_stored": record.bytes_stored,
        "forgotten": record.forgotten,
    });
    match record.result {
        RunResult::Success => log.info(
            Some(name),
            "run_finished",
            &format!(
                "backup finished: snapshot {} ({} new, {} stored, {:.1}s)",
                outcome.snapshot.map(|s| s.short()).unwrap_or_default(),
                indicatif::HumanBytes(record.bytes_new),
                indicatif::HumanBytes(record.bytes_stored),
                record.duration_seconds
            ),
            fields,
        ),
        RunResult::Interrupted => log.warn(
            Some(name),
            "run_finished",
            "backup interrupted: no snapshot was written; the next run reuses what was stored",
            fields,
        ),
        RunResult::Partial | RunResult::Failure => log.error(
            Some(name),
            "run_finished",
            &format!(
                "backup {}: {}",
                if record.result == RunResult::Partial {
                    "incomplete"
                } else {
                    "failed"
                },
                record.error.as_deref().unwrap_or("unknown error")
            ),
            fields,
        ),
    }
    Some(record)
}

/// Runs `job` once, now (`cairn agent --run-once JOB`, what the systemd
/// units run); fails if another process runs it already.
pub async fn run_once(
    handle: &Handle,
    config: Config,
    store: StateStore,
    job: Job,
) -> Result<RunResult> {
    let (agent, tx) = Agent::new(handle, &config, store)?;
    watch_signals(&agent, tx)?;
    let due = Due {
        at: Timestamp::now(),
        reason: Reason::Manual,
    };
    match execute(&agent, &job, due, Duration::ZERO).await {
        None => Err(anyhow!(
            "job {} is already running in another process",
            job.name
        )),
        Some(r) => Ok(r.result),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn job(schedule: &str) -> Job {
        Job {
            name: "j".into(),
            paths: vec!["/".into()],
            exclude: vec![],
            exclude_file: vec![],
            exclude_if_present: vec![],
            one_file_system: false,
            tags: vec![],
            host: "h".into(),
            repository: None,
            index: None,
            index_token_file: None,
            password: config::PasswordSource::Env("X".into()),
            schedule: schedule.parse().unwrap(),
            jitter: Duration::ZERO,
            lock_wait: Duration::ZERO,
            retention: None,
            on_success: None,
            on_failure: None,
            s3: crate::context::S3Settings::from_env().unwrap(),
            stream: None,
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn first_run_after_start() {
        let j = job("hourly");
        let now = t("2024-06-01T10:30:00Z");
        let tz = TimeZone::UTC;
        // Never ran: the next firing, nothing to catch up.
        let due = first_due(&j, &JobState::default(), now, &tz).unwrap();
        assert_eq!(
            due,
            Due {
                at: t("2024-06-01T11:00:00Z"),
                reason: Reason::Schedule
            }
        );
        // Ran at 10:00: the 11:00 firing is still ahead.
        let ran = |at: &str| JobState {
            last_trigger: Some(t(at)),
            ..JobState::default()
        };
        let due = first_due(&j, &ran("2024-06-01T10:00:05Z"), now, &tz).unwrap();
        assert_eq!(due.reason, Reason::Schedule);
        assert_eq!(due.at, t("2024-06-01T11:00:00Z"));
        // Ran at 06:10, stopped: 07:00..10:00 were missed, one run now.
        let due = first_due(&j, &ran("2024-06-01T06:10:00Z"), now, &tz).unwrap();
        assert_eq!(
            due,
            Due {
                at: now,
                reason: Reason::Missed(4)
            }
        );
        // The last run was interrupted: run again now.
        let mut s = ran("2024-06-01T10:00:05Z");
        s.last_run = Some(RunRecord {
            started: t("2024-06-01T10:00:05Z"),
            finished: t("2024-06-01T10:00:09Z"),
            result: RunResult::Interrupted,
            error: None,
            snapshot: None,
            duration_seconds: 4.0,
            bytes_new: 0,
            bytes_stored: 0,
            forgotten: 0,
        });
        assert_eq!(
            first_due(&j, &s, now, &tz).unwrap().reason,
            Reason::Interrupted
        );
        // ... unless a later run started since.
        s.last_trigger = Some(t("2024-06-01T10:10:00Z"));
        assert_eq!(
            first_due(&j, &s, now, &tz).unwrap().reason,
            Reason::Schedule
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let bound = Duration::from_millis(1500);
        let draws: Vec<Duration> = (0..2000).map(|_| jitter(bound)).collect();
        assert!(draws.iter().all(|d| *d <= bound));
        // Spread over the range, not stuck at one end.
        assert!(draws.iter().any(|d| *d < bound / 10));
        assert!(draws.iter().any(|d| *d > bound * 9 / 10));
    }
}
