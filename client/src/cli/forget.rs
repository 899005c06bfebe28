//! `cairn forget`.

use anyhow::{Context, Result};
use cairn_client::retention::{
    self, Filter, ForgetReport, ForgetRequest, Policy, SnapshotMeta, TagList, local_time,
};
use jiff::tz::TimeZone;
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::prune::{self, PruneArgs, PruneTuning};
use super::render::print_json;

/// `cairn forget`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// Snapshots to remove (id, unique prefix, or `latest`), instead of a policy.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// The keep policy.
    #[command(flatten)]
    policy: Policy,
    /// Only consider snapshots of this host (repeatable).
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only consider snapshots with all these tags (a,b; repeatable: any list).
    #[arg(long, value_name = "TAGS")]
    tag: Vec<TagList>,
    /// Only consider snapshots that include this path (repeatable: all of them).
    #[arg(long, value_name = "PATH")]
    path: Vec<std::path::PathBuf>,
    /// Show what would be removed, remove nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Then run `cairn prune` to reclaim the space.
    #[arg(long)]
    prune: bool,
    /// Options of the prune that `--prune` runs.
    #[command(flatten)]
    prune_options: PruneTuning,
}

/// Runs `cairn forget`, then prune with `--prune`.
pub fn run(rt: &Runtime, g: &Globals, a: ForgetArgs) -> Result<u8> {
    let prune = a.prune.then(|| PruneArgs {
        dry_run: a.dry_run,
        tuning: a.prune_options.clone(),
    });
    if let Some(p) = &prune {
        // Refuse bad prune options before anything is removed.
        p.tuning.options(p.dry_run)?;
    }
    let mut paths = Vec::new();
    for p in &a.path {
        let abs = std::path::absolute(p).with_context(|| format!("path {}", p.display()))?;
        paths.push(abs.display().to_string());
    }
    let repo = rt.block_on(g.repo.open())?;
    let tz = TimeZone::system();
    // A cluster's commit times decide, never the times snapshots claim; a
    // cluster that cannot say stops forget before it removes anything.
    let cluster = rt
        .block_on(g.repo.open_remote(&repo))
        .context("forget goes by the index cluster's commit times")?;
    let report = rt.block_on(retention::forget(
        &repo,
        ForgetRequest {
            snapshots: a.snapshots,
            policy: a.policy,
            filter: Filter {
                hosts: a.host,
                tags: a.tag,
                paths,
            },
            dry_run: a.dry_run,
        },
        &tz,
        cluster.as_deref().map(|c| c as &dyn cairn_index::GcIndex),
    ))?;
    if g.json {
        print_json(&report_json(&report));
    } else {
        print_text(&report, &tz);
    }
    match prune {
        Some(p) => {
            if !g.json {
                println!();
            }
            prune::run(rt, g, &p)
        }
        None => Ok(0),
    }
}

fn report_json(report: &ForgetReport) -> serde_json::Value {
    match report {
        ForgetReport::Named { dry_run, removed } => {
            json!({"dry_run": dry_run, "removed": removed, "groups": []})
        }
        ForgetReport::NoPolicy { dry_run } => {
            json!({"dry_run": dry_run, "removed": [], "groups": []})
        }
        ForgetReport::Policy {
            dry_run,
            policy,
            groups,
            removed,
        } => {
            let groups: Vec<_> = groups
                .iter()
                .map(|g| {
                    json!({
                        "host": g.key.host,
                        "paths": g.key.paths,
                        "tags": g.key.tags,
                        "keep": g.keep.iter().map(|k| {
                            let mut v = snapshot_ref(&k.snapshot);
                            v["reasons"] = json!(k.reasons);
                            v
                        }).collect::<Vec<_>>(),
                        "remove": g.remove.iter().map(snapshot_ref).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"dry_run": dry_run, "policy": policy, "groups": groups, "removed": removed})
        }
    }
}

/// A snapshot as the forget report names it: the time the policy went by
/// (`time`, and which one it is in `time_used`: `committed` by the index
/// cluster, or the `snapshot`'s own), both times, and whether they
/// disagree by more than the clock-skew margin (`suspect`).
fn snapshot_ref(s: &SnapshotMeta) -> serde_json::Value {
    json!({
        "id": s.id,
        "short_id": s.id.short(),
        "time": s.time.to_string(),
        "time_used": if s.committed.is_some() { "committed" } else { "snapshot" },
        "snapshot_time": s.claimed.to_string(),
        "committed_time": s.committed.map(|t| t.to_string()),
        "suspect": s.suspect,
    })
}

/// A snapshot's line: id, the time the policy went by, and a mark when the
/// time it claims disagrees with the index's record.
fn snapshot_line(s: &SnapshotMeta, tz: &TimeZone) -> String {
    let mark = if s.suspect {
        format!("  [claims {}]", local_time(s.claimed, tz))
    } else {
        String::new()
    };
    format!("{}  {}{mark}", s.id.short(), local_time(s.time, tz))
}

fn print_text(report: &ForgetReport, tz: &TimeZone) {
    match report {
        ForgetReport::Named { dry_run, removed } => {
            let verb = if *dry_run { "would remove" } else { "removed" };
            for id in removed {
                println!("{verb} snapshot {}", id.short());
            }
        }
        ForgetReport::NoPolicy { .. } => {
            println!("no policy was given (--keep-*), no snapshots will be removed");
        }
        ForgetReport::Policy {
            dry_run,
            policy,
            groups,
            removed,
        } => {
            println!("applying policy: {policy}");
            for g in groups {
                println!();
                println!("snapshots for {}:", g.key);
                println!("keep {} snapshot(s):", g.keep.len());
                for k in &g.keep {
                    println!(
                        "  {}  {}",
                        snapshot_line(&k.snapshot, tz),
                        k.reasons.join(", ")
                    );
                }
                if !g.remove.is_empty() {
                    println!("remove {} snapshot(s):", g.remove.len());
                    for s in &g.remove {
                        println!("  {}", snapshot_line(s, tz));
                    }
                }
            }
            println!();
            if *dry_run {
                println!("dry run: {} snapshot(s) would be removed", removed.len());
            } else {
                println!("removed {} snapshot(s)", removed.len());
            }
        }
    }
}
