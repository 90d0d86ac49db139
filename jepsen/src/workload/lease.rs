//! The lease workload: every worker grants short leases and attaches a key to each; some leases
//! are kept alive, some revoked, some left to expire, and all lease keys are read throughout.
//! Checked: a key of a revoked or expired lease is never read afterwards, and a lease kept alive
//! never loses its key before its last renewal's TTL has run out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{ReadMode, StepResult, Worker, step_error};
use crate::client::Outcome;
use crate::history::{Op, OpType};

/// Key prefix of this workload.
pub const PREFIX: &str = "jepsen/lease/";
/// TTL asked for every lease (etcd raises it to its minimum, 1.5 election timeouts, if lower).
pub const TTL_SECS: i64 = 3;
/// Kept leases are renewed this often, well within their TTL.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(800);
/// Retry delay after a keep-alive that did not answer.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(200);
/// Leases a worker keeps alive at once.
const KEPT_PER_WORKER: usize = 2;
/// Keys remembered for random reads.
const RECENT_KEYS: usize = 64;
/// After the test: wait this long beyond the TTL before the final reads, so that every lease
/// left alone has expired.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Kept,
    Abandoned,
}

struct Lease {
    id: i64,
    fate: Fate,
    renewed: Instant,
    /// When to try the next keep-alive (after a renewal, or soon after an attempt that failed).
    next_keepalive: Instant,
}

/// Keys of every lease granted so far (for reads by any worker and the final reads).
#[derive(Clone, Default)]
pub struct LeaseKeys {
    pub keys: Arc<Mutex<Vec<String>>>,
}

impl LeaseKeys {
    fn add(&self, key: String) {
        self.keys.lock().expect("lease keys lock").push(key);
    }

    fn random_recent(&self, w: &mut Worker) -> Option<String> {
        let keys = self.keys.lock().expect("lease keys lock");
        let from = keys.len().saturating_sub(RECENT_KEYS);
        let slice = &keys[from..];
        (!slice.is_empty()).then(|| slice[w.rng.gen_range(0..slice.len())].clone())
    }

    pub fn all(&self) -> Vec<String> {
        self.keys.lock().expect("lease keys lock").clone()
    }
}

/// A worker's loop.
pub async fn worker(mut w: Worker, keys: LeaseKeys) {
    let mut leases: Vec<Lease> = Vec::new();
    while !w.time_is_up() {
        w.pace().await;
        leases.retain(|l| l.fate == Fate::Kept || l.renewed.elapsed() < Duration::from_secs(30));
        let now = Instant::now();
        if let Some(i) = leases.iter().position(|l| l.fate == Fate::Kept && l.next_keepalive <= now) {
            let done = w.perform(Op::invoke(0, "keepalive", None, json!({"lease": leases[i].id}), 0), keepalive).await;
            let alive = done.value["ttl"].as_i64().unwrap_or(0) > 0;
            match (done.kind, alive) {
                (OpType::Ok, true) => {
                    leases[i].renewed = Instant::now();
                    leases[i].next_keepalive = leases[i].renewed + KEEPALIVE_EVERY;
                }
                (OpType::Ok, false) => {
                    leases.remove(i);
                }
                _ if leases[i].renewed.elapsed() > Duration::from_secs(TTL_SECS as u64 * 10) => {
                    // Long gone whatever happened: stop spending ops on it.
                    leases.remove(i);
                }
                _ => leases[i].next_keepalive = Instant::now() + KEEPALIVE_RETRY,
            }
            continue;
        }
        let kept = leases.iter().filter(|l| l.fate == Fate::Kept).count();
        let roll = w.rng.gen_range(0..100);
        if kept < KEPT_PER_WORKER && roll < 30 {
            if let Some(lease) = grant_and_put(&mut w, &keys).await {
                leases.push(lease);
            }
        } else if roll < 36 && kept > 0 {
            let i = leases.iter().position(|l| l.fate == Fate::Kept).unwrap_or_default();
            let lease = leases.remove(i);
            w.perform(Op::invoke(0, "revoke", None, json!({"lease": lease.id}), 0), revoke).await;
        } else if let Some(key) = keys.random_recent(&mut w) {
            read_key(&mut w, &key).await;
        }
    }
}

