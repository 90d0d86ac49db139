//! Per-key linearizability of the register workload. Linearizability is local, so each key is
//! checked on its own (in parallel) with Wing & Gong's search and Lowe's memoization (as Knossos
//! `wgl` and Porcupine), after sound pre-passes that reject impossible reads at once and narrow
//! down indeterminate writes: each one left open-ended roughly doubles the search, so those nobody
//! could have observed are dropped, those observed get the deadline of their first observer, and
//! those only a failed cas could have noticed get the deadline of the last failed cas.

mod search;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ANOMALIES_KEPT_PER_KIND, Anomaly, CheckResult, Validity};
use crate::history::{self, Op, OpType, Pair};
use search::{Budget, Deepest, Outcome};

/// The name this checker reports under.
pub const CHECKER: &str = "linearizable";

/// Distinct (linearized set, value) states one key may explore before it is declared `unknown`.
/// Each state costs roughly 100 bytes of memo, so this also bounds memory per worker.
pub const STATE_BUDGET_PER_KEY: u64 = 2_000_000;

/// Wall time one key may search before it is declared `unknown`.
pub const TIME_BUDGET_PER_KEY: Duration = Duration::from_secs(20);

/// Concurrent ops shown next to the op that could not be linearized.
const CONCURRENT_OPS_SHOWN: usize = 20;

/// What a register op did to, or observed of, the key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Read(Option<i64>),
    Write(i64),
    /// A cas that took effect: `ok` with `succeeded: true`, or indeterminate (if it took effect at
    /// all, it must have succeeded).
    Swap {
        old: i64,
        new: i64,
    },
    /// An `ok` cas with `succeeded: false`: at its linearization point the value was not `old`.
    NotEqual(i64),
}

impl Action {
    /// The register model: the value after the op, or `None` when the op is illegal in `state`.
    fn step(self, state: Option<i64>) -> Option<Option<i64>> {
        match self {
            Action::Read(seen) => (state == seen).then_some(state),
            Action::Write(value) => Some(Some(value)),
            Action::Swap { old, new } => (state == Some(old)).then_some(Some(new)),
            Action::NotEqual(old) => (state != Some(old)).then_some(state),
        }
    }

    fn written_value(self) -> Option<i64> {
        match self {
            Action::Write(value) | Action::Swap { new: value, .. } => Some(value),
            Action::Read(_) | Action::NotEqual(_) => None,
        }
    }

    /// The value that must have been in the register for the op to be legal.
    fn required_value(self) -> Option<i64> {
        match self {
            Action::Read(seen) => seen,
            Action::Swap { old, .. } => Some(old),
            Action::Write(_) | Action::NotEqual(_) => None,
        }
    }
}

/// One op of one key, as the search sees it.
#[derive(Clone, Copy, Debug)]
struct RegisterOp {
    action: Action,
    start: u64,
    /// For an indeterminate op, the deadline: it took effect by then or never (`u64::MAX` unless
    /// a pre-pass found an earlier one).
    end: u64,
    indeterminate: bool,
    /// Position in the `history::pairs` vector, for evidence.
    pair: usize,
}

