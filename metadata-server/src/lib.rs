//! The Cairn deduplication index.
//!
//! The index maps chunk ids to where they are stored, with the first and
//! last time each was seen. It is an **accelerator**: the object store is
//! the source of truth, every entry can be rebuilt from pack trailers
//! (`cairn index rebuild`), and losing the index never loses data. A backup
//! that gets no answer treats the chunk as unknown and uploads it again.
//!
//! [`Index`] is the seam: the embedded [`Engine`] (RocksDB in-process, used
//! in local mode) implements it, and so does the client for the remote
//! cluster.

mod engine;
mod error;
mod index;
mod lock;
pub mod metrics;
pub mod node;
mod record;
pub mod server;
pub mod service;

pub use engine::{Engine, EngineOptions};
pub use error::IndexError;
pub use index::{ChunkRecord, Index, IndexStats, RegisterOutcome};
pub use lock::LockWait;
