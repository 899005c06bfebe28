//! Progress on stderr when it is a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// True when progress should be drawn (stderr is a terminal).
pub fn wanted(quiet: bool, json: bool) -> bool {
    use std::io::IsTerminal;
    !quiet && !json && std::io::stderr().is_terminal()
}

/// Redraws a progress line from a sampling closure until finished.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts drawing. `sample` returns (bytes done, message). With a total,
    /// the line shows a bar, rate and ETA; without, bytes and rate.
    pub fn start(
        what: &'static str,
        total: Option<u64>,
        sample: impl Fn() -> (u64, String) + Send + 'static,
    ) -> Self {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(what);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let (done, msg) = sample();
                if total.is_some() {
                    bar.set_position(done);
                    bar.set_message(msg);
                } else {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    bar.set_message(format!(
                        "{msg}, {} read, {}/s",
                        HumanBytes(done),
                        HumanBytes((done as f64 / secs) as u64)
                    ));
                    bar.tick();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and clears the line.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
