//! Network faults and membership changes on three-member clusters: an isolated leader commits
//! nothing, membership changes under load lose no acknowledged write, and a forwarded write whose
//! answer was lost is applied once, and a retried membership change finishes what its first
//! attempt began.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::cluster::{
    ClusterOpts, TestCluster, UNHEALTHY, Writers, check_acked, check_acked_with, connect_with, serial,
};
use common::proxy::Dir;
use common::{grpc_status, rev, skip_on_etcd, within_for};
use etcd_client::MemberAddOptions;
use store::proto::peerpb::{self, member_change::Change, peer_client::PeerClient};

const NOT_IN_SYNC: &str = "can only promote a learner member which is in sync with leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_commits_nothing() -> Result<()> {
    if skip_on_etcd("needs --experimental-peer-dial-overrides to proxy the peer links") {
        return Ok(());
    }
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts { proxied: true, ..ClusterOpts::default() }).await?;
    let old = cluster.leader().await?;
    let old_id = cluster.member_id(old);
    let majority = cluster.live_except(old);
    let mut old_client = connect_with(&[cluster.endpoint(old)], Duration::from_secs(5)).await?;
    old_client.put("p/before", "ok", None).await?;

    cluster.isolate(old)?;
    let started = Instant::now();
    let lost = within_for(Duration::from_secs(10), "a put to the isolated leader", old_client.put("p/lost", "x", None))
        .await?;
    ensure!(lost.is_err(), "the isolated leader acknowledged a put: {lost:?}");
    eprintln!("put to the isolated leader failed after {:?}: {:?}", started.elapsed(), lost.err());

    let new = cluster.leader_among(&majority).await?;
    assert_ne!(new, old);
    let mut majority_client = cluster.client_for(&majority).await?;
    let written = majority_client.put("p/majority", "yes", None).await?;

    cluster.heal_all();
    let agreed = cluster.leader().await?;
    assert_ne!(cluster.member_id(agreed), old_id, "the old leader stepped down");
    cluster.converge(&[0, 1, 2]).await?;
    for i in 0..3 {
        let mut client = cluster.client(i).await?;
        let serializable = Some(etcd_client::GetOptions::new().with_serializable());
        let lost = client.get("p/lost", serializable.clone()).await?;
        assert_eq!(lost.count(), 0, "member {i} has the write made to the isolated leader");
        let kept = client.get("p/majority", serializable).await?;
        assert_eq!(kept.kvs().first().map(|kv| kv.mod_revision()), Some(rev(written.header())), "member {i}");
    }
    Ok(())
}

/// Found by the jepsen lease workload: a leader that lost its quorum (here: isolated; there:
/// paused and resumed) still renewed leases in its own lessor and answered the keep-alive with
/// a full TTL, while the real leader's clock ran out and deleted the keys. A keep-alive must
/// confirm leadership first (etcd's ensureLeadership), so the isolated leader cannot answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_does_not_renew_leases() -> Result<()> {
    if skip_on_etcd("needs --experimental-peer-dial-overrides to proxy the peer links") {
        return Ok(());
    }
    let _serial = serial().await;
    let cluster = TestCluster::start(3, ClusterOpts { proxied: true, ..ClusterOpts::default() }).await;
    let mut cluster = cluster?;
    let old = cluster.leader().await?;
    let mut old_client = connect_with(&[cluster.endpoint(old)], Duration::from_secs(4)).await?;
    let lease = old_client.lease_grant(30, None).await?.id();
    // Renewing works while the leader has its quorum.
    let (mut keeper, mut replies) = old_client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    let ttl = replies.message().await?.map(|r| r.ttl());
    assert_eq!(ttl, Some(30));

    cluster.isolate(old)?;
    // An error or no answer at all are both right; an answer with a TTL is the bug.
    let renewed = tokio::time::timeout(Duration::from_secs(15), async {
        keeper.keep_alive().await?;
        anyhow::Ok(replies.message().await?.map(|r| r.ttl()))
    })
    .await;
    match renewed {
        Ok(Ok(Some(ttl))) if ttl > 0 => panic!("the isolated leader renewed the lease (TTL {ttl})"),
        other => eprintln!("keep-alive on the isolated leader: {other:?}"),
    }
    cluster.heal_all();
    Ok(())
}

