//! The Cairn backup client: backup, restore, check, prune and agent engines
//! behind the `cairn` command.
//!
//! Engines are generic over the index traits ([`cairn_index::DedupIndex`],
//! [`cairn_index::GcIndex`]), so the same pipeline
//! runs against the embedded index (local mode) and a remote cluster.
//!
//! **Who prints.** Engines return typed reports and errors and never write
//! to stdout or stderr or end the process. What a user must see while an
//! engine runs goes out as a `tracing` event ([`notify`]). The command-line
//! layer, `src/main.rs` and `src/cli/` (one module per command), is the only
//! code that prints, renders `--json`, or picks an exit code.

pub mod agent;
pub mod backup;
pub mod browse;
pub mod check;
pub mod context;
pub mod copy;
pub use cairn_chunk_store::duration;
pub mod find;
pub mod fsmeta;
pub mod mount;
pub mod notify;
pub mod paths;
pub mod progress;
pub mod prune;
pub mod rebuild;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod sealed_lengths;
pub mod source;
pub mod stats;
pub mod tag;
pub mod treecache;
