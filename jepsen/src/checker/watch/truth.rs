//! The ground truth, indexed so that every watch event can be located and every key's value at
//! any revision looked up in logarithmic time, and the sanity checks the truth must pass before
//! it can judge the watchers: it holds every acknowledged write and nothing nobody wrote.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{MALFORMED, Tally, to_json};
use crate::history::{OpType, Pair};
use crate::watchlog::{EventKind, EventRecord, KvRecord};

/// The committed events in revision order, with each key's events listed separately.
pub(crate) struct Truth<'a> {
    events: Vec<&'a EventRecord>,
    revs: Vec<i64>,
    by_key: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Truth<'a> {
    /// Indexes `truth`. Also returns the input positions where the revision went down; the index
    /// is built from a (stable) sorted copy so that lookups stay correct even then.
    pub(crate) fn new(truth: &'a [EventRecord]) -> (Truth<'a>, Vec<usize>) {
        let disorder: Vec<usize> =
            (1..truth.len()).filter(|&i| truth[i].revision() < truth[i - 1].revision()).collect();
        let mut events: Vec<&EventRecord> = truth.iter().collect();
        if !disorder.is_empty() {
            events.sort_by_key(|e| e.revision());
        }
        let revs = events.iter().map(|e| e.revision()).collect();
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            by_key.entry(e.kv.key.as_str()).or_default().push(i);
        }
        (Truth { events, revs, by_key }, disorder)
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn event(&self, i: usize) -> &'a EventRecord {
        self.events[i]
    }

    pub(crate) fn revision(&self, i: usize) -> i64 {
        self.revs[i]
    }

    /// The first position whose revision is >= `rev`.
    pub(crate) fn lower_bound(&self, rev: i64) -> usize {
        self.revs.partition_point(|&r| r < rev)
    }

    /// Positions of `key`'s events, ascending.
    pub(crate) fn key_events(&self, key: &str) -> &[usize] {
        self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every key with at least one event, with its event positions.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&'a str, &[usize])> {
        self.by_key.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// The position of `key`'s event at revision `rev`.
    pub(crate) fn find(&self, rev: i64, key: &str) -> Option<usize> {
        let list = self.key_events(key);
        let at = list.partition_point(|&i| self.revs[i] < rev);
        list.get(at).copied().filter(|&i| self.revs[i] == rev)
    }

    /// The position of `key`'s first event after revision `rev`.
    pub(crate) fn next_after(&self, key: &str, rev: i64) -> Option<usize> {
        let list = self.key_events(key);
        list.get(list.partition_point(|&i| self.revs[i] <= rev)).copied()
    }

    /// `key`'s value once every event up to and including revision `rev` is applied (`None` when
    /// the key does not exist then). Complete because the truth starts at revision 1 and nothing
    /// was compacted.
    pub(crate) fn state_at(&self, key: &str, rev: i64) -> Option<&'a KvRecord> {
        let list = self.key_events(key);
        let at = list.partition_point(|&i| self.revs[i] <= rev);
        let event = self.events[*list.get(at.checked_sub(1)?)?];
        (event.kind == EventKind::Put).then_some(&event.kv)
    }
}

/// `truth-order`: revisions going down in the truth as read back.
pub(super) fn report_disorder(truth: &[EventRecord], disorder: &[usize], tally: &mut Tally) {
    for &i in disorder {
        tally.report("truth-order", || {
            let explanation = format!(
                "ground truth revision decreases at position {i}: {} after {}",
                truth[i].revision(),
                truth[i - 1].revision()
            );
            (explanation, Vec::new(), json!({"position": i, "events": [to_json(&truth[i - 1]), to_json(&truth[i])]}))
        });
    }
}

/// Replays the truth as the store's state machine: a key touched twice in one revision is
/// `truth-order`; a delete of a missing key, a create whose create_revision/version is not fresh,
/// an update that does not continue the key's create_revision/version, or a prev_kv that is not the
/// key's previous value is `truth-state`. A truth that breaks these cannot judge prev_kv or IsCreate.
pub(super) fn check_state_machine(truth: &Truth, tally: &mut Tally) {
    let mut state: HashMap<&str, (i64, Option<&KvRecord>)> = HashMap::new();
    for i in 0..truth.len() {
        let ev = truth.event(i);
        let key = ev.kv.key.as_str();
        let (last_rev, prev) = state.get(key).copied().unwrap_or((i64::MIN, None));
        if last_rev == ev.revision() {
            tally.report("truth-order", || {
                let explanation = format!("key {key:?} changes twice at revision {}", ev.revision());
                (explanation, Vec::new(), json!({"position": i, "event": to_json(ev)}))
            });
        }
        if let Some(problem) = state_problem(ev, prev) {
            tally.report("truth-state", || {
                let explanation = format!("ground truth event at revision {}: {problem}", ev.revision());
                (explanation, Vec::new(), json!({"position": i, "event": to_json(ev), "previous": to_json(&prev)}))
            });
        }
        state.insert(key, (ev.revision(), (ev.kind == EventKind::Put).then_some(&ev.kv)));
    }
}

fn state_problem(ev: &EventRecord, prev: Option<&KvRecord>) -> Option<&'static str> {
    let kv = &ev.kv;
    match (ev.kind, prev) {
        (EventKind::Delete, None) => Some("deletes a key that does not exist"),
        (EventKind::Put, None) if kv.create_revision != kv.mod_revision || kv.version != 1 => {
            Some("creates a key without create_revision == mod_revision and version 1")
        }
        (EventKind::Put, Some(p))
            if kv.create_revision != p.create_revision || p.version.checked_add(1) != Some(kv.version) =>
        {
            Some("updates a key without keeping its create_revision and incrementing its version")
        }
        // The truth is read with prev_kv, but a truth dumped some other way may lack it.
        _ if ev.prev_kv.is_some() && ev.prev_kv.as_ref() != prev => Some("prev_kv is not the key's previous value"),
        _ => None,
    }
}

