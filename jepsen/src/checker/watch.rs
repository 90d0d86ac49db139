//! The nine watch properties of etcd's robustness suite (`tests/robustness/validate/watch.go`),
//! checked against the ground truth rather than against other watchers: Jepsen's own etcd watch
//! checker only compares watchers with each other, so a write missing from all of them passes.
//!
//! The ground truth (every committed event, read back after the test) is itself checked first:
//! it must hold every acknowledged write at its revision, nothing no client wrote, and follow the
//! store's state machine. Per watch session the checker then verifies Filter, Ordered, Unique,
//! Atomic, Bookmarkable, Reliable, Resumable, PrevKV and IsCreate (notes/jepsen.md §5.5).

mod session;
mod truth;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ANOMALIES_KEPT_PER_KIND, Anomaly, CheckResult, Validity};
use crate::history::{self, Op};
use crate::watchlog::{EventRecord, WatchRecord};

pub(crate) use truth::Truth;

/// Records the checker could not interpret. They make the verdict `unknown`, not `invalid`: they
/// point at the harness that wrote them, not at the store.
pub(crate) const MALFORMED: &str = "malformed-record";

/// Every anomaly of a run is counted, but only the first few of each kind are kept with their
/// evidence: a single lost event can make thousands of later checks fail the same way, and
/// building evidence for all of them would cost more than the check itself.
pub(crate) struct Tally {
    kept: Vec<Anomaly>,
    counts: BTreeMap<&'static str, u64>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally { kept: Vec::new(), counts: BTreeMap::new() }
    }

    /// Counts one anomaly of `kind`; `evidence` (explanation, related ops, details) is only
    /// evaluated while fewer than `ANOMALIES_KEPT_PER_KIND` of that kind are kept.
    pub(crate) fn report(&mut self, kind: &'static str, evidence: impl FnOnce() -> (String, Vec<Op>, Value)) {
        let count = self.counts.entry(kind).or_insert(0);
        *count += 1;
        if *count as usize <= ANOMALIES_KEPT_PER_KIND {
            let (explanation, ops, details) = evidence();
            self.kept.push(Anomaly { kind: kind.to_string(), explanation, ops, details });
        }
    }

    pub(crate) fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// The verdict: invalid on any real anomaly, unknown when only malformed records were found.
    pub(crate) fn finish(self, checker: &str, mut stats: Value) -> CheckResult {
        let real = self.counts.keys().any(|kind| *kind != MALFORMED);
        let valid = if real {
            Validity::Invalid
        } else if self.count(MALFORMED) > 0 {
            Validity::Unknown
        } else {
            Validity::Valid
        };
        if let Value::Object(map) = &mut stats {
            map.insert("anomaly_counts".to_string(), json!(self.counts));
        }
        CheckResult { checker: checker.to_string(), valid, anomalies: self.kept, stats }
    }
}

/// A record as JSON for evidence; serializing these plain structs cannot fail, but a report
/// should never be lost to it either.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Checks the watch logs (`watches`, in recorded order) and the writers' `history` against
/// `truth`, the committed events of the whole test in revision order.
pub fn check(history: &[Op], watches: &[WatchRecord], truth: &[EventRecord]) -> CheckResult {
    let mut tally = Tally::new();
    let (index, disorder) = Truth::new(truth);
    truth::report_disorder(truth, &disorder, &mut tally);
    truth::check_state_machine(&index, &mut tally);
    let pairs = history::pairs(history);
    let writes = truth::Writes::new(&pairs);
    writes.check_against(&index, &mut tally);

    let sessions = session::group(watches, &mut tally);
    let mut stats = session::Stats::default();
    let ctx = session::Ctx { truth: &index, writes: &writes };
    for s in &sessions {
        session::check(s, &ctx, &mut tally, &mut stats);
    }
    let stats = json!({
        "sessions": stats.sessions,
        "responses": stats.responses,
        "events_delivered": stats.events_delivered,
        "events_expected": stats.events_expected,
        "progress_notifications": stats.progress_notifications,
        "truth_events": truth.len(),
        "history_writes": writes.count(),
        "skipped_history_ops": writes.skipped(),
    });
    tally.finish("watch", stats)
}

/// Compares the ground truths read back from each member: every member applied the same log, so
/// their event sequences must be identical. Each member that differs from the first is reported
/// once, at the first differing position.
pub fn compare_truths(truths: &[(String, Vec<EventRecord>)]) -> Vec<Anomaly> {
    let Some((first_name, first)) = truths.first() else { return Vec::new() };
    let mut anomalies = Vec::new();
    for (name, events) in &truths[1..] {
        let Some(pos) = (0..first.len().max(events.len())).find(|&i| first.get(i) != events.get(i)) else {
            continue;
        };
        let (a, b) = (first.get(pos), events.get(pos));
        anomalies.push(Anomaly {
            kind: "replicas-diverge".to_string(),
            explanation: format!(
                "members {first_name} and {name} hold different event sequences ({} and {} events); first difference at position {pos}",
                first.len(),
                events.len()
            ),
            ops: Vec::new(),
            details: json!({
                "members": [first_name, name],
                "position": pos,
                "lengths": [first.len(), events.len()],
                "events": [to_json(&a), to_json(&b)],
            }),
        });
    }
    anomalies
}
