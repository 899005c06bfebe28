//! Retention: which snapshots a keep policy keeps, and `cairn forget`, which
//! deletes the manifests of the others.
//!
//! The policy is restic's, so that people who know `restic forget` can read
//! a Cairn policy without surprises:
//!
//! - Snapshots are first divided into groups (`--group-by`, default
//!   `host,paths`); the policy applies to each group on its own.
//! - Within a group, snapshots are walked newest first. `--keep-last N` keeps
//!   the N newest. `--keep-hourly N` (and daily, weekly, monthly, yearly)
//!   keeps the newest snapshot of each of the N most recent hours (days, ISO
//!   weeks, months, years) that have a snapshot; periods without one are not
//!   counted. If a rule still has counts left when the walk reaches the oldest
//!   snapshot, that one is kept too ("oldest daily snapshot"), which stretches
//!   the kept history as far as it goes.
//! - `--keep-within D` keeps every snapshot newer than the group's latest
//!   snapshot minus D (calendar years, months, days, hours: `1y5m7d2h`, as in
//!   restic; `m` is months). It is relative to the latest snapshot, not to
//!   now, so a machine that stopped backing up does not lose its history.
//! - `--keep-tag a,b` keeps every snapshot that has all of the tags `a` and
//!   `b`; repeating the flag keeps snapshots matching any of the lists.
//!   Tagged snapshots do not use up any count.
//! - A snapshot is kept if any rule keeps it; an empty policy keeps
//!   everything (forget then removes nothing).
//!
//! Calendar periods are taken in the local time zone. `forget` removes
//! manifests only: the data they referenced stays until `cairn prune`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use cairn_chunk_store::manifest::{Snapshot, manifest_key};
use cairn_chunk_store::{Repository, SnapshotId};
use cairn_index::{CommitTime, GcIndex};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use serde::Deserialize;

/// How many periods (or snapshots) one rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepCount {
    /// At most this many.
    Count(u32),
    /// All of them (`unlimited`, or `-1` as restic also accepts).
    Unlimited,
}

impl KeepCount {
    fn is_zero(self) -> bool {
        self == KeepCount::Count(0)
    }
}

impl FromStr for KeepCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "unlimited" | "-1" => Ok(KeepCount::Unlimited),
            n => n
                .parse()
                .map(KeepCount::Count)
                .map_err(|_| format!("invalid count {s:?}: expected a number or \"unlimited\"")),
        }
    }
}

impl fmt::Display for KeepCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepCount::Count(n) => write!(f, "{n}"),
            KeepCount::Unlimited => f.write_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(-1) => Ok(KeepCount::Unlimited),
            Raw::Number(n) => u32::try_from(n).map(KeepCount::Count).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid count {n}: expected 0 or more, or \"unlimited\""
                ))
            }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A `keep-within` duration: restic's `1y5m7d2h` (years, months, days,
/// hours; `m` is months), or a friendly span such as `2 weeks` or `36h`.
#[derive(Debug, Clone)]
pub struct KeepWithin {
    text: String,
    span: Span,
}

impl PartialEq for KeepWithin {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl KeepWithin {
    /// The calendar span subtracted from the latest snapshot's time.
    pub fn span(&self) -> Span {
        self.span
    }

    /// restic's grammar: digits followed by one of `y`, `m`, `d`, `h`, repeated.
    fn parse_restic(s: &str) -> Option<Span> {
        let (mut years, mut months, mut days, mut hours) = (0i64, 0i64, 0i64, 0i64);
        let mut digits = String::new();
        let mut any = false;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().ok()?;
            digits.clear();
            match c {
                'y' => years += n,
                'm' => months += n,
                'd' => days += n,
                'h' => hours += n,
                _ => return None,
            }
            any = true;
        }
        if !digits.is_empty() || !any {
            return None;
        }
        Span::new()
            .try_years(years)
            .ok()?
            .try_months(months)
            .ok()?
            .try_days(days)
            .ok()?
            .try_hours(hours)
            .ok()
    }
}

impl FromStr for KeepWithin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let span = Self::parse_restic(text)
            .or_else(|| text.parse::<Span>().ok())
            .ok_or_else(|| {
                format!("invalid duration {s:?}: expected years, months, days and hours such as \"1y6m\" or \"7d12h\" (m is months), or a span such as \"2 weeks\"")
            })?;
        if span.is_negative() {
            return Err(format!("invalid duration {s:?}: it must not be negative"));
        }
        Ok(KeepWithin {
            text: text.to_string(),
            span,
        })
    }
}

