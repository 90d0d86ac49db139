//! Version orders: each key's list order, inferred from its longest read, and the checks that need
//! nothing more than that order — reads that are not a prefix of it (`incompatible-order`,
//! `duplicate-elements`), reads of elements nobody committed (`G1a`, `garbage-read`), reads of a
//! txn's intermediate state (`G1b`), and acknowledged appends that a later read missed (`lost-append`).
//! It also decides which `info` txns committed: those whose appends someone observed.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::report::{Anomalies, brief, records};
use super::txn::{KeyId, Parsed, Read, TxnId};
use crate::history::OpType;

/// Who appended an element, and whether it was that txn's last append to the key (the only one
/// another txn may observe as the end of a list).
pub(super) struct Writer {
    pub txn: TxnId,
    pub last: bool,
}

#[derive(Default)]
pub(super) struct KeyOrder {
    /// The longest read, without repeated elements.
    pub order: Vec<i64>,
    pub pos: HashMap<i64, u32>,
    /// The read the order comes from (evidence for `incompatible-order`).
    pub source: Option<usize>,
}

pub(super) struct Orders {
    pub keys: Vec<KeyOrder>,
    pub writers: Vec<HashMap<i64, Writer>>,
    /// Per read: consistent within its txn and a prefix of its key's order.
    pub compatible: Vec<bool>,
}

impl Orders {
    /// The txn that appended `elem` to `key`, if it committed.
    pub fn committed_writer(&self, p: &Parsed, key: KeyId, elem: i64) -> Option<TxnId> {
        let w = self.writers[key as usize].get(&elem)?;
        p.txns[w.txn as usize].committed.then_some(w.txn)
    }
}

pub(super) fn analyze(p: &mut Parsed, out: &mut Anomalies) -> Orders {
    let (writers, duplicates) = index_writers(p, out);
    p.malformed += duplicates;
    let keys = infer_orders(p);
    let compatible = check_prefixes(p, &keys, out);
    let orders = Orders { keys, writers, compatible };
    let observed_elsewhere = stray_elements(p, &orders);
    let observed =
        |k: KeyId, e: i64| orders.keys[k as usize].pos.contains_key(&e) || observed_elsewhere.contains(&(k, e));
    for t in p.txns.iter_mut().filter(|t| t.kind == OpType::Info) {
        t.committed = t.appends.iter().any(|&(k, e)| observed(k, e));
    }
    check_reads(p, &orders, out);
    check_lost(p, &observed, out);
    orders
}

/// Maps every appended element to its writer; an element appended twice to a key breaks the
/// workload's uniqueness premise, so it is reported and the first writer kept.
fn index_writers(p: &Parsed, out: &mut Anomalies) -> (Vec<HashMap<i64, Writer>>, usize) {
    let mut duplicates = 0;
    let mut writers: Vec<HashMap<i64, Writer>> = (0..p.keys.len()).map(|_| HashMap::new()).collect();
    for (id, t) in p.txns.iter().enumerate() {
        for (i, &(k, e)) in t.appends.iter().enumerate() {
            let last = !t.appends[i + 1..].iter().any(|&(k2, _)| k2 == k);
            if let Some(first) = writers[k as usize].get(&e) {
                duplicates += 1;
                let (a, b) = (first.txn, id as TxnId);
                let why = format!("element {e} appended to key {} more than once", p.keys[k as usize]);
                out.add("malformed-op", || {
                    (why, records(p, &[a, b]), json!({"key": p.keys[k as usize], "element": e}))
                });
                continue;
            }
            writers[k as usize].insert(e, Writer { txn: id as TxnId, last });
        }
    }
    (writers, duplicates)
}

fn infer_orders(p: &Parsed) -> Vec<KeyOrder> {
    let mut longest: Vec<Option<usize>> = vec![None; p.keys.len()];
    for (i, r) in p.reads.iter().enumerate().filter(|(_, r)| r.consistent) {
        let best = &mut longest[r.key as usize];
        if best.is_none_or(|b| p.reads[b].list.len() < r.list.len()) {
            *best = Some(i);
        }
    }
    longest
        .into_iter()
        .map(|source| {
            let mut ko = KeyOrder { source, ..KeyOrder::default() };
            for e in source.map_or(&[][..], |i| p.reads[i].list).iter().filter_map(Value::as_i64) {
                if !ko.pos.contains_key(&e) {
                    ko.pos.insert(e, ko.order.len() as u32);
                    ko.order.push(e);
                }
            }
            ko
        })
        .collect()
}

/// Every consistent read must be a prefix of its key's order. Elements are compared in place
/// against the order, so a compatible read costs one pass and no hashing.
fn check_prefixes(p: &Parsed, keys: &[KeyOrder], out: &mut Anomalies) -> Vec<bool> {
    let mut compatible = Vec::with_capacity(p.reads.len());
    for r in &p.reads {
        let ko = &keys[r.key as usize];
        let mismatch = r.list.iter().zip(&ko.order).position(|(v, e)| v.as_i64() != Some(*e));
        let is_prefix = mismatch.is_none() && r.list.len() <= ko.order.len();
        compatible.push(r.consistent && is_prefix);
        if !r.consistent || is_prefix {
            continue;
        }
        let key = p.keys[r.key as usize].as_str();
        let reader = &p.txns[r.txn as usize];
        if let Some(dup) = first_duplicate(r.list) {
            out.add("duplicate-elements", || {
                let why =
                    format!("txn op {} read key {key} as {}, which holds {dup} twice", reader.index(), brief(r.list));
                (why, reader.records(), json!({"key": key, "element": dup}))
            });
            continue;
        }
        let at = mismatch.unwrap_or(ko.order.len());
        let source = ko.source.map_or(r.txn, |s| p.reads[s].txn);
        out.add("incompatible-order", || {
            let longest = ko.source.map_or(&[][..], |s| p.reads[s].list);
            let why = format!(
                "txn op {} read key {key} as {}, which is not a prefix of {} read by op {} (they differ at position {at})",
                reader.index(),
                brief(r.list),
                brief(longest),
                p.txns[source as usize].index()
            );
            let details = json!({"key": key, "position": at, "read": r.list.get(at), "expected": ko.order.get(at)});
            (why, records(p, &[r.txn, source]), details)
        });
    }
    compatible
}

