//! Runs every subcommand in-process through `bench::run` against a one-member etcd (Debian's
//! /usr/bin/etcd) on ephemeral ports, with tiny totals, and checks the reports and the data
//! they claim to have written. Skipped, with a message, where etcd is not installed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::{Command, GlobalOpts, LeaseKeepaliveOpts, PutOpts, RangeOpts, TxnPutOpts, WatchLatencyOpts, WatchOpts};
use etcd_client::{Client, GetOptions};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to say it serves clients.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A one-member etcd, killed on drop.
struct Etcd {
    endpoint: String,
    _child: Child,
    _dir: TempDir,
}

fn free_port() -> u16 {
    jepsen::ports::free_port().expect("a free loopback port")
}

impl Etcd {
    /// None (after saying so) when etcd is not installed.
    async fn start() -> Option<Etcd> {
        if !Path::new(ETCD).exists() {
            eprintln!("skipping: {ETCD} is not installed (apt-get install etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (format!("http://127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
        let mut child = Process::new(ETCD)
            .args(["--name", "b1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg(format!("--initial-cluster=b1={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcd");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("ready to serve client requests") {
                    return true;
                }
            }
            false
        };
        let ready = tokio::time::timeout(START_TIMEOUT, ready).await;
        assert!(matches!(ready, Ok(true)), "etcd did not become ready: {ready:?}");
        // Keep draining its log so etcd never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let endpoint = client.trim_start_matches("http://").to_string();
        Some(Etcd { endpoint, _child: child, _dir: dir })
    }

    fn global(&self, conns: usize, clients: usize) -> GlobalOpts {
        GlobalOpts { conns, clients, ..GlobalOpts::new(&[&self.endpoint]) }
    }

    async fn client(&self) -> Client {
        Client::connect([&self.endpoint], None).await.unwrap()
    }
}

fn assert_clean(report: &bench::Report, ops: u64) {
    assert_eq!(report.summary.total_ops, ops, "{report:#?}");
    assert_eq!(report.summary.errors, 0, "{:?}", report.summary.error_counts);
    assert!(report.summary.ops_per_sec > 0.0);
    assert!(report.summary.latency_ms.p50 > 0.0 && report.summary.latency_ms.p50 <= report.summary.latency_ms.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_txn_put_write_what_they_report() {
    let Some(etcd) = Etcd::start().await else { return };
    let mut global = etcd.global(2, 4);
    global.target_leader = true;
    let put = PutOpts { total: 200, key_space_size: 200, sequential_keys: true, val_size: 64, ..Default::default() };
    let report = bench::run(&global, &Command::Put(put)).await.unwrap();
    assert_clean(&report, 200);
    assert_eq!(report.subcommand, "put");
    assert_eq!(report.env.endpoints, std::slice::from_ref(&etcd.endpoint));
    assert_eq!((report.env.conns, report.env.clients), (2, 4));
    assert!(report.env.server_version.starts_with("3."), "{}", report.env.server_version);

    let mut client = etcd.client().await;
    for i in 0..200 {
        let got = client.get(bench::keys::key(i, 8), None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "key {i} missing");
        assert_eq!(got.kvs()[0].value().len(), 64);
    }
    let all = client.get(vec![0u8], Some(GetOptions::new().with_from_key().with_count_only())).await.unwrap();
    assert_eq!(all.count(), 200);

    // Each txn is one revision.
    let before = all.header().unwrap().revision();
    let txn = TxnPutOpts { total: 50, txn_ops: 4, key_space_size: 20, ..Default::default() };
    let report = bench::run(&etcd.global(1, 3), &Command::TxnPut(txn)).await.unwrap();
    assert_clean(&report, 50);
    let after = client.get(bench::keys::key(0, 8), None).await.unwrap();
    assert_eq!(after.header().unwrap().revision() - before, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_in_both_consistencies() {
    let Some(etcd) = Etcd::start().await else { return };
    etcd.client().await.put("bench-range", "v", None).await.unwrap();
    let mut range = RangeOpts { total: 200, ..RangeOpts::new("bench-range") };
    let report = bench::run(&etcd.global(2, 3), &Command::Range(range.clone())).await.unwrap();
    assert_clean(&report, 200);
    range.consistency = bench::Consistency::Serializable;
    range.end = Some("bench-rangf".into());
    let report = bench::run(&etcd.global(1, 1), &Command::Range(range)).await.unwrap();
    assert_clean(&report, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_event_to_every_watcher() {
    let Some(etcd) = Etcd::start().await else { return };
    // 20 watchers on 3 keys, 30 puts: each put reaches the 6 or 7 watchers of its key.
    let opts = WatchOpts { streams: 4, watch_per_stream: 5, watched_key_total: 3, put_total: 30, ..Default::default() };
    let report = bench::run(&etcd.global(2, 2), &Command::Watch(opts)).await.unwrap();
    assert_clean(&report, 30);
    let w = report.watch.as_ref().expect("watch stats");
    let expected: u64 = (0..30).map(|j| (0..20).filter(|g| g % 3 == j % 3).count() as u64).sum();
    assert_eq!(w.events_expected, expected);
    assert_eq!(w.events_delivered, expected);
    assert_eq!((w.missing_events, w.unexpected_events), (0, 0));
    assert!(w.stream_errors.is_empty(), "{:?}", w.stream_errors);
    assert_eq!(w.watch_create.total_ops, 20);
    assert_eq!(w.watch_create.errors, 0);
    assert!(w.events_per_sec > 0.0);
    assert!(w.delivery_latency_ms.max > 0.0);

    // One prefix: every watcher sees all 20 puts.
    let opts = WatchOpts {
        streams: 2,
        watch_per_stream: 10,
        watched_key_total: 5,
        prefix: true,
        put_total: 20,
        ..Default::default()
    };
    let report = bench::run(&etcd.global(1, 1), &Command::Watch(opts)).await.unwrap();
    let w = report.watch.as_ref().unwrap();
    assert_eq!((w.events_expected, w.events_delivered, w.missing_events), (400, 400, 0));
}

/// 10,000 watchers of one key on one connection: each put is 10,000 small DATA frames at once,
/// which made h2 close the connection (ENHANCE_YOUR_CALM) with its default windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_share_one_connection() {
    let Some(etcd) = Etcd::start().await else { return };
    // Ten concurrent puts: up to 100,000 events in flight.
    let opts = WatchOpts { streams: 100, watch_per_stream: 100, put_total: 20, ..Default::default() };
    let report = bench::run(&etcd.global(1, 10), &Command::Watch(opts)).await.unwrap();
    let w = report.watch.as_ref().unwrap();
    assert!(w.stream_errors.is_empty(), "{:?}", w.stream_errors);
    assert_eq!(w.watch_create.total_ops, 10_000);
    assert_eq!((w.events_expected, w.events_delivered, w.missing_events), (200_000, 200_000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_reported_missing_after_the_idle_timeout() {
    let Some(etcd) = Etcd::start().await else { return };
    // Puts over etcd's request limit all fail, so the watchers wait for events that never come.
    let opts = WatchOpts {
        streams: 2,
        watch_per_stream: 3,
        put_total: 4,
        val_size: 1536 * 1024,
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let began = Instant::now();
    let report = bench::run(&etcd.global(1, 1), &Command::Watch(opts)).await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    assert_eq!((report.summary.total_ops, report.summary.errors), (4, 4));
    let w = report.watch.as_ref().unwrap();
    assert_eq!((w.events_expected, w.events_delivered, w.missing_events), (24, 0, 24));
    assert!(report.to_string().contains("Events missing:\t24"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_latency_times_every_receipt() {
    let Some(etcd) = Etcd::start().await else { return };
    let opts = WatchLatencyOpts {
        streams: 2,
        watchers_per_stream: 10,
        put_total: 20,
        put_rate: 1000,
        prevkv: true,
        ..Default::default()
    };
    let report = bench::run(&etcd.global(1, 1), &Command::WatchLatency(opts)).await.unwrap();
    assert_clean(&report, 20);
    let w = report.watch.as_ref().unwrap();
    assert_eq!((w.events_expected, w.events_delivered, w.missing_events), (400, 400, 0));
    let l = &w.delivery_latency_ms;
    assert!(l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert_eq!(w.delivery_histogram.iter().map(|b| b.count).sum::<u64>(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keepalive_round_trips_and_revokes_its_leases() {
    let Some(etcd) = Etcd::start().await else { return };
    let report =
        bench::run(&etcd.global(2, 4), &Command::LeaseKeepalive(LeaseKeepaliveOpts { total: 200 })).await.unwrap();
    assert_clean(&report, 200);
    assert_eq!(etcd.client().await.leases().await.unwrap().leases().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_ops_are_counted_by_message() {
    let Some(etcd) = Etcd::start().await else { return };
    // Over etcd's 1.5 MiB request limit: every put is refused, none hangs.
    let put = PutOpts { total: 3, val_size: 1536 * 1024, ..Default::default() };
    let report = bench::run(&etcd.global(1, 1), &Command::Put(put)).await.unwrap();
    assert_eq!((report.summary.total_ops, report.summary.errors), (3, 3));
    assert!(report.summary.error_counts.keys().all(|m| m.contains("request is too large")), "{report:#?}");
    assert!(report.to_string().contains("Error distribution:\n  [3]\t"));
}

#[tokio::test]
async fn an_endpoint_without_a_server_fails_within_the_dial_timeout() {
    let port = free_port();
    let global =
        GlobalOpts { dial_timeout: Duration::from_millis(500), ..GlobalOpts::new(&[&format!("127.0.0.1:{port}")]) };
    let began = Instant::now();
    let result = bench::run(&global, &Command::Range(RangeOpts::new("k"))).await;
    let err = result.expect_err("nothing listens there");
    assert!(began.elapsed() < Duration::from_secs(5), "took {:?}", began.elapsed());
    assert!(format!("{err:#}").contains(&port.to_string()), "{err:#}");
}
