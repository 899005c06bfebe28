//! How far this node has caught up, kept in `DATA_DIR/sync.json` so that
//! a node killed during a move resumes it at the last key it copied
//! instead of starting over, and published to etcd as `SyncProgress`.
//!
//! A partition streamed under layout version `v` stays caught up under a
//! later version in which the node still owns it: the node has been in the
//! partition's write set all along (writes go to the owners in every
//! version of the history). Partitions it no longer owns are forgotten.

use std::path::PathBuf;
use std::sync::Mutex;

use cairn_proto::cluster::PARTITIONS;
use cairn_proto::v1;

use super::layout::{FORMAT, View, bit, set_bit};

/// Where a move stopped: the last key copied, of one table of one
/// repository of one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The partition being streamed.
    pub partition: u32,
    /// Repository id (hex).
    pub repo: String,
    /// Index into `RecordTable::ALL`.
    pub table: usize,
    /// The last key copied (hex).
    pub after: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    layout_version: u64,
    /// Partitions streamed in and caught up on (hex bitmap).
    caught_up: String,
    moves_done: u64,
    records_copied: u64,
    repairs: u64,
    /// Moves under way (one per partition being streamed).
    resuming: Vec<Resume>,
}

/// The progress file.
pub struct Progress {
    path: PathBuf,
    state: Mutex<State>,
}

impl Progress {
    /// Reads `path` (a missing file is no progress).
    pub fn load(path: PathBuf) -> Result<Self, String> {
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let s: State =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if s.format > FORMAT {
                    return Err(format!(
                        "{}: format {} is newer than this cairn-index understands",
                        path.display(),
                        s.format
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                format: FORMAT,
                ..State::default()
            },
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Self {
            path,
            state: Mutex::new(state),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn save(&self, state: &State) -> Result<(), String> {
        let text = serde_json::to_string(state).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("json.tmp");
        // Written whole and renamed, not synced: a node killed at any
        // point finds the last complete version (the page cache outlives
        // the process); after a power loss an older one, which only means
        // copying some records again (merging is idempotent).
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, text.as_bytes())?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Follows the layout's newest version: keeps only the partitions this
    /// node (`me`) still owns, and drops a resume point it no longer needs.
    pub fn follow(&self, layout: &v1::Layout, me: &str) -> Result<(), String> {
        let Some(version) = layout.history.last().map(|v| v.version) else {
            return Ok(());
        };
        if self.with(|s| s.layout_version == version) {
            return Ok(());
        }
        let Some(view) = View::new(layout) else {
            return Ok(());
        };
        let state = self.with(|s| {
            if s.layout_version == version {
                return None;
            }
            let old = hex::decode(&s.caught_up).unwrap_or_default();
            let mut kept = Vec::new();
            for p in 0..PARTITIONS {
                if bit(&old, p) && view.newest_owners(p).contains(&me) {
                    set_bit(&mut kept, p);
                }
            }
            s.caught_up = hex::encode(&kept);
            s.layout_version = version;
            s.resuming.retain(|r| view.must_stream(me, r.partition));
            Some(s.clone())
        });
        match state {
            Some(s) => self.save(&s),
            None => Ok(()),
        }
    }

    /// Whether partition `p` has been streamed in under the current version.
    pub fn caught_up(&self, p: u32) -> bool {
        self.with(|s| bit(&hex::decode(&s.caught_up).unwrap_or_default(), p))
    }

    /// Where the move of `p` stopped, if it did.
    pub fn resume_point(&self, p: u32) -> Option<Resume> {
        self.with(|s| s.resuming.iter().find(|r| r.partition == p).cloned())
    }

    /// Records that a move copied up to `at`.
    pub fn copied(&self, at: Resume, records: u64) -> Result<(), String> {
        let s = self.with(|s| {
            s.resuming.retain(|r| r.partition != at.partition);
            s.resuming.push(at);
            s.records_copied += records;
            s.clone()
        });
        self.save(&s)
    }

    /// Records that partition `p` is caught up.
    pub fn finished(&self, p: u32) -> Result<(), String> {
        let s = self.with(|s| {
            let mut bits = hex::decode(&s.caught_up).unwrap_or_default();
            set_bit(&mut bits, p);
            s.caught_up = hex::encode(&bits);
            s.moves_done += 1;
            s.resuming.retain(|r| r.partition != p);
            s.clone()
        });
        self.save(&s)
    }

    /// Counts records repaired by anti-entropy (persisted with the next save).
    pub fn repaired(&self, records: u64) {
        self.with(|s| s.repairs += records);
    }

    /// (moves done, records copied, repairs) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.with(|s| (s.moves_done, s.records_copied, s.repairs))
    }

    /// What this node publishes to etcd.
    pub fn published(&self) -> v1::SyncProgress {
        self.with(|s| v1::SyncProgress {
            format: FORMAT,
            layout_version: s.layout_version,
            caught_up: hex::decode(&s.caught_up).unwrap_or_default().into(),
            moves_done: s.moves_done,
            records_copied: s.records_copied,
            repairs: s.repairs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::layout::{apply, stage_add};

    #[test]
    fn progress_survives_a_restart_and_follows_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.json");
        let mut staged = v1::StagedLayout::default();
        let node = |id: &str| v1::LayoutNode {
            id: id.into(),
            address: String::new(),
            capacity: 1,
        };
        stage_add(&mut staged, vec![node("a"), node("b")], Some(1));
        let v1 = apply(&v1::Layout::default(), &staged).unwrap();
        let mut staged = v1::StagedLayout::default();
        stage_add(&mut staged, vec![node("c")], None);
        let v2 = apply(&v1, &staged).unwrap();
        let view = View::new(&v2).unwrap();
        let moving: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| view.must_stream("c", p))
            .collect();

        let progress = Progress::load(path.clone()).unwrap();
        progress.follow(&v2, "c").unwrap();
        progress.finished(moving[0]).unwrap();
        let at = Resume {
            partition: moving[1],
            repo: "ab".into(),
            table: 0,
            after: "00".into(),
        };
        progress.copied(at.clone(), 10).unwrap();

        let again = Progress::load(path).unwrap();
        assert!(again.caught_up(moving[0]));
        assert!(!again.caught_up(moving[1]));
        assert_eq!(again.resume_point(moving[1]), Some(at));
        assert_eq!(again.totals(), (1, 10, 0));
        let published = again.published();
        assert_eq!(published.layout_version, 2);
        assert!(bit(&published.caught_up, moving[0]));
    }
}
