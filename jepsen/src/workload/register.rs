//! The register workload: reads, writes and compare-and-sets on many independent keys, each
//! written value unique, so every key's history can be checked for linearizability on its own.
//!
//! Keys rotate (Jepsen's `--ops-per-key`): a shared counter moves a small window of active keys
//! forward, so each key sees a few hundred ops from a handful of concurrent processes, which
//! keeps the per-key linearizability search small.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use serde_json::{Value, json};

use super::{ReadMode, Shared, StepResult, Worker, parse_int, read_key_step, step_error};
use crate::history::{Op, OpType};

/// Ops on a key before the window moves on.
const OPS_PER_KEY: u64 = 200;
/// An indeterminate op counts as this many ops towards moving the window: every `info` write is
/// concurrent with everything after it, so a key that collects many (a majority down) makes the
/// linearizability search explode; moving on keeps each key checkable.
const INFO_WEIGHT: u64 = 25;
/// Key prefix of this workload.
pub const PREFIX: &str = "jepsen/register/";

/// State shared by the register workers.
#[derive(Clone, Default)]
pub struct Register {
    ops: Arc<AtomicU64>,
    /// The last value seen per key, so that compare-and-sets often compare with the right value.
    last_seen: Arc<Mutex<HashMap<String, i64>>>,
}

impl Register {
    /// The key for the next op: the window of active keys advances every `OPS_PER_KEY` ops.
    fn pick_key(&self, w: &mut Worker) -> String {
        let window = (w.shared.concurrency as u64).div_ceil(5).max(1);
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let base = n / (OPS_PER_KEY * window) * window;
        format!("{PREFIX}{:06}", base + w.rng.gen_range(0..window))
    }

    fn remember(&self, key: &str, value: Option<i64>) {
        let mut seen = self.last_seen.lock().expect("register lock");
        match value {
            Some(v) => seen.insert(key.to_string(), v),
            None => seen.remove(key),
        };
    }

    fn last(&self, key: &str) -> Option<i64> {
        self.last_seen.lock().expect("register lock").get(key).copied()
    }

    /// One worker's loop.
    pub async fn worker(self, mut w: Worker) {
        while !w.time_is_up() {
            w.pace().await;
            let key = self.pick_key(&mut w);
            let roll = w.rng.gen_range(0..100);
            let done = if roll < 50 {
                let mode = w.shared.read_mode;
                w.perform(Op::invoke(0, "read", Some(&key), Value::Null, 0), move |c, inv| read(c, inv, mode)).await
            } else if roll < 75 || self.last(&key).is_none() {
                let value = w.shared.unique_value();
                w.perform(Op::invoke(0, "write", Some(&key), json!(value), 0), write).await
            } else {
                let old = self.last(&key).unwrap_or_default();
                let new = w.shared.unique_value();
                w.perform(Op::invoke(0, "cas", Some(&key), json!([old, new]), 0), cas).await
            };
            self.observe(&done);
        }
    }

    fn observe(&self, done: &Op) {
        let Some(key) = &done.key else { return };
        if done.kind == OpType::Info {
            self.ops.fetch_add(INFO_WEIGHT, Ordering::Relaxed);
        }
        if done.kind != OpType::Ok {
            return;
        }
        match done.f.as_str() {
            "read" => self.remember(key, done.value.as_i64()),
            "write" => self.remember(key, done.value.as_i64()),
            "cas" if done.succeeded == Some(true) => self.remember(key, done.value[1].as_i64()),
            _ => {}
        }
    }
}

async fn read(client: etcd_client::Client, invoke: Op, mode: ReadMode) -> StepResult {
    read_key_step(client, invoke, mode, |kv| parse_int(kv.value()).map_or(Value::Null, Value::from)).await
}

async fn write(mut client: etcd_client::Client, invoke: Op) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let value = invoke.value.as_i64().unwrap_or_default();
    let resp = client.put(key, value.to_string(), None).await.map_err(step_error)?;
    let rev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_rev(rev).with_hrev(rev))
}

async fn cas(mut client: etcd_client::Client, invoke: Op) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let old = invoke.value[0].as_i64().unwrap_or_default();
    let new = invoke.value[1].as_i64().unwrap_or_default();
    let txn = Txn::new().when([Compare::value(key.clone(), CompareOp::Equal, old.to_string())]).and_then([TxnOp::put(
        key,
        new.to_string(),
        None,
    )]);
    let resp = client.txn(txn).await.map_err(step_error)?;
    let hrev = resp.header().map_or(0, |h| h.revision());
    let mut done = invoke.complete(OpType::Ok, 0).with_succeeded(resp.succeeded()).with_hrev(hrev);
    if resp.succeeded() {
        done.rev = Some(hrev);
    }
    Ok(done)
}

/// The register workload needs no final phase: every key's history stands on its own.
pub fn shared_state(_shared: &Shared) -> Register {
    Register::default()
}
