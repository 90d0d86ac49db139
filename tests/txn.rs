//! Txn: compare targets and results, branches, op responses, nesting, atomicity, and the
//! Kubernetes-shaped create/update/delete transactions.

mod common;

use anyhow::{Result, bail, ensure};
use common::{TestServer, current_revision, keys, rev, values};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

/// Runs a txn with the single compare `cmp`, an empty success branch and no failure branch.
async fn holds(client: &mut Client, cmp: Compare) -> Result<bool> {
    let resp = client.txn(Txn::new().when([cmp])).await?;
    ensure!(resp.op_responses().is_empty());
    Ok(resp.succeeded())
}

/// `k` ends with create_revision 2, mod_revision 3, version 2, value "m", lease `lease`.
async fn compare_fixture(client: &mut Client) -> Result<i64> {
    let lease = client.lease_grant(60, None).await?.id();
    client.put("k", "a", None).await?;
    client.put("k", "m", Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

#[tokio::test]
async fn every_compare_target_with_every_result() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let lease = compare_fixture(&mut client).await?;
    use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("k", Eq, 2), true),
        (Compare::version("k", Eq, 1), false),
        (Compare::version("k", Gt, 1), true),
        (Compare::version("k", Gt, 2), false),
        (Compare::version("k", Lt, 3), true),
        (Compare::version("k", Lt, 2), false),
        (Compare::version("k", Ne, 1), true),
        (Compare::version("k", Ne, 2), false),
        (Compare::create_revision("k", Eq, 2), true),
        (Compare::create_revision("k", Gt, 2), false),
        (Compare::create_revision("k", Lt, 3), true),
        (Compare::create_revision("k", Ne, 2), false),
        (Compare::mod_revision("k", Eq, 3), true),
        (Compare::mod_revision("k", Gt, 2), true),
        (Compare::mod_revision("k", Lt, 3), false),
        (Compare::mod_revision("k", Ne, 2), true),
        (Compare::value("k", Eq, "m"), true),
        (Compare::value("k", Eq, "a"), false),
        (Compare::value("k", Gt, "l"), true),
        (Compare::value("k", Gt, "m"), false),
        (Compare::value("k", Lt, "mm"), true),
        (Compare::value("k", Lt, "m"), false),
        (Compare::value("k", Ne, "x"), true),
        (Compare::value("k", Ne, "m"), false),
        (Compare::lease("k", Eq, lease), true),
        (Compare::lease("k", Gt, lease - 1), true),
        (Compare::lease("k", Lt, lease), false),
        (Compare::lease("k", Ne, 0), true),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut client, cmp.clone()).await?, want, "{cmp:?}");
    }
    // Several compares: all must hold.
    let both = Txn::new().when([Compare::version("k", Eq, 2), Compare::value("k", Eq, "m")]);
    assert!(client.txn(both).await?.succeeded());
    let one = Txn::new().when([Compare::version("k", Eq, 2), Compare::value("k", Eq, "x")]);
    assert!(!client.txn(one).await?.succeeded());
    Ok(())
}

#[tokio::test]
async fn compares_on_a_missing_key() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    use CompareOp::{Equal as Eq, Greater as Gt, NotEqual as Ne};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("nokey", Eq, 0), true),
        (Compare::create_revision("nokey", Eq, 0), true),
        (Compare::mod_revision("nokey", Eq, 0), true),
        (Compare::lease("nokey", Eq, 0), true),
        (Compare::mod_revision("nokey", Gt, 0), false),
        // A value compare on a missing key is always false, whatever the operator.
        (Compare::value("nokey", Eq, ""), false),
        (Compare::value("nokey", Ne, "x"), false),
        (Compare::value("nokey", Gt, ""), false),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut client, cmp.clone()).await?, want, "{cmp:?}");
    }
    Ok(())
}

