//! The agent's config file (TOML): global `[agent]` settings and named
//! `[jobs.NAME]` backup jobs.
//!
//! Everything is checked when the file is loaded, before anything runs:
//! unknown keys, schedules, durations, that the source paths and password
//! files exist. An error names the file, the line and column, and the key
//! (`cairn.toml:7:1: jobs.home.pathz: unknown key ...`), in one line.
//!
//! Paths may start with `~/` (the user's home directory); relative paths are
//! taken from the directory of the config file, since an agent started by
//! systemd has `/` as its working directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::cron::Schedule;
use crate::backup::stream::{StreamFile, StreamSource};
use crate::context::{RepoArgs, S3Settings, hostname};
use crate::retention::Policy;

/// A config error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, if known.
    pub position: Option<(usize, usize)>,
    /// Dotted key (`jobs.home.schedule`), if known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some((line, column)) = self.position {
            out.push_str(&format!(":{line}:{column}"));
        }
        if let Some(key) = &self.key {
            out.push_str(&format!(": {key}"));
        }
        out.push_str(": ");
        out.push_str(&self.message);
        out
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2024-06-01T02:30:00Z INFO job=home: message key=value`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[agent]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSettings {
    /// Where to serve Prometheus metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Where the agent keeps its state.
    pub state_dir: Option<PathBuf>,
}

/// Where a job's repository password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// First line of this file.
    File(PathBuf),
    /// This environment variable.
    Env(String),
}

/// One backup job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name (letters, digits, `-`, `_`).
    pub name: String,
    /// Absolute source paths.
    pub paths: Vec<PathBuf>,
    /// Exclude globs.
    pub exclude: Vec<String>,
    /// Files of exclude globs.
    pub exclude_file: Vec<PathBuf>,
    /// Marker files that exclude their directory.
    pub exclude_if_present: Vec<String>,
    /// Stay on the file system of each source path.
    pub one_file_system: bool,
    /// Tags for its snapshots.
    pub tags: Vec<String>,
    /// Host name recorded in its snapshots.
    pub host: String,
    /// Repository location (`None`: the default repository).
    pub repository: Option<String>,
    /// Index cluster URLs (comma-separated); `None`: the embedded index.
    pub index: Option<String>,
    /// File holding the cluster's repository token (else `CAIRN_INDEX_TOKEN`).
    pub index_token_file: Option<PathBuf>,
    /// Password source.
    pub password: PasswordSource,
    /// When it runs.
    pub schedule: Schedule,
    /// Upper bound of the random delay added to each run.
    pub jitter: Duration,
    /// How long a run waits for another process holding the repository's index.
    pub lock_wait: Duration,
    /// Applied after each successful run.
    pub retention: Option<Policy>,
    /// Shell command run after a successful run.
    pub on_success: Option<String>,
    /// Shell command run after a failed run.
    pub on_failure: Option<String>,
    /// How to reach an `s3://` repository (`CAIRN_S3_*`, read when the
    /// config is loaded).
    pub s3: S3Settings,
    /// A command whose output is backed up instead of `paths`.
    pub stream: Option<StreamFile>,
}

impl Job {
    /// How to reach the job's repository and index (the password and the
    /// cluster token are read when a run starts).
    pub fn repo_args(&self) -> RepoArgs {
        RepoArgs {
            repo: self.repository.clone(),
            password_file: None,
            lock_wait: 0,
            index: self.index.clone(),
            index_token: None,
            s3: self.s3.clone(),
        }
    }

    /// The index cluster's token: `index_token_file`, else `CAIRN_INDEX_TOKEN`.
    pub fn index_token(&self) -> anyhow::Result<Option<crate::context::Password>> {
        match &self.index_token_file {
            Some(f) => Ok(Some(crate::context::read_password_file(f)?)),
            None => Ok(RepoArgs::index_token_from_env()),
        }
    }

    /// The repository password.
    pub fn password(&self) -> anyhow::Result<crate::context::Password> {
        match &self.password {
            PasswordSource::File(f) => crate::context::read_password_file(f),
            PasswordSource::Env(var) => std::env::var(var).map(Password::new).map_err(|_| {
                anyhow::anyhow!(
                    "environment variable {var} (password_env of job {}) is not set",
                    self.name
                )
            }),
        }
    }
}

use crate::context::Password;

