//! The agent's Prometheus metrics and the `/metrics` endpoint.
//!
//! The recovery-point indicator is `cairn_job_last_success_age_seconds`:
//! seconds since the last run of a job that wrote a snapshot (or, for a job
//! that never succeeded, since the agent first saw it). It is computed at
//! scrape time, so it keeps growing while backups fail or the agent is
//! stuck, which is exactly when an alert should fire:
//! `cairn_job_last_success_age_seconds > 2 * 86400`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::state::{JobState, RunRecord, RunResult};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    job: String,
    result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    last_success: Family<JobLabel, FloatGauge>,
    last_success_age: Family<JobLabel, FloatGauge>,
    last_duration: Family<JobLabel, FloatGauge>,
    last_bytes_new: Family<JobLabel, Gauge>,
    last_bytes_stored: Family<JobLabel, Gauge>,
    next_run: Family<JobLabel, FloatGauge>,
    running: Family<JobLabel, Gauge>,
    runs: Family<RunLabel, Counter>,
    failures: Family<JobLabel, Counter>,
    skipped: Family<JobLabel, Counter>,
    /// Per job, what the success age is measured from.
    age_reference: Mutex<HashMap<String, Timestamp>>,
}

fn seconds(t: Timestamp) -> f64 {
    t.as_nanosecond() as f64 / 1e9
}

impl Metrics {
    /// Registers the metrics and seeds them from the saved state, so that
    /// the recovery point survives agent restarts.
    pub fn new(jobs: &[(String, JobState)]) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            last_success: Family::default(),
            last_success_age: Family::default(),
            last_duration: Family::default(),
            last_bytes_new: Family::default(),
            last_bytes_stored: Family::default(),
            next_run: Family::default(),
            running: Family::default(),
            runs: Family::default(),
            failures: Family::default(),
            skipped: Family::default(),
            age_reference: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "cairn_job_last_success_timestamp_seconds",
            "Start time of the last run that wrote a snapshot (Unix seconds)",
            m.last_success.clone(),
        );
        registry.register(
            "cairn_job_last_success_age_seconds",
            "Seconds since the last run that wrote a snapshot (since the job was first seen if none did)",
            m.last_success_age.clone(),
        );
        registry.register(
            "cairn_job_last_run_duration_seconds",
            "Wall time of the last finished run",
            m.last_duration.clone(),
        );
        registry.register(
            "cairn_job_last_run_bytes_new",
            "Raw bytes of new chunks in the last run",
            m.last_bytes_new.clone(),
        );
        registry.register(
            "cairn_job_last_run_bytes_stored",
            "Bytes written to the store by the last run",
            m.last_bytes_stored.clone(),
        );
        registry.register(
            "cairn_job_next_run_timestamp_seconds",
            "When the job runs next (Unix seconds, before jitter)",
            m.next_run.clone(),
        );
        registry.register(
            "cairn_job_running",
            "1 while a run is in progress",
            m.running.clone(),
        );
        registry.register("cairn_job_runs", "Finished runs by result", m.runs.clone());
        registry.register("cairn_job_failures", "Failed runs", m.failures.clone());
        registry.register(
            "cairn_job_skipped_runs",
            "Scheduled runs skipped because the previous run was still going",
            m.skipped.clone(),
        );
        let m = Metrics { registry, ..m };
        for (job, state) in jobs {
            let label = label(job);
            let _ = m.failures.get_or_create(&label);
            let _ = m.skipped.get_or_create(&label);
            m.running.get_or_create(&label).set(0);
            for result in ["success", "partial", "failure", "interrupted"] {
                let _ = m.runs.get_or_create(&RunLabel {
                    job: job.clone(),
                    result: result.into(),
                });
            }
            if let Some(t) = state.last_success {
                m.last_success.get_or_create(&label).set(seconds(t));
            }
            if let Some(run) = &state.last_run {
                m.record_sizes(&label, run);
            }
            if let Some(reference) = state.age_reference() {
                m.lock_refs().insert(job.clone(), reference);
            }
        }
        m
    }

    fn lock_refs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Timestamp>> {
        self.age_reference.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_sizes(&self, label: &JobLabel, run: &RunRecord) {
        self.last_duration
            .get_or_create(label)
            .set(run.duration_seconds);
        self.last_bytes_new
            .get_or_create(label)
            .set(i64::try_from(run.bytes_new).unwrap_or(i64::MAX));
        self.last_bytes_stored
            .get_or_create(label)
            .set(i64::try_from(run.bytes_stored).unwrap_or(i64::MAX));
    }

    /// A run started.
    pub fn run_started(&self, job: &str) {
        self.running.get_or_create(&label(job)).set(1);
    }

    /// A run's backup ended with `run` (its hooks may still be running).
    pub fn run_recorded(&self, job: &str, run: &RunRecord) {
        let label = label(job);
        self.runs
            .get_or_create(&RunLabel {
                job: job.into(),
                result: run.result.as_str().into(),
            })
            .inc();
        match run.result {
            RunResult::Failure | RunResult::Partial => {
                self.failures.get_or_create(&label).inc();
            }
            RunResult::Success | RunResult::Interrupted => {}
        }
        if run.result != RunResult::Interrupted {
            self.record_sizes(&label, run);
        }
        if run.result.wrote_snapshot() {
            self.last_success
                .get_or_create(&label)
                .set(seconds(run.started));
            self.lock_refs().insert(job.into(), run.started);
        }
    }

    /// A run is over, hooks included.
    pub fn run_ended(&self, job: &str) {
        self.running.get_or_create(&label(job)).set(0);
    }

    /// The next scheduled run.
    pub fn next_run(&self, job: &str, at: Option<Timestamp>) {
        self.next_run
            .get_or_create(&label(job))
            .set(at.map_or(f64::NAN, seconds));
    }

    /// Scheduled runs skipped because a run was still going.
    pub fn skipped(&self, job: &str, n: u64) {
        self.skipped.get_or_create(&label(job)).inc_by(n);
    }

    /// The OpenMetrics text exposition, ages computed now.
    pub fn render(&self) -> String {
        let now = Timestamp::now();
        for (job, reference) in self.lock_refs().iter() {
            let age = now.duration_since(*reference).as_secs_f64().max(0.0);
            self.last_success_age.get_or_create(&label(job)).set(age);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out = "# encoding failed\n".into();
        }
        out
    }
}

