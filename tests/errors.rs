//! Error answers: exact gRPC code and message, and no partial write after any of them.

mod common;

use anyhow::Result;
use common::{TestServer, current_revision, expect_grpc_error, grpc_status};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// Asserts the store still is at `revision` and holds nothing under `prefix`.
async fn unchanged(client: &mut Client, revision: i64, prefix: &str) -> Result<()> {
    assert_eq!(current_revision(client).await?, revision, "revision moved after an error");
    let left = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    assert!(left.kvs().is_empty(), "partial write under {prefix}: {:?}", left.kvs());
    Ok(())
}

#[tokio::test]
async fn empty_key_is_rejected_everywhere() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    expect_grpc_error(client.put("", "v", None).await, "InvalidArgument", EMPTY_KEY)?;
    expect_grpc_error(client.get("", None).await, "InvalidArgument", EMPTY_KEY)?;
    expect_grpc_error(client.delete("", None).await, "InvalidArgument", EMPTY_KEY)?;
    let txn = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("", "v", None)]);
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", EMPTY_KEY)?;
    let txn = Txn::new().when([Compare::version("", CompareOp::Equal, 0)]).and_then([TxnOp::put("a", "1", None)]);
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", EMPTY_KEY)?;
    unchanged(&mut client, 1, "a").await
}

#[tokio::test]
async fn request_over_a_small_max_request_bytes() -> Result<()> {
    let server = TestServer::start_with(&["--max-request-bytes", "1024"]).await?;
    let mut client = server.client().await?;
    let res = client.put("big", vec![b'x'; 2000], None).await;
    expect_grpc_error(res, "InvalidArgument", TOO_LARGE)?;
    unchanged(&mut client, 1, "big").await?;

    let txn =
        Txn::new().and_then([TxnOp::put("big/a", vec![b'x'; 600], None), TxnOp::put("big/b", vec![b'x'; 600], None)]);
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", TOO_LARGE)?;
    unchanged(&mut client, 1, "big").await?;

    client.put("small", vec![b'x'; 500], None).await?;
    assert_eq!(current_revision(&mut client).await?, 2);
    Ok(())
}

#[tokio::test]
async fn default_max_request_bytes_is_one_and_a_half_mebibytes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let res = client.put("big", vec![b'x'; 1_600_000], None).await;
    expect_grpc_error(res, "InvalidArgument", TOO_LARGE)?;
    unchanged(&mut client, 1, "big").await?;

    // Past the gRPC receive limit (max request + 512 KiB) the transport itself refuses.
    let res = client.put("big", vec![b'x'; 3_000_000], None).await;
    let err = res.expect_err("a 3 MB put must fail");
    let (code, _) = grpc_status(&err).expect("a gRPC status");
    assert_eq!(code, "ResourceExhausted", "{err:?}");
    unchanged(&mut client, 1, "big").await?;

    client.put("big", vec![b'x'; 1_400_000], None).await?;
    assert_eq!(current_revision(&mut client).await?, 2);
    Ok(())
}

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n).map(|i| TxnOp::put(format!("{prefix}{i:03}"), "v", None)).collect()
}

fn compares(n: usize) -> Vec<Compare> {
    (0..n).map(|i| Compare::version(format!("c{i:03}"), CompareOp::Equal, 0)).collect()
}

#[tokio::test]
async fn too_many_txn_ops_with_a_small_limit() -> Result<()> {
    let server = TestServer::start_with(&["--max-txn-ops", "4"]).await?;
    let mut client = server.client().await?;
    let txn = Txn::new().and_then(puts("t/", 5));
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", TOO_MANY_OPS)?;
    let txn = Txn::new().when(compares(5)).and_then(puts("t/", 1));
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", TOO_MANY_OPS)?;
    let txn = Txn::new().or_else(puts("t/", 5));
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", TOO_MANY_OPS)?;
    unchanged(&mut client, 1, "t/").await?;

    // The limit applies to compares, success and failure separately.
    let txn = Txn::new().when(compares(4)).and_then(puts("t/", 4)).or_else(puts("f/", 4));
    assert!(client.txn(txn).await?.succeeded());
    assert_eq!(current_revision(&mut client).await?, 2);
    Ok(())
}

#[tokio::test]
async fn too_many_txn_ops_with_the_default_limit() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let txn = Txn::new().and_then(puts("t/", 129));
    expect_grpc_error(client.txn(txn).await, "InvalidArgument", TOO_MANY_OPS)?;
    unchanged(&mut client, 1, "t/").await?;
    client.txn(Txn::new().and_then(puts("t/", 128))).await?;
    let all = client.get("t/", Some(GetOptions::new().with_prefix().with_count_only())).await?;
    assert_eq!(all.count(), 128);
    Ok(())
}

