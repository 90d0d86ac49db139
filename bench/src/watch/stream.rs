//! One watch stream of a watch run: creates its watchers (pipelined, timing each create), then
//! counts every event each watcher receives against what it should receive, timing each from
//! its put's send (stamped in the value) to its receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{WatchClient, WatchOptions, WatchRequestSender, WatchResponse};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::STAMP_BYTES;
use crate::conn::describe;
use crate::report::Recorder;

/// Create requests sent on one stream and not yet answered. Bounds the queue of their send
/// times and paces the sender to the server (etcd-client buffers 100 requests per stream).
const CREATES_IN_FLIGHT_MAX: usize = 64;

/// What one watcher watches and how many events it should get.
#[derive(Clone, Debug)]
pub struct WatcherSpec {
    pub key: Vec<u8>,
    pub prefix: bool,
    pub expected: u64,
}

/// State shared by the streams of a run and the phase that waits for them.
pub struct Shared {
    /// The clock of the put stamps: a value carries its send time as nanoseconds since this.
    pub origin: Instant,
    /// Watchers created so far (progress of the creation phase).
    pub created: Arc<AtomicU64>,
    /// Expected events received so far (progress of the delivery phase).
    pub delivered: Arc<AtomicU64>,
}

/// What a stream saw, merged into the report.
#[derive(Default)]
pub struct StreamOutcome {
    pub create: Recorder,
    pub delivery: Recorder,
    pub delivered: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub last_event: Option<Instant>,
    pub error: Option<String>,
}

/// The stream's watchers: their expectations and what each has received.
struct Tally {
    specs: Vec<WatcherSpec>,
    received: Vec<u64>,
    /// Watch id → watcher index; a stream's creates are answered in request order.
    slots: HashMap<i64, usize>,
    /// Expected events not yet received by the created watchers.
    remaining: u64,
    out: StreamOutcome,
    /// Whether the creation phase has been told this stream is ready (or failed).
    announced: bool,
}