fn first_duplicate(list: &[Value]) -> Option<i64> {
    let mut seen = HashSet::with_capacity(list.len());
    list.iter().filter_map(Value::as_i64).find(|e| !seen.insert(*e))
}

/// Elements seen only in reads that are not a prefix of the order (rare: only in broken histories).
fn stray_elements(p: &Parsed, o: &Orders) -> HashSet<(KeyId, i64)> {
    let stray = p.reads.iter().zip(&o.compatible).filter(|(_, c)| !**c);
    stray.flat_map(|(r, _)| r.list.iter().filter_map(|v| Some((r.key, v.as_i64()?)))).collect()
}

/// `G1a` / `garbage-read` (a read holds an element no committed txn appended) and `G1b` (a read
/// ends in an element its writer later followed with another append to the same key).
fn check_reads(p: &Parsed, o: &Orders, out: &mut Anomalies) {
    let uncommitted =
        |k: KeyId, e: i64| o.writers[k as usize].get(&e).is_none_or(|w| p.txns[w.txn as usize].kind == OpType::Fail);
    // The first such position of each key's order: a compatible read holds one iff it is longer.
    let first_bad: Vec<Option<usize>> =
        o.keys.iter().enumerate().map(|(k, ko)| ko.order.iter().position(|&e| uncommitted(k as KeyId, e))).collect();
    // An internally inconsistent read is reported as such; what else it holds proves nothing more.
    for (r, &compatible) in p.reads.iter().zip(&o.compatible).filter(|(r, _)| r.consistent) {
        let bad = if compatible {
            first_bad[r.key as usize].filter(|&i| i < r.list.len()).map(|i| o.keys[r.key as usize].order[i])
        } else {
            r.list.iter().filter_map(Value::as_i64).find(|&e| uncommitted(r.key, e))
        };
        if let Some(e) = bad {
            report_uncommitted(p, o, r, e, out);
        }
        let Some(last) = r.list.last().and_then(Value::as_i64) else { continue };
        let Some(w) = o.writers[r.key as usize].get(&last) else { continue };
        if w.txn != r.txn && !w.last && p.txns[w.txn as usize].kind != OpType::Fail {
            let key = &p.keys[r.key as usize];
            out.add("G1b", || {
                let why = format!(
                    "txn op {} read key {key} ending in {last}, an intermediate state of op {}, which appended more to {key} afterwards",
                    p.txns[r.txn as usize].index(),
                    p.txns[w.txn as usize].index()
                );
                (why, records(p, &[r.txn, w.txn]), json!({"key": key, "element": last}))
            });
        }
    }
}

fn report_uncommitted(p: &Parsed, o: &Orders, r: &Read, e: i64, out: &mut Anomalies) {
    let key = &p.keys[r.key as usize];
    let reader = p.txns[r.txn as usize].index();
    match o.writers[r.key as usize].get(&e) {
        Some(w) => out.add("G1a", || {
            let writer = p.txns[w.txn as usize].index();
            let why = format!("txn op {reader} read key {key} holding {e}, appended by op {writer}, which failed");
            (why, records(p, &[r.txn, w.txn]), json!({"key": key, "element": e}))
        }),
        None => out.add("garbage-read", || {
            let why = format!("txn op {reader} read key {key} holding {e}, which no txn appended");
            (why, records(p, &[r.txn]), json!({"key": key, "element": e}))
        }),
    }
}

/// An ok append that no read observed although a read of the key began after the append completed.
fn check_lost(p: &Parsed, observed: &dyn Fn(KeyId, i64) -> bool, out: &mut Anomalies) {
    let mut latest: Vec<Option<(u64, TxnId)>> = vec![None; p.keys.len()];
    for r in p.reads.iter().filter(|r| r.consistent) {
        let start = p.txns[r.txn as usize].start;
        let slot = &mut latest[r.key as usize];
        if slot.is_none_or(|(s, _)| s < start) {
            *slot = Some((start, r.txn));
        }
    }
    for (id, t) in p.txns.iter().enumerate().filter(|(_, t)| t.kind == OpType::Ok) {
        for &(k, e) in &t.appends {
            let Some((start, reader)) = latest[k as usize] else { continue };
            if start > t.end && !observed(k, e) {
                let key = &p.keys[k as usize];
                out.add("lost-append", || {
                    let why = format!(
                        "op {} appended {e} to key {key} and completed, yet op {} began later and read {key} without it (as did every other read)",
                        t.index(),
                        p.txns[reader as usize].index()
                    );
                    (why, records(p, &[id as TxnId, reader]), json!({"key": key, "element": e}))
                });
            }
        }
    }
}