#[tokio::test]
async fn duplicate_keys_in_one_txn_branch() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let cases = [
        vec![TxnOp::put("d/k", "1", None), TxnOp::put("d/k", "2", None)],
        vec![TxnOp::delete("d/", Some(DeleteOptions::new().with_prefix())), TxnOp::put("d/a", "1", None)],
        vec![TxnOp::put("d/a", "1", None), TxnOp::delete("d/", Some(DeleteOptions::new().with_prefix()))],
        vec![TxnOp::put("d/a", "1", None), TxnOp::delete("d/a", None)],
    ];
    for ops in cases {
        let res = client.txn(Txn::new().and_then(ops.clone())).await;
        expect_grpc_error(res, "InvalidArgument", DUPLICATE_KEY).map_err(|e| e.context(format!("{ops:?}")))?;
        let res = client.txn(Txn::new().when(compares(1)).or_else(ops.clone())).await;
        expect_grpc_error(res, "InvalidArgument", DUPLICATE_KEY)?;
    }
    unchanged(&mut client, 1, "d/").await
}

#[tokio::test]
async fn unknown_lease_and_too_large_ttl() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let with_lease = || Some(PutOptions::new().with_lease(0x5151));
    expect_grpc_error(client.put("l/k", "v", with_lease()).await, "NotFound", LEASE_NOT_FOUND)?;
    let txn = Txn::new().and_then([TxnOp::put("l/a", "v", None), TxnOp::put("l/k", "v", with_lease())]);
    expect_grpc_error(client.txn(txn).await, "NotFound", LEASE_NOT_FOUND)?;
    expect_grpc_error(client.lease_revoke(0x5151).await, "NotFound", LEASE_NOT_FOUND)?;
    let res = client.lease_grant(9_000_000_001, None).await;
    expect_grpc_error(res, "OutOfRange", "etcdserver: too large lease TTL")?;
    assert!(client.leases().await?.leases().is_empty());
    unchanged(&mut client, 1, "l/").await
}

#[tokio::test]
async fn ignore_value_and_ignore_lease_misuse() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let res = client.put("i/missing", "", Some(PutOptions::new().with_ignore_value())).await;
    expect_grpc_error(res, "InvalidArgument", "etcdserver: key not found")?;
    let res = client.put("i/missing", "", Some(PutOptions::new().with_ignore_lease())).await;
    expect_grpc_error(res, "InvalidArgument", "etcdserver: key not found")?;
    let res = client.put("i/k", "v", Some(PutOptions::new().with_ignore_value())).await;
    expect_grpc_error(res, "InvalidArgument", "etcdserver: value is provided")?;
    let lease = client.lease_grant(60, None).await?.id();
    let opts = PutOptions::new().with_ignore_lease().with_lease(lease);
    let res = client.put("i/k", "v", Some(opts)).await;
    expect_grpc_error(res, "InvalidArgument", "etcdserver: lease is provided")?;
    unchanged(&mut client, 1, "i/").await
}

#[tokio::test]
async fn future_revision_for_range_and_compact() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("f/k", "v", None).await?; // 2
    let res = client.get("f/k", Some(GetOptions::new().with_revision(12))).await;
    expect_grpc_error(res, "OutOfRange", FUTURE_REV)?;
    let res = client.get("f/k", Some(GetOptions::new().with_revision(3))).await;
    expect_grpc_error(res, "OutOfRange", FUTURE_REV)?;
    let txn = Txn::new()
        .and_then([TxnOp::put("f/new", "v", None), TxnOp::get("f/k", Some(GetOptions::new().with_revision(12)))]);
    expect_grpc_error(client.txn(txn).await, "OutOfRange", FUTURE_REV)?;
    expect_grpc_error(client.compact(12, None).await, "OutOfRange", FUTURE_REV)?;
    assert_eq!(current_revision(&mut client).await?, 2);
    assert!(client.get("f/new", None).await?.kvs().is_empty(), "no partial txn");
    // Compacting at the current revision is allowed.
    client.compact(2, None).await?;
    Ok(())
}

#[tokio::test]
async fn compacted_revision_for_range_and_compact() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    for v in ["1", "2", "3", "4"] {
        client.put("c/k", v, None).await?; // 2..5
    }
    client.compact(4, None).await?;
    let at = |r| Some(GetOptions::new().with_revision(r));
    expect_grpc_error(client.get("c/k", at(3)).await, "OutOfRange", COMPACTED)?;
    expect_grpc_error(client.get("c/k", at(1)).await, "OutOfRange", COMPACTED)?;
    let kept = client.get("c/k", at(4)).await?;
    assert_eq!(kept.kvs()[0].value(), b"3", "the compaction revision itself stays readable");

    expect_grpc_error(client.compact(4, None).await, "OutOfRange", COMPACTED)?;
    expect_grpc_error(client.compact(2, None).await, "OutOfRange", COMPACTED)?;
    let txn = Txn::new().and_then([TxnOp::put("c/new", "v", None), TxnOp::get("c/k", at(3))]);
    expect_grpc_error(client.txn(txn).await, "OutOfRange", COMPACTED)?;
    assert_eq!(current_revision(&mut client).await?, 5);
    assert!(client.get("c/new", None).await?.kvs().is_empty(), "no partial txn");
    client.compact(5, None).await?;
    Ok(())
}