/// A loaded, checked config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (absolute).
    pub path: PathBuf,
    /// `[agent]`.
    pub agent: AgentSettings,
    /// Jobs, by name.
    pub jobs: Vec<Job>,
}

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    jobs: BTreeMap<String, RawJob>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    metrics_addr: Option<String>,
    log_format: Option<String>,
    state_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(default)]
    paths: Vec<String>,
    /// Back up this command's standard output instead of paths.
    command: Option<Vec<String>>,
    /// The file name the command's output gets in the snapshot.
    stdin_filename: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    exclude_file: Vec<String>,
    #[serde(default)]
    exclude_if_present: Vec<String>,
    #[serde(default)]
    one_file_system: bool,
    #[serde(default)]
    tags: Vec<String>,
    host: Option<String>,
    repository: Option<String>,
    index: Option<String>,
    index_token_file: Option<String>,
    password_file: Option<String>,
    password_env: Option<String>,
    schedule: String,
    jitter: Option<String>,
    lock_wait: Option<String>,
    retention: Option<Policy>,
    on_success: Option<String>,
    on_failure: Option<String>,
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        file: path.clone(),
        position: None,
        key: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(&path, &text)
}

/// Checks config `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let doc = Document::new(path, text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| doc.serde_error(&e))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut errors = Vec::new();

    let mut agent = AgentSettings::default();
    if let Some(addr) = &raw.agent.metrics_addr {
        match addr.parse() {
            Ok(a) => agent.metrics_addr = Some(a),
            Err(_) => errors.push(doc.error(
                &["agent", "metrics_addr"],
                format!("invalid address {addr:?}: expected IP:PORT such as 127.0.0.1:9184"),
            )),
        }
    }
    if let Some(format) = &raw.agent.log_format {
        match format.as_str() {
            "text" => agent.log_format = Some(LogFormat::Text),
            "json" => agent.log_format = Some(LogFormat::Json),
            other => errors.push(doc.error(
                &["agent", "log_format"],
                format!("invalid log format {other:?}: expected \"text\" or \"json\""),
            )),
        }
    }
    agent.state_dir = raw.agent.state_dir.as_deref().map(|d| resolve(base, d));

    let mut jobs = Vec::new();
    for (name, raw_job) in raw.jobs {
        match check_job(&doc, base, &name, raw_job) {
            Ok(job) => jobs.push(job),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if jobs.is_empty() && errors.is_empty() {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            position: None,
            key: Some("jobs".into()),
            message: "no jobs are defined: add a [jobs.NAME] table".into(),
        });
    }
    // Report the first problem in file order.
    errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, 0)));
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    Ok(Config {
        path: path.to_path_buf(),
        agent,
        jobs,
    })
}

