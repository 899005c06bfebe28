//! `cairn tag`.

use anyhow::Result;
use cairn_client::tag::{self, TagChange};
use serde_json::json;
use tokio::runtime::Runtime;

use super::Globals;
use super::render::print_json;

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (id, prefix or `latest`).
    #[arg(required = true, value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Add this tag (repeatable, or a,b).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    add: Vec<String>,
    /// Remove this tag (repeatable, or a,b).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    remove: Vec<String>,
    /// Replace all tags with these (repeatable, or a,b; --set '' clears them).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    set: Option<Vec<String>>,
}

pub fn run(rt: &Runtime, g: &Globals, a: TagArgs) -> Result<u8> {
    let repo = rt.block_on(g.repo.open())?;
    let mut ids = Vec::new();
    for r in &a.snapshots {
        ids.push(rt.block_on(repo.resolve_snapshot(r))?);
    }
    ids.dedup();
    let set = a
        .set
        .map(|s| s.into_iter().filter(|t| !t.is_empty()).collect());
    let done = rt.block_on(tag::retag(
        &repo,
        &ids,
        &TagChange {
            add: a.add,
            remove: a.remove,
            set,
        },
    ))?;
    if g.json {
        let list: Vec<_> = done
            .iter()
            .map(|r| json!({"old": r.old, "new": r.new, "tags": r.tags}))
            .collect();
        print_json(&serde_json::Value::Array(list));
        return Ok(0);
    }
    for r in &done {
        match r.new {
            Some(new) => println!(
                "snapshot {} is now {} (tags: {})",
                r.old.short(),
                new.short(),
                r.tags.join(",")
            ),
            None => println!(
                "snapshot {} unchanged (tags: {})",
                r.old.short(),
                r.tags.join(",")
            ),
        }
    }
    Ok(0)
}