#[tokio::test]
async fn range_compares_must_hold_for_every_key() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("p/a", "1", None).await?; // 2
    client.put("p/b", "1", None).await?; // 3
    client.put("q", "9", None).await?; // 4
    use CompareOp::{Equal as Eq, Less as Lt};
    assert!(holds(&mut client, Compare::version("p/", Eq, 1).with_prefix()).await?);
    assert!(holds(&mut client, Compare::value("p/", Eq, "1").with_prefix()).await?);
    assert!(holds(&mut client, Compare::mod_revision("p/a", Lt, 4).with_range("q")).await?);
    assert!(!holds(&mut client, Compare::mod_revision("p/a", Lt, 4).with_range("r")).await?);
    assert!(!holds(&mut client, Compare::mod_revision("p/", Eq, 2).with_prefix()).await?);

    client.put("p/b", "2", None).await?; // 5
    assert!(!holds(&mut client, Compare::version("p/", Eq, 1).with_prefix()).await?);
    assert!(!holds(&mut client, Compare::value("p/", Eq, "1").with_prefix()).await?);
    // An empty range compares like a missing key.
    assert!(holds(&mut client, Compare::version("x/", Eq, 0).with_prefix()).await?);
    assert!(!holds(&mut client, Compare::value("x/", Eq, "").with_prefix()).await?);
    Ok(())
}

fn expect_get(resp: &TxnOpResponse) -> Result<&etcd_client::GetResponse> {
    match resp {
        TxnOpResponse::Get(g) => Ok(g),
        other => bail!("expected a range response, got {other:?}"),
    }
}

fn expect_put(resp: &TxnOpResponse) -> Result<&etcd_client::PutResponse> {
    match resp {
        TxnOpResponse::Put(p) => Ok(p),
        other => bail!("expected a put response, got {other:?}"),
    }
}

fn expect_delete(resp: &TxnOpResponse) -> Result<&etcd_client::DeleteResponse> {
    match resp {
        TxnOpResponse::Delete(d) => Ok(d),
        other => bail!("expected a delete response, got {other:?}"),
    }
}

fn expect_txn(resp: &TxnOpResponse) -> Result<&TxnResponse> {
    match resp {
        TxnOpResponse::Txn(t) => Ok(t),
        other => bail!("expected a txn response, got {other:?}"),
    }
}

/// A txn whose branches each carry one op of every kind.
fn branchy_txn(cond: Compare) -> Txn {
    let branch = |tag: &str| {
        vec![
            TxnOp::put(format!("{tag}/new"), tag, Some(PutOptions::new().with_prev_key())),
            TxnOp::get("d/", Some(GetOptions::new().with_prefix())),
            TxnOp::delete(format!("d/{tag}"), Some(DeleteOptions::new().with_prev_key())),
        ]
    };
    Txn::new().when([cond]).and_then(branch("then")).or_else(branch("else"))
}

async fn check_branch(client: &mut Client, resp: &TxnResponse, tag: &str, other: &str) -> Result<()> {
    let ops = resp.op_responses();
    ensure!(ops.len() == 3, "three responses, got {ops:?}");
    let txn_rev = rev(resp.header());
    assert!(expect_put(&ops[0])?.prev_key().is_none());
    let got = expect_get(&ops[1])?;
    assert_eq!(keys(got.kvs()), ["d/else", "d/then"]);
    assert_eq!(got.count(), 2);
    let del = expect_delete(&ops[2])?;
    assert_eq!(del.deleted(), 1);
    assert_eq!(keys(del.prev_kvs()), [format!("d/{tag}")]);

    let after = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    let want = [format!("d/{other}"), format!("{tag}/new")];
    assert_eq!(keys(after.kvs()), want, "only the {tag} branch ran");
    let new = client.get(format!("{tag}/new"), None).await?;
    assert_eq!(new.kvs()[0].mod_revision(), txn_rev);
    Ok(())
}

#[tokio::test]
async fn success_branch_returns_responses_of_each_op_type() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("d/then", "x", None).await?;
    client.put("d/else", "y", None).await?;
    let resp = client.txn(branchy_txn(Compare::version("d/then", CompareOp::Equal, 1))).await?;
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), 4);
    check_branch(&mut client, &resp, "then", "else").await
}

