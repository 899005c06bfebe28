//! Durations as people write them (`90s`, `10m`, `1h 30m`, `1500ms`): the
//! one parser and the one printer for every duration a flag, a config file
//! or a report carries.

use std::time::Duration;

/// Parses `1h`, `1h 30m`, `90s`, `1500ms`, `2 days`, `1w`, … (jiff's
/// friendly format, and ISO 8601 `PT1H30M`), a day being 24 hours.
/// Months and years, whose length varies, and negative durations are refused.
pub fn parse(text: &str) -> Result<Duration, String> {
    let span: jiff::Span = text.trim().parse().map_err(|e| format!("{e}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{e}"))?;
    if signed.is_negative() {
        return Err("a duration cannot be negative".into());
    }
    Duration::try_from(signed).map_err(|e| format!("{e}"))
}

/// Parses a whole number of seconds (what prune's options count in).
pub fn parse_secs(text: &str) -> Result<i64, String> {
    let d = parse(text)?;
    i64::try_from(d.as_secs()).map_err(|_| format!("duration {text:?} is too long"))
}

/// Prints the largest units first, zero units left out: `1h 30m`, `2days 3h`,
/// `1s 500ms`, `0s`.
pub fn format(d: Duration) -> String {
    const UNITS: [(u64, &str, &str); 6] = [
        (31_557_600, "year", "years"),
        (2_630_016, "month", "months"),
        (86_400, "day", "days"),
        (3_600, "h", "h"),
        (60, "m", "m"),
        (1, "s", "s"),
    ];
    let mut secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (size, one, many) in UNITS {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            parts.push(format!("{n}{}", if n == 1 { one } else { many }));
        }
    }
    let (ms, us, ns) = (nanos / 1_000_000, nanos / 1_000 % 1_000, nanos % 1_000);
    for (n, unit) in [(ms, "ms"), (us, "us"), (ns, "ns")] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

/// A whole number of seconds that prints and parses as a duration (a flag's
/// value and its `[default: 1h]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub i64);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format(Duration::from_secs(self.0.max(0) as u64)))
    }
}

impl std::str::FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_secs(s)
            .map(Secs)
            .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 1h, 30m, 10s)"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_what_people_write() {
        for (text, secs, millis) in [
            ("90s", 90, 0),
            ("10m", 600, 0),
            ("1h 30m", 5400, 0),
            ("1h30m", 5400, 0),
            ("1500ms", 1, 500),
            ("0s", 0, 0),
            ("2 days", 172_800, 0),
            (" 5m ", 300, 0),
            ("1w", 604_800, 0),
        ] {
            let d = parse(text).unwrap();
            assert_eq!((d.as_secs(), d.subsec_millis()), (secs, millis), "{text}");
        }
        for bad in ["", "soon", "-5m", "5", "1 month"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn prints_largest_units_first() {
        for (secs, nanos, text) in [
            (0, 0, "0s"),
            (600, 0, "10m"),
            (5400, 0, "1h 30m"),
            (3661, 0, "1h 1m 1s"),
            (86_400, 0, "1day"),
            (2 * 86_400 + 3 * 3600, 0, "2days 3h"),
            (1, 500_000_000, "1s 500ms"),
        ] {
            assert_eq!(format(Duration::new(secs, nanos)), text);
        }
        assert_eq!(Secs(3600).to_string(), "1h");
        assert_eq!("5m".parse::<Secs>().unwrap(), Secs(300));
    }
}
