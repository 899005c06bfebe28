//! `cairn schedule install|remove|status`: the config file's jobs as systemd
//! timers, for machines that would rather let systemd schedule than run
//! `cairn agent`.
//!
//! Per job, a oneshot `cairn-backup-JOB.service` running
//! `cairn agent --config F --state-dir D --run-once JOB`, and a
//! `cairn-backup-JOB.timer` with the schedule translated to `OnCalendar=`,
//! `Persistent=true` (a run missed while the machine was off runs at boot)
//! and the jitter as `RandomizedDelaySec=`. User units (in
//! `$XDG_CONFIG_HOME/systemd/user`) unless run as root, which writes system
//! units to `/etc/systemd/system`. The one-shot runs share the agent's state
//! file, so `status` reads the same history whichever runs the jobs.
//!
//! Every unit file starts with a marker naming its config file, so
//! `install` can drop the units of jobs removed from the config and
//! `remove` deletes only what `install` wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use cairn_chunk_store::Repository;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::runtime::Handle;

use crate::agent::config::{Config, Job, PasswordSource};
use crate::agent::state::{JobState, StateStore};
use crate::retention::SnapshotMeta;

/// First line of every unit file this module writes.
const MARKER: &str = "# Written by `cairn schedule install` from";

/// Where units go, as the user chose.
#[derive(Debug, Clone, Default)]
pub struct UnitPlace {
    /// Write units to this directory and do not call systemctl.
    pub unit_dir: Option<PathBuf>,
    /// User units (the default unless run as root).
    pub user: bool,
    /// System units (the default as root).
    pub system: bool,
}

/// User or system units, and where they go.
#[derive(Debug, Clone)]
pub struct Target {
    system: bool,
    dir: PathBuf,
    /// False with `--unit-dir`: files only.
    systemctl: bool,
}

impl Target {
    /// Resolves the user's choice: system units as root unless `--user`.
    pub fn new(place: &UnitPlace) -> Result<Self> {
        let system = place.system || (!place.user && running_as_root());
        let dir = match &place.unit_dir {
            Some(d) => std::path::absolute(d)?,
            None if system => PathBuf::from("/etc/systemd/system"),
            None => crate::paths::user_unit_dir()?,
        };
        Ok(Target {
            system,
            dir,
            systemctl: place.unit_dir.is_none(),
        })
    }

    /// The unit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// System units (else user units).
    pub fn system(&self) -> bool {
        self.system
    }

    /// Whether systemctl is called (not with a chosen unit directory).
    pub fn calls_systemctl(&self) -> bool {
        self.systemctl
    }

