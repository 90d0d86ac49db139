//! A Jepsen-style harness: runs workloads against an etcd v3 cluster under faults, records the
//! history and decides with independent checkers whether it is legal.
pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod ports;
pub mod progress;
pub mod proxy;
pub mod report;
pub mod results;
pub mod run;
pub mod truth;
pub mod watchlog;
pub mod workload;
