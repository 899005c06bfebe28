//! Scheduled backups: `cairn agent`, `cairn schedule`, `cairn forget`
//! (issue 7, "Done means" 1–7).
//!
//! The agent runs as a real process with `--log-format json`; tests follow
//! it through its log events and state file, polling with deadlines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;

use crate::common::*;

const DEADLINE: Duration = Duration::from_secs(120);

/// A running `cairn agent`, killed if the test fails before stopping it.
struct Agent {
    child: Option<Child>,
    log_dir: PathBuf,
}

impl Agent {
    fn start(cairn: &Cairn, args: &[&str], log_dir: &Path) -> Agent {
        Agent {
            child: Some(cairn.spawn(args, log_dir)),
            log_dir: log_dir.to_path_buf(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("stderr")).unwrap_or_default()
    }

    /// The JSON log events so far (other stderr lines are skipped).
    fn events(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn events_named(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Waits until `count` events named `event` matching `pred` were logged.
    fn wait_for(
        &self,
        what: &str,
        event: &str,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found: Vec<Value> = self
                .events_named(event)
                .into_iter()
                .filter(|e| pred(e))
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- agent stderr ---\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the metrics listener, from the startup line.
    fn metrics_addr(&self) -> String {
        let mut addr = None;
        poll_until("the metrics address line", DEADLINE, || {
            addr = self
                .stderr()
                .lines()
                .find_map(|l| l.strip_prefix("metrics: listening on http://"))
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .map(String::from);
            addr.is_some()
        });
        addr.expect("metrics address")
    }

    /// Sends SIGTERM and waits; returns the exit status and how long it took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("agent running");
        let start = Instant::now();
        sigterm(child.id());
        let status = wait_with_deadline(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
            panic!(
                "agent did not exit after SIGTERM\n--- agent stderr ---\n{}",
                self.stderr()
            )
        });
        (status, start.elapsed())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sigterm(pid: u32) {
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

fn ts(v: &Value) -> Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad timestamp {v}: {e}"))
}

fn seconds_between(a: Timestamp, b: Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64()
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

/// The value of `metric{job="JOB"...}` in a scrape.
fn metric(text: &str, metric: &str, job: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&format!("job=\"{job}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The config of a job that backs up the setup's source to its repository
/// with its password file; `settings` (schedule, hooks...) follow from line 5.
fn job(name: &str, settings: &str) -> String {
    format!(
        "[jobs.{name}]\npaths = [\"{{src}}\"]\nrepository = \"{{repo}}\"\npassword_file = \"{{password}}\"\n{settings}"
    )
}

/// A repository, a password file and a place for the config and state.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cairn: Cairn,
    repo: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let (dir, root, cairn) = new_repo();
        std::fs::write(root.join("password"), format!("{PASSWORD}\n")).unwrap();
        write_files(&root.join("src"), &[("docs/a.txt", "alpha\n")]);
        std::fs::write(root.join("src/b.bin"), random_bytes(300_000, 7)).unwrap();
        Setup {
            _dir: dir,
            state: root.join("state"),
            repo: cairn.repo.clone(),
            root,
            cairn,
        }
    }

    fn src(&self) -> PathBuf {
        self.root.join("src")
    }

    /// Writes `cairn.toml`; `{repo}`, `{src}`, `{password}` and `{root}`
    /// are replaced by the setup's paths. `{job NAME}` on a line of its own stands for
    /// a job table backing up `{src}` into `{repo}` with `{password}`.
    fn config(&self, text: &str) -> PathBuf {
        let text: String = text
            .lines()
            .map(
                |line| match line.strip_prefix("{job ").and_then(|l| l.strip_suffix('}')) {
                    Some(name) => job(name, ""),
                    None => format!("{line}\n"),
                },
            )
            .collect();
        let text = text
            .replace("{repo}", s(&self.repo))
            .replace("{src}", s(&self.src()))
            .replace("{password}", s(&self.root.join("password")))
            .replace("{root}", s(&self.root));
        let path = self.root.join("cairn.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `agent --config CONFIG --state-dir STATE EXTRA...`.
    fn agent_args<'a>(&'a self, config: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "agent",
            "--config",
            s(config),
            "--state-dir",
            s(&self.state),
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Starts the agent with JSON log events; its output goes to `ROOT/LOG`.
    fn agent(&self, config: &Path, extra: &[&str], log: &str) -> Agent {
        let mut args = self.agent_args(config, &["--log-format", "json"]);
        args.extend_from_slice(extra);
        Agent::start(&self.cairn, &args, &self.root.join(log))
    }

    fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.state.join("agent.json")).expect("state file"),
        )
        .expect("state is JSON")
    }

    fn set_state(&self, state: &Value) {
        std::fs::create_dir_all(&self.state).unwrap();
        std::fs::write(
            self.state.join("agent.json"),
            serde_json::to_string_pretty(state).unwrap(),
        )
        .unwrap();
    }
}

/// Done 1: a job scheduled every second runs again and again, producing
/// snapshots; its runs (backup + hook, made to outlast the interval) never
/// overlap, and the firings that pass meanwhile are skipped.
#[test]
fn frequent_job_runs_repeatedly_and_never_overlaps() {
    let t = Setup::new();
    let config = t.config(
        r#"
{job often}
schedule = "* * * * * *"
# The run (backup + hook) lasts longer than the one-second interval.
on_success = "sleep 1.5"
"#,
    );
    let mut agent = t.agent(&config, &[], "agent");
    let finished = agent.wait_for("three finished runs", "run_finished", 3, |e| {
        e["job"] == "often"
    });
    let (status, _) = agent.terminate();
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        agent.stderr()
    );

    for run in &finished {
        assert_eq!(run["result"], "success", "{run}");
    }
    // Strictly one run at a time: each start follows the previous finish.
    let mut runs: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();
    for e in agent.events().iter().filter(|e| e["job"] == "often") {
        match e["event"].as_str() {
            Some("run_started") => {
                if let Some((_, end)) = runs.last() {
                    assert!(
                        end.is_some(),
                        "a run started before the previous one finished:\n{}",
                        agent.stderr()
                    );
                }
                runs.push((ts(&e["started"]), None));
            }
            Some("run_finished") => {
                let last = runs.last_mut().expect("finish without start");
                assert!(last.1.is_none(), "two finishes for one start");
                last.1 = Some(ts(&e["finished"]));
            }
            _ => {}
        }
    }
    for pair in runs.windows(2) {
        let prev_end = pair[0].1.expect("finished");
        assert!(pair[1].0 >= prev_end, "runs overlap: {pair:?}");
    }
    // Each run took over a second, so firings were skipped, not queued.
    let skipped: u64 = agent
        .events_named("run_skipped")
        .iter()
        .map(|e| e["skipped"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        skipped >= 1,
        "no skipped firings logged\n{}",
        agent.stderr()
    );

    let snaps = t.cairn.snapshots();
    assert!(snaps.len() >= 3, "{} snapshots", snaps.len());
    let state = t.state();
    assert_eq!(state["jobs"]["often"]["failures_total"], 0);
    assert!(state["jobs"]["often"]["running"].is_null(), "{state}");
}

/// Done 2: a run missed while the agent was stopped runs once after the
/// restart (however many firings were missed), and not again at the next start.
#[test]
fn missed_run_runs_once_after_restart() {
    let t = Setup::new();
    let config = t.config(
        r#"
{job hourly}
schedule = "hourly"
jitter = "2s"
"#,
    );
    // A first run, as systemd's timer would do it.
    t.cairn
        .run(t.agent_args(&config, &["--run-once", "hourly"]))
        .expect_success();
    assert_eq!(t.cairn.snapshots().len(), 1);

    // The agent was off for three hours since that run.
    let mut state = t.state();
    let three_hours_ago = Timestamp::now() - jiff::SignedDuration::from_hours(3);
    state["jobs"]["hourly"]["last_trigger"] = Value::String(three_hours_ago.to_string());
    t.set_state(&state);

    let mut agent = t.agent(&config, &[], "agent1");
    let started_at = Timestamp::now();
    let finished = agent.wait_for("the catch-up run", "run_finished", 1, |_| true);
    assert_eq!(finished[0]["result"], "success", "{}", agent.stderr());
    assert_eq!(finished[0]["reason"], "missed", "{}", agent.stderr());
    let missed = agent.events_named("run_missed");
    assert_eq!(missed.len(), 1, "{}", agent.stderr());
    assert_eq!(missed[0]["missed"], 3, "{}", agent.stderr());
    // Within the jitter bound of the start.
    let start = &agent.events_named("run_started")[0];
    let delay = start["delay_seconds"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&delay), "delay {delay}");
    let waited = seconds_between(started_at, ts(&start["started"]));
    assert!(
        waited <= 2.0 + 1.5,
        "catch-up started {waited:.2}s after the agent"
    );
    // Then the next run is the next full hour: the missed firings ran once.
    let next = agent.wait_for("the next scheduled run", "run_scheduled", 1, |_| true);
    let due = ts(&next[0]["due"]);
    assert!(due > Timestamp::now(), "{}", agent.stderr());
    assert_eq!(due.as_second() % 3600, 0, "not on the hour: {due}");
    let (status, _) = agent.terminate();
    assert!(status.success());
    assert_eq!(t.cairn.snapshots().len(), 2);

    // Restarting now misses nothing.
    let mut agent = t.agent(&config, &[], "agent2");
    agent.wait_for("the schedule", "run_scheduled", 1, |_| true);
    agent.terminate();
    assert!(
        agent.events_named("run_missed").is_empty(),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.events_named("run_started").is_empty(),
        "{}",
        agent.stderr()
    );
    assert_eq!(t.cairn.snapshots().len(), 2);
}

/// Done 2: every run starts within `[due, due + jitter]`, and the delays are
/// actually random.
#[test]
fn jitter_stays_within_its_bound() {
    let t = Setup::new();
    let config = t.config(
        r#"
{job jittery}
schedule = "*/2 * * * * *"
jitter = "1500ms"
"#,
    );
    let mut agent = t.agent(&config, &[], "agent");
    let starts = agent.wait_for("five runs", "run_started", 5, |_| true);
    agent.terminate();
    let mut delays = Vec::new();
    for e in &starts {
        let delay = e["delay_seconds"].as_f64().unwrap();
        assert!(
            (0.0..=1.5).contains(&delay),
            "delay {delay} outside [0, 1.5]: {e}"
        );
        let late = seconds_between(ts(&e["due"]), ts(&e["started"]));
        // Started no earlier than due + delay, and not much later.
        assert!(late >= delay - 0.001, "started before its time: {e}");
        // (plus the scheduling noise of a loaded test machine)
        assert!(
            late <= 1.5 + 1.0,
            "started {late:.3}s after due (bound 1.5s): {e}"
        );
        delays.push(delay);
    }
    let spread = delays.iter().cloned().fold(f64::MIN, f64::max)
        - delays.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.01, "delays are not random: {delays:?}");
}

/// Done 3: SIGTERM during a run stops the agent within seconds; the
/// repository checks clean; the restarted agent runs the job again at once
/// and reuses what the interrupted run stored.
#[test]
fn sigterm_stops_a_run_cleanly_and_the_next_run_reuses_its_work() {
    let t = Setup::new();
    let big = big_source();
    let total: u64 = walk(big)
        .values()
        .filter(|m| m.kind == Kind::File)
        .map(|m| m.size)
        .sum();
    let config = t.config(&format!(
        r#"
[jobs.big]
paths = ["{}"]
repository = "{{repo}}"
password_file = "{{password}}"
schedule = "hourly"
"#,
        s(big)
    ));
    // Its last run was two hours ago: it runs as soon as the agent starts.
    t.set_state(&serde_json::json!({
        "version": 1,
        "jobs": {"big": {"last_trigger": (Timestamp::now() - jiff::SignedDuration::from_hours(2)).to_string()}}
    }));
    let mut agent = t.agent(&config, &[], "agent1");
    agent.wait_for("the run to start", "run_started", 1, |_| true);
    poll_until("the first pack of the run", DEADLINE, || {
        !pack_files(&t.repo).is_empty()
    });
    let (status, took) = agent.terminate();
    assert!(status.success(), "exit status {status}\n{}", agent.stderr());
    assert!(
        took < Duration::from_secs(5),
        "agent took {took:?} to stop\n{}",
        agent.stderr()
    );
    eprintln!("the agent stopped {took:?} after SIGTERM");
    let finished = agent.events_named("run_finished");
    assert_eq!(finished.len(), 1, "{}", agent.stderr());
    assert_eq!(finished[0]["result"], "interrupted", "{}", agent.stderr());

    let stored = pack_files(&t.repo).len();
    assert!(stored >= 1);
    assert!(
        t.cairn.snapshots().is_empty(),
        "an interrupted run wrote a snapshot"
    );
    t.cairn.check_clean();

    // The restart resumes the job right away and reuses the stored packs.
    let mut agent = t.agent(&config, &[], "agent2");
    let finished = agent.wait_for("the resumed run", "run_finished", 1, |_| true);
    agent.terminate();
    assert_eq!(finished[0]["result"], "success", "{}", agent.stderr());
    assert_eq!(finished[0]["reason"], "interrupted", "{}", agent.stderr());
    let bytes_new = finished[0]["bytes_new"].as_u64().unwrap();
    assert!(
        bytes_new + 8 * MIB <= total,
        "the resumed run stored {bytes_new} new bytes of {total}: nothing was reused"
    );
    let snaps = t.cairn.snapshots();
    assert_eq!(snaps.len(), 1);
    assert!(
        snaps[0]["stats"]["chunks_reused"].as_u64().unwrap() > 0,
        "{}",
        snaps[0]
    );
    t.cairn.check_clean();
}

/// Done 4: an unreachable repository fails the job; the failure hook gets
/// the job and the error; the next firing retries; the metrics show the age
/// of the last success growing until a run succeeds again.
#[test]
fn failures_run_hooks_retry_and_show_in_metrics() {
    let t = Setup::new();
    let hooks = t.root.join("hooks.log");
    let config = t.config(&job(
        "flaky",
        &format!(
            r#"schedule = "* * * * * *"
on_success = 'echo "success|$CAIRN_JOB|$CAIRN_SNAPSHOT_ID" >> {log}'
on_failure = 'echo "failure|$CAIRN_JOB|$CAIRN_ERROR" >> {log}'
"#,
            log = s(&hooks)
        ),
    ));
    let hook_lines = |kind: &str| -> Vec<String> {
        std::fs::read_to_string(&hooks)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{kind}|")))
            .map(String::from)
            .collect()
    };
    let mut agent = t.agent(&config, &["--metrics-addr", "127.0.0.1:0"], "agent");
    let addr = agent.metrics_addr();
    poll_until("a successful run", DEADLINE, || {
        !hook_lines("success").is_empty()
    });
    let first = hook_lines("success")[0].clone();
    let id = first.rsplit('|').next().unwrap().to_string();
    assert_eq!(id.len(), 64, "{first}");
    assert!(
        t.cairn.snapshots().iter().any(|v| v["id"] == id.as_str()),
        "{first}"
    );

    // The repository becomes unreachable.
    std::fs::rename(t.repo.join("config"), t.root.join("config.away")).unwrap();
    poll_until("two failure hooks", DEADLINE, || {
        hook_lines("failure").len() >= 2
    });
    let failures = hook_lines("failure");
    assert!(
        failures.iter().all(|l| l.starts_with("failure|flaky|")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("no repository at") && l.contains(s(&t.repo))),
        "{failures:?}"
    );
    let text = scrape(&addr);
    let success_time =
        metric(&text, "cairn_job_last_success_timestamp_seconds", "flaky").expect(&text);
    let age = metric(&text, "cairn_job_last_success_age_seconds", "flaky").expect(&text);
    let fails = metric(&text, "cairn_job_failures_total", "flaky").expect(&text);
    assert!(fails >= 2.0, "{text}");
    // Each retry fails, and the age keeps growing.
    let mut later = String::new();
    poll_until("more failures and an older last success", DEADLINE, || {
        later = scrape(&addr);
        metric(&later, "cairn_job_last_success_age_seconds", "flaky").is_some_and(|a| a > age + 1.0)
            && metric(&later, "cairn_job_failures_total", "flaky").is_some_and(|f| f > fails)
    });
    assert_eq!(
        metric(&later, "cairn_job_last_success_timestamp_seconds", "flaky"),
        Some(success_time)
    );

    // Reachable again: the next firing succeeds.
    let successes = hook_lines("success").len();
    std::fs::rename(t.root.join("config.away"), t.repo.join("config")).unwrap();
    poll_until("a success after the failures", DEADLINE, || {
        hook_lines("success").len() > successes
    });
    let mut after = String::new();
    poll_until("the age to drop", DEADLINE, || {
        after = scrape(&addr);
        metric(&after, "cairn_job_last_success_age_seconds", "flaky").is_some_and(|a| a < age)
    });
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    let state = t.state();
    assert!(
        state["jobs"]["flaky"]["failures_total"].as_u64().unwrap() >= 2,
        "{state}"
    );
    t.cairn.check_clean();
}

fn require_systemd_analyze() {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: this test verifies the generated units with it. \
         Install systemd (`apt-get install -y systemd`; scripts/setup.sh does this)."
    );
}

/// `systemd-analyze verify` of unit files: exit 0 and not one warning.
fn verify_units(files: &[PathBuf], user: bool) {
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("systemd-analyze");
    if user {
        // A user manager needs a runtime directory, even offline.
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    let out = cmd
        .arg("verify")
        .args(files)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze{} verify {files:?}: {}\n{stderr}",
        if user { " --user" } else { "" },
        out.status
    );
}

/// When systemd's calendar fires `expr`: RFC 3339 UTC times.
fn systemd_calendar(expr: &str, n: usize) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .env("TZ", "UTC")
        .args(["calendar", &format!("--iterations={n}"), expr])
        .output()
        .expect("systemd-analyze calendar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
        .map(|l| {
            // "    Next elapse: Wed 2026-11-25 02:11:50 UTC"
            let words: Vec<&str> = l.split_whitespace().collect();
            let n = words.len();
            format!("{}T{}Z", words[n - 3], words[n - 2])
        })
        .collect()
}

/// Done 5: `schedule install` writes units that `systemd-analyze verify`
/// accepts, with OnCalendar expressions that fire when the agent would;
/// `status` reports them; `remove` deletes them.
#[test]
fn schedule_install_writes_units_systemd_accepts_and_status_reports_them() {
    require_systemd_analyze();
    let t = Setup::new();
    let config = t.config(
        r#"
{job nightly}
schedule = "30 2 * * *"
jitter = "10m"

[jobs.weekdays]
paths = ["{src}/docs"]
repository = "{repo}"
password_file = "{password}"
schedule = "0 9-17/4 * * MON-FRI"

[jobs.fast]
paths = ["{src}"]
repository = "{repo}"
password_env = "CAIRN_TEST_JOB_PASSWORD"
schedule = "*/15 * * * * *"
"#,
    );
    let cairn = t
        .cairn
        .with_env("CAIRN_TEST_JOB_PASSWORD", PASSWORD)
        .with_env("TZ", "UTC");
    let units = t.root.join("units");
    let run = |verb: &str, extra: &[&str]| {
        let mut args = vec!["--state-dir", s(&t.state)];
        args.extend_from_slice(extra);
        cairn.schedule(verb, &config, &units, &args)
    };
    let out = run("install", &["--system"]);
    out.expect_success();
    let mut files = Vec::new();
    for job in ["nightly", "weekdays", "fast"] {
        for kind in ["service", "timer"] {
            let f = units.join(format!("cairn-backup-{job}.{kind}"));
            assert!(f.exists(), "{} missing\n{}", f.display(), out.describe());
            files.push(f);
        }
    }
    verify_units(&files, false);
    let timer = std::fs::read_to_string(units.join("cairn-backup-nightly.timer")).unwrap();
    for line in [
        "OnCalendar=*-*-* 02:30:00",
        "Persistent=true",
        "RandomizedDelaySec=600s",
    ] {
        assert!(timer.lines().any(|l| l == line), "{line} missing:\n{timer}");
    }
    let service = std::fs::read_to_string(units.join("cairn-backup-fast.service")).unwrap();
    assert!(service.contains("--run-once fast"), "{service}");
    assert!(
        service.contains("PassEnvironment=CAIRN_TEST_JOB_PASSWORD"),
        "{service}"
    );

    // The timers fire when the agent would.
    let check = cairn.run(["agent", "--config", s(&config), "--check-config", "--json"]);
    check.expect_success();
    let jobs = check.json_last_line()["jobs"].as_array().unwrap().clone();
    for job in &jobs {
        let name = job["name"].as_str().unwrap();
        let timer =
            std::fs::read_to_string(units.join(format!("cairn-backup-{name}.timer"))).unwrap();
        let calendar = timer
            .lines()
            .find_map(|l| l.strip_prefix("OnCalendar="))
            .unwrap();
        assert_eq!(job["on_calendar"], calendar);
        let ours: Vec<String> = job["next_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let theirs = systemd_calendar(calendar, 3);
        // The two were computed a moment apart: systemd's list starts at one of ours.
        let at = ours
            .iter()
            .position(|t| *t == theirs[0])
            .unwrap_or_else(|| panic!("{name}: systemd {theirs:?}, cairn {ours:?}"));
        assert!(at <= 1, "{name}: systemd {theirs:?}, cairn {ours:?}");
        assert_eq!(&ours[at..at + 3], &theirs[..], "{name}: {calendar}");
    }

    // User units verify too.
    let user_units = t.root.join("user-units");
    let out = cairn.schedule(
        "install",
        &config,
        &user_units,
        &["--user", "--state-dir", s(&t.state)],
    );
    out.expect_success();
    let user_files: Vec<PathBuf> = std::fs::read_dir(&user_units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(user_files.len(), 6);
    verify_units(&user_files, true);

    // Status before and after a run.
    let out = run("status", &[]);
    out.expect_success();
    let text = out.stdout_text();
    assert!(
        text.contains("cairn-backup-nightly.service, cairn-backup-nightly.timer in"),
        "{text}"
    );
    assert!(text.contains("last run:      never"), "{text}");
    assert!(text.contains("last snapshot: none yet"), "{text}");
    cairn
        .run(t.agent_args(&config, &["--run-once", "nightly"]))
        .expect_success();
    let out = run("status", &[]);
    out.expect_success();
    let status = run("status", &["--json"]);
    status.expect_success();
    let report = status.json_last_line();
    let nightly = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "nightly")
        .unwrap()
        .clone();
    assert_eq!(nightly["units"]["installed"], true, "{nightly}");
    assert_eq!(nightly["last_run"]["result"], "success", "{nightly}");
    assert!(
        nightly["next_run"].as_str().unwrap().ends_with("02:30:00Z"),
        "{nightly}"
    );
    let age = nightly["last_snapshot"]["age_seconds"].as_f64().unwrap();
    assert!((0.0..120.0).contains(&age), "{nightly}");
    let text = out.stdout_text();
    assert!(text.contains(": success"), "{text}");
    assert!(
        text.contains(&format!(
            "last snapshot: {}",
            &nightly["last_snapshot"]["id"].as_str().unwrap()[..8]
        )),
        "{text}"
    );

    // A job removed from the config loses its units at the next install.
    let trimmed = std::fs::read_to_string(&config).unwrap();
    let trimmed = &trimmed[..trimmed.find("[jobs.fast]").unwrap()];
    std::fs::write(&config, trimmed).unwrap();
    let out = run("install", &["--system"]);
    out.expect_success();
    assert!(
        !units.join("cairn-backup-fast.timer").exists(),
        "{}",
        out.describe()
    );
    assert!(units.join("cairn-backup-nightly.timer").exists());

    // A schedule systemd cannot express is refused, and nothing is written.
    t.config(&format!(
        "{trimmed}\n{}",
        job("odd", "schedule = \"0 0 1 * MON\"\n")
    ));
    run("install", &["--system"]).expect_clean_error(
        1,
        "job odd: schedule \"0 0 1 * MON\" has no systemd OnCalendar equivalent",
    );
    assert!(!units.join("cairn-backup-odd.timer").exists());

    let out = run("remove", &[]);
    out.expect_success();
    assert!(
        std::fs::read_dir(&units).unwrap().next().is_none(),
        "{}",
        out.describe()
    );
}

/// Done 6: the example config the README shows loads, and installs as
/// units systemd accepts.
#[test]
fn readme_example_config_loads() {
    require_systemd_analyze();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/cairn.example.toml");
    // The README shows this exact file.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(
        readme.contains(text.trim_end()),
        "README.md must show contrib/cairn.example.toml verbatim"
    );
    let (_dir, home) = tempdir();
    for d in ["Documents", "Pictures", ".config/cairn"] {
        std::fs::create_dir_all(home.join(d)).unwrap();
    }
    std::fs::write(home.join(".config/cairn/password"), "example password\n").unwrap();
    let cairn = Cairn::new(home.join("unused")).with_env("HOME", s(&home));
    let out = cairn.run(["agent", "--config", s(&example), "--check-config", "--json"]);
    out.expect_success();
    let report = out.json_last_line();
    let jobs = report["jobs"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["documents", "home"]);
    for job in jobs {
        assert!(job["on_calendar"].is_string(), "{job}");
        assert_eq!(job["next_runs"].as_array().unwrap().len(), 5, "{job}");
        assert!(job["retention"].is_string(), "{job}");
    }
    assert_eq!(jobs[1]["paths"][0], s(&home));
    let text = cairn.run(["agent", "--config", s(&example), "--check-config"]);
    text.expect_success();
    assert!(
        text.stdout_text()
            .contains("2 job(s), configuration is valid"),
        "{}",
        text.describe()
    );

    let units = home.join("units");
    let out = cairn.schedule("install", &example, &units, &[]);
    out.expect_success();
    let files: Vec<PathBuf> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 4, "{}", out.describe());
    verify_units(&files, false);
}

