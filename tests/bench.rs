//! Smoke runs of the `bench` load generator against geobuk (issue 5: CI proves every subcommand
//! and the compare command work; the performance targets live in bench/RESULTS.md, never in a
//! timed test). Every subcommand runs in-process against a one-member store with tiny totals,
//! and `compare` runs its whole suite, scaled down, against three-member etcd and geobuk clusters.

mod common;

use anyhow::Result;
use bench::compare::{CompareOpts, System};
use bench::{Command, GlobalOpts, LeaseKeepaliveOpts, PutOpts, RangeOpts, TxnPutOpts, WatchLatencyOpts, WatchOpts};
use common::TestServer;
use etcd_client::{GetOptions, LeaseLeasesResponse};

fn global(server: &TestServer, conns: usize, clients: usize) -> GlobalOpts {
    let endpoint = server.endpoint();
    GlobalOpts { conns, clients, ..GlobalOpts::new(&[endpoint.as_str()]) }
}

fn assert_clean(report: &bench::Report, ops: u64) {
    assert_eq!(report.summary.total_ops, ops, "{report:#?}");
    assert_eq!(report.summary.errors, 0, "{:?}", report.summary.error_counts);
    assert!(report.summary.ops_per_sec > 0.0);
}

fn assert_delivered(report: &bench::Report, expected: u64) {
    let w = report.watch.as_ref().expect("watch stats");
    assert!(w.stream_errors.is_empty(), "{:?}", w.stream_errors);
    assert_eq!((w.events_expected, w.events_delivered, w.missing_events), (expected, expected, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_runs_against_a_one_member_store() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = common::connect(&server.endpoint()).await?;

    let put = PutOpts { total: 200, key_space_size: 200, sequential_keys: true, val_size: 256, ..Default::default() };
    let report = bench::run(&GlobalOpts { target_leader: true, ..global(&server, 2, 8) }, &Command::Put(put)).await?;
    assert_clean(&report, 200);
    for i in [0, 57, 199] {
        let got = client.get(bench::keys::key(i, 8), None).await?;
        assert_eq!(got.kvs().first().map(|kv| kv.value().len()), Some(256), "key {i}");
    }
    let all = client.get(vec![0u8], Some(GetOptions::new().with_from_key().with_count_only())).await?;
    assert_eq!(all.count(), 200);

    let before = common::current_revision(&mut client).await?;
    let txn = TxnPutOpts { total: 40, txn_ops: 3, key_space_size: 20, ..Default::default() };
    assert_clean(&bench::run(&global(&server, 1, 4), &Command::TxnPut(txn)).await?, 40);
    assert_eq!(common::current_revision(&mut client).await? - before, 40, "one revision per txn");

    client.put("bench-range", "v", None).await?;
    for consistency in [bench::Consistency::Linearizable, bench::Consistency::Serializable] {
        let range = RangeOpts { total: 200, consistency, ..RangeOpts::new("bench-range") };
        assert_clean(&bench::run(&global(&server, 2, 10), &Command::Range(range)).await?, 200);
    }

    let watch = WatchOpts { streams: 4, watch_per_stream: 5, put_total: 30, ..Default::default() };
    let report = bench::run(&global(&server, 2, 2), &Command::Watch(watch)).await?;
    assert_clean(&report, 30);
    assert_delivered(&report, 600);
    let many = WatchOpts { streams: 10, watch_per_stream: 100, put_total: 10, prefix: true, ..Default::default() };
    assert_delivered(&bench::run(&global(&server, 1, 2), &Command::Watch(many)).await?, 10_000);
    let latency = WatchLatencyOpts {
        streams: 2,
        watchers_per_stream: 5,
        put_total: 20,
        put_rate: 200,
        prevkv: true,
        ..Default::default()
    };
    assert_delivered(&bench::run(&global(&server, 1, 1), &Command::WatchLatency(latency)).await?, 200);

    let leases = LeaseKeepaliveOpts { total: 100 };
    assert_clean(&bench::run(&global(&server, 1, 4), &Command::LeaseKeepalive(leases)).await?, 100);
    let left: LeaseLeasesResponse = client.leases().await?;
    assert!(left.leases().is_empty(), "lease-keepalive left {} leases", left.leases().len());
    Ok(())
}

/// A compare of every row at a tiny scale, its members and results under `dir`.
fn tiny_compare(dir: &std::path::Path, systems: Vec<System>, repeats: usize) -> CompareOpts {
    CompareOpts {
        systems,
        geobuk_bin: Some(env!("CARGO_BIN_EXE_geobuk").into()),
        etcd_bin: jepsen::cluster::ETCD_BIN.into(),
        work_dir: dir.join("members"),
        out: dir.join("RESULTS.md"),
        scale: 0.001,
        load_keys: 200,
        rows: Vec::new(),
        repeats,
    }
}

/// The compare command end to end at a tiny scale: both clusters start and stay up, every row
/// runs twice on each, interleaved (who goes first alternating), each run after a quiet wait, and
/// the results file (medians beside every run), its JSON (every run) and its chart are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_writes_both_systems_side_by_side() -> Result<()> {
    if common::skip_on_etcd("compare starts its own clusters of both systems") {
        return Ok(());
    }
    if !std::path::Path::new(jepsen::cluster::ETCD_BIN).exists() {
        eprintln!("skipping: {} is not installed", jepsen::cluster::ETCD_BIN);
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let opts = tiny_compare(dir.path(), vec![System::Etcd, System::Geobuk], 2);
    let comparison = bench::compare::run(&opts).await?;
    assert_eq!(comparison.rows.len(), 9);
    assert_eq!(comparison.measured.len(), 36);
    for m in &comparison.measured {
        let report = m.report.as_ref().unwrap_or_else(|| panic!("{} {}: {:?}", m.system.name(), m.row, m.error));
        assert_eq!(report.summary.errors, 0, "{} {}: {:?}", m.system.name(), m.row, report.summary.error_counts);
        assert!(m.usage.peak_rss_bytes > 0 && m.usage.cpu_seconds >= 0.0);
        // The load generator ran its clients and the machine did something meanwhile.
        assert!(m.usage.load_cpu_seconds >= 0.0, "{} {}: {:?}", m.system.name(), m.row, m.usage);
        assert!(
            m.usage.machine_busy > 0.0 && m.usage.machine_busy <= 1.0,
            "{} {}: {:?}",
            m.system.name(),
            m.row,
            m.usage
        );
        assert!(m.headline.is_some_and(|h| h > 0.0), "{} {}", m.system.name(), m.row);
        // Every run waited at least one window for both clusters to be quiet.
        assert!(m.quiet.waited_seconds >= 1.0, "{} {}: {:?}", m.system.name(), m.row, m.quiet);
        if let Some(w) = &report.watch {
            assert_eq!(w.missing_events, 0, "{} {}", m.system.name(), m.row);
        }
        // Read rows write nothing: compacting to a revision already compacted is no failure.
        assert!(!m.notes.iter().any(|n| n.contains("compacting")), "{} {}: {:?}", m.system.name(), m.row, m.notes);
    }
    assert_interleaved(&comparison);
    assert_results_file(&opts)?;
    Ok(())
}

/// A member that dies mid-compare (here SIGKILLed once the range key is written) does not abort the
/// compare: the run after its death fails naming it, with its log's tail, that system's later
/// runs are skipped without waiting, and every row still reaches the results file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dying_mid_compare_is_named_and_the_rest_is_written() -> Result<()> {
    if common::skip_on_etcd("compare starts its own clusters") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let opts = tiny_compare(dir.path(), vec![System::Geobuk], 1);
    let compare = spawn_compare(&opts);
    // Once the cluster is up and the range key written, the compare is past its start and has
    // at least a quiet window per row (9 rows) to go, so the kill lands mid-compare.
    let (victim, endpoint) = a_geobuk_member(&opts, &compare).await?;
    wait_for_revision(&endpoint, 1, &compare).await;
    assert!(std::process::Command::new("kill").args(["-9", &victim]).status()?.success());
    let comparison = compare.await??;
    assert_eq!(comparison.measured.len(), 9, "every row is recorded");
    let errors: Vec<&str> = comparison.measured.iter().filter_map(|m| m.error.as_deref()).collect();
    let deaths: Vec<&&str> = errors.iter().filter(|e| e.contains(&format!("(pid {victim}) exited"))).collect();
    assert_eq!(deaths.len(), 1, "the death is reported once: {errors:?}");
    assert!(deaths[0].contains("signal: 9") && deaths[0].contains("its log ends:"), "{}", deaths[0]);
    let after = comparison.measured.iter().skip_while(|m| !m.error.as_deref().is_some_and(|e| e.contains("exited")));
    assert!(after.skip(1).all(|m| m.error.as_deref().is_some_and(|e| e.starts_with("skipped: a geobuk member died"))));
    let md = std::fs::read_to_string(&opts.out)?;
    assert!(md.contains("## Errors") && md.contains(&format!("(pid {victim}) exited")), "{md}");
    Ok(())
}

/// A member dying while a row runs ends that run at once, and the run's error says so and names
/// the member (a run that went on would be recorded with a death note but no "stopped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dying_mid_run_stops_the_run() -> Result<()> {
    if common::skip_on_etcd("compare starts its own clusters") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // 20,000 puts: far more than are done by the time the kill lands.
    let opts =
        CompareOpts { rows: vec!["put-100".into()], scale: 0.2, ..tiny_compare(dir.path(), vec![System::Geobuk], 1) };
    let compare = spawn_compare(&opts);
    let (victim, endpoint) = a_geobuk_member(&opts, &compare).await?;
    // The range key is revision 2; the row's puts come after it.
    wait_for_revision(&endpoint, 100, &compare).await;
    assert!(std::process::Command::new("kill").args(["-9", &victim]).status()?.success());
    let comparison = compare.await??;
    assert_eq!(comparison.measured.len(), 1);
    let error = comparison.measured[0].error.as_deref().unwrap_or_default();
    assert!(error.starts_with("stopped: member n") && error.contains("exited (signal: 9"), "{error}");
    assert!(error.contains(&format!("(pid {victim}) exited")) && error.contains("its log ends:"), "{error}");
    Ok(())
}

