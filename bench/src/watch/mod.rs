//! `watch` and `watch-latency`: many watchers (streams × watchers per stream) on a few keys or
//! one prefix, then puts to those keys. Three phases, three measurements: watch creation, the
//! puts, and the delivery of every put to every watcher that should see it.

mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::KvClient;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::conn::Pool;
use crate::drive::{self, Load, Worker};
use crate::keys;
use crate::opts::{ENTRY_BYTES_MAX, WatchLatencyOpts, WatchOpts};
use crate::progress::Progress;
use crate::report::{Recorder, Summary, WatchStats};
use stream::{Shared, StreamOutcome, WatcherSpec, stamped_value};

/// Bytes of a put's value that carry its send time (nanoseconds since the run's origin, LE).
pub const STAMP_BYTES: usize = 8;
/// Shortest random tag in the watched keys: keeps concurrent runs' keys apart.
const TAG_BYTES_MIN: usize = 4;
/// How often a phase wait looks at the progress counters.
const CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Watched keys are `tag` + the key's index in decimal, zero-padded: `key_size` must hold the
/// widest index and a tag of `TAG_BYTES_MIN`.
pub fn check_key_size(key_size: usize, keys: usize) -> Result<()> {
    let min = digits(keys.saturating_sub(1)) + TAG_BYTES_MIN;
    if key_size < min || key_size > ENTRY_BYTES_MAX {
        bail!("--key-size must be in [{min}, {ENTRY_BYTES_MAX}] for {keys} watched keys, got {key_size}");
    }
    Ok(())
}

fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The shape of a watch run, from either subcommand's options.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub streams: usize,
    pub per_stream: usize,
    /// Distinct keys; watcher g watches key g mod keys (or, with `prefix`, the common prefix).
    pub keys: usize,
    pub prefix: bool,
    pub put_total: u64,
    pub put_rate: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub prev_kv: bool,
    /// Give up on creation or delivery after this long without progress.
    pub idle_timeout: Duration,
}

impl From<&WatchOpts> for Plan {
    fn from(o: &WatchOpts) -> Self {
        Plan {
            streams: o.streams,
            per_stream: o.watch_per_stream,
            keys: o.watched_key_total,
            prefix: o.prefix,
            put_total: o.put_total,
            put_rate: o.put_rate,
            key_size: o.key_size,
            val_size: o.val_size,
            prev_kv: false,
            idle_timeout: o.idle_timeout,
        }
    }
}

impl From<&WatchLatencyOpts> for Plan {
    fn from(o: &WatchLatencyOpts) -> Self {
        Plan {
            streams: o.streams,
            per_stream: o.watchers_per_stream,
            keys: 1,
            prefix: false,
            put_total: o.put_total,
            put_rate: o.put_rate,
            key_size: o.key_size,
            val_size: o.val_size,
            prev_kv: o.prevkv,
            idle_timeout: o.idle_timeout,
        }
    }
}

impl Plan {
    pub fn watchers(&self) -> u64 {
        (self.streams * self.per_stream) as u64
    }

    /// Puts to key `k`: put j goes to key j mod keys.
    fn puts_to_key(&self, k: usize) -> u64 {
        let keys = self.keys as u64;
        self.put_total / keys + u64::from((k as u64) < self.put_total % keys)
    }

    /// Events watcher `g` should receive.
    pub fn expected_for(&self, g: usize) -> u64 {
        if self.prefix { self.put_total } else { self.puts_to_key(g % self.keys) }
    }

    pub fn events_expected(&self) -> u64 {
        (0..self.streams * self.per_stream).map(|g| self.expected_for(g)).sum()
    }
}

/// The run's keys: a random tag (the prefix) followed by each key's padded index.
struct Layout {
    tag: Vec<u8>,
    keys: Vec<Vec<u8>>,
}

impl Layout {
    fn new(plan: &Plan) -> Self {
        let width = digits(plan.keys.saturating_sub(1));
        let tag = keys::random_alphanumeric(plan.key_size - width);
        let keys = (0..plan.keys).map(|k| format!("{tag}{k:0width$}").into_bytes()).collect();
        Layout { tag: tag.into_bytes(), keys }
    }

    fn watcher(&self, plan: &Plan, g: usize) -> WatcherSpec {
        let key = if plan.prefix { self.tag.clone() } else { self.keys[g % plan.keys].clone() };
        WatcherSpec { key, prefix: plan.prefix, expected: plan.expected_for(g) }
    }
}

/// Puts of the run: put j goes to key j mod keys, its value stamped with its send time.
struct StampedPut {
    kv: KvClient,
    keys: Arc<Vec<Vec<u8>>>,
    origin: Instant,
    val_size: usize,
}

