//! Watch sessions: the records of `watch.jsonl` regrouped per (watcher, session) — sessions of
//! different watchers interleave in the log — and the nine properties checked on each of them.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::truth::{Truth, Writes};
use super::{MALFORMED, Tally, to_json};
use crate::history::Op;
use crate::watchlog::{EventKind, EventRecord, Filter, KvRecord, WatchRecord, in_range};

/// What a session asked for.
pub(super) struct Request<'a> {
    pub node: &'a str,
    pub key: &'a str,
    pub range_end: &'a str,
    pub start_revision: i64,
    pub prev_kv: bool,
    pub filters: &'a [Filter],
}

impl Request<'_> {
    /// Whether the watch should deliver `ev`: in its key range and not filtered out.
    pub fn matches(&self, ev: &EventRecord) -> bool {
        let dropped = match ev.kind {
            EventKind::Put => self.filters.contains(&Filter::NoPut),
            EventKind::Delete => self.filters.contains(&Filter::NoDelete),
        };
        !dropped && in_range(&ev.kv.key, self.key, self.range_end)
    }
}

pub(super) struct Response<'a> {
    header_revision: i64,
    fragment: bool,
    progress: bool,
    events: &'a [EventRecord],
}

pub(super) struct Session<'a> {
    watcher: u64,
    session: u64,
    request: Request<'a>,
    responses: Vec<Response<'a>>,
}

#[derive(Default)]
pub(super) struct Stats {
    pub sessions: u64,
    pub responses: u64,
    pub events_delivered: u64,
    pub events_expected: u64,
    pub progress_notifications: u64,
}

pub(super) struct Ctx<'a, 'p> {
    pub truth: &'a Truth<'a>,
    pub writes: &'a Writes<'p>,
}

#[derive(Default)]
struct Slot<'a> {
    request: Option<Request<'a>>,
    responses: Vec<Response<'a>>,
    ended: bool,
}

/// Regroups the log per session, in order of first appearance. A response before its request,
/// a second request, or a record after the session's end is `malformed-record` and skipped.
pub(super) fn group<'a>(watches: &'a [WatchRecord], tally: &mut Tally) -> Vec<Session<'a>> {
    let mut order: Vec<(u64, u64)> = Vec::new();
    let mut slots: HashMap<(u64, u64), Slot<'a>> = HashMap::new();
    for (pos, record) in watches.iter().enumerate() {
        let id = record.session();
        let slot = slots.entry(id).or_insert_with(|| {
            order.push(id);
            Slot::default()
        });
        let problem = match record {
            _ if slot.ended => Some("record after the session ended"),
            WatchRecord::Request { .. } if slot.request.is_some() => Some("second request for one session"),
            WatchRecord::Request { node, key, range_end, start_revision, prev_kv, filters, .. } => {
                let (start_revision, prev_kv) = (*start_revision, *prev_kv);
                slot.request = Some(Request { node, key, range_end, start_revision, prev_kv, filters });
                None
            }
            _ if slot.request.is_none() => Some("record before the session's request"),
            WatchRecord::Response { header_revision, fragment, events, .. } => {
                let progress = record.is_progress_notify();
                slot.responses.push(Response {
                    header_revision: *header_revision,
                    fragment: *fragment,
                    progress,
                    events,
                });
                None
            }
            WatchRecord::End { .. } => {
                slot.ended = true;
                None
            }
        };
        if let Some(problem) = problem {
            tally.report(MALFORMED, || {
                (
                    format!("watch log line {pos}: {problem}"),
                    Vec::new(),
                    json!({"position": pos, "record": to_json(record)}),
                )
            });
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let slot = slots.remove(&id)?;
            let request = slot.request?;
            Some(Session { watcher: id.0, session: id.1, request, responses: slot.responses })
        })
        .collect()
}

/// What one pass over a session's responses saw.
#[derive(Default)]
struct Walk<'a> {
    seen: HashSet<(i64, &'a str)>,
    events: Vec<&'a EventRecord>,
    max_event: Option<i64>,
    /// The highest progress notification so far.
    progress: Option<i64>,
    /// The last event revision of the previous response with events, and its fragment flag.
    prev_batch: Option<(i64, bool)>,
    /// Where the truth comparison starts (notes §5.5 Reliable).
    first_expected: Option<i64>,
}

impl Walk<'_> {
    fn last_observed(&self) -> Option<i64> {
        self.max_event.max(self.progress)
    }
}

pub(super) fn check(s: &Session, ctx: &Ctx, tally: &mut Tally, stats: &mut Stats) {
    stats.sessions += 1;
    stats.responses += s.responses.len() as u64;
    let mut walk = Walk::default();
    if s.request.start_revision > 0 {
        walk.first_expected = Some(s.request.start_revision);
    }
    for resp in &s.responses {
        if resp.progress {
            stats.progress_notifications += 1;
            check_progress(s, resp.header_revision, &mut walk, tally);
            continue;
        }
        let Some(first) = resp.events.first() else { continue };
        if let Some((last, false)) = walk.prev_batch
            && first.revision() == last
        {
            report(
                s,
                ctx,
                tally,
                "atomic",
                format!("revision {last} is split across two responses"),
                &[first],
                json!({}),
            );
        }
        for ev in resp.events {
            check_event(s, ctx, ev, &mut walk, tally);
        }
        walk.prev_batch = resp.events.last().map(|ev| (ev.revision(), resp.fragment));
    }
    stats.events_delivered += walk.events.len() as u64;
    reliable(s, ctx, &walk, tally, stats);
    resumable(s, ctx, &walk, tally);
}