/// Found by the jepsen lease workload: a deposed leader whose lease clock ran out proposed the
/// expiry revoke, and the proposal path forwarded it to the new leader once the old one learned
/// of it, so the new leader deleted a lease it had just renewed. Expiry may only be proposed by
/// the leader whose clock decided it, without forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deposed_leaders_lease_expiry_is_not_forwarded() -> Result<()> {
    if skip_on_etcd("needs --experimental-peer-dial-overrides to proxy the peer links") {
        return Ok(());
    }
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts { proxied: true, ..ClusterOpts::default() }).await?;
    let old = cluster.leader().await?;
    let majority = cluster.live_except(old);
    let mut client = cluster.client_for(&majority).await?;
    let lease = client.lease_grant(2, None).await?.id();
    client.put("lease/kept", "v", Some(etcd_client::PutOptions::new().with_lease(lease))).await?;

    // The old leader keeps believing it leads; its clock for the lease runs out after 2 s and it
    // keeps retrying the expiry revoke, while the majority's leader keeps the lease alive.
    cluster.isolate(old)?;
    let renew_until = |secs| Instant::now() + Duration::from_secs(secs);
    let keep_alive = async |client: &mut etcd_client::Client, until: Instant| -> Result<()> {
        while Instant::now() < until {
            if let Ok(Ok((mut keeper, mut replies))) =
                tokio::time::timeout(Duration::from_secs(1), client.lease_keep_alive(lease)).await
            {
                keeper.keep_alive().await?;
                let ttl = replies.message().await?.map(|r| r.ttl());
                ensure!(ttl.is_none_or(|t| t > 0), "the kept lease is gone (TTL {ttl:?})");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    };
    keep_alive(&mut client, renew_until(4)).await?;
    // Healed while the old leader still retries its revoke: it now learns who leads.
    cluster.heal_all();
    keep_alive(&mut client, renew_until(6)).await?;
    let kept = client.get("lease/kept", None).await?;
    assert_eq!(kept.count(), 1, "the key of a lease kept alive on the new leader was deleted");
    Ok(())
}

/// Found by the jepsen member nemesis: a leader removing itself stopped as soon as the final
/// configuration was appended to its own log, before it was committed, leaving the survivors in
/// the joint configuration that still counted the removed member (they kept asking it for
/// votes, and the next membership change hung). It must stop only once its removal is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_leader_leaves_a_finished_configuration() -> Result<()> {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.leader().await?;
    let leader_id = cluster.member_id(leader);
    let survivors = cluster.live_except(leader);
    let mut admin = cluster.client_for(&survivors).await?;
    TestCluster::member_remove(&mut admin, leader_id).await.context("MemberRemove of the leader")?;
    cluster.wait_exit(leader, Duration::from_secs(20)).await.context("the removed leader did not stop")?;
    let listed = |members: &[etcd_client::Member]| members.iter().any(|m| m.id() == leader_id);
    let members = admin.member_list().await?;
    assert!(!listed(members.members()), "the removed leader is still listed: {:?}", members.members());
    // The two survivors finish on their own and take a new member without help.
    let added = within_for(
        Duration::from_secs(30),
        "a member added after the leader's removal",
        cluster.add_member("late", false),
    )
    .await?;
    let added = added?;
    let all: Vec<usize> = survivors.iter().copied().chain([added]).collect();
    cluster.converge(&all).await?;
    Ok(())
}

