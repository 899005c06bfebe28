//! `cairn schedule install|remove|status`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cairn_client::agent::{self, load_config};
use cairn_client::duration;
use cairn_client::retention::local_time;
use cairn_client::schedule::{self, JobStatus, Target, UnitPlace};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

/// `cairn schedule`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum ScheduleCommand {
    /// Write a systemd service and timer for each job, and enable the timers.
    Install(UnitArgs),
    /// Disable and delete the units `install` wrote.
    Remove(UnitArgs),
    /// For each job: its units, last run, result, next run, and the age of its last snapshot.
    Status(UnitArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct UnitArgs {
    /// Config file [default: $XDG_CONFIG_HOME/cairn/cairn.toml or ~/.config/cairn/cairn.toml].
    #[arg(long, short = 'c', env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's state directory [default: $XDG_STATE_HOME/cairn or ~/.local/state/cairn].
    #[arg(long, env = "CAIRN_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Write units to DIR and do not call systemctl (for tests, packaging, review).
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
    /// User units (the default unless run as root).
    #[arg(long, conflicts_with = "system")]
    user: bool,
    /// System units (the default as root).
    #[arg(long)]
    system: bool,
}

impl UnitArgs {
    fn target(&self) -> Result<Target> {
        Target::new(&UnitPlace {
            unit_dir: self.unit_dir.clone(),
            user: self.user,
            system: self.system,
        })
    }
}

/// Runs `cairn schedule ...`.
pub fn run(rt: &Runtime, g: &Globals, a: ScheduleArgs) -> Result<u8> {
    match a.command {
        ScheduleCommand::Install(a) => install(&a),
        ScheduleCommand::Remove(a) => remove(&a),
        ScheduleCommand::Status(a) => status(rt, &a, g.json),
    }
}

fn install(a: &UnitArgs) -> Result<u8> {
    let config = load_config(a.config.as_deref())?;
    let target = a.target()?;
    let state_dir = agent::state_dir(a.state_dir.as_deref(), &config)?;
    let report = schedule::install(&config, &target, &state_dir)?;
    for (job, path) in &report.stale_removed {
        println!(
            "removed {} (job {job} is no longer in the config)",
            path.display()
        );
    }
    for w in &report.written {
        println!(
            "wrote {} and {} in {} (OnCalendar={})",
            w.service,
            w.timer,
            target.dir().display(),
            w.on_calendar
        );
    }
    if target.calls_systemctl() {
        for timer in &report.enabled {
            println!("enabled {timer}");
        }
    } else {
        let user = if target.system() { "" } else { " --user" };
        println!(
            "not calling systemctl (--unit-dir); to activate: systemctl{user} daemon-reload && systemctl{user} enable --now {}",
            report
                .written
                .iter()
                .map(|w| w.timer.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(0)
}

fn remove(a: &UnitArgs) -> Result<u8> {
    let config = load_config(a.config.as_deref())?;
    let target = a.target()?;
    let removed = schedule::remove(&config, &target)?;
    if removed.is_empty() {
        println!(
            "no units from {} in {}",
            config.path.display(),
            target.dir().display()
        );
    }
    for path in &removed {
        println!("removed {}", path.display());
    }
    Ok(0)
}

fn status(rt: &Runtime, a: &UnitArgs, json: bool) -> Result<u8> {
    let config = load_config(a.config.as_deref())?;
    let target = a.target()?;
    let state_dir = agent::state_dir(a.state_dir.as_deref(), &config)?;
    let tz = TimeZone::system();
    let now = Timestamp::now();
    let report = schedule::status(rt.handle(), &config, &target, &state_dir, now, &tz)?;
    if json {
        let list: Vec<_> = report
            .iter()
            .map(|r| status_json(r, target.dir(), now))
            .collect();
        print_json(&json!({"config": config.path, "state_dir": state_dir, "jobs": list}));
        return Ok(0);
    }
    for (i, r) in report.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_status(r, target.dir(), now, &tz);
    }
    Ok(0)
}

fn age(from: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(from).as_secs().max(0) as u64;
    duration::format(std::time::Duration::from_secs(secs))
}

fn status_json(s: &JobStatus, dir: &Path, now: Timestamp) -> serde_json::Value {
    let last = s.saved.as_ref().and_then(|s| s.last_run.as_ref());
    json!({
        "job": s.job.name,
        "schedule": s.job.schedule.to_string(),
        "on_calendar": s.job.schedule.on_calendar().ok(),
        "units": {
            "installed": s.installed,
            "service": s.service,
            "timer": s.timer,
            "dir": dir,
            "state": s.timer_state,
        },
        "last_run": last.map(|r| json!({
            "started": r.started.to_string(),
            "finished": r.finished.to_string(),
            "result": r.result.as_str(),
            "error": r.error,
            "snapshot": r.snapshot,
            "seconds": r.duration_seconds,
        })),
        "running": s.saved.as_ref().and_then(|s| s.running.as_ref()).map(|r| json!({"pid": r.pid, "started": r.started.to_string()})),
        "last_success": s.saved.as_ref().and_then(|s| s.last_success).map(|t| t.to_string()),
        "next_run": s.next.map(|t| t.to_string()),
        "overdue": s.overdue.is_some(),
        "last_snapshot": match &s.snapshot {
            Ok(Some(snap)) => json!({
                "id": snap.id,
                "time": snap.time.to_string(),
                "age_seconds": now.duration_since(snap.time).as_secs_f64(),
            }),
            Ok(None) => serde_json::Value::Null,
            Err(e) => json!({"error": e}),
        },
    })
}

fn print_status(s: &JobStatus, dir: &Path, now: Timestamp, tz: &TimeZone) {
    println!("job {} ({})", s.job.name, s.job.schedule);
    if s.installed {
        println!(
            "  units:         {}, {} in {}{}",
            s.service,
            s.timer,
            dir.display(),
            s.timer_state
                .as_ref()
                .map(|t| format!(" (timer {t})"))
                .unwrap_or_default()
        );
    } else {
        println!("  units:         not installed in {}", dir.display());
    }
    match s.saved.as_ref().and_then(|s| s.last_run.as_ref()) {
        Some(r) => println!(
            "  last run:      {} ({} ago, {:.1}s): {}{}",
            local_time(r.started, tz),
            age(r.started, now),
            r.duration_seconds,
            r.result.as_str(),
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => println!("  last run:      never"),
    }
    if let Some(r) = s.saved.as_ref().and_then(|s| s.running.as_ref()) {
        println!(
            "  running:       since {} (pid {})",
            local_time(r.started, tz),
            r.pid
        );
    }
    match (s.next, s.overdue) {
        (_, Some(note)) => println!("  next run:      {note}"),
        (Some(t), None) => println!(
            "  next run:      {} (in {})",
            local_time(t, tz),
            age(now, t)
        ),
        (None, None) => println!("  next run:      never (the schedule does not fire again)"),
    }
    match &s.snapshot {
        Ok(Some(snap)) => println!(
            "  last snapshot: {} at {}, {} ago",
            snap.id.short(),
            local_time(snap.time, tz),
            age(snap.time, now)
        ),
        Ok(None) => println!("  last snapshot: none yet"),
        Err(e) => println!("  last snapshot: unknown ({e})"),
    }
}
