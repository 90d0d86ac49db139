//! Durability: every acknowledged write, lease and compaction survives SIGKILL and SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use common::{TestServer, current_revision, expect_grpc_error, is_etcd, rev, within_for};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const WRITERS: usize = 8;
const PUTS_PER_WRITER: usize = 250;
const KILL_AFTER_ACKS: usize = 500;

/// key -> (value, mod_revision) as acknowledged by the server.
type Acked = BTreeMap<String, (String, i64)>;

async fn concurrent_puts(client: &Client) -> Result<Acked> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PUTS_PER_WRITER {
                let (key, value) = (format!("w/{w}/{i:04}"), format!("value-{w}-{i}"));
                let resp = c.put(key.clone(), value.clone(), None).await?;
                acked.push((key, (value, rev(resp.header()))));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut all = Acked::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn check_acked(client: &mut Client, acked: &Acked) -> Result<()> {
    let resp = client.get("w/", Some(GetOptions::new().with_prefix())).await?;
    let stored: BTreeMap<String, (String, i64, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            (key, (value, kv.mod_revision(), kv.create_revision()))
        })
        .collect();
    for (key, (value, mod_rev)) in acked {
        let got = stored.get(key);
        ensure!(
            got == Some(&(value.clone(), *mod_rev, *mod_rev)),
            "acknowledged {key}={value}@{mod_rev} but found {got:?}"
        );
    }
    Ok(())
}

struct Fixture {
    acked: Acked,
    lease: i64,
    compact_rev: i64,
    final_rev: i64,
}

async fn write_fixture(client: &mut Client) -> Result<Fixture> {
    let lease = client.lease_grant(600, None).await?.id();
    for key in ["lease/a", "lease/b"] {
        client.put(key, "leased", Some(PutOptions::new().with_lease(lease))).await?;
    }
    let acked = concurrent_puts(client).await?;
    ensure!(acked.len() == WRITERS * PUTS_PER_WRITER);
    let compact_rev = current_revision(client).await? / 2;
    client.compact(compact_rev, None).await?;
    let final_rev = current_revision(client).await?;
    assert_eq!(final_rev, 1 + 2 + (WRITERS * PUTS_PER_WRITER) as i64);
    Ok(Fixture { acked, lease, compact_rev, final_rev })
}

async fn check_fixture(client: &mut Client, f: &Fixture) -> Result<()> {
    check_acked(client, &f.acked).await?;
    assert_eq!(current_revision(client).await?, f.final_rev, "header revision survives");

    let ttl = client.lease_time_to_live(f.lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await?;
    assert!(ttl.ttl() > 0, "lease survives: ttl {}", ttl.ttl());
    assert_eq!(ttl.granted_ttl(), 600);
    let mut attached: Vec<&[u8]> = ttl.keys().iter().map(|k| k.as_slice()).collect();
    attached.sort();
    assert_eq!(attached, [&b"lease/a"[..], &b"lease/b"[..]]);

    let below = client.get("w/", Some(GetOptions::new().with_prefix().with_revision(f.compact_rev - 1))).await;
    expect_grpc_error(below, "OutOfRange", COMPACTED)?;
    let again = client.compact(f.compact_rev, None).await;
    expect_grpc_error(again, "OutOfRange", COMPACTED)?;
    let at = client.get("w/", Some(GetOptions::new().with_prefix().with_revision(f.compact_rev))).await?;
    assert_eq!(at.count(), f.compact_rev - 3, "keys written up to the compaction revision");

    let next = client.put("after-restart", "x", None).await?;
    assert_eq!(rev(next.header()), f.final_rev + 1, "writes continue from revision + 1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() -> Result<()> {
    let mut server = TestServer::start().await?;
    let mut client = server.client().await?;
    let fixture = write_fixture(&mut client).await?;
    drop(client);

    server.kill9()?;
    server.restart().await?;
    let mut client = server.client().await?;
    check_fixture(&mut client, &fixture).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_shuts_down_cleanly_and_keeps_everything() -> Result<()> {
    let mut server = TestServer::start().await?;
    let mut client = server.client().await?;
    let fixture = write_fixture(&mut client).await?;
    drop(client);

    let status = server.terminate().await?;
    if !is_etcd() {
        // etcd re-raises SIGTERM after its shutdown handlers, so it dies "by signal 15".
        assert!(status.success(), "geobuk exits 0 on SIGTERM, got {status}");
    }
    server.restart().await?;
    let mut client = server.client().await?;
    check_fixture(&mut client, &fixture).await
}

/// Writers run until the server dies under them; only acknowledged puts are recorded. `enough`
/// is signalled once `KILL_AFTER_ACKS` puts were acknowledged.
fn write_until_killed(client: &Client, acked: Arc<Mutex<Acked>>, enough: Arc<Notify>) -> Vec<JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let mut c = client.clone();
            let (acked, enough) = (acked.clone(), enough.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let (key, value) = (format!("w/{w}/{i:06}"), format!("v{i}"));
                    let Ok(resp) = c.put(key.clone(), value.clone(), None).await else {
                        return;
                    };
                    let mut acked = acked.lock().expect("lock");
                    acked.insert(key, (value, rev(resp.header())));
                    if acked.len() == KILL_AFTER_ACKS {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_concurrent_writes() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client().await?;
    let acked = Arc::new(Mutex::new(Acked::new()));
    let enough = Arc::new(Notify::new());
    let tasks = write_until_killed(&client, acked.clone(), enough.clone());
    within_for(Duration::from_secs(60), "acknowledged writes", enough.notified()).await?;
    // Writes are still in flight when the process dies.
    server.kill9()?;
    let acked = acked.lock().expect("lock").clone();
    for t in &tasks {
        t.abort();
    }
    drop(client);
    let max_acked = acked.values().map(|(_, r)| *r).max().unwrap_or(1);

    server.restart().await?;
    let mut client = server.client().await?;
    check_acked(&mut client, &acked).await?;
    let now = current_revision(&mut client).await?;
    assert!(now >= max_acked, "revision {now} went behind an acknowledged write {max_acked}");
    Ok(())
}

/// SIGTERM ends the server even while a client holds a watch stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_watch_stream_exits() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let mut client = server.client().await?;
    let mut stream = client.watch("w", None).await?;
    common::next_watch(&mut stream).await?;
    let status =
        common::within_for(std::time::Duration::from_secs(20), "exit after SIGTERM", server.terminate()).await??;
    if !common::is_etcd() {
        assert!(status.success(), "clean exit: {status}");
    }
    Ok(())
}