/// The register ops of one key, and the records of that key that could not be understood.
#[derive(Default)]
struct KeyHistory {
    key: String,
    ops: Vec<RegisterOp>,
    malformed: Vec<(usize, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyVerdict {
    Valid,
    Invalid,
    Unknown,
    /// Not searched because some of its records are malformed (reported as such).
    Unchecked,
}

struct KeyResult {
    verdict: KeyVerdict,
    anomalies: Vec<Anomaly>,
    states: u64,
    ops_checked: usize,
    info_dropped: usize,
    info_pinned: usize,
    info_bounded: usize,
}

impl KeyResult {
    fn new(verdict: KeyVerdict, anomalies: Vec<Anomaly>) -> KeyResult {
        KeyResult { verdict, anomalies, states: 0, ops_checked: 0, info_dropped: 0, info_pinned: 0, info_bounded: 0 }
    }
}

/// Checks every key of the register workload (`read`, `write`, `cas` ops; all else is ignored).
pub fn check(history: &[Op]) -> CheckResult {
    check_within(history, &Budget { states: STATE_BUDGET_PER_KEY, time: TIME_BUDGET_PER_KEY })
}

fn check_within(history: &[Op], budget: &Budget) -> CheckResult {
    let pairs = history::pairs(history);
    let (keys, keyless) = group_by_key(&pairs);
    let results = check_keys_in_parallel(&keys, &pairs, budget);
    let keyless: Vec<Anomaly> = keyless.iter().map(|(pair, why)| malformed(&pairs[*pair], why)).collect();
    summarize(&keys, results, keyless)
}

/// Splits the register ops by key; a register op without a key is returned apart (malformed).
fn group_by_key(pairs: &[Pair]) -> (Vec<KeyHistory>, Vec<(usize, String)>) {
    let mut keys: BTreeMap<String, KeyHistory> = BTreeMap::new();
    let mut keyless = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let parsed = match parse(pair, index) {
            Ok(None) => continue,
            Ok(Some(op)) => Ok(op),
            Err(why) => Err(why),
        };
        let Some(key) = &pair.invoke.key else {
            keyless.push((index, parsed.err().unwrap_or_else(|| "register op without a key".to_string())));
            continue;
        };
        let entry = keys.entry(key.clone()).or_insert_with(|| KeyHistory { key: key.clone(), ..KeyHistory::default() });
        match parsed {
            Ok(op) => entry.ops.push(op),
            Err(why) => entry.malformed.push((index, why)),
        }
    }
    (keys.into_values().collect(), keyless)
}

/// The register op a pair stands for: `None` for other workloads and for ops that certainly had
/// no effect (`fail`) or observed nothing usable (indeterminate reads).
fn parse(pair: &Pair, index: usize) -> Result<Option<RegisterOp>, String> {
    let indeterminate = pair.kind() == OpType::Info;
    let action = match (pair.invoke.f.as_str(), pair.kind()) {
        ("read" | "write" | "cas", OpType::Fail) | ("read", OpType::Info) => return Ok(None),
        ("read", _) => match &pair.complete.value {
            Value::Null => Action::Read(None),
            value => Action::Read(Some(value.as_i64().ok_or_else(|| format!("read returned {value}, not an int"))?)),
        },
        ("write", _) => {
            let value = &pair.invoke.value;
            Action::Write(value.as_i64().ok_or_else(|| format!("write of {value}, not an int"))?)
        }
        ("cas", _) => cas_action(pair, indeterminate)?,
        _ => return Ok(None),
    };
    if !indeterminate && pair.complete.time < pair.invoke.time {
        return Err(format!("completed at {} before its invocation at {}", pair.complete.time, pair.invoke.time));
    }
    Ok(Some(RegisterOp { action, start: pair.start(), end: pair.end(), indeterminate, pair: index }))
}

fn cas_action(pair: &Pair, indeterminate: bool) -> Result<Action, String> {
    let value = &pair.invoke.value;
    let (old, new) = match value.as_array().map(Vec::as_slice) {
        Some([old, new]) => match (old.as_i64(), new.as_i64()) {
            (Some(old), Some(new)) => (old, new),
            _ => return Err(format!("cas of {value}, not [old, new] ints")),
        },
        _ => return Err(format!("cas of {value}, not [old, new]")),
    };
    match (indeterminate, pair.complete.succeeded) {
        (true, _) | (false, Some(true)) => Ok(Action::Swap { old, new }),
        (false, Some(false)) => Ok(Action::NotEqual(old)),
        (false, None) => Err("ok cas without `succeeded`".to_string()),
    }
}

/// Runs `check_key` over all keys on `available_parallelism` threads, biggest keys first so one
/// large key does not start last. Results come back in `keys` order.
fn check_keys_in_parallel(keys: &[KeyHistory], pairs: &[Pair], budget: &Budget) -> Vec<KeyResult> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(keys[k].ops.len()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(keys.len());
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, KeyResult)>> = Mutex::new(Vec::with_capacity(keys.len()));
    let work = || {
        while let Some(&k) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let result = check_key(&keys[k], pairs, budget);
            done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((k, result));
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
            // Joined here so a panicking worker (a bug) costs only its key, not the whole check.
            handles.into_iter().for_each(|handle| drop(handle.join()));
        });
    }
    let mut done = done.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    done.sort_by_key(|(k, _)| *k);
    let mut results = done.into_iter().peekable();
    // A key whose worker died (a bug, not an input problem) is reported as undecided.
    (0..keys.len())
        .map(|k| match results.next_if(|(done_k, _)| *done_k == k) {
            Some((_, result)) => result,
            None => KeyResult::new(KeyVerdict::Unknown, Vec::new()),
        })
        .collect()
}

