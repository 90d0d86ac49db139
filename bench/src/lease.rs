//! `lease-keepalive`: each client grants a lease, then the timed ops are keep-alive round trips
//! on the client's keep-alive stream (etcd's `benchmark lease-keepalive`).

use anyhow::{Context, Result};
use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use futures::future::{join_all, try_join_all};

use crate::conn::Pool;
use crate::drive::{self, Load, Worker};
use crate::report::Summary;

/// TTL of the benchmark's leases (etcd's 100 s): long enough that none expires mid-run.
const LEASE_TTL_S: i64 = 100;

struct KeepAliveWorker {
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
}

impl Worker for KeepAliveWorker {
    async fn op(&mut self, _index: u64) -> Result<(), etcd_client::Error> {
        self.keeper.keep_alive().await?;
        match self.answers.message().await? {
            Some(answer) if answer.ttl() > 0 => Ok(()),
            Some(_) => Err(etcd_client::Error::LeaseKeepAliveError("lease not found".into())),
            None => Err(etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".into())),
        }
    }
}

async fn grant(mut lease: LeaseClient) -> Result<KeepAliveWorker> {
    let granted = lease.grant(LEASE_TTL_S, None).await.context("lease grant")?;
    let (keeper, answers) = lease.keep_alive(granted.id()).await.context("open a keep-alive stream")?;
    Ok(KeepAliveWorker { keeper, answers })
}

pub async fn run(pool: &Pool, total: u64, clients: usize, progress: bool) -> Result<Summary> {
    // Granting is setup, not measured (etcd grants before its timed loop too).
    let workers = try_join_all((0..clients).map(|i| grant(pool.client(i).lease_client()))).await?;
    let load = Load { total, rate: 0, label: "keepalive", progress };
    let (summary, workers, _) = drive::drive(workers, load).await?;
    // Leave nothing behind; a failed revoke only means the lease expires on its own.
    let lease = pool.client(0).lease_client();
    join_all(workers.iter().map(|w| {
        let (mut lease, id) = (lease.clone(), w.keeper.id());
        async move { lease.revoke(id).await }
    }))
    .await;
    Ok(summary)
}
