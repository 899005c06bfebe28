#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of the `cairn` binary: each test runs the real command
//! against a repository in its own temporary directory.
//!
//! Run: `CARGO_TARGET_DIR=/work/.cache/cairn-target cargo test -p cairn-client --test integration`

mod common;
// The object-store conformance suite, the same source the store's own unit
// tests run, compiled here for the S3 servers (its `super::` is this root).
#[path = "../../chunk-store/src/store/conformance.rs"]
mod conformance;
use cairn_chunk_store::store::{ObjectStore, StoreError};
mod inspect;

mod agent;
mod at_rest;
mod cluster;
mod copy;
mod corruption;
mod crash;
mod dedup;
mod dry_run;
mod errors;
mod excludes;
mod faultproxy;
mod find;
mod fixture;
mod fuzz_seeds;
mod generate;
mod heal;
mod index;
mod keys;
mod leakage;
mod lock;
mod mount;
mod output;
mod partition;
mod privilege;
mod prune;
mod prune_explains;
mod round_trips;
mod roundtrip;
mod s3;
mod selftest;
mod snapshots;
mod stats;
mod stdin;
mod tag;
mod tree_cache;
