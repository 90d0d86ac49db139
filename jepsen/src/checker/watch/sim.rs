//! A correct store and correct watchers, simulated, for the randomized tests: what they produce
//! must pass the checker, and any single mutation of their watch log must fail it. Also the
//! builders the fixtures use.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::session::Request;
use crate::history::{Op, OpType};
use crate::watchlog::{EventKind, EventRecord, Filter, KvRecord, WatchRecord, prefix_end};

/// An etcd-like store that records its committed events (the truth) and the clients' ops.
pub(super) struct Store {
    pub rev: i64,
    state: BTreeMap<String, KvRecord>,
    pub truth: Vec<EventRecord>,
    pub history: Vec<Op>,
    time: u64,
    next_value: i64,
    process: u64,
}

impl Store {
    pub fn new() -> Store {
        Store {
            rev: 1,
            state: BTreeMap::new(),
            truth: Vec::new(),
            history: Vec::new(),
            time: 0,
            next_value: 0,
            process: 0,
        }
    }

    /// Applies `changes` (value `None` = delete) atomically at one new revision, as a txn does.
    /// Returns the revision, or `None` when nothing changed (only deletes of absent keys).
    pub fn apply(&mut self, changes: &[(&str, Option<String>)]) -> Option<i64> {
        let rev = self.rev + 1;
        let mut changed = false;
        for (key, value) in changes {
            let prev = self.state.get(*key).cloned();
            if let Some(value) = value {
                let kv = KvRecord {
                    key: key.to_string(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: 0,
                };
                self.state.insert(key.to_string(), kv.clone());
                self.truth.push(EventRecord { kind: EventKind::Put, kv, prev_kv: prev });
                changed = true;
            } else if let Some(prev) = self.state.remove(*key) {
                let kv = KvRecord {
                    key: key.to_string(),
                    value: String::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                    lease: 0,
                };
                self.truth.push(EventRecord { kind: EventKind::Delete, kv, prev_kv: Some(prev) });
                changed = true;
            }
        }
        changed.then(|| {
            self.rev = rev;
            rev
        })
    }

    fn invoke(&mut self, f: &str, key: &str, value: serde_json::Value) -> Op {
        self.process += 1;
        self.time += 10;
        let op = Op::invoke(self.process, f, Some(key), value, self.time);
        self.history.push(op.clone());
        op
    }

    fn complete(&mut self, op: Op) {
        self.time += 5;
        self.history.push(Op { time: self.time, ..op });
    }

    /// A client put of a fresh value. `applied` says whether it took effect (it must for `ok`
    /// and must not for `fail`; `info` may go either way). Returns the value written.
    pub fn put(&mut self, key: &str, outcome: OpType, applied: bool) -> i64 {
        self.next_value += 1;
        let value = self.next_value;
        let op = self.invoke("put", key, json!(value));
        let rev = if applied { self.apply(&[(key, Some(value.to_string()))]) } else { None };
        let done = op.complete(outcome, 0);
        self.complete(match (outcome, rev) {
            (OpType::Ok, Some(rev)) => done.with_rev(rev).with_hrev(rev),
            _ => done,
        });
        value
    }

    /// An acknowledged delete.
    pub fn delete(&mut self, key: &str) {
        let op = self.invoke("delete", key, json!(null));
        let done = op.complete(OpType::Ok, 0);
        let done = match self.apply(&[(key, None)]) {
            Some(rev) => done.with_rev(rev).with_hrev(rev).with_succeeded(true),
            None => done.with_succeeded(false),
        };
        self.complete(done);
    }

    /// A txn putting fresh values to `keys` at one revision; each put is recorded as its own op.
    pub fn txn_puts(&mut self, keys: &[&str]) {
        let values: Vec<i64> = keys
            .iter()
            .map(|_| {
                self.next_value += 1;
                self.next_value
            })
            .collect();
        let ops: Vec<Op> = keys.iter().zip(&values).map(|(k, v)| self.invoke("put", k, json!(v))).collect();
        let changes: Vec<(&str, Option<String>)> =
            keys.iter().zip(&values).map(|(k, v)| (*k, Some(v.to_string()))).collect();
        let rev = self.apply(&changes).unwrap_or(0);
        for op in ops {
            self.complete(op.complete(OpType::Ok, 0).with_rev(rev));
        }
    }
}

/// What a watcher watches; the same for all its sessions.
pub(super) struct Spec {
    pub key: String,
    pub range_end: String,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub filters: Vec<Filter>,
}

pub(super) fn request(watcher: u64, session: u64, spec: &Spec, start_revision: i64) -> WatchRecord {
    WatchRecord::Request {
        watcher,
        session,
        node: "n1".to_string(),
        key: spec.key.clone(),
        range_end: spec.range_end.clone(),
        start_revision,
        prev_kv: spec.prev_kv,
        progress_notify: spec.progress_notify,
        filters: spec.filters.clone(),
        time: 0,
    }
}

pub(super) fn response(watcher: u64, session: u64, header_revision: i64, events: Vec<EventRecord>) -> WatchRecord {
    WatchRecord::Response {
        watcher,
        session,
        time: 0,
        header_revision,
        watch_id: watcher as i64,
        created: false,
        canceled: false,
        compact_revision: 0,
        fragment: false,
        events,
    }
}

pub(super) fn created(watcher: u64, session: u64, header_revision: i64) -> WatchRecord {
    let mut r = response(watcher, session, header_revision, Vec::new());
    if let WatchRecord::Response { created, .. } = &mut r {
        *created = true;
    }
    r
}

pub(super) fn progress(watcher: u64, session: u64, rev: i64) -> WatchRecord {
    response(watcher, session, rev, Vec::new())
}

pub(super) fn end(watcher: u64, session: u64) -> WatchRecord {
    WatchRecord::End { watcher, session, time: 0, reason: "cancel".to_string() }
}

/// A truth event as a watch delivers it: prev_kv only when asked for.
pub(super) fn delivered(ev: &EventRecord, prev_kv: bool) -> EventRecord {
    EventRecord { prev_kv: if prev_kv { ev.prev_kv.clone() } else { None }, ..ev.clone() }
}

const KEYS: [&str; 5] = ["w/k0", "w/k1", "w/k2", "w/k3", "w/k4"];

/// Random writes on the prefix `w/` (and a key outside it): puts with every outcome, deletes,
/// two-key txns.
pub(super) fn random_store(rng: &mut StdRng) -> Store {
    let mut store = Store::new();
    for _ in 0..rng.gen_range(10..150) {
        let key = KEYS[rng.gen_range(0..KEYS.len())];
        match rng.gen_range(0..100) {
            0..65 => _ = store.put(key, OpType::Ok, true),
            65..68 => _ = store.put(key, OpType::Fail, false),
            68..71 => _ = store.put(key, OpType::Info, rng.gen_bool(0.5)),
            71..75 => _ = store.put("x/outside", OpType::Ok, true),
            75..92 => store.delete(key),
            _ => {
                let other = KEYS[(KEYS.iter().position(|k| *k == key).unwrap_or(0) + 1) % KEYS.len()];
                store.txn_puts(&[key, other]);
            }
        }
    }
    store
}

fn random_spec(rng: &mut StdRng) -> Spec {
    let (key, range_end) = match rng.gen_range(0..4) {
        0 => ("w/".to_string(), prefix_end("w/")),
        1 => (KEYS[rng.gen_range(0..KEYS.len())].to_string(), String::new()),
        2 => ("w/k1".to_string(), "w/k3".to_string()),
        _ => ("w/k2".to_string(), "\0".to_string()),
    };
    let filters = match rng.gen_range(0..6) {
        0 => vec![Filter::NoPut],
        1 => vec![Filter::NoDelete],
        _ => Vec::new(),
    };
    Spec { key, range_end, prev_kv: rng.gen_bool(0.6), progress_notify: rng.gen_bool(0.6), filters }
}

/// One session delivering the matching truth events in `start..=end` (whole revisions per
/// response), with progress notifications in between. Returns the last revision it observed.
fn deliver(
    truth: &[EventRecord],
    spec: &Spec,
    ids: (u64, u64),
    (start, end): (i64, i64),
    rng: &mut StdRng,
    log: &mut Vec<WatchRecord>,
) -> Option<i64> {
    let (w, s) = ids;
    let req = Request {
        node: "n1",
        key: &spec.key,
        range_end: &spec.range_end,
        start_revision: 0,
        prev_kv: spec.prev_kv,
        filters: &spec.filters,
    };
    let matching: Vec<&EventRecord> =
        truth.iter().filter(|e| (start..=end).contains(&e.revision()) && req.matches(e)).collect();
    let mut groups: Vec<Vec<&EventRecord>> = Vec::new();
    for e in matching {
        match groups.last_mut() {
            Some(g) if g[0].revision() == e.revision() => g.push(e),
            _ => groups.push(vec![e]),
        }
    }
    let (mut cursor, mut seen) = (start - 1, None);
    let mut gi = 0;
    while gi < groups.len() {
        if spec.progress_notify && rng.gen_bool(0.3) {
            let r = rng.gen_range(cursor..groups[gi][0].revision());
            log.push(progress(w, s, r));
        }
        let take = rng.gen_range(1..=3).min(groups.len() - gi);
        let events: Vec<EventRecord> =
            groups[gi..gi + take].iter().flatten().map(|e| delivered(e, spec.prev_kv)).collect();
        cursor = events.last().map_or(cursor, |e| e.revision());
        seen = Some(cursor);
        log.push(response(w, s, cursor, events));
        gi += take;
    }
    if spec.progress_notify && rng.gen_bool(0.5) {
        let r = rng.gen_range(cursor..=end.max(cursor));
        log.push(progress(w, s, r));
        seen = Some(r);
    }
    seen
}

/// A watcher's sessions: random first start (explicit or "from now"), each later session
/// resuming after the last revision seen, the last one catching up to the end of the truth.
fn watcher_log(truth: &[EventRecord], final_rev: i64, watcher: u64, rng: &mut StdRng, log: &mut Vec<WatchRecord>) {
    let spec = random_spec(rng);
    let sessions = rng.gen_range(1..=4);
    let mut resume: Option<i64> = None;
    for session in 1..=sessions {
        let (start_revision, start) = match resume {
            Some(r) => (r, r),
            None if rng.gen_bool(0.5) => {
                let s = rng.gen_range(1..=final_rev + 1);
                (s, s)
            }
            None => (0, rng.gen_range(1..=final_rev) + 1),
        };
        let last = if session == sessions { final_rev } else { rng.gen_range(start - 1..=final_rev) };
        log.push(request(watcher, session, &spec, start_revision));
        log.push(created(watcher, session, start - 1));
        let seen = deliver(truth, &spec, (watcher, session), (start, last), rng, log);
        log.push(end(watcher, session));
        resume = seen.map(|r| r + 1).or(if start_revision > 0 { Some(start_revision) } else { None });
    }
}

/// A whole simulated run: (history, watch log, truth).
pub(super) fn run(seed: u64) -> (Vec<Op>, Vec<WatchRecord>, Vec<EventRecord>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = random_store(&mut rng);
    let mut log = Vec::new();
    for watcher in 1..=rng.gen_range(1..=5) {
        watcher_log(&store.truth, store.rev, watcher, &mut rng, &mut log);
    }
    let mut history = store.history;
    crate::history::reindex(&mut history);
    (history, log, store.truth)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Mutation {
    Drop,
    Duplicate,
    Swap,
    CorruptPrevKv,
    ChangeValue,
}

pub(super) const MUTATIONS: [Mutation; 5] =
    [Mutation::Drop, Mutation::Duplicate, Mutation::Swap, Mutation::CorruptPrevKv, Mutation::ChangeValue];

/// An event's place in the log: (record index, index in the record's events).
type Place = (usize, usize);

/// One observation of a session, in log order: an event (record, index) or a progress notification.
#[derive(Clone, Copy)]
enum Obs {
    Event(usize, usize),
    Progress,
}

/// Per session: whether it asked for prev_kv, whether it had a start revision, its observations.
fn observations(log: &[WatchRecord]) -> Vec<(bool, bool, Vec<Obs>)> {
    let mut index: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out: Vec<(bool, bool, Vec<Obs>)> = Vec::new();
    for (r, record) in log.iter().enumerate() {
        match record {
            WatchRecord::Request { prev_kv, start_revision, .. } => {
                index.insert(record.session(), out.len());
                out.push((*prev_kv, *start_revision > 0, Vec::new()));
            }
            WatchRecord::Response { events, .. } => {
                let Some(&i) = index.get(&record.session()) else { continue };
                if record.is_progress_notify() {
                    out[i].2.push(Obs::Progress);
                }
                out[i].2.extend((0..events.len()).map(|e| Obs::Event(r, e)));
            }
            WatchRecord::End { .. } => {}
        }
    }
    out
}

fn events_mut(record: &mut WatchRecord) -> &mut Vec<EventRecord> {
    match record {
        WatchRecord::Response { events, .. } => events,
        _ => unreachable!("observations only point at responses"),
    }
}

/// Applies `mutation` at a random place where it must be detectable; `None` if there is none.
/// A dropped event is detectable only with an observation after it (else the session simply
/// ended earlier) and a known start before it (a start revision, or an earlier observation).
pub(super) fn mutate(log: &[WatchRecord], mutation: Mutation, rng: &mut StdRng) -> Option<Vec<WatchRecord>> {
    // (record, event, the session's next event)
    let mut candidates: Vec<(usize, usize, Option<Place>)> = Vec::new();
    for (prev_kv, explicit_start, obs) in observations(log) {
        let events: Vec<(usize, usize)> =
            obs.iter().filter_map(|o| if let Obs::Event(r, e) = o { Some((*r, *e)) } else { None }).collect();
        for (k, o) in obs.iter().enumerate() {
            let Obs::Event(r, e) = *o else { continue };
            let next_event = events.iter().copied().skip_while(|p| *p != (r, e)).nth(1);
            let ok = match mutation {
                Mutation::Drop => k + 1 < obs.len() && (explicit_start || k > 0),
                Mutation::Duplicate => true,
                Mutation::Swap => next_event.is_some(),
                Mutation::CorruptPrevKv => prev_kv,
                Mutation::ChangeValue => {
                    matches!(&log[r], WatchRecord::Response { events, .. } if events[e].kind == EventKind::Put)
                }
            };
            if ok {
                candidates.push((r, e, next_event));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (r, e, next) = candidates[rng.gen_range(0..candidates.len())];
    let mut log = log.to_vec();
    match mutation {
        Mutation::Drop => {
            events_mut(&mut log[r]).remove(e);
            if events_mut(&mut log[r]).is_empty() {
                log.remove(r);
            }
        }
        Mutation::Duplicate => {
            let ev = events_mut(&mut log[r])[e].clone();
            events_mut(&mut log[r]).insert(e + 1, ev);
        }
        Mutation::Swap => {
            let (r2, e2) = next?;
            let a = events_mut(&mut log[r])[e].clone();
            let b = std::mem::replace(&mut events_mut(&mut log[r2])[e2], a);
            events_mut(&mut log[r])[e] = b;
        }
        Mutation::CorruptPrevKv => {
            let ev = &mut events_mut(&mut log[r])[e];
            match &mut ev.prev_kv {
                Some(prev) => prev.value.push_str("-corrupt"),
                None => {
                    let bogus = KvRecord {
                        key: ev.kv.key.clone(),
                        value: "bogus".into(),
                        create_revision: 1,
                        mod_revision: 1,
                        version: 1,
                        lease: 0,
                    };
                    ev.prev_kv = Some(bogus);
                }
            }
        }
        Mutation::ChangeValue => events_mut(&mut log[r])[e].kv.value.push_str("-changed"),
    }
    Some(log)
}
