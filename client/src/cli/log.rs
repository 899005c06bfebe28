//! Where the engines' events go when `cairn` runs: the one place that turns
//! `tracing` events into lines on stderr.
//!
//! - [`notify::WARNING`] events: `warning: MESSAGE`, always;
//! - [`notify::NOTICE`] events: `MESSAGE`, always;
//! - the agent's log events ([`agent::log::TARGET`]): one line each, as
//!   text or JSON (`--log-format`), once the agent has chosen its format;
//! - everything else: diagnostics, filtered by `CAIRN_LOG` (default: warnings).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use cairn_client::agent::config::LogFormat;
use cairn_client::{agent, notify};
use jiff::Timestamp;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The agent's log format, set once the agent has read its config.
pub type AgentFormat = Arc<OnceLock<LogFormat>>;

/// Installs the subscriber; returns the handle through which the agent sets
/// its log format.
pub fn init() -> AgentFormat {
    let format = AgentFormat::default();
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_filter(
            EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn,aws_config=error")),
        )
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            !is_user_facing(m.target())
        }));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(UserLines {
            agent_format: format.clone(),
        })
        .init();
    format
}

fn is_user_facing(target: &str) -> bool {
    target == notify::WARNING || target == notify::NOTICE || target == agent::log::TARGET
}

/// Renders the user-facing events.
struct UserLines {
    agent_format: AgentFormat,
}

impl<S: Subscriber> Layer<S> for UserLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = if target == notify::WARNING {
            format!("warning: {}", fields.message)
        } else if target == notify::NOTICE {
            fields.message
        } else if target == agent::log::TARGET {
            let Some(format) = self.agent_format.get() else {
                return;
            };
            render_agent_line(
                *format,
                Timestamp::now(),
                *event.metadata().level(),
                &fields,
            )
        } else {
            return;
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

/// The fields of an event that the renderers use.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    job: Option<String>,
    event: String,
    fields: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "job" => self.job = Some(value.to_string()),
            "event" => self.event = value.to_string(),
            "fields" => self.fields = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        _ => "info",
    }
}

/// One agent log line: a time, a level, the event name, the job if any, the
/// message and the event's fields.
fn render_agent_line(format: LogFormat, time: Timestamp, level: Level, f: &Fields) -> String {
    match format {
        LogFormat::Json => {
            let mut obj = Map::new();
            obj.insert("time".into(), Value::String(time.to_string()));
            obj.insert("level".into(), Value::String(level_name(level).into()));
            obj.insert("event".into(), Value::String(f.event.clone()));
            if let Some(job) = &f.job {
                obj.insert("job".into(), Value::String(job.clone()));
            }
            obj.insert("message".into(), Value::String(f.message.clone()));
            let extra = f
                .fields
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok());
            if let Some(Value::Object(extra)) = extra {
                for (k, v) in extra {
                    obj.entry(k).or_insert(v);
                }
            }
            Value::Object(obj).to_string()
        }
        LogFormat::Text => {
            let mut line = format!(
                "{} {:<5} ",
                time.round(jiff::Unit::Millisecond).unwrap_or(time),
                level_name(level).to_uppercase()
            );
            if let Some(job) = &f.job {
                line.push_str(&format!("[{job}] "));
            }
            line.push_str(&f.message.replace('\n', " "));
            line
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fields(job: Option<&str>, event: &str, message: &str, extra: &str) -> Fields {
        Fields {
            message: message.into(),
            job: job.map(String::from),
            event: event.into(),
            fields: Some(extra.into()),
        }
    }

    #[test]
    fn renders_text_and_json() {
        let t: Timestamp = "2024-06-01T02:30:00.123456Z".parse().unwrap();
        let text = render_agent_line(
            LogFormat::Text,
            t,
            Level::WARN,
            &fields(Some("home"), "run_skipped", "already running", r#"{"n":1}"#),
        );
        assert_eq!(
            text,
            "2024-06-01T02:30:00.123Z WARN  [home] already running"
        );
        let line = render_agent_line(
            LogFormat::Json,
            t,
            Level::INFO,
            &fields(
                Some("home"),
                "run_finished",
                "done",
                r#"{"snapshot":"3f2a","message":"ignored: reserved"}"#,
            ),
        );
        assert_eq!(
            line,
            r#"{"event":"run_finished","job":"home","level":"info","message":"done","snapshot":"3f2a","time":"2024-06-01T02:30:00.123456Z"}"#
        );
    }
}