fn check_key(key: &KeyHistory, pairs: &[Pair], budget: &Budget) -> KeyResult {
    if !key.malformed.is_empty() {
        let anomalies = key.malformed.iter().map(|(pair, why)| malformed(&pairs[*pair], why)).collect();
        return KeyResult::new(KeyVerdict::Unchecked, anomalies);
    }
    let reduced = reduce(&key.ops);
    let ops_checked = reduced.kept.len();
    let info_dropped = key.ops.len() - ops_checked;
    if !reduced.impossible.is_empty() {
        let anomalies = reduced.impossible.iter().map(|&op| impossible_read(&key.key, &key.ops[op], pairs)).collect();
        return KeyResult { ops_checked, info_dropped, ..KeyResult::new(KeyVerdict::Invalid, anomalies) };
    }
    let mut ops: Vec<RegisterOp> = reduced.kept.iter().map(|&op| key.ops[op]).collect();
    let info_pinned = pin_observed_indeterminate_writes(&mut ops);
    let info_bounded = bound_unobserved_indeterminate_writes(&mut ops);
    let search = search::search(&ops, budget);
    let (verdict, anomalies) = match search.outcome {
        Outcome::Linearizable => (KeyVerdict::Valid, Vec::new()),
        Outcome::OutOfBudget => (KeyVerdict::Unknown, Vec::new()),
        Outcome::NotLinearizable(deepest) => {
            (KeyVerdict::Invalid, vec![nonlinearizable(&key.key, &ops, &deepest, pairs)])
        }
    };
    KeyResult { verdict, anomalies, states: search.states, ops_checked, info_dropped, info_pinned, info_bounded }
}

/// What the pre-passes leave for the search: `kept` ops (indices into the key's ops) and any
/// `impossible` observations, which decide the key without a search.
struct Reduced {
    kept: Vec<usize>,
    impossible: Vec<usize>,
}

/// Sound reductions before the search:
/// - an indeterminate cas whose `old` no op writes can never have taken effect;
/// - an indeterminate write or cas whose value no read or cas requires may be assumed never to
///   have happened, *unless* a failed cas could have been linearized after it (its different
///   value may be what made that cas fail);
/// - an `ok` read (or successful cas) requiring a value that no op invoked before it completed
///   writes is impossible whatever the order.
fn reduce(ops: &[RegisterOp]) -> Reduced {
    let mut keep = vec![true; ops.len()];
    loop {
        let kept = || ops.iter().enumerate().filter(|(i, _)| keep[*i]).map(|(_, op)| op);
        let first_writes = earliest_writes(kept());
        let required: HashSet<i64> = kept().filter_map(|op| op.action.required_value()).collect();
        let last_failed_cas_end = kept().filter(|op| matches!(op.action, Action::NotEqual(_))).map(|op| op.end).max();
        let droppable: Vec<usize> = (0..ops.len())
            .filter(|&i| keep[i] && ops[i].indeterminate)
            .filter(|&i| {
                let op = &ops[i];
                let cannot_succeed = matches!(op.action, Action::Swap { old, .. } if !first_writes.contains_key(&old));
                let unobservable = op.action.written_value().is_some_and(|value| !required.contains(&value))
                    && last_failed_cas_end.is_none_or(|end| end < op.start);
                cannot_succeed || unobservable
            })
            .collect();
        if droppable.is_empty() {
            break;
        }
        droppable.into_iter().for_each(|i| keep[i] = false);
    }
    let kept: Vec<usize> = (0..ops.len()).filter(|&i| keep[i]).collect();
    let first_writes = earliest_writes(kept.iter().map(|&i| &ops[i]));
    let impossible = kept
        .iter()
        .copied()
        .filter(|&i| !ops[i].indeterminate)
        .filter(|&i| {
            let op = &ops[i];
            op.action.required_value().is_some_and(|value| first_writes.get(&value).is_none_or(|&at| at > op.end))
        })
        .collect();
    Reduced { kept, impossible }
}

