//! The closed-loop driver of the request/response benchmarks: `--clients` workers pull op
//! numbers from one shared counter (so exactly `total` ops run, whatever their speeds), pace them
//! to `--rate` over all workers, and time each op into their own recorder.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::conn::describe;
use crate::progress::Progress;
use crate::report::{Recorder, Summary};

/// An op that has not answered after this long counts as an error ("timeout") and its worker
/// moves on: without it, a dead server would hang the run (etcd-client queues requests until
/// some connection is ready, forever).
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// One concurrent client of a benchmark, with whatever per-client state its op needs.
pub trait Worker: Send + 'static {
    /// Performs op number `index` (0-based, below the run's total).
    fn op(&mut self, index: u64) -> impl Future<Output = Result<(), etcd_client::Error>> + Send;
}

/// How many ops, how fast, and the bar to show them on.
pub struct Load<'a> {
    pub total: u64,
    /// Ops per second over all workers; 0 is unlimited.
    pub rate: u64,
    pub label: &'a str,
    pub progress: bool,
}

/// Runs `load.total` ops over `workers` and summarizes them. Also returns the workers (which
/// may hold resources to release, e.g. leases) and the instant the first op could start.
pub async fn drive<W: Worker>(workers: Vec<W>, load: Load<'_>) -> Result<(Summary, Vec<W>, Instant)> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = Progress::start(load.label, load.total, done.clone(), load.progress);
    let start = Instant::now();
    let pace = Pace { start: tokio::time::Instant::now(), rate: load.rate };
    let mut tasks = AbortOnDrop(
        workers
            .into_iter()
            .map(|worker| tokio::spawn(work(worker, load.total, pace, next.clone(), done.clone())))
            .collect(),
    );
    let mut recorder = Recorder::new();
    let mut workers = Vec::with_capacity(tasks.0.len());
    for task in &mut tasks.0 {
        let (worker, rec) = task.await.context("a worker task panicked")?;
        recorder.merge(&rec);
        workers.push(worker);
    }
    let elapsed = start.elapsed();
    bar.finish();
    Ok((recorder.summarize(elapsed), workers, start))
}

/// The workers' tasks, aborted when the run is dropped unfinished (e.g. `bench compare` gives
/// it up when a member dies), so no orphaned worker goes on loading the cluster.
struct AbortOnDrop<T>(Vec<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Spaces op starts evenly: op `i` may not start before `start + i / rate`.
#[derive(Clone, Copy)]
struct Pace {
    start: tokio::time::Instant,
    rate: u64,
}

impl Pace {
    async fn wait(&self, index: u64) {
        if self.rate > 0 {
            let due = self.start + Duration::from_secs_f64(index as f64 / self.rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn work<W: Worker>(
    mut worker: W,
    total: u64,
    pace: Pace,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> (W, Recorder) {
    let mut recorder = Recorder::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= total {
            break;
        }
        pace.wait(index).await;
        let began = Instant::now();
        match tokio::time::timeout(OP_TIMEOUT, worker.op(index)).await {
            Ok(Ok(())) => recorder.record(began.elapsed()),
            Ok(Err(e)) => recorder.record_error(describe(&e)),
            Err(_) => recorder.record_error(format!("timeout: no answer within {OP_TIMEOUT:?}")),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (worker, recorder)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    /// Records which op numbers ran and fails every third.
    struct Probe {
        seen: Arc<Mutex<Vec<u64>>>,
    }

    impl Worker for Probe {
        async fn op(&mut self, index: u64) -> Result<(), etcd_client::Error> {
            self.seen.lock().unwrap().push(index);
            tokio::task::yield_now().await;
            if index.is_multiple_of(3) { Err(etcd_client::Error::InvalidArgs("every third".into())) } else { Ok(()) }
        }
    }

    fn load(total: u64, rate: u64) -> Load<'static> {
        Load { total, rate, label: "test", progress: false }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_total_ops_run_once_each() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..7).map(|_| Probe { seen: seen.clone() }).collect();
        let (summary, workers, _) = drive(workers, load(1000, 0)).await.unwrap();
        assert_eq!(workers.len(), 7);
        assert_eq!(summary.total_ops, 1000);
        assert_eq!(summary.errors, 334);
        assert_eq!(summary.error_counts["invalid arguments: every third"], 334);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1000);
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), (0..1000).collect());
    }

    #[tokio::test]
    async fn rate_spaces_the_ops() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..4).map(|_| Probe { seen: seen.clone() }).collect();
        let before = Instant::now();
        let (summary, _, _) = drive(workers, load(21, 100)).await.unwrap();
        assert_eq!(summary.total_ops, 21);
        // Op 20 may not start before 20 / 100 s, though four workers could run them all at once.
        let took = before.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "{took:?}");
    }
}
