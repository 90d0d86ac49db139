//! openraft glue: type configuration, log storage, the state machine and the
//! codec between openraft's types and geobuk's on-disk encoding.

pub mod apply;
pub mod codec;
pub mod dedup;
pub mod group;
#[cfg(test)]
mod group_tests;
pub mod log_cache;
pub mod log_store;
pub mod removed;
pub mod state_machine;
#[cfg(test)]
mod storage_suite_tests;
pub mod types;
