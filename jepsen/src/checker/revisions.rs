//! Global revision checks over every workload's client ops. etcd numbers all writes with one
//! store-wide revision, so uniqueness and real-time monotonicity of revisions catch lost,
//! duplicated or reordered writes and stale reads that per-key value checks cannot see.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::{ANOMALIES_KEPT_PER_KIND, Anomaly, CheckResult};
use crate::history::{self, Op, OpType, Pair};

/// The name this checker reports under.
pub const CHECKER: &str = "revisions";

/// The revision an op's completion says it created: `ok` writes (`write`, `put`, `delete`, `cas`,
/// `txn`) that did not report `succeeded: false`. A read-only txn creates nothing (its `rev` is
/// the revision it read at), nor does a read (its `rev` is the key's mod_revision).
pub fn created_revision(op: &Op) -> Option<i64> {
    let writes = matches!(op.f.as_str(), "write" | "put" | "delete" | "cas" | "txn");
    let created = op.kind == OpType::Ok && writes && op.succeeded != Some(false) && !is_read_only_txn(op);
    op.rev.filter(|_| created)
}

/// A txn whose micro-ops (`[["r", key, ...], ["append", key, int]]`) are all reads.
fn is_read_only_txn(op: &Op) -> bool {
    op.f == "txn"
        && op
            .value
            .as_array()
            .is_some_and(|micro_ops| micro_ops.iter().all(|m| m.get(0).and_then(Value::as_str) == Some("r")))
}

pub fn check(history: &[Op]) -> CheckResult {
    let pairs = history::pairs(history);
    let ok: Vec<&Pair> = pairs.iter().filter(|p| p.kind() == OpType::Ok).collect();
    let mut findings = Findings::default();
    unique_and_large_revisions(&ok, &mut findings);
    real_time_header_revisions(&ok, &mut findings);
    mod_revisions_in_real_time(&pairs, &ok, &mut findings);
    reads_match_their_writes(&ok, &mut findings);
    let created: Vec<i64> = ok.iter().filter_map(|p| created_revision(&p.complete)).collect();
    let stats = json!({
        "ops": pairs.len(),
        "ok_ops": ok.len(),
        "ops_with_hrev": ok.iter().filter(|p| p.complete.hrev.is_some()).count(),
        "created_revisions": created.len(),
        "max_created_revision": created.iter().max(),
        "anomaly_counts": findings.counts,
    });
    CheckResult::from_anomalies(CHECKER, findings.kept, stats)
}

/// Anomalies kept in full (a bounded number per kind) and the count of all of them; an anomaly
/// past the cap is never built, so a history broken everywhere stays cheap to check.
#[derive(Default)]
struct Findings {
    kept: Vec<Anomaly>,
    counts: BTreeMap<&'static str, usize>,
}

impl Findings {
    fn report(&mut self, kind: &'static str, involved: &[&Pair], explain: impl FnOnce() -> (String, Value)) {
        let count = self.counts.entry(kind).or_insert(0);
        *count += 1;
        if *count > ANOMALIES_KEPT_PER_KIND {
            return;
        }
        let (explanation, details) = explain();
        let ops = involved.iter().flat_map(|p| [p.invoke.clone(), p.complete.clone()]).collect();
        self.kept.push(Anomaly { kind: kind.to_string(), explanation, ops, details });
    }
}

fn index(pair: &Pair) -> u64 {
    pair.invoke.index
}

/// `duplicate-revision` and `revision-too-small` (an empty store is at revision 1, so the first
/// write creates 2).
fn unique_and_large_revisions(ok: &[&Pair], findings: &mut Findings) {
    let mut creator: HashMap<i64, &Pair> = HashMap::new();
    for &pair in ok {
        let Some(rev) = created_revision(&pair.complete) else { continue };
        if rev < 2 {
            findings.report("revision-too-small", &[pair], || {
                let why = format!(
                    "{} at index {} created revision {rev}; an empty store is at 1",
                    pair.invoke.f,
                    index(pair)
                );
                (why, json!({ "revision": rev }))
            });
        }
        match creator.get(&rev) {
            Some(&first) => findings.report("duplicate-revision", &[first, pair], || {
                let why = format!("ops at indices {} and {} both created revision {rev}", index(first), index(pair));
                (why, json!({ "revision": rev }))
            }),
            None => {
                creator.insert(rev, pair);
            }
        }
    }
}