impl fmt::Display for KeepWithin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for KeepWithin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A list of tags that must all be present (`a,b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList(pub Vec<String>);

impl TagList {
    /// True if the snapshot has every tag of the list.
    pub fn matches(&self, tags: &[String]) -> bool {
        self.0.iter().all(|t| tags.contains(t))
    }
}

impl FromStr for TagList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let tags: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if tags.is_empty() {
            return Err(format!("invalid tag list {s:?}: give at least one tag"));
        }
        Ok(TagList(tags))
    }
}

impl fmt::Display for TagList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl<'de> Deserialize<'de> for TagList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Which snapshot fields form a group (`host,paths,tags`, any subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// Group by host name.
    pub host: bool,
    /// Group by the set of backed-up paths.
    pub paths: bool,
    /// Group by the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(format!(
                        "invalid group-by field {other:?}: expected host, paths or tags"
                    ));
                }
            }
        }
        Ok(g)
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.host {
            parts.push("host");
        }
        if self.paths {
            parts.push("paths");
        }
        if self.tags {
            parts.push("tags");
        }
        f.write_str(&parts.join(","))
    }
}

impl<'de> Deserialize<'de> for GroupBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A keep policy: the `--keep-*` flags of `cairn forget`, and the
/// `[jobs.NAME.retention]` table of the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Keep the N most recent snapshots ("unlimited" for all).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<KeepCount>,
    /// Keep the most recent snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<KeepCount>,
    /// Keep the most recent snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<KeepCount>,
    /// Keep the most recent snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<KeepCount>,
    /// Keep the most recent snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<KeepCount>,
    /// Keep the most recent snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<KeepCount>,
    /// Keep every snapshot newer than the latest one minus DURATION (e.g. 1y5m7d2h; m is months).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<KeepWithin>,
    /// Keep every snapshot that has all these tags (a,b); repeatable.
    #[arg(long, value_name = "TAGS")]
    #[serde(default)]
    pub keep_tag: Vec<TagList>,
    /// Apply the policy to each group of snapshots with the same host, paths and/or tags.
    #[arg(long, value_name = "FIELDS", default_value = "host,paths")]
    #[serde(default)]
    pub group_by: GroupBy,
    /// Agent jobs only (`prune = true`): run `cairn prune` (default options)
    /// after the policy removed snapshots. `cairn forget` has `--prune`.
    #[arg(skip)]
    #[serde(default)]
    pub prune: bool,
}

/// The period rules, newest-first bucketing as restic does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    fn reason(self) -> &'static str {
        match self {
            Period::Last => "last snapshot",
            Period::Hourly => "hourly snapshot",
            Period::Daily => "daily snapshot",
            Period::Weekly => "weekly snapshot",
            Period::Monthly => "monthly snapshot",
            Period::Yearly => "yearly snapshot",
        }
    }

    /// The period a snapshot falls in; `nr` (its position, newest first)
    /// makes every snapshot its own period for `keep-last`.
    fn bucket(self, t: &Zoned, nr: usize) -> i64 {
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month()),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Period::Last => nr as i64,
            Period::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Daily => (y * 100 + m) * 100 + d,
            Period::Weekly => {
                let w = t.date().iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Monthly => y * 100 + m,
            Period::Yearly => y,
        }
    }
}

impl Policy {
    fn periods(&self) -> Vec<(Period, KeepCount)> {
        [
            (Period::Last, self.keep_last),
            (Period::Hourly, self.keep_hourly),
            (Period::Daily, self.keep_daily),
            (Period::Weekly, self.keep_weekly),
            (Period::Monthly, self.keep_monthly),
            (Period::Yearly, self.keep_yearly),
        ]
        .into_iter()
        .filter_map(|(p, c)| c.filter(|c| !c.is_zero()).map(|c| (p, c)))
        .collect()
    }

    /// True if no rule is set: such a policy keeps every snapshot.
    pub fn is_empty(&self) -> bool {
        self.periods().is_empty() && self.keep_within.is_none() && self.keep_tag.is_empty()
    }

    /// Applies the policy to one group of snapshots (any order). Returns the
    /// kept snapshots with their reasons and the removed ones, newest first.
    pub fn apply(
        &self,
        mut group: Vec<SnapshotMeta>,
        tz: &TimeZone,
    ) -> (Vec<Kept>, Vec<SnapshotMeta>) {
        group.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
        if self.is_empty() {
            let keep = group
                .into_iter()
                .map(|snapshot| Kept {
                    snapshot,
                    reasons: vec!["no policy".into()],
                })
                .collect();
            return (keep, Vec::new());
        }
        let within_cutoff = match (&self.keep_within, group.first()) {
            (Some(w), Some(latest)) => Some(
                latest
                    .time
                    .to_zoned(tz.clone())
                    .checked_sub(w.span())
                    .map(|z| z.timestamp())
                    // A span reaching before any representable time keeps everything.
                    .unwrap_or(Timestamp::MIN),
            ),
            _ => None,
        };
        let locals: Vec<Zoned> = group.iter().map(|s| s.time.to_zoned(tz.clone())).collect();
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); group.len()];
        for (nr, snap) in group.iter().enumerate() {
            for list in &self.keep_tag {
                if list.matches(&snap.tags) {
                    reasons[nr].push(format!("has tags {list}"));
                }
            }
            if let (Some(cutoff), Some(w)) = (within_cutoff, &self.keep_within)
                && snap.time > cutoff
            {
                reasons[nr].push(format!("within {w}"));
            }
        }
        let oldest = group.len().saturating_sub(1);
        for (period, mut left) in self.periods() {
            let buckets: Vec<i64> = (0..group.len())
                .map(|nr| period.bucket(&locals[nr], nr))
                .collect();
            let mut last: Option<i64> = None;
            for nr in 0..group.len() {
                if left == KeepCount::Count(0) {
                    break;
                }
                let new_period = last != Some(buckets[nr]);
                if !new_period && nr != oldest {
                    continue;
                }
                // The period's snapshot: its newest, unless that one is
                // suspect and another in the same period is not (a forged
                // time never displaces a genuine snapshot).
                let chosen = if new_period && group[nr].suspect {
                    (nr..group.len())
                        .take_while(|&j| buckets[j] == buckets[nr])
                        .find(|&j| !group[j].suspect)
                        .unwrap_or(nr)
                } else {
                    nr
                };
                reasons[chosen].push(if new_period {
                    period.reason().to_string()
                } else {
                    format!("oldest {}", period.reason())
                });
                last = Some(buckets[nr]);
                if let KeepCount::Count(n) = &mut left {
                    *n -= 1;
                }
            }
        }
        let (mut keep, mut remove) = (Vec::new(), Vec::new());
        for (snap, reasons) in group.into_iter().zip(reasons) {
            if reasons.is_empty() {
                remove.push(snap);
            } else {
                keep.push(Kept {
                    snapshot: snap,
                    reasons,
                });
            }
        }
        (keep, remove)
    }

    /// Groups the snapshots and applies the policy to each group.
    pub fn plan(&self, snapshots: Vec<SnapshotMeta>, tz: &TimeZone) -> Vec<GroupPlan> {
        let mut groups: BTreeMap<GroupKey, Vec<SnapshotMeta>> = BTreeMap::new();
        for s in snapshots {
            groups
                .entry(GroupKey::of(&s, self.group_by))
                .or_default()
                .push(s);
        }
        groups
            .into_iter()
            .map(|(key, group)| {
                let (keep, remove) = self.apply(group, tz);
                GroupPlan { key, keep, remove }
            })
            .collect()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .periods()
            .into_iter()
            .map(|(p, c)| match p {
                Period::Last => format!("the last {c} snapshots"),
                _ => format!("{c} {}", p.reason().trim_end_matches(" snapshot")),
            })
            .collect();
        if let Some(w) = &self.keep_within {
            parts.push(format!("all within {w} of the latest"));
        }
        for t in &self.keep_tag {
            parts.push(format!("all tagged {t}"));
        }
        if parts.is_empty() {
            return f.write_str("keep everything");
        }
        write!(f, "keep {}", parts.join(", "))
    }
}

/// What the policy needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotMeta {
    /// Snapshot id.
    pub id: SnapshotId,
    /// The time the policy goes by: when the index committed the snapshot
    /// where the index recorded it (a cluster), else the time the snapshot
    /// claims.
    pub time: Timestamp,
    /// The time the snapshot claims (when its backup started, by the
    /// clock of the machine that made it).
    pub claimed: Timestamp,
    /// When the index committed it, by the index's clock (cluster only).
    pub committed: Option<Timestamp>,
    /// The claimed time is off the committed one by more than the skew
    /// margin: a machine with a wrong clock, or a forged time.
    pub suspect: bool,
    /// Host name.
    pub host: String,
    /// Backed-up paths, sorted.
    pub paths: Vec<String>,
    /// Tags, sorted.
    pub tags: Vec<String>,
}

impl SnapshotMeta {
    /// From a loaded manifest.
    pub fn new(id: SnapshotId, s: &Snapshot) -> Self {
        let mut paths = s.paths.clone();
        paths.sort();
        let mut tags = s.tags.clone();
        tags.sort();
        let time =
            Timestamp::from_nanosecond(i128::from(s.time_ns)).unwrap_or(Timestamp::UNIX_EPOCH);
        SnapshotMeta {
            id,
            time,
            claimed: time,
            committed: None,
            suspect: false,
            host: s.host.clone(),
            paths,
            tags,
        }
    }

    /// Goes by the index's record of the commit from now on, marking the
    /// snapshot suspect if the time it claims is further than
    /// `margin_secs` from when its session began on the index (a backup's
    /// snapshot time is taken as its session begins).
    pub fn with_commit_time(mut self, t: CommitTime, margin_secs: i64) -> Self {
        let Ok(committed) = Timestamp::from_second(t.committed) else {
            return self;
        };
        self.suspect = (self.claimed.as_second() - t.started).abs() > margin_secs;
        self.committed = Some(committed);
        self.time = committed;
        self
    }
}

/// The fields a group shares (those not grouped by are `None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// Host name.
    pub host: Option<String>,
    /// Paths.
    pub paths: Option<Vec<String>>,
    /// Tags.
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    fn of(s: &SnapshotMeta, by: GroupBy) -> Self {
        GroupKey {
            host: by.host.then(|| s.host.clone()),
            paths: by.paths.then(|| s.paths.clone()),
            tags: by.tags.then(|| s.tags.clone()),
        }
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h:?}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("all snapshots");
        }
        f.write_str(&parts.join(", "))
    }
}

