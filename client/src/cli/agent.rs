//! `cairn agent`: the scheduler in the foreground, `--run-once JOB`, and
//! `--check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use cairn_client::agent::config::{Config, LogFormat};
use cairn_client::agent::state::{RunResult, StateStore};
use cairn_client::agent::{self, Stopped, load_config, metrics, state_dir};
use cairn_client::duration;
use cairn_client::retention::local_time;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

/// `cairn agent` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Config file [default: $XDG_CONFIG_HOME/cairn/cairn.toml or ~/.config/cairn/cairn.toml].
    #[arg(long, short = 'c', env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file, show each job's schedule and next runs, and exit.
    #[arg(long)]
    check_config: bool,
    /// Run this job once, now, and exit (what the systemd units of `cairn schedule` run).
    #[arg(long, value_name = "JOB")]
    run_once: Option<String>,
    /// Where to keep the agent's state [default: $XDG_STATE_HOME/cairn or ~/.local/state/cairn].
    #[arg(long, env = "CAIRN_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log format [default: the config's agent.log_format, else json with --json, else text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9184; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// Runs `cairn agent`.
pub fn run(rt: &Runtime, g: &Globals, a: AgentArgs) -> Result<u8> {
    let config = load_config(a.config.as_deref())?;
    if a.check_config {
        print_check(&config, g.json);
        return Ok(0);
    }
    let format = a
        .log_format
        .or(config.agent.log_format)
        .unwrap_or(if g.json {
            LogFormat::Json
        } else {
            LogFormat::Text
        });
    let _ = g.agent_log.set(format);
    let store = StateStore::open(&state_dir(a.state_dir.as_deref(), &config)?)?;
    if let Some(name) = &a.run_once {
        let job = config
            .job(name)
            .ok_or_else(|| {
                let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
                anyhow!(
                    "no job {name:?} in {} (jobs: {})",
                    config.path.display(),
                    names.join(", ")
                )
            })?
            .clone();
        let result = rt.block_on(agent::run_once(rt.handle(), config, store, job))?;
        // 0 on success, 3 if some files could not be read, 1 on failure or
        // when interrupted.
        return Ok(match result {
            RunResult::Success => 0,
            RunResult::Partial => 3,
            RunResult::Failure | RunResult::Interrupted => 1,
        });
    }
    let metrics_addr = a.metrics_addr.or(config.agent.metrics_addr);
    let listener = match metrics_addr {
        Some(addr) => {
            let listener = rt.block_on(metrics::bind(addr))?;
            // Tests (and people) find a port-0 listener from this line.
            eprintln!(
                "metrics: listening on http://{}/metrics",
                listener.local_addr()?
            );
            Some(listener)
        }
        None => None,
    };
    match rt.block_on(agent::serve(rt.handle(), config, store, listener))? {
        Stopped::Cleanly => Ok(0),
        // A backup thread that ignores its cancel flag would keep the
        // runtime from shutting down; the repository stays consistent
        // whenever the process ends (packs are create-only, no snapshot yet).
        Stopped::TimedOut => std::process::exit(1),
    }
}

/// `--check-config`: the jobs, their schedules and next runs.
fn print_check(config: &Config, json: bool) {
    let tz = TimeZone::system();
    let jobs = agent::plan(config, Timestamp::now(), &tz, 5);
    if json {
        let list: Vec<_> = jobs
            .iter()
            .map(|p| {
                json!({
                    "name": p.job.name,
                    "schedule": p.job.schedule.to_string(),
                    "on_calendar": p.on_calendar.as_ref().ok(),
                    "on_calendar_error": p.on_calendar.as_ref().err(),
                    "jitter_seconds": p.job.jitter.as_secs_f64(),
                    "next_runs": p.next.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    "paths": p.job.paths,
                    "repository": p.job.repo_args().local_path().ok(),
                    "retention": p.job.retention.as_ref().map(|r| r.to_string()),
                })
            })
            .collect();
        print_json(&json!({"config": config.path, "jobs": list}));
        return;
    }
    println!(
        "{}: {} job(s), configuration is valid",
        config.path.display(),
        jobs.len()
    );
    for p in &jobs {
        let job = &p.job;
        println!();
        println!("job {}", job.name);
        println!(
            "  schedule:   {}{}",
            job.schedule,
            match &p.on_calendar {
                Ok(c) => format!(" (systemd OnCalendar={c})"),
                Err(_) => " (no systemd equivalent: runs under `cairn agent` only)".into(),
            }
        );
        if !job.jitter.is_zero() {
            println!("  jitter:     up to {}", duration::format(job.jitter));
        }
        println!(
            "  next runs:  {}",
            p.next
                .iter()
                .map(|t| local_time(*t, &tz))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let paths: Vec<String> = job.paths.iter().map(|p| p.display().to_string()).collect();
        println!("  paths:      {}", paths.join(" "));
        match job.repo_args().local_path() {
            Ok(p) => println!("  repository: {}", p.display()),
            Err(e) => println!("  repository: {e:#}"),
        }
        if let Some(r) = &job.retention {
            println!("  retention:  {r}");
        }
    }
}
