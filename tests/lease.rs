//! Lease service: grant, revoke, keep-alive, time-to-live, listing, and expiry.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{TestServer, current_revision, expect_grpc_error, keys, next_watch, rev, watch_events, within_for};
use etcd_client::{
    Client, Error as EtcdError, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

async fn lease_ids(client: &mut Client) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = client.leases().await?.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    Ok(ids)
}

async fn put_with_lease(client: &mut Client, key: &str, lease: i64) -> Result<i64> {
    let resp = client.put(key, "v", Some(PutOptions::new().with_lease(lease))).await?;
    Ok(rev(resp.header()))
}

#[tokio::test]
async fn grant_with_server_chosen_id() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let a = client.lease_grant(60, None).await?;
    let b = client.lease_grant(60, None).await?;
    assert!(a.id() > 0 && b.id() > 0, "ids are positive: {} {}", a.id(), b.id());
    assert_ne!(a.id(), b.id());
    assert_eq!(a.ttl(), 60);
    assert_eq!(a.error(), "");
    assert_eq!(rev(a.header()), 1, "a grant does not bump the revision");
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(lease_ids(&mut client).await?, want);
    Ok(())
}

#[tokio::test]
async fn grant_with_client_chosen_id_and_duplicate() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let opts = || Some(LeaseGrantOptions::new().with_id(0x1234));
    let granted = client.lease_grant(30, opts()).await?;
    assert_eq!((granted.id(), granted.ttl()), (0x1234, 30));
    let dup = client.lease_grant(90, opts()).await;
    expect_grpc_error(dup, "FailedPrecondition", "etcdserver: lease already exists")?;
    let ttl = client.lease_time_to_live(0x1234, None).await?;
    assert_eq!(ttl.granted_ttl(), 30, "the failed grant changed nothing");
    Ok(())
}

#[tokio::test]
async fn ttl_limits() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let too_large = client.lease_grant(9_000_000_001, None).await;
    expect_grpc_error(too_large, "OutOfRange", "etcdserver: too large lease TTL")?;
    let max = client.lease_grant(9_000_000_000, None).await?;
    assert_eq!(max.ttl(), 9_000_000_000);

    // Below the minimum (ceil(1.5 × 1 s election timeout) = 2 s) the TTL is silently raised.
    let small = client.lease_grant(1, None).await?;
    assert_eq!(small.ttl(), 2);
    let ttl = client.lease_time_to_live(small.id(), None).await?;
    assert_eq!(ttl.granted_ttl(), 2);
    Ok(())
}

