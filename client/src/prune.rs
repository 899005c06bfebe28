//! `cairn prune`: reclaim the space of data no snapshot needs, beside
//! running backups and without a lock.
//!
//! The protocol and why it is safe are written once, in the `cairn_index`
//! crate docs ("Garbage collection"); this module is its client half:
//!
//! 1. sessions and the index clock → which backups may still write a
//!    manifest → the cutoff;
//! 2. mark: every chunk reachable from the manifests in the store;
//! 3. register packs the index does not know (left by killed backups), so
//!    they are accounted for;
//! 4. condemn unmarked chunks seen before the cutoff (the index decides,
//!    atomically with backups' confirmations), unless a running backup's
//!    parent snapshot is no longer listed: that backup reuses the parent's
//!    data unconfirmed, and the mark could not see it;
//! 5. per pack, from every replica's records: live chunks and bytes;
//! 6. repack packs whose unused share exceeds `--max-unused`: verified
//!    copies of their live chunks go to a new pack, registered as a
//!    relocation, after which the old pack is dead;
//! 7. record which packs are dead and since when; delete those dead for the
//!    grace period, re-checking right before each delete, object first and
//!    tombstone second.
//!
//! Every step is an atomic index write or an idempotent store operation,
//! so a prune killed anywhere is simply run again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use cairn_chunk_store::pack::{BlobKind, PackEntry, PackWriter, SealedBlob, pack_key};
use cairn_chunk_store::tree::NodeKind;
use cairn_chunk_store::{ChunkId, PackId, Repository, SnapshotId};
use cairn_index::{ChunkRecord, Index, PackObservation};
use serde::Serialize;

use crate::source::{BlobSource, bounded_map};

/// Listings of the manifests prune makes at most while they keep changing.
const MAX_LISTINGS: usize = 20;

/// Default grace period: see the `cairn_index` crate docs for the reason.
pub const DEFAULT_GRACE_SECS: i64 = 3600;
/// Default margin for clocks that disagree between clients and index nodes.
pub const DEFAULT_SKEW_SECS: i64 = 300;
/// Default `--max-unused`: packs with more unused bytes than this are repacked.
pub const DEFAULT_MAX_UNUSED_PERCENT: f64 = 10.0;

/// How prune runs.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Repack packs whose unused share of bytes exceeds this (0–100).
    pub max_unused_percent: f64,
    /// A pack is deleted only after it has been dead this long (seconds).
    pub grace_secs: i64,
    /// Margin for clock differences (seconds).
    pub skew_secs: i64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            grace_secs: DEFAULT_GRACE_SECS,
            skew_secs: DEFAULT_SKEW_SECS,
        }
    }
}

/// What prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// A dry run.
    pub dry_run: bool,
    /// Snapshots whose data was kept.
    pub snapshots: usize,
    /// Backups running (sessions that may still write a snapshot).
    pub running_backups: usize,
    /// Chunks and data were condemned only if seen before this time (Unix seconds).
    pub cutoff_unix: i64,
    /// Distinct chunks reachable from the snapshots.
    pub chunks_used: u64,
    /// Chunks condemned by this run.
    pub chunks_condemned: u64,
    /// Running backups whose parent snapshot was forgotten: they reuse its
    /// data, which no listed snapshot may name, so nothing is condemned
    /// until they end (crate docs of `cairn_index`).
    pub backups_from_forgotten_parents: usize,
    /// Condemned chunks that a snapshot turned out to need (written by a
    /// backup that ran without a session), made live again.
    pub chunks_revived: u64,
    /// Packs in the store.
    pub packs: usize,
    /// Bytes of packs in the store before this run.
    pub bytes_before: u64,
    /// Packs registered because the index did not know them.
    pub packs_registered: usize,
    /// Packs repacked (their live chunks copied to new packs).
    pub packs_repacked: usize,
    /// Chunks copied by repacking.
    pub chunks_repacked: u64,
    /// Bytes written by repacking.
    pub bytes_repacked: u64,
    /// Packs deleted.
    pub packs_deleted: usize,
    /// Bytes freed by deleting packs.
    pub bytes_freed: u64,
    /// Dead packs still inside their grace period.
    pub packs_waiting: usize,
    /// Their bytes (freed by a later prune).
    pub bytes_waiting: u64,
    /// Packs whose table cannot be read (left alone; see `cairn check`).
    pub packs_unreadable: usize,
    /// Packs prune would delete or repack but for the object lock.
    pub packs_locked: usize,
    /// Their bytes.
    pub bytes_locked: u64,
    /// Data no snapshot needs that this run did not free, and why: one
    /// entry per reason, so a prune that frees less than `forget` made
    /// unreachable always says what it waits for.
    pub waiting: Vec<Waiting>,
}

