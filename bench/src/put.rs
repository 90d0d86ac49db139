//! `put`: `--total` puts of `--val-size` values to keys of a `--key-space-size` space, random
//! or sequential (etcd's `benchmark put`).

use anyhow::Result;
use etcd_client::KvClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::conn::Pool;
use crate::drive::{self, Load, Worker};
use crate::keys;
use crate::opts::PutOpts;
use crate::report::Summary;

struct PutWorker {
    kv: KvClient,
    opts: PutOpts,
    /// One random value for every put, as etcd's benchmark does.
    value: Vec<u8>,
    rng: StdRng,
}

impl Worker for PutWorker {
    async fn op(&mut self, index: u64) -> Result<(), etcd_client::Error> {
        let slot = if self.opts.sequential_keys {
            index % self.opts.key_space_size
        } else {
            self.rng.gen_range(0..self.opts.key_space_size)
        };
        self.kv.put(keys::key(slot, self.opts.key_size), self.value.clone(), None).await.map(drop)
    }
}

pub async fn run(pool: &Pool, opts: &PutOpts, clients: usize, progress: bool) -> Result<Summary> {
    let value = keys::random_bytes(opts.val_size);
    let workers = (0..clients)
        .map(|i| PutWorker {
            kv: pool.client(i).kv_client(),
            opts: opts.clone(),
            value: value.clone(),
            rng: StdRng::from_entropy(),
        })
        .collect();
    let load = Load { total: opts.total, rate: opts.rate, label: "put", progress };
    Ok(drive::drive(workers, load).await?.0)
}
