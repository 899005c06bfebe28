//! What the agent remembers between runs: per job, when it was last
//! triggered (systemd's `Persistent=` stamp), how the last run ended, and
//! when a run last succeeded (the recovery point).
//!
//! One JSON file, `STATE_DIR/agent.json`, shared by the agent and by the
//! one-shot runs of systemd timers: every update takes an exclusive lock on
//! `STATE_DIR/agent.lock`, re-reads the file, changes it and replaces it
//! atomically (write, fsync, rename), so concurrent processes never lose
//! each other's updates and readers never see half a file. A second lock per
//! job (`STATE_DIR/locks/JOB.lock`) keeps two processes from running the
//! same job at once; both locks die with their process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of the state file format.
const STATE_VERSION: u32 = 1;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// A complete snapshot was written (and retention applied).
    Success,
    /// A snapshot was written, but some source files could not be read.
    Partial,
    /// No snapshot: the run failed.
    Failure,
    /// Stopped by a signal; the next start runs the job again.
    Interrupted,
}

impl RunResult {
    /// Lower-case name, as in the state file and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Partial => "partial",
            RunResult::Failure => "failure",
            RunResult::Interrupted => "interrupted",
        }
    }

    /// True if a snapshot was written.
    pub fn wrote_snapshot(self) -> bool {
        matches!(self, RunResult::Success | RunResult::Partial)
    }
}

/// One finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When it started.
    pub started: Timestamp,
    /// When the backup (and retention) ended; hooks run after.
    pub finished: Timestamp,
    /// How it ended.
    pub result: RunResult,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Wall time of the backup, seconds.
    pub duration_seconds: f64,
    /// Bytes of new chunks.
    pub bytes_new: u64,
    /// Bytes written to the store.
    pub bytes_stored: u64,
    /// Snapshots removed by the retention policy.
    #[serde(default)]
    pub forgotten: u64,
}

/// A run in progress, so that a run cut short by a crash is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    /// Process running it.
    pub pid: u32,
    /// When it started.
    pub started: Timestamp,
}

/// Everything remembered about one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// When the state first mentioned this job (the age of "never succeeded").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    /// When the last run was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<Timestamp>,
    /// The run in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    /// The last finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
    /// When the last run that wrote a snapshot started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    /// The snapshot that run wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_snapshot: Option<String>,
    /// Finished runs.
    #[serde(default)]
    pub runs_total: u64,
    /// Failed runs.
    #[serde(default)]
    pub failures_total: u64,
}

impl JobState {
    /// The run recorded as in progress belongs to a process that is gone:
    /// it was cut short (crash, power loss, `kill -9`).
    pub fn run_was_cut_short(&self) -> bool {
        self.running.as_ref().is_some_and(|r| {
            r.pid == std::process::id() || !Path::new(&format!("/proc/{}", r.pid)).exists()
        })
    }

    /// What the recovery-point age is measured from: the last success, or
    /// when the job was first seen if it never succeeded.
    pub fn age_reference(&self) -> Option<Timestamp> {
        self.last_success.or(self.first_seen)
    }
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// Per job, by name.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobState>,
}

/// The state directory and its locks.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("locks"))
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// A store that may not exist yet (for `status`): never creates anything.
    pub fn at(dir: &Path) -> Self {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn file(&self) -> PathBuf {
        self.dir.join("agent.json")
    }

    /// Reads the state (empty if there is none yet).
    pub fn load(&self) -> Result<State> {
        let file = self.file();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cairn agent state file", file.display()))?;
        if state.version > STATE_VERSION {
            return Err(anyhow!(
                "{}: state format {} is newer than this cairn understands ({STATE_VERSION})",
                file.display(),
                state.version
            ));
        }
        Ok(state)
    }

    /// Changes the state under the file lock and writes it back atomically.
    pub fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> Result<R> {
        let lock_path = self.dir.join("agent.lock");
        let lock = open_lock_file(&lock_path)?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let mut state = self.load()?;
        let out = change(&mut state);
        state.version = STATE_VERSION;
        let file = self.file();
        let tmp = self.dir.join(format!(".agent.json.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(
                serde_json::to_string_pretty(&state)
                    .map_err(std::io::Error::other)?
                    .as_bytes(),
            )?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)
        };
        write().with_context(|| format!("writing {}", file.display()))?;
        drop(lock);
        Ok(out)
    }

    /// Takes the run lock of `job`; `None` if another process holds it.
    pub fn try_lock_job(&self, job: &str) -> Result<Option<File>> {
        let path = self.dir.join("locks").join(format!("{job}.lock"));
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Opens (creating, never truncating) a file that is only ever locked.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn updates_round_trip_and_job_locks_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let t: Timestamp = "2024-06-01T02:30:00Z".parse().unwrap();
        store
            .update(|s| {
                let j = s.jobs.entry("home".into()).or_default();
                j.last_trigger = Some(t);
                j.last_run = Some(RunRecord {
                    started: t,
                    finished: t,
                    result: RunResult::Failure,
                    error: Some("no repository".into()),
                    snapshot: None,
                    duration_seconds: 0.5,
                    bytes_new: 0,
                    bytes_stored: 0,
                    forgotten: 0,
                });
            })
            .unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.version, STATE_VERSION);
        assert_eq!(state.jobs["home"].last_trigger, Some(t));
        let text = std::fs::read_to_string(store.file()).unwrap();
        assert!(text.contains("\"result\": \"failure\""), "{text}");

        let held = store.try_lock_job("home").unwrap();
        assert!(held.is_some());
        assert!(store.try_lock_job("home").unwrap().is_none());
        assert!(store.try_lock_job("other").unwrap().is_some());
        drop(held);
        assert!(store.try_lock_job("home").unwrap().is_some());
    }

    #[test]
    fn a_run_of_a_dead_process_was_cut_short() {
        let mut j = JobState {
            running: Some(Running {
                pid: u32::MAX - 1,
                started: Timestamp::UNIX_EPOCH,
            }),
            ..JobState::default()
        };
        assert!(j.run_was_cut_short());
        j.running = Some(Running {
            pid: 1,
            started: Timestamp::UNIX_EPOCH,
        });
        assert!(!j.run_was_cut_short());
        j.running = None;
        assert!(!j.run_was_cut_short());
    }
}
