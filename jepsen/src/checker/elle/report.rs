//! Collects anomalies and words them: every anomaly is counted, only the first few of each kind are
//! kept in full, and their evidence is built lazily so a badly broken history costs no more to check
//! than a good one.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::cycles::Cycle;
use super::graph::EdgeKind;
use super::txn::{Parsed, TxnId};
use crate::checker::{ANOMALIES_KEPT_PER_KIND, Anomaly};
use crate::history::Op;

/// What an anomaly is made of once it is kept: explanation, records, structured details.
pub(super) type Evidence = (String, Vec<Op>, Value);

#[derive(Default)]
pub(super) struct Anomalies {
    pub kept: Vec<Anomaly>,
    pub counts: BTreeMap<String, usize>,
}

impl Anomalies {
    /// Counts one anomaly of `kind`; `build` runs only when this one is kept.
    pub fn add(&mut self, kind: &str, build: impl FnOnce() -> Evidence) {
        let n = self.counts.entry(kind.to_string()).or_insert(0);
        *n += 1;
        if *n <= ANOMALIES_KEPT_PER_KIND {
            let (explanation, ops, details) = build();
            self.kept.push(Anomaly { kind: kind.to_string(), explanation, ops, details });
        }
    }
}

/// A list for an explanation: whole when short, else its ends (reads can hold thousands of elements).
pub(super) fn brief(list: &[Value]) -> String {
    let show = |xs: &[Value]| xs.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
    if list.len() <= 8 {
        format!("[{}]", show(list))
    } else {
        format!("[{}, …, {}] ({} elements)", show(&list[..3]), show(&list[list.len() - 3..]), list.len())
    }
}

/// The records of the given transactions, in the order given, without repeats.
pub(super) fn records(p: &Parsed, txns: &[TxnId]) -> Vec<Op> {
    let mut seen = Vec::new();
    let mut ops = Vec::new();
    for &t in txns {
        if !seen.contains(&t) {
            seen.push(t);
            ops.extend(p.txns[t as usize].records());
        }
    }
    ops
}

/// Elle-style wording of a cycle: names the transactions, then says why each precedes the next.
pub(super) fn explain_cycle(kind: &str, cycle: &Cycle, p: &Parsed) -> Evidence {
    let nodes: Vec<TxnId> = cycle.steps.iter().map(|(from, _)| *from).collect();
    let name = |t: TxnId| format!("T{}", nodes.iter().position(|&n| n == t).map_or(0, |i| i + 1));
    let mut text = format!("{kind}: a cycle of {} transactions. Let:\n", nodes.len());
    for &t in &nodes {
        let txn = &p.txns[t as usize];
        text += &format!("  {} = op {} (process {}, {:?})\n", name(t), txn.index(), txn.process, txn.kind);
    }
    text += "Then:\n";
    let mut details = Vec::new();
    for (from, edge) in &cycle.steps {
        let (a, b) = (name(*from), name(edge.to));
        let key = edge.key.map(|k| p.keys[k as usize].as_str());
        let k = key.unwrap_or("?");
        let e = edge.elem.map_or("?".to_string(), |e| e.to_string());
        let why = match edge.kind {
            EdgeKind::Ww => {
                let prev = edge.prev.map_or("?".to_string(), |e| e.to_string());
                format!("{b} appended {e} after {a} appended {prev} to key {k}")
            }
            EdgeKind::Wr => format!("{b} read key {k} ending in {e}, which {a} appended"),
            EdgeKind::Rw => match edge.prev {
                Some(last) => format!("{a} read key {k} ending in {last}, and {b} appended {e} right after it"),
                None => format!("{a} read key {k} as empty, and {b} appended its first element {e}"),
            },
            EdgeKind::Process => format!("{a} completed before {b} began on the same process"),
            EdgeKind::Realtime => format!("{a} completed before {b} was invoked"),
        };
        text += &format!("  - {a} < {b}: {why} ({})\n", edge.kind.name());
        details.push(json!({
            "from": p.txns[*from as usize].index(),
            "to": p.txns[edge.to as usize].index(),
            "edge": edge.kind.name(),
            "key": key,
            "element": edge.elem,
        }));
    }
    text += "so T1 < T1: a contradiction.";
    (text, records(p, &nodes), Value::Array(details))
}