/// The shipped units (`contrib/systemd/`) pass `systemd-analyze verify`
/// (with ExecStart pointed at a binary that exists here).
#[test]
fn contrib_units_verify() {
    require_systemd_analyze();
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let (_dir, tmp) = tempdir();
    let exe = env!("CARGO_BIN_EXE_cairn");
    for (file, user) in [
        ("cairn-agent.service", false),
        ("cairn-index.service", false),
        ("user/cairn-agent.service", true),
    ] {
        let text = std::fs::read_to_string(contrib.join(file)).unwrap();
        assert!(
            text.contains("NoNewPrivileges=yes"),
            "{file} is not hardened"
        );
        let dir = tmp.join(if user { "user" } else { "system" });
        std::fs::create_dir_all(&dir).unwrap();
        let name = Path::new(file).file_name().unwrap();
        let local = text
            .replace("/usr/local/bin/cairn-index", exe)
            .replace("/usr/local/bin/cairn", exe);
        std::fs::write(dir.join(name), local).unwrap();
        verify_units(&[dir.join(name)], user);
    }
}

/// Done 7: config errors name the file, the line and the key, in one line,
/// and nothing runs.
#[test]
fn config_errors_name_file_line_and_key_before_anything_runs() {
    let t = Setup::new();
    let marker = t.root.join("hook-ran");
    let home = |body: &str| {
        job(
            "home",
            &format!(
                "on_success = \"touch {m}\"\non_failure = \"touch {m}\"\n{body}",
                m = s(&marker)
            ),
        )
    };
    let missing_path = home("schedule = \"* * * * * *\"\n")
        .replace("[\"{src}\"]", "[\"{src}\", \"{root}/nowhere\"]");
    // The column of the second path: after `paths = ["SRC", `.
    let column = "paths = [\"\"".len() + s(&t.src()).len() + ", ".len() + 1;
    let cases = [
        // (config, line:column and key that the error must name, message)
        (
            home("schedule = \"* * * * * *\"\nexclued = [\"*.tmp\"]\n"),
            ":8:1: jobs.home.exclued:".to_string(),
            "unknown key `exclued`",
        ),
        (
            home("schedule = \"0 */2 * * * * *\"\n"),
            ":7:12: jobs.home.schedule:".to_string(),
            "invalid cron expression \"0 */2 * * * * *\"",
        ),
        (
            missing_path,
            format!(":2:{column}: jobs.home.paths[1]:"),
            "nowhere: no such file or directory",
        ),
    ];
    for (text, location, message) in cases {
        let config = t.config(&text);
        let want = format!("{}{location}", s(&config));
        for extra in [&[][..], &["--check-config"][..]] {
            let out = t.cairn.run(t.agent_args(&config, extra));
            out.expect_clean_error(1, &want);
            assert!(out.stderr.contains(message), "{}", out.describe());
            assert!(out.stdout.is_empty(), "{}", out.describe());
        }
    }
    assert!(!t.state.exists(), "the agent started despite the errors");
    assert!(!marker.exists());
    assert!(t.cairn.snapshots().is_empty());
}

