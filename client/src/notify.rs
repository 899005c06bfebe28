//! What an engine tells the user while it runs.
//!
//! Engines never print. What they return is a report; what a user must see
//! *while* they run (a file that could not be read, an index that did not
//! answer, a wait for a lock) they emit as a `tracing` event under one of
//! the targets below. The front end decides how those appear: the `cairn`
//! command writes them to stderr as `warning: …` and plain lines, the agent
//! writes them among its log lines, and a test or library user that installs
//! no subscriber sees nothing.

/// Target of [`warning`] events.
pub const WARNING: &str = "cairn::warning";

/// Target of [`notice`] events.
pub const NOTICE: &str = "cairn::notice";

/// Something went wrong that the operation survived (the front end prefixes
/// it with `warning: `).
pub fn warning(message: impl std::fmt::Display) {
    tracing::warn!(target: WARNING, "{message}");
}

/// A line of progress the user should see as it is (waiting for a lock,
/// stopping on a signal).
pub fn notice(message: impl std::fmt::Display) {
    tracing::info!(target: NOTICE, "{message}");
}
