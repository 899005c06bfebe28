//! Cron expressions of the agent's schedules, and the next time each fires.
#![no_main]
use cairn_client::agent::cron::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(s) = text.parse::<Schedule>() {
        let _ = s.next_after(jiff::Timestamp::UNIX_EPOCH, &jiff::tz::TimeZone::UTC);
    }
});
