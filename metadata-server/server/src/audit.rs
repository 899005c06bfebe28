//! The audit trail: security-relevant events of one node as JSON lines.
//!
//! Each line is one event with `time` (RFC 3339, UTC), `unix`, `node` and
//! `event`, plus the event's own fields: `manifest_committed`
//! (repository, snapshot, token, peer), `session_begun`, `session_ended`,
//! `chunks_condemned` (asked, condemned), `packs_dead` and `packs_deleted`
//! (counts), `token_added`, `token_revoked`, `membership_changed`, and
//! `refused` for every call refused for its credentials (method, reason,
//! the role it would need). Who did it is the token's label (or id) and
//! the peer address; never the token. Token and membership changes are
//! recorded when the node notices them: at its next request after the file
//! changed.
//!
//! The file is appended with one `write` per line and rotated by size:
//! `audit.log` becomes `audit.log.1`, the older ones shift up, and the
//! oldest beyond [`KEEP`] is dropped. `cairn-index audit` reads them oldest
//! first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

/// Rotated files kept beside the current one.
pub const KEEP: usize = 8;

/// One node's audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    node: String,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

impl AuditLog {
    /// The log at `path` for node `node`, rotated past `max_bytes`.
    pub fn new(path: PathBuf, node: &str, max_bytes: u64) -> Self {
        Self {
            path,
            node: node.to_string(),
            max_bytes: max_bytes.max(4096),
            file: Mutex::new(None),
        }
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` with `fields` (an object). A log that cannot be
    /// written is reported through tracing and never fails the call.
    pub fn record(&self, event: &str, fields: Value) {
        let now = cairn_chunk_store::now_unix_nanos();
        let time = jiff::Timestamp::from_nanosecond(i128::from(now))
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut line = Map::new();
        line.insert("time".into(), json!(time));
        line.insert("unix".into(), json!(now / 1_000_000_000));
        line.insert("node".into(), json!(self.node));
        line.insert("event".into(), json!(event));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        if let Err(e) = self.append(text.as_bytes()) {
            tracing::error!("audit log {}: {e}", self.path.display());
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_some_and(|(_, size)| size + line.len() as u64 > self.max_bytes)
        {
            *guard = None;
            self.rotate()?;
        }
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let size = file.metadata()?.len();
            *guard = Some((file, size));
            if size + line.len() as u64 > self.max_bytes && size > 0 {
                *guard = None;
                self.rotate()?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                *guard = Some((file, 0));
            }
        }
        if let Some((file, size)) = guard.as_mut() {
            file.write_all(line)?;
            *size += line.len() as u64;
        }
        Ok(())
    }

    fn rotate(&self) -> std::io::Result<()> {
        for n in (1..KEEP).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        match std::fs::rename(&self.path, rotated(&self.path, 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Every event in the log at `path` and its rotated files, oldest first.
/// Lines that do not parse (a line cut by a crash) are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = (1..=KEEP).rev().map(|n| rotated(path, n)).collect();
    files.push(path.to_path_buf());
    let mut events = Vec::new();
    let mut any = false;
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        any = true;
        events.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
    }
    if !any {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no audit log at {}", path.display()),
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotate_by_size_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.log"), "n1", 4096);
        for i in 0..200 {
            log.record("refused", json!({"method": "Condemn", "n": i}));
        }
        assert!(dir.path().join("audit.log.1").exists());
        assert!(
            std::fs::metadata(dir.path().join("audit.log"))
                .unwrap()
                .len()
                <= 4096
        );
        let events = read(&dir.path().join("audit.log")).unwrap();
        let ns: Vec<i64> = events.iter().map(|e| e["n"].as_i64().unwrap()).collect();
        // The oldest rotated away; the rest in order.
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{ns:?}");
        assert_eq!(*ns.last().unwrap(), 199);
        assert_eq!(events[0]["node"], "n1");
        assert_eq!(events[0]["event"], "refused");
    }
}
