//! The Cairn backup client: backup, restore, check and index engines behind
//! the `cairn` command.
//!
//! Engines are generic over [`cairn_index::Index`], so the same pipeline
//! runs against the embedded index (local mode) and a remote cluster.

pub mod agent;
pub mod backup;
pub mod browse;
pub mod check;
pub mod context;
pub mod fsmeta;
pub mod progress;
pub mod prune;
pub mod rebuild;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod source;
