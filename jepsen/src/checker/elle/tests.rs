//! Known-bad histories, one per anomaly, that must come out invalid with exactly that anomaly, and
//! known-good ones that must come out valid: a checker that never says "invalid" proves nothing.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::check;
use super::graph::{self, EdgeKind};
use super::{order, report, txn};
use crate::checker::{ANOMALIES_KEPT_PER_KIND, CheckResult, Validity};
use crate::history::{Op, OpType, Process, pairs, reindex};

fn r(k: &str, list: &[i64]) -> Value {
    json!(["r", k, list])
}

fn a(k: &str, e: i64) -> Value {
    json!(["append", k, e])
}

/// The invocation's micro-ops: the same, with reads not yet filled in.
fn invocation(mops: &[Value]) -> Value {
    let blank = |m: &Value| match m.as_array().map(Vec::as_slice) {
        Some([f, k, _]) if f == "r" => json!(["r", k, null]),
        _ => m.clone(),
    };
    Value::Array(mops.iter().map(blank).collect())
}

/// A history under construction; `build` orders the records by time and numbers them.
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    /// A txn on process `p` invoked at `t0` and completed as `kind` at `t1`.
    fn txn(mut self, p: u64, t0: u64, t1: u64, kind: OpType, mops: &[Value]) -> H {
        let invoke = Op::invoke(p, "txn", None, invocation(mops), t0);
        let value = if kind == OpType::Ok { Value::Array(mops.to_vec()) } else { invocation(mops) };
        self.ops.push(invoke.complete(kind, t1).with_value(value));
        self.ops.push(invoke);
        self
    }

    fn ok(self, p: u64, t0: u64, t1: u64, mops: &[Value]) -> H {
        self.txn(p, t0, t1, OpType::Ok, mops)
    }

    /// An invocation that never completes.
    fn pending(mut self, p: u64, t0: u64, mops: &[Value]) -> H {
        self.ops.push(Op::invoke(p, "txn", None, invocation(mops), t0));
        self
    }

    fn raw(mut self, op: Op) -> H {
        self.ops.push(op);
        self
    }

    fn build(mut self) -> Vec<Op> {
        // Invocations were pushed after their completions: at equal times the invocation goes first.
        self.ops.sort_by_key(|op| (op.time, op.kind != OpType::Invoke));
        reindex(&mut self.ops);
        self.ops
    }
}

fn kinds(result: &CheckResult) -> Vec<String> {
    let counts = result.stats["anomaly_counts"].as_object().cloned().unwrap_or_default();
    counts.keys().cloned().collect()
}

fn pretty(result: &CheckResult) -> String {
    serde_json::to_string_pretty(result).unwrap_or_default()
}

/// The history is invalid, and its anomalies are exactly `expected` (by kind).
fn assert_kinds(history: &[Op], expected: &[&str]) -> CheckResult {
    let result = check(history);
    assert_eq!(result.valid, Validity::Invalid, "{}", pretty(&result));
    assert_eq!(kinds(&result), expected, "{}", pretty(&result));
    for kind in expected {
        assert!(result.anomalies.iter().any(|a| a.kind == *kind && !a.ops.is_empty()), "{}", pretty(&result));
    }
    result
}

fn assert_valid(history: &[Op]) -> CheckResult {
    let result = check(history);
    assert_eq!(result.valid, Validity::Valid, "{}", pretty(&result));
    assert!(result.anomalies.is_empty());
    result
}

fn edges_of(result: &CheckResult, kind: &str) -> Vec<String> {
    let anomaly = result.anomalies.iter().find(|a| a.kind == kind).expect("anomaly present");
    let cycle = anomaly.details.as_array().cloned().unwrap_or_default();
    cycle.iter().map(|step| step["edge"].as_str().unwrap_or("?").to_string()).collect()
}

#[test]
fn g0_write_cycle() {
    let h = H::default()
        .ok(1, 10, 50, &[a("x", 1), a("y", 1)])
        .ok(2, 20, 60, &[a("x", 2), a("y", 2)])
        .ok(3, 70, 80, &[r("x", &[1, 2]), r("y", &[2, 1])])
        .build();
    let result = assert_kinds(&h, &["G0"]);
    assert_eq!(edges_of(&result, "G0"), ["ww", "ww"]);
    let text = &result.anomalies[0].explanation;
    assert!(text.contains("appended 2 after") && text.contains("to key y"), "{text}");
}

