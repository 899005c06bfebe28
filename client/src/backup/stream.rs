//! Backing up a stream instead of files: standard input, or the standard
//! output of a command (`pg_dump`, `mysqldump`, `tar`, …), stored as one
//! file of the snapshot without a temporary copy.
//!
//! The stream is chunked like any large file, so the second dump of a
//! mostly unchanged database stores only the chunks around what changed. A
//! command that exits non-zero fails the backup before its snapshot is
//! written; the chunks it uploaded stay for `prune`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};

/// Lines of a failed command's stderr that the error quotes.
const STDERR_LINES: usize = 10;

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSource {
    /// This process's standard input.
    Stdin,
    /// The standard output of this command (program and arguments), run
    /// without a shell.
    Command(Vec<OsString>),
}

/// One stream to back up and the name it has in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFile {
    /// The file name in the snapshot (stored at its root, as `/NAME`).
    pub name: String,
    /// Where the bytes come from.
    pub source: StreamSource,
}

impl StreamFile {
    /// The snapshot path of the stream: `/NAME`.
    pub fn snapshot_path(&self) -> Result<String> {
        if self.name.is_empty() || self.name.contains('/') || self.name == "." || self.name == ".."
        {
            bail!(
                "invalid stream file name {:?}: give a plain file name (no `/`)",
                self.name
            );
        }
        Ok(format!("/{}", self.name))
    }

    /// Starts the source: the reader of its bytes, and what to check once
    /// they are read.
    pub fn open(&self) -> Result<(Box<dyn Read + Send>, Finish)> {
        match &self.source {
            StreamSource::Stdin => Ok((Box::new(std::io::stdin()), Finish(None))),
            StreamSource::Command(argv) => {
                let Some((program, args)) = argv.split_first() else {
                    bail!("no command given to read from");
                };
                let shown = display_command(argv);
                let mut child = Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("cannot run {shown}"))?;
                let stdout = child.stdout.take().context("the command's stdout")?;
                let tail = Arc::new(Mutex::new(VecDeque::new()));
                let stderr = child.stderr.take().map(|err| {
                    let tail = tail.clone();
                    std::thread::spawn(move || keep_last_lines(err, &tail))
                });
                Ok((
                    Box::new(stdout),
                    Finish(Some(Running {
                        child,
                        shown,
                        stderr,
                        tail,
                    })),
                ))
            }
        }
    }
}

/// A command whose output is being read.
struct Running {
    child: Child,
    shown: String,
    stderr: Option<JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// The check after the stream was read: a command must have exited 0.
pub struct Finish(Option<Running>);

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finish")
    }
}

impl Finish {
    /// Waits for the command (if any); fails, quoting the end of its
    /// stderr, unless it exited 0.
    pub fn check(mut self) -> Result<()> {
        let Some(mut running) = self.0.take() else {
            return Ok(());
        };
        let status = running
            .child
            .wait()
            .with_context(|| format!("waiting for {}", running.shown))?;
        if let Some(t) = running.stderr.take() {
            let _ = t.join();
        }
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_string(),
        };
        let tail: Vec<String> = running
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let stderr = if tail.is_empty() {
            String::new()
        } else {
            format!("; the end of its stderr:\n  {}", tail.join("\n  "))
        };
        bail!(
            "{} {how}; no snapshot was written (what it sent is left for prune){stderr}",
            running.shown
        )
    }
}

/// A backup that ends before checking its command (an error, a signal)
/// stops the command rather than leave it running.
impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut running) = self.0.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

fn keep_last_lines(err: impl Read, tail: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == STDERR_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// `pg_dump -Fc db` as the user typed it (arguments with spaces quoted).
fn display_command(argv: &[OsString]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.into_owned()
            }
        })
        .collect();
    format!("command `{}`", words.join(" "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn command(args: &[&str]) -> StreamFile {
        StreamFile {
            name: "dump.sql".into(),
            source: StreamSource::Command(args.iter().map(OsString::from).collect()),
        }
    }

    #[test]
    fn a_command_that_fails_is_an_error_quoting_its_stderr() {
        let (mut out, finish) =
            command(&["sh", "-c", "echo data; echo one >&2; echo two >&2; exit 7"])
                .open()
                .unwrap();
        let mut data = String::new();
        out.read_to_string(&mut data).unwrap();
        assert_eq!(data, "data\n");
        let err = finish.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "command `sh -c \"echo data; echo one >&2; echo two >&2; exit 7\"` exited with code 7; \
             no snapshot was written (what it sent is left for prune); the end of its stderr:\n  one\n  two"
        );
    }

    #[test]
    fn a_command_that_succeeds_passes() {
        let (mut out, finish) = command(&["printf", "abc"]).open().unwrap();
        let mut data = Vec::new();
        out.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc");
        finish.check().unwrap();
    }

    #[test]
    fn a_missing_program_and_bad_names_are_clear_errors() {
        let err = command(&["/nonexistent/cairn-test-program"])
            .open()
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").starts_with("cannot run command `/nonexistent/cairn-test-program`"),
            "{err:#}"
        );
        for bad in ["", "a/b", ".."] {
            let f = StreamFile {
                name: bad.into(),
                source: StreamSource::Stdin,
            };
            assert!(f.snapshot_path().is_err(), "{bad:?}");
        }
        assert_eq!(command(&["true"]).snapshot_path().unwrap(), "/dump.sql");
    }
}