/// Why unreachable data was not freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Seen by a backup within the clock-skew margin: a backup whose clock
    /// runs behind may still reference it.
    ClockSkew,
    /// Seen after a running backup's session began: that backup may
    /// reference it.
    RunningBackup,
    /// A running backup reuses data of a snapshot that was forgotten, so
    /// nothing is condemned until it ends.
    ForgottenParent,
    /// Its pack has been dead for less than the grace period.
    GracePeriod,
    /// Its pack is under the repository's object lock: the store refuses to
    /// delete it (and repacking it would only add a copy) until the date.
    ObjectLock,
}

/// An amount of unreachable data that waits, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// Why it waits.
    pub reason: WaitReason,
    /// Packs that hold it.
    pub packs: usize,
    /// Its stored bytes (chunk bytes for chunks not yet condemned, pack
    /// bytes for dead packs).
    pub bytes: u64,
    /// When a prune can free it (RFC 3339), when that is known.
    #[serde(serialize_with = "rfc3339")]
    pub until: Option<i64>,
    /// With `running_backup`: the host of the oldest running backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// With `running_backup`: when that backup began (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339")]
    pub started: Option<i64>,
}

fn rfc3339<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| jiff::Timestamp::from_second(t).ok()) {
        Some(t) => s.serialize_str(&t.to_string()),
        None => s.serialize_none(),
    }
}

/// Adds up unreachable chunks that stay live, by reason: who holds each,
/// in which pack, with how many bytes.
#[derive(Default)]
struct Held {
    /// Per reason: packs, bytes and the latest time it is held until.
    by_reason: Vec<(WaitReason, HashSet<PackId>, u64, Option<i64>)>,
}

impl Held {
    fn add(&mut self, reason: WaitReason, pack: PackId, bytes: u64, until: Option<i64>) {
        let i = match self.by_reason.iter().position(|(r, ..)| *r == reason) {
            Some(i) => i,
            None => {
                self.by_reason.push((reason, HashSet::new(), 0, None));
                self.by_reason.len() - 1
            }
        };
        let entry = &mut self.by_reason[i];
        entry.1.insert(pack);
        entry.2 += bytes;
        entry.3 = entry.3.max(until);
    }
}

impl PruneReport {
    /// Records the dead packs that wait for the grace period, if any.
    fn add_grace_wait(&mut self, until: i64) {
        if self.packs_waiting > 0 {
            self.waiting.push(Waiting {
                reason: WaitReason::GracePeriod,
                packs: self.packs_waiting,
                bytes: self.bytes_waiting,
                until: Some(until),
                host: None,
                started: None,
            });
        }
    }
}

impl PruneReport {
    /// Records what the object lock holds, if anything.
    fn add_lock_wait(&mut self, held: Held) {
        for (reason, packs, bytes, until) in held.by_reason {
            self.packs_locked += packs.len();
            self.bytes_locked += bytes;
            self.waiting.push(Waiting {
                reason,
                packs: packs.len(),
                bytes,
                until,
                host: None,
                started: None,
            });
        }
    }
}

/// Until when each pack is under the repository's object lock: its
/// writing time in the store plus the lock's days, plus the clock-skew
/// margin (the store's clock decides, not ours).
struct LockDates {
    until: HashMap<PackId, i64>,
    lock: Option<cairn_chunk_store::store::ObjectLock>,
    skew_secs: i64,
}

