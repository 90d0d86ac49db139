//! Operator endpoints over plain HTTP/1.1, as curl and Prometheus reach them: `/health`,
//! `/livez`, `/readyz`, `/version` and `/metrics` on the client port (shared with gRPC) and on
//! `--listen-metrics-urls`, with the metrics following what the member does.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{TestServer, expect_grpc_error, free_port, is_etcd, next_watch, skip_on_etcd, within};
use etcd_client::{GetOptions, WatchStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of one HTTP answer read at most (a /metrics page is a few tens of KiB).
const HTTP_REPLY_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// How long a metric that settles asynchronously (a closed stream) may take to show it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between polls of such a metric.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Puts the metrics tests make.
const PUTS: usize = 20;

/// One parsed HTTP/1.1 answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names lowercased.
    headers: HashMap<String, String>,
    body: String,
}

/// `GET path` over a fresh HTTP/1.1 connection (`Connection: close`), bounded in time and size.
async fn http_get(addr: &str, path: &str) -> Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(HTTP_REPLY_BYTES_MAX).read_to_end(&mut raw).await?;
        parse_reply(&raw)
    };
    within(&format!("GET {path}"), exchange).await?
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    ensure!(parts.next() == Some("HTTP/1.1"), "not an HTTP/1.1 answer: {status_line:?}");
    let status = parts.next().context("no status code")?.parse()?;
    let mut headers = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').with_context(|| format!("bad header line {line:?}"))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, headers, body: String::from_utf8(body).context("body is not UTF-8")? })
}

