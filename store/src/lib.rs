//! geobuk's store: a Raft-replicated MVCC key-value store on RocksDB that
//! speaks etcd's v3 gRPC API.
//!
//! Layers, top to bottom: `service` (gRPC handlers, wire ↔ domain) →
//! `raft` (openraft glue: log store, state machine, proposals) → `mvcc`,
//! `lease`, `watch` (the data model) → `engine` (RocksDB).

pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod peer;
pub mod proto;
pub mod raft;
pub mod restore;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod watch;
