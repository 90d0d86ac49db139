//! KV service: Range options, revision semantics, Put and DeleteRange options.

mod common;

use anyhow::{Result, ensure};
use common::{TestServer, current_revision, keys, rev, values};
use etcd_client::{
    Client, DeleteOptions, GetOptions, KeyValue, LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};

async fn put_all(client: &mut Client, kvs: &[(&str, &str)]) -> Result<()> {
    for (k, v) in kvs {
        client.put(*k, *v, None).await?;
    }
    Ok(())
}

#[tokio::test]
async fn empty_store_is_at_revision_one_and_first_put_gets_two() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let resp = client.get("a", None).await?;
    assert_eq!(rev(resp.header()), 1);
    assert!(resp.kvs().is_empty());
    assert_eq!(resp.count(), 0);
    assert!(!resp.more());

    let put = client.put("a", "1", None).await?;
    assert_eq!(rev(put.header()), 2);
    let resp = client.get("a", None).await?;
    assert_eq!(rev(resp.header()), 2);
    let kv = &resp.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"a"[..], &b"1"[..]));
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (2, 2, 1));
    assert_eq!(kv.lease(), 0);
    Ok(())
}

#[tokio::test]
async fn range_single_key_matches_only_that_key() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("a", "1"), ("ab", "2"), ("b", "3")]).await?;
    let resp = client.get("a", None).await?;
    assert_eq!(keys(resp.kvs()), ["a"]);
    assert_eq!(resp.count(), 1);
    let resp = client.get("zzz", None).await?;
    assert!(resp.kvs().is_empty());
    Ok(())
}

#[tokio::test]
async fn range_prefix_from_key_all_keys_and_explicit_end() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("a", "0"), ("p/", "1"), ("p/a", "2"), ("p/b", "3"), ("p0", "4"), ("q", "5")]).await?;

    let prefix = client.get("p/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(keys(prefix.kvs()), ["p/", "p/a", "p/b"]);
    assert_eq!(values(prefix.kvs()), ["1", "2", "3"]);

    let from = client.get("p/b", Some(GetOptions::new().with_from_key())).await?;
    assert_eq!(keys(from.kvs()), ["p/b", "p0", "q"]);

    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(keys(all.kvs()), ["a", "p/", "p/a", "p/b", "p0", "q"]);
    assert_eq!(all.count(), 6);

    // Explicit [key, range_end): end is exclusive.
    let range = client.get("p/a", Some(GetOptions::new().with_range("p0"))).await?;
    assert_eq!(keys(range.kvs()), ["p/a", "p/b"]);
    Ok(())
}

#[tokio::test]
async fn range_limit_sets_more_and_count() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("k1", ""), ("k2", ""), ("k3", ""), ("k4", ""), ("k5", "")]).await?;
    let prefix = || GetOptions::new().with_prefix();

    let cut = client.get("k", Some(prefix().with_limit(2))).await?;
    assert_eq!(keys(cut.kvs()), ["k1", "k2"]);
    assert!(cut.more());
    assert_eq!(cut.count(), 5, "count is the total, regardless of limit");

    let exact = client.get("k", Some(prefix().with_limit(5))).await?;
    assert_eq!(exact.kvs().len(), 5);
    assert!(!exact.more());

    let unlimited = client.get("k", Some(prefix().with_limit(0))).await?;
    assert_eq!(unlimited.kvs().len(), 5);
    assert!(!unlimited.more());

    // Kubernetes paging: the next page starts at lastKey + "\0", pinned to the first revision.
    let page_rev = rev(cut.header());
    client.put("k0", "new", None).await?;
    let next =
        client.get("k2\0", Some(GetOptions::new().with_range("l").with_limit(2).with_revision(page_rev))).await?;
    assert_eq!(keys(next.kvs()), ["k3", "k4"]);
    assert!(next.more());
    assert_eq!(next.count(), 3);
    Ok(())
}