/// A kept snapshot and every rule that keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The snapshot.
    pub snapshot: SnapshotMeta,
    /// Why it is kept ("daily snapshot", "within 7d", ...).
    pub reasons: Vec<String>,
}

/// The outcome of the policy for one group.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// What the group's snapshots share.
    pub key: GroupKey,
    /// Kept, newest first.
    pub keep: Vec<Kept>,
    /// To remove, newest first.
    pub remove: Vec<SnapshotMeta>,
}

/// Deletes the manifests of `ids`. The data they referenced stays in the
/// repository until `cairn prune` finds it unreferenced.
pub async fn remove_snapshots(repo: &Repository, ids: &[SnapshotId]) -> Result<()> {
    for id in ids {
        repo.store()
            .delete(&manifest_key(id))
            .await
            .with_context(|| format!("removing snapshot {}", id.short()))?;
    }
    Ok(())
}

/// Which snapshots `cairn forget` considers (restic's filters).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of these hosts (all if empty).
    pub hosts: Vec<String>,
    /// Any of these tag lists (all if empty).
    pub tags: Vec<TagList>,
    /// Snapshots that include every one of these paths (all if empty).
    pub paths: Vec<String>,
}

impl Filter {
    /// True if the snapshot passes.
    pub fn matches(&self, s: &SnapshotMeta) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && (self.tags.is_empty() || self.tags.iter().any(|t| t.matches(&s.tags)))
            && self.paths.iter().all(|p| s.paths.contains(p))
    }
}

