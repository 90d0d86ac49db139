//! The geobuk binary: one executable for every part of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use store::config::{StoreConfig, parse_duration, parse_name_urls};

/// mimalloc instead of glibc's malloc: a put allocates and frees dozens of small buffers
/// across tokio's worker threads (HTTP/2 frames, protobuf messages, write batches), and
/// glibc's arenas spent 8.7 % of the members' CPU on it under load (perf, put-100).
/// Built with `no_thp` (Cargo.toml): mimalloc otherwise asks for transparent huge pages, and
/// every page it purged and touched again cost a fault zeroing 2 MiB (members' CPU at put-100
/// 5 % lower without, bench/BOUNDS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Work with store backups (from `etcdctl snapshot save` or Maintenance.Snapshot).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Build a fresh member data dir for a new cluster from a backup (etcdctl's flags).
    Restore(RestoreArgs),
}

#[derive(Args)]
struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// Human-readable name for the restored member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory to create (default: <name>.etcd, as etcdctl).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial cluster configuration of the new cluster: name=peerURL,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// Initial cluster token of the new cluster.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's advertised peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
}

fn run_restore(args: RestoreArgs) -> Result<()> {
    let initial_cluster = parse_name_urls(&args.initial_cluster).map_err(anyhow::Error::msg)?;
    let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    let config = StoreConfig {
        name: args.name,
        data_dir: data_dir.clone(),
        initial_cluster,
        initial_cluster_token: args.initial_cluster_token,
        initial_advertise_peer_urls: url_list(&args.initial_advertise_peer_urls),
        ..StoreConfig::default()
    };
    let id = store::restore::restore(&args.file, &config)
        .with_context(|| format!("restoring {} into {}", args.file.display(), data_dir.display()))?;
    eprintln!(
        "restored snapshot {} into {} (member {:x}, cluster {:x})",
        args.file.display(),
        data_dir.display(),
        id.member_id,
        id.cluster_id
    );
    Ok(())
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
    /// Initial cluster token for the etcd cluster during bootstrap (default "etcd-cluster").
    #[arg(long)]
    initial_cluster_token: Option<String>,
    /// URLs to listen on for peer traffic (comma-separated, http only).
    #[arg(long, default_value = "http://localhost:2380")]
    listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name=peerURL,... (default: --name=--initial-advertise-peer-urls).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, default_value = "new")]
    initial_cluster_state: store::config::ClusterState,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// Number of entries for a slow follower to catch up after compacting the Raft log.
    #[arg(long, default_value_t = 5000)]
    experimental_snapshot_catchup_entries: u64,
    /// name=URL (or peer-URL=URL) pairs: dial this URL instead of that member's advertised peer URL
    /// (for fault-injecting proxies).
    #[arg(long, default_value = "")]
    experimental_peer_dial_overrides: String,
    /// Duration of periodic watch progress notifications (e.g. 500ms, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    experimental_watch_progress_notify_interval: std::time::Duration,
    /// List of URLs to listen on for the metrics and health endpoints (comma-separated, http only).
    #[arg(long, default_value = "")]
    listen_metrics_urls: String,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    strict_reconfig_check: bool,
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

async fn bind_all(urls: &str) -> Result<Vec<tokio::net::TcpListener>> {
    let mut listeners = Vec::new();
    for addr in parse_urls(urls)? {
        listeners.push(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?);
    }
    Ok(listeners)
}

fn url_list(s: &str) -> Vec<String> {
    s.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

fn store_config(args: StoreArgs) -> Result<StoreConfig> {
    let advertise = args.advertise_client_urls.clone().unwrap_or_else(|| args.listen_client_urls.clone());
    let initial_cluster = match &args.initial_cluster {
        Some(list) => parse_name_urls(list).map_err(anyhow::Error::msg)?,
        // etcd: without --initial-cluster, the cluster is this member alone.
        None => [(args.name.clone(), url_list(&args.initial_advertise_peer_urls))].into(),
    };
    let overrides = parse_name_urls(&args.experimental_peer_dial_overrides).map_err(anyhow::Error::msg)?;
    Ok(StoreConfig {
        name: args.name,
        data_dir: args.data_dir,
        advertise_client_urls: url_list(&advertise),
        initial_cluster_token_explicit: args.initial_cluster_token.is_some(),
        initial_cluster_token: args.initial_cluster_token.unwrap_or_else(|| "etcd-cluster".into()),
        initial_advertise_peer_urls: url_list(&args.initial_advertise_peer_urls),
        initial_cluster,
        initial_cluster_state: args.initial_cluster_state,
        snapshot_count: args.snapshot_count,
        snapshot_catchup_entries: args.experimental_snapshot_catchup_entries,
        peer_dial_overrides: overrides.into_iter().filter_map(|(k, mut v)| Some((k, v.pop()?))).collect(),
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: args.max_txn_ops,
        heartbeat_interval_ms: args.heartbeat_interval,
        election_timeout_ms: args.election_timeout,
        watch_progress_notify_interval: args.experimental_watch_progress_notify_interval,
        listen_metrics_urls: url_list(&args.listen_metrics_urls),
        strict_reconfig_check: args.strict_reconfig_check,
    })
}

async fn run_store(args: StoreArgs) -> Result<()> {
    let client_listeners = bind_all(&args.listen_client_urls).await?;
    let peer_listeners = bind_all(&args.listen_peer_urls).await?;
    let config = store_config(args)?;
    store::server::run(config, client_listeners, peer_listeners, shutdown_signal()).await?;
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
        Command::Snapshot(SnapshotCommand::Restore(args)) => run_restore(args),
    }
}
