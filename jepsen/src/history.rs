//! The operation history: Jepsen-style records (one JSON object per line in `history.jsonl`),
//! pairing of invocations with completions, and the recorder the workers share.
//!
//! Every `invoke` gets exactly one completion: `ok`, `fail` (definitely no effect) or `info`
//! (indeterminate: a timeout, a lost connection, or the end of the test). A worker whose op ended
//! `info` goes on under a new process id, since the old op may still be in flight.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who performed an op: a sequential client process, or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    Client(u64),
    Nemesis,
}

impl Serialize for Process {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(id) => s.serialize_u64(*id),
            Process::Nemesis => s.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n.as_u64().map(Process::Client).ok_or_else(|| serde::de::Error::custom("bad process")),
            Value::String(s) if s == "nemesis" => Ok(Process::Nemesis),
            other => Err(serde::de::Error::custom(format!("bad process {other}"))),
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(id) => write!(f, "{id}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

/// The record type of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One history record.
///
/// Values by workload (`f`):
/// - register: `read` value = int or null (with `rev` = the key's mod_revision, 0 if absent);
///   `write` value = int (with `rev` = the revision it created); `cas` value = `[old, new]`,
///   completed `ok` with `succeeded` true or false (false is an observation: the value was not `old`).
/// - append: `txn` value = micro-ops `[["r", key, null | [ints]], ["append", key, int]]`; the
///   completion fills in the reads; `rev` = the revision the txn committed at (or read at, when
///   read-only).
/// - watch: `put` value = int, `delete` value = null, with `rev` = the revision created.
/// - lease: `grant` value = `{"lease": id, "ttl": secs}`; `put` value = `{"lease": id, "value": int}`;
///   `keepalive` value = `{"lease": id, "ttl": remaining}`; `revoke` value = `{"lease": id}`;
///   `read` value = `{"lease": id, "value": int}` or null, `rev` = mod_revision.
/// - nemesis: `process` = "nemesis", `type` = info, `f` = `start-<fault>` / `stop-<fault>`,
///   value = the targets and details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (0-based, in record order).
    #[serde(default)]
    pub index: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Monotonic nanoseconds since the test started; one clock for every record.
    pub time: u64,
    /// Write: the revision it created; read: the key's mod_revision (0 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i64>,
    /// The response header's revision (linearizable requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hrev: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Op {
    /// A blank invocation, for building histories in code and tests.
    pub fn invoke(process: u64, f: &str, key: Option<&str>, value: Value, time: u64) -> Op {
        Op {
            index: 0,
            process: Process::Client(process),
            kind: OpType::Invoke,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            time,
            rev: None,
            hrev: None,
            succeeded: None,
            error: None,
            node: None,
        }
    }

    /// The completion of `self` (an invoke) with `kind` at `time`; value unchanged.
    pub fn complete(&self, kind: OpType, time: u64) -> Op {
        Op { kind, time, index: 0, ..self.clone() }
    }

    pub fn with_value(mut self, value: Value) -> Op {
        self.value = value;
        self
    }

    pub fn with_rev(mut self, rev: i64) -> Op {
        self.rev = Some(rev);
        self
    }

    pub fn with_hrev(mut self, hrev: i64) -> Op {
        self.hrev = Some(hrev);
        self
    }

    pub fn with_succeeded(mut self, succeeded: bool) -> Op {
        self.succeeded = Some(succeeded);
        self
    }

    pub fn is_client(&self) -> bool {
        matches!(self.process, Process::Client(_))
    }
}

/// Numbers the records 0.. in order (the `index` field).
pub fn reindex(history: &mut [Op]) {
    for (i, op) in history.iter_mut().enumerate() {
        op.index = i as u64;
    }
}

/// An invocation with its completion. A client invoke without a completion in the history is
/// paired with a synthetic `info` at `u64::MAX` (it may take effect at any later time).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub invoke: Op,
    pub complete: Op,
}

impl Pair {
    pub fn kind(&self) -> OpType {
        self.complete.kind
    }
    pub fn start(&self) -> u64 {
        self.invoke.time
    }
    /// Completion time; `u64::MAX` for `info` (the op may still take effect later).
    pub fn end(&self) -> u64 {
        if self.complete.kind == OpType::Info { u64::MAX } else { self.complete.time }
    }
}

