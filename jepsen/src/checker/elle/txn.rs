//! Turns raw history records into transactions: pairs each `txn` invocation with its completion,
//! parses the micro-ops (malformed ones become `malformed-op`, never a panic), and replays each
//! transaction against its own earlier reads and appends (`internal`), because everything downstream
//! trusts one transaction's reads of a key to come from one snapshot.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::report::{Anomalies, brief};
use crate::history::{Op, OpType, Process};

pub(super) type TxnId = u32;
pub(super) type KeyId = u32;

pub(super) struct Txn<'a> {
    pub invoke: &'a Op,
    /// `None` when the history ends (or the process moves on) before a completion is recorded.
    pub complete: Option<&'a Op>,
    /// `Ok`, `Fail` or `Info` (a missing completion counts as `Info`).
    pub kind: OpType,
    pub process: Process,
    pub start: u64,
    /// Completion time for `ok`; `u64::MAX` otherwise (an `info` txn may take effect any time later).
    pub end: u64,
    pub appends: Vec<(KeyId, i64)>,
    /// `ok`, or `info` with an appended element that some read observed.
    pub committed: bool,
}

impl Txn<'_> {
    /// The history index naming this txn: its completion's, or its invocation's when it has none.
    pub fn index(&self) -> u64 {
        self.complete.unwrap_or(self.invoke).index
    }

    pub fn records(&self) -> Vec<Op> {
        std::iter::once(self.invoke).chain(self.complete).cloned().collect()
    }
}

/// One read micro-op of an `ok` txn. The list stays borrowed from the history: copying every read
/// would double the memory of a history whose reads carry whole lists.
pub(super) struct Read<'a> {
    pub txn: TxnId,
    pub key: KeyId,
    pub list: &'a [Value],
    /// No append to this key precedes it in its txn: it observed the database, not the txn itself.
    pub external: bool,
    /// Agrees with the txn's earlier reads and appends of the key.
    pub consistent: bool,
}

pub(super) struct Parsed<'a> {
    /// Sorted by invocation time.
    pub txns: Vec<Txn<'a>>,
    pub reads: Vec<Read<'a>>,
    pub keys: Vec<String>,
    pub malformed: usize,
}

enum Mop<'a> {
    Read(KeyId, &'a [Value]),
    Append(KeyId, i64),
}

#[derive(Default)]
struct Keys {
    ids: HashMap<String, KeyId>,
    names: Vec<String>,
}

impl Keys {
    fn intern(&mut self, key: &Value) -> Result<KeyId, String> {
        let name = match key {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("key {other} is neither a string nor a number")),
        };
        if let Some(&id) = self.ids.get(&name) {
            return Ok(id);
        }
        let id = self.names.len() as KeyId;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        Ok(id)
    }
}

pub(super) fn parse<'a>(history: &'a [Op], out: &mut Anomalies) -> Parsed<'a> {
    let mut p = Parsed { txns: Vec::new(), reads: Vec::new(), keys: Vec::new(), malformed: 0 };
    let mut keys = Keys::default();
    for (inv, comp) in pair_up(history) {
        let (invoke, complete) = (&history[inv], comp.map(|c| &history[c]));
        if invoke.f != "txn" {
            continue;
        }
        let kind = complete.map_or(OpType::Info, |c| c.kind);
        // Only an ok completion reports reads; the others can only tell what they tried to append.
        let source = if kind == OpType::Ok { complete.unwrap_or(invoke) } else { invoke };
        let mops = match parse_mops(&source.value, kind == OpType::Ok, &mut keys) {
            Ok(mops) => mops,
            Err(why) => {
                p.malformed += 1;
                out.add("malformed-op", || {
                    let ops = std::iter::once(invoke).chain(complete).cloned().collect();
                    (format!("txn op {}: {why}", source.index), ops, Value::Null)
                });
                continue;
            }
        };
        let id = p.txns.len() as TxnId;
        let start = invoke.time;
        let end = match complete {
            Some(c) if kind == OpType::Ok => c.time.max(start),
            _ => u64::MAX,
        };
        let appends = mops.iter().filter_map(|m| if let Mop::Append(k, e) = m { Some((*k, *e)) } else { None });
        let txn = Txn {
            invoke,
            complete,
            kind,
            process: invoke.process,
            start,
            end,
            appends: appends.collect(),
            committed: kind == OpType::Ok,
        };
        p.txns.push(txn);
        if kind == OpType::Ok {
            replay(&p.txns[id as usize], id, &mops, &keys.names, &mut p.reads, out);
        }
    }
    p.keys = keys.names;
    p
}

