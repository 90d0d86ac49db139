//! The list-append workload: transactions of 1–4 micro-ops (read a key's list, append a unique
//! element to a key's list) over a few keys, checked for strict serializability (Elle).
//!
//! A transaction reads every key it touches in one Txn of gets (one snapshot), computes its
//! reads and new lists, then commits with a Txn guarded on each touched key's mod_revision (0 for
//! an absent key): if any key changed since the snapshot, nothing is written and the op fails
//! definitely. Lists are stored as JSON arrays.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use serde_json::{Value, json};

use super::{StepResult, Worker, read_error, step_error};
use crate::client::Outcome;
use crate::history::{Op, OpType};

/// Key prefix of this workload.
pub const PREFIX: &str = "jepsen/append/";
/// Appends per key before the window of active keys moves on (keeps lists and reads short).
const APPENDS_PER_KEY: u64 = 64;
/// Active keys at a time.
const ACTIVE_KEYS: u64 = 4;

/// State shared by the append workers.
#[derive(Clone, Default)]
pub struct Append {
    appends: Arc<AtomicU64>,
}

impl Append {
    pub async fn worker(self, mut w: Worker) {
        while !w.time_is_up() {
            w.pace().await;
            let ops = self.generate(&mut w);
            w.perform(Op::invoke(0, "txn", None, Value::Array(ops), 0), run_txn).await;
        }
    }

    fn generate(&self, w: &mut Worker) -> Vec<Value> {
        let n = w.rng.gen_range(1..=4);
        let base = self.appends.load(Ordering::Relaxed) / (APPENDS_PER_KEY * ACTIVE_KEYS) * ACTIVE_KEYS;
        (0..n)
            .map(|_| {
                let key = format!("{PREFIX}{:05}", base + w.rng.gen_range(0..ACTIVE_KEYS));
                if w.rng.gen_bool(0.5) {
                    json!(["r", key, null])
                } else {
                    self.appends.fetch_add(1, Ordering::Relaxed);
                    json!(["append", key, w.shared.unique_value()])
                }
            })
            .collect()
    }
}

/// The keys a txn touches, in first-use order.
fn touched_keys(ops: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for op in ops {
        if let Some(k) = op[1].as_str()
            && !keys.iter().any(|x| x == k)
        {
            keys.push(k.to_string());
        }
    }
    keys
}

fn parse_list(bytes: &[u8]) -> Vec<i64> {
    serde_json::from_slice::<Vec<i64>>(bytes).unwrap_or_default()
}

pub async fn run_txn(mut client: Client, invoke: Op) -> StepResult {
    let ops = invoke.value.as_array().cloned().unwrap_or_default();
    let keys = touched_keys(&ops);
    let snapshot = client
        .txn(Txn::new().and_then(keys.iter().map(|k| TxnOp::get(k.clone(), None)).collect::<Vec<_>>()))
        .await
        .map_err(read_error)?;
    let snapshot_rev = snapshot.header().map_or(0, |h| h.revision());
    let mut lists: Vec<(Vec<i64>, i64)> = Vec::new();
    for resp in snapshot.op_responses() {
        let TxnOpResponse::Get(get) = resp else { continue };
        match get.kvs().first() {
            Some(kv) => lists.push((parse_list(kv.value()), kv.mod_revision())),
            None => lists.push((Vec::new(), 0)),
        }
    }
    if lists.len() != keys.len() {
        return Err((Outcome::Definite, "snapshot read returned the wrong number of results".into()));
    }
    let mut filled = Vec::new();
    let mut wrote = vec![false; keys.len()];
    for op in &ops {
        let key = op[1].as_str().unwrap_or_default();
        let i = keys.iter().position(|k| k == key).unwrap_or_default();
        if op[0] == "r" {
            filled.push(json!(["r", key, lists[i].0]));
        } else {
            lists[i].0.push(op[2].as_i64().unwrap_or_default());
            wrote[i] = true;
            filled.push(op.clone());
        }
    }
    if !wrote.contains(&true) {
        let done = invoke.complete(OpType::Ok, 0).with_value(Value::Array(filled)).with_hrev(snapshot_rev);
        return Ok(done);
    }
    let guards: Vec<Compare> =
        keys.iter().zip(&lists).map(|(k, (_, rev))| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)).collect();
    let puts: Vec<TxnOp> = keys
        .iter()
        .zip(&lists)
        .zip(&wrote)
        .filter(|(_, w)| **w)
        .map(|((k, (list, _)), _)| TxnOp::put(k.clone(), serde_json::to_string(list).unwrap_or_default(), None))
        .collect();
    let resp = client.txn(Txn::new().when(guards).and_then(puts)).await.map_err(step_error)?;
    let rev = resp.header().map_or(0, |h| h.revision());
    if !resp.succeeded() {
        let mut done = invoke.complete(OpType::Fail, 0).with_hrev(rev).with_succeeded(false);
        done.error = Some("conflict: a touched key changed since the snapshot read".into());
        return Ok(done);
    }
    Ok(invoke
        .complete(OpType::Ok, 0)
        .with_value(Value::Array(filled))
        .with_rev(rev)
        .with_hrev(rev)
        .with_succeeded(true))
}

/// Every key the history's txns touched, for the final reads.
pub fn keys_in(history: &[Op]) -> Vec<String> {
    let mut keys: Vec<String> = history
        .iter()
        .filter(|o| o.f == "txn" && o.kind == OpType::Invoke)
        .flat_map(|o| touched_keys(o.value.as_array().map_or(&[][..], Vec::as_slice)))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}