/// A membership change is retried against the leader when the member executing it lost its
/// leadership or its answer was lost (found in CI: a MemberAdd right after a leader removed itself
/// failed with "not leader"). The first attempt may have done part of the change (openraft adds a
/// voter as a learner first) or all of it, so the leader takes a retry's finished steps as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_membership_change_finishes_what_its_first_attempt_began() -> Result<()> {
    if skip_on_etcd("speaks geobuk's peer protocol") {
        return Ok(());
    }
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.leader().await?;
    let header = cluster.status(leader).await?.header().cloned().context("status header")?;
    let route = peerpb::Route { cluster_id: header.cluster_id(), from: 1, to: cluster.member_id(leader) };
    let mut peer =
        PeerClient::connect(cluster.member(leader).peer_url()).await.context("dial the leader's peer port")?;
    let (ghost, url) = (0x5eed_u64, format!("http://127.0.0.1:{}", common::free_port()?));
    let add =
        |is_learner, url: &str| Change::Add(peerpb::AddMember { id: ghost, peer_urls: vec![url.into()], is_learner });
    let mut change = async |change: Change, retry: bool| {
        let msg = peerpb::MemberChange { route: Some(route), change: Some(change), retry };
        let members = peer.change_members(msg).await.map(|r| r.into_inner().members);
        members.map(|m| m.iter().find(|m| m.id == ghost).map(|m| m.is_learner)).map_err(|s| s.message().to_string())
    };
    let exists = Err("etcdserver: member ID already exist".to_string());
    let not_found = Err("etcdserver: member not found".to_string());

    ensure!(change(add(true, &url), false).await == Ok(Some(true)), "added as a learner");
    ensure!(change(add(true, &url), false).await == exists, "a first attempt with a taken id is refused");
    // The voter's first attempt added the learner and lost its leader: the retry promotes it.
    ensure!(change(add(false, &url), true).await == Ok(Some(false)), "the retried add made it a voter");
    ensure!(change(add(false, &url), true).await == Ok(Some(false)), "a retry of a finished add");
    let other = format!("http://127.0.0.1:{}", common::free_port()?);
    ensure!(change(add(false, &other), true).await == exists, "the same id with other peer URLs is another member");
    let promoted = change(Change::Promote(ghost), false).await;
    ensure!(promoted == Err("etcdserver: can only promote a learner member".into()), "promote a voter: {promoted:?}");
    ensure!(change(Change::Promote(ghost), true).await == Ok(Some(false)), "a retry of a finished promotion");
    ensure!(change(Change::Remove(ghost), false).await == Ok(None), "removed");
    ensure!(change(Change::Remove(ghost), true).await == Ok(None), "a retry of a finished removal");
    ensure!(change(Change::Remove(ghost), false).await == not_found, "a first attempt to remove a stranger");
    let mut client = cluster.client(leader).await?;
    client.put("after/changes", "ok", None).await?;
    cluster.converge(&[0, 1, 2]).await?;
    Ok(())
}