/// Decodes a chunked body (`size CRLF data CRLF`…, ending with a zero-size chunk).
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size_text = std::str::from_utf8(&raw[..eol])?.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).with_context(|| format!("chunk size {size_text:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(raw.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The value of the first sample whose series (name plus labels) is exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series`, or an error quoting the page.
fn must(text: &str, series: &str) -> Result<f64> {
    sample(text, series).with_context(|| format!("no sample {series} in /metrics:\n{text}"))
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum_where(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A server with one `--listen-metrics-urls` listener; returns it with that listener's address.
async fn start_with_metrics_url() -> Result<(TestServer, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let server = TestServer::start_with(&["--listen-metrics-urls", &format!("http://{addr}")]).await?;
    Ok((server, addr))
}

/// Scrapes `/metrics` until `done` holds for the page (bounded by `SETTLE_TIMEOUT`).
async fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let page = http_get(addr, "/metrics").await?.body;
        if done(&page) {
            return Ok(page);
        }
        if Instant::now() > deadline {
            bail!("{what} not seen in /metrics within {SETTLE_TIMEOUT:?}:\n{page}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test]
async fn health_endpoints_share_the_client_port_with_grpc() -> Result<()> {
    let server = TestServer::start().await?;
    let addr = server.endpoint();

    let health = http_get(&addr, "/health").await?;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(health.body.contains(r#""health":"true""#), "{health:?}");
    if !is_etcd() {
        assert_eq!(health.body, r#"{"health":"true","reason":""}"#);
    }
    let serializable = http_get(&addr, "/health?serializable=true").await?;
    assert_eq!(serializable.status, 200, "{serializable:?}");

    // gRPC keeps working on the same port, before and after plain HTTP/1.1 traffic.
    let mut client = server.client().await?;
    client.put("k", "v", None).await?;
    assert_eq!(client.get("k", None).await?.kvs().len(), 1);

    let missing = http_get(&addr, "/no/such/path").await?;
    assert_eq!(missing.status, 404, "{missing:?}");

    if skip_on_etcd("/livez, /readyz and the 3.6 version arrived after 3.4") {
        return Ok(());
    }
    let ready = http_get(&addr, "/readyz").await?;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"), "{ready:?}");
    assert_eq!(ready.headers.get("content-type").map(String::as_str), Some("text/plain; charset=utf-8"));
    let verbose = http_get(&addr, "/readyz?verbose").await?;
    assert_eq!(verbose.status, 200, "{verbose:?}");
    for line in ["[+]data_corruption ok", "[+]serializable_read ok", "[+]linearizable_read ok", "[+]non_learner ok"] {
        assert!(verbose.body.lines().any(|l| l == line), "missing {line:?} in {:?}", verbose.body);
    }
    assert!(verbose.body.ends_with("ok\n"));
    let live = http_get(&addr, "/livez?verbose").await?;
    assert_eq!((live.status, live.body.as_str()), (200, "[+]serializable_read ok\nok\n"), "{live:?}");
    let one = http_get(&addr, "/readyz/linearizable_read").await?;
    assert_eq!((one.status, one.body.as_str()), (200, "ok\n"), "{one:?}");

    let version = http_get(&addr, "/version").await?;
    assert_eq!(version.status, 200);
    assert_eq!(version.body, r#"{"etcdserver":"3.6.0","etcdcluster":"3.6.0"}"#);

    // And gRPC once more, on a connection opened after all that.
    let mut again = server.client().await?;
    assert_eq!(again.get("k", None).await?.kvs().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_member() -> Result<()> {
    let (server, metrics_addr) = start_with_metrics_url().await?;
    let addr = server.endpoint();
    let mut client = server.client().await?;
    for i in 0..PUTS {
        client.put(format!("key-{i:02}"), "value", None).await?;
    }
    // A failing call: a read below the compaction revision is OutOfRange.
    client.compact(PUTS as i64, None).await?;
    let compacted = client.get("key-00", Some(GetOptions::new().with_revision(2))).await;
    expect_grpc_error(compacted, "OutOfRange", "etcdserver: mvcc: required revision has been compacted")?;

    let mut streams: Vec<WatchStream> = Vec::new();
    for key in ["w1", "w2", "w3"] {
        let mut stream = client.watch(key, None).await?;
        let ack = next_watch(&mut stream).await?;
        ensure!(ack.created(), "creation ack expected: {ack:?}");
        streams.push(stream);
    }

    let reply = http_get(&addr, "/metrics").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let content_type = reply.headers.get("content-type").context("content-type")?;
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    // The member's own publish proposal may still be in flight (it backs off while the member
    // learns that it leads): the gauge must come back to zero once nothing is pending.
    let idle = |p: &str| must(p, "etcd_server_proposals_pending").ok() == Some(0.0);
    let page = if idle(&reply.body) { reply.body } else { scrape_until(&addr, "no pending proposal", idle).await? };

    assert_eq!(must(&page, "etcd_server_has_leader")?, 1.0);
    assert_eq!(must(&page, "etcd_server_is_leader")?, 1.0);
    assert!(must(&page, "etcd_server_leader_changes_seen_total")? >= 1.0);
    let applied = must(&page, "etcd_server_proposals_applied_total")?;
    assert!(applied >= PUTS as f64, "applied {applied} < {PUTS} puts");
    assert!(must(&page, "etcd_server_proposals_committed_total")? >= applied);
    assert_eq!(must(&page, "etcd_server_proposals_pending")?, 0.0);
    must(&page, "etcd_server_proposals_failed_total")?;
    assert!(must(&page, "etcd_disk_wal_fsync_duration_seconds_count")? > 0.0);
    must(&page, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}")?;
    must(&page, "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}")?;
    must(&page, "etcd_disk_backend_commit_duration_seconds_count")?;
    assert!(must(&page, "etcd_mvcc_db_total_size_in_bytes")? > 0.0);
    must(&page, "etcd_debugging_mvcc_keys_total")?;
    assert_eq!(must(&page, "etcd_debugging_mvcc_watcher_total")?, 3.0, "three open watchers");

    let put = "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    let put_ok = must(&page, &format!("grpc_server_handled_total{{grpc_code=\"OK\",{put}}}"))?;
    assert!(put_ok >= PUTS as f64, "handled Put OK {put_ok} < {PUTS}");
    assert!(must(&page, &format!("grpc_server_started_total{{{put}}}"))? >= PUTS as f64);
    let range = "grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    assert!(must(&page, &format!("grpc_server_handled_total{{grpc_code=\"OutOfRange\",{range}}}"))? >= 1.0);
    let watch = "grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"";
    assert!(must(&page, &format!("grpc_server_started_total{{{watch}}}"))? >= 3.0);

    if !is_etcd() {
        assert!(page.contains("etcd_server_id{server_id=\""), "etcd_server_id missing");
        assert_eq!(must(&page, "etcd_server_version{server_version=\"3.6.0\"}")?, 1.0);
    }

    // The metrics listener serves the same page (HTTP only) and the same health answers.
    let elsewhere = http_get(&metrics_addr, "/metrics").await?;
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}");
    assert_eq!(must(&elsewhere.body, "etcd_debugging_mvcc_watcher_total")?, 3.0);
    assert!(must(&elsewhere.body, "etcd_server_proposals_applied_total")? >= applied);
    assert_eq!(http_get(&metrics_addr, "/health").await?.status, 200);
    assert_eq!(http_get(&metrics_addr, "/nope").await?.status, 404);

    // Streams end when their client goes away: the watchers go, and each stream is
    // counted as handled once its response ends.
    drop(streams);
    drop(client);
    let page = scrape_until(&addr, "watchers closed", |p| {
        sample(p, "etcd_debugging_mvcc_watcher_total") == Some(0.0)
            && sum_where(p, "grpc_server_handled_total", &["grpc_method=\"Watch\""]) >= 3.0
    })
    .await?;
    assert_eq!(sum_where(&page, "grpc_server_handled_total", &["grpc_method=\"Put\""]), put_ok);
    Ok(())
}
