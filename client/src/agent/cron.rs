//! When a job runs: `hourly`, `daily`, `weekly`, `monthly`, or a cron
//! expression (`minute hour day month weekday`, optionally with a seconds
//! field first), evaluated in the local time zone, and its translation to a
//! systemd `OnCalendar=` expression.
//!
//! The keywords mean what systemd means by them (`weekly` is Monday 00:00),
//! so a job fires at the same moments under `cairn agent` and under the
//! timers `cairn schedule install` writes.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

/// Keywords and the cron expressions (with seconds) they stand for.
const KEYWORDS: &[(&str, &str)] = &[
    ("minutely", "0 * * * * *"),
    ("hourly", "0 0 * * * *"),
    ("daily", "0 0 0 * * *"),
    ("weekly", "0 0 0 * * MON"),
    ("monthly", "0 0 0 1 * *"),
    ("yearly", "0 0 0 1 1 *"),
];

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let keyword = text.strip_prefix('@').unwrap_or(text).to_ascii_lowercase();
        let expression = KEYWORDS
            .iter()
            .find(|(k, _)| *k == keyword)
            .map_or(text, |(_, e)| e);
        if expression.split_whitespace().count() < 5 {
            return Err(format!(
                "invalid schedule {text:?}: expected hourly, daily, weekly, monthly, or a cron expression \
                 (minute hour day-of-month month day-of-week, optionally with seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("invalid cron expression {text:?}: {e}"))?;
        // A field the parser took as an empty list (",") would make the
        // search for the next firing walk centuries; refuse it here.
        let p = &cron.pattern;
        for (name, field) in [
            ("second", &p.seconds),
            ("minute", &p.minutes),
            ("hour", &p.hours),
            ("day-of-month", &p.days),
            ("month", &p.months),
            ("day-of-week", &p.days_of_week),
        ] {
            if field.values().is_empty() && !field.has_modifiers() {
                return Err(format!(
                    "invalid cron expression {text:?}: its {name} field matches no {name}"
                ));
            }
        }
        Ok(Schedule {
            text: text.to_string(),
            cron,
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Schedule {
    /// The first firing strictly after `t`, in time zone `tz`; `None` if the
    /// expression never fires again (e.g. 30 February).
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// How many firings fall in `(after, until]`, counting at most `cap`.
    pub fn count_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        cap: u64,
    ) -> u64 {
        let mut n = 0;
        let mut t = after;
        while n < cap {
            match self.next_after(t, tz) {
                Some(next) if next <= until => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }

    /// True if the schedule fires at seconds other than :00 (systemd's
    /// default timer accuracy of one minute would blur it).
    pub fn needs_second_accuracy(&self) -> bool {
        self.cron.pattern.seconds.values() != [0]
    }

    /// The equivalent systemd `OnCalendar=` expression, or why there is none.
    pub fn on_calendar(&self) -> Result<String, String> {
        let p = &self.cron.pattern;
        let untranslatable = |why: &str| {
            Err(format!(
                "schedule {:?} has no systemd OnCalendar equivalent: {why}; use `cairn agent` for this job, or write the schedule in a form systemd shares",
                self.text
            ))
        };
        if [
            &p.seconds,
            &p.minutes,
            &p.hours,
            &p.days,
            &p.months,
            &p.days_of_week,
        ]
        .iter()
        .any(|c| c.has_modifiers())
        {
            return untranslatable("L, W and # are cron extensions systemd lacks");
        }
        if !p.is_dom_wildcard() && !p.is_dow_wildcard() && !p.matches_dom_and_dow() {
            return untranslatable(
                "cron fires when either the day of month or the weekday matches, systemd only when both do",
            );
        }
        let weekdays = if p.is_dow_wildcard() {
            String::new()
        } else {
            let mut days: Vec<u16> = p
                .days_of_week
                .values()
                .into_iter()
                .map(|d| if d == 0 { 7 } else { d })
                .collect();
            days.sort_unstable();
            days.dedup();
            if days.len() == 7 {
                String::new()
            } else {
                format!("{} ", weekday_list(&days))
            }
        };
        let days = if p.is_dom_wildcard() {
            "*".to_string()
        } else {
            field(&p.days.values(), 1, 31)
        };
        Ok(format!(
            "{weekdays}*-{}-{} {}:{}:{}",
            field(&p.months.values(), 1, 12),
            days,
            field(&p.hours.values(), 0, 23),
            field(&p.minutes.values(), 0, 59),
            field(&p.seconds.values(), 0, 59),
        ))
    }
}

/// A set of values of one calendar field in systemd's syntax: `*`, a value,
/// `a..b`, `a/step` (to the end of the field), `a..b/step`, or a list.
fn field(values: &[u16], min: u16, max: u16) -> String {
    let full = usize::from(max - min) + 1;
    if values.len() == full {
        return "*".into();
    }
    let pad = |v: u16| format!("{v:02}");
    match values {
        [] => "*".into(),
        [one] => pad(*one),
        [a, b] if b - a > 1 => format!("{},{}", pad(*a), pad(*b)),
        [first, second, rest @ ..] => {
            let step = second - first;
            let mut prev = *second;
            let progression = rest.iter().all(|v| {
                let ok = *v == prev + step;
                prev = *v;
                ok
            });
            let last = prev;
            if !progression {
                values.iter().map(|v| pad(*v)).collect::<Vec<_>>().join(",")
            } else if step == 1 {
                format!("{}..{}", pad(*first), pad(last))
            } else if last + step > max {
                format!("{}/{step}", pad(*first))
            } else {
                format!("{}..{}/{step}", pad(*first), pad(last))
            }
        }
    }
}

/// ISO weekdays (1 = Monday … 7 = Sunday) as `Mon..Fri,Sun`.
fn weekday_list(days: &[u16]) -> String {
    const NAMES: [&str; 8] = ["", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &d in days {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == d => *end = d,
            _ => runs.push((d, d)),
        }
    }
    runs.iter()
        .map(|&(a, b)| match b - a {
            0 => NAMES[usize::from(a)].to_string(),
            1 => format!("{},{}", NAMES[usize::from(a)], NAMES[usize::from(b)]),
            _ => format!("{}..{}", NAMES[usize::from(a)], NAMES[usize::from(b)]),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn next_n(s: &str, from: &str, n: usize) -> Vec<String> {
        let schedule: Schedule = s.parse().unwrap();
        let mut t: Timestamp = from.parse().unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            t = schedule.next_after(t, &TimeZone::UTC).unwrap();
            out.push(t.to_string());
        }
        out
    }

    #[test]
    fn next_firings() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "hourly",
                "2024-03-05T09:15:00Z",
                &["2024-03-05T10:00:00Z", "2024-03-05T11:00:00Z"],
            ),
            (
                "@daily",
                "2024-03-05T09:15:00Z",
                &["2024-03-06T00:00:00Z", "2024-03-07T00:00:00Z"],
            ),
            // 2024-03-05 is a Tuesday: weekly is Monday midnight, as systemd has it.
            (
                "weekly",
                "2024-03-05T09:15:00Z",
                &["2024-03-11T00:00:00Z", "2024-03-18T00:00:00Z"],
            ),
            (
                "monthly",
                "2024-01-31T00:00:00Z",
                &["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"],
            ),
            (
                "30 2 * * *",
                "2024-03-05T02:30:00Z",
                &["2024-03-06T02:30:00Z", "2024-03-07T02:30:00Z"],
            ),
            (
                "*/2 * * * * *",
                "2024-03-05T09:15:00.500Z",
                &["2024-03-05T09:15:02Z", "2024-03-05T09:15:04Z"],
            ),
            (
                "15,45 * * * * *",
                "2024-03-05T09:15:50Z",
                &["2024-03-05T09:16:15Z", "2024-03-05T09:16:45Z"],
            ),
            (
                "0 9 * * MON-FRI",
                "2024-03-08T10:00:00Z",
                &["2024-03-11T09:00:00Z", "2024-03-12T09:00:00Z"],
            ),
            (
                "0 0 29 2 *",
                "2024-03-01T00:00:00Z",
                &["2028-02-29T00:00:00Z"],
            ),
        ];
        for (s, from, want) in cases {
            assert_eq!(
                next_n(s, from, want.len()),
                *want,
                "schedule {s:?} from {from}"
            );
        }
    }

    #[test]
    fn next_firing_in_a_time_zone_with_daylight_saving() {
        // Berlin moves to summer time on 2024-03-31: 02:30 does not exist that day.
        let s: Schedule = "30 1 * * *".parse().unwrap();
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2024-03-30T12:00:00Z".parse().unwrap();
        let next = s.next_after(t, &berlin).unwrap();
        assert_eq!(next.to_string(), "2024-03-31T00:30:00Z"); // 01:30 CET
        let next = s.next_after(next, &berlin).unwrap();
        assert_eq!(next.to_string(), "2024-03-31T23:30:00Z"); // 01:30 CEST
    }

    #[test]
    fn counts_firings_in_an_interval() {
        let s: Schedule = "hourly".parse().unwrap();
        let a: Timestamp = "2024-03-05T09:15:00Z".parse().unwrap();
        let b: Timestamp = "2024-03-05T13:00:00Z".parse().unwrap();
        assert_eq!(s.count_between(a, b, &TimeZone::UTC, 100), 4);
        assert_eq!(s.count_between(a, b, &TimeZone::UTC, 2), 2);
        assert_eq!(s.count_between(b, a, &TimeZone::UTC, 100), 0);
    }

    #[test]
    fn bad_schedules_are_rejected_with_the_reason() {
        for (bad, needle) in [
            ("", "expected hourly"),
            ("sometimes", "expected hourly"),
            ("* * *", "expected hourly"),
            ("61 * * * *", "invalid cron expression"),
            ("0 25 * * *", "invalid cron expression"),
            ("0 0 * * * * * *", "invalid cron expression"),
            ("0 0 * * * 2030", "invalid cron expression"),
            ("a b c d e", "invalid cron expression"),
        ] {
            let err = bad.parse::<Schedule>().unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    /// Found by fuzzing: a field that is only a comma parsed as a field
    /// matching nothing, and the search for the next firing then ran for
    /// minutes. Such a schedule is refused when it is parsed.
    #[test]
    fn a_field_matching_nothing_is_refused_not_searched_forever() {
        for bad in [", * 9 * */15", "0 , * * *", "0 0 , * *", "* * * , *"] {
            let started = std::time::Instant::now();
            let err = bad
                .parse::<Schedule>()
                .map(|s| s.next_after(Timestamp::UNIX_EPOCH, &TimeZone::UTC));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{bad:?} took {:?}",
                started.elapsed()
            );
            let err = err.unwrap_err();
            assert!(err.contains("matches no"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn translates_to_on_calendar() {
        let cases: &[(&str, &str)] = &[
            ("hourly", "*-*-* *:00:00"),
            ("daily", "*-*-* 00:00:00"),
            ("weekly", "Mon *-*-* 00:00:00"),
            ("monthly", "*-*-01 00:00:00"),
            ("30 2 * * *", "*-*-* 02:30:00"),
            ("*/15 * * * *", "*-*-* *:00/15:00"),
            ("*/2 * * * * *", "*-*-* *:*:00/2"),
            ("0 9-17 * * MON-FRI", "Mon..Fri *-*-* 09..17:00:00"),
            ("0 0 * * 0,6", "Sat,Sun *-*-* 00:00:00"),
            ("0 0 * * 7", "Sun *-*-* 00:00:00"),
            ("0 0 1,15 * *", "*-*-01,15 00:00:00"),
            ("0 0 1 */3 *", "*-01/3-01 00:00:00"),
            ("0 5-20/5 * * *", "*-*-* 05/5:00:00"),
            ("0 2-14/4 * * *", "*-*-* 02..14/4:00:00"),
            ("0 0 * * 1-3,5", "Mon..Wed,Fri *-*-* 00:00:00"),
            ("0,20,45 * * * *", "*-*-* *:00,20,45:00"),
            ("0 0 1 * +MON", "Mon *-*-01 00:00:00"),
        ];
        for (s, want) in cases {
            let schedule: Schedule = s.parse().unwrap();
            assert_eq!(
                schedule.on_calendar().as_deref(),
                Ok(*want),
                "schedule {s:?}"
            );
        }
    }

    #[test]
    fn untranslatable_schedules_say_why() {
        for (s, needle) in [
            ("0 0 1 * MON", "either the day of month or the weekday"),
            ("0 0 L * *", "L, W and #"),
            ("0 0 * * MON#2", "L, W and #"),
        ] {
            let err = s.parse::<Schedule>().unwrap().on_calendar().unwrap_err();
            assert!(err.contains(needle), "{s:?}: {err}");
            assert!(err.contains("cairn agent"), "{err}");
        }
    }

    #[test]
    fn second_accuracy() {
        assert!(!"daily".parse::<Schedule>().unwrap().needs_second_accuracy());
        assert!(
            "*/5 * * * * *"
                .parse::<Schedule>()
                .unwrap()
                .needs_second_accuracy()
        );
    }
}