#[tokio::test]
async fn range_at_historical_revisions() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let r1 = rev(client.put("k", "v1", None).await?.header());
    let r2 = rev(client.put("k", "v2", None).await?.header());
    let r3 = rev(client.delete("k", None).await?.header());
    assert_eq!((r1, r2, r3), (2, 3, 4));

    let at = |r| Some(GetOptions::new().with_revision(r));
    let old = client.get("k", at(r1)).await?;
    assert_eq!(values(old.kvs()), ["v1"]);
    assert_eq!(rev(old.header()), r3, "header carries the current revision, not the requested one");
    assert_eq!(old.kvs()[0].mod_revision(), r1);
    let mid = client.get("k", at(r2)).await?;
    assert_eq!(values(mid.kvs()), ["v2"]);
    assert_eq!(mid.kvs()[0].version(), 2);
    assert!(client.get("k", at(r3)).await?.kvs().is_empty());
    assert!(client.get("k", None).await?.kvs().is_empty());
    // Revision 1 (before any write) is a valid, empty view.
    assert!(client.get("k", at(1)).await?.kvs().is_empty());
    Ok(())
}

/// Builds keys a..d whose create/version/mod/value orders all differ from each other and from
/// key order: KEY abcd, CREATE cadb, VERSION bdac, MOD bdca, VALUE dbac.
async fn sort_fixture(client: &mut Client) -> Result<()> {
    let value = |k: &str| match k {
        "a" => "3",
        "b" => "2",
        "c" => "4",
        _ => "1",
    };
    for k in ["c", "a", "d", "b", "c", "c", "a", "d", "c", "a"] {
        client.put(k, value(k), None).await?;
    }
    Ok(())
}

async fn sorted_keys(client: &mut Client, target: SortTarget, order: SortOrder) -> Result<Vec<String>> {
    let opts = GetOptions::new().with_prefix().with_sort(target, order);
    Ok(keys(client.get("", Some(opts)).await?.kvs()))
}

#[tokio::test]
async fn range_sort_by_every_target_and_order() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    sort_fixture(&mut client).await?;
    let cases = [
        (SortTarget::Key, "abcd"),
        (SortTarget::Create, "cadb"),
        (SortTarget::Version, "bdac"),
        (SortTarget::Mod, "bdca"),
        (SortTarget::Value, "dbac"),
    ];
    for (target, ascending) in cases {
        let asc: Vec<String> = ascending.chars().map(String::from).collect();
        let desc: Vec<String> = asc.iter().rev().cloned().collect();
        let got = sorted_keys(&mut client, target, SortOrder::Ascend).await?;
        assert_eq!(got, asc, "{target:?} ascending");
        let got = sorted_keys(&mut client, target, SortOrder::Descend).await?;
        assert_eq!(got, desc, "{target:?} descending");
    }
    // Sorting applies before the limit.
    let opts = GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2);
    let top = client.get("", Some(opts)).await?;
    assert_eq!(keys(top.kvs()), ["a", "c"]);
    assert!(top.more());
    assert_eq!(top.count(), 4);
    Ok(())
}

#[tokio::test]
async fn range_serializable_keys_only_and_count_only() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("s/a", "va"), ("s/b", "vb"), ("s/c", "vc")]).await?;

    let ser = client.get("s/b", Some(GetOptions::new().with_serializable())).await?;
    assert_eq!(values(ser.kvs()), ["vb"]);
    assert_eq!(rev(ser.header()), 4);

    let ko = client.get("s/", Some(GetOptions::new().with_prefix().with_keys_only())).await?;
    assert_eq!(keys(ko.kvs()), ["s/a", "s/b", "s/c"]);
    assert!(ko.kvs().iter().all(|kv| kv.value().is_empty()), "keys_only drops values");
    assert_eq!(ko.kvs()[1].mod_revision(), 3, "keys_only keeps revisions");
    assert_eq!(ko.kvs()[1].version(), 1);

    let co = client.get("s/", Some(GetOptions::new().with_prefix().with_count_only())).await?;
    assert!(co.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!(co.count(), 3);
    assert!(!co.more());
    Ok(())
}

#[tokio::test]
async fn range_min_max_mod_and_create_revision_filters() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    // k1..k5 created at revisions 2..6, then k2 modified at 7.
    put_all(&mut client, &[("k1", ""), ("k2", ""), ("k3", ""), ("k4", ""), ("k5", "")]).await?;
    client.put("k2", "again", None).await?;
    let p = || GetOptions::new().with_prefix();
    let cases = [
        (p().with_min_mod_revision(4), vec!["k2", "k3", "k4", "k5"]),
        (p().with_max_mod_revision(4), vec!["k1", "k3"]),
        (p().with_min_create_revision(4), vec!["k3", "k4", "k5"]),
        (p().with_max_create_revision(3), vec!["k1", "k2"]),
        (p().with_min_mod_revision(5).with_max_mod_revision(6), vec!["k4", "k5"]),
        (p().with_min_create_revision(3).with_max_mod_revision(5), vec!["k3", "k4"]),
    ];
    for (opts, want) in cases {
        let resp = client.get("k", Some(opts.clone())).await?;
        assert_eq!(keys(resp.kvs()), want, "{opts:?}");
        // etcd 3.4.23 reports the count of the range before the filters are applied.
        assert_eq!(resp.count(), 5, "{opts:?}");
    }
    Ok(())
}

