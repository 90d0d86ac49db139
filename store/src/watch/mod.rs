//! Watch: fan-out of applied events to watchers, with catch-up from storage.
//!
//! A watcher is *synced* when it has been sent every event up to the last
//! published revision: new events are pushed to it as they are applied.
//! Otherwise it is *unsynced* and the catch-up loop replays history from
//! storage until it is synced again. A watcher whose stream buffer is full
//! becomes unsynced instead of blocking the writer or dropping events.

mod catchup;
mod hub;

pub use hub::{Hub, StreamItem, StreamSink, WatchSpec};

#[cfg(test)]
mod tests;