/// Bookmarkable, for the notification itself: notifications never go back, and never claim a
/// revision below an event already delivered.
fn check_progress(s: &Session, rev: i64, walk: &mut Walk, tally: &mut Tally) {
    if let Some(p) = walk.progress
        && rev < p
    {
        let why = format!("progress notification at revision {rev} after one at {p}");
        report_plain(s, tally, "bookmarkable", why, json!({"progress_revision": rev, "previous_progress": p}));
    }
    if let Some(e) = walk.max_event
        && rev < e
    {
        let why = format!("progress notification at revision {rev} after an event at revision {e}");
        report_plain(s, tally, "bookmarkable", why, json!({"progress_revision": rev, "last_event_revision": e}));
    }
    walk.first_expected.get_or_insert(rev.saturating_add(1));
    walk.progress = walk.progress.max(Some(rev));
}

/// Filter, Ordered, Unique, Bookmarkable (events after a notification), PrevKV and IsCreate.
fn check_event<'a>(s: &Session, ctx: &Ctx, ev: &'a EventRecord, walk: &mut Walk<'a>, tally: &mut Tally) {
    let rev = ev.revision();
    if !s.request.matches(ev) {
        report(s, ctx, tally, "filter", "event outside the watched range or filters".into(), &[ev], json!({}));
    }
    if let Some(prev) = walk.events.last()
        && rev < prev.revision()
    {
        let why = format!("revision {rev} delivered after revision {}", prev.revision());
        report(s, ctx, tally, "ordered", why, &[prev, ev], json!({}));
    }
    if !walk.seen.insert((rev, ev.kv.key.as_str())) {
        let why = format!("key {:?} at revision {rev} delivered twice", ev.kv.key);
        report(s, ctx, tally, "unique", why, &[ev], json!({}));
    }
    if let Some(p) = walk.progress
        && rev <= p
    {
        let why = format!("event at revision {rev} after a progress notification at {p}");
        report(s, ctx, tally, "bookmarkable", why, &[ev], json!({"progress_revision": p}));
    }
    if s.request.prev_kv || ev.kind == EventKind::Put {
        let before = ctx.truth.state_at(&ev.kv.key, rev.saturating_sub(1));
        if s.request.prev_kv {
            check_prev_kv(s, ctx, ev, before, tally);
        }
        check_is_create(s, ctx, ev, before, tally);
    }
    walk.first_expected.get_or_insert(rev);
    walk.max_event = walk.max_event.max(Some(rev));
    walk.events.push(ev);
}

/// PrevKV: the previous value is the key's truth state at revision − 1; it may be absent only
/// when the key did not exist (nothing is compacted during the test).
fn check_prev_kv(s: &Session, ctx: &Ctx, ev: &EventRecord, before: Option<&KvRecord>, tally: &mut Tally) {
    let why = match (&ev.prev_kv, before) {
        (Some(got), Some(want)) if got == want => return,
        (None, None) => return,
        (None, Some(_)) => "prev_kv missing although the key existed",
        (Some(_), None) => "prev_kv present although the key did not exist",
        (Some(_), Some(_)) => "prev_kv differs from the key's previous value",
    };
    let details = json!({"expected_prev_kv": to_json(&before), "got_prev_kv": to_json(&ev.prev_kv)});
    report(s, ctx, tally, "prev-kv", why.to_string(), &[ev], details);
}

/// IsCreate: a put creates the key (create_revision == mod_revision, version 1) exactly when the
/// key did not exist at revision − 1.
fn check_is_create(s: &Session, ctx: &Ctx, ev: &EventRecord, before: Option<&KvRecord>, tally: &mut Tally) {
    if ev.kind != EventKind::Put {
        return;
    }
    let create = ev.kv.create_revision == ev.kv.mod_revision;
    let why = if create && before.is_some() {
        "put marked as a create although the key existed"
    } else if !create && before.is_none() {
        "put not marked as a create although the key did not exist"
    } else if create && ev.kv.version != 1 {
        "create with version other than 1"
    } else {
        return;
    };
    report(s, ctx, tally, "is-create", why.to_string(), &[ev], json!({"previous_state": to_json(&before)}));
}

/// Same event as far as the watch is concerned: prev_kv is checked separately (it depends on the
/// request), everything else must be what the store committed.
fn same_event(a: &EventRecord, b: &EventRecord) -> bool {
    a.kind == b.kind && a.kv == b.kv
}