/// `cairn forget`: policy, reasons, explicit ids, dry run; data stays.
#[test]
fn forget_applies_the_policy_and_removes_only_manifests() {
    let t = Setup::new();
    let src = t.src();
    let first = t.cairn.backup(&[&src], &["--tag", "keep"]).snapshot_id();
    let second = t.cairn.backup(&[&src], &[]).snapshot_id();
    let third = t.cairn.backup(&[&src], &[]).snapshot_id();
    let other = t.cairn.backup(&[&src.join("docs")], &[]).snapshot_id();
    let packs = pack_files(&t.repo).len();

    let dry = t.cairn.run([
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "keep",
        "--dry-run",
        "--json",
    ]);
    dry.expect_success();
    let plan = dry.json_last_line();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["removed"], serde_json::json!([second]));
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{plan}");
    let main = groups.iter().find(|g| g["paths"][0] == s(&src)).unwrap();
    let reasons = |id: &str| {
        main["keep"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["reasons"].clone())
    };
    assert_eq!(reasons(&third), Some(serde_json::json!(["last snapshot"])));
    assert_eq!(reasons(&first), Some(serde_json::json!(["has tags keep"])));
    assert_eq!(t.cairn.snapshots().len(), 4);

    let out = t
        .cairn
        .run(["forget", "--keep-last", "1", "--keep-tag", "keep"]);
    out.expect_success();
    let text = out.stdout_text();
    assert!(text.contains("removed 1 snapshot(s)"), "{text}");
    assert!(text.contains(&second[..8]), "{text}");
    let left: Vec<String> = t
        .cairn
        .snapshots()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&second));

    let out = t.cairn.run(["forget", &other[..10]]);
    out.expect_success();
    assert!(
        out.stdout_text()
            .contains(&format!("removed snapshot {}", &other[..8])),
        "{}",
        out.describe()
    );
    assert_eq!(t.cairn.snapshots().len(), 2);

    t.cairn
        .run(["forget", &first, "--keep-last", "1"])
        .expect_clean_error(1, "not both");
    let out = t.cairn.run(["forget"]);
    out.expect_success();
    assert!(out.stdout_text().contains("no snapshots will be removed"));
    assert_eq!(
        pack_files(&t.repo).len(),
        packs,
        "forget must not touch packs"
    );
    t.cairn.check_clean();
}

/// `prune = true` in a job's retention: after the policy removed a
/// snapshot, the run prunes too (default options: recent data waits).
#[test]
fn retention_with_prune_runs_prune_after_forgetting() {
    let t = Setup::new();
    let config = t.config(
        r#"
{job nightly}
schedule = "daily"

[jobs.nightly.retention]
keep_last = 1
prune = true
"#,
    );
    let run_once = || {
        let out = t
            .cairn
            .run(t.agent_args(&config, &["--run-once", "nightly"]));
        out.expect_success();
        out
    };
    let first = run_once();
    assert!(
        !first.all_text().contains("chunks condemned"),
        "{}",
        first.describe()
    );
    std::fs::write(t.src().join("new.txt"), "changed\n").unwrap();
    let second = run_once();
    assert!(
        second.all_text().contains("] prune: 0 chunks condemned"),
        "{}",
        second.describe()
    );
    assert_eq!(t.cairn.snapshots().len(), 1);
    t.cairn.check_clean();
}
