//! The watch workload: writers put and delete keys under one prefix while watchers watch the
//! prefix in sessions of random length on random members, resuming each time from the last
//! revision they saw + 1. After the faults, every watcher catches up to the final revision, and
//! the watch logs are checked against the ground truth for etcd's nine watch properties.

use std::time::Duration;

use etcd_client::{Client, Event, EventType, KeyValue, WatchOptions};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{StepResult, Worker, parse_int, step_error};
use crate::history::{Op, OpType};
use crate::watchlog::{EventKind, EventRecord, KvRecord, WatchRecord, prefix_end};

/// Key prefix of this workload.
pub const PREFIX: &str = "jepsen/watch/";
/// Keys the writers spread their writes over.
const KEYS: u64 = 8;
/// Longest watch session before the watcher cancels and resumes.
const SESSION_MAX: Duration = Duration::from_secs(5);
/// How long a watcher may take to catch up with the final revision after the test.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Writers' loop: puts of unique values and some deletes.
pub async fn writer(mut w: Worker) {
    while !w.time_is_up() {
        w.pace().await;
        let key = format!("{PREFIX}{}", w.rng.gen_range(0..KEYS));
        if w.rng.gen_bool(0.15) {
            w.perform(Op::invoke(0, "delete", Some(&key), Value::Null, 0), delete).await;
        } else {
            let value = w.shared.unique_value();
            w.perform(Op::invoke(0, "put", Some(&key), json!(value), 0), put).await;
        }
    }
}

async fn put(mut client: Client, invoke: Op) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let value = invoke.value.as_i64().unwrap_or_default();
    let resp = client.put(key, value.to_string(), None).await.map_err(step_error)?;
    let rev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_rev(rev).with_hrev(rev))
}

async fn delete(mut client: Client, invoke: Op) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let resp = client.delete(key, None).await.map_err(step_error)?;
    let hrev = resp.header().map_or(0, |h| h.revision());
    let done = invoke.complete(OpType::Ok, 0).with_hrev(hrev);
    Ok(if resp.deleted() > 0 { done.with_rev(hrev).with_succeeded(true) } else { done.with_succeeded(false) })
}

/// A watcher's position between sessions.
pub struct Watcher {
    pub id: u64,
    pub session: u64,
    /// The highest revision seen (event or progress notification); 0 before the first.
    pub last_rev: i64,
}