/// `hrev-went-backwards` and `write-revision-not-after-prior`, in one sweep over invocations in
/// time order that keeps the largest header revision completed strictly before each.
fn real_time_header_revisions(ok: &[&Pair], findings: &mut Findings) {
    let mut completed: Vec<(u64, i64, &Pair)> =
        ok.iter().filter_map(|&p| Some((p.complete.time, p.complete.hrev?, p))).collect();
    completed.sort_by_key(|&(end, hrev, p)| (end, hrev, index(p)));
    let mut invoked: Vec<&Pair> = ok.to_vec();
    invoked.sort_by_key(|p| (p.start(), index(p)));
    let mut completed = completed.into_iter().peekable();
    let mut highest: Option<(i64, &Pair)> = None;
    for b in invoked {
        while let Some((_, hrev, a)) = completed.next_if(|&(end, _, _)| end < b.start()) {
            if highest.is_none_or(|(max, _)| hrev > max) {
                highest = Some((hrev, a));
            }
        }
        let Some((max, a)) = highest else { continue };
        if let Some(hrev) = b.complete.hrev.filter(|&hrev| hrev < max) {
            findings.report("hrev-went-backwards", &[a, b], || {
                let why = format!(
                    "op at index {} completed with header revision {max} before op at index {} was invoked, \
                     which then saw header revision {hrev}",
                    index(a),
                    index(b)
                );
                (why, json!({ "earlier_hrev": max, "later_hrev": hrev }))
            });
        }
        if let Some(created) = created_revision(&b.complete).filter(|&created| created <= max) {
            findings.report("write-revision-not-after-prior", &[a, b], || {
                let why = format!(
                    "{} at index {} created revision {created}, yet op at index {} had already completed at \
                     revision {max} before it was invoked",
                    b.invoke.f,
                    index(b),
                    index(a)
                );
                (why, json!({ "created": created, "prior_hrev": max }))
            });
        }
    }
}

/// `stale-mod-revision`: per key, a linearizable read invoked after a read (or a write) of the key
/// completed must see a mod_revision at least as new. A key that anything but register ops
/// touched may have been deleted (by a delete or an expiring lease), so there a read of an absent
/// key (mod_revision 0) is exempt.
fn mod_revisions_in_real_time(pairs: &[Pair], ok: &[&Pair], findings: &mut Findings) {
    let mut deletion_free: HashMap<&str, bool> = HashMap::new();
    for pair in pairs {
        if let Some(key) = pair.invoke.key.as_deref() {
            let register_op = matches!(pair.invoke.f.as_str(), "read" | "write" | "cas");
            *deletion_free.entry(key).or_insert(true) &= register_op;
        }
    }
    let mut by_key: HashMap<&str, Vec<&Pair>> = HashMap::new();
    for &pair in ok {
        if let Some(key) = pair.invoke.key.as_deref() {
            by_key.entry(key).or_default().push(pair);
        }
    }
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_unstable_by_key(|(key, _)| *key);
    for (key, ops) in keys {
        let zero_is_stale = deletion_free.get(key).copied().unwrap_or(false);
        stale_mod_revisions_of_key(key, &ops, zero_is_stale, findings);
    }
}

/// The mod_revision an op shows the key had when it completed: a read's `rev`, or the revision a
/// write, put or cas created (a delete leaves none).
fn shown_mod_revision(pair: &Pair) -> Option<i64> {
    match pair.invoke.f.as_str() {
        "read" => pair.complete.rev,
        "write" | "put" | "cas" => created_revision(&pair.complete),
        _ => None,
    }
}