#[test]
fn g1a_aborted_read() {
    let h = H::default().txn(1, 10, 20, OpType::Fail, &[a("x", 1)]).ok(2, 30, 40, &[r("x", &[1])]).build();
    let result = assert_kinds(&h, &["G1a"]);
    assert_eq!(result.anomalies[0].ops.len(), 4, "reader and failed writer, invoke and completion");
}

#[test]
fn g1b_intermediate_read() {
    let h = H::default().ok(1, 10, 50, &[a("x", 1), a("x", 2)]).ok(2, 20, 40, &[r("x", &[1])]).build();
    assert_kinds(&h, &["G1b"]);
}

#[test]
fn g1c_circular_information_flow() {
    let h = H::default().ok(1, 10, 50, &[a("x", 1), r("y", &[1])]).ok(2, 20, 60, &[a("y", 1), r("x", &[1])]).build();
    let result = assert_kinds(&h, &["G1c"]);
    assert_eq!(edges_of(&result, "G1c"), ["wr", "wr"]);
}

#[test]
fn g_single_read_skew() {
    let h = H::default()
        .ok(1, 10, 50, &[r("x", &[]), r("y", &[1])])
        .ok(2, 20, 40, &[a("x", 1), a("y", 1)])
        .ok(3, 60, 70, &[r("x", &[1])])
        .build();
    let result = assert_kinds(&h, &["G-single"]);
    let mut edges = edges_of(&result, "G-single");
    edges.sort();
    assert_eq!(edges, ["rw", "wr"]);
    let cycle = result.anomalies[0].details.as_array().cloned().unwrap_or_default();
    let rw = cycle.iter().find(|s| s["edge"] == "rw").cloned().unwrap_or_default();
    assert_eq!((rw["key"].clone(), rw["element"].clone()), (json!("x"), json!(1)));
    assert!(result.anomalies[0].explanation.contains("as empty"), "{}", result.anomalies[0].explanation);
}

#[test]
fn g2_item_write_skew() {
    let h = H::default()
        .ok(1, 10, 50, &[r("x", &[]), a("y", 1)])
        .ok(2, 20, 60, &[r("y", &[]), a("x", 1)])
        .ok(3, 70, 80, &[r("x", &[1]), r("y", &[1])])
        .build();
    let result = assert_kinds(&h, &["G2-item"]);
    assert_eq!(edges_of(&result, "G2-item"), ["rw", "rw"]);
}

#[test]
fn incompatible_order() {
    let h = H::default()
        .ok(1, 10, 20, &[a("x", 1)])
        .ok(2, 30, 40, &[a("x", 2)])
        .ok(3, 50, 60, &[r("x", &[1, 2])])
        .ok(4, 50, 60, &[r("x", &[2, 1])])
        .build();
    let result = assert_kinds(&h, &["incompatible-order"]);
    assert_eq!(result.anomalies[0].ops.len(), 4, "both reads are evidence");
}

#[test]
fn duplicate_elements() {
    let h = H::default().ok(1, 10, 20, &[a("x", 1)]).ok(2, 30, 40, &[r("x", &[1, 1])]).build();
    assert_kinds(&h, &["duplicate-elements"]);
}

#[test]
fn realtime_only_cycle() {
    // T1 finished before T2 began, yet T2's append comes first in x's order.
    let h =
        H::default().ok(1, 10, 20, &[a("x", 1)]).ok(2, 30, 40, &[a("x", 2)]).ok(3, 50, 60, &[r("x", &[2, 1])]).build();
    let result = assert_kinds(&h, &["G0-realtime"]);
    let mut edges = edges_of(&result, "G0-realtime");
    edges.sort();
    assert_eq!(edges, ["realtime", "ww"]);
}

#[test]
fn process_only_cycle() {
    let h =
        H::default().ok(1, 10, 20, &[a("x", 1)]).ok(1, 30, 40, &[a("x", 2)]).ok(3, 50, 60, &[r("x", &[2, 1])]).build();
    assert_kinds(&h, &["G0-process"]);
}

#[test]
fn stale_read_is_a_realtime_g_single() {
    let h =
        H::default().ok(1, 10, 20, &[a("x", 1)]).ok(2, 30, 40, &[r("x", &[])]).ok(3, 50, 60, &[r("x", &[1])]).build();
    assert_kinds(&h, &["G-single-realtime"]);
}

