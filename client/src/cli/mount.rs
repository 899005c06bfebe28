//! `cairn mount`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_client::mount::{self, SnapshotFs};
use cairn_client::retention::{Filter, SnapshotMeta, TagList};
use cairn_client::source::BlobSource;
use cairn_client::treecache::TreeCache;
use tokio::runtime::Runtime;

use super::Globals;

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Empty directory to show the snapshots in.
    mountpoint: PathBuf,
    /// Only snapshots of this host (repeatable).
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only snapshots with all these tags (a,b; repeatable: any list).
    #[arg(long, value_name = "TAGS")]
    tag: Vec<TagList>,
    /// Only snapshots that include this path (repeatable: all of them).
    #[arg(long, value_name = "PATH")]
    path: Vec<String>,
    /// Decrypted chunks kept in memory at most (e.g. 64MiB, 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    cache_size: u64,
}

/// A byte count: a number with an optional binary or decimal unit
/// (`4096`, `64KiB`, `256MiB`, `1GiB`, `500MB`).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 256MiB, 1GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {s:?} (units: KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

pub fn run(rt: &Runtime, g: &Globals, a: MountArgs) -> Result<u8> {
    mount::check_mountpoint(&a.mountpoint)?;
    let repo = rt.block_on(g.repo.open())?;
    let filter = Filter {
        hosts: a.host,
        tags: a.tag,
        paths: a.path,
    };
    let snapshots: Vec<_> = rt
        .block_on(repo.snapshots())?
        .into_iter()
        .filter(|(id, s)| filter.matches(&SnapshotMeta::new(*id, s)))
        .collect();
    // Only a cluster index: the embedded one admits one process at a time,
    // and a mount must not keep backups out.
    let index = match g.repo.index {
        Some(_) => rt.block_on(g.repo.open_index_for_reading(&repo)),
        None => None,
    };
    let cache = TreeCache::for_repo(&repo);
    let source = BlobSource::new(repo, index).with_tree_cache(cache);
    let fs = SnapshotFs::new(source, rt.handle().clone(), &snapshots, a.cache_size)?;
    let session = mount::mount(fs, &a.mountpoint)?;
    let shown = a.mountpoint.display();
    eprintln!(
        "mounted {} snapshot(s) at {shown}; Ctrl-C or SIGTERM unmounts",
        snapshots.len()
    );
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot wait for SIGTERM")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(()),
                _ = term.recv() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return Ok(());
                    }
                }
            }
        }
    })?;
    let detached = mount::unmount(session, &a.mountpoint)
        .with_context(|| format!("cannot unmount {shown}"))?;
    if detached {
        eprintln!("{shown} was busy (files open in it): detached; it is gone once they close");
    }
    eprintln!("unmounted {shown}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(parse_size("lots").unwrap_err().contains("invalid size"));
        assert!(parse_size("5 parsecs").unwrap_err().contains("units"));
        assert!(
            parse_size("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
