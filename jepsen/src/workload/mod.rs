//! Workloads: the client side of a test. Each worker is a sequential Jepsen "process" bound to one
//! member; it records every op's invocation and completion in the shared history, and moves to a
//! new process id (and possibly another member) after an indeterminate outcome.

pub mod append;
pub mod lease;
pub mod register;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{self, Outcome};
use crate::history::{Op, OpType, Recorder};
use crate::watchlog::WatchRecord;

/// The workloads the runner knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Register,
    Append,
    Watch,
    Lease,
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Linearizable reads (etcd's default): through the leader's read index.
    Linearizable,
    /// Serializable reads from the member's local state: allowed to be stale, so the register
    /// checker must find them non-linearizable under partitions.
    Serializable,
}

/// Everything a worker shares with the others.
#[derive(Clone)]
pub struct Shared {
    pub recorder: Recorder,
    pub endpoints: Vec<String>,
    pub request_timeout: Duration,
    pub read_mode: ReadMode,
    /// Workers start no op after this instant.
    pub deadline: Instant,
    pub concurrency: usize,
    /// Target total rate; each worker waits `concurrency / rate` on average between ops.
    pub rate: f64,
    pub seed: u64,
    /// Source of unique written values.
    pub next_value: Arc<AtomicU64>,
    /// Watch logs (watch workload).
    pub watch_log: Arc<std::sync::Mutex<Vec<WatchRecord>>>,
}

impl Shared {
    pub fn unique_value(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::Relaxed) as i64 + 1
    }

    pub fn log_watch(&self, record: WatchRecord) {
        self.watch_log.lock().expect("watch log lock").push(record);
    }
}

/// One worker: a sequential process id, its member and its client.
pub struct Worker {
    pub shared: Shared,
    pub id: usize,
    pub process: u64,
    pub rng: StdRng,
    node: usize,
    client: Option<Client>,
    /// Long-lived streams (watches): the client gets no per-request deadline, which would also
    /// bound the stream; the caller bounds what it waits for instead.
    pub streaming: bool,
}

/// The completion a workload step produced (`ok` or `fail`), or an indeterminate error.
pub type StepResult = Result<Op, (Outcome, String)>;

impl Worker {
    pub fn new(shared: Shared, id: usize) -> Worker {
        let mut rng = StdRng::seed_from_u64(shared.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id as u64);
        let node = rng.gen_range(0..shared.endpoints.len());
        Worker { process: id as u64, shared, id, rng, node, client: None, streaming: false }
    }

    pub fn node_name(&self) -> String {
        self.shared.endpoints[self.node].clone()
    }

    pub fn time_is_up(&self) -> bool {
        Instant::now() >= self.shared.deadline
    }

    /// Waits between ops so the workers together issue about `rate` ops/s.
    pub async fn pace(&mut self) {
        if self.shared.rate <= 0.0 {
            return;
        }
        let mean = self.shared.concurrency as f64 / self.shared.rate;
        let wait = self.rng.gen_range(0.0..2.0 * mean);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }

    /// The worker's client, connecting (to its member) when needed. `None` when the member does
    /// not accept connections; the worker then tries another member next time.
    pub async fn client(&mut self) -> Option<Client> {
        if self.client.is_none() {
            let endpoint = self.shared.endpoints[self.node].clone();
            let timeout = if self.streaming { None } else { Some(self.shared.request_timeout) };
            match client::connect(&endpoint, timeout).await {
                Ok(c) => self.client = Some(c),
                Err(_) => {
                    self.reconnect_elsewhere();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return None;
                }
            }
        }
        self.client.clone()
    }

    /// Drops the client and picks a random member for the next connection.
    pub fn reconnect_elsewhere(&mut self) {
        self.node = self.rng.gen_range(0..self.shared.endpoints.len());
        self.client = None;
    }

    /// Records `invoke`, runs `step`, records its completion and returns it. After an
    /// indeterminate outcome the worker continues as a new process on a random member.
    pub async fn perform<F, Fut>(&mut self, mut invoke: Op, step: F) -> Op
    where
        F: FnOnce(Client, Op) -> Fut,
        Fut: Future<Output = StepResult>,
    {
        let Some(client) = self.client().await else {
            // Nothing was sent: no op is recorded.
            return Op { kind: OpType::Fail, ..invoke };
        };
        invoke.process = crate::history::Process::Client(self.process);
        invoke.node = Some(self.node_name());
        invoke.time = 0;
        let invoke = self.shared.recorder.record(invoke);
        let result = step(client, invoke.clone()).await;
        let completion = match result {
            Ok(mut done) => {
                done.time = 0;
                done.process = invoke.process;
                done
            }
            Err((outcome, error)) => {
                let kind = if outcome == Outcome::Definite { OpType::Fail } else { OpType::Info };
                Op { kind, time: 0, error: Some(error), ..invoke.clone() }
            }
        };
        let completion = self.shared.recorder.record(completion);
        if completion.kind == OpType::Info {
            self.process += self.shared.concurrency as u64;
            self.reconnect_elsewhere();
        }
        completion
    }
}