#[test]
fn internal_inconsistency() {
    let h = H::default().ok(1, 10, 20, &[r("x", &[]), a("x", 1), r("x", &[])]).build();
    assert_kinds(&h, &["internal"]);
    let h = H::default()
        .ok(1, 10, 20, &[a("x", 1)])
        .ok(2, 30, 40, &[r("x", &[1]), r("x", &[])])
        .ok(3, 50, 60, &[a("y", 5), r("y", &[4])])
        .build();
    let result = assert_kinds(&h, &["internal"]);
    assert_eq!(result.stats["anomaly_counts"]["internal"], 2);
}

#[test]
fn lost_append() {
    let h = H::default().ok(1, 10, 20, &[a("x", 1)]).ok(2, 30, 40, &[r("x", &[])]).build();
    assert_kinds(&h, &["lost-append"]);
}

#[test]
fn garbage_read() {
    let h = H::default().ok(1, 10, 20, &[r("x", &[7])]).build();
    assert_kinds(&h, &["garbage-read"]);
}

#[test]
fn malformed_records_are_reported_not_panicked_on() {
    let bad = [
        json!("nonsense"),
        json!([["r", "x", "list"]]),
        json!([["append", "x", "one"]]),
        json!([["frob", "x", 1]]),
        json!([["r", "x"]]),
        json!([["r", {"k": 1}, null]]),
        json!([["r", "x", [1, "2"]]]),
        json!([["append", "x", 1.5]]),
    ];
    for (i, value) in bad.into_iter().enumerate() {
        let invoke = Op::invoke(i as u64, "txn", None, json!([]), 10 * i as u64);
        let h = H::default().raw(invoke.complete(OpType::Ok, 10 * i as u64 + 5).with_value(value)).raw(invoke).build();
        assert_kinds(&h, &["malformed-op"]);
    }
    // The same element appended by two txns breaks the workload's premise.
    let h = H::default().ok(1, 10, 20, &[a("x", 1)]).ok(2, 30, 40, &[a("x", 1)]).ok(3, 50, 60, &[r("x", &[1])]).build();
    assert_kinds(&h, &["malformed-op"]);
}

#[test]
fn kept_anomalies_are_capped_but_all_counted() {
    let mut h = H::default().txn(1, 10, 20, OpType::Fail, &[a("x", 1)]);
    for p in 0..20 {
        h = h.ok(2 + p, 30 + p, 40 + p, &[r("x", &[1])]);
    }
    let result = assert_kinds(&h.build(), &["G1a"]);
    assert_eq!(result.anomalies.len(), ANOMALIES_KEPT_PER_KIND);
    assert_eq!(result.stats["anomaly_counts"]["G1a"], 20);
}

#[test]
fn serial_history_is_valid() {
    let h = H::default()
        .ok(1, 10, 20, &[a("x", 1)])
        .ok(1, 30, 40, &[r("x", &[1]), a("x", 2)])
        .ok(1, 50, 60, &[r("x", &[1, 2]), a("y", 1), r("y", &[1])])
        .ok(1, 70, 80, &[r("y", &[1]), r("x", &[1, 2]), a("x", 3), r("x", &[1, 2, 3])])
        .ok(1, 90, 100, &[r("x", &[1, 2, 3]), r("z", &[])])
        .build();
    let result = assert_valid(&h);
    assert_eq!(result.stats["txns"]["ok"], 5);
    assert_eq!(result.stats["keys"], 3);
}

#[test]
fn concurrent_non_conflicting_txns_are_valid() {
    let h = H::default()
        .ok(1, 10, 50, &[a("x", 1), r("x", &[1])])
        .ok(2, 20, 60, &[a("y", 1), r("y", &[1])])
        .ok(3, 30, 40, &[r("z", &[]), a("z", 1)])
        .ok(4, 70, 80, &[r("x", &[1]), r("y", &[1]), r("z", &[1])])
        .build();
    assert_valid(&h);
}

