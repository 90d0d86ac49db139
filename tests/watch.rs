//! Watch: stream multiplexing, create/cancel, history replay, filters, progress, compaction,
//! event shapes, ordering under a slow reader, and resumption.

mod common;

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use common::{EVENT_TIMEOUT, TestServer, current_revision, next_watch, rev, skip_on_etcd, watch_events, within_for};
use etcd_client::{
    Client, DeleteOptions, Event, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

/// Opens a watch on a new stream and returns it with its creation acknowledgement.
async fn open(client: &mut Client, key: &str, opts: Option<WatchOptions>) -> Result<(WatchStream, WatchResponse)> {
    let mut stream = client.watch(key, opts).await?;
    let ack = expect_created(&mut stream).await?;
    Ok((stream, ack))
}

async fn expect_created(stream: &mut WatchStream) -> Result<WatchResponse> {
    let ack = next_watch(stream).await?;
    ensure!(ack.created(), "first response must be the creation ack: {ack:?}");
    ensure!(!ack.canceled(), "watch canceled at creation: {ack:?}");
    ensure!(ack.events().is_empty(), "creation ack carries no events: {ack:?}");
    Ok(ack)
}

/// Reads until `n` events arrived; returns (watch_id, event) pairs in arrival order.
async fn tagged_events(stream: &mut WatchStream, n: usize) -> Result<Vec<(i64, Event)>> {
    let mut out = Vec::new();
    for resp in watch_events(stream, n).await? {
        out.extend(resp.events().iter().map(|e| (resp.watch_id(), e.clone())));
    }
    Ok(out)
}

fn key_of(e: &Event) -> String {
    String::from_utf8_lossy(e.kv().expect("event has a kv").key()).into_owned()
}

fn mod_rev(e: &Event) -> i64 {
    e.kv().expect("event has a kv").mod_revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_many_watches_with_auto_ids() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, ack) = open(&mut client, "a", None).await?;
    assert_eq!(ack.watch_id(), 0, "auto ids start at 0");
    assert_eq!(rev(ack.header()), 1, "ack header carries the current revision");
    stream.watch("b", None).await?;
    let ack_b = expect_created(&mut stream).await?;
    assert_eq!(ack_b.watch_id(), 1);

    client.put("a", "1", None).await?;
    client.put("b", "2", None).await?;
    client.put("c", "3", None).await?;
    client.put("a", "4", None).await?;
    let got = tagged_events(&mut stream, 3).await?;
    let summary: Vec<(i64, String, i64)> = got.iter().map(|(id, e)| (*id, key_of(e), mod_rev(e))).collect();
    let mut sorted = summary.clone();
    sorted.sort_by_key(|(_, _, r)| *r);
    assert_eq!(sorted, [(0, "a".into(), 2), (1, "b".into(), 3), (0, "a".into(), 5)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_prefix_watches_see_only_their_keys() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut prefix, _) = open(&mut client, "p/", Some(WatchOptions::new().with_prefix())).await?;
    let (mut exact, _) = open(&mut client, "k", None).await?;
    let (mut from, _) = open(&mut client, "p", Some(WatchOptions::new().with_from_key())).await?;
    for key in ["p/a", "q", "p", "k1", "p/b", "k"] {
        client.put(key, "v", None).await?;
    }
    let got = tagged_events(&mut from, 4).await?;
    let seen: Vec<String> = got.iter().map(|(_, e)| key_of(e)).collect();
    assert_eq!(seen, ["p/a", "q", "p", "p/b"], "from-key watches every key >= p");
    let got = tagged_events(&mut prefix, 2).await?;
    let seen: Vec<String> = got.iter().map(|(_, e)| key_of(e)).collect();
    assert_eq!(seen, ["p/a", "p/b"]);
    let got = tagged_events(&mut exact, 1).await?;
    assert_eq!(key_of(&got[0].1), "k");
    assert_eq!(mod_rev(&got[0].1), 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_replays_history_then_streams_live() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    for v in ["v1", "v2", "v3"] {
        client.put("a", v, None).await?; // 2, 3, 4
    }
    client.put("other", "x", None).await?; // 5
    client.delete("a", None).await?; // 6
    let (mut stream, ack) = open(&mut client, "a", Some(WatchOptions::new().with_start_revision(2))).await?;
    assert_eq!(rev(ack.header()), 6);
    let got = tagged_events(&mut stream, 4).await?;
    let summary: Vec<(EventType, i64)> = got.iter().map(|(_, e)| (e.event_type(), mod_rev(e))).collect();
    use EventType::{Delete, Put};
    assert_eq!(summary, [(Put, 2), (Put, 3), (Put, 4), (Delete, 6)]);
    assert_eq!(got[1].1.kv().map(|kv| kv.value()), Some(&b"v2"[..]));

    client.put("a", "live", None).await?; // 7
    let live = tagged_events(&mut stream, 1).await?;
    assert_eq!(mod_rev(&live[0].1), 7);
    assert_eq!(live[0].1.kv().map(|kv| kv.value()), Some(&b"live"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_zero_means_now() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("x", "old", None).await?; // 2
    let (mut stream, ack) = open(&mut client, "x", None).await?;
    assert_eq!(rev(ack.header()), 2);
    client.put("x", "new", None).await?; // 3
    let got = tagged_events(&mut stream, 1).await?;
    assert_eq!(mod_rev(&got[0].1), 3, "no replay of revision 2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_start_revision_waits_for_that_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, _) = open(&mut client, "k", Some(WatchOptions::new().with_start_revision(3))).await?;
    client.put("k", "r2", None).await?;
    client.put("k", "r3", None).await?;
    let got = tagged_events(&mut stream, 1).await?;
    assert_eq!(mod_rev(&got[0].1), 3, "events before start_revision are not sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_on_put_and_delete() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, _) = open(&mut client, "k", Some(WatchOptions::new().with_prev_key())).await?;
    client.put("k", "v1", None).await?;
    client.put("k", "v2", None).await?;
    client.delete("k", None).await?;
    let got = tagged_events(&mut stream, 3).await?;
    assert!(got[0].1.prev_kv().is_none(), "a create has no prev_kv");
    let prev = got[1].1.prev_kv().expect("prev_kv on overwrite");
    assert_eq!((prev.value(), prev.mod_revision(), prev.version()), (&b"v1"[..], 2, 1));
    let prev = got[2].1.prev_kv().expect("prev_kv on delete");
    assert_eq!((prev.value(), prev.mod_revision(), prev.version()), (&b"v2"[..], 3, 2));

    // Without prev_kv the field stays empty.
    let (mut plain, _) = open(&mut client, "k", None).await?;
    client.put("k", "v3", None).await?;
    client.put("k", "v4", None).await?;
    let got = tagged_events(&mut plain, 2).await?;
    assert!(got[1].1.prev_kv().is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_puts_or_deletes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let no_put = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    let (mut deletes_only, _) = open(&mut client, "k", Some(no_put)).await?;
    let no_delete = WatchOptions::new().with_filters([WatchFilterType::NoDelete]);
    let (mut puts_only, _) = open(&mut client, "k", Some(no_delete)).await?;
    for _ in 0..2 {
        client.put("k", "v", None).await?;
        client.delete("k", None).await?;
    }
    let got = tagged_events(&mut deletes_only, 2).await?;
    let seen: Vec<(EventType, i64)> = got.iter().map(|(_, e)| (e.event_type(), mod_rev(e))).collect();
    assert_eq!(seen, [(EventType::Delete, 3), (EventType::Delete, 5)]);
    let got = tagged_events(&mut puts_only, 2).await?;
    let seen: Vec<(EventType, i64)> = got.iter().map(|(_, e)| (e.event_type(), mod_rev(e))).collect();
    assert_eq!(seen, [(EventType::Put, 2), (EventType::Put, 4)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_watch_ids() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, ack) = open(&mut client, "a", Some(WatchOptions::new().with_watch_id(100))).await?;
    assert_eq!(ack.watch_id(), 100);
    stream.watch("b", Some(WatchOptions::new().with_watch_id(7))).await?;
    assert_eq!(expect_created(&mut stream).await?.watch_id(), 7);

    // Reusing an id that is in use on this stream is refused: created and canceled at once.
    stream.watch("c", Some(WatchOptions::new().with_watch_id(100))).await?;
    let dup = next_watch(&mut stream).await?;
    assert!(dup.created() && dup.canceled(), "duplicate id answer: {dup:?}");
    assert_eq!(dup.watch_id(), -1);
    assert_eq!(dup.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");

    client.put("b", "1", None).await?;
    client.put("a", "1", None).await?;
    let mut got = tagged_events(&mut stream, 2).await?;
    got.sort_by_key(|(_, e)| mod_rev(e)); // no order is promised across watchers
    let ids: Vec<(i64, String)> = got.iter().map(|(id, e)| (*id, key_of(e))).collect();
    assert_eq!(ids, [(7, "b".to_string()), (100, "a".to_string())]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_events() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, ack) = open(&mut client, "k", None).await?;
    let first = ack.watch_id();
    client.put("k", "1", None).await?;
    tagged_events(&mut stream, 1).await?;

    stream.cancel(first).await?;
    let canceled = next_watch(&mut stream).await?;
    assert!(canceled.canceled(), "cancel is acknowledged: {canceled:?}");
    assert_eq!(canceled.watch_id(), first);
    assert!(canceled.events().is_empty());

    stream.watch("k", None).await?;
    let second = expect_created(&mut stream).await?.watch_id();
    assert_ne!(second, first);
    for v in ["2", "3"] {
        client.put("k", v, None).await?;
    }
    // Both events must arrive for the new watch, and nothing for the canceled one.
    for resp in watch_events(&mut stream, 2).await? {
        assert_eq!(resp.watch_id(), second, "event for a canceled watch: {resp:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_reports_the_current_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, _) = open(&mut client, "k", None).await?;
    client.put("unwatched", "1", None).await?; // 2
    client.put("unwatched", "2", None).await?; // 3
    stream.request_progress().await?;
    let progress = next_watch(&mut stream).await?;
    assert!(progress.events().is_empty(), "{progress:?}");
    assert!(!progress.created() && !progress.canceled());
    assert_eq!(progress.compact_revision(), 0);
    assert_eq!(progress.watch_id(), -1, "a progress response belongs to no watch");
    assert_eq!(rev(progress.header()), 3);
    Ok(())
}

/// Writes `txns` revisions under `b/`, each a txn of `per_txn` puts.
async fn write_batches(client: &mut Client, txns: usize, per_txn: usize) -> Result<i64> {
    let mut last = 0;
    for t in 0..txns {
        let ops: Vec<TxnOp> =
            (0..per_txn).map(|i| TxnOp::put(format!("b/{t:03}/{i:03}"), vec![b'v'; 256], None)).collect();
        last = rev(client.txn(Txn::new().and_then(ops)).await?.header());
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_response_never_overtakes_undelivered_events() -> Result<()> {
    if skip_on_etcd(
        "3.4.23 answers a progress request with the current revision while a watcher is still \
         replaying history (etcd-io/etcd#15220, fixed in 3.4.25/3.5.8)",
    ) {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let end = write_batches(&mut client, 100, 30).await?;
    let opts = WatchOptions::new().with_prefix().with_start_revision(1);
    let (mut stream, _) = open(&mut client, "b/", Some(opts)).await?;
    stream.request_progress().await?;

    // Bookmarkable: a progress answer at R means every event <= R was already delivered.
    let (mut delivered, mut progress_seen) = (1, false);
    while delivered < end || !progress_seen {
        let resp = next_watch(&mut stream).await?;
        ensure!(!resp.canceled(), "watch canceled: {resp:?}");
        if let Some(last) = resp.events().last() {
            delivered = mod_rev(last);
            continue;
        }
        let r = rev(resp.header());
        ensure!(r <= delivered, "progress at {r} sent before events after {delivered} were delivered");
        progress_seen = true;
    }
    Ok(())
}

/// Found by the jepsen watch workload: a progress notification could overtake events of a
/// synced watcher still queued on its stream (or being queued by publish), so an event at or
/// below a bookmark arrived after it. Under a steady write load with frequent notifications and
/// progress requests, no event may arrive at or below a notification's revision, and no
/// notification may report less than what was already delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_under_writes_are_bookmarks() -> Result<()> {
    const PUTS: usize = 600;
    let flags = ["--experimental-watch-progress-notify-interval", "5ms"];
    let server = TestServer::start_with(&flags).await?;
    let mut client = server.client().await?;
    let opts = WatchOptions::new().with_prefix().with_progress_notify();
    let (mut stream, _) = open(&mut client, "load/", Some(opts)).await?;
    let mut writer = server.client().await?;
    let writes = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..PUTS {
            last = rev(writer.put(format!("load/{}", i % 7), i.to_string(), None).await?.header());
        }
        anyhow::Ok(last)
    });
    let (mut delivered, mut bookmark, mut notifications, mut responses) = (0, 0, 0, 0);
    loop {
        let resp = next_watch(&mut stream).await?;
        ensure!(!resp.canceled(), "watch canceled: {resp:?}");
        responses += 1;
        if responses % 3 == 0 {
            stream.request_progress().await?;
        }
        match resp.events().first() {
            Some(first) => {
                ensure!(mod_rev(first) > bookmark, "event at {} after a notification at {bookmark}", mod_rev(first));
                delivered = mod_rev(resp.events().last().unwrap_or(first));
            }
            None => {
                let r = rev(resp.header());
                ensure!(r >= delivered, "notification at {r} after events up to {delivered} were delivered");
                bookmark = r;
                notifications += 1;
            }
        }
        if writes.is_finished() && delivered > PUTS as i64 {
            break;
        }
    }
    let last = writes.await??;
    assert_eq!(delivered, last);
    assert!(notifications > 10, "only {notifications} notifications: the test did not exercise the race");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_arrives_on_idle_watchers() -> Result<()> {
    let flags = ["--experimental-watch-progress-notify-interval", "500ms"];
    let server = TestServer::start_with(&flags).await?;
    let mut client = server.client().await?;
    client.put("unwatched", "1", None).await?; // 2
    let opts = WatchOptions::new().with_progress_notify();
    let (mut stream, ack) = open(&mut client, "k", Some(opts)).await?;
    // A second watcher on the same stream did not ask for notifications and gets none.
    stream.watch("j", None).await?;
    expect_created(&mut stream).await?;
    for _ in 0..2 {
        // etcd adds up to 10% jitter and checks idle watchers on its own tick; allow a few intervals.
        let notify = within_for(Duration::from_secs(5), "a progress notification", stream.message())
            .await??
            .expect("stream open");
        assert!(notify.events().is_empty(), "{notify:?}");
        assert!(!notify.created() && !notify.canceled());
        assert_eq!(notify.watch_id(), ack.watch_id(), "progress_notify is sent per watcher");
        assert_eq!(rev(notify.header()), 2);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_is_canceled() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    for v in ["1", "2", "3"] {
        client.put("k", v, None).await?; // 2, 3, 4
    }
    client.compact(3, None).await?;
    let mut stream = client.watch("k", Some(WatchOptions::new().with_start_revision(2))).await?;
    let mut resp = next_watch(&mut stream).await?;
    if resp.created() && !resp.canceled() {
        // etcd 3.4.23 acknowledges the creation first, then cancels.
        resp = next_watch(&mut stream).await?;
    }
    assert!(resp.canceled() && !resp.created(), "{resp:?}");
    assert_eq!(resp.compact_revision(), 3, "the oldest revision still watchable");
    assert_eq!(resp.watch_id(), 0);
    assert!(resp.events().is_empty());
    // etcd 3.4.23 leaves the reason empty (clientv3 derives ErrCompacted from compact_revision).
    let reason = resp.cancel_reason();
    assert!(reason.is_empty() || reason == "etcdserver: mvcc: required revision has been compacted", "{reason}");

    // The compaction revision itself is still watchable.
    let (mut ok, _) = open(&mut client, "k", Some(WatchOptions::new().with_start_revision(3))).await?;
    let got = tagged_events(&mut ok, 2).await?;
    assert_eq!(got.iter().map(|(_, e)| mod_rev(e)).collect::<Vec<_>>(), [3, 4]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_events_arrive_in_one_response_in_op_order() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("t/c", "x", None).await?; // 2
    let (mut stream, _) = open(&mut client, "t/", Some(WatchOptions::new().with_prefix())).await?;
    let txn = Txn::new().and_then([
        TxnOp::put("t/b", "1", None),
        TxnOp::put("t/a", "2", None),
        TxnOp::delete("t/c", None),
        TxnOp::put("u", "outside", None),
    ]);
    client.txn(txn).await?;
    let resp = next_watch(&mut stream).await?;
    let seen: Vec<(EventType, String, i64)> =
        resp.events().iter().map(|e| (e.event_type(), key_of(e), mod_rev(e))).collect();
    use EventType::{Delete, Put};
    assert_eq!(
        seen,
        [(Put, "t/b".into(), 3), (Put, "t/a".into(), 3), (Delete, "t/c".into(), 3)],
        "one revision is never split across responses"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_event_carries_only_key_and_mod_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let lease = client.lease_grant(60, None).await?.id();
    client.put("k", "value", Some(PutOptions::new().with_lease(lease))).await?; // 2
    let (mut stream, _) = open(&mut client, "k", None).await?;
    client.delete("k", Some(DeleteOptions::new().with_prev_key())).await?; // 3
    let got = tagged_events(&mut stream, 1).await?;
    let event = &got[0].1;
    assert_eq!(event.event_type(), EventType::Delete);
    let kv = event.kv().expect("delete event has a kv");
    assert_eq!(kv.key(), b"k");
    assert_eq!(kv.mod_revision(), 3);
    assert_eq!((kv.create_revision(), kv.version(), kv.lease()), (0, 0, 0));
    assert!(kv.value().is_empty());
    assert!(event.prev_kv().is_none(), "prev_kv only when the watch asked for it");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_create_means_version_one() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, _) = open(&mut client, "k", None).await?;
    client.put("k", "1", None).await?; // 2 create
    client.put("k", "2", None).await?; // 3 update
    client.delete("k", None).await?; // 4
    client.put("k", "3", None).await?; // 5 create again
    let got = tagged_events(&mut stream, 4).await?;
    let shape: Vec<(EventType, i64, i64, i64)> = got
        .iter()
        .map(|(_, e)| {
            let kv = e.kv().expect("kv");
            (e.event_type(), kv.create_revision(), kv.mod_revision(), kv.version())
        })
        .collect();
    use EventType::{Delete, Put};
    assert_eq!(shape, [(Put, 2, 2, 1), (Put, 2, 3, 2), (Delete, 0, 4, 0), (Put, 5, 5, 1)]);
    Ok(())
}

const SLOW_PUTS: usize = 5_000;
const SLOW_WRITERS: usize = 16;

async fn write_many(client: &Client) -> Result<usize> {
    let mut tasks = Vec::new();
    for w in 0..SLOW_WRITERS {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'x'; 1024];
            for i in (w..SLOW_PUTS).step_by(SLOW_WRITERS) {
                c.put(format!("s/{i:05}"), value.clone(), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(SLOW_PUTS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_loses_nothing_and_does_not_block_writers() -> Result<()> {
    let server = TestServer::start().await?;
    let mut watcher_client = server.client().await?;
    let writer_client = server.client().await?;
    let (mut stream, _) = open(&mut watcher_client, "s/", Some(WatchOptions::new().with_prefix())).await?;

    // Nobody reads the watch while the writes run; they must all complete anyway.
    let written = within_for(Duration::from_secs(90), "5,000 puts", write_many(&writer_client)).await??;
    assert_eq!(written, SLOW_PUTS);
    let end = current_revision(&mut watcher_client.clone()).await?;
    assert_eq!(end, 1 + SLOW_PUTS as i64);

    let mut last = 1;
    let mut count = 0;
    while count < SLOW_PUTS {
        let resp = within_for(EVENT_TIMEOUT, "slow watcher catch-up", stream.message()).await??.expect("stream open");
        if resp.canceled() {
            ensure!(!resp.cancel_reason().is_empty(), "canceled without a reason: {resp:?}");
            bail!("slow watcher canceled after {count} events: {}", resp.cancel_reason());
        }
        for e in resp.events() {
            ensure!(mod_rev(e) == last + 1, "event out of order or lost: {} after {last}", mod_rev(e));
            ensure!(e.event_type() == EventType::Put);
            ensure!(e.kv().map(|kv| kv.value().len()) == Some(1024));
            last = mod_rev(e);
            count += 1;
        }
    }
    assert_eq!(last, end);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_last_revision_plus_one() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let (mut stream, _) = open(&mut client, "r/", Some(WatchOptions::new().with_prefix())).await?;
    client.put("r/a", "1", None).await?; // 2
    client.put("r/b", "2", None).await?; // 3
    let got = tagged_events(&mut stream, 2).await?;
    let last = mod_rev(&got[1].1);
    drop(stream);

    client.put("r/c", "3", None).await?; // 4, while disconnected
    client.delete("r/a", None).await?; // 5
    let opts = WatchOptions::new().with_prefix().with_start_revision(last + 1);
    let (mut resumed, _) = open(&mut client, "r/", Some(opts)).await?;
    client.put("r/d", "4", None).await?; // 6
    let got = tagged_events(&mut resumed, 3).await?;
    let seen: Vec<(String, i64)> = got.iter().map(|(_, e)| (key_of(e), mod_rev(e))).collect();
    assert_eq!(seen, [("r/c".into(), 4), ("r/a".into(), 5), ("r/d".into(), 6)]);
    Ok(())
}

/// A watcher that asked for `fragment` gets a response larger than
/// --max-request-bytes split into several; one that did not gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_only_when_asked() -> Result<()> {
    let server = TestServer::start_with(&["--max-request-bytes", "10000"]).await?;
    let mut client = server.client().await?;
    let value = |c: u8| vec![c; 3000];
    for k in ["f/a", "f/b", "f/c"] {
        client.put(k, value(b'1'), None).await?;
    }
    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let (mut fragmented, _) = open(&mut client, "f/", Some(opts.clone().with_fragment())).await?;
    let (mut whole, _) = open(&mut client, "f/", Some(opts)).await?;
    let txn = Txn::new().and_then(["f/a", "f/b", "f/c"].map(|k| TxnOp::put(k, value(b'2'), None)));
    let revision = rev(client.txn(txn).await?.header());

    let mut parts = 0;
    let mut keys = Vec::new();
    while keys.len() < 3 {
        let resp = next_watch(&mut fragmented).await?;
        parts += 1;
        for e in resp.events() {
            ensure!(mod_rev(e) == revision, "every part belongs to revision {revision}");
            keys.push(key_of(e));
        }
    }
    assert_eq!(keys, ["f/a", "f/b", "f/c"], "fragments keep op order and lose nothing");
    assert!(parts > 1, "an 18 KB revision over a 10 KB limit arrives in fragments");
    if !common::is_etcd() {
        let resp = next_watch(&mut whole).await?;
        assert_eq!(resp.events().len(), 3, "without fragment the revision arrives whole");
    }
    Ok(())
}

/// A sole voter is its own quorum: its require-leader streams (`hasleader`, as Kubernetes' API
/// server sets) stay open past the three leaderless checks that would cancel them elsewhere.
#[tokio::test]
async fn require_leader_watch_stays_open_on_a_single_member() -> Result<()> {
    const ELECTION_MS: u64 = 100;
    let server = TestServer::start_with(&["--heartbeat-interval", "20", "--election-timeout", "100"]).await?;
    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut client = Client::connect([server.endpoint()], Some(options)).await?;
    let mut stream = client.watch("solo/", Some(WatchOptions::new().with_prefix())).await?;
    ensure!(next_watch(&mut stream).await?.created(), "the first watch response is not the creation");
    // Puts spanning ten election timeouts, each delivered: the stream was never cancelled.
    for i in 0..20 {
        client.put(format!("solo/{i}"), "v", None).await?;
        let resp = next_watch(&mut stream).await?;
        ensure!(!resp.canceled() && resp.events().len() == 1, "put {i}: {resp:?}");
        tokio::time::sleep(Duration::from_millis(ELECTION_MS / 2)).await;
    }
    Ok(())
}