impl LockDates {
    async fn of(repo: &Repository, skew_secs: i64) -> Result<Self> {
        let lock = repo.config().object_lock;
        let mut until = HashMap::new();
        if let Some(lock) = lock {
            for o in repo.store().list("packs/").await? {
                let Some(Ok(id)) = o.key.rsplit('/').next().map(str::parse::<PackId>) else {
                    continue;
                };
                if let Some(written) = o.modified {
                    until.insert(id, lock.retain_until(written) + skew_secs);
                }
            }
        }
        Ok(Self {
            until,
            lock,
            skew_secs,
        })
    }

    /// The date a pack is locked until, if it still is at `now`. A pack
    /// whose writing time is unknown counts as written now.
    fn until(&self, pack: &PackId, now: i64) -> Option<i64> {
        let lock = self.lock?;
        let until = self
            .until
            .get(pack)
            .copied()
            .unwrap_or_else(|| lock.retain_until(now) + self.skew_secs);
        (until > now).then_some(until)
    }
}

/// A point where the tests that kill prune midway make it crash
/// (`CAIRN_PRUNE_FAULT=<point>`); nothing in a build without the
/// `test-support` feature of `cairn-chunk-store`.
fn fault(point: &str) {
    cairn_chunk_store::fault::crash_point("CAIRN_PRUNE_FAULT", "prune", point);
}

/// One pack as prune sees it.
struct PackView {
    size: u64,
    entries: Vec<PackEntry>,
}

