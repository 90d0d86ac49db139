//! The geobuk binary: one executable for every part of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use store::config::{StoreConfig, parse_duration};

#[derive(Parser)]
#[command(name = "geobuk", version, about = "A self-contained Kubernetes-style control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an etcd-compatible store member.
    Store(StoreArgs),
}

/// Flags use etcd's names and defaults.
#[derive(Args)]
struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory.
    #[arg(long, default_value = "geobuk-data")]
    data_dir: PathBuf,
    /// URLs to listen on for client traffic (comma-separated, http only).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Client URLs to advertise to the rest of the cluster (defaults to the listen URLs).
    #[arg(long)]
    advertise_client_urls: Option<String>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = store::limits::REQUEST_BYTES_MAX_DEFAULT)]
    max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = store::limits::TXN_OPS_MAX_DEFAULT)]
    max_txn_ops: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Duration of periodic watch progress notifications (e.g. 500ms, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    experimental_watch_progress_notify_interval: std::time::Duration,
    /// List of URLs to listen on for the metrics and health endpoints (comma-separated, http only).
    #[arg(long, default_value = "")]
    listen_metrics_urls: String,
}

fn parse_urls(urls: &str) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Some(hostport) = url.strip_prefix("http://") else {
            bail!("unsupported URL {url:?}: only http:// is supported");
        };
        let hostport = hostport.trim_end_matches('/');
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(hostport).with_context(|| format!("resolving {url}"))?;
        out.extend(addrs.take(1));
    }
    if out.is_empty() {
        bail!("no URL given");
    }
    Ok(out)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
    }
}

async fn run_store(args: StoreArgs) -> Result<()> {
    let addrs = parse_urls(&args.listen_client_urls)?;
    let mut listeners = Vec::new();
    for addr in &addrs {
        listeners.push(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?);
    }
    let advertise = args.advertise_client_urls.clone().unwrap_or_else(|| args.listen_client_urls.clone());
    let config = StoreConfig {
        name: args.name,
        data_dir: args.data_dir,
        advertise_client_urls: advertise.split(',').map(|s| s.trim().to_string()).collect(),
        initial_cluster_token: args.initial_cluster_token,
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: args.max_txn_ops,
        heartbeat_interval_ms: args.heartbeat_interval,
        election_timeout_ms: args.election_timeout,
        watch_progress_notify_interval: args.experimental_watch_progress_notify_interval,
        listen_metrics_urls: args
            .listen_metrics_urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect(),
    };
    store::server::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Store(args) => runtime.block_on(run_store(args)),
    }
}