/// Pairs every client invoke with its completion, in invocation order. Nemesis records are skipped.
pub fn pairs(history: &[Op]) -> Vec<Pair> {
    let mut open: HashMap<Process, Op> = HashMap::new();
    let mut out: Vec<(u64, Pair)> = Vec::new();
    for op in history.iter().filter(|op| op.is_client()) {
        match op.kind {
            OpType::Invoke => {
                if let Some(stale) = open.insert(op.process, op.clone()) {
                    let complete = Op { kind: OpType::Info, time: u64::MAX, ..stale.clone() };
                    out.push((stale.index, Pair { invoke: stale, complete }));
                }
            }
            _ => {
                if let Some(invoke) = open.remove(&op.process) {
                    out.push((invoke.index, Pair { invoke, complete: op.clone() }));
                }
            }
        }
    }
    for (_, invoke) in open {
        let complete = Op { kind: OpType::Info, time: u64::MAX, ..invoke.clone() };
        out.push((invoke.index, Pair { invoke, complete }));
    }
    out.sort_by_key(|(index, p)| (p.invoke.time, *index));
    out.into_iter().map(|(_, p)| p).collect()
}

/// Parses `history.jsonl`.
pub fn parse_jsonl(text: &str) -> Result<Vec<Op>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

/// The shared, append-only history of a running test. Cloning shares the same history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<Op>>>,
    origin: Instant,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder { inner: Arc::new(Mutex::new(Vec::new())), origin }
    }

    /// Nanoseconds since the test started.
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Appends `op`, stamping its index (and its time, when zero).
    pub fn record(&self, mut op: Op) -> Op {
        let mut ops = self.inner.lock().expect("history lock");
        if op.time == 0 {
            op.time = self.now();
        }
        op.index = ops.len() as u64;
        ops.push(op.clone());
        op
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("history lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.inner.lock().expect("history lock").clone()
    }
}

/// One fault window (a line of `faults.jsonl`): a nemesis action from `start` until `end`
/// (`None` while active; instantaneous faults have `end == start`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// `kill`, `pause`, `partition`, `member`, `clock`.
    pub fault: String,
    /// The variant and its parameters, e.g. `isolate-leader`, `bridge n2`, `offset -7200s`.
    pub detail: String,
    /// Member names the fault acted on.
    pub targets: Vec<String>,
    pub start: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// `installed`, `skipped` or `indeterminate` (openraft's jepsen classification).
    pub outcome: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip_through_json_lines() {
        let a = Op::invoke(3, "write", Some("r17"), json!(5), 120);
        let b = a.complete(OpType::Ok, 135).with_rev(42).with_hrev(42);
        let mut nemesis = Op::invoke(0, "start-kill", None, json!(["n1"]), 140);
        nemesis.process = Process::Nemesis;
        nemesis.kind = OpType::Info;
        let text: String = [&a, &b, &nemesis].iter().map(|op| serde_json::to_string(op).unwrap() + "\n").collect();
        assert!(text.contains(r#""process":"nemesis""#), "{text}");
        assert!(text.contains(r#""type":"ok""#), "{text}");
        let parsed = parse_jsonl(&text).unwrap();
        assert_eq!(parsed, vec![a, b, nemesis]);
    }

    #[test]
    fn an_invoke_without_completion_pairs_with_info_at_infinity() {
        let mut history = vec![
            Op::invoke(1, "write", Some("k"), json!(1), 10),
            Op::invoke(2, "read", Some("k"), json!(null), 11),
            Op::invoke(2, "read", Some("k"), json!(null), 11).complete(OpType::Ok, 20).with_value(json!(1)),
        ];
        reindex(&mut history);
        let pairs = pairs(&history);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].kind(), OpType::Info);
        assert_eq!(pairs[0].end(), u64::MAX);
        assert_eq!(pairs[1].kind(), OpType::Ok);
        assert_eq!(pairs[1].complete.value, json!(1));
    }
}