/// Runs prune against `index` (which must keep sessions: the embedded index
/// or the cluster).
pub async fn run(
    repo: &Repository,
    index: Arc<dyn Index>,
    options: &PruneOptions,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: options.dry_run,
        ..PruneReport::default()
    };

    // 0. Credentials that may not delete stop prune before it changes anything.
    if !options.dry_run {
        repo.store().check_delete().await?;
    }

    // 1. Sessions first, manifests second (crate docs of cairn_index).
    let sessions = index
        .sessions()
        .await
        .context("prune needs the index's sessions")?;
    let now = sessions.now;
    let may_write: Vec<_> = sessions
        .sessions
        .iter()
        .filter(|s| s.expires + options.skew_secs > now)
        .collect();

    // 2. Mark.
    let source = BlobSource::new(repo.clone(), Some(index.clone()));
    let mut listed: HashSet<SnapshotId> = HashSet::new();
    let mut roots = Vec::new();
    // A manifest listed but gone when read was forgotten, or rewritten
    // (`cairn tag` writes the new manifest before it removes the old one):
    // then the listing is stale, and the manifests are listed again until
    // one pass finds none vanished.
    let mut vanished: HashSet<SnapshotId> = HashSet::new();
    for pass in 1.. {
        let mut stale = false;
        for id in repo.snapshot_ids().await? {
            if listed.contains(&id) || vanished.contains(&id) {
                continue;
            }
            match repo.load_snapshot(&id).await {
                Ok(snap) => {
                    let root = snap
                        .root_tree()
                        .with_context(|| format!("snapshot {}", id.short()))?;
                    roots.push((id, root));
                    listed.insert(id);
                }
                Err(e) if matches!(&e, cairn_chunk_store::RepoError::Store(s) if s.is_not_found()) =>
                {
                    vanished.insert(id);
                    stale = true;
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "cannot read snapshot {}; nothing was removed",
                        id.short()
                    )));
                }
            }
        }
        if !stale {
            break;
        }
        if pass == MAX_LISTINGS {
            bail!(
                "snapshots kept changing while prune read them ({MAX_LISTINGS} listings); nothing was removed, run prune again"
            );
        }
    }
    report.snapshots = roots.len();
    let running: Vec<_> = may_write
        .iter()
        .filter(|s| !s.committed.is_some_and(|c| listed.contains(&c)))
        .collect();
    report.running_backups = running.len();
    report.backups_from_forgotten_parents = running
        .iter()
        .filter(|s| s.parent.is_some_and(|p| !listed.contains(&p)))
        .count();
    let condemn = report.backups_from_forgotten_parents == 0;
    let cutoff = running.iter().map(|s| s.started).fold(now, i64::min) - options.skew_secs;
    report.cutoff_unix = cutoff;
    let used = mark(&source, &roots).await?;
    report.chunks_used = used.len() as u64;

    // 3. Every pack in the store, and what its table lists.
    let packs = repo.list_packs().await?;
    report.packs = packs.len();
    report.bytes_before = packs.iter().map(|(_, size)| size).sum();
    let trailers = bounded_map(packs, 16, |(id, size)| {
        let repo = repo.clone();
        async move { (id, size, repo.read_pack_trailer(&id, Some(size)).await) }
    })
    .await;
    let mut views: HashMap<PackId, PackView> = HashMap::new();
    for (id, size, trailer) in trailers {
        match trailer {
            Ok(entries) => {
                views.insert(id, PackView { size, entries });
            }
            // Unreadable packs are never deleted by prune; check reports them.
            Err(cairn_chunk_store::RepoError::Store(e)) if e.is_not_found() => {}
            Err(_) => report.packs_unreadable += 1,
        }
    }
    let mut all_chunks: Vec<ChunkId> = views
        .values()
        .flat_map(|v| v.entries.iter().map(|e| e.id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    all_chunks.sort_unstable();
    let mut records = lookup_everywhere(&*index, &all_chunks).await?;
    // Packs the index does not know (a killed backup's, or a backup's that
    // ran without the index): registered, so they are accounted for.
    let ids: Vec<PackId> = views.keys().copied().collect();
    let unregistered = index.unregistered_packs(&ids).await?;
    let mut orphans: Vec<PackId> = ids
        .iter()
        .zip(unregistered)
        .filter(|(id, missing)| {
            *missing
                || views[*id]
                    .entries
                    .iter()
                    .any(|e| records.get(&e.id).is_none_or(Vec::is_empty))
        })
        .map(|(id, _)| *id)
        .collect();
    orphans.sort_unstable();
    if !options.dry_run && !orphans.is_empty() {
        for id in &orphans {
            index.register_pack(*id, &views[id].entries).await?;
            report.packs_registered += 1;
        }
        records = lookup_everywhere(&*index, &all_chunks).await?;
    }

    // 4. Condemn.
    let candidates: Vec<ChunkId> = all_chunks
        .iter()
        .filter(|id| !used.contains(id))
        .copied()
        .collect();
    if !condemn {
        // Nothing condemned; chunks condemned earlier may still be revived.
        if !options.dry_run {
            report.chunks_revived = revive(&*index, &views, &used, &mut records).await?;
        }
    } else if options.dry_run {
        // What the index would condemn, from the same records.
        let unused: HashSet<ChunkId> = candidates.iter().copied().collect();
        for (id, recs) in records.iter_mut() {
            if unused.contains(id)
                && recs
                    .iter()
                    .all(|r| r.condemned || (r.first_seen < cutoff && r.last_seen < cutoff))
            {
                if recs.iter().any(|r| !r.condemned) {
                    report.chunks_condemned += 1;
                }
                for r in recs.iter_mut() {
                    r.condemned = true;
                }
            }
        }
    } else {
        let before = count_condemned(&records, &candidates);
        let after = condemn_batched(&*index, &candidates, cutoff).await?;
        report.chunks_condemned = after.saturating_sub(before);
        fault("after-condemn");
        records = lookup_everywhere(&*index, &all_chunks).await?;
        report.chunks_revived = revive(&*index, &views, &used, &mut records).await?;
    }

    // Unreachable chunks that stay live, and why (nothing is freed for
    // them by this run).
    let oldest_running = running.iter().min_by_key(|s| s.started);
    let mut held = Held::default();
    for id in &candidates {
        let Some(recs) = records.get(id) else {
            continue;
        };
        for r in recs.iter().filter(|r| !r.condemned) {
            let seen = r.first_seen.max(r.last_seen);
            let (reason, until) = if !condemn {
                (WaitReason::ForgottenParent, None)
            } else if seen >= now - options.skew_secs {
                // Condemned by the first prune whose cutoff passes it.
                (WaitReason::ClockSkew, Some(seen + options.skew_secs + 1))
            } else {
                (WaitReason::RunningBackup, None)
            };
            held.add(
                reason,
                r.location.pack,
                u64::from(r.location.stored_len),
                until,
            );
        }
    }
    for (reason, packs, bytes, until) in held.by_reason {
        let running = reason == WaitReason::RunningBackup;
        report.waiting.push(Waiting {
            reason,
            packs: packs.len(),
            bytes,
            until,
            host: oldest_running.filter(|_| running).map(|s| s.host.clone()),
            started: oldest_running.filter(|_| running).map(|s| s.started),
        });
    }

    // 5. Liveness per pack.
    let live = |pack: &PackId, e: &PackEntry, records: &HashMap<ChunkId, Vec<ChunkRecord>>| {
        match records.get(&e.id) {
            // Unknown to every replica: keep (the index may have lost it).
            None => true,
            Some(recs) if recs.is_empty() => true,
            Some(recs) => recs
                .iter()
                .any(|r| !r.condemned && r.location.pack == *pack),
        }
    };
    let mut dead: Vec<(PackId, PackObservation)> = Vec::new();
    let mut to_repack: Vec<PackId> = Vec::new();
    for (pack, view) in &views {
        let (mut live_bytes, mut total_bytes, mut last_live) = (0u64, 0u64, 0i64);
        let mut duplicates = false;
        for e in &view.entries {
            let bytes = u64::from(e.location.stored_len);
            total_bytes += bytes;
            if live(pack, e, &records) {
                live_bytes += bytes;
                continue;
            }
            match records.get(&e.id).and_then(|recs| {
                recs.iter()
                    .filter(|r| r.location.pack == *pack)
                    .map(|r| r.first_seen.max(r.last_seen))
                    .max()
            }) {
                Some(t) => last_live = last_live.max(t),
                // A copy the index never pointed to: when it stopped mattering
                // is unknown, so the grace period starts now.
                None => duplicates = true,
            }
        }
        if live_bytes == 0 {
            let since = if duplicates || last_live == 0 {
                now
            } else {
                last_live
            };
            dead.push((*pack, PackObservation::Dead { since }));
        } else if total_bytes > 0
            && (total_bytes - live_bytes) as f64 * 100.0
                > options.max_unused_percent * total_bytes as f64
        {
            to_repack.push(*pack);
        }
    }

    // Under an object lock a pack cannot be deleted before its date, so
    // repacking it early would only add a copy: both wait for the date.
    let locks = LockDates::of(repo, options.skew_secs).await?;
    let mut locked = Held::default();
    to_repack.retain(|pack| match locks.until(pack, now) {
        Some(until) => {
            let view = &views[pack];
            let unused: u64 = view
                .entries
                .iter()
                .filter(|e| !live(pack, e, &records))
                .map(|e| u64::from(e.location.stored_len))
                .sum();
            locked.add(WaitReason::ObjectLock, *pack, unused, Some(until));
            false
        }
        None => true,
    });

    // 6. Repack.
    if !to_repack.is_empty() {
        to_repack.sort_unstable();
        if options.dry_run {
            report.packs_repacked = to_repack.len();
        } else {
            for pack in &to_repack {
                let view = &views[pack];
                let keep: Vec<PackEntry> = view
                    .entries
                    .iter()
                    .filter(|e| live(pack, e, &records))
                    .cloned()
                    .collect();
                let (copied, written) = repack(repo, &*index, *pack, &keep).await?;
                if written == 0 {
                    continue;
                }
                report.packs_repacked += 1;
                report.chunks_repacked += copied;
                report.bytes_repacked += written;
                // The old copy was live until now.
                dead.push((*pack, PackObservation::Dead { since: now }));
            }
        }
    }

    // 7. Dead packs: record, then delete those past the grace period.
    let mut states: Vec<(PackId, PackObservation)> = views
        .keys()
        .filter(|p| !dead.iter().any(|(d, _)| d == *p))
        .map(|p| (*p, PackObservation::Live))
        .collect();
    states.extend(dead.iter().copied());
    let mut grace_until = 0;
    if options.dry_run {
        for (pack, seen) in &dead {
            if let PackObservation::Dead { since } = seen {
                if since + options.grace_secs <= now {
                    if let Some(until) = locks.until(pack, now) {
                        locked.add(WaitReason::ObjectLock, *pack, views[pack].size, Some(until));
                        continue;
                    }
                    report.packs_deleted += 1;
                    report.bytes_freed += views[pack].size;
                } else {
                    report.packs_waiting += 1;
                    report.bytes_waiting += views[pack].size;
                    grace_until = grace_until.max(since + options.grace_secs);
                }
            }
        }
        report.add_grace_wait(grace_until);
        report.add_lock_wait(locked);
        return Ok(report);
    }
    let since = index.pack_states(&states).await?;
    let mut due: Vec<PackId> = Vec::new();
    for ((pack, seen), since) in states.iter().zip(since) {
        if !matches!(seen, PackObservation::Dead { .. }) {
            continue;
        }
        if since > 0 && since + options.grace_secs <= now {
            if let Some(until) = locks.until(pack, now) {
                locked.add(WaitReason::ObjectLock, *pack, views[pack].size, Some(until));
                continue;
            }
            due.push(*pack);
        } else {
            report.packs_waiting += 1;
            report.bytes_waiting += views[pack].size;
            grace_until = grace_until.max(since + options.grace_secs);
        }
    }
    report.add_grace_wait(grace_until);
    report.add_lock_wait(locked);
    // Re-check right before deleting: a pack that holds a live chunk again
    // (on any replica) is live.
    let recheck_ids: Vec<ChunkId> = due
        .iter()
        .flat_map(|p| views[p].entries.iter().map(|e| e.id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let fresh = lookup_everywhere(&*index, &recheck_ids).await?;
    for pack in due {
        let view = &views[&pack];
        if view.entries.iter().any(|e| live(&pack, e, &fresh)) {
            index.pack_states(&[(pack, PackObservation::Live)]).await?;
            continue;
        }
        repo.store()
            .delete(&pack_key(&pack))
            .await
            .with_context(|| format!("deleting pack {pack}"))?;
        fault("after-delete");
        index
            .pack_states(&[(pack, PackObservation::Deleted)])
            .await?;
        report.packs_deleted += 1;
        report.bytes_freed += view.size;
    }
    index.flush().await?;
    Ok(report)
}

/// Makes live again every condemned chunk that a snapshot needs, at a copy
/// still in the store. Only a backup that ran without a session (its index
/// was unreachable when it began) can leave such a snapshot: it confirmed
/// nothing and uploaded everything, and its packs entered the index before
/// its manifest was written. Their packs are then not deleted.
async fn revive(
    index: &dyn Index,
    views: &HashMap<PackId, PackView>,
    used: &HashSet<ChunkId>,
    records: &mut HashMap<ChunkId, Vec<ChunkRecord>>,
) -> Result<u64> {
    let needs: HashSet<ChunkId> = records
        .iter()
        .filter(|(id, recs)| {
            used.contains(*id) && !recs.is_empty() && recs.iter().all(|r| r.condemned)
        })
        .map(|(id, _)| *id)
        .collect();
    if needs.is_empty() {
        return Ok(0);
    }
    let mut by_pack: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    let mut placed: HashSet<ChunkId> = HashSet::new();
    let mut packs: Vec<&PackId> = views.keys().collect();
    packs.sort_unstable();
    for pack in packs {
        for e in &views[pack].entries {
            if needs.contains(&e.id) && placed.insert(e.id) {
                by_pack.entry(*pack).or_default().push(*e);
            }
        }
    }
    let mut revived = 0;
    for (pack, entries) in by_pack {
        index.register_pack(pack, &entries).await?;
        for e in &entries {
            if let Some(recs) = records.get_mut(&e.id) {
                for r in recs.iter_mut() {
                    r.location = e.location;
                    r.condemned = false;
                }
            }
            revived += 1;
        }
    }
    Ok(revived)
}

/// Every chunk reachable from the snapshots' root trees.
async fn mark(source: &BlobSource, roots: &[(SnapshotId, ChunkId)]) -> Result<HashSet<ChunkId>> {
    let mut used: HashSet<ChunkId> = HashSet::new();
    for (snap, root) in roots {
        let mut stack = vec![*root];
        if !used.insert(*root) {
            continue;
        }
        while let Some(tree_id) = stack.pop() {
            let tree = source.tree(&tree_id).await.with_context(|| {
                format!(
                    "snapshot {} cannot be read completely; nothing was removed (run `cairn check`)",
                    snap.short()
                )
            })?;
            for node in &tree.nodes {
                match node.node_kind() {
                    Some(NodeKind::Dir) => {
                        let id = node.subtree_id()?;
                        if used.insert(id) {
                            stack.push(id);
                        }
                    }
                    Some(NodeKind::File) => used.extend(node.chunk_ids()?),
                    _ => {}
                }
            }
        }
    }
    Ok(used)
}

/// Chunks per index call when garbage collection reads, condemns or
/// confirms chunk records.
pub(crate) const GC_BATCH: usize = 4096;

async fn lookup_everywhere(
    index: &dyn Index,
    ids: &[ChunkId],
) -> Result<HashMap<ChunkId, Vec<ChunkRecord>>> {
    let mut out = HashMap::with_capacity(ids.len());
    for batch in ids.chunks(GC_BATCH) {
        let recs = index.records_everywhere(batch).await?;
        if recs.len() != batch.len() {
            bail!(
                "the index answered {} of {} lookups",
                recs.len(),
                batch.len()
            );
        }
        out.extend(batch.iter().copied().zip(recs));
    }
    Ok(out)
}

fn count_condemned(records: &HashMap<ChunkId, Vec<ChunkRecord>>, ids: &[ChunkId]) -> u64 {
    ids.iter()
        .filter(|id| {
            records
                .get(id)
                .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r.condemned))
        })
        .count() as u64
}

async fn condemn_batched(index: &dyn Index, ids: &[ChunkId], cutoff: i64) -> Result<u64> {
    let mut n = 0;
    for batch in ids.chunks(GC_BATCH) {
        n += index
            .condemn(batch, cutoff)
            .await?
            .into_iter()
            .filter(|c| *c)
            .count() as u64;
    }
    Ok(n)
}

/// Copies the live chunks `keep` of `pack` into new packs (each chunk read
/// and verified first), stores them, and records the move. Returns chunks
/// copied and bytes written.
async fn repack(
    repo: &Repository,
    index: &dyn Index,
    pack: PackId,
    keep: &[PackEntry],
) -> Result<(u64, u64)> {
    let bytes = match repo.store().get(&pack_key(&pack)).await {
        Ok(b) => b,
        // Another prune repacked and deleted it meanwhile.
        Err(e) if e.is_not_found() => return Ok((0, 0)),
        Err(e) => return Err(anyhow!(e).context(format!("reading pack {pack} to repack it"))),
    };
    let kind = keep.first().map_or(BlobKind::Data, |e| e.location.kind);
    let target = repo.config().pack_size as usize;
    let mut writer = PackWriter::new(kind, target + target / 8);
    let mut written = 0u64;
    let flush = |writer: PackWriter| async move {
        if writer.is_empty() {
            return Ok::<u64, anyhow::Error>(0);
        }
        let (id, body, entries) = writer.finish(repo.keys())?;
        let len = body.size();
        repo.put_pack(&id, body).await?;
        fault("after-repack-store");
        index.relocate(id, &entries).await?;
        Ok(len)
    };
    for e in keep {
        let l = &e.location;
        let end = (l.offset + u64::from(l.stored_len)) as usize;
        let sealed = bytes
            .get(l.offset as usize..end)
            .ok_or_else(|| anyhow!("pack {pack}: chunk {} lies beyond its end", e.id))?;
        // Verify before trust: a damaged chunk is not copied as if it were good.
        repo.open_blob(&e.id, l, sealed)
            .with_context(|| format!("repacking pack {pack}"))?;
        writer.add(SealedBlob {
            id: e.id,
            kind: l.kind,
            bytes: sealed.to_vec(),
            raw_len: l.raw_len,
            compression: l.compression,
        });
        if writer.len() >= target {
            let full = std::mem::replace(&mut writer, PackWriter::new(kind, target + target / 8));
            written += flush(full).await?;
        }
    }
    written += flush(writer).await?;
    fault("after-relocate");
    Ok((keep.len() as u64, written))
}