/// What `cairn forget` is asked to remove.
#[derive(Debug, Clone)]
pub struct ForgetRequest {
    /// Snapshots named by id, unique prefix or `latest` (instead of a policy).
    pub snapshots: Vec<String>,
    /// The keep policy (empty when snapshots are named).
    pub policy: Policy,
    /// Which snapshots the policy considers.
    pub filter: Filter,
    /// Decide and report, remove nothing.
    pub dry_run: bool,
}

/// What `cairn forget` removed (or, in a dry run, would remove).
#[derive(Debug, Clone)]
pub enum ForgetReport {
    /// Snapshots named by id.
    Named {
        /// A dry run.
        dry_run: bool,
        /// Removed, in the order named, without repeats.
        removed: Vec<SnapshotId>,
    },
    /// Neither ids nor a policy: nothing is removed.
    NoPolicy {
        /// A dry run.
        dry_run: bool,
    },
    /// The policy applied to each group.
    Policy {
        /// A dry run.
        dry_run: bool,
        /// The policy, as people read it.
        policy: String,
        /// Per group: kept and removed snapshots.
        groups: Vec<GroupPlan>,
        /// Every removed snapshot.
        removed: Vec<SnapshotId>,
    },
}

/// Applies `request` to the repository's snapshots: resolves the named
/// snapshots or plans the policy (periods in `tz`), and deletes the
/// manifests unless it is a dry run.
///
/// With `index` (a cluster: the index runs apart from the machines that
/// back up), the policy goes by the time the index committed each
/// snapshot, not the time the snapshot claims: a machine that can write
/// snapshots cannot forge times that push genuine snapshots out of the
/// policy. Snapshots the index has no record of (made before it kept them)
/// go by their claimed time.
pub async fn forget(
    repo: &Repository,
    request: ForgetRequest,
    tz: &TimeZone,
    index: Option<&dyn GcIndex>,
) -> Result<ForgetReport> {
    let ForgetRequest {
        snapshots,
        policy,
        filter,
        dry_run,
    } = request;
    if !snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or --keep-* options, not both");
        }
        let mut ids = Vec::new();
        for reference in &snapshots {
            ids.push(repo.resolve_snapshot(reference).await?);
        }
        ids.dedup();
        let locks = manifest_locks(repo).await?;
        if let Some((id, until)) = ids
            .iter()
            .find_map(|id| locks.get(id).map(|until| (id, *until)))
        {
            bail!(
                "snapshot {} is under the repository's object lock until {}; it can be removed after that",
                id.short(),
                Timestamp::from_second(until).unwrap_or(Timestamp::MAX)
            );
        }
        if !dry_run {
            repo.store().check_delete().await?;
            remove_snapshots(repo, &ids).await?;
        }
        return Ok(ForgetReport::Named {
            dry_run,
            removed: ids,
        });
    }
    if policy.is_empty() {
        return Ok(ForgetReport::NoPolicy { dry_run });
    }
    let all = repo.snapshots().await?;
    let mut metas: Vec<SnapshotMeta> = all
        .iter()
        .map(|(id, s)| SnapshotMeta::new(*id, s))
        .filter(|m| filter.matches(m))
        .collect();
    if let Some(index) = index {
        metas = with_commit_times(index, metas).await?;
    }
    let mut groups = policy.plan(metas, tz);
    let locks = manifest_locks(repo).await?;
    for g in &mut groups {
        let (held, remove): (Vec<_>, Vec<_>) = std::mem::take(&mut g.remove)
            .into_iter()
            .partition(|s| locks.contains_key(&s.id));
        g.remove = remove;
        for snapshot in held {
            let until = Timestamp::from_second(locks[&snapshot.id]).unwrap_or(Timestamp::MAX);
            g.keep.push(Kept {
                snapshot,
                reasons: vec![format!("object lock until {until}")],
            });
        }
        g.keep.sort_by_key(|k| std::cmp::Reverse(k.snapshot.time));
    }
    let removed: Vec<SnapshotId> = groups
        .iter()
        .flat_map(|g| g.remove.iter().map(|s| s.id))
        .collect();
    if !dry_run && !removed.is_empty() {
        repo.store().check_delete().await?;
        remove_snapshots(repo, &removed).await?;
    }
    Ok(ForgetReport::Policy {
        dry_run,
        policy: policy.to_string(),
        groups,
        removed,
    })
}