    fn systemctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("systemctl");
        if !self.system {
            cmd.arg("--user");
        }
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("running systemctl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "systemctl {}{} failed: {}",
                if self.system { "" } else { "--user " },
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `systemctl is-enabled/is-active` answers (which exit non-zero for "no").
    fn query(&self, verb: &str, unit: &str) -> String {
        let mut cmd = Command::new("systemctl");
        if !self.system {
            cmd.arg("--user");
        }
        match cmd.args([verb, unit]).output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if text.is_empty() {
                    "unknown".into()
                } else {
                    text
                }
            }
            Err(_) => "unknown (no systemctl)".into(),
        }
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Unit names of a job.
pub fn unit_names(job: &str) -> (String, String) {
    (
        format!("cairn-backup-{job}.service"),
        format!("cairn-backup-{job}.timer"),
    )
}

/// Quotes one word of an `ExecStart=` line (systemd's quoting, `%` specifiers escaped).
fn quote(word: &str) -> String {
    let escaped = word.replace('%', "%%");
    if !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An `Environment=`/value with `%` escaped and quoted as one assignment.
fn env_assignment(key: &str, value: &str) -> String {
    format!(
        "\"{key}={}\"",
        value
            .replace('%', "%%")
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// The service and timer files of one job.
fn render_units(
    job: &Job,
    config: &Path,
    state_dir: &Path,
    exe: &Path,
    system: bool,
) -> Result<(String, String)> {
    let calendar = job
        .schedule
        .on_calendar()
        .map_err(|e| anyhow!("job {}: {e}", job.name))?;
    let (service_name, _) = unit_names(&job.name);
    let marker = format!("{MARKER} {}", config.display());
    let exec = [
        quote(&exe.display().to_string()),
        "agent".into(),
        "--config".into(),
        quote(&config.display().to_string()),
        "--state-dir".into(),
        quote(&state_dir.display().to_string()),
        "--run-once".into(),
        quote(&job.name),
    ]
    .join(" ");
    let mut service = format!(
        "{marker}\n\
         # `cairn schedule remove` deletes it.\n\
         [Unit]\n\
         Description=Cairn backup job {name}\n",
        name = job.name
    );
    if system {
        service.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    service.push_str(&format!(
        "\n[Service]\n\
         Type=oneshot\n\
         ExecStart={exec}\n"
    ));
    // The config was checked with this home directory (`~/` paths).
    if let Some(home) = std::env::var_os("HOME") {
        service.push_str(&format!(
            "Environment={}\n",
            env_assignment("HOME", &home.to_string_lossy())
        ));
    }
    if let PasswordSource::Env(var) = &job.password {
        service.push_str(&format!(
            "# The password comes from ${var}: set it with `systemctl{} set-environment {var}=...`\n\
             # or replace this line by an EnvironmentFile= with mode 0600.\n\
             PassEnvironment={var}\n",
            if system { "" } else { " --user" }
        ));
    }
    service.push_str(
        "# A backup is background work.\n\
         Nice=10\n\
         IOSchedulingClass=idle\n\
         # SIGTERM stops the backup cleanly (no snapshot; the next run reuses what was stored).\n\
         KillMode=mixed\n\
         TimeoutStopSec=30\n\
         NoNewPrivileges=yes\n",
    );
    if system {
        // Nothing here limits what may be read (it is a backup) or where the
        // repository may live; these only take away what a backup never needs.
        service.push_str(
            "PrivateTmp=yes\n\
             ProtectKernelTunables=yes\n\
             ProtectKernelModules=yes\n\
             ProtectControlGroups=yes\n\
             RestrictSUIDSGID=yes\n\
             LockPersonality=yes\n",
        );
    }
    let mut timer = format!(
        "{marker}\n\
         # `cairn schedule remove` deletes it.\n\
         [Unit]\n\
         Description=Schedule of Cairn backup job {name} ({schedule})\n\
         \n\
         [Timer]\n\
         OnCalendar={calendar}\n\
         Persistent=true\n",
        name = job.name,
        schedule = job.schedule,
    );
    if !job.jitter.is_zero() {
        let ms = job.jitter.as_millis().max(1);
        let delay = if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        timer.push_str(&format!("RandomizedDelaySec={delay}\n"));
    }
    if job.schedule.needs_second_accuracy() {
        timer.push_str("AccuracySec=1s\n");
    }
    timer.push_str(&format!(
        "Unit={service_name}\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    ));
    Ok((service, timer))
}

/// Unit files in `dir` that `install` wrote from `config`: (job, path).
fn installed_units(dir: &Path, config: &Path) -> Vec<(String, PathBuf)> {
    let marker = format!("{MARKER} {}", config.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(job) = name.strip_prefix("cairn-backup-").and_then(|n| {
            n.strip_suffix(".service")
                .or_else(|| n.strip_suffix(".timer"))
        }) else {
            continue;
        };
        let first_line = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| t.lines().next().map(String::from));
        if first_line.as_deref() == Some(marker.as_str()) {
            out.push((job.to_string(), e.path()));
        }
    }
    out.sort();
    out
}

/// One job's units as `install` wrote them.
#[derive(Debug, Clone)]
pub struct WrittenUnits {
    /// The service unit's name.
    pub service: String,
    /// The timer unit's name.
    pub timer: String,
    /// The schedule as `OnCalendar=`.
    pub on_calendar: String,
}

/// What `install` did.
#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    /// Units of jobs no longer in the config, removed: (job, file).
    pub stale_removed: Vec<(String, PathBuf)>,
    /// The units written, one entry per job.
    pub written: Vec<WrittenUnits>,
    /// Timers enabled and started (none when systemctl is not called).
    pub enabled: Vec<String>,
}

/// Writes a service and a timer for every job of `config` into the target,
/// removes the units of jobs no longer in it, and (unless the target is a
/// chosen directory) enables the timers.
pub fn install(config: &Config, target: &Target, state_dir: &Path) -> Result<InstallReport> {
    let exe = std::env::current_exe().context("finding the cairn executable")?;
    // Translate every schedule before writing anything.
    let mut units = Vec::new();
    for job in &config.jobs {
        units.push((
            job,
            render_units(job, &config.path, state_dir, &exe, target.system)?,
        ));
    }
    std::fs::create_dir_all(&target.dir)
        .with_context(|| format!("creating {}", target.dir.display()))?;
    let mut report = InstallReport::default();
    // Units of jobs that are no longer in the config.
    let stale: Vec<(String, PathBuf)> = installed_units(&target.dir, &config.path)
        .into_iter()
        .filter(|(job, _)| config.job(job).is_none())
        .collect();
    for (job, path) in stale {
        if target.systemctl && path.extension().is_some_and(|e| e == "timer") {
            let _ = target.systemctl(&["disable", "--now", &unit_names(&job).1]);
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        report.stale_removed.push((job, path));
    }
    for (job, (service, timer)) in &units {
        let (service_name, timer_name) = unit_names(&job.name);
        for (name, text) in [(&service_name, service), (&timer_name, timer)] {
            let path = target.dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        report.written.push(WrittenUnits {
            service: service_name,
            timer: timer_name,
            on_calendar: job.schedule.on_calendar().unwrap_or_default(),
        });
    }
    if target.systemctl {
        target.systemctl(&["daemon-reload"])?;
        for (job, _) in &units {
            let timer = unit_names(&job.name).1;
            target.systemctl(&["enable", "--now", &timer])?;
            report.enabled.push(timer);
        }
    }
    Ok(report)
}

/// Disables and deletes the units `install` wrote for `config`; returns the
/// files removed.
pub fn remove(config: &Config, target: &Target) -> Result<Vec<PathBuf>> {
    let installed = installed_units(&target.dir, &config.path);
    let mut removed = Vec::new();
    for (job, path) in installed {
        if target.systemctl && path.extension().is_some_and(|e| e == "timer") {
            target.systemctl(&["disable", "--now", &unit_names(&job).1])?;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(path);
    }
    if target.systemctl && !removed.is_empty() {
        target.systemctl(&["daemon-reload"])?;
    }
    Ok(removed)
}

/// The latest snapshot of a job (same host, same paths) in its repository.
fn last_snapshot(rt: &Handle, job: &Job) -> Result<Option<SnapshotMeta>> {
    let store = rt.block_on(job.repo_args().store())?;
    let password = job.password()?;
    let repo = rt.block_on(Repository::open(store, password.as_bytes()))?;
    let mut paths: Vec<String> = job.paths.iter().map(|p| p.display().to_string()).collect();
    paths.sort();
    Ok(rt
        .block_on(repo.snapshots())?
        .iter()
        .map(|(id, s)| SnapshotMeta::new(*id, s))
        .filter(|m| m.host == job.host && m.paths == paths)
        .max_by_key(|m| m.time))
}

/// When a job runs next, from its state: `None` and a note if it is overdue.
fn next_run(
    job: &Job,
    state: Option<&JobState>,
    now: Timestamp,
    tz: &TimeZone,
) -> (Option<Timestamp>, Option<&'static str>) {
    if let Some(last) = state.and_then(|s| s.last_trigger)
        && job.schedule.next_after(last, tz).is_some_and(|n| n <= now)
    {
        return (
            None,
            Some("overdue: runs as soon as the agent or timer is active"),
        );
    }
    (job.schedule.next_after(now, tz), None)
}

/// One job as `status` shows it.
#[derive(Debug)]
pub struct JobStatus {
    /// The job.
    pub job: Job,
    /// Its service unit's name.
    pub service: String,
    /// Its timer unit's name.
    pub timer: String,
    /// Both units are in the unit directory.
    pub installed: bool,
    /// `systemctl is-enabled`, `is-active` of the timer (not with a chosen
    /// unit directory).
    pub timer_state: Option<String>,
    /// What the state file records of it.
    pub saved: Option<JobState>,
    /// When it runs next.
    pub next: Option<Timestamp>,
    /// Why it has no next time: it is overdue.
    pub overdue: Option<&'static str>,
    /// Its latest snapshot, or why it could not be read.
    pub snapshot: Result<Option<SnapshotMeta>, String>,
}

/// For each job of `config`: its units, last and next run, and latest
/// snapshot (read from its repository).
pub fn status(
    rt: &Handle,
    config: &Config,
    target: &Target,
    state_dir: &Path,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<Vec<JobStatus>> {
    let state = StateStore::at(state_dir).load()?;
    let installed = installed_units(&target.dir, &config.path);
    Ok(config
        .jobs
        .iter()
        .map(|job| {
            let (service, timer) = unit_names(&job.name);
            let units_installed = installed.iter().filter(|(j, _)| *j == job.name).count() == 2;
            let timer_state = (units_installed && target.systemctl).then(|| {
                format!(
                    "{}, {}",
                    target.query("is-enabled", &timer),
                    target.query("is-active", &timer)
                )
            });
            let saved = state.jobs.get(&job.name).cloned();
            let (next, overdue) = next_run(job, saved.as_ref(), now, tz);
            JobStatus {
                job: job.clone(),
                service,
                timer,
                installed: units_installed,
                timer_state,
                saved,
                next,
                overdue,
                snapshot: last_snapshot(rt, job).map_err(|e| format!("{e:#}")),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn exec_words_are_quoted_for_systemd() {
        assert_eq!(quote("/usr/bin/cairn"), "/usr/bin/cairn");
        assert_eq!(quote("/a b/c"), "\"/a b/c\"");
        assert_eq!(quote("50%"), "\"50%%\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(env_assignment("HOME", "/home/a b"), "\"HOME=/home/a b\"");
    }

    #[test]
    fn units_carry_the_schedule_jitter_and_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "pw").unwrap();
        let text = "[jobs.home]\npaths = [\"/\"]\npassword_file = \"pw\"\nschedule = \"30 2 * * *\"\njitter = \"10m\"\n\
                    [jobs.fast]\npaths = [\"/\"]\npassword_env = \"PATH\"\nschedule = \"*/5 * * * * *\"\n";
        let config = crate::agent::config::parse(&dir.path().join("cairn.toml"), text).unwrap();
        let exe = Path::new("/opt/my tools/cairn");
        let (service, timer) = render_units(
            config.job("home").unwrap(),
            &config.path,
            Path::new("/var/lib/cairn"),
            exe,
            true,
        )
        .unwrap();
        assert!(service.starts_with(MARKER));
        assert!(service.contains(&format!(
            "ExecStart=\"/opt/my tools/cairn\" agent --config {} --state-dir /var/lib/cairn --run-once home\n",
            config.path.display()
        )));
        assert!(service.contains("Type=oneshot\n"));
        assert!(service.contains("ProtectKernelModules=yes\n"));
        assert!(timer.contains("OnCalendar=*-*-* 02:30:00\n"));
        assert!(timer.contains("Persistent=true\n"));
        assert!(timer.contains("RandomizedDelaySec=600s\n"));
        assert!(!timer.contains("AccuracySec"));
        assert!(timer.contains("Unit=cairn-backup-home.service\n"));

        let (service, timer) = render_units(
            config.job("fast").unwrap(),
            &config.path,
            Path::new("/s"),
            exe,
            false,
        )
        .unwrap();
        assert!(service.contains("PassEnvironment=PATH\n"));
        assert!(!service.contains("ProtectKernelModules"));
        assert!(!service.contains("network-online"));
        assert!(timer.contains("OnCalendar=*-*-* *:*:00/5\n"));
        assert!(timer.contains("AccuracySec=1s\n"));
        assert!(!timer.contains("RandomizedDelaySec"));
    }

    #[test]
    fn untranslatable_schedules_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "pw").unwrap();
        let text =
            "[jobs.odd]\npaths = [\"/\"]\npassword_file = \"pw\"\nschedule = \"0 0 1 * MON\"\n";
        let config = crate::agent::config::parse(&dir.path().join("cairn.toml"), text).unwrap();
        let err = render_units(
            config.job("odd").unwrap(),
            &config.path,
            Path::new("/s"),
            Path::new("/c"),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("job odd: schedule \"0 0 1 * MON\" has no systemd OnCalendar equivalent"),
            "{err}"
        );
    }
}
