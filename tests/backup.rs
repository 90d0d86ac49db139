//! Backup and restore: `etcdctl snapshot save` from one member of a three-member cluster, restored
//! (`geobuk snapshot restore` / `etcdctl snapshot restore`) into a new one-member cluster.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::cluster::{ClusterOpts, TestCluster, serial};
use common::{current_revision, etcdctl_path, rev, within_for};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// (key, value, create_revision, mod_revision, version) of every key.
type Dump = Vec<(String, String, i64, i64, i64)>;

async fn dump(client: &mut Client) -> Result<Dump> {
    let resp = client.get("", Some(GetOptions::new().with_from_key())).await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            (key, value, kv.create_revision(), kv.mod_revision(), kv.version())
        })
        .collect())
}

async fn etcdctl_snapshot_save(endpoint: &str, file: &Path) -> Result<()> {
    let mut cmd = tokio::process::Command::new(etcdctl_path()?);
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "snapshot", "save"])
        .arg(file)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = within_for(Duration::from_secs(60), "etcdctl snapshot save", cmd.output()).await??;
    eprintln!(
        "etcdctl snapshot save: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "etcdctl snapshot save failed: {}", out.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_backup_restores_into_new_cluster() -> Result<()> {
    let _serial = serial().await;
    let backup_dir = tempfile::Builder::new().prefix("geobuk-backup-").tempdir()?;
    let file = backup_dir.path().join("backup.db");

    let mut cluster = TestCluster::start(3, ClusterOpts::default()).await?;
    let leader = cluster.leader().await?;
    let mut client = cluster.client_all().await?;
    for i in 0..50 {
        client.put(format!("k/{i:02}"), format!("v{i}"), None).await?;
    }
    for i in (0..50).step_by(3) {
        client.put(format!("k/{i:02}"), format!("v{i}-again"), None).await?;
    }
    for i in (0..50).step_by(7) {
        client.delete(format!("k/{i:02}"), None).await?;
    }
    client.put("k/03", "v3-third", None).await?;
    let txn = Txn::new()
        .when([Compare::value("k/01", CompareOp::Equal, "v1")])
        .and_then([TxnOp::put("k/txn", "in-txn", None), TxnOp::delete("k/02", None)]);
    assert!(client.txn(txn).await?.succeeded());
    let backed_rev = current_revision(&mut client).await?;
    let before = dump(&mut client).await?;
    ensure!(before.iter().any(|kv| kv.4 == 3), "some key has version 3");

    // Back up from a follower.
    let source = cluster.live_except(leader)[0];
    cluster.converge(&[0, 1, 2]).await?;
    etcdctl_snapshot_save(&cluster.endpoint(source), &file).await?;
    let size = std::fs::metadata(&file).context("backup file")?.len();
    ensure!(size > 0, "empty backup");
    drop(client);
    drop(cluster);

    let opts = ClusterOpts {
        restore_from: Some(file.clone()),
        name_prefix: "restored".into(),
        token: "restored-cluster".into(),
        ..ClusterOpts::default()
    };
    let restored = TestCluster::start(1, opts).await?;
    let mut client = restored.client(0).await?;
    let after = dump(&mut client).await?;
    assert_eq!(after, before, "every key with its value, revisions and version");
    assert_eq!(current_revision(&mut client).await?, backed_rev, "the store revision survives the restore");
    let next = client.put("after-restore", "x", None).await?;
    assert_eq!(rev(next.header()), backed_rev + 1);
    let members = client.member_list().await?;
    assert_eq!(members.members().len(), 1, "a one-member cluster");
    assert_eq!(members.members()[0].name(), "restored0");
    Ok(())
}