fn label(job: &str) -> JobLabel {
    JobLabel { job: job.into() }
}

/// Binds the metrics listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::http::header::CONTENT_TYPE;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                },
            ),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("job=\"home\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn exports_the_recovery_point_and_run_results() {
        let seen: Timestamp = "2024-06-01T00:00:00Z".parse().unwrap();
        let m = Metrics::new(&[(
            "home".into(),
            JobState {
                first_seen: Some(seen),
                ..JobState::default()
            },
        )]);
        let text = m.render();
        assert!(value(&text, "cairn_job_last_success_age_seconds").unwrap() > 1e6);
        assert_eq!(value(&text, "cairn_job_failures_total"), Some(0.0));
        assert!(value(&text, "cairn_job_last_success_timestamp_seconds").is_none());

        let started = Timestamp::now();
        let run = RunRecord {
            started,
            finished: started,
            result: RunResult::Success,
            error: None,
            snapshot: None,
            duration_seconds: 1.5,
            bytes_new: 1000,
            bytes_stored: 600,
            forgotten: 0,
        };
        m.run_recorded("home", &run);
        m.run_recorded(
            "home",
            &RunRecord {
                result: RunResult::Failure,
                ..run.clone()
            },
        );
        let text = m.render();
        assert!(value(&text, "cairn_job_last_success_age_seconds").unwrap() < 60.0);
        assert_eq!(
            value(&text, "cairn_job_last_success_timestamp_seconds").map(|v| v.floor()),
            Some(started.as_second() as f64)
        );
        assert_eq!(value(&text, "cairn_job_failures_total"), Some(1.0));
        assert_eq!(value(&text, "cairn_job_last_run_bytes_stored"), Some(600.0));
        assert!(
            text.contains("cairn_job_runs_total{job=\"home\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
