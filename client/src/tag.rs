//! `cairn tag`: changes the tags of snapshots.
//!
//! A manifest never changes once written (create-only objects), so a
//! snapshot with other tags is a new manifest: the same tree, time, host and
//! paths, and in `original` the id the backup wrote. The new manifest is
//! written before the old one is removed, so at every moment one of them
//! names the snapshot's data; prune lists the manifests again when one it
//! listed has vanished (see `prune::run`), so it finds the new one.

use anyhow::{Context, Result, bail};
use cairn_chunk_store::manifest::manifest_key;
use cairn_chunk_store::{Repository, SnapshotId};

/// How the tags change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagChange {
    /// Tags to add.
    pub add: Vec<String>,
    /// Tags to remove.
    pub remove: Vec<String>,
    /// Replace every tag with these (not with `add` or `remove`).
    pub set: Option<Vec<String>>,
}

impl TagChange {
    /// The tags after the change, in their order, without repeats.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = match &self.set {
            Some(set) => set.clone(),
            None => tags.iter().chain(&self.add).cloned().collect(),
        };
        out.retain(|t| !self.remove.contains(t));
        let mut seen = std::collections::HashSet::new();
        out.retain(|t| seen.insert(t.clone()));
        out
    }
}

/// What `tag` did to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retagged {
    /// The snapshot as it was.
    pub old: SnapshotId,
    /// Its rewrite (`None`: the tags were already so, nothing written).
    pub new: Option<SnapshotId>,
    /// Its tags now.
    pub tags: Vec<String>,
}

/// Applies `change` to each of `ids`.
pub async fn retag(
    repo: &Repository,
    ids: &[SnapshotId],
    change: &TagChange,
) -> Result<Vec<Retagged>> {
    if change.set.is_some() && !(change.add.is_empty() && change.remove.is_empty()) {
        bail!("--set replaces every tag: give it without --add and --remove");
    }
    if change.set.is_none() && change.add.is_empty() && change.remove.is_empty() {
        bail!("nothing to change: give --add, --remove or --set");
    }
    // Retagging replaces manifests: credentials that may not delete stop
    // here, before a new manifest is written beside the old one.
    repo.store().check_delete().await?;
    let mut out = Vec::new();
    for id in ids {
        let old = repo
            .load_snapshot(id)
            .await
            .with_context(|| format!("snapshot {}", id.short()))?;
        let tags = change.apply(&old.tags);
        if tags == old.tags {
            out.push(Retagged {
                old: *id,
                new: None,
                tags,
            });
            continue;
        }
        let mut new = old.clone();
        new.tags = tags.clone();
        if new.original.is_empty() {
            new.original = id.as_bytes().to_vec();
        }
        let (new_id, sealed) = repo.seal_snapshot(&new);
        repo.put_sealed_snapshot(&new_id, sealed)
            .await
            .with_context(|| format!("writing the retagged snapshot {}", id.short()))?;
        repo.store()
            .delete(&manifest_key(id))
            .await
            .with_context(|| format!("removing snapshot {} after retagging it", id.short()))?;
        out.push(Retagged {
            old: *id,
            new: Some(new_id),
            tags,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn changes_keep_order_and_drop_repeats() {
        let add = TagChange {
            add: v(&["b", "c"]),
            remove: v(&["a"]),
            set: None,
        };
        assert_eq!(add.apply(&v(&["a", "b"])), v(&["b", "c"]));
        let set = TagChange {
            set: Some(v(&["x", "x", "y"])),
            ..TagChange::default()
        };
        assert_eq!(set.apply(&v(&["a"])), v(&["x", "y"]));
    }
}