fn same_identity(a: &EventRecord, b: &EventRecord) -> bool {
    a.kind == b.kind && a.revision() == b.revision() && a.kv.key == b.kv.key
}

/// Reliable: from the first expected revision to the last observed one, the delivered events are
/// exactly the truth's matching events, in order. One anomaly per session, at the first difference.
fn reliable(s: &Session, ctx: &Ctx, walk: &Walk, tally: &mut Tally, stats: &mut Stats) {
    let (Some(first), Some(last)) = (walk.first_expected, walk.last_observed()) else { return };
    let truth = ctx.truth;
    let expected: Vec<usize> = (truth.lower_bound(first)..truth.len())
        .take_while(|&i| truth.revision(i) <= last)
        .filter(|&i| s.request.matches(truth.event(i)))
        .collect();
    stats.events_expected += expected.len() as u64;
    let got = &walk.events;
    let differs = |p: &usize| match (expected.get(*p), got.get(*p)) {
        (Some(&e), Some(g)) => !same_event(truth.event(e), g),
        _ => true,
    };
    let Some(pos) = (0..expected.len().max(got.len())).find(differs) else { return };
    let exp = expected.get(pos).map(|&i| truth.event(i));
    let got_ev = got.get(pos).copied();

    // Truth positions of the delivered events, to tell a missing event from an extra one.
    let position = |ev: &EventRecord| truth.find(ev.revision(), &ev.kv.key).filter(|&i| truth.event(i).kind == ev.kind);
    let mut delivered: Vec<usize> = got.iter().filter_map(|g| position(g)).collect();
    delivered.sort_unstable();
    delivered.dedup();
    let missing = expected.iter().filter(|i| delivered.binary_search(i).is_err()).count();
    let matched = expected.len() - missing;
    let why = match (exp, got_ev) {
        (Some(e), Some(g)) if same_identity(e, g) => "delivered event differs from the committed one",
        (_, Some(g)) if position(g).is_none_or(|i| expected.binary_search(&i).is_err()) => "unexpected event",
        (Some(e), _) if position(e).is_some_and(|i| delivered.binary_search(&i).is_err()) => "missing event",
        (Some(_), None) => "fewer events than expected",
        _ => "events out of order",
    };
    let explanation = format!(
        "{why} at position {pos} (revisions {first}..={last}: {} expected, {missing} missing, {} unexpected)",
        expected.len(),
        got.len() - matched
    );
    let details = json!({"position": pos, "expected": to_json(&exp), "got": to_json(&got_ev),
        "first_revision": first, "last_revision": last, "expected_count": expected.len(),
        "delivered_count": got.len(), "missing": missing});
    let events: Vec<&EventRecord> = exp.into_iter().chain(got_ev).collect();
    report(s, ctx, tally, "reliable", explanation, &events, details);
}

/// Resumable: a watch from revision r starts exactly at the first matching truth event >= r.
fn resumable(s: &Session, ctx: &Ctx, walk: &Walk, tally: &mut Tally) {
    let start = s.request.start_revision;
    let Some(&got) = walk.events.first() else { return };
    if start <= 0 {
        return;
    }
    let truth = ctx.truth;
    let want = (truth.lower_bound(start)..truth.len())
        .take_while(|&i| truth.revision(i) <= got.revision())
        .map(|i| truth.event(i))
        .find(|e| s.request.matches(e));
    if want.is_some_and(|w| same_identity(w, got)) {
        return;
    }
    let why = format!("watch from revision {start} starts at revision {}", got.revision());
    let details = json!({"expected": to_json(&want), "got": to_json(got)});
    let events: Vec<&EventRecord> = want.into_iter().chain([got]).collect();
    report(s, ctx, tally, "resumable", why, &events, details);
}

/// Reports an anomaly about `events` of session `s`, with the writes that produced them as ops.
fn report(
    s: &Session,
    ctx: &Ctx,
    tally: &mut Tally,
    kind: &'static str,
    why: String,
    events: &[&EventRecord],
    extra: Value,
) {
    tally.report(kind, || {
        let ops: Vec<Op> = events.iter().flat_map(|ev| ctx.writes.ops_for(ev)).collect();
        let mut details = session_details(s);
        merge(&mut details, json!({"events": events.iter().map(to_json).collect::<Vec<_>>()}));
        merge(&mut details, extra);
        (format!("watcher {} session {}: {why}", s.watcher, s.session), ops, details)
    });
}

fn report_plain(s: &Session, tally: &mut Tally, kind: &'static str, why: String, extra: Value) {
    tally.report(kind, || {
        let mut details = session_details(s);
        merge(&mut details, extra);
        (format!("watcher {} session {}: {why}", s.watcher, s.session), Vec::new(), details)
    });
}

fn session_details(s: &Session) -> Value {
    let r = &s.request;
    json!({"watcher": s.watcher, "session": s.session, "node": r.node, "key": r.key, "range_end": r.range_end,
        "start_revision": r.start_revision, "prev_kv": r.prev_kv, "filters": to_json(&r.filters)})
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}