/// An indeterminate op that alone writes a value some determinate op requires must have taken
/// effect before that op completed: it becomes determinate with the earliest such deadline, which
/// spares the search from trying it at every later point. Runs after the impossible-read check
/// (which guarantees each deadline is not before the op's invocation). Returns how many it pinned.
fn pin_observed_indeterminate_writes(ops: &mut [RegisterOp]) -> usize {
    let mut writers: HashMap<i64, (usize, usize)> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(value) = op.action.written_value() {
            writers.entry(value).or_insert((0, i)).0 += 1;
        }
    }
    let mut deadlines: BTreeMap<usize, u64> = BTreeMap::new();
    for op in ops.iter().filter(|op| !op.indeterminate) {
        let sole_writer = op.action.required_value().and_then(|value| writers.get(&value));
        if let Some(&(1, writer)) = sole_writer
            && ops[writer].indeterminate
        {
            let deadline = deadlines.entry(writer).or_insert(op.end);
            *deadline = (*deadline).min(op.end);
        }
    }
    let mut pinned = 0;
    for (writer, deadline) in deadlines {
        if deadline >= ops[writer].start {
            ops[writer].end = deadline;
            ops[writer].indeterminate = false;
            pinned += 1;
        }
    }
    pinned
}

/// An indeterminate write or cas whose value nothing requires survives `reduce` only because a
/// failed cas might have needed the value to be different; once the last failed cas has
/// completed it can no longer matter. It gets that deadline (linearized by then, or never), so
/// the search stops carrying it to the end of the history. Returns how many it bounded.
fn bound_unobserved_indeterminate_writes(ops: &mut [RegisterOp]) -> usize {
    let required: HashSet<i64> = ops.iter().filter_map(|op| op.action.required_value()).collect();
    let failed_cas_ends = ops.iter().filter(|op| matches!(op.action, Action::NotEqual(_))).map(|op| op.end);
    let Some(last_failed_cas_end) = failed_cas_ends.max() else { return 0 };
    let mut bounded = 0;
    for op in ops.iter_mut().filter(|op| op.indeterminate && op.start <= last_failed_cas_end) {
        if op.action.written_value().is_some_and(|value| !required.contains(&value)) {
            op.end = last_failed_cas_end;
            bounded += 1;
        }
    }
    bounded
}

/// For each value written, the earliest invocation of an op writing it.
fn earliest_writes<'a>(ops: impl Iterator<Item = &'a RegisterOp>) -> HashMap<i64, u64> {
    let mut first: HashMap<i64, u64> = HashMap::new();
    for op in ops {
        if let Some(value) = op.action.written_value() {
            let at = first.entry(value).or_insert(op.start);
            *at = (*at).min(op.start);
        }
    }
    first
}

/// Both records of a pair, so the evidence shows the op's interval and its outcome.
fn records(pair: &Pair) -> [Op; 2] {
    [pair.invoke.clone(), pair.complete.clone()]
}

fn malformed(pair: &Pair, why: &str) -> Anomaly {
    Anomaly {
        kind: "malformed-op".to_string(),
        explanation: format!("{} op at index {} cannot be checked: {why}", pair.invoke.f, pair.invoke.index),
        ops: records(pair).to_vec(),
        details: json!({ "key": pair.invoke.key }),
    }
}

fn impossible_read(key: &str, op: &RegisterOp, pairs: &[Pair]) -> Anomaly {
    let pair = &pairs[op.pair];
    let value = op.action.required_value();
    let explanation = format!(
        "{} at index {} on key {key} requires value {} there, which no write or cas of the key invoked \
         before it completed could have written",
        pair.invoke.f,
        pair.invoke.index,
        json!(value),
    );
    Anomaly {
        kind: "impossible-read".to_string(),
        explanation: explanation.clone(),
        ops: records(pair).to_vec(),
        details: json!({ "key": key, "value": value, "explanation": explanation }),
    }
}

