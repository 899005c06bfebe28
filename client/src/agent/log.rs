//! The agent's log: one event per line, with a stable event name for
//! machines (`run_started`, `run_finished`, `run_skipped`, ...), the job if
//! any, a message for people, and event fields.
//!
//! The agent does not write the lines itself: each event is a `tracing`
//! event under [`TARGET`], with the fields `event`, `job` and `fields` (a
//! JSON object), and the front end renders it as text or JSON
//! (`cairn agent --log-format`).

use serde_json::Value;

/// The `tracing` target of the agent's log events.
pub const TARGET: &str = "cairn::agent";

/// Severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something to look at.
    Warn,
    /// A run failed.
    Error,
}

/// Emits the agent's log events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logger;

impl Logger {
    /// Emits one event; `fields` is a JSON object (anything else is ignored).
    pub fn event(
        &self,
        level: Level,
        job: Option<&str>,
        event: &str,
        message: &str,
        fields: Value,
    ) {
        let fields = match fields {
            Value::Object(m) => Value::Object(m).to_string(),
            _ => "{}".to_string(),
        };
        match level {
            Level::Info => tracing::info!(target: TARGET, event, job, fields, "{message}"),
            Level::Warn => tracing::warn!(target: TARGET, event, job, fields, "{message}"),
            Level::Error => tracing::error!(target: TARGET, event, job, fields, "{message}"),
        }
    }

    /// Info.
    pub fn info(&self, job: Option<&str>, event: &str, message: &str, fields: Value) {
        self.event(Level::Info, job, event, message, fields)
    }

    /// Warning.
    pub fn warn(&self, job: Option<&str>, event: &str, message: &str, fields: Value) {
        self.event(Level::Warn, job, event, message, fields)
    }

    /// Error.
    pub fn error(&self, job: Option<&str>, event: &str, message: &str, fields: Value) {
        self.event(Level::Error, job, event, message, fields)
    }
}