#[tokio::test]
async fn minimum_ttl_follows_the_election_timeout() -> Result<()> {
    let server = TestServer::start_with(&["--election-timeout", "3000"]).await?;
    let mut client = server.client().await?;
    // ceil(1.5 × 3 s) = 5 s.
    assert_eq!(client.lease_grant(1, None).await?.ttl(), 5);
    assert_eq!(client.lease_grant(6, None).await?.ttl(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_all_attached_keys_at_one_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let lease = client.lease_grant(60, None).await?.id();
    for key in ["l/a", "l/b", "l/c"] {
        put_with_lease(&mut client, key, lease).await?;
    }
    client.put("l/x", "no lease", None).await?; // 5
    let mut stream = client.watch("l/", Some(WatchOptions::new().with_prefix())).await?;
    ensure!(next_watch(&mut stream).await?.created());

    let revoked = client.lease_revoke(lease).await?;
    let r = rev(revoked.header());
    assert_eq!(r, 6, "one revision for all deleted keys");
    let mut deleted = Vec::new();
    for resp in watch_events(&mut stream, 3).await? {
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Delete);
            assert_eq!(e.kv().map(|kv| kv.mod_revision()), Some(r));
            deleted.push(String::from_utf8_lossy(e.kv().expect("kv").key()).into_owned());
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["l/a", "l/b", "l/c"]);
    let left = client.get("l/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(keys(left.kvs()), ["l/x"]);
    assert_eq!(client.lease_time_to_live(lease, None).await?.ttl(), -1);
    assert!(lease_ids(&mut client).await?.is_empty());
    expect_grpc_error(client.lease_revoke(lease).await, "NotFound", LEASE_NOT_FOUND)?;
    Ok(())
}

#[tokio::test]
async fn revoking_a_lease_without_keys_does_not_bump_the_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("k", "v", None).await?; // 2
    let lease = client.lease_grant(60, None).await?.id();
    let revoked = client.lease_revoke(lease).await?;
    assert_eq!(rev(revoked.header()), 2);
    assert_eq!(current_revision(&mut client).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_a_lease_past_its_ttl() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let lease = client.lease_grant(2, None).await?.id();
    put_with_lease(&mut client, "kept", lease).await?;
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    assert_eq!(keeper.id(), lease);

    // Refresh every 500 ms for 3× the TTL; the key must survive throughout.
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    while start.elapsed() < Duration::from_secs(6) {
        ticker.tick().await;
        keeper.keep_alive().await?;
        let resp = within_for(Duration::from_secs(5), "keep-alive response", responses.message())
            .await??
            .expect("keep-alive stream open");
        assert_eq!((resp.id(), resp.ttl()), (lease, 2));
        assert!(resp.header().is_some_and(|h| h.revision() >= 2));
    }
    let kv = client.get("kept", None).await?;
    assert_eq!(kv.kvs().len(), 1, "key outlived its TTL thanks to keep-alive");
    let ttl = client.lease_time_to_live(lease, None).await?.ttl();
    assert!((1..=2).contains(&ttl), "remaining TTL {ttl}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_of_an_unknown_lease_answers_ttl_zero() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    // etcd-client turns a first answer with TTL <= 0 into an error.
    match client.lease_keep_alive(0x7777).await {
        Err(EtcdError::LeaseKeepAliveError(_)) => {}
        other => anyhow::bail!("expected LeaseKeepAliveError, got {other:?}"),
    }
    // On an open stream the raw answer is visible: ID echoed, TTL 0, no error.
    let lease = client.lease_grant(60, None).await?.id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    client.lease_revoke(lease).await?;
    keeper.keep_alive().await?;
    let resp = within_for(Duration::from_secs(5), "keep-alive response", responses.message())
        .await??
        .expect("keep-alive stream open");
    assert_eq!((resp.id(), resp.ttl()), (lease, 0));
    Ok(())
}

#[tokio::test]
async fn time_to_live_with_and_without_keys() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let lease = client.lease_grant(60, None).await?.id();
    put_with_lease(&mut client, "b", lease).await?;
    put_with_lease(&mut client, "a", lease).await?;

    let with_keys = client.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await?;
    assert_eq!(with_keys.id(), lease);
    assert_eq!(with_keys.granted_ttl(), 60);
    assert!((55..=60).contains(&with_keys.ttl()), "ttl {}", with_keys.ttl());
    let mut attached: Vec<&[u8]> = with_keys.keys().iter().map(|k| k.as_slice()).collect();
    attached.sort();
    assert_eq!(attached, [&b"a"[..], &b"b"[..]]);
    assert_eq!(rev(with_keys.header()), 3);

    let without = client.lease_time_to_live(lease, None).await?;
    assert!(without.keys().is_empty(), "keys only when asked");

    let unknown = client.lease_time_to_live(0x4242, None).await?;
    assert_eq!((unknown.id(), unknown.ttl()), (0x4242, -1));
    assert_eq!(unknown.granted_ttl(), 0);
    Ok(())
}

#[tokio::test]
async fn leases_lists_live_leases() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    assert!(lease_ids(&mut client).await?.is_empty());
    let mut ids = Vec::new();
    for ttl in [30, 60, 90] {
        ids.push(client.lease_grant(ttl, None).await?.id());
    }
    ids.sort();
    assert_eq!(lease_ids(&mut client).await?, ids);
    client.lease_revoke(ids[1]).await?;
    assert_eq!(lease_ids(&mut client).await?, [ids[0], ids[2]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_its_keys_and_watchers_see_it() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let start = Instant::now();
    let lease = client.lease_grant(2, None).await?.id();
    let put_rev = put_with_lease(&mut client, "ephemeral", lease).await?;
    let mut stream = client.watch("ephemeral", None).await?;
    ensure!(next_watch(&mut stream).await?.created());

    let resp = within_for(Duration::from_secs(10), "the expiry DELETE event", stream.message())
        .await??
        .expect("watch stream open");
    let elapsed = start.elapsed();
    let event = resp.events().first().expect("an event");
    assert_eq!(event.event_type(), EventType::Delete);
    assert_eq!(event.kv().map(|kv| kv.mod_revision()), Some(put_rev + 1));
    assert!(elapsed >= Duration::from_millis(1900), "expired early: {elapsed:?}");

    assert!(client.get("ephemeral", None).await?.kvs().is_empty());
    assert_eq!(client.lease_time_to_live(lease, None).await?.ttl(), -1);
    assert!(!lease_ids(&mut client).await?.contains(&lease));
    Ok(())
}

#[tokio::test]
async fn put_with_an_unknown_lease_fails() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let res = client.put("k", "v", Some(PutOptions::new().with_lease(0x9999))).await;
    expect_grpc_error(res, "NotFound", LEASE_NOT_FOUND)?;
    assert!(client.get("k", None).await?.kvs().is_empty());
    assert_eq!(current_revision(&mut client).await?, 1);
    Ok(())
}