/// etcd's `--strict-reconfig-check` (on by default): with one of three members down, the leader
/// refuses what would leave no quorum of reachable voters, removing another voter or adding one,
/// with etcd's "unhealthy cluster", and lets the member that is down be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_that_would_lose_the_quorum_are_refused() -> Result<()> {
    let _serial = serial().await;
    let opts = ClusterOpts::default();
    let mut cluster = TestCluster::start(3, opts.clone()).await?;
    let leader = cluster.leader().await?;
    let followers = cluster.live_except(leader);
    let (down, up) = (followers[0], followers[1]);
    cluster.kill9(down)?;
    // What counts as down is time: geobuk's leader has not heard from the member for an election
    // timeout (etcd's peer connection is gone at once). No event marks it.
    tokio::time::sleep(Duration::from_millis(opts.election_ms * 2)).await;
    let mut admin = cluster.client(leader).await?;
    let refused = admin.member_remove(cluster.member_id(up)).await;
    common::expect_grpc_error(refused, "Unavailable", UNHEALTHY).context("removing the other follower")?;
    // Through the follower, forwarded: the leader's refusal is the answer, not a reason to retry.
    let mut via_follower = cluster.client(up).await?;
    let refused = via_follower.member_add(["http://127.0.0.1:9"], None).await;
    common::expect_grpc_error(refused, "Unavailable", UNHEALTHY).context("adding a voter through the follower")?;
    let refused = via_follower.member_remove(cluster.member_id(up)).await;
    common::expect_grpc_error(refused, "Unavailable", UNHEALTHY).context("the follower removing itself")?;
    let learner = MemberAddOptions::new().with_is_learner();
    let refused = admin.member_add(["http://127.0.0.1:9"], Some(learner)).await;
    common::expect_grpc_error(refused, "Unavailable", UNHEALTHY).context("adding a learner")?;
    TestCluster::member_remove(&mut admin, cluster.member_id(down))
        .await
        .context("removing the member that is down")?;
    let listed: BTreeSet<u64> = admin.member_list().await?.members().iter().map(|m| m.id()).collect();
    let expected: BTreeSet<u64> = [leader, up].iter().map(|&i| cluster.member_id(i)).collect();
    ensure!(listed == expected, "members {listed:x?} after the removal, expected {expected:x?}");
    admin.put("after", "removal", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_load() -> Result<()> {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.leader().await?;
    let followers = cluster.live_except(leader);
    let (keep, removed) = (followers[0], followers[1]);
    let removed_id = cluster.member_id(removed);

    let mut clients = Vec::new();
    for w in 0..4 {
        clients.push(cluster.client(if w % 2 == 0 { leader } else { keep }).await?);
    }
    let writers = Writers::start("members/", clients);
    writers.wait_acked(100, Duration::from_secs(30)).await?;

    // A learner joins and catches up.
    let learner = cluster.add_member("m3", true).await?;
    let learner_id = cluster.member_id(learner);
    assert!(cluster.status(learner).await?.is_learner(), "joined as a learner");
    let target = common::rev(cluster.status(leader).await?.header());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = common::rev(cluster.status(learner).await?.header());
        if at >= target {
            break;
        }
        ensure!(Instant::now() < deadline, "learner at revision {at}, leader was at {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Promote (the leader refuses until the learner's log is close enough to its own).
    let mut admin = cluster.client_for(&[leader, keep]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refusals = 0;
    loop {
        match admin.member_promote(learner_id).await {
            Ok(_) => break,
            Err(e) => {
                let (code, message) = grpc_status(&e).with_context(|| format!("promote: {e:?}"))?;
                ensure!(message.contains(NOT_IN_SYNC), "promote failed with {code} {message:?}");
                refusals += 1;
                ensure!(Instant::now() < deadline, "learner never in sync: {code} {message:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("promoted after {refusals} 'not in sync' refusals");
    writers.wait_more(100, Duration::from_secs(30)).await?;

    // An original follower leaves.
    TestCluster::member_remove(&mut admin, removed_id).await?;
    match cluster.wait_exit(removed, Duration::from_secs(10)).await {
        Ok(status) => eprintln!("the removed member exited by itself: {status}"),
        Err(_) => {
            eprintln!("the removed member still ran 10 s after its removal; killing it");
            cluster.kill9(removed)?;
        }
    }
    writers.wait_more(200, Duration::from_secs(30)).await?;
    let acked = writers.stop().await?;
    eprintln!("{} puts acknowledged", acked.len());

    let final_set = [leader, keep, learner];
    cluster.converge(&final_set).await?;
    let mut client = cluster.client_for(&final_set).await?;
    check_acked(&mut client, "members/", &acked).await?;
    for &i in &final_set {
        let mut c = cluster.client(i).await?;
        check_acked_with(&mut c, "members/", &acked, true).await.with_context(|| format!("member {i}"))?;
    }
    let list = client.member_list().await?;
    let got: BTreeSet<(u64, String, bool)> =
        list.members().iter().map(|m| (m.id(), m.name().to_string(), m.is_learner())).collect();
    let expected: BTreeSet<(u64, String, bool)> =
        final_set.iter().map(|&i| (cluster.member_id(i), cluster.member(i).name.clone(), false)).collect();
    assert_eq!(got, expected);
    let agreed = cluster.leader_among(&final_set).await?;
    ensure!(final_set.contains(&agreed), "the leader is one of the new set");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_forward_applies_once() -> Result<()> {
    if skip_on_etcd("needs --experimental-peer-dial-overrides to proxy the peer links") {
        return Ok(());
    }
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, ClusterOpts { proxied: true, ..ClusterOpts::default() }).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.live_except(leader)[0];
    let mut client = connect_with(&[cluster.endpoint(follower)], Duration::from_secs(30)).await?;
    client.put("fwd/warm-up", "x", None).await?;

    // The leader's answers to the follower's forwarded requests are lost for 3 s.
    let link = cluster.link(follower, leader)?;
    link.blackhole(Dir::ToClient);
    let put = tokio::spawn(async move { client.put("fwd/once", "v", None).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dropped = link.dropped_bytes();
    link.pass(Dir::ToClient);

    let resp = within_for(Duration::from_secs(40), "the forwarded put", put).await???;
    ensure!(dropped > 0, "nothing was forwarded over the follower->leader link while its answers were dropped");
    let put_rev = rev(resp.header());
    let mut all = cluster.client_all().await?;
    let got = all.get("fwd/once", None).await?;
    let kv = got.kvs().first().context("fwd/once missing")?;
    assert_eq!(
        (kv.version(), kv.create_revision(), kv.mod_revision()),
        (1, put_rev, put_rev),
        "applied exactly once at the acknowledged revision"
    );
    cluster.converge(&[0, 1, 2]).await?;
    Ok(())
}

/// The link proxy itself (no store involved): bytes pass, are dropped per direction on an open
/// connection, a connection that lost bytes is closed when healed, and reset closes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_blackholes_heals_and_resets() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    // An echo server that counts the bytes it received.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    let proxy = common::proxy::Proxy::start(target).await?;
    let quiet = Duration::from_millis(300);

    async fn echo(conn: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>> {
        conn.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        within_for(Duration::from_secs(5), "an echo", conn.read_exact(&mut buf)).await??;
        Ok(buf)
    }
    async fn closed(conn: &mut TcpStream) -> Result<bool> {
        let mut buf = [0u8; 16];
        Ok(matches!(within_for(Duration::from_secs(5), "close", conn.read(&mut buf)).await?, Ok(0) | Err(_)))
    }

    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    assert_eq!(echo(&mut conn, b"hello").await?, b"hello");

    // Client -> server bytes dropped: the server never sees them.
    proxy.blackhole(Dir::ToServer);
    let before = received.load(Ordering::SeqCst);
    conn.write_all(b"lost").await?;
    let mut buf = [0u8; 16];
    ensure!(tokio::time::timeout(quiet, conn.read(&mut buf)).await.is_err(), "bytes passed a blackhole");
    assert_eq!(received.load(Ordering::SeqCst), before, "the server got blackholed bytes");
    proxy.pass(Dir::ToServer);
    assert!(closed(&mut conn).await?, "a connection that lost bytes is closed on heal");
    assert!(proxy.dropped_bytes() >= 4);

    // Server -> client bytes dropped: the server gets the request, the answer is lost.
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    assert_eq!(echo(&mut conn, b"again").await?, b"again");
    proxy.blackhole(Dir::ToClient);
    let before = received.load(Ordering::SeqCst);
    conn.write_all(b"answer-lost").await?;
    ensure!(tokio::time::timeout(quiet, conn.read(&mut buf)).await.is_err(), "the answer passed a blackhole");
    assert_eq!(received.load(Ordering::SeqCst), before + 11, "the request reached the server");
    proxy.pass(Dir::ToClient);
    assert!(closed(&mut conn).await?, "closed on heal");

    // Reset closes open connections; new ones work.
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    assert_eq!(echo(&mut conn, b"third").await?, b"third");
    proxy.reset();
    assert!(closed(&mut conn).await?, "reset closes the connection");
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    assert_eq!(echo(&mut conn, b"fresh").await?, b"fresh");
    assert!(proxy.accepted() >= 4);
    server.abort();
    Ok(())
}
