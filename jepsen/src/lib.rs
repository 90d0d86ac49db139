//! A Jepsen-style harness: runs workloads against an etcd v3 cluster under faults, records the
//! history and decides with independent checkers whether it is legal.
pub mod checker;
pub mod history;
pub mod proxy;
pub mod report;
pub mod watchlog;