fn stale_mod_revisions_of_key(key: &str, ops: &[&Pair], zero_is_stale: bool, findings: &mut Findings) {
    let mut shown: Vec<(u64, i64, &Pair)> =
        ops.iter().filter_map(|&p| Some((p.complete.time, shown_mod_revision(p)?, p))).collect();
    shown.sort_by_key(|&(end, rev, p)| (end, rev, index(p)));
    let mut reads: Vec<&Pair> =
        ops.iter().copied().filter(|p| p.invoke.f == "read" && p.complete.hrev.is_some()).collect();
    reads.sort_by_key(|p| (p.start(), index(p)));
    let mut shown = shown.into_iter().peekable();
    let mut newest: Option<(i64, &Pair)> = None;
    for b in reads {
        while let Some((_, rev, a)) = shown.next_if(|&(end, _, _)| end < b.start()) {
            if newest.is_none_or(|(max, _)| rev > max) {
                newest = Some((rev, a));
            }
        }
        let (Some((max, a)), Some(rev)) = (newest, b.complete.rev) else { continue };
        if rev < max && (rev != 0 || zero_is_stale) {
            findings.report("stale-mod-revision", &[a, b], || {
                let why = format!(
                    "read at index {} of key {key} saw mod_revision {rev}, yet {} at index {} had completed \
                     showing {max} before it was invoked",
                    index(b),
                    a.invoke.f,
                    index(a)
                );
                (why, json!({ "key": key, "earlier": max, "later": rev }))
            });
        }
    }
}