#[tokio::test]
async fn revision_bumps_only_on_changes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let r0 = current_revision(&mut client).await?;
    assert_eq!(r0, 1);

    let del = client.delete("missing", None).await?;
    assert_eq!(del.deleted(), 0);
    assert_eq!(rev(del.header()), 1, "a delete of nothing does not bump the revision");

    let lease = client.lease_grant(60, None).await?;
    assert_eq!(rev(lease.header()), 1, "a lease grant does not bump the revision");
    assert_eq!(current_revision(&mut client).await?, 1);

    let read_only = Txn::new().and_then([TxnOp::get("x", None), TxnOp::delete("missing", None)]);
    let txn = client.txn(read_only).await?;
    assert_eq!(rev(txn.header()), 1, "a txn that changes nothing does not bump the revision");

    let writes = Txn::new().and_then([
        TxnOp::put("x", "1", None),
        TxnOp::put("y", "1", None),
        TxnOp::put("z", "1", Some(PutOptions::new().with_lease(lease.id()))),
    ]);
    let txn = client.txn(writes).await?;
    assert_eq!(rev(txn.header()), 2, "all changes of one txn share one revision");
    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert!(all.kvs().iter().all(|kv| kv.mod_revision() == 2 && kv.create_revision() == 2));

    client.compact(2, None).await?;
    assert_eq!(current_revision(&mut client).await?, 2, "compaction does not bump the revision");
    let revoke = client.lease_revoke(lease.id()).await?;
    assert_eq!(rev(revoke.header()), 3, "revoking a lease with a key deletes it at a new revision");
    Ok(())
}

#[tokio::test]
async fn version_and_create_revision_follow_the_key_lifecycle() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("k", "1", None).await?; // 2
    client.put("k", "2", None).await?; // 3
    let kv = get_one(&mut client, "k").await?;
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (2, 3, 2));
    client.delete("k", None).await?; // 4
    client.put("k", "3", None).await?; // 5
    let kv = get_one(&mut client, "k").await?;
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (5, 5, 1));
    assert_eq!(kv.value(), b"3");
    Ok(())
}

async fn get_one(client: &mut Client, key: &str) -> Result<KeyValue> {
    let mut resp = client.get(key, None).await?;
    ensure!(resp.kvs().len() == 1, "expected one kv for {key}, got {:?}", resp.kvs());
    Ok(resp.take_kvs().remove(0))
}

#[tokio::test]
async fn put_returns_prev_kv_when_asked() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let first = client.put("k", "v1", Some(PutOptions::new().with_prev_key())).await?;
    assert!(first.prev_key().is_none(), "no prev_kv for a new key");
    let second = client.put("k", "v2", Some(PutOptions::new().with_prev_key())).await?;
    let prev = second.prev_key().expect("prev_kv present");
    assert_eq!((prev.key(), prev.value()), (&b"k"[..], &b"v1"[..]));
    assert_eq!((prev.mod_revision(), prev.version()), (2, 1));
    let third = client.put("k", "v3", None).await?;
    assert!(third.prev_key().is_none(), "prev_kv only when asked");
    Ok(())
}

#[tokio::test]
async fn put_with_lease_ignore_value_and_ignore_lease() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let l1 = client.lease_grant(60, None).await?.id();
    let l2 = client.lease_grant(60, None).await?.id();

    client.put("k", "v1", Some(PutOptions::new().with_lease(l1))).await?;
    let kv = get_one(&mut client, "k").await?;
    assert_eq!((kv.value(), kv.lease()), (&b"v1"[..], l1));

    // ignore_value: keep the value, take the new lease.
    let opts = PutOptions::new().with_ignore_value().with_lease(l2).with_prev_key();
    let resp = client.put("k", "", Some(opts)).await?;
    assert_eq!(resp.prev_key().map(|kv| kv.lease()), Some(l1));
    let kv = get_one(&mut client, "k").await?;
    assert_eq!((kv.value(), kv.lease(), kv.version()), (&b"v1"[..], l2, 2));

    // ignore_lease: keep the lease, take the new value.
    client.put("k", "v3", Some(PutOptions::new().with_ignore_lease())).await?;
    let kv = get_one(&mut client, "k").await?;
    assert_eq!((kv.value(), kv.lease(), kv.version()), (&b"v3"[..], l2, 3));

    // A plain put detaches the lease.
    client.put("k", "v4", None).await?;
    assert_eq!(get_one(&mut client, "k").await?.lease(), 0);
    let ttl = client.lease_time_to_live(l2, Some(LeaseTimeToLiveOptions::new().with_keys())).await?;
    assert!(ttl.keys().is_empty(), "key detached from the lease: {:?}", ttl.keys());
    Ok(())
}

