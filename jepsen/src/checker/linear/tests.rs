//! Proof that the linearizability checker can fail: known-bad and known-good fixtures, a
//! brute-force oracle cross-check on small random histories, and a simulated register whose
//! histories must pass until one read is made stale. The simulator is shared with the revision
//! checker's tests.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::search::Budget;
use super::{check, check_within};
use crate::checker::{ANOMALIES_KEPT_PER_KIND, CheckResult, Validity};
use crate::history::{self, Op, OpType, Process};

/// One op as its two records: `[invoke, completion]`.
pub(crate) type Records = [Op; 2];

fn op(process: u64, f: &str, invoke_value: Value, start: u64, end: u64) -> Records {
    let invoke = Op::invoke(process, f, Some("k"), invoke_value, start);
    let complete = invoke.complete(OpType::Ok, end);
    [invoke, complete]
}

fn write(process: u64, value: i64, start: u64, end: u64) -> Records {
    op(process, "write", json!(value), start, end)
}

fn read(process: u64, value: Option<i64>, start: u64, end: u64) -> Records {
    let [invoke, complete] = op(process, "read", Value::Null, start, end);
    [invoke, complete.with_value(json!(value))]
}

fn cas(process: u64, old: i64, new: i64, succeeded: bool, start: u64, end: u64) -> Records {
    let [invoke, complete] = op(process, "cas", json!([old, new]), start, end);
    [invoke, complete.with_succeeded(succeeded)]
}

/// The op timed out: its completion is `info` (the recorder writes no value then).
fn crashed([invoke, mut complete]: Records) -> Records {
    complete.kind = OpType::Info;
    complete.value = Value::Null;
    [invoke, complete]
}

fn failed([invoke, mut complete]: Records) -> Records {
    complete.kind = OpType::Fail;
    [invoke, complete]
}

fn on_key(key: &str, mut records: Records) -> Records {
    for record in &mut records {
        record.key = Some(key.to_string());
    }
    records
}

/// Records in time order (a process's invoke stays before its completion), indexed.
pub(crate) fn history(ops: impl IntoIterator<Item = Records>) -> Vec<Op> {
    let mut records: Vec<Op> = ops.into_iter().flatten().collect();
    records.sort_by_key(|op| op.time);
    history::reindex(&mut records);
    records
}

fn checked(ops: impl IntoIterator<Item = Records>) -> CheckResult {
    check(&history(ops))
}

#[track_caller]
fn assert_invalid(result: &CheckResult, kind: &str) {
    assert_eq!(result.valid, Validity::Invalid, "{result:#?}");
    assert!(result.anomalies.iter().any(|a| a.kind == kind), "expected {kind}: {result:#?}");
}

#[track_caller]
fn assert_valid(result: &CheckResult) {
    assert_eq!(result.valid, Validity::Valid, "{result:#?}");
    assert!(result.anomalies.is_empty());
}