fn check_job(
    doc: &Document,
    base: &Path,
    name: &str,
    raw: RawJob,
) -> Result<Job, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let key = |k: &'static str| ["jobs", name, k];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errors.push(doc.error(
            &["jobs", name],
            format!(
                "invalid job name {name:?}: use letters, digits, - and _ (it names systemd units)"
            ),
        ));
    }

    let mut paths = Vec::new();
    let stream = match (&raw.command, raw.paths.is_empty()) {
        (None, true) => {
            errors.push(doc.error(
                &key("paths"),
                "no paths: give at least one path to back up (or a command)".into(),
            ));
            None
        }
        (None, false) => None,
        (Some(_), false) => {
            errors.push(doc.error(
                &key("command"),
                "give either paths or a command, not both".into(),
            ));
            None
        }
        (Some(argv), true) if argv.is_empty() => {
            errors.push(doc.error(&key("command"), "the command is empty".into()));
            None
        }
        (Some(argv), true) => {
            let file = StreamFile {
                name: raw.stdin_filename.clone().unwrap_or_else(|| "stdin".into()),
                source: StreamSource::Command(argv.iter().map(OsString::from).collect()),
            };
            if let Err(e) = file.snapshot_path() {
                errors.push(doc.error(&key("stdin_filename"), format!("{e:#}")));
            }
            Some(file)
        }
    };
    for (i, p) in raw.paths.iter().enumerate() {
        let abs = resolve(base, p);
        if let Err(e) = abs.symlink_metadata() {
            errors.push(doc.error(
                &["jobs", name, "paths", &i.to_string()],
                format!("{}: {}", abs.display(), io_reason(&e)),
            ));
        }
        paths.push(abs);
    }
    let mut exclude_file = Vec::new();
    for (i, f) in raw.exclude_file.iter().enumerate() {
        let abs = resolve(base, f);
        if let Err(e) = std::fs::metadata(&abs) {
            errors.push(doc.error(
                &["jobs", name, "exclude_file", &i.to_string()],
                format!("{}: {}", abs.display(), io_reason(&e)),
            ));
        }
        exclude_file.push(abs);
    }
    let exclude = raw
        .exclude
        .iter()
        .map(|g| match g.strip_prefix("~/") {
            Some(_) => resolve(base, g).display().to_string(),
            None => g.clone(),
        })
        .collect();

    let repository = raw.repository.as_deref().map(|r| {
        if r.contains("://") {
            r.to_string()
        } else {
            resolve(base, r).display().to_string()
        }
    });
    if let Err(e) = RepoArgs::local_path_of(repository.as_deref()) {
        errors.push(doc.error(&key("repository"), format!("{e:#}")));
    }
    let s3 = S3Settings::from_env()
        .map_err(|e| errors.push(doc.error(&key("repository"), format!("{e:#}"))))
        .ok();
    let index = match raw.index.as_deref().map(str::trim) {
        None | Some("embedded") => None,
        Some(urls) => {
            let bad: Vec<&str> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                .collect();
            if !bad.is_empty() {
                errors.push(doc.error(
                    &key("index"),
                    format!("invalid index {urls:?}: expected \"embedded\" or comma-separated http(s):// URLs of the index cluster"),
                ));
            }
            Some(urls.to_string())
        }
    };
    let index_token_file = raw.index_token_file.as_deref().map(|f| resolve(base, f));
    if let Some(f) = &index_token_file
        && let Err(e) = std::fs::metadata(f)
    {
        errors.push(doc.error(
            &key("index_token_file"),
            format!("{}: {}", f.display(), io_reason(&e)),
        ));
    }
    if index.is_some() && index_token_file.is_none() && RepoArgs::index_token_from_env().is_none() {
        errors.push(doc.error(
            &key("index"),
            "the index cluster needs a repository token: set index_token_file, or CAIRN_INDEX_TOKEN".into(),
        ));
    }

    let password = match (&raw.password_file, &raw.password_env) {
        (Some(f), None) => {
            let abs = resolve(base, f);
            if let Err(e) = std::fs::metadata(&abs) {
                errors.push(doc.error(
                    &key("password_file"),
                    format!("{}: {}", abs.display(), io_reason(&e)),
                ));
            }
            Some(PasswordSource::File(abs))
        }
        (None, Some(var)) => {
            if std::env::var_os(var).is_none() {
                errors.push(doc.error(
                    &key("password_env"),
                    format!("environment variable {var} is not set"),
                ));
            }
            Some(PasswordSource::Env(var.clone()))
        }
        (Some(_), Some(_)) => {
            errors.push(doc.error(
                &key("password_env"),
                "give password_file or password_env, not both".into(),
            ));
            None
        }
        (None, None) => {
            errors.push(doc.error(
                &["jobs", name],
                "no password source: set password_file or password_env".into(),
            ));
            None
        }
    };

    let schedule = match raw.schedule.parse::<Schedule>() {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(doc.error(&key("schedule"), e));
            None
        }
    };
    let mut duration = |k: &'static str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(text) => crate::duration::parse(text).unwrap_or_else(|e| {
            errors.push(doc.error(
                &key(k),
                format!("invalid duration {text:?}: {e} (examples: \"90s\", \"10m\", \"1h 30m\")"),
            ));
            default
        }),
    };
    let jitter = duration("jitter", &raw.jitter, Duration::ZERO);
    let lock_wait = duration("lock_wait", &raw.lock_wait, Duration::from_secs(600));

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(password), Some(schedule), Some(s3)) = (password, schedule, s3) else {
        return Err(errors);
    };
    Ok(Job {
        name: name.to_string(),
        paths,
        exclude,
        exclude_file,
        exclude_if_present: raw.exclude_if_present,
        one_file_system: raw.one_file_system,
        tags: raw.tags,
        host: raw.host.unwrap_or_else(hostname),
        repository,
        index,
        index_token_file,
        password,
        schedule,
        jitter,
        lock_wait,
        retention: raw.retention.filter(|p| !p.is_empty()),
        on_success: raw.on_success.filter(|c| !c.trim().is_empty()),
        on_failure: raw.on_failure.filter(|c| !c.trim().is_empty()),
        s3,
        stream,
    })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// `~/x` → `$HOME/x`; relative paths are taken from `base`.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let expanded = match (p, &home) {
        ("~", Some(h)) => h.clone(),
        (_, Some(h)) if p.starts_with("~/") => h.join(&p[2..]),
        _ => PathBuf::from(p),
    };
    if expanded.is_absolute() {
        expanded
    } else {
        base.join(expanded)
    }
}