impl Worker for StampedPut {
    async fn op(&mut self, index: u64) -> Result<(), etcd_client::Error> {
        let key = self.keys[(index % self.keys.len() as u64) as usize].clone();
        let value = stamped_value(self.origin.elapsed(), self.val_size);
        self.kv.put(key, value, None).await.map(drop)
    }
}

/// Runs the three phases; returns the put summary and the watch statistics.
pub async fn run(pool: &Pool, plan: &Plan, clients: usize, progress: bool) -> Result<(Summary, WatchStats)> {
    let layout = Layout::new(plan);
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        created: Arc::new(AtomicU64::new(0)),
        delivered: Arc::new(AtomicU64::new(0)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // One message per stream: ready or failed.
    let (ready_tx, mut ready_rx) = mpsc::channel(plan.streams);
    let create_start = Instant::now();
    let tasks: Vec<JoinHandle<StreamOutcome>> = (0..plan.streams)
        .map(|s| {
            let specs = (0..plan.per_stream).map(|w| layout.watcher(plan, s * plan.per_stream + w)).collect();
            let client = pool.client(s).watch_client();
            tokio::spawn(stream::run(client, specs, plan.prev_kv, shared.clone(), ready_tx.clone(), stop_rx.clone()))
        })
        .collect();
    drop(ready_tx);
    if let Err(e) = wait_created(&mut ready_rx, plan, &shared, progress).await {
        let _ = stop_tx.send(true);
        futures::future::join_all(tasks).await;
        return Err(e);
    }
    let create_elapsed = create_start.elapsed();

    let keys = Arc::new(layout.keys);
    let puts = (0..clients)
        .map(|i| StampedPut {
            kv: pool.client(i).kv_client(),
            keys: keys.clone(),
            origin: shared.origin,
            val_size: plan.val_size,
        })
        .collect();
    let load = Load { total: plan.put_total, rate: plan.put_rate, label: "put", progress };
    let (put_summary, _, put_start) = drive::drive(puts, load).await?;

    let outcomes = wait_delivered(tasks, plan, &shared, &stop_tx, progress).await?;
    Ok((put_summary, stats(plan, outcomes, create_elapsed, put_start)))
}

/// Waits for every stream to announce its watchers created; fails on a stream's error or when
/// creation stalls for the plan's idle timeout.
async fn wait_created(
    ready: &mut mpsc::Receiver<Result<(), String>>,
    plan: &Plan,
    shared: &Shared,
    progress: bool,
) -> Result<()> {
    let bar = Progress::start("watchers", plan.watchers(), shared.created.clone(), progress);
    let mut stall = Stall::new(shared.created.load(Ordering::Relaxed), plan.idle_timeout);
    let mut ready_streams = 0;
    while ready_streams < plan.streams {
        match tokio::time::timeout(CHECK_PERIOD, ready.recv()).await {
            Ok(Some(Ok(()))) => ready_streams += 1,
            Ok(Some(Err(e))) => bail!("watch creation failed: {e}"),
            Ok(None) => bail!("watch creation failed: the streams ended"),
            Err(_) => {
                if stall.stalled(shared.created.load(Ordering::Relaxed)) {
                    let created = shared.created.load(Ordering::Relaxed);
                    bail!("watch creation stalled: {created} of {} watchers created", plan.watchers());
                }
            }
        }
    }
    bar.finish();
    Ok(())
}

/// Waits until every stream has all its events, or delivery stalls for the idle timeout (then
/// the streams are stopped and what they lack is reported as missing).
async fn wait_delivered(
    tasks: Vec<JoinHandle<StreamOutcome>>,
    plan: &Plan,
    shared: &Shared,
    stop: &watch::Sender<bool>,
    progress: bool,
) -> Result<Vec<StreamOutcome>> {
    let bar = Progress::start("events", plan.events_expected(), shared.delivered.clone(), progress);
    let mut pending: FuturesUnordered<_> = tasks.into_iter().collect();
    let mut outcomes = Vec::with_capacity(pending.len());
    let mut stall = Stall::new(shared.delivered.load(Ordering::Relaxed), plan.idle_timeout);
    loop {
        match tokio::time::timeout(CHECK_PERIOD, pending.next()).await {
            Ok(Some(joined)) => outcomes.push(joined.context("a watch stream task panicked")?),
            Ok(None) => break,
            Err(_) if stall.stalled(shared.delivered.load(Ordering::Relaxed)) => {
                let _ = stop.send(true);
                while let Some(joined) = pending.next().await {
                    outcomes.push(joined.context("a watch stream task panicked")?);
                }
                break;
            }
            Err(_) => {}
        }
    }
    bar.finish();
    Ok(outcomes)
}

/// Notices a counter that has not moved for `idle`.
struct Stall {
    last: u64,
    since: Instant,
    idle: Duration,
}

impl Stall {
    fn new(value: u64, idle: Duration) -> Self {
        Stall { last: value, since: Instant::now(), idle }
    }

    fn stalled(&mut self, value: u64) -> bool {
        if value != self.last {
            *self = Stall::new(value, self.idle);
        }
        self.since.elapsed() >= self.idle
    }
}

fn stats(plan: &Plan, outcomes: Vec<StreamOutcome>, create_elapsed: Duration, put_start: Instant) -> WatchStats {
    let (mut create, mut delivery) = (Recorder::new(), Recorder::new());
    let mut w = WatchStats { watchers: plan.watchers(), events_expected: plan.events_expected(), ..Default::default() };
    let mut last_event: Option<Instant> = None;
    for o in outcomes {
        create.merge(&o.create);
        delivery.merge(&o.delivery);
        w.events_delivered += o.delivered;
        w.missing_events += o.missing;
        w.unexpected_events += o.unexpected;
        last_event = last_event.max(o.last_event);
        if let Some(e) = o.error {
            *w.stream_errors.entry(e).or_default() += 1;
        }
    }
    w.watch_create = create.summarize(create_elapsed);
    let delivery_elapsed = last_event.map_or(Duration::ZERO, |t| t.saturating_duration_since(put_start));
    w.delivery_elapsed_s = delivery_elapsed.as_secs_f64();
    w.events_per_sec = if w.delivery_elapsed_s > 0.0 { w.events_delivered as f64 / w.delivery_elapsed_s } else { 0.0 };
    let delivery = delivery.summarize(delivery_elapsed);
    w.delivery_latency_ms = delivery.latency_ms;
    w.delivery_histogram = delivery.histogram;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(streams: usize, per_stream: usize, keys: usize, prefix: bool, put_total: u64) -> Plan {
        Plan::from(&WatchOpts {
            streams,
            watch_per_stream: per_stream,
            watched_key_total: keys,
            prefix,
            put_total,
            ..Default::default()
        })
    }

    #[test]
    fn expected_events_follow_the_key_of_each_put() {
        // 20 watchers on 3 keys: key 0 has watchers 0,3,..,18 (7), keys 1 and 2 have 7 and 6.
        // 10 puts: key 0 gets puts 0,3,6,9 (4), key 1 gets 3, key 2 gets 3.
        let p = plan(4, 5, 3, false, 10);
        assert_eq!(p.events_expected(), 7 * 4 + 7 * 3 + 6 * 3);
        assert_eq!(p.expected_for(0), 4);
        assert_eq!(p.expected_for(5), 3);
        // Brute force: count the watchers of each put's key.
        let brute: u64 = (0..10).map(|j| (0..20).filter(|g| g % 3 == j % 3).count() as u64).sum();
        assert_eq!(p.events_expected(), brute);
    }

    #[test]
    fn with_a_prefix_every_watcher_sees_every_put() {
        let p = plan(100, 100, 7, true, 100);
        assert_eq!(p.watchers(), 10_000);
        assert_eq!(p.events_expected(), 1_000_000);
    }

    #[test]
    fn layout_keys_are_distinct_and_share_the_tag() {
        let p = Plan { key_size: 12, ..plan(1, 1, 150, false, 1) };
        check_key_size(p.key_size, p.keys).unwrap();
        let layout = Layout::new(&p);
        assert_eq!(layout.tag.len(), 9);
        let distinct: std::collections::HashSet<_> = layout.keys.iter().collect();
        assert_eq!(distinct.len(), 150);
        assert!(layout.keys.iter().all(|k| k.len() == 12 && k.starts_with(&layout.tag)));
        assert_eq!(layout.watcher(&p, 151).key, layout.keys[1]);
        let prefixed = Plan { prefix: true, ..p.clone() };
        assert_eq!(layout.watcher(&prefixed, 151).key, layout.tag);
    }

    #[test]
    fn a_moving_counter_is_not_stalled() {
        let mut stall = Stall::new(0, Duration::ZERO);
        assert!(stall.stalled(0), "a zero idle time is over at once");
        let mut stall = Stall::new(0, Duration::from_secs(3600));
        assert!(!stall.stalled(0));
        stall.since -= Duration::from_secs(3600);
        assert!(stall.stalled(0), "an hour without progress");
        assert!(!stall.stalled(1), "progress restarts the clock");
    }

    #[test]
    fn key_size_must_hold_tag_and_index() {
        assert!(check_key_size(5, 10).is_ok());
        assert!(check_key_size(5, 11).is_err());
        assert!(check_key_size(32, 1).is_ok());
        assert_eq!(digits(0), 1);
        assert_eq!(digits(99), 2);
        assert_eq!(digits(100), 3);
    }
}
