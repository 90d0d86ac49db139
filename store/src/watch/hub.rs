//! The registry of watchers and the synced-path fan-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::engine::Engine;
use crate::mvcc::{Event, EventKind, range};
use crate::proto::mvccpb;

/// What a watcher asked for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The watch id on its stream.
    pub watch_id: i64,
    /// Start key.
    pub key: Vec<u8>,
    /// Range end (etcd conventions).
    pub range_end: Vec<u8>,
    /// Include the previous kv in events.
    pub prev_kv: bool,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
}

impl WatchSpec {
    pub(crate) fn wants(&self, e: &Event) -> bool {
        range::contains(&self.key, &self.range_end, &e.kv.key)
            && !(self.no_put && e.kind == EventKind::Put)
            && !(self.no_delete && e.kind == EventKind::Delete)
    }
}

/// What the hub sends to a watch stream.
#[derive(Debug)]
pub enum StreamItem {
    /// Events for one watcher; `revision` is the newest revision they cover.
    Events {
        /// The watcher.
        watch_id: i64,
        /// Whole revisions, in order.
        events: Vec<mvccpb::Event>,
        /// The store revision this response brings the watcher up to.
        revision: i64,
    },
    /// The watcher fell behind a compaction and is canceled.
    Compacted {
        /// The watcher.
        watch_id: i64,
        /// The compaction revision (oldest still readable).
        compact_revision: i64,
    },
}

/// The sending half of a stream's bounded response buffer.
pub type StreamSink = mpsc::Sender<StreamItem>;

pub(crate) struct Watcher {
    pub(crate) spec: Arc<WatchSpec>,
    /// First revision this watcher has not been sent yet.
    pub(crate) next_rev: i64,
    pub(crate) sink: StreamSink,
}

#[derive(Default)]
pub(crate) struct HubState {
    /// Last published revision.
    pub(crate) current: i64,
    pub(crate) compacted: i64,
    next_key: u64,
    pub(crate) synced: HashMap<u64, Watcher>,
    pub(crate) unsynced: HashMap<u64, Watcher>,
}

/// The watcher registry shared by apply (publisher), streams and catch-up.
pub struct Hub {
    pub(crate) state: Mutex<HubState>,
    pub(crate) engine: Engine,
    pub(crate) wake_catchup: Notify,
}

pub(crate) fn to_pb(e: &Event, with_prev: bool) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(crate::raft::apply::kv_to_pb(&e.kv)),
        prev_kv: if with_prev { e.prev_kv.as_ref().map(crate::raft::apply::kv_to_pb) } else { None },
    }
}

impl Hub {
    /// A hub whose store is at `current` with `compacted` history removed.
    pub fn new(engine: Engine, current: i64, compacted: i64) -> Arc<Self> {
        let state = HubState { current, compacted, ..Default::default() };
        Arc::new(Hub { state: Mutex::new(state), engine, wake_catchup: Notify::new() })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // Updates under this lock are single map operations; a poisoned lock
        // still holds a consistent registry.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a watcher starting at `start_revision` (0: after now).
    /// Returns its registry key, or the compaction revision if the start is compacted.
    pub fn add(&self, spec: WatchSpec, start_revision: i64, sink: StreamSink) -> Result<u64, i64> {
        let mut st = self.lock();
        if start_revision > 0 && start_revision < st.compacted {
            return Err(st.compacted);
        }
        let key = st.next_key;
        st.next_key += 1;
        let next_rev = if start_revision <= 0 { st.current + 1 } else { start_revision };
        let w = Watcher { spec: Arc::new(spec), next_rev, sink };
        if next_rev > st.current {
            st.synced.insert(key, w);
        } else {
            st.unsynced.insert(key, w);
            drop(st);
            self.wake_catchup.notify_one();
        }
        Ok(key)
    }

    /// Removes a watcher; true if it existed.
    pub fn remove(&self, key: u64) -> bool {
        let mut st = self.lock();
        st.synced.remove(&key).is_some() || st.unsynced.remove(&key).is_some()
    }

    /// The current revision if the watcher is synced (for progress notifications).
    pub fn synced_revision(&self, key: u64) -> Option<i64> {
        let st = self.lock();
        st.synced.contains_key(&key).then_some(st.current)
    }

    /// The current revision if every listed watcher is synced.
    pub fn all_synced_revision(&self, keys: &[u64]) -> Option<i64> {
        let st = self.lock();
        keys.iter().all(|k| st.synced.contains_key(k)).then_some(st.current)
    }

    /// Last published revision.
    pub fn current_revision(&self) -> i64 {
        self.lock().current
    }

    /// Number of watchers, for metrics.
    pub fn watcher_count(&self) -> usize {
        let st = self.lock();
        st.synced.len() + st.unsynced.len()
    }

    /// Delivers the events of one applied revision to synced watchers. Never
    /// blocks: a watcher with a full buffer is moved to catch-up.
    ///
    /// `current` advances in the same critical section that queues the revision's events: a
    /// synced watcher seen at `current` = R has everything up to R in its stream's queue, which
    /// is what makes a progress notification at R a true bookmark.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        {
            let mut st = self.lock();
            if st.synced.is_empty() {
                st.current = st.current.max(revision);
                return;
            }
        }
        // Converted once per revision and shared (Bytes) by every watcher.
        let full: Vec<mvccpb::Event> = events.iter().map(|e| to_pb(e, true)).collect();
        let bare: Vec<mvccpb::Event> = events.iter().map(|e| to_pb(e, false)).collect();
        let mut st = self.lock();
        st.current = st.current.max(revision);
        let mut demoted = Vec::new();
        let mut closed = Vec::new();
        for (key, w) in st.synced.iter_mut() {
            if w.next_rev > revision {
                continue;
            }
            let src = if w.spec.prev_kv { &full } else { &bare };
            let picked: Vec<mvccpb::Event> =
                events.iter().zip(src).filter(|(e, _)| w.spec.wants(e)).map(|(_, p)| p.clone()).collect();
            if picked.is_empty() {
                w.next_rev = revision + 1;
                continue;
            }
            let item = StreamItem::Events { watch_id: w.spec.watch_id, events: picked, revision };
            match w.sink.try_send(item) {
                Ok(()) => w.next_rev = revision + 1,
                Err(mpsc::error::TrySendError::Full(_)) => demoted.push(*key),
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*key),
            }
        }
        for key in closed {
            st.synced.remove(&key);
        }
        let wake = !demoted.is_empty();
        for key in demoted {
            if let Some(w) = st.synced.remove(&key) {
                st.unsynced.insert(key, w);
            }
        }
        drop(st);
        if wake {
            self.wake_catchup.notify_one();
        }
    }

    /// The store was replaced by an installed snapshot: every watcher catches
    /// up from storage (or is canceled if the snapshot compacted its start).
    pub fn reset(&self, current: i64, compacted: i64) {
        let mut st = self.lock();
        st.current = current;
        st.compacted = compacted;
        let synced: Vec<(u64, Watcher)> = st.synced.drain().collect();
        st.unsynced.extend(synced);
        drop(st);
        self.wake_catchup.notify_one();
    }

    /// Records a new compaction revision; lagging watchers get canceled by catch-up.
    pub fn on_compacted(&self, revision: i64) {
        self.lock().compacted = revision;
        self.wake_catchup.notify_one();
    }
}