#[test]
fn info_txns_observed_or_not_are_valid() {
    let mut nemesis = Op::invoke(0, "start-kill", None, json!(["n1"]), 25);
    (nemesis.process, nemesis.kind) = (Process::Nemesis, OpType::Info);
    let h = H::default()
        .txn(1, 10, 20, OpType::Info, &[a("x", 1)])
        .ok(2, 30, 40, &[r("x", &[1])])
        .txn(3, 35, 45, OpType::Info, &[a("x", 2), a("y", 1)])
        .pending(4, 50, &[a("x", 3)])
        .ok(5, 60, 70, &[r("x", &[1, 3]), a("y", 2)])
        .txn(6, 80, 90, OpType::Fail, &[a("y", 3)])
        .ok(7, 95, 99, &[r("y", &[2])])
        .raw(nemesis)
        .raw(Op::invoke(8, "read", Some("r1"), json!(null), 26))
        .build();
    let result = assert_valid(&h);
    assert_eq!(result.stats["txns"]["info"], 3);
    assert_eq!(result.stats["txns"]["info-committed"], 2);
    assert_eq!(result.stats["txns"]["fail"], 1);
}

#[test]
fn an_observed_info_txn_takes_part_in_cycles() {
    // T1 (info) appended 1 after T2 read x empty, yet T2 read y as T1 wrote it.
    let h = H::default()
        .txn(1, 10, 20, OpType::Info, &[a("x", 1), a("y", 1)])
        .ok(2, 12, 30, &[r("x", &[]), r("y", &[1])])
        .ok(3, 40, 50, &[r("x", &[1])])
        .build();
    assert_kinds(&h, &["G-single"]);
}

/// Runs the pipeline up to the graph, for tests of the graph itself.
fn graph_of(history: &[Op]) -> graph::Graph {
    let mut out = report::Anomalies::default();
    let mut parsed = txn::parse(history, &mut out);
    let orders = order::analyze(&mut parsed, &mut out);
    graph::build(&parsed, &orders)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The frontier reduction adds few realtime edges, yet `a` reaches `b` through them exactly when
    /// `a` completed before `b` was invoked.
    #[test]
    fn realtime_edges_preserve_reachability(intervals in prop::collection::vec((0u64..200, 1u64..60), 1..40)) {
        let mut h = H::default();
        for (i, &(start, len)) in intervals.iter().enumerate() {
            h = h.ok(i as u64, start, start + len, &[a(&format!("k{i}"), 1)]);
        }
        let history = h.build();
        let g = graph_of(&history);
        let txns: Vec<(u64, u64)> = pairs(&history).iter().map(|p| (p.start(), p.end())).collect();
        for (x, &(xs, xe)) in txns.iter().enumerate() {
            let mut reach = vec![false; txns.len()];
            let mut stack = vec![x];
            while let Some(v) = stack.pop() {
                for e in g.adj[v].iter().filter(|e| e.kind == EdgeKind::Realtime) {
                    if !std::mem::replace(&mut reach[e.to as usize], true) {
                        stack.push(e.to as usize);
                    }
                }
            }
            for (y, &(ys, _)) in txns.iter().enumerate() {
                prop_assert_eq!(reach[y], xe < ys, "{} [{}, {}] -> {} at {}", x, xs, xe, y, ys);
            }
        }
        let edges: usize = g.adj.iter().map(|l| l.len()).sum();
        prop_assert!(edges <= txns.len() * txns.len());
    }

    /// Arbitrary junk in txn records is reported or ignored, never a panic.
    #[test]
    fn junk_never_panics(ops in prop::collection::vec((0u64..4, 0usize..4, junk_txn()), 0..30)) {
        let kinds = [OpType::Invoke, OpType::Ok, OpType::Fail, OpType::Info];
        let mut history: Vec<Op> = ops
            .into_iter()
            .enumerate()
            .map(|(t, (p, kind, value))| {
                let mut op = Op::invoke(p, "txn", None, value, t as u64);
                op.kind = kinds[kind];
                op
            })
            .collect();
        reindex(&mut history);
        let result = check(&history);
        prop_assert!(result.valid != Validity::Unknown);
    }
}

fn junk_txn() -> impl Strategy<Value = Value> {
    let f = prop_oneof![Just(json!("r")), Just(json!("append")), Just(json!("x")), Just(json!(null))];
    let key = prop_oneof![Just(json!("x")), Just(json!("y")), Just(json!(1)), Just(json!([]))];
    let list = prop::collection::vec(0i64..4, 0..4).prop_map(|l| json!(l));
    let arg = prop_oneof![Just(json!(null)), (0i64..4).prop_map(|e| json!(e)), list, Just(json!("s"))];
    let mop = prop_oneof![(f, key, arg).prop_map(|(f, k, v)| json!([f, k, v])), Just(json!(3))];
    prop_oneof![prop::collection::vec(mop, 0..4).prop_map(Value::Array), Just(json!(null))]
}
