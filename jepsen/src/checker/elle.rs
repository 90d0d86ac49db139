//! Strict serializability of the list-append workload, checked the way Elle does: infer each key's
//! version order from the reads, derive ww/wr/rw dependencies between committed txns, add process
//! and realtime order, and report every cycle (G0, G1c, G-single, G2-item and their `-process` /
//! `-realtime` forms) plus the anomalies visible without a cycle (G1a, G1b, internal, incompatible
//! order, duplicate elements, lost appends). An illegal history must come out invalid with the
//! records that prove it; a legal one must never do so.

mod cycles;
mod graph;
mod order;
mod report;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod txn;

use serde_json::{Value, json};

use super::CheckResult;
use crate::history::{Op, OpType};
use graph::EdgeKind;

/// Checks the `txn` ops of `history` (other ops and nemesis records are ignored).
pub fn check(history: &[Op]) -> CheckResult {
    let mut out = report::Anomalies::default();
    let mut parsed = txn::parse(history, &mut out);
    let orders = order::analyze(&mut parsed, &mut out);
    let graph = graph::build(&parsed, &orders);
    let sccs = graph::sccs(&graph.adj);
    cycles::report(&parsed, &graph, &sccs, &mut out);
    let stats = stats(&parsed, &graph, sccs.len(), &out);
    CheckResult::from_anomalies("append", out.kept, stats)
}

fn stats(p: &txn::Parsed, g: &graph::Graph, sccs: usize, out: &report::Anomalies) -> Value {
    let count = |kind: OpType| p.txns.iter().filter(|t| t.kind == kind).count();
    let info_committed = p.txns.iter().filter(|t| t.kind == OpType::Info && t.committed).count();
    let edges: serde_json::Map<String, Value> =
        EdgeKind::ALL.iter().map(|&k| (k.name().to_string(), json!(g.count(k)))).collect();
    json!({
        "txns": {
            "ok": count(OpType::Ok),
            "fail": count(OpType::Fail),
            "info": count(OpType::Info),
            "info-committed": info_committed,
            "malformed": p.malformed,
        },
        "keys": p.keys.len(),
        "reads": p.reads.len(),
        "edges": edges,
        "sccs": sccs,
        "anomaly_counts": out.counts,
    })
}
