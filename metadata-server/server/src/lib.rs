//! The `cairn-index` server: a node of the index cluster.
//!
//! A thin layer over the index engine ([`cairn_index`]): the tonic service
//! ([`service`]), which only parses, authorizes, calls the engine and maps
//! errors; a node's configuration, tenants and membership ([`node`]); its
//! Prometheus metrics ([`metrics`]); and running it on listeners the caller
//! bound, with health and graceful shutdown ([`server`]); who may call what
//! ([`access`]: tokens and roles) and the audit trail ([`audit`]); and the
//! node's place in a cluster run on etcd ([`cluster`]: layout, moves,
//! anti-entropy, status). The
//! `cairn` client links the engine and a gRPC client, never this crate.

pub mod access;
pub mod audit;
pub mod cluster;
pub mod metrics;
pub mod node;
pub mod server;
pub mod service;