#[test]
fn stale_read_after_a_completed_write_is_nonlinearizable() {
    let result = checked([write(1, 1, 0, 10), write(2, 2, 20, 30), read(3, Some(1), 40, 50)]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn lost_acknowledged_write_is_nonlinearizable() {
    let result = checked([
        write(1, 1, 0, 10),
        write(2, 2, 20, 30),
        read(3, Some(1), 40, 50),
        read(4, Some(1), 60, 70),
        read(3, Some(1), 80, 90),
    ]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn read_of_a_never_written_value_is_impossible() {
    let result = checked([write(1, 1, 0, 10), read(2, Some(7), 20, 30)]);
    assert_invalid(&result, "impossible-read");
    let result = checked([read(2, Some(7), 0, 10)]);
    assert_invalid(&result, "impossible-read");
}

#[test]
fn read_of_a_value_written_only_later_is_impossible() {
    let result = checked([read(2, Some(1), 0, 10), write(1, 1, 20, 30)]);
    assert_invalid(&result, "impossible-read");
}

#[test]
fn cas_succeeding_on_a_mismatched_value_is_nonlinearizable() {
    // The value is 2 once the second write completes, yet cas(1 -> 3) claims it saw 1.
    let result = checked([write(1, 1, 0, 10), write(2, 2, 20, 30), cas(3, 1, 3, true, 40, 50)]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn cas_succeeding_on_a_value_never_written_is_impossible() {
    let result = checked([write(1, 1, 0, 10), cas(3, 9, 3, true, 40, 50)]);
    assert_invalid(&result, "impossible-read");
}

#[test]
fn writes_ordered_against_real_time_are_nonlinearizable() {
    // Write 1 finished before write 2 began, yet the reads see 2 and then 1.
    let result = checked([write(1, 1, 0, 10), write(2, 2, 20, 30), read(3, Some(2), 25, 40), read(3, Some(1), 41, 50)]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn failed_cas_when_the_value_did_equal_old_is_nonlinearizable() {
    let result = checked([write(1, 1, 0, 10), cas(2, 1, 5, false, 20, 30)]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn concurrent_writes_with_a_read_seeing_either_are_valid() {
    for seen in [1, 2] {
        assert_valid(&checked([write(1, 1, 0, 20), write(2, 2, 5, 25), read(3, Some(seen), 30, 40)]));
    }
    // A read overlapping both may also see the value from before them.
    assert_valid(&checked([write(1, 1, 0, 20), write(2, 2, 5, 25), read(3, None, 3, 40)]));
}

#[test]
fn info_write_seen_later_is_valid() {
    let result = checked([
        write(1, 1, 0, 10),
        crashed(write(2, 2, 20, 30)),
        read(3, Some(1), 100, 110),
        read(3, Some(2), 200, 210),
        read(4, Some(2), 300, 310),
    ]);
    assert_valid(&result);
    // The first read of 2 bounds when the write took effect.
    assert_eq!(result.stats["info_ops_pinned"], 1, "{:#}", result.stats);
    // Seen, then overwritten, then seen again: the write took effect once.
    let result = checked([
        crashed(write(2, 2, 20, 30)),
        read(3, Some(2), 100, 110),
        write(1, 1, 120, 130),
        read(3, Some(2), 200, 210),
    ]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn info_write_never_seen_is_valid() {
    let result = checked([write(1, 1, 0, 10), crashed(write(2, 2, 20, 30)), read(3, Some(1), 100, 110)]);
    assert_valid(&result);
    assert_eq!(result.stats["info_ops_dropped"], 1, "{:#}", result.stats);
}

#[test]
fn info_write_cannot_take_effect_before_its_invocation() {
    let result = checked([write(1, 1, 0, 10), read(3, Some(2), 12, 18), crashed(write(2, 2, 20, 30))]);
    assert_invalid(&result, "impossible-read");
}

#[test]
fn info_cas_takes_effect_only_by_succeeding() {
    // cas(5 -> 6) could only have succeeded on a 5 nobody wrote, so 6 cannot appear.
    let result = checked([write(1, 1, 0, 10), crashed(cas(2, 5, 6, true, 20, 30)), read(3, Some(6), 40, 50)]);
    assert_invalid(&result, "impossible-read");
    // cas(1 -> 6) could have.
    let result = checked([write(1, 1, 0, 10), crashed(cas(2, 1, 6, true, 20, 30)), read(3, Some(6), 40, 50)]);
    assert_valid(&result);
}

#[test]
fn cas_failing_legitimately_is_valid() {
    let result = checked([write(1, 1, 0, 10), cas(2, 7, 8, false, 20, 30), read(3, Some(1), 40, 50)]);
    assert_valid(&result);
    let result = checked([write(1, 1, 0, 10), cas(2, 1, 8, true, 20, 30), cas(3, 1, 9, false, 40, 50)]);
    assert_valid(&result);
}

#[test]
fn unseen_info_write_may_explain_a_failed_cas() {
    // Only the indeterminate write of 2 explains why cas(1 -> 3) failed; it must not be dropped
    // just because no read returned 2.
    let result = checked([
        write(1, 1, 0, 1),
        crashed(write(2, 2, 2, 3)),
        cas(3, 1, 3, false, 4, 5),
        write(4, 5, 6, 7),
        read(5, Some(5), 8, 9),
    ]);
    assert_valid(&result);
    assert_eq!(result.stats["info_ops_bounded"], 1, "{:#}", result.stats);
    // But then it happened, and a later read cannot see 1 again.
    let result =
        checked([write(1, 1, 0, 1), crashed(write(2, 2, 2, 3)), cas(3, 1, 3, false, 4, 5), read(5, Some(1), 8, 9)]);
    assert_invalid(&result, "nonlinearizable");
}

#[test]
fn failed_ops_info_reads_other_workloads_and_nemesis_records_are_ignored() {
    let mut nemesis = Op::invoke(0, "start-kill", None, json!(["n1"]), 15);
    nemesis.process = Process::Nemesis;
    nemesis.kind = OpType::Info;
    let mut ops = history([
        write(1, 1, 0, 10),
        failed(write(2, 2, 20, 30)),
        crashed(read(3, Some(9), 20, 30)),
        read(4, Some(1), 40, 50),
        [
            Op::invoke(5, "txn", None, json!([["append", "x", 1]]), 1),
            Op::invoke(5, "txn", None, json!([["append", "x", 1]]), 1).complete(OpType::Ok, 2),
        ],
        op(6, "put", json!({"lease": 3, "value": 4}), 3, 4),
    ]);
    ops.push(nemesis);
    history::reindex(&mut ops);
    let result = check(&ops);
    assert_valid(&result);
    assert_eq!(result.stats["keys"], 1);
    assert_eq!(result.stats["ops_checked"], 2);
}

#[test]
fn malformed_records_are_reported_not_panicked_on() {
    let bad_values = [
        read(1, Some(1), 0, 1).map(|r| if r.kind == OpType::Ok { r.with_value(json!("one")) } else { r }),
        op(2, "write", json!([1]), 2, 3),
        op(3, "cas", json!(5), 4, 5),
        op(3, "cas", json!([1, "x"]), 6, 7),
        op(4, "cas", json!([1, 2]), 8, 9),
    ];
    for records in bad_values {
        let result = checked([records.clone()]);
        assert_invalid(&result, "malformed-op");
        assert_eq!(result.stats["keys_unchecked"], 1, "{records:?}");
    }
    // Completed before it was invoked (records kept in this order: sorting by time would unpair them).
    let mut backwards = write(5, 1, 10, 5).to_vec();
    history::reindex(&mut backwards);
    assert_invalid(&check(&backwards), "malformed-op");
    let mut keyless = write(6, 1, 0, 1);
    keyless.iter_mut().for_each(|r| r.key = None);
    assert_invalid(&checked([keyless]), "malformed-op");
}

#[test]
fn failure_reports_the_deepest_partial_linearization_and_concurrent_ops() {
    let ops = history([
        write(1, 1, 0, 10),
        write(2, 2, 20, 30),
        read(4, Some(2), 22, 35),
        read(3, Some(1), 40, 50),
        write(5, 3, 45, 60),
    ]);
    let result = check(&ops);
    assert_invalid(&result, "nonlinearizable");
    let anomaly = &result.anomalies[0];
    let stale_read = ops.iter().find(|op| op.process == Process::Client(3)).map(|op| op.index);
    assert_eq!(anomaly.details["key"], "k");
    assert_eq!(anomaly.details["op"], json!(stale_read));
    // Furthest: writes 1 and 2, the read of 2, then the write of 3, after which 1 is unreachable.
    assert_eq!(anomaly.details["linearized"].as_array().map(Vec::len), Some(4), "{:#}", anomaly.details);
    assert_eq!(anomaly.details["state"], 3);
    assert!(anomaly.details["explanation"].as_str().is_some_and(|s| s.contains("cannot be linearized")));
    // The stale read and the write of 3 overlapping it.
    assert_eq!(anomaly.ops.len(), 4, "{:#?}", anomaly.ops);
    assert!(anomaly.ops.iter().any(|op| op.f == "write" && op.value == json!(3)));
}

#[test]
fn anomalies_are_capped_per_kind_and_counted() {
    let keys = ANOMALIES_KEPT_PER_KIND + 4;
    let ops = (0..keys).flat_map(|k| {
        let (key, p) = (format!("r{k}"), 10 * k as u64);
        [write(p + 1, 1, 0, 10), write(p + 2, 2, 20, 30), read(p + 3, Some(1), 40, 50)].map(|r| on_key(&key, r))
    });
    let result = checked(ops);
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(result.anomalies.len(), ANOMALIES_KEPT_PER_KIND);
    assert_eq!(result.stats["anomaly_counts"]["nonlinearizable"], keys);
    assert_eq!(result.stats["keys_invalid"], keys);
}

#[test]
fn exhausted_budget_makes_the_key_unknown() {
    let ops = (0..20)
        .flat_map(|i| [write(1, i, 100 * i as u64, 100 * i as u64 + 50), read(100 + i as u64, Some(i), 0, 3000)]);
    let tiny = Budget { states: 5, time: std::time::Duration::from_secs(20) };
    let result = check_within(&history(ops.clone()), &tiny);
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert_eq!(result.stats["keys_unknown"], 1);
    assert_valid(&checked(ops));
}

/// A planned register op, independent of the checker's own representation.
#[derive(Clone, Copy, Debug)]
enum Planned {
    Read(Option<i64>),
    Write(i64),
    Cas { old: i64, new: i64, succeeded: bool },
}

#[derive(Clone, Copy, Debug)]
struct SmallOp {
    planned: Planned,
    start: u64,
    end: u64,
    outcome: OpType,
}

impl SmallOp {
    fn records(&self, process: u64) -> Records {
        let records = match self.planned {
            Planned::Read(value) => read(process, value, self.start, self.end),
            Planned::Write(value) => write(process, value, self.start, self.end),
            Planned::Cas { old, new, succeeded } => cas(process, old, new, succeeded, self.start, self.end),
        };
        match self.outcome {
            OpType::Info => crashed(records),
            OpType::Fail => failed(records),
            _ => records,
        }
    }

    /// The register after the op, or `None` when the op cannot happen in `state`.
    fn apply(&self, state: Option<i64>) -> Option<Option<i64>> {
        match self.planned {
            Planned::Read(value) => (state == value).then_some(state),
            Planned::Write(value) => Some(Some(value)),
            Planned::Cas { old, new, succeeded } if succeeded || self.outcome == OpType::Info => {
                (state == Some(old)).then_some(Some(new))
            }
            Planned::Cas { old, .. } => (state != Some(old)).then_some(state),
        }
    }
}

/// Tries every order of the ops that respects real time, with each indeterminate op either
/// placed somewhere or left out.
fn oracle_says_linearizable(ops: &[SmallOp]) -> bool {
    let live: Vec<SmallOp> = ops
        .iter()
        .filter(|op| {
            op.outcome == OpType::Ok || (op.outcome == OpType::Info && !matches!(op.planned, Planned::Read(_)))
        })
        .copied()
        .collect();
    fn extend(live: &[SmallOp], done: u32, state: Option<i64>) -> bool {
        let pending = |i: usize| done & (1 << i) == 0;
        if (0..live.len()).all(|i| !pending(i) || live[i].outcome == OpType::Info) {
            return true;
        }
        (0..live.len()).filter(|&i| pending(i)).any(|i| {
            let must_wait =
                (0..live.len()).any(|j| pending(j) && live[j].outcome == OpType::Ok && live[j].end < live[i].start);
            !must_wait && live[i].apply(state).is_some_and(|next| extend(live, done | (1 << i), next))
        })
    }
    extend(&live, 0, None)
}

fn random_small_history(rng: &mut StdRng) -> Vec<SmallOp> {
    let mut next_value = 1;
    let mut fresh = || {
        next_value += 1;
        next_value - 1
    };
    (0..rng.gen_range(1..=7))
        .map(|_| {
            let start = rng.gen_range(0..20);
            let planned = match rng.gen_range(0..3) {
                0 => Planned::Read([None, Some(1), Some(2), Some(3)][rng.gen_range(0..4)]),
                1 => Planned::Write(fresh()),
                _ => Planned::Cas { old: rng.gen_range(1..=3), new: fresh(), succeeded: rng.gen_bool(0.5) },
            };
            let outcome = [OpType::Ok, OpType::Ok, OpType::Ok, OpType::Ok, OpType::Ok, OpType::Info, OpType::Fail]
                [rng.gen_range(0..7)];
            SmallOp { planned, start, end: start + rng.gen_range(0..8), outcome }
        })
        .collect()
}

#[test]
fn search_agrees_with_a_brute_force_oracle_on_small_histories() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0f14);
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..4000 {
        let ops = random_small_history(&mut rng);
        let records = ops.iter().zip(1..).map(|(op, process)| op.records(process));
        let result = checked(records);
        let expected = oracle_says_linearizable(&ops);
        assert_ne!(result.valid, Validity::Unknown);
        assert_eq!(result.valid == Validity::Valid, expected, "oracle says {expected} for {ops:#?}\n{result:#?}");
        if expected { valid += 1 } else { invalid += 1 }
    }
    assert!(valid > 400 && invalid > 400, "{valid} valid, {invalid} invalid: both verdicts must be exercised");
}

/// Shape of a simulated register test.
pub(crate) struct Simulation {
    pub keys: usize,
    pub clients_per_key: usize,
    pub ops_per_client: usize,
    /// Chance an op ends `info` (it takes effect or not, each half the time).
    pub info_rate: f64,
    /// Chance an op ends `fail` (no effect).
    pub fail_rate: f64,
    pub seed: u64,
}

/// An op being simulated: its records, and when (if ever) it takes effect.
struct SimOp {
    records: Records,
    effect_at: Option<u64>,
}

/// A history from a real (atomic) register store with concurrent clients: each op takes effect
/// at a random point inside its interval (a crashed op at any later point, or never), in one
/// global order that also numbers the revisions, as etcd would. Always linearizable.
pub(crate) fn simulate(sim: &Simulation) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(sim.seed);
    let mut next_process = 1;
    let mut next_value = 1;
    let mut ops: Vec<SimOp> = Vec::new();
    for key in 0..sim.keys {
        let key = format!("r{key}");
        let first = ops.len();
        for _ in 0..sim.clients_per_key {
            plan_client(sim, &key, &mut rng, &mut next_process, &mut next_value, &mut ops);
        }
        choose_cas_olds(&mut ops[first..], &mut rng);
    }
    run_store(&mut ops);
    let mut records: Vec<Op> = ops.into_iter().flat_map(|op| op.records).collect();
    for at in [1_000, 5_000] {
        let mut nemesis = Op::invoke(0, "start-partition", None, json!({"isolated": ["n1"]}), at);
        nemesis.process = Process::Nemesis;
        nemesis.kind = OpType::Info;
        records.push(nemesis);
    }
    records.sort_by_key(|op| op.time);
    history::reindex(&mut records);
    records
}

fn plan_client(
    sim: &Simulation,
    key: &str,
    rng: &mut StdRng,
    next_process: &mut u64,
    next_value: &mut i64,
    ops: &mut Vec<SimOp>,
) {
    let mut process = *next_process;
    *next_process += 1;
    let mut now = rng.gen_range(0..20);
    for _ in 0..sim.ops_per_client {
        let start = now + rng.gen_range(1..20);
        let end = start + rng.gen_range(1..60);
        now = end;
        let (f, value) = match rng.gen_range(0..10) {
            0..5 => ("read", Value::Null),
            5..8 => ("write", json!(*next_value)),
            _ => ("cas", json!([0, *next_value])),
        };
        *next_value += 1;
        let invoke = Op::invoke(process, f, Some(key), value, start);
        let roll: f64 = rng.r#gen();
        let (kind, effect_at) = if roll < sim.info_rate {
            (OpType::Info, rng.gen_bool(0.5).then(|| rng.gen_range(start..=end + 200)))
        } else if roll < sim.info_rate + sim.fail_rate {
            (OpType::Fail, None)
        } else {
            (OpType::Ok, Some(rng.gen_range(start..=end)))
        };
        if kind == OpType::Info {
            // The old op may still be in flight; the worker goes on as a new process.
            process = *next_process;
            *next_process += 1;
        }
        let complete = invoke.complete(kind, end);
        ops.push(SimOp { records: [invoke, complete], effect_at });
    }
}

/// Makes cas ops compare against values recently written to their key, so many succeed.
fn choose_cas_olds(ops: &mut [SimOp], rng: &mut StdRng) {
    let mut writes: Vec<(u64, i64)> = ops
        .iter()
        .filter(|op| op.records[0].f == "write")
        .filter_map(|op| Some((op.records[0].time, op.records[0].value.as_i64()?)))
        .collect();
    writes.sort_unstable();
    for op in ops.iter_mut().filter(|op| op.records[0].f == "cas") {
        let start = op.records[0].time;
        let earlier = writes.partition_point(|&(at, _)| at < start);
        let old = if earlier == 0 { 0 } else { writes[earlier - rng.gen_range(1..=earlier.min(3))].1 };
        let new = op.records[0].value[1].clone();
        for record in &mut op.records {
            record.value = json!([old, new]);
        }
    }
}

/// Applies the ops in effect order to one store, filling in what each ok completion observed.
fn run_store(ops: &mut [SimOp]) {
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].effect_at.is_some()).collect();
    order.sort_by_key(|&i| (ops[i].effect_at, i));
    let mut revision = 1;
    let mut keys: std::collections::HashMap<String, (Option<i64>, i64)> = Default::default();
    for i in order {
        let [invoke, complete] = &mut ops[i].records;
        let (value, mod_revision) = keys.entry(invoke.key.clone().unwrap_or_default()).or_insert((None, 0));
        let writes = match invoke.f.as_str() {
            "write" => Some(invoke.value.as_i64()),
            "cas" => (*value == invoke.value[0].as_i64()).then(|| invoke.value[1].as_i64()),
            _ => None,
        };
        if let Some(new) = writes {
            revision += 1;
            (*value, *mod_revision) = (new, revision);
        }
        if complete.kind != OpType::Ok {
            continue;
        }
        complete.rev = Some(*mod_revision);
        complete.hrev = Some(revision);
        match invoke.f.as_str() {
            "read" => complete.value = json!(*value),
            "cas" => complete.succeeded = Some(writes.is_some()),
            _ => {}
        }
    }
}

/// Turns one ok read into a definitely stale one: it returns the value of a write W1 although
/// another write W2 began after W1 completed and completed before the read began. Returns the
/// read's completion index.
pub(crate) fn make_one_read_stale(history: &mut [Op], rng: &mut StdRng) -> Option<u64> {
    let pairs = history::pairs(history);
    let ok: Vec<&history::Pair> = pairs.iter().filter(|p| p.kind() == OpType::Ok).collect();
    let writes: Vec<&history::Pair> = ok.iter().copied().filter(|p| p.invoke.f == "write").collect();
    let overwrites: Vec<&history::Pair> = ok
        .iter()
        .copied()
        .filter(|p| p.invoke.f == "write" || (p.invoke.f == "cas" && p.complete.succeeded == Some(true)))
        .collect();
    let mut reads: Vec<&history::Pair> = ok.iter().copied().filter(|p| p.invoke.f == "read").collect();
    reads.shuffle(rng);
    for r in reads {
        let stale = overwrites
            .iter()
            .filter(|w2| w2.invoke.key == r.invoke.key && w2.end() < r.start())
            .find_map(|w2| writes.iter().find(|w1| w1.invoke.key == r.invoke.key && w1.end() < w2.start()))
            .map(|w1| w1.invoke.value.clone());
        if let Some(stale) = stale {
            let at = r.complete.index;
            history[at as usize].value = stale;
            return Some(at);
        }
    }
    None
}

fn small_simulation(seed: u64) -> Simulation {
    Simulation { keys: 4, clients_per_key: 5, ops_per_client: 12, info_rate: 0.08, fail_rate: 0.05, seed }
}

#[test]
fn simulated_register_histories_are_valid_until_a_read_goes_stale() {
    let mut rng = StdRng::seed_from_u64(7);
    for seed in 0..40 {
        let mut ops = simulate(&small_simulation(seed));
        let result = check(&ops);
        assert_valid(&result);
        assert!(result.stats["ops_checked"].as_u64().is_some_and(|n| n > 150), "{:#}", result.stats);
        let Some(mutated) = make_one_read_stale(&mut ops, &mut rng) else { panic!("seed {seed}: nothing to mutate") };
        let result = check(&ops);
        assert_invalid(&result, "nonlinearizable");
        assert_eq!(result.stats["keys_invalid"], 1, "read {mutated}: {result:#?}");
    }
}

#[test]
fn twenty_thousand_simulated_ops_check_valid() {
    let sim =
        Simulation { keys: 100, clients_per_key: 10, ops_per_client: 20, info_rate: 0.03, fail_rate: 0.02, seed: 1 };
    let ops = simulate(&sim);
    let started = std::time::Instant::now();
    let result = check(&ops);
    eprintln!("checked {} records in {:?}: {:#}", ops.len(), started.elapsed(), result.stats);
    assert_valid(&result);
    assert_eq!(result.stats["keys"], 100);
}