/// Runs one stream until each of its watchers has every expected event, the stream fails, or
/// `stop` turns true. Sends `ready` once: Ok when all watchers are created, else the error.
pub async fn run(
    mut client: WatchClient,
    specs: Vec<WatcherSpec>,
    prev_kv: bool,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> StreamOutcome {
    let (times_tx, mut times_rx) = mpsc::channel::<Instant>(CREATES_IN_FLIGHT_MAX);
    let mut tally = Tally::new(specs.clone());
    let first = &specs[0];
    // The first create opens the stream; the rest go through its request sender.
    let _ = times_tx.try_send(Instant::now());
    let opened = tokio::select! {
        opened = client.watch(first.key.clone(), Some(options(first, prev_kv))) => opened,
        _ = stop.changed() => return tally.failed(&ready, "stopped before the stream opened".into()).await,
    };
    let (sender, mut responses) = match opened {
        Ok(stream) => stream.split(),
        Err(e) => return tally.failed(&ready, format!("cannot open a watch stream: {}", describe(&e))).await,
    };
    // Keeping the sender alive keeps the stream open: etcd ends a stream whose requests end.
    let sending = tokio::spawn(send_creates(sender, specs[1..].to_vec(), prev_kv, times_tx));
    loop {
        let message = tokio::select! {
            message = responses.message() => message,
            _ = stop.changed() => break,
        };
        let problem = match message {
            Ok(Some(response)) => tally.take(response, &shared, &mut times_rx),
            Ok(None) => Some("watch stream closed by the server".to_string()),
            Err(e) => Some(describe(&e)),
        };
        if let Some(problem) = problem {
            tally.fail(problem);
            break;
        }
        tally.announce_if_ready(&ready).await;
        if tally.announced && tally.all_created() && tally.remaining == 0 {
            break;
        }
    }
    finish(sending, tally, &ready).await
}

async fn finish(
    sending: JoinHandle<Result<WatchRequestSender, String>>,
    mut tally: Tally,
    ready: &mpsc::Sender<Result<(), String>>,
) -> StreamOutcome {
    if !tally.all_created() {
        sending.abort();
        if let Ok(Err(e)) = sending.await {
            tally.fail(e);
        }
    }
    if !tally.announced {
        let error = tally.out.error.clone().unwrap_or_else(|| "stopped before every watcher was created".into());
        let _ = ready.send(Err(error)).await;
    }
    tally.into_outcome()
}

fn options(spec: &WatcherSpec, prev_kv: bool) -> WatchOptions {
    let mut options = WatchOptions::new();
    if spec.prefix {
        options = options.with_prefix();
    }
    if prev_kv {
        options = options.with_prev_key();
    }
    options
}

/// Sends the stream's remaining creates, each stamped as it leaves, at most
/// `CREATES_IN_FLIGHT_MAX` unanswered. Returns the sender, which must outlive the stream.
async fn send_creates(
    mut sender: WatchRequestSender,
    specs: Vec<WatcherSpec>,
    prev_kv: bool,
    times: mpsc::Sender<Instant>,
) -> Result<WatchRequestSender, String> {
    for spec in specs {
        let permit = times.reserve().await.map_err(|_| "the stream ended during creation".to_string())?;
        permit.send(Instant::now());
        sender.watch(spec.key.clone(), Some(options(&spec, prev_kv))).await.map_err(|e| describe(&e))?;
    }
    Ok(sender)
}

impl Tally {
    fn new(specs: Vec<WatcherSpec>) -> Self {
        let n = specs.len();
        Tally {
            specs,
            received: vec![0; n],
            slots: HashMap::with_capacity(n),
            remaining: 0,
            out: StreamOutcome::default(),
            announced: false,
        }
    }

    fn all_created(&self) -> bool {
        self.slots.len() == self.specs.len()
    }

    /// Accounts for one response; returns a problem that ends the stream.
    fn take(
        &mut self,
        response: WatchResponse,
        shared: &Shared,
        times: &mut mpsc::Receiver<Instant>,
    ) -> Option<String> {
        if response.created() && !response.canceled() {
            if let Ok(sent) = times.try_recv() {
                self.out.create.record(sent.elapsed());
            }
            let slot = self.slots.len();
            if slot >= self.specs.len() {
                return Some(format!("unrequested watcher {} created", response.watch_id()));
            }
            self.slots.insert(response.watch_id(), slot);
            self.remaining += self.specs[slot].expected;
            shared.created.fetch_add(1, Ordering::Relaxed);
        }
        if response.canceled() {
            return Some(format!("watch {} canceled: {}", response.watch_id(), response.cancel_reason()));
        }
        if !response.events().is_empty() {
            self.count_events(&response, shared);
        }
        None
    }

    fn count_events(&mut self, response: &WatchResponse, shared: &Shared) {
        let now = Instant::now();
        let Some(&slot) = self.slots.get(&response.watch_id()) else {
            self.out.unexpected += response.events().len() as u64;
            return;
        };
        for event in response.events() {
            self.received[slot] += 1;
            if self.received[slot] > self.specs[slot].expected {
                self.out.unexpected += 1;
                continue;
            }
            self.remaining -= 1;
            self.out.delivered += 1;
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            match event.kv().and_then(|kv| stamp(kv.value())) {
                Some(sent) => self.out.delivery.record(now.duration_since(shared.origin).saturating_sub(sent)),
                None => self.out.delivery.record_error("event value without a send stamp".into()),
            }
        }
        self.out.last_event = Some(now);
    }

    async fn announce_if_ready(&mut self, ready: &mpsc::Sender<Result<(), String>>) {
        if !self.announced && self.all_created() {
            self.announced = true;
            let _ = ready.send(Ok(())).await;
        }
    }

    fn fail(&mut self, problem: String) {
        self.out.error.get_or_insert(problem);
    }

    async fn failed(mut self, ready: &mpsc::Sender<Result<(), String>>, problem: String) -> StreamOutcome {
        self.fail(problem.clone());
        self.announced = true;
        let _ = ready.send(Err(problem)).await;
        self.into_outcome()
    }

    /// Missing: what each watcher still lacked, every expected event of an uncreated one.
    fn into_outcome(mut self) -> StreamOutcome {
        self.out.missing =
            self.specs.iter().zip(&self.received).map(|(spec, &got)| spec.expected.saturating_sub(got)).sum();
        self.out
    }
}

/// The send time a put stamped into its value's first `STAMP_BYTES`.
fn stamp(value: &[u8]) -> Option<Duration> {
    let bytes: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(bytes)))
}

/// A value of `size` bytes (at least `STAMP_BYTES`) stamped with `since_origin`.
pub fn stamped_value(since_origin: Duration, size: usize) -> Vec<u8> {
    let nanos = u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX);
    let mut value = vec![b'v'; size.max(STAMP_BYTES)];
    value[..STAMP_BYTES].copy_from_slice(&nanos.to_le_bytes());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_values() {
        let t = Duration::from_nanos(1_234_567_890_123);
        let value = stamped_value(t, 32);
        assert_eq!(value.len(), 32);
        assert_eq!(stamp(&value), Some(t));
        assert_eq!(stamped_value(t, 3).len(), STAMP_BYTES);
        assert_eq!(stamp(b"short"), None);
    }

    #[test]
    fn missing_counts_each_watchers_shortfall() {
        let spec = |expected| WatcherSpec { key: b"k".to_vec(), prefix: false, expected };
        let mut tally = Tally::new(vec![spec(3), spec(2), spec(4)]);
        tally.received = vec![3, 5, 1];
        let out = tally.into_outcome();
        // Watcher 1's surplus does not make up for watcher 2's shortfall.
        assert_eq!(out.missing, 3);
    }
}