fn nonlinearizable(key: &str, ops: &[RegisterOp], deepest: &Deepest, pairs: &[Pair]) -> Anomaly {
    let blocked = &ops[deepest.blocked];
    let blocked_pair = &pairs[blocked.pair];
    let concurrent = ops
        .iter()
        .enumerate()
        .filter(|(i, op)| *i != deepest.blocked && op.start <= blocked.end && blocked.start <= op.end)
        .take(CONCURRENT_OPS_SHOWN);
    let mut evidence = records(blocked_pair).to_vec();
    evidence.extend(concurrent.flat_map(|(_, op)| records(&pairs[op.pair])));
    let linearized: Vec<u64> = deepest.linearized.iter().map(|&op| pairs[ops[op].pair].invoke.index).collect();
    let explanation = format!(
        "key {key}: {} at index {} cannot be linearized; the deepest partial linearization orders {} of \
         the key's {} ops and leaves the value at {}, and no order of the ops concurrent with it makes it legal",
        blocked_pair.invoke.f,
        blocked_pair.invoke.index,
        linearized.len(),
        ops.len(),
        json!(deepest.state),
    );
    Anomaly {
        kind: "nonlinearizable".to_string(),
        explanation: explanation.clone(),
        ops: evidence,
        details: json!({
            "key": key,
            "op": blocked_pair.invoke.index,
            "linearized": linearized,
            "state": deepest.state,
            "explanation": explanation,
        }),
    }
}

fn summarize(keys: &[KeyHistory], results: Vec<KeyResult>, keyless: Vec<Anomaly>) -> CheckResult {
    let count = |verdict| results.iter().filter(|r| r.verdict == verdict).count();
    let unknown_keys: Vec<&str> = keys
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.verdict == KeyVerdict::Unknown)
        .map(|(k, _)| k.key.as_str())
        .take(ANOMALIES_KEPT_PER_KIND)
        .collect();
    let mut stats = json!({
        "keys": keys.len(),
        "keys_valid": count(KeyVerdict::Valid),
        "keys_invalid": count(KeyVerdict::Invalid),
        "keys_unknown": count(KeyVerdict::Unknown),
        "keys_unchecked": count(KeyVerdict::Unchecked),
        "unknown_keys": unknown_keys,
        "ops_checked": results.iter().map(|r| r.ops_checked).sum::<usize>(),
        "info_ops_dropped": results.iter().map(|r| r.info_dropped).sum::<usize>(),
        "info_ops_pinned": results.iter().map(|r| r.info_pinned).sum::<usize>(),
        "info_ops_bounded": results.iter().map(|r| r.info_bounded).sum::<usize>(),
        "max_states_explored": results.iter().map(|r| r.states).max().unwrap_or(0),
        "states_explored": results.iter().map(|r| r.states).sum::<u64>(),
    });
    let undecided = results.iter().any(|r| r.verdict == KeyVerdict::Unknown);
    let all = keyless.into_iter().chain(results.into_iter().flat_map(|r| r.anomalies));
    let (anomalies, counts) = keep_some_per_kind(all);
    stats["anomaly_counts"] = json!(counts);
    let valid = match (anomalies.is_empty(), undecided) {
        (false, _) => Validity::Invalid,
        (true, true) => Validity::Unknown,
        (true, false) => Validity::Valid,
    };
    CheckResult { checker: CHECKER.to_string(), valid, anomalies, stats }
}

/// Keeps the first `ANOMALIES_KEPT_PER_KIND` anomalies of each kind and counts them all.
fn keep_some_per_kind(all: impl Iterator<Item = Anomaly>) -> (Vec<Anomaly>, BTreeMap<String, usize>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept = Vec::new();
    for anomaly in all {
        let seen = counts.entry(anomaly.kind.clone()).or_insert(0);
        *seen += 1;
        if *seen <= ANOMALIES_KEPT_PER_KIND {
            kept.push(anomaly);
        }
    }
    (kept, counts)
}