/// Manifests under the repository's object lock now, with the date each
/// is locked until (the store's writing time plus the lock's days plus
/// prune's clock-skew margin). Empty without a lock.
async fn manifest_locks(repo: &Repository) -> Result<std::collections::HashMap<SnapshotId, i64>> {
    let mut out = std::collections::HashMap::new();
    let Some(lock) = repo.config().object_lock else {
        return Ok(out);
    };
    let now = cairn_chunk_store::now_unix_nanos() / 1_000_000_000;
    for o in repo.store().list("manifests/").await? {
        let Some(Ok(id)) = o.key.rsplit('/').next().map(str::parse::<SnapshotId>) else {
            continue;
        };
        let written = o.modified.unwrap_or(now);
        let until = lock.retain_until(written) + crate::prune::DEFAULT_SKEW_SECS;
        if until > now {
            out.insert(id, until);
        }
    }
    Ok(out)
}

/// The snapshots with the index's record of their commits (see
/// [`SnapshotMeta::with_commit_time`]; the margin is prune's clock-skew
/// margin).
pub async fn with_commit_times(
    index: &dyn GcIndex,
    metas: Vec<SnapshotMeta>,
) -> Result<Vec<SnapshotMeta>> {
    let ids: Vec<SnapshotId> = metas.iter().map(|m| m.id).collect();
    let times = index
        .commit_times(&ids)
        .await
        .context("retention goes by the index's commit times")?;
    Ok(metas
        .into_iter()
        .zip(times)
        .map(|(m, t)| match t {
            Some(t) => m.with_commit_time(t, crate::prune::DEFAULT_SKEW_SECS),
            None => m,
        })
        .collect())
}

