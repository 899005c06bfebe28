//! Crash points for the tests that kill a process midway (prune between
//! its steps, for example): with the `test-support` feature, an
//! environment variable names the point at which the process aborts, as a
//! crash would. Without the feature (every release build) a crash point is
//! an empty function and the variable means nothing. The same holds for
//! the clock offset of [`crate::now_unix_nanos`].

/// Aborts the process if the variable `var` is set to `point`, after one
/// line on stderr naming `who` and the point.
#[cfg(feature = "test-support")]
pub fn crash_point(var: &str, who: &str, point: &str) {
    if std::env::var(var).is_ok_and(|p| p == point) {
        eprintln!("{who}: simulated crash at {point}");
        std::process::abort();
    }
}

/// Does nothing: this build has no crash points.
#[cfg(not(feature = "test-support"))]
#[inline(always)]
pub fn crash_point(_var: &str, _who: &str, _point: &str) {}

/// Seconds added to the clock (`CAIRN_TEST_CLOCK_OFFSET_SECS`), read once.
#[cfg(feature = "test-support")]
pub fn clock_offset_secs() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("CAIRN_TEST_CLOCK_OFFSET_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// No offset: this build has no test clock.
#[cfg(not(feature = "test-support"))]
#[inline(always)]
pub fn clock_offset_secs() -> i64 {
    0
}