#[tokio::test]
async fn delete_range_reports_deleted_count_and_prev_kvs() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "4")]).await?;

    let single = client.delete("d/a", Some(DeleteOptions::new().with_prev_key())).await?;
    assert_eq!(single.deleted(), 1);
    assert_eq!(keys(single.prev_kvs()), ["d/a"]);
    assert_eq!(values(single.prev_kvs()), ["1"]);
    assert_eq!(rev(single.header()), 6);

    let ranged = client.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await?;
    assert_eq!(ranged.deleted(), 2);
    assert_eq!(keys(ranged.prev_kvs()), ["d/b", "d/c"]);
    assert_eq!(ranged.prev_kvs()[1].mod_revision(), 4);
    assert_eq!(rev(ranged.header()), 7, "a multi-key delete uses one revision");

    let plain = client.delete("e", None).await?;
    assert_eq!(plain.deleted(), 1);
    assert!(plain.prev_kvs().is_empty(), "prev_kvs only when asked");

    let left = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert!(left.kvs().is_empty());
    Ok(())
}

#[tokio::test]
async fn delete_with_explicit_range_end() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    put_all(&mut client, &[("a", ""), ("b", ""), ("c", ""), ("d", "")]).await?;
    let resp = client.delete("b", Some(DeleteOptions::new().with_range("d"))).await?;
    assert_eq!(resp.deleted(), 2);
    let left = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(keys(left.kvs()), ["a", "d"]);
    Ok(())
}

#[tokio::test]
async fn one_mebibyte_value_round_trips() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    client.put("big", value.clone(), None).await?;
    let kv = get_one(&mut client, "big").await?;
    ensure!(kv.value() == value.as_slice(), "1 MiB value differs after round trip");
    Ok(())
}

#[tokio::test]
async fn binary_keys_and_values_are_opaque_bytes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let key = vec![0xffu8, 0, 0x80, b'/', 0];
    let value = vec![0xffu8, 0, 1, 2];
    client.put(key.clone(), value.clone(), None).await?;
    let resp = client.get(key.clone(), None).await?;
    assert_eq!(resp.kvs()[0].key(), key.as_slice());
    assert_eq!(resp.kvs()[0].value(), value.as_slice());
    // Keys sort as unsigned bytes: 0xff > 'z'.
    client.put("z", "", None).await?;
    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    let order: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(order, [&b"z"[..], key.as_slice()]);
    Ok(())
}

/// Merges every chunk of a `KV.RangeStream` answer; `None` when the server answers Unimplemented.
async fn range_stream_kvs(client: &Client, prefix: &str) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>> {
    let unimplemented = |e: &etcd_client::Error| common::grpc_status(e).is_some_and(|(c, _)| c == "Unimplemented");
    let opts = Some(GetOptions::new().with_prefix());
    let mut stream = match client.kv_client().get_stream(prefix, opts).await {
        Ok(stream) => stream,
        Err(e) if unimplemented(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut kvs = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => kvs.extend(chunk.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec()))),
            Ok(None) => return Ok(Some(kvs)),
            Err(e) if kvs.is_empty() && unimplemented(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test]
async fn range_stream_is_unimplemented_or_equals_range() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    for i in 0..20 {
        client.put(format!("r/{i:02}"), format!("v{i}"), None).await?;
    }
    let unary = client.get("r/", Some(GetOptions::new().with_prefix())).await?;
    let want: Vec<(Vec<u8>, Vec<u8>)> = unary.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect();
    // kube-apiserver falls back to paged Range when RangeStream answers Unimplemented (etcd < 3.7).
    if let Some(streamed) = range_stream_kvs(&client, "r/").await? {
        assert_eq!(streamed, want, "merged RangeStream chunks equal the unary Range");
    }
    Ok(())
}