/// `2024-06-01 14:03:07` in the given zone.
pub fn local_time(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The fixed history every case is run against (UTC), newest last.
    /// It spans two years, with clusters inside one hour, one day and one
    /// ISO week so that every period rule has something to collapse.
    const TIMES: &[&str] = &[
        "2023-01-10T12:00:00Z", // 0  2023-W02
        "2023-06-15T08:00:00Z", // 1  2023-W24
        "2023-12-31T23:00:00Z", // 2  2023-W52 (a Sunday)
        "2024-01-01T01:00:00Z", // 3  2024-W01 (a Monday)
        "2024-02-29T10:00:00Z", // 4  2024-W09
        "2024-03-01T09:00:00Z", // 5  2024-W09
        "2024-03-04T09:00:00Z", // 6  2024-W10
        "2024-03-04T09:30:00Z", // 7  2024-W10, same hour as 6
        "2024-03-04T15:00:00Z", // 8  2024-W10, same day as 6
        "2024-03-05T09:00:00Z", // 9  2024-W10
        "2024-03-05T09:45:00Z", // 10 2024-W10, same hour as 9
        "2024-03-06T00:00:00Z", // 11 2024-W10
    ];

    fn history() -> Vec<SnapshotMeta> {
        TIMES
            .iter()
            .enumerate()
            .map(|(i, t)| SnapshotMeta {
                id: SnapshotId::from_bytes([i as u8; 32]),
                time: t.parse().unwrap(),
                claimed: t.parse().unwrap(),
                committed: None,
                suspect: false,
                host: "host".into(),
                paths: vec!["/data".into()],
                tags: match i {
                    1 => vec!["keep".into(), "manual".into()],
                    4 => vec!["manual".into()],
                    _ => vec![],
                },
            })
            .collect()
    }

    fn policy(flags: &str) -> Policy {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            policy: Policy,
        }
        let args = std::iter::once("test").chain(flags.split_whitespace());
        Cli::try_parse_from(args).unwrap().policy
    }

    /// Indices of the kept snapshots, oldest first.
    fn kept(p: &Policy, snaps: Vec<SnapshotMeta>) -> Vec<usize> {
        let (keep, remove) = p.apply(snaps, &TimeZone::UTC);
        assert_eq!(keep.len() + remove.len(), TIMES.len());
        let mut idx: Vec<usize> = keep
            .iter()
            .map(|k| k.snapshot.id.as_bytes()[0] as usize)
            .collect();
        idx.sort();
        idx
    }

    #[test]
    fn each_flag_and_combinations_keep_what_restic_keeps() {
        let cases: &[(&str, &[usize])] = &[
            ("", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
            ("--keep-last 0", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
            ("--keep-last 1", &[11]),
            ("--keep-last 3", &[9, 10, 11]),
            ("--keep-last 20", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
            (
                "--keep-last unlimited",
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            ),
            // Hours newest first: 11, 10 (09h of the 5th; 9 shares it), 8,
            // 7 (09h of the 4th; 6 shares it), 5, 4, ...
            ("--keep-hourly 2", &[10, 11]),
            ("--keep-hourly 4", &[7, 8, 10, 11]),
            ("--keep-hourly unlimited", &[0, 1, 2, 3, 4, 5, 7, 8, 10, 11]),
            // Days: 6th (11), 5th (10), 4th (8), 1st Mar (5), 29th Feb (4).
            ("--keep-daily 3", &[8, 10, 11]),
            ("--keep-daily 5", &[4, 5, 8, 10, 11]),
            // ISO weeks: W10-2024 (11), W09 (5), W01-2024 (3), W52-2023 (2), W24 (1).
            ("--keep-weekly 2", &[5, 11]),
            ("--keep-weekly 4", &[2, 3, 5, 11]),
            // Months: 2024-03 (11), 2024-02 (4), 2024-01 (3), 2023-12 (2).
            ("--keep-monthly 3", &[3, 4, 11]),
            // Years: 2024 (11), 2023 (2).
            ("--keep-yearly 1", &[11]),
            ("--keep-yearly 2", &[2, 11]),
            // Counts left at the oldest snapshot keep it ("oldest yearly").
            ("--keep-yearly 5", &[0, 2, 11]),
            ("--keep-monthly 100", &[0, 1, 2, 3, 4, 11]),
            // Within is relative to the latest snapshot (2024-03-06T00:00Z),
            // strictly newer than the cutoff.
            ("--keep-within 1d", &[9, 10, 11]),
            ("--keep-within 2d", &[6, 7, 8, 9, 10, 11]),
            // 6 is exactly at the cutoff (03-04T09:00) and is not kept.
            ("--keep-within 1d15h", &[7, 8, 9, 10, 11]),
            ("--keep-within 1d14h", &[8, 9, 10, 11]),
            ("--keep-within 1m", &[4, 5, 6, 7, 8, 9, 10, 11]),
            ("--keep-within 3y", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
            ("--keep-within 2weeks", &[4, 5, 6, 7, 8, 9, 10, 11]),
            // Tags need every tag of a list; lists are alternatives.
            ("--keep-tag manual", &[1, 4]),
            ("--keep-tag keep,manual", &[1]),
            ("--keep-tag keep --keep-tag nope", &[1]),
            ("--keep-tag nope", &[]),
            // Combinations: a snapshot is kept if any rule keeps it.
            ("--keep-last 2 --keep-daily 3", &[8, 10, 11]),
            ("--keep-last 1 --keep-tag manual", &[1, 4, 11]),
            (
                "--keep-daily 2 --keep-weekly 2 --keep-monthly 2",
                &[4, 5, 10, 11],
            ),
            ("--keep-daily 1 --keep-yearly 3", &[0, 2, 11]),
            ("--keep-hourly 1 --keep-within 2d", &[6, 7, 8, 9, 10, 11]),
            (
                "--keep-within 1d --keep-tag manual --keep-yearly 2",
                &[1, 2, 4, 9, 10, 11],
            ),
        ];
        for (flags, want) in cases {
            let got = kept(&policy(flags), history());
            assert_eq!(&got, want, "policy {flags:?}");
        }
    }

    #[test]
    fn forged_times_do_not_displace_genuine_snapshots_of_a_period() {
        let day = 86_400;
        let now = 1_733_280_000;
        let snap = |i: u8, claimed: i64, committed: i64| {
            let t = Timestamp::from_second(claimed).unwrap();
            SnapshotMeta {
                id: SnapshotId::from_bytes([i; 32]),
                time: t,
                claimed: t,
                committed: None,
                suspect: false,
                host: "h".into(),
                paths: vec!["/d".into()],
                tags: vec![],
            }
            .with_commit_time(
                CommitTime {
                    committed,
                    started: committed - 60,
                },
                300,
            )
        };
        // A week of genuine dailies (claimed = session start), then 20
        // forged snapshots committed today after the genuine one of today,
        // claiming days long past or in the future.
        let mut snaps: Vec<SnapshotMeta> = (0..7)
            .map(|d| snap(d as u8, now - d * day - 60, now - d * day))
            .collect();
        for k in 0..20 {
            let claimed = if k % 2 == 0 {
                now - (k + 1) * day
            } else {
                now + k * day
            };
            snaps.push(snap(100 + k as u8, claimed, now + 10 + k));
        }
        assert!(snaps[..7].iter().all(|s| !s.suspect));
        assert!(snaps[7..].iter().all(|s| s.suspect));
        let kept = kept_ids(&policy("--keep-daily 7"), snaps);
        assert_eq!(kept, (0..7).collect::<Vec<u8>>());
    }

    fn kept_ids(p: &Policy, snaps: Vec<SnapshotMeta>) -> Vec<u8> {
        let (keep, _) = p.apply(snaps, &TimeZone::UTC);
        let mut ids: Vec<u8> = keep.iter().map(|k| k.snapshot.id.as_bytes()[0]).collect();
        ids.sort();
        ids
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut shuffled = history();
        shuffled.reverse();
        shuffled.swap(0, 5);
        let p = policy("--keep-daily 3 --keep-monthly 2");
        assert_eq!(kept(&p, shuffled), kept(&p, history()));
    }

    #[test]
    fn reasons_name_every_rule_that_keeps_a_snapshot() {
        let p = policy(
            "--keep-last 1 --keep-daily 2 --keep-yearly 5 --keep-within 1d --keep-tag manual",
        );
        let (keep, _) = p.apply(history(), &TimeZone::UTC);
        let reasons = |i: u8| {
            keep.iter()
                .find(|k| k.snapshot.id.as_bytes()[0] == i)
                .map(|k| k.reasons.clone())
                .unwrap()
        };
        assert_eq!(
            reasons(11),
            [
                "within 1d",
                "last snapshot",
                "daily snapshot",
                "yearly snapshot"
            ]
        );
        assert_eq!(reasons(10), ["within 1d", "daily snapshot"]);
        assert_eq!(reasons(4), ["has tags manual"]);
        assert_eq!(reasons(0), ["oldest yearly snapshot"]);
    }

    #[test]
    fn buckets_use_the_given_time_zone() {
        // 2023-12-31T23:00Z is already 2024-01-01 in Berlin: it shares the
        // day (and year) with 2024-01-01T01:00Z there, but not in UTC.
        let snaps: Vec<SnapshotMeta> = history()
            .into_iter()
            .filter(|s| [2, 3].contains(&(s.id.as_bytes()[0])))
            .collect();
        let p = policy("--keep-daily 10");
        let (keep, _) = p.apply(snaps.clone(), &TimeZone::UTC);
        assert_eq!(keep.len(), 2);
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let (keep, remove) = p.apply(snaps, &berlin);
        // The newer one is the day's snapshot; the older is kept only as the oldest.
        assert_eq!(keep.len(), 2);
        assert_eq!(keep[1].reasons, ["oldest daily snapshot"]);
        assert!(remove.is_empty());
    }

    #[test]
    fn groups_are_separate_and_configurable() {
        let mut snaps = history();
        for s in snaps.iter_mut().filter(|s| s.id.as_bytes()[0] % 2 == 1) {
            s.host = "other".into();
        }
        let p = policy("--keep-last 1");
        let plans = p.plan(snaps.clone(), &TimeZone::UTC);
        assert_eq!(plans.len(), 2);
        let newest: Vec<u8> = plans
            .iter()
            .map(|g| g.keep[0].snapshot.id.as_bytes()[0])
            .collect();
        assert_eq!(newest, [10, 11]); // host "host": 10; host "other": 11
        assert_eq!(plans[0].key.to_string(), "host \"host\", paths [/data]");

        let p = policy("--keep-last 1 --group-by paths");
        assert_eq!(p.plan(snaps.clone(), &TimeZone::UTC).len(), 1);
        let p = policy("--keep-last 1 --group-by tags");
        // Tag sets: [], [keep, manual], [manual].
        assert_eq!(p.plan(snaps, &TimeZone::UTC).len(), 3);
    }

    #[test]
    fn counts_durations_and_groups_parse_and_reject() {
        assert_eq!("7".parse::<KeepCount>(), Ok(KeepCount::Count(7)));
        assert_eq!("unlimited".parse::<KeepCount>(), Ok(KeepCount::Unlimited));
        assert!("-3".parse::<KeepCount>().is_err());
        assert!("x".parse::<KeepCount>().is_err());
        let w: KeepWithin = "1y5m7d2h".parse().unwrap();
        let span = w.span();
        assert_eq!(
            (
                span.get_years(),
                span.get_months(),
                span.get_days(),
                span.get_hours()
            ),
            (1, 5, 7, 2)
        );
        assert!("5x".parse::<KeepWithin>().is_err());
        assert!("".parse::<KeepWithin>().is_err());
        assert!("-2d".parse::<KeepWithin>().is_err());
        assert_eq!(
            "host,tags".parse::<GroupBy>().unwrap().to_string(),
            "host,tags"
        );
        assert!("hosts".parse::<GroupBy>().is_err());
        assert_eq!(
            "a, b".parse::<TagList>().unwrap(),
            TagList(vec!["a".into(), "b".into()])
        );
        assert!(",".parse::<TagList>().is_err());
    }

    #[test]
    fn policy_deserializes_from_toml() {
        let p: Policy = toml::from_str(
            "keep_daily = 7\nkeep_weekly = -1\nkeep_within = \"30d\"\nkeep_tag = [\"a,b\"]\ngroup_by = \"host\"\nprune = true\n",
        )
        .unwrap();
        assert_eq!(p.keep_daily, Some(KeepCount::Count(7)));
        assert_eq!(p.keep_weekly, Some(KeepCount::Unlimited));
        assert_eq!(
            p.keep_within.as_ref().map(ToString::to_string).as_deref(),
            Some("30d")
        );
        assert_eq!(p.keep_tag, [TagList(vec!["a".into(), "b".into()])]);
        assert!(!p.group_by.paths);
        assert!(p.prune);
        assert_eq!(
            p.to_string(),
            "keep 7 daily, all weekly, all within 30d of the latest, all tagged a,b"
        );
        let err = toml::from_str::<Policy>("keep_dialy = 7\n").unwrap_err();
        assert!(
            err.message().contains("unknown field `keep_dialy`"),
            "{err}"
        );
    }
}