/// Pairs client invocations with completions by record index (no copies of the records), in
/// invocation order. An invocation superseded by another on the same process, or never completed,
/// gets no completion: it is indeterminate.
fn pair_up(history: &[Op]) -> Vec<(usize, Option<usize>)> {
    let mut open: HashMap<Process, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, op) in history.iter().enumerate().filter(|(_, op)| op.is_client()) {
        if op.kind == OpType::Invoke {
            if let Some(stale) = open.insert(op.process, i) {
                out.push((stale, None));
            }
        } else if let Some(invoke) = open.remove(&op.process) {
            out.push((invoke, Some(i)));
        }
    }
    out.extend(open.into_values().map(|i| (i, None)));
    out.sort_by_key(|&(i, _)| (history[i].time, i));
    out
}

fn parse_mops<'a>(value: &'a Value, with_reads: bool, keys: &mut Keys) -> Result<Vec<Mop<'a>>, String> {
    let list = value.as_array().ok_or_else(|| format!("value {} is not a list of micro-ops", short(value)))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| parse_mop(m, with_reads, keys).map_err(|why| format!("micro-op {i} {}: {why}", short(m))))
        .collect()
}

fn parse_mop<'a>(m: &'a Value, with_reads: bool, keys: &mut Keys) -> Result<Mop<'a>, String> {
    let Some([f, key, arg]) = m.as_array().map(Vec::as_slice) else {
        return Err("not a [f, key, value] triple".to_string());
    };
    let key = keys.intern(key)?;
    match f.as_str() {
        Some("r") if !with_reads => Ok(Mop::Read(key, &[])),
        Some("r") => match arg {
            Value::Null => Ok(Mop::Read(key, &[])),
            Value::Array(xs) if xs.iter().all(|x| x.as_i64().is_some()) => Ok(Mop::Read(key, xs)),
            _ => Err("a read must return null or a list of integers".to_string()),
        },
        Some("append") => arg.as_i64().map(|e| Mop::Append(key, e)).ok_or_else(|| "append of a non-integer".into()),
        _ => Err("f must be \"r\" or \"append\"".to_string()),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 { s } else { format!("{}…", s.chars().take(80).collect::<String>()) }
}

/// What a txn has done to one key so far: the list it last read (if any) and what it appended since.
struct KeyState<'a> {
    key: KeyId,
    base: Option<&'a [Value]>,
    appended: Vec<i64>,
    appended_any: bool,
}

/// Records the reads of an ok txn, checking each against the txn's earlier ops on the same key.
fn replay<'a>(
    txn: &Txn<'a>,
    id: TxnId,
    mops: &[Mop<'a>],
    names: &[String],
    reads: &mut Vec<Read<'a>>,
    out: &mut Anomalies,
) {
    let mut states: Vec<KeyState<'a>> = Vec::new();
    for m in mops {
        let key = match m {
            Mop::Read(k, _) | Mop::Append(k, _) => *k,
        };
        let i = states.iter().position(|s| s.key == key).unwrap_or_else(|| {
            states.push(KeyState { key, base: None, appended: Vec::new(), appended_any: false });
            states.len() - 1
        });
        let st = &mut states[i];
        let list = match m {
            Mop::Append(_, e) => {
                st.appended.push(*e);
                st.appended_any = true;
                continue;
            }
            Mop::Read(_, list) => *list,
        };
        let consistent = agrees(st, list);
        if !consistent {
            let expected = match st.base {
                Some(base) => format!("{} followed by {:?}", brief(base), st.appended),
                None => format!("a list ending in {:?}", st.appended),
            };
            let why =
                format!("read key {} as {}, but its earlier ops imply {expected}", names[key as usize], brief(list));
            out.add("internal", || {
                (format!("txn op {} {why}", txn.index()), txn.records(), json!({"key": names[key as usize]}))
            });
        }
        reads.push(Read { txn: id, key, list, external: !st.appended_any, consistent });
        st.base = Some(list);
        st.appended.clear();
    }
}

/// Whether a read equals what the txn's own history on the key implies.
fn agrees(st: &KeyState, list: &[Value]) -> bool {
    let tail_ok = |tail: &[Value]| tail.iter().zip(&st.appended).all(|(v, e)| v.as_i64() == Some(*e));
    match st.base {
        Some(base) => {
            list.len() == base.len() + st.appended.len() && list[..base.len()] == *base && tail_ok(&list[base.len()..])
        }
        None => list.len() >= st.appended.len() && tail_ok(&list[list.len() - st.appended.len()..]),
    }
}
