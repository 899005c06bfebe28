//! `cairn prune`.

use std::sync::Arc;

use anyhow::{Result, bail};
use cairn_client::duration::Secs;
use cairn_client::prune::{
    self, DEFAULT_GRACE_SECS, DEFAULT_MAX_UNUSED_PERCENT, DEFAULT_SKEW_SECS,
};
use cairn_client::prune::{PruneOptions, PruneReport, WaitReason, Waiting};
use cairn_client::retention::local_time;
use cairn_index::Index;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::runtime::Runtime;

use super::Globals;

/// `cairn prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Show what would be removed; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// How prune decides.
    #[command(flatten)]
    pub tuning: PruneTuning,
}

/// The options `cairn prune` and `cairn forget --prune` share.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneTuning {
    /// Repack packs whose unused share of bytes exceeds PERCENT.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_MAX_UNUSED_PERCENT)]
    pub max_unused: f64,
    /// Delete a pack only after it has held no live chunk this long (e.g. 1h, 30s).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(DEFAULT_GRACE_SECS))]
    pub grace: Secs,
    /// Margin for clocks that disagree between machines (e.g. 5m).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(DEFAULT_SKEW_SECS))]
    pub clock_skew: Secs,
}

impl PruneTuning {
    /// The engine's options.
    pub fn options(&self, dry_run: bool) -> Result<PruneOptions> {
        if !(0.0..=100.0).contains(&self.max_unused) {
            bail!(
                "--max-unused {} is not a percentage between 0 and 100",
                self.max_unused
            );
        }
        Ok(PruneOptions {
            dry_run,
            max_unused_percent: self.max_unused,
            grace_secs: self.grace.0,
            skew_secs: self.clock_skew.0,
        })
    }
}

/// Opens the repository and its index, runs prune, prints the report.
pub fn run(rt: &Runtime, g: &Globals, a: &PruneArgs) -> Result<u8> {
    let options = a.tuning.options(a.dry_run)?;
    let repo = rt.block_on(g.repo.open())?;
    // Prune never runs on a partial view: the cluster must answer (unlike
    // a backup, which carries on without it).
    let index: Arc<dyn Index> = match rt.block_on(g.repo.open_remote(&repo)) {
        Ok(Some(remote)) => {
            remote.require_role("prune", "prune")?;
            remote
        }
        Ok(None) => g.repo.open_embedded()?,
        Err(e) => return Err(e.context("prune needs the index cluster")),
    };
    let index = cairn_client::sealed_lengths::seal_index(&repo, index);
    let report = rt.block_on(prune::run(&repo, index, &options))?;
    print_report(&report, &options, g.json);
    Ok(0)
}

/// One line saying how much waits, for what, and until when.
fn waiting_line(w: &Waiting, options: &PruneOptions) -> String {
    let tz = TimeZone::system();
    let time = |t: Option<i64>| {
        t.and_then(|t| Timestamp::from_second(t).ok())
            .map(|t| local_time(t, &tz))
            .unwrap_or_else(|| "an unknown time".into())
    };
    let amount = format!("{} in {} pack(s)", indicatif::HumanBytes(w.bytes), w.packs);
    match w.reason {
        WaitReason::ClockSkew => format!(
            "{amount} waits for the clock-skew margin ({}) until {}",
            Secs(options.skew_secs),
            time(w.until)
        ),
        WaitReason::RunningBackup => format!(
            "{amount} is held by a running backup's session (host {}, started {})",
            w.host.as_deref().unwrap_or("unknown"),
            time(w.started)
        ),
        WaitReason::ForgottenParent => format!(
            "{amount} is held by running backups that reuse data of a forgotten snapshot, until they end"
        ),
        WaitReason::ObjectLock => format!(
            "{amount} is under the repository's object lock until {}; a later prune deletes it",
            time(w.until)
        ),
        WaitReason::GracePeriod => format!(
            "{amount} is younger than the grace period ({}) until {}; a later prune deletes it",
            Secs(options.grace_secs),
            time(w.until)
        ),
    }
}

/// Prints a report as text or one JSON line.
fn print_report(r: &PruneReport, options: &PruneOptions, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let would = if r.dry_run { "would be " } else { "" };
    println!(
        "{} snapshots use {} chunks; {} backup(s) running",
        r.snapshots, r.chunks_used, r.running_backups
    );
    println!("chunks condemned: {would}{}", r.chunks_condemned);
    if r.backups_from_forgotten_parents > 0 {
        println!(
            "nothing condemned: {} running backup(s) reuse data of a forgotten snapshot; run prune again once they end",
            r.backups_from_forgotten_parents
        );
    }
    if r.chunks_revived > 0 {
        println!(
            "chunks revived: {} (needed by a snapshot written without a session)",
            r.chunks_revived
        );
    }
    if r.packs_registered > 0 {
        println!("packs registered: {}", r.packs_registered);
    }
    println!(
        "packs repacked: {would}{} ({} chunks, {} written)",
        r.packs_repacked,
        r.chunks_repacked,
        indicatif::HumanBytes(r.bytes_repacked)
    );
    println!(
        "packs deleted: {would}{} of {}, {} freed",
        r.packs_deleted,
        r.packs,
        indicatif::HumanBytes(r.bytes_freed)
    );
    for w in &r.waiting {
        println!("{}", waiting_line(w, options));
    }
    if r.packs_unreadable > 0 {
        println!(
            "{} pack(s) could not be read and were left alone; run `cairn check`",
            r.packs_unreadable
        );
    }
}