/// Watches in sessions until the deadline (`until_rev` = None) or until it has seen
/// `until_rev` (the final catch-up, bounded by `CATCH_UP_TIMEOUT`).
pub async fn watcher(mut w: Worker, mut state: Watcher, until_rev: Option<i64>) -> Watcher {
    let give_up = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let done = match until_rev {
            None => w.time_is_up(),
            Some(r) => state.last_rev >= r || Instant::now() >= give_up,
        };
        if done {
            return state;
        }
        let Some(client) = w.client().await else { continue };
        state.session += 1;
        let hold = match until_rev {
            None => Duration::from_millis(w.rng.gen_range(0..SESSION_MAX.as_millis() as u64)),
            Some(_) => give_up.saturating_duration_since(Instant::now()),
        };
        let start_revision = if state.last_rev == 0 { i64::from(w.rng.gen_bool(0.5)) } else { state.last_rev + 1 };
        let prev_kv = w.rng.gen_bool(0.5);
        let reason = session(&mut w, client, &mut state, start_revision, prev_kv, hold, until_rev).await;
        w.shared.log_watch(WatchRecord::End {
            watcher: state.id,
            session: state.session,
            time: w.shared.recorder.now(),
            reason: reason.clone(),
        });
        if reason != "hold elapsed" && reason != "caught up" {
            // The member may be down or cut off: try another one.
            w.reconnect_elsewhere();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One watch session; returns why it ended.
async fn session(
    w: &mut Worker,
    mut client: Client,
    state: &mut Watcher,
    start_revision: i64,
    prev_kv: bool,
    hold: Duration,
    until_rev: Option<i64>,
) -> String {
    let mut options = WatchOptions::new().with_prefix().with_start_revision(start_revision).with_progress_notify();
    if prev_kv {
        options = options.with_prev_key();
    }
    w.shared.log_watch(WatchRecord::Request {
        watcher: state.id,
        session: state.session,
        node: w.node_name(),
        key: PREFIX.to_string(),
        range_end: prefix_end(PREFIX),
        start_revision,
        prev_kv,
        progress_notify: true,
        filters: Vec::new(),
        time: w.shared.recorder.now(),
    });
    let opened = tokio::time::timeout(w.shared.request_timeout, client.watch(PREFIX, Some(options))).await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return format!("watch failed: {e}"),
        Err(_) => return "watch timed out".into(),
    };
    let end = Instant::now() + hold;
    loop {
        if until_rev.is_some_and(|r| state.last_rev >= r) {
            return "caught up".into();
        }
        if w.rng.gen_bool(0.05) {
            let _ = stream.request_progress().await;
        }
        let message = tokio::time::timeout_at(end, stream.message()).await;
        let resp = match message {
            Err(_) => return "hold elapsed".into(),
            Ok(Err(e)) => return format!("stream error: {e}"),
            Ok(Ok(None)) => return "stream closed".into(),
            Ok(Ok(Some(resp))) => resp,
        };
        let header_revision = resp.header().map_or(0, |h| h.revision());
        let events: Vec<EventRecord> = resp.events().iter().map(event_record).collect();
        let record = WatchRecord::Response {
            watcher: state.id,
            session: state.session,
            time: w.shared.recorder.now(),
            header_revision,
            watch_id: resp.watch_id(),
            created: resp.created(),
            canceled: resp.canceled(),
            compact_revision: resp.compact_revision(),
            fragment: false,
            events,
        };
        if record.is_progress_notify() {
            state.last_rev = state.last_rev.max(header_revision);
        }
        if let Some(last) = resp.events().last().and_then(Event::kv) {
            state.last_rev = state.last_rev.max(last.mod_revision());
        }
        w.shared.log_watch(record);
        if resp.canceled() {
            return format!("canceled: {}", resp.cancel_reason());
        }
    }
}

/// Converts an etcd-client event for the logs.
pub fn event_record(event: &Event) -> EventRecord {
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    EventRecord {
        kind,
        kv: event.kv().map(kv_record).unwrap_or_else(empty_kv),
        prev_kv: event.prev_kv().map(kv_record),
    }
}

fn kv_record(kv: &KeyValue) -> KvRecord {
    KvRecord {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn empty_kv() -> KvRecord {
    KvRecord { key: String::new(), value: String::new(), create_revision: 0, mod_revision: 0, version: 0, lease: 0 }
}

/// Whether a value in the logs is one of this workload's integers (for reports).
pub fn value_of(kv: &KvRecord) -> Option<i64> {
    parse_int(kv.value.as_bytes())
}

/// A linearizable read of the prefix whose header revision is the revision every watcher must
/// reach in the final phase.
pub async fn final_revision(mut client: Client, invoke: Op) -> StepResult {
    let options = etcd_client::GetOptions::new().with_prefix().with_count_only();
    let resp = client.get(PREFIX, Some(options)).await.map_err(super::read_error)?;
    let hrev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_hrev(hrev))
}

/// Where watcher `id` stood at the end of the main phase, from the watch log.
pub fn resume_state(log: &[WatchRecord], id: u64) -> Watcher {
    let mut state = Watcher { id, session: 0, last_rev: 0 };
    for record in log.iter().filter(|r| r.session().0 == id) {
        state.session = state.session.max(record.session().1);
        if let WatchRecord::Response { events, header_revision, .. } = record {
            if record.is_progress_notify() {
                state.last_rev = state.last_rev.max(*header_revision);
            }
            if let Some(last) = events.last() {
                state.last_rev = state.last_rev.max(last.revision());
            }
        }
    }
    state
}
