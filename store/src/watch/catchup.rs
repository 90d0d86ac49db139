//! The catch-up loop: replays history from storage to unsynced watchers, in
//! shared batches (one storage read serves every lagging watcher), and
//! cancels watchers that fell behind a compaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;

use super::hub::{Hub, StreamItem, to_pb};
use crate::engine::{EngineError, cf};
use crate::limits::WATCH_CATCHUP_EVENTS_PER_RESPONSE_MAX;
use crate::mvcc::codec;
use crate::mvcc::{Event, EventKind, KeyValue, ReadView};

/// How often unsynced watchers are retried when nothing wakes the loop
/// (a full stream buffer drains without telling the hub).
const CATCHUP_RETRY_INTERVAL: Duration = Duration::from_millis(50);

impl Hub {
    /// Runs the catch-up loop until the hub is dropped by everyone else.
    pub async fn run_catchup(self: Arc<Self>) {
        loop {
            if Arc::strong_count(&self) == 1 {
                return;
            }
            let idle = self.lock().unsynced.is_empty();
            if idle {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake_catchup.notified()).await;
                continue;
            }
            let hub = self.clone();
            let res = tokio::task::spawn_blocking(move || hub.catch_up_once()).await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "watch catch-up failed"),
                Err(e) => tracing::error!(error = %e, "watch catch-up panicked"),
            }
            let _ = tokio::time::timeout(CATCHUP_RETRY_INTERVAL, self.wake_catchup.notified()).await;
        }
    }

    /// One round: cancel compacted watchers, read one shared batch of history
    /// from the lowest lagging revision, hand each watcher its part.
    pub(crate) fn catch_up_once(&self) -> Result<(), EngineError> {
        let (from, compacted) = {
            let mut st = self.lock();
            let compacted = st.compacted;
            let lagging: Vec<u64> =
                st.unsynced.iter().filter(|(_, w)| w.next_rev < compacted).map(|(k, _)| *k).collect();
            for key in lagging {
                let w = st.unsynced.get(&key).expect("listed above");
                let item = StreamItem::Compacted { watch_id: w.spec.watch_id, compact_revision: compacted };
                match w.sink.try_send(item) {
                    Ok(()) | Err(TrySendError::Closed(_)) => {
                        st.unsynced.remove(&key);
                    }
                    Err(TrySendError::Full(_)) => {}
                }
            }
            let ready = st.unsynced.values().filter(|w| w.sink.capacity() > 0 && w.next_rev >= compacted);
            match ready.map(|w| w.next_rev).min() {
                Some(from) => (from, compacted),
                None => return Ok(()),
            }
        };
        let view = ReadView::snapshot(&self.engine)?;
        if from < view.compacted.max(compacted) {
            return Ok(()); // canceled next round
        }
        let (events, upto) = read_history(&view, from)?;
        self.deliver(&events, from, upto);
        Ok(())
    }

    /// Sends each unsynced watcher its events from `events` (revisions `from` to
    /// `upto`) and promotes those that reached the published revision.
    ///
    /// A watcher whose next revision is below `from` was demoted after `from` was chosen: the
    /// batch does not cover its start, and handing it the batch would skip the revisions in
    /// between. It waits for the next round.
    fn deliver(&self, events: &[Event], from: i64, upto: i64) {
        let full: Vec<_> = events.iter().map(|e| to_pb(e, true)).collect();
        let bare: Vec<_> = events.iter().map(|e| to_pb(e, false)).collect();
        let mut st = self.lock();
        let current = st.current;
        let mut promote = Vec::new();
        let mut closed = Vec::new();
        for (key, w) in st.unsynced.iter_mut() {
            if w.next_rev < from {
                continue;
            }
            if w.next_rev > upto || w.sink.capacity() == 0 {
                if w.next_rev > current {
                    promote.push(*key);
                }
                continue;
            }
            let src = if w.spec.prev_kv { &full } else { &bare };
            let picked: Vec<_> = events
                .iter()
                .zip(src)
                .filter(|(e, _)| e.kv.mod_revision >= w.next_rev && w.spec.wants(e))
                .map(|(_, p)| p.clone())
                .collect();
            if !picked.is_empty() {
                let item = StreamItem::Events { watch_id: w.spec.watch_id, events: picked, revision: upto };
                match w.sink.try_send(item) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => continue,
                    Err(TrySendError::Closed(_)) => {
                        closed.push(*key);
                        continue;
                    }
                }
            }
            w.next_rev = upto + 1;
            if w.next_rev > current {
                promote.push(*key);
            }
        }
        for key in closed {
            st.unsynced.remove(&key);
        }
        for key in promote {
            if let Some(w) = st.unsynced.remove(&key) {
                st.synced.insert(key, w);
            }
        }
    }
}

/// Reads whole revisions of events from `from`, up to about
/// [`WATCH_CATCHUP_EVENTS_PER_RESPONSE_MAX`] events; returns them and the
/// last revision covered (the view's revision when history ran out).
fn read_history(view: &ReadView<'_>, from: i64) -> Result<(Vec<Event>, i64), EngineError> {
    let mut it = view.raw_iter(cf::KV_CHANGES);
    it.seek(codec::revs_key(from, 0));
    let mut events = Vec::new();
    let mut upto = view.current;
    while let (Some(raw_key), Some(raw)) = (it.key(), it.value()) {
        let (rev, _) = codec::decode_revs_key(raw_key)?;
        if rev > view.current {
            break;
        }
        if events.len() >= WATCH_CATCHUP_EVENTS_PER_RESPONSE_MAX
            && events.last().is_some_and(|e: &Event| e.kv.mod_revision < rev)
        {
            upto = rev - 1;
            break;
        }
        events.push(event_at(view, &codec::ChangeView::parse(raw)?, rev)?);
        it.next();
    }
    it.status()?;
    Ok((events, upto))
}

fn event_at(view: &ReadView<'_>, change: &codec::ChangeView<'_>, rev: i64) -> Result<Event, EngineError> {
    let key = Bytes::copy_from_slice(change.key);
    let prev_kv = view.live_before(&key, rev)?;
    if change.tombstone {
        let kv = KeyValue { key, mod_revision: rev, ..Default::default() };
        Ok(Event { kind: EventKind::Delete, kv, prev_kv })
    } else {
        Ok(Event { kind: EventKind::Put, kv: KeyValue::from_record(key, change.to_record(rev)), prev_kv })
    }
}