/// The config text with what is needed to point at a key.
struct Document<'a> {
    path: &'a Path,
    text: &'a str,
    tree: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Document<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Document {
            path,
            text,
            tree: DeTable::parse(text).ok(),
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// An error at the value of `key` (a path of table keys and array indices).
    fn error(&self, key: &[&str], message: String) -> ConfigError {
        let span = self
            .tree
            .as_ref()
            .and_then(|t| value_span(t.get_ref(), key));
        ConfigError {
            file: self.path.to_path_buf(),
            position: span.map(|s| self.position(s.start)),
            key: Some(dotted(key)),
            message,
        }
    }

    /// A deserialization error, with the key found from its position.
    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let key = match (&self.tree, &span) {
            (Some(tree), Some(span)) => {
                let mut best = None;
                key_at(tree.get_ref(), span.start, &mut Vec::new(), &mut best);
                best.map(|(path, _)| path.join("."))
            }
            _ => None,
        };
        let message = e
            .message()
            .trim()
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key")
            .replace('\n', "; ");
        ConfigError {
            file: self.path.to_path_buf(),
            position: span.map(|s| self.position(s.start)),
            key,
            message,
        }
    }
}

fn dotted(key: &[&str]) -> String {
    let mut out = String::new();
    for part in key {
        if part.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// The span of the value at `key`, or of the nearest enclosing one that exists.
fn value_span(table: &DeTable<'_>, key: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = key.split_first()?;
    let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *first)?;
    let here = if rest.is_empty() { v.span() } else { k.span() };
    let deeper = match v.get_ref() {
        DeValue::Table(t) => value_span(t, rest),
        DeValue::Array(a) => {
            let (index, tail) = rest.split_first()?;
            let item = a.get(index.parse::<usize>().ok()?)?;
            match (item.get_ref(), tail.is_empty()) {
                (_, true) => Some(item.span()),
                (DeValue::Table(t), false) => value_span(t, tail),
                _ => None,
            }
        }
        _ => None,
    };
    deeper.or(Some(here))
}

/// The dotted key whose key or value span most tightly contains `offset`.
fn key_at(
    table: &DeTable<'_>,
    offset: usize,
    path: &mut Vec<String>,
    best: &mut Option<(Vec<String>, usize)>,
) {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        for span in [k.span(), v.span()] {
            if span.contains(&offset) || (span.is_empty() && span.start == offset) {
                let len = span.len();
                if best.as_ref().is_none_or(|(_, l)| len <= *l) {
                    *best = Some((path.clone(), len));
                }
            }
        }
        if let DeValue::Table(t) = v.get_ref() {
            key_at(t, offset, path, best);
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("pw"), "secret\n").unwrap();
        d
    }

    fn load_text(d: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(&d.join("cairn.toml"), text)
    }

    const GOOD: &str = r#"
[agent]
metrics_addr = "127.0.0.1:0"
log_format = "json"

[jobs.home]
paths = ["data"]
exclude = ["*.tmp"]
repository = "repo"
password_file = "pw"
schedule = "*/5 * * * * *"
jitter = "2s"
tags = ["auto"]
on_failure = "echo failed"

[jobs.home.retention]
keep_daily = 7
keep_within = "2d"
"#;

    #[test]
    fn a_good_config_loads() {
        let d = dir();
        let c = load_text(d.path(), GOOD).unwrap();
        assert_eq!(c.agent.metrics_addr, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.agent.log_format, Some(LogFormat::Json));
        let job = c.job("home").unwrap();
        assert_eq!(job.paths, [d.path().join("data")]);
        assert_eq!(
            job.repository.as_deref(),
            Some(d.path().join("repo").to_str().unwrap())
        );
        assert_eq!(job.password, PasswordSource::File(d.path().join("pw")));
        assert_eq!(job.password().unwrap().as_str(), "secret");
        assert_eq!(job.jitter, Duration::from_secs(2));
        assert_eq!(job.lock_wait, Duration::from_secs(600));
        assert_eq!(job.on_failure.as_deref(), Some("echo failed"));
        assert!(job.on_success.is_none());
        assert_eq!(
            job.retention.as_ref().unwrap().to_string(),
            "keep 7 daily, all within 2d of the latest"
        );
    }

    /// Each broken config, and the `line:column: key` its error must name.
    #[test]
    fn errors_name_the_line_and_key() {
        let d = dir();
        let job = |extra: &str| {
            format!(
                "[jobs.home]\npaths = [\"data\"]\npassword_file = \"pw\"\nschedule = \"daily\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (job("pathz = [\"x\"]\n"), "5:1: jobs.home.pathz", "unknown key `pathz`"),
            (
                job("[jobs.home.retention]\nkeep_dialy = 3\n"),
                "6:1: jobs.home.retention.keep_dialy",
                "unknown key `keep_dialy`",
            ),
            ("[agnet]\n".into(), "1:2: agnet", "unknown key `agnet`"),
            (
                "[jobs.home]\npaths = [\"data\"]\npassword_file = \"pw\"\nschedule = \"61 * * * *\"\n".into(),
                "4:12: jobs.home.schedule",
                "invalid cron expression \"61 * * * *\"",
            ),
            (
                "[jobs.home]\npassword_file = \"pw\"\nschedule = \"daily\"\npaths = [\"data\", \"missing\"]\n".into(),
                "4:18: jobs.home.paths[1]",
                "missing: no such file or directory",
            ),
            (
                "[jobs.home]\npaths = [\"data\"]\npassword_file = \"nopw\"\nschedule = \"daily\"\n".into(),
                "3:17: jobs.home.password_file",
                "nopw: no such file or directory",
            ),
            (job("jitter = \"soon\"\n"), "5:10: jobs.home.jitter", "invalid duration \"soon\""),
            (job("paths = 3\n"), "5:", "duplicate key"),
            (
                "[jobs.home]\npaths = 3\npassword_file = \"pw\"\nschedule = \"daily\"\n".into(),
                "2:9: jobs.home.paths",
                "invalid type",
            ),
            (
                "[jobs.home]\npaths = [\"data\"]\npassword_file = \"pw\"\n".into(),
                "1:1: jobs.home",
                "missing key `schedule`",
            ),
            (
                job("[jobs.home.retention]\nkeep_within = \"soon\"\n"),
                "6:15: jobs.home.retention.keep_within",
                "invalid duration \"soon\"",
            ),
            (
                "[jobs.\"my job\"]\npaths = [\"data\"]\npassword_file = \"pw\"\nschedule = \"daily\"\n".into(),
                "1:1: jobs.my job",
                "invalid job name",
            ),
            (
                "[jobs.home]\npaths = [\"data\"]\nschedule = \"daily\"\n".into(),
                "1:1: jobs.home",
                "no password source",
            ),
            (
                job("password_env = \"CAIRN_TEST_SURELY_UNSET_VARIABLE\"\n"),
                "5:16: jobs.home.password_env",
                "not both",
            ),
            ("[agent]\nmetrics_addr = \"localhost\"\n".into(), "2:16: agent.metrics_addr", "invalid address"),
            ("\n".into(), "jobs", "no jobs are defined"),
            (job("index = \"grpc:x\"\n"), "5:9: jobs.home.index", "expected \"embedded\" or"),
        ];
        let file = d.path().join("cairn.toml").display().to_string();
        let mut wrong = Vec::new();
        for (text, location, message) in cases {
            let err = load_text(d.path(), &text).unwrap_err().to_string();
            if !(err.starts_with(&format!("{file}:")) || err.starts_with(&format!("{file}: ")))
                || !err.contains(location)
                || !err.contains(message)
                || err.contains('\n')
            {
                wrong.push(format!(
                    "want {location:?} and {message:?}, got {err:?}\n--- config ---\n{text}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn home_and_relative_paths_resolve() {
        let base = Path::new("/etc/cairn");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(resolve(base, "~/x"), Path::new(&home).join("x"));
        assert_eq!(resolve(base, "~"), Path::new(&home));
        assert_eq!(resolve(base, "pw"), Path::new("/etc/cairn/pw"));
        assert_eq!(resolve(base, "/abs"), Path::new("/abs"));
    }
}