#[tokio::test]
async fn failure_branch_returns_responses_of_each_op_type() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("d/then", "x", None).await?;
    client.put("d/else", "y", None).await?;
    let resp = client.txn(branchy_txn(Compare::version("d/then", CompareOp::Equal, 7))).await?;
    assert!(!resp.succeeded());
    assert_eq!(rev(resp.header()), 4);
    check_branch(&mut client, &resp, "else", "then").await
}

#[tokio::test]
async fn ops_apply_in_order_and_share_one_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("c", "old", None).await?; // 2
    let txn = Txn::new().and_then([
        TxnOp::get("a", None),
        TxnOp::put("a", "1", None),
        TxnOp::get("a", None),
        TxnOp::put("b", "2", Some(PutOptions::new().with_prev_key())),
        TxnOp::delete("c", Some(DeleteOptions::new().with_prev_key())),
        TxnOp::get("c", None),
    ]);
    let resp = client.txn(txn).await?;
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 6);
    assert!(expect_get(&ops[0])?.kvs().is_empty(), "a read before the put sees nothing");
    let seen = expect_get(&ops[2])?;
    assert_eq!(values(seen.kvs()), ["1"], "a read after the put sees it");
    assert_eq!(seen.kvs()[0].mod_revision(), 3);
    assert!(expect_put(&ops[3])?.prev_key().is_none());
    assert_eq!(values(expect_delete(&ops[4])?.prev_kvs()), ["old"]);
    assert!(expect_get(&ops[5])?.kvs().is_empty(), "a read after the delete sees nothing");

    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(keys(all.kvs()), ["a", "b"]);
    assert_eq!(values(all.kvs()), ["1", "2"]);
    let a = &all.kvs()[0];
    assert_eq!((a.create_revision(), a.mod_revision(), a.version()), (3, 3, 1));
    assert_eq!(all.kvs()[1].mod_revision(), 3);
    assert_eq!(current_revision(&mut client).await?, 3);
    Ok(())
}

#[tokio::test]
async fn nested_txn_runs_inside_the_outer_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("flag", "on", None).await?; // 2
    let inner = Txn::new()
        .when([Compare::value("flag", CompareOp::Equal, "off")])
        .and_then([TxnOp::put("inner-then", "1", None)])
        .or_else([TxnOp::put("inner-else", "1", None), TxnOp::get("outer", None)]);
    let outer = Txn::new()
        .when([Compare::value("flag", CompareOp::Equal, "on")])
        .and_then([TxnOp::put("outer", "1", None), TxnOp::txn(inner)]);
    let resp = client.txn(outer).await?;
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 2);
    let nested = expect_txn(&ops[1])?;
    assert!(!nested.succeeded(), "the inner compare failed");
    let inner_ops = nested.op_responses();
    assert_eq!(inner_ops.len(), 2);
    expect_put(&inner_ops[0])?;
    assert_eq!(values(expect_get(&inner_ops[1])?.kvs()), ["1"], "inner read sees the outer put");

    let all = client.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(keys(all.kvs()), ["flag", "inner-else", "outer"]);
    assert_eq!(all.kvs()[1].mod_revision(), 3);
    assert_eq!(all.kvs()[2].mod_revision(), 3);
    Ok(())
}

#[tokio::test]
async fn empty_and_failed_txns_change_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    client.put("k", "v", None).await?; // 2
    let empty = client.txn(Txn::new()).await?;
    assert!(empty.succeeded(), "no compares means success");
    assert!(empty.op_responses().is_empty());
    assert_eq!(rev(empty.header()), 2);

    let failed =
        Txn::new().when([Compare::value("k", CompareOp::Equal, "other")]).and_then([TxnOp::put("k", "changed", None)]);
    let resp = client.txn(failed).await?;
    assert!(!resp.succeeded());
    assert!(resp.op_responses().is_empty());
    assert_eq!(rev(resp.header()), 2);
    assert_eq!(values(client.get("k", None).await?.kvs()), ["v"]);
    Ok(())
}

/// kube-apiserver's create: If mod_revision(k) == 0 Then Put k Else Range k.
fn k8s_create(key: &str, value: &str, lease: i64) -> Txn {
    let put_opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, put_opts)])
        .or_else([TxnOp::get(key, None)])
}

