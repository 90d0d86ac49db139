//! `range KEY [END]`: `--total` reads of a key or range, linearizable or serializable (etcd's
//! `benchmark range`).

use anyhow::Result;
use etcd_client::{GetOptions, KvClient};

use crate::conn::Pool;
use crate::drive::{self, Load, Worker};
use crate::opts::{Consistency, RangeOpts};
use crate::report::Summary;

struct RangeWorker {
    kv: KvClient,
    key: Vec<u8>,
    options: GetOptions,
}

impl Worker for RangeWorker {
    async fn op(&mut self, _index: u64) -> Result<(), etcd_client::Error> {
        self.kv.get(self.key.clone(), Some(self.options.clone())).await.map(drop)
    }
}

pub async fn run(pool: &Pool, opts: &RangeOpts, clients: usize, progress: bool) -> Result<Summary> {
    let mut options = GetOptions::new();
    if let Some(end) = &opts.end {
        options = options.with_range(end.as_bytes());
    }
    if opts.consistency == Consistency::Serializable {
        options = options.with_serializable();
    }
    let workers = (0..clients)
        .map(|i| RangeWorker {
            kv: pool.client(i).kv_client(),
            key: opts.key.as_bytes().to_vec(),
            options: options.clone(),
        })
        .collect();
    let load = Load { total: opts.total, rate: opts.rate, label: "range", progress };
    Ok(drive::drive(workers, load).await?.0)
}