/// Runs `body` on `concurrency` workers until the deadline.
pub async fn run_workers<F, Fut>(shared: Shared, body: F)
where
    F: Fn(Worker) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = Vec::new();
    for id in 0..shared.concurrency {
        tasks.push(tokio::spawn(body(Worker::new(shared.clone(), id))));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Reads a key's value as an integer (the workloads only write decimal integers).
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// A single-key read in `mode`: the op's value is `to_value(kv)` (null when absent), `rev` the
/// key's mod_revision (0 when absent), and `hrev` the header revision for linearizable reads only.
pub async fn read_key_step(
    mut client: Client,
    invoke: Op,
    mode: ReadMode,
    to_value: impl Fn(&etcd_client::KeyValue) -> serde_json::Value,
) -> StepResult {
    let key = invoke.key.clone().unwrap_or_default();
    let options = (mode == ReadMode::Serializable).then(|| etcd_client::GetOptions::new().with_serializable());
    let resp = client.get(key, options).await.map_err(read_error)?;
    let (value, rev) = match resp.kvs().first() {
        Some(kv) => (to_value(kv), kv.mod_revision()),
        None => (serde_json::Value::Null, 0),
    };
    let mut done = invoke.complete(OpType::Ok, 0).with_value(value).with_rev(rev);
    if mode == ReadMode::Linearizable {
        done.hrev = resp.header().map(|h| h.revision());
    }
    Ok(done)
}

/// Maps an etcd-client error into a step error.
pub fn step_error(e: etcd_client::Error) -> (Outcome, String) {
    (client::classify(&e), client::describe(&e))
}

/// Maps a read's error: a read has no effect, so it always fails definitely.
pub fn read_error(e: etcd_client::Error) -> (Outcome, String) {
    (Outcome::Definite, client::describe(&e))
}

/// Runs `kind`'s workers until the deadline.
pub async fn run(kind: WorkloadKind, shared: Shared) {
    match kind {
        WorkloadKind::Register => {
            let state = register::Register::default();
            run_workers(shared, move |w| state.clone().worker(w)).await;
        }
        WorkloadKind::Append => {
            let state = append::Append::default();
            run_workers(shared, move |w| state.clone().worker(w)).await;
        }
        WorkloadKind::Lease => {
            let keys = lease::LeaseKeys::default();
            run_workers(shared, move |w| lease::worker(w, keys.clone())).await;
        }
        WorkloadKind::Watch => {
            let writers = watch_writers(shared.concurrency);
            run_workers(shared, move |mut w| async move {
                if w.id < writers {
                    watch::writer(w).await;
                } else {
                    w.streaming = true;
                    let state = watch::Watcher { id: w.id as u64, session: 0, last_rev: 0 };
                    watch::watcher(w, state, None).await;
                }
            })
            .await;
        }
    }
}

/// Half the watch workload's workers write, the others watch.
fn watch_writers(concurrency: usize) -> usize {
    (concurrency / 2).max(1)
}

/// The workload's phase after the faults are healed: final reads (append, lease) or the
/// watchers' catch-up to the final revision (watch).
pub async fn final_phase(kind: WorkloadKind, shared: &Shared, mut finisher: Worker) -> anyhow::Result<()> {
    let history = shared.recorder.snapshot();
    match kind {
        WorkloadKind::Register => Ok(()),
        WorkloadKind::Append => {
            for key in append::keys_in(&history) {
                let read = Op::invoke(0, "txn", None, serde_json::json!([["r", key, null]]), 0);
                finisher.perform_until_ok(read, append::run_txn).await?;
            }
            Ok(())
        }
        WorkloadKind::Lease => {
            tokio::time::sleep(Duration::from_secs(lease::TTL_SECS as u64) + lease::EXPIRY_SLACK).await;
            let keys: std::collections::BTreeSet<String> =
                history.iter().filter(|o| o.f == "put").filter_map(|o| o.key.clone()).collect();
            let mode = shared.read_mode;
            for key in keys {
                let read = Op::invoke(0, "read", Some(&key), serde_json::Value::Null, 0);
                finisher.perform_until_ok(read, move |c, op| lease::read(c, op, mode)).await?;
            }
            Ok(())
        }
        WorkloadKind::Watch => {
            let read = Op::invoke(0, "read", Some(watch::PREFIX), serde_json::Value::Null, 0);
            let target = finisher.perform_until_ok(read, watch::final_revision).await?.hrev.unwrap_or(0);
            let log = shared.watch_log.lock().expect("watch log").clone();
            let mut tasks = Vec::new();
            for id in watch_writers(shared.concurrency)..shared.concurrency {
                let mut w = Worker::new(shared.clone(), id);
                w.streaming = true;
                let state = watch::resume_state(&log, id as u64);
                tasks.push(tokio::spawn(watch::watcher(w, state, Some(target))));
            }
            for task in tasks {
                let state = task.await?;
                anyhow::ensure!(
                    state.last_rev >= target,
                    "watcher {} did not catch up to revision {target} (at {}) within {:?}",
                    state.id,
                    state.last_rev,
                    watch::CATCH_UP_TIMEOUT
                );
            }
            Ok(())
        }
    }
}

/// How many times a final-phase op is retried until it completes `ok`.
const FINAL_OP_ATTEMPTS: usize = 50;

impl Worker {
    /// Runs an op until it completes `ok` (final phase: the cluster is healed by then).
    pub async fn perform_until_ok<F, Fut>(&mut self, invoke: Op, step: F) -> anyhow::Result<Op>
    where
        F: Fn(Client, Op) -> Fut,
        Fut: Future<Output = StepResult>,
    {
        for _ in 0..FINAL_OP_ATTEMPTS {
            let done = self.perform(invoke.clone(), &step).await;
            if done.kind == OpType::Ok {
                return Ok(done);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("final-phase {} on {:?} did not succeed in {FINAL_OP_ATTEMPTS} attempts", invoke.f, invoke.key)
    }
}
