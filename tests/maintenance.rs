//! Maintenance, Cluster and health services: Status, HashKV, Defragment, Alarm, MemberList and
//! `grpc.health.v1.Health/Check`.

mod common;

use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use common::{TestServer, is_etcd, rev};
use etcd_client::{AlarmAction, AlarmType, GetOptions};
use tokio::io::AsyncWriteExt;

/// Parses "MAJOR.MINOR.PATCH" (an optional pre-release suffix after '-' is ignored).
fn semver(version: &str) -> Result<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<u64> = core
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("version {version:?} is not semver"))?;
    ensure!(parts.len() == 3, "version {version:?} is not MAJOR.MINOR.PATCH");
    Ok((parts[0], parts[1], parts[2]))
}

#[tokio::test]
async fn status_describes_a_single_leader_member() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let status = client.status().await?;
    let header = status.header().context("status header")?;
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);
    assert_ne!(header.raft_term(), 0);
    assert!(header.revision() >= 1);
    assert_eq!(status.leader(), header.member_id(), "a single member leads itself");
    assert_eq!(status.raft_term(), header.raft_term());
    assert!(status.raft_applied_index() > 0);
    assert!(status.raft_index() >= status.raft_applied_index());
    assert!(status.db_size() > 0, "db_size {}", status.db_size());
    assert!(!status.is_learner());
    assert!(status.errors().is_empty(), "errors: {:?}", status.errors());

    let version = semver(status.version())?;
    assert_eq!(version.0, 3);
    if !is_etcd() {
        // kube-apiserver enables RequestWatchProgress only for versions >= 3.5.13.
        assert!(version >= (3, 5, 13), "version {} < 3.5.13", status.version());
    }

    // A write moves the revision and the raft index.
    client.put("k", "v", None).await?;
    let after = client.status().await?;
    assert_eq!(rev(after.header()), header.revision() + 1);
    assert!(after.raft_index() > status.raft_index());
    assert_eq!(after.header().map(|h| h.member_id()), Some(header.member_id()));
    assert_eq!(after.header().map(|h| h.cluster_id()), Some(header.cluster_id()));
    Ok(())
}

#[tokio::test]
async fn hash_kv_is_stable_per_revision_and_changes_with_writes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("a", "1", None).await?;
    client.put("b", "2", None).await?; // 3
    let first = client.hash_kv(0).await?;
    assert_eq!(rev(first.header()), 3);
    assert_eq!(first.compact_version(), -1, "compact_revision is -1 before any compaction");
    let again = client.hash_kv(0).await?;
    assert_eq!(first.hash(), again.hash(), "same revision, same hash");
    assert_eq!(client.hash_kv(3).await?.hash(), first.hash());

    client.put("c", "3", None).await?; // 4
    let later = client.hash_kv(0).await?;
    assert_ne!(later.hash(), first.hash(), "a write changes the hash");
    assert_eq!(client.hash_kv(3).await?.hash(), first.hash(), "history hashes the same");
    client.compact(3, None).await?;
    assert_eq!(client.hash_kv(0).await?.compact_version(), 3);
    Ok(())
}

#[tokio::test]
async fn defragment_keeps_the_data() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    for i in 0..50 {
        client.put(format!("k{i:02}"), "v", None).await?;
    }
    client.delete("k", Some(etcd_client::DeleteOptions::new().with_prefix())).await?;
    client.put("kept", "yes", None).await?; // 53
    // etcd 3.4.23 answers Defragment (and Alarm) without a response header; not asserted.
    client.defragment().await?;
    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(all.kvs().len(), 1);
    assert_eq!(rev(all.header()), 53);
    Ok(())
}

#[tokio::test]
async fn alarm_get_reports_no_alarms() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let resp = client.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    assert_eq!(resp.alarms().len(), 0, "no alarms expected");
    Ok(())
}

#[tokio::test]
async fn member_list_has_one_member_with_the_advertised_url() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let status = client.status().await?;
    let resp = client.member_list().await?;
    let members = resp.members();
    assert_eq!(members.len(), 1, "{members:?}");
    let member = &members[0];
    assert_eq!(member.id(), status.leader());
    assert_eq!(member.name(), "default");
    assert_eq!(member.client_urls(), [server.client_url()]);
    assert!(!member.is_learner());
    let header = resp.header().context("member list header")?;
    assert_eq!(Some(header.cluster_id()), status.header().map(|h| h.cluster_id()));
    Ok(())
}

/// One unary gRPC call over HTTP/2 with curl (the suite has no gRPC health client): returns the
/// response body (length-prefixed message frames).
async fn grpc_call_with_curl(endpoint: &str, path: &str, request: &[u8]) -> Result<Vec<u8>> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
    frame.extend_from_slice(request);
    let mut child = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2-prior-knowledge", "--max-time", "10"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["--data-binary", "@-", &format!("http://{endpoint}{path}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn curl")?;
    let mut stdin = child.stdin.take().context("curl stdin")?;
    stdin.write_all(&frame).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    ensure!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

#[tokio::test]
async fn grpc_health_check_is_serving() -> Result<()> {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed (needed to call grpc.health.v1.Health/Check)");
        return Ok(());
    }
    let server = TestServer::start().await?;
    // HealthCheckRequest{service: ""} is the empty message.
    let body = grpc_call_with_curl(&server.endpoint(), "/grpc.health.v1.Health/Check", &[]).await?;
    // One uncompressed frame holding HealthCheckResponse{status: SERVING (1)} = 08 01.
    if body != [0, 0, 0, 0, 2, 0x08, 0x01] {
        bail!("unexpected health response body {body:02x?}");
    }
    Ok(())
}