/// kube-apiserver's update: If mod_revision(k) == rev Then Put k Else Range k.
fn k8s_update(key: &str, value: &str, expected: i64) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)])
}

/// kube-apiserver's delete: If mod_revision(k) == rev Then Delete k Else Range k.
fn k8s_delete(key: &str, expected: i64) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
        .and_then([TxnOp::delete(key, None)])
        .or_else([TxnOp::get(key, None)])
}

#[tokio::test]
async fn kubernetes_create_update_delete() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let key = "/registry/pods/default/web";
    let lease = client.lease_grant(3600, None).await?.id();

    let created = client.txn(k8s_create(key, "v1", lease)).await?;
    assert!(created.succeeded());
    let r1 = rev(created.header());
    assert_eq!(r1, 2);
    assert_eq!(expect_put(&created.op_responses()[0])?.header().map(|h| h.revision()), Some(2));

    let again = client.txn(k8s_create(key, "v1-dup", 0)).await?;
    assert!(!again.succeeded(), "create of an existing key fails");
    let again_ops = again.op_responses();
    let current = expect_get(&again_ops[0])?;
    assert_eq!(values(current.kvs()), ["v1"]);
    assert_eq!(current.kvs()[0].mod_revision(), r1);
    assert_eq!(current.kvs()[0].lease(), lease);

    let updated = client.txn(k8s_update(key, "v2", r1)).await?;
    assert!(updated.succeeded());
    let r2 = rev(updated.header());
    assert_eq!(r2, 3);

    let stale = client.txn(k8s_update(key, "v3", r1)).await?;
    assert!(!stale.succeeded(), "update with a stale revision fails");
    let stale_ops = stale.op_responses();
    let current = expect_get(&stale_ops[0])?;
    assert_eq!(values(current.kvs()), ["v2"]);
    assert_eq!(current.kvs()[0].mod_revision(), r2);
    assert_eq!(current.kvs()[0].lease(), 0, "the update put carried no lease");

    let stale_delete = client.txn(k8s_delete(key, r1)).await?;
    assert!(!stale_delete.succeeded());
    let deleted = client.txn(k8s_delete(key, r2)).await?;
    assert!(deleted.succeeded());
    assert_eq!(expect_delete(&deleted.op_responses()[0])?.deleted(), 1);
    assert_eq!(rev(deleted.header()), 4);
    assert!(client.get(key, None).await?.kvs().is_empty());
    Ok(())
}

#[tokio::test]
async fn kubernetes_compaction_txn() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let key = "compact_rev_key";
    for i in 0..3 {
        client.put("x", i.to_string(), None).await?;
    }
    let attempt = |version: i64, compact_rev: i64| {
        Txn::new()
            .when([Compare::version(key, CompareOp::Equal, version)])
            .and_then([TxnOp::put(key, compact_rev.to_string(), None)])
            .or_else([TxnOp::get(key, None)])
    };
    let won = client.txn(attempt(0, 4)).await?;
    assert!(won.succeeded());
    client.compact(4, None).await?;
    let lost = client.txn(attempt(0, 5)).await?;
    assert!(!lost.succeeded(), "a second apiserver with a stale version loses");
    let lost_ops = lost.op_responses();
    let seen = expect_get(&lost_ops[0])?;
    assert_eq!(values(seen.kvs()), ["4"]);
    assert_eq!(seen.kvs()[0].version(), 1);
    Ok(())
}

#[tokio::test]
async fn same_key_in_both_branches_is_allowed() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let txn = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("k", "then", None)])
        .or_else([TxnOp::put("k", "else", None)]);
    assert!(client.txn(txn).await?.succeeded());
    assert_eq!(values(client.get("k", None).await?.kvs()), ["then"]);
    // Two deletes of the same key, or a read and a write of it, are no duplicates either.
    let txn = Txn::new().and_then([TxnOp::delete("k", None), TxnOp::delete("k", None), TxnOp::get("k", None)]);
    let resp = client.txn(txn).await?;
    let ops = resp.op_responses();
    assert_eq!(expect_delete(&ops[0])?.deleted(), 1);
    assert_eq!(expect_delete(&ops[1])?.deleted(), 0);
    Ok(())
}