/// Grants a lease and attaches a fresh key to it; kept alive or abandoned at random.
async fn grant_and_put(w: &mut Worker, keys: &LeaseKeys) -> Option<Lease> {
    let grant = w.perform(Op::invoke(0, "grant", None, json!({"ttl": TTL_SECS}), 0), grant).await;
    if grant.kind != OpType::Ok {
        return None;
    }
    let id = grant.value["lease"].as_i64()?;
    let key = format!("{PREFIX}{id:016x}");
    keys.add(key.clone());
    let value = w.shared.unique_value();
    let put = w.perform(Op::invoke(0, "put", Some(&key), json!({"lease": id, "value": value}), 0), put).await;
    let fate = if w.rng.gen_bool(0.7) { Fate::Kept } else { Fate::Abandoned };
    let now = Instant::now();
    (put.kind == OpType::Ok).then_some(Lease { id, fate, renewed: now, next_keepalive: now + KEEPALIVE_EVERY })
}

/// A linearizable (or serializable, per the read mode) read of one lease key.
pub async fn read_key(w: &mut Worker, key: &str) -> Op {
    let mode = w.shared.read_mode;
    w.perform(Op::invoke(0, "read", Some(key), Value::Null, 0), move |c, inv| read(c, inv, mode)).await
}

async fn grant(mut client: Client, invoke: Op) -> StepResult {
    let resp = client.lease_grant(TTL_SECS, None).await.map_err(step_error)?;
    let hrev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_value(json!({"lease": resp.id(), "ttl": resp.ttl()})).with_hrev(hrev))
}

async fn put(mut client: Client, invoke: Op) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let lease = invoke.value["lease"].as_i64().unwrap_or_default();
    let value = invoke.value["value"].as_i64().unwrap_or_default();
    let options = PutOptions::new().with_lease(lease);
    let resp = client.put(key, value.to_string(), Some(options)).await.map_err(step_error)?;
    let rev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_rev(rev).with_hrev(rev))
}

async fn keepalive(mut client: Client, invoke: Op) -> StepResult {
    let id = invoke.value["lease"].as_i64().unwrap_or_default();
    // etcd-client turns etcd's "TTL 0" answer (the lease does not exist) into this error.
    let gone =
        |e: &etcd_client::Error| matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m == "lease not found");
    let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
        Ok(pair) => pair,
        Err(e) if gone(&e) => return Ok(invoke.complete(OpType::Ok, 0).with_value(json!({"lease": id, "ttl": 0}))),
        Err(e) => return Err(step_error(e)),
    };
    keeper.keep_alive().await.map_err(step_error)?;
    let resp = stream
        .message()
        .await
        .map_err(step_error)?
        .ok_or((Outcome::Indeterminate, "keep-alive stream closed".to_string()))?;
    // No `hrev`: like etcd, the member serving the keep-alive stream fills the header from its
    // own applied state, which may lag; it is not a linearizable revision.
    Ok(invoke.complete(OpType::Ok, 0).with_value(json!({"lease": id, "ttl": resp.ttl()})))
}

async fn revoke(mut client: Client, invoke: Op) -> StepResult {
    let id = invoke.value["lease"].as_i64().unwrap_or_default();
    let resp = client.lease_revoke(id).await.map_err(step_error)?;
    let hrev = resp.header().map_or(0, |h| h.revision());
    Ok(invoke.complete(OpType::Ok, 0).with_hrev(hrev))
}

pub async fn read(client: Client, invoke: Op, mode: ReadMode) -> StepResult {
    super::read_key_step(client, invoke, mode, |kv| json!({"lease": kv.lease(), "value": super::parse_int(kv.value())}))
        .await
}
