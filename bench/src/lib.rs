//! `bench`: a load generator for etcd v3 endpoints (geobuk's store, etcd, anything speaking the
//! API) with etcd `tools/benchmark`'s subcommands, flags and report, usable in-process.
//!
//! Modules, in the order a run goes through them:
//! - `opts`: the command line (etcd's flag names) as plain structs with defaults.
//! - `conn`: the `--conns` connections, dialed and proven alive within `--dial-timeout`.
//! - `drive`: the closed-loop driver: `--clients` workers, an exact op count, `--rate` pacing.
//! - `put`, `range`, `txn`, `lease`: one request/response benchmark each.
//! - `watch`: the watch benchmarks (creation, puts, delivery to every watcher).
//! - `keys`: etcd's key and value layout.
//! - `progress`: the progress bar.
//! - `report`: HDR latencies → summary structs → etcd's text or JSON.
//! - `compare`: etcd and geobuk clusters side by side, the suite, RESULTS.md and its chart.

pub mod compare;
pub mod conn;
pub mod drive;
pub mod keys;
pub mod lease;
pub mod opts;
pub mod progress;
pub mod put;
pub mod range;
pub mod report;
pub mod txn;
pub mod watch;

use anyhow::Result;

pub use opts::{
    Cli, Command, Consistency, GlobalOpts, LeaseKeepaliveOpts, PutOpts, RangeOpts, TxnPutOpts, WatchLatencyOpts,
    WatchOpts,
};
pub use report::{Environment, Latency, Report, Summary, WatchStats};

/// Runs one benchmark and returns its report (the `bench` binary prints it; a `compare` run can
/// call this once per endpoint set). Fails when the options are invalid or the endpoints cannot
/// be reached within `--dial-timeout`; failed ops are counted in the report, not returned.
pub async fn run(global: &GlobalOpts, command: &Command) -> Result<Report> {
    global.validate()?;
    command.validate()?;
    let pool = conn::connect(global).await?;
    let bar = progress::visible(global);
    let clients = global.clients;
    let (summary, watch) = match command {
        Command::Put(o) => (put::run(&pool, o, clients, bar).await?, None),
        Command::Range(o) => (range::run(&pool, o, clients, bar).await?, None),
        Command::TxnPut(o) => (txn::run(&pool, o, clients, bar).await?, None),
        Command::LeaseKeepalive(o) => (lease::run(&pool, o.total, clients, bar).await?, None),
        Command::Compare(_) => anyhow::bail!("compare starts its own clusters: call compare::run"),
        Command::Watch(o) => {
            let (puts, stats) = watch::run(&pool, &watch::Plan::from(o), clients, bar).await?;
            (puts, Some(stats))
        }
        Command::WatchLatency(o) => {
            let (puts, stats) = watch::run(&pool, &watch::Plan::from(o), clients, bar).await?;
            (puts, Some(stats))
        }
    };
    Ok(Report { subcommand: command.name().to_string(), summary, watch, env: environment(global, &pool) })
}

fn environment(global: &GlobalOpts, pool: &conn::Pool) -> Environment {
    Environment {
        bench_version: env!("CARGO_PKG_VERSION").to_string(),
        build_profile: if cfg!(debug_assertions) { "debug" } else { "release" }.to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        endpoints: pool.endpoints(),
        conns: pool.len(),
        clients: global.clients,
        server_version: pool.server_version.clone(),
    }
}
