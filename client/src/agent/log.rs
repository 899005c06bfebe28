//! The agent's log: one line per event on stderr, plain text or JSON.
//!
//! Every line carries a time, a level, an event name (stable, for machines:
//! `run_started`, `run_finished`, `run_skipped`, ...), the job if any, a
//! message for people, and event fields.

use std::io::Write;

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::config::LogFormat;

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

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes log lines.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    format: LogFormat,
}

impl Logger {
    /// A logger writing `format` to stderr.
    pub fn new(format: LogFormat) -> Self {
        Logger { format }
    }

    /// Writes one event; `fields` is a JSON object (anything else is ignored).
    pub fn event(
        &self,
        level: Level,
        job: Option<&str>,
        event: &str,
        message: &str,
        fields: Value,
    ) {
        let line = self.render(Timestamp::now(), level, job, event, message, fields);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
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

    fn render(
        &self,
        time: Timestamp,
        level: Level,
        job: Option<&str>,
        event: &str,
        message: &str,
        fields: Value,
    ) -> String {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        match self.format {
            LogFormat::Json => {
                let mut obj = Map::new();
                obj.insert("time".into(), Value::String(time.to_string()));
                obj.insert("level".into(), Value::String(level.as_str().into()));
                obj.insert("event".into(), Value::String(event.into()));
                if let Some(job) = job {
                    obj.insert("job".into(), Value::String(job.into()));
                }
                obj.insert("message".into(), Value::String(message.into()));
                for (k, v) in fields {
                    obj.entry(k).or_insert(v);
                }
                Value::Object(obj).to_string()
            }
            LogFormat::Text => {
                let mut line = format!(
                    "{} {:<5} ",
                    time.round(jiff::Unit::Millisecond).unwrap_or(time),
                    level.as_str().to_uppercase()
                );
                if let Some(job) = job {
                    line.push_str(&format!("[{job}] "));
                }
                line.push_str(&message.replace('\n', " "));
                line
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn renders_text_and_json() {
        let t: Timestamp = "2024-06-01T02:30:00.123456Z".parse().unwrap();
        let text = Logger::new(LogFormat::Text).render(
            t,
            Level::Warn,
            Some("home"),
            "run_skipped",
            "already running",
            json!({"n": 1}),
        );
        assert_eq!(
            text,
            "2024-06-01T02:30:00.123Z WARN  [home] already running"
        );
        let line = Logger::new(LogFormat::Json).render(
            t,
            Level::Info,
            Some("home"),
            "run_finished",
            "done",
            json!({"snapshot": "3f2a", "message": "ignored: reserved"}),
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "run_finished");
        assert_eq!(v["job"], "home");
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "done");
        assert_eq!(v["snapshot"], "3f2a");
        assert_eq!(v["time"], "2024-06-01T02:30:00.123456Z");
    }
}