/// The text a put op stores: values are recorded as UTF-8 text, the lease workload wraps its
/// integer in `{"lease": id, "value": v}`.
pub(crate) fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(map) => map.get("value").and_then(value_text),
        _ => None,
    }
}

/// The writers' puts and deletes, indexed by what they leave in the truth.
pub(crate) struct Writes<'p> {
    pairs: &'p [Pair],
    /// key → value text → the put pair that wrote it (values are unique per put).
    puts: HashMap<&'p str, HashMap<String, usize>>,
    /// revision → the acknowledged delete that created it.
    deletes: HashMap<i64, usize>,
    count: usize,
    skipped: usize,
}

impl<'p> Writes<'p> {
    pub(crate) fn new(pairs: &'p [Pair]) -> Writes<'p> {
        let mut w = Writes { pairs, puts: HashMap::new(), deletes: HashMap::new(), count: 0, skipped: 0 };
        for (i, p) in pairs.iter().enumerate() {
            let Some(key) = p.invoke.key.as_deref() else { continue };
            match p.invoke.f.as_str() {
                "put" => match value_text(&p.invoke.value) {
                    Some(text) => {
                        w.count += 1;
                        w.puts.entry(key).or_default().insert(text, i);
                    }
                    None => w.skipped += 1,
                },
                "delete" => {
                    w.count += 1;
                    if let (OpType::Ok, Some(rev)) = (p.kind(), p.complete.rev) {
                        w.deletes.insert(rev, i);
                    }
                }
                _ => {}
            }
        }
        w
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn skipped(&self) -> usize {
        self.skipped
    }

    /// The history ops (invocation and completion) that produced `ev`, if any: evidence only.
    pub(crate) fn ops_for(&self, ev: &EventRecord) -> Vec<crate::history::Op> {
        let pair = match ev.kind {
            EventKind::Put => self.puts.get(ev.kv.key.as_str()).and_then(|m| m.get(&ev.kv.value)),
            EventKind::Delete => self.deletes.get(&ev.revision()),
        };
        pair.map(|&i| vec![self.pairs[i].invoke.clone(), self.pairs[i].complete.clone()]).unwrap_or_default()
    }

    /// `lost-write`, `phantom-write`, `truth-duplicate` (and malformed acknowledged writes).
    pub(crate) fn check_against(&self, truth: &Truth, tally: &mut Tally) {
        for p in self.pairs.iter().filter(|p| p.kind() == OpType::Ok) {
            match p.invoke.f.as_str() {
                "put" | "delete" => self.check_acknowledged(p, truth, tally),
                _ => {}
            }
        }
        self.check_truth_puts(truth, tally);
    }

    fn check_acknowledged(&self, p: &Pair, truth: &Truth, tally: &mut Tally) {
        let is_put = p.invoke.f == "put";
        if !is_put && p.complete.succeeded == Some(false) {
            return; // the key was absent: no revision was created
        }
        let (Some(key), Some(rev)) = (p.invoke.key.as_deref(), p.complete.rev) else {
            return self.malformed(p, "an acknowledged write without key or revision", tally);
        };
        let want_value = if is_put { value_text(&p.invoke.value) } else { None };
        let found = truth.find(rev, key).map(|i| truth.event(i));
        let present = match found {
            Some(ev) if is_put => ev.kind == EventKind::Put && Some(&ev.kv.value) == want_value.as_ref(),
            Some(ev) => ev.kind == EventKind::Delete,
            None => false,
        };
        if !present {
            tally.report("lost-write", || {
                let explanation =
                    format!("acknowledged {} of {key:?} at revision {rev} is not in the ground truth", p.invoke.f);
                let details =
                    json!({"key": key, "rev": rev, "value": want_value, "truth_event_at_rev": to_json(&found)});
                (explanation, vec![p.invoke.clone(), p.complete.clone()], details)
            });
        }
    }

    fn check_truth_puts(&self, truth: &Truth, tally: &mut Tally) {
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for i in 0..truth.len() {
            let ev = truth.event(i);
            if ev.kind != EventKind::Put {
                continue;
            }
            let writer = self.puts.get(ev.kv.key.as_str()).and_then(|m| m.get(&ev.kv.value)).map(|&pi| &self.pairs[pi]);
            match writer {
                None => tally.report("phantom-write", || {
                    let explanation =
                        format!("ground truth holds {:?} = {:?}, which no put wrote", ev.kv.key, ev.kv.value);
                    (explanation, Vec::new(), json!({"position": i, "event": to_json(ev)}))
                }),
                Some(p) if p.kind() == OpType::Fail => tally.report("phantom-write", || {
                    let explanation = format!("a failed put of {:?} = {:?} took effect", ev.kv.key, ev.kv.value);
                    (explanation, vec![p.invoke.clone(), p.complete.clone()], json!({"event": to_json(ev)}))
                }),
                Some(p) => {
                    let n = seen.entry((ev.kv.key.as_str(), ev.kv.value.as_str())).or_insert(0);
                    *n += 1;
                    if *n == 2 {
                        tally.report("truth-duplicate", || {
                            let explanation = format!("put of {:?} = {:?} took effect twice", ev.kv.key, ev.kv.value);
                            (explanation, vec![p.invoke.clone(), p.complete.clone()], json!({"event": to_json(ev)}))
                        });
                    }
                }
            }
        }
    }

    fn malformed(&self, p: &Pair, why: &str, tally: &mut Tally) {
        tally.report(MALFORMED, || (why.to_string(), vec![p.invoke.clone(), p.complete.clone()], Value::Null));
    }
}