/// Runs the compare in the background, so a test can act on its members meanwhile.
fn spawn_compare(opts: &CompareOpts) -> tokio::task::JoinHandle<Result<bench::compare::Comparison>> {
    let opts = opts.clone();
    tokio::spawn(async move { bench::compare::run(&opts).await })
}

/// The pid and client URL of one of the compare's geobuk members, once it is running.
async fn a_geobuk_member(
    opts: &CompareOpts,
    compare: &tokio::task::JoinHandle<Result<bench::compare::Comparison>>,
) -> Result<(String, String)> {
    let member_dir = opts.work_dir.join("geobuk").display().to_string();
    loop {
        let out = std::process::Command::new("pgrep").args(["-af", &member_dir]).output()?;
        let line = String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string);
        if let Some(line) = line {
            let args: Vec<&str> = line.split_whitespace().collect();
            let url = args.iter().position(|a| *a == "--listen-client-urls").and_then(|i| args.get(i + 1));
            return Ok((args[0].to_string(), url.expect("member has a client URL").to_string()));
        }
        assert!(!compare.is_finished(), "the compare ended before its members were seen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the range key is written and the store's revision has passed `past`. One client,
/// asking every 200 ms: a new connection per look would keep the members too busy for the
/// compare's quiet window, and each run would wait out its 60 s limit.
async fn wait_for_revision(
    endpoint: &str,
    past: i64,
    compare: &tokio::task::JoinHandle<Result<bench::compare::Comparison>>,
) {
    let mut client = None;
    loop {
        if client.is_none() {
            client = etcd_client::Client::connect([endpoint], None).await.ok();
        }
        let revision = match client.as_mut() {
            Some(c) => match c.get(bench::compare::suite::RANGE_KEY, None).await {
                Ok(r) if !r.kvs().is_empty() => r.header().map_or(0, |h| h.revision()),
                _ => 0,
            },
            None => 0,
        };
        if revision > past {
            return;
        }
        assert!(!compare.is_finished(), "the compare ended before the store passed revision {past}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Runs are taken row by row, etcd geobuk geobuk etcd in row 0, the reverse in row 1, and so on.
fn assert_interleaved(comparison: &bench::compare::Comparison) {
    let (e, g) = (System::Etcd, System::Geobuk);
    for (r, row) in comparison.rows.iter().enumerate() {
        let runs: Vec<(System, usize)> =
            comparison.measured[r * 4..r * 4 + 4].iter().map(|m| (m.system, m.repeat)).collect();
        let expected = if r % 2 == 0 { [(e, 0), (g, 0), (g, 1), (e, 1)] } else { [(g, 0), (e, 0), (e, 1), (g, 1)] };
        assert_eq!(runs, expected, "row {row}");
        assert!(comparison.measured[r * 4..r * 4 + 4].iter().all(|m| &m.row == row));
    }
}

fn assert_results_file(opts: &CompareOpts) -> Result<()> {
    let md = std::fs::read_to_string(&opts.out)?;
    let (main, rest) = md.split_once("## CPU per operation").unwrap_or_else(|| panic!("no CPU section: {md}"));
    let table: Vec<&str> = main.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| row")).collect();
    assert_eq!(table.len(), 9, "{md}");
    // The CPU section has the seven ops/s rows (not the two watch rows), each with a ceiling
    // ("—" only where geobuk's run was too short to take a clock tick of CPU).
    let costs: Vec<&str> = rest.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| row")).collect();
    assert_eq!(costs.len(), 7, "{rest}");
    for line in &costs {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[10] == "—" || cells[10].parse::<f64>().is_ok_and(|c| c > 0.0), "ceiling: {line}");
    }
    assert!(rest.contains("## What bounds the put rows"), "{rest}");
    for line in &table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for cell in &cells[3..5] {
            // "median (median of a / b)": the median is one of the two runs.
            let (median, runs) = cell.split_once(" (median of ").unwrap_or_else(|| panic!("no runs: {line}"));
            let runs: Vec<&str> = runs.trim_end_matches(')').split(" / ").collect();
            assert!(median.parse::<f64>().is_ok() && runs.len() == 2 && runs[0] == median, "{line}");
        }
    }
    assert!(md.contains("etcd Version: 3.4"), "{md}");
    assert!(md.contains("The runs are interleaved") && md.contains("runs twice on each system"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(opts.out.with_extension("json"))?)?;
    assert_eq!(json["measured"].as_array().map(Vec::len), Some(36));
    assert_eq!(json["repeats"], 2);
    assert!(std::fs::read_to_string(opts.out.with_extension("svg"))?.contains("put-100"));
    Ok(())
}
