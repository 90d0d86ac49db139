//! `txn-put`: `--total` txns of `--txn-ops` puts each; txn i puts keys (i·ops + j) mod
//! `--key-space-size` (etcd 3.4's `benchmark txn-put`).

use anyhow::Result;
use etcd_client::{KvClient, Txn, TxnOp};

use crate::conn::Pool;
use crate::drive::{self, Load, Worker};
use crate::keys;
use crate::opts::TxnPutOpts;
use crate::report::Summary;

struct TxnWorker {
    kv: KvClient,
    opts: TxnPutOpts,
    value: Vec<u8>,
}

impl Worker for TxnWorker {
    async fn op(&mut self, index: u64) -> Result<(), etcd_client::Error> {
        let ops = self.opts.txn_ops as u64;
        let puts: Vec<TxnOp> = (0..ops)
            .map(|j| {
                let slot = (index.wrapping_mul(ops).wrapping_add(j)) % self.opts.key_space_size;
                TxnOp::put(keys::key(slot, self.opts.key_size), self.value.clone(), None)
            })
            .collect();
        self.kv.txn(Txn::new().and_then(puts)).await.map(drop)
    }
}

pub async fn run(pool: &Pool, opts: &TxnPutOpts, clients: usize, progress: bool) -> Result<Summary> {
    let value = keys::random_bytes(opts.val_size);
    let workers = (0..clients)
        .map(|i| TxnWorker { kv: pool.client(i).kv_client(), opts: opts.clone(), value: value.clone() })
        .collect();
    let load = Load { total: opts.total, rate: opts.rate, label: "txn-put", progress };
    Ok(drive::drive(workers, load).await?.0)
}