/// `read-rev-mismatch`: a register read of value v must report the revision that the (unique)
/// ok write or cas of v created, and an absent key must report 0.
fn reads_match_their_writes(ok: &[&Pair], findings: &mut Findings) {
    // (key, value) -> its writer, or `None` when several ops wrote the same value there.
    let mut writers: HashMap<(&str, i64), Option<(i64, &Pair)>> = HashMap::new();
    for &pair in ok {
        let value = match pair.invoke.f.as_str() {
            "write" => pair.invoke.value.as_i64(),
            "cas" => pair.invoke.value.get(1).and_then(Value::as_i64),
            _ => None,
        };
        let (Some(key), Some(value), Some(rev)) = (pair.invoke.key.as_deref(), value, created_revision(&pair.complete))
        else {
            continue;
        };
        writers.entry((key, value)).and_modify(|w| *w = None).or_insert(Some((rev, pair)));
    }
    for &b in ok.iter().filter(|p| p.invoke.f == "read") {
        let (Some(key), Some(rev)) = (b.invoke.key.as_deref(), b.complete.rev) else { continue };
        let (expected, writer) = match &b.complete.value {
            Value::Null => (0, None),
            value => match value.as_i64().and_then(|v| writers.get(&(key, v)).copied().flatten()) {
                Some((created, writer)) => (created, Some(writer)),
                None => continue,
            },
        };
        if rev == expected {
            continue;
        }
        let involved: Vec<&Pair> = writer.into_iter().chain([b]).collect();
        findings.report("read-rev-mismatch", &involved, || {
            let why = format!(
                "read at index {} of key {key} returned {} with mod_revision {rev}, but that value's revision is {expected}",
                index(b),
                b.complete.value
            );
            (why, json!({ "key": key, "rev": rev, "expected": expected }))
        });
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    use super::*;
    use crate::checker::Validity;
    use crate::checker::linear::tests::{Records, Simulation, history, make_one_read_stale, simulate};

    fn op(process: u64, f: &str, key: &str, value: Value, start: u64, end: u64) -> Records {
        let invoke = Op::invoke(process, f, Some(key), value, start);
        let complete = invoke.complete(OpType::Ok, end);
        [invoke, complete]
    }

    /// An ok write that created `rev` (and saw it as its header revision, as etcd reports).
    fn write(process: u64, key: &str, value: i64, start: u64, end: u64, rev: i64) -> Records {
        let [invoke, complete] = op(process, "write", key, json!(value), start, end);
        [invoke, complete.with_rev(rev).with_hrev(rev)]
    }

    /// An ok read; `hrev` is `None` for a serializable read.
    fn read(process: u64, key: &str, value: Option<i64>, span: (u64, u64), rev: i64, hrev: Option<i64>) -> Records {
        let [invoke, mut complete] = op(process, "read", key, Value::Null, span.0, span.1);
        complete = complete.with_value(json!(value)).with_rev(rev);
        complete.hrev = hrev;
        [invoke, complete]
    }

    #[track_caller]
    fn assert_only(result: &CheckResult, kind: &str) {
        assert_eq!(result.valid, Validity::Invalid, "{result:#?}");
        assert!(result.anomalies.iter().all(|a| a.kind == kind), "expected only {kind}: {result:#?}");
        assert!(!result.anomalies[0].ops.is_empty(), "the records involved are the evidence");
    }

    #[track_caller]
    fn assert_valid(result: &CheckResult) {
        assert_eq!(result.valid, Validity::Valid, "{result:#?}");
    }

    #[test]
    fn created_revision_counts_only_acknowledged_writes() {
        let [_, written] = write(1, "k", 1, 0, 1, 5);
        assert_eq!(created_revision(&written), Some(5));
        let [_, read] = read(1, "k", Some(1), (0, 1), 5, Some(6));
        assert_eq!(created_revision(&read), None);
        let [_, cas] = op(1, "cas", "k", json!([1, 2]), 0, 1);
        assert_eq!(created_revision(&cas.clone().with_rev(7).with_succeeded(true)), Some(7));
        assert_eq!(created_revision(&cas.clone().with_rev(7).with_succeeded(false)), None);
        let [_, mut lost] = write(1, "k", 1, 0, 1, 5);
        lost.kind = OpType::Info;
        assert_eq!(created_revision(&lost), None);
        let [_, txn] = op(1, "txn", "k", json!([["r", "x", [1]], ["append", "x", 2]]), 0, 1);
        assert_eq!(created_revision(&txn.clone().with_rev(9)), Some(9));
        let read_only = txn.with_value(json!([["r", "x", [1]]])).with_rev(9);
        assert_eq!(created_revision(&read_only), None);
    }

    #[test]
    fn duplicate_write_revision_is_detected() {
        let result = check(&history([write(1, "a", 1, 0, 10, 5), write(2, "b", 2, 5, 15, 5)]));
        assert_only(&result, "duplicate-revision");
        assert_eq!(result.stats["anomaly_counts"]["duplicate-revision"], 1);
    }

    #[test]
    fn revision_below_two_is_detected() {
        assert_only(&check(&history([write(1, "a", 1, 0, 10, 1)])), "revision-too-small");
    }

    #[test]
    fn hrev_going_backwards_between_non_overlapping_ops_is_detected() {
        let result =
            check(&history([read(1, "a", None, (0, 10), 0, Some(10)), read(2, "b", None, (20, 30), 0, Some(8))]));
        assert_only(&result, "hrev-went-backwards");
        assert_eq!(result.anomalies[0].ops.len(), 4, "both ops' records");
        // Overlapping ops may see revisions in either order; serializable reads are exempt.
        assert_valid(&check(&history([
            read(1, "a", None, (0, 10), 0, Some(10)),
            read(2, "b", None, (5, 30), 0, Some(8)),
        ])));
        assert_valid(&check(&history([
            read(1, "a", None, (0, 10), 0, Some(10)),
            read(2, "b", None, (20, 30), 0, None),
        ])));
    }

    #[test]
    fn write_revision_not_after_an_earlier_header_revision_is_detected() {
        let result = check(&history([read(1, "a", None, (0, 10), 0, Some(10)), write(2, "b", 1, 20, 30, 10)]));
        assert_only(&result, "write-revision-not-after-prior");
    }

    #[test]
    fn read_mod_revision_going_backwards_is_detected() {
        let ops = [
            write(1, "k", 1, 0, 10, 5),
            write(1, "k", 2, 12, 20, 7),
            read(2, "k", Some(2), (25, 30), 7, Some(9)),
            read(3, "k", Some(1), (35, 40), 5, Some(9)),
        ];
        assert_only(&check(&history(ops.clone())), "stale-mod-revision");
        // The same stale value from a serializable read is allowed.
        let [.., last] = ops.clone();
        let [invoke, mut complete] = last;
        complete.hrev = None;
        let mut serializable = ops;
        serializable[3] = [invoke, complete];
        assert_valid(&check(&history(serializable)));
    }

    #[test]
    fn read_older_than_a_completed_write_is_detected() {
        let ops =
            [write(1, "k", 1, 0, 10, 5), write(1, "k", 2, 12, 20, 7), read(2, "k", Some(1), (25, 30), 5, Some(7))];
        assert_only(&check(&history(ops)), "stale-mod-revision");
        // A register key is never deleted: reading it absent after a write is stale too.
        let ops = [write(1, "k", 1, 0, 10, 5), read(2, "k", None, (25, 30), 0, Some(7))];
        assert_only(&check(&history(ops)), "stale-mod-revision");
    }

    #[test]
    fn absent_key_after_a_delete_is_not_stale() {
        let put = op(1, "put", "k", json!(1), 0, 10).map(|r| r.with_rev(5).with_hrev(5));
        let delete = op(1, "delete", "k", Value::Null, 12, 20).map(|r| r.with_rev(6).with_hrev(6));
        let result = check(&history([put, delete, read(2, "k", None, (25, 30), 0, Some(6))]));
        assert_valid(&result);
    }

    #[test]
    fn read_whose_revision_differs_from_its_write_is_detected() {
        let ops = [write(1, "k", 1, 0, 10, 5), read(2, "k", Some(1), (20, 30), 6, Some(6))];
        assert_only(&check(&history(ops)), "read-rev-mismatch");
        let absent = check(&history([read(2, "k", None, (20, 30), 3, Some(6))]));
        assert_eq!(absent.valid, Validity::Invalid);
        assert!(absent.anomalies.iter().any(|a| a.kind == "read-rev-mismatch"), "{absent:#?}");
    }

    #[test]
    fn consistent_revisions_and_read_only_txns_are_valid() {
        let txn = |process, rev| {
            let [invoke, complete] = op(process, "txn", "k", json!([["r", "x", null]]), 40, 50);
            [invoke, complete.with_rev(rev).with_hrev(rev)]
        };
        let result = check(&history([
            write(1, "k", 1, 0, 10, 2),
            read(2, "k", Some(1), (5, 15), 2, Some(2)),
            write(1, "j", 2, 20, 30, 3),
            read(2, "k", Some(1), (20, 30), 2, Some(3)),
            txn(3, 3),
            txn(4, 3),
        ]));
        assert_valid(&result);
        assert_eq!(result.stats["created_revisions"], 2);
    }

    fn simulation(seed: u64) -> Simulation {
        Simulation { keys: 5, clients_per_key: 6, ops_per_client: 15, info_rate: 0.05, fail_rate: 0.05, seed }
    }

    #[test]
    fn simulated_store_histories_are_valid_until_mutated() {
        for seed in 0..20 {
            let ops = simulate(&simulation(seed));
            assert_valid(&check(&ops));

            let mut duplicated = ops.clone();
            let writes: Vec<usize> = (0..ops.len()).filter(|&i| created_revision(&ops[i]).is_some()).collect();
            let (first, last) = (writes[0], writes[writes.len() - 1]);
            duplicated[last].rev = duplicated[first].rev;
            assert_eq!(check(&duplicated).valid, Validity::Invalid);
            assert!(check(&duplicated).anomalies.iter().any(|a| a.kind == "duplicate-revision"));

            let mut stale = ops.clone();
            let mut rng = StdRng::seed_from_u64(seed);
            let read = make_one_read_stale(&mut stale, &mut rng).expect("a read to make stale");
            let result = check(&stale);
            assert_eq!(result.valid, Validity::Invalid, "read {read}");
            assert!(result.anomalies.iter().any(|a| a.kind == "read-rev-mismatch"), "{result:#?}");
        }
    }
}
