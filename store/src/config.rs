//! A member's configuration, with etcd's flag names and defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits;

/// Configuration of one store member.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--initial-cluster-token`: mixed into member and cluster ids.
    pub initial_cluster_token: String,
    /// Whether the token was given explicitly (then it must match the data dir's).
    pub initial_cluster_token_explicit: bool,
    /// `--initial-advertise-peer-urls`: how the other members reach this one.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`: member name → peer URLs, used only at first start.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--snapshot-count`: applied entries between Raft snapshots.
    pub snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`: log entries kept behind a
    /// snapshot so slow followers catch up from the log instead of a snapshot.
    pub snapshot_catchup_entries: u64,
    /// `--experimental-peer-dial-overrides`: member name → URL to dial instead
    /// of its advertised peer URL (proxies in fault tests).
    pub peer_dial_overrides: BTreeMap<String, String>,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--heartbeat-interval` in ms.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout` in ms.
    pub election_timeout_ms: u64,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// `--listen-metrics-urls`: extra `http://host:port` listeners serving only
    /// the HTTP endpoints (`/metrics`, `/health`, ...); none by default.
    pub listen_metrics_urls: Vec<String>,
    /// `--strict-reconfig-check`: refuse membership changes that would leave no quorum of
    /// started, reachable voters (`node::reconfig_check`).
    pub strict_reconfig_check: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            name: "default".into(),
            data_dir: PathBuf::from("geobuk-data"),
            advertise_client_urls: vec!["http://localhost:2379".into()],
            initial_cluster_token: "etcd-cluster".into(),
            initial_cluster_token_explicit: false,
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: BTreeMap::from([("default".into(), vec!["http://localhost:2380".into()])]),
            initial_cluster_state: ClusterState::New,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            peer_dial_overrides: BTreeMap::new(),
            max_request_bytes: limits::REQUEST_BYTES_MAX_DEFAULT,
            max_txn_ops: limits::TXN_OPS_MAX_DEFAULT,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            watch_progress_notify_interval: Duration::from_secs(600),
            listen_metrics_urls: Vec::new(),
            strict_reconfig_check: true,
        }
    }
}

impl StoreConfig {
    /// etcd's minimum lease TTL: ceil(1.5 × election timeout) seconds.
    pub fn min_lease_ttl_secs(&self) -> i64 {
        let ms = self.election_timeout_ms * 3 / 2;
        ms.div_ceil(1000) as i64
    }

    /// How long a write or linearizable read waits before etcd's "request
    /// timed out" (etcd: 5 s plus twice the election timeout).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(5000 + 2 * self.election_timeout_ms)
    }
}

/// `--initial-cluster-state`: bootstrap a new cluster or join a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// All members in --initial-cluster start together and form the cluster.
    New,
    /// This member was added with MemberAdd and joins a running cluster.
    Existing,
}

impl std::str::FromStr for ClusterState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            _ => Err(format!("invalid --initial-cluster-state {s:?} (use new or existing)")),
        }
    }
}

/// Parses etcd's `name=url,name=url` lists (a name may repeat for several URLs).
pub fn parse_name_urls(s: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(format!("invalid name=url pair {part:?}"));
        };
        if !url.starts_with("http://") {
            return Err(format!("unsupported URL {url:?}: only http:// is supported"));
        }
        out.entry(name.trim().to_string()).or_default().push(url.trim().trim_end_matches('/').to_string());
    }
    Ok(out)
}

/// Parses durations such as `500ms`, `5s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_min_ttl() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("5x").is_err());
        assert_eq!(StoreConfig::default().min_lease_ttl_secs(), 2);
    }

    #[test]
    fn name_url_lists() {
        let m = parse_name_urls("a=http://h:1,b=http://h:2/,a=http://h:3").unwrap();
        assert_eq!(m["a"], vec!["http://h:1", "http://h:3"]);
        assert_eq!(m["b"], vec!["http://h:2"]);
        assert!(parse_name_urls("a").is_err());
        assert!(parse_name_urls("a=https://x").is_err());
        assert_eq!("existing".parse::<ClusterState>(), Ok(ClusterState::Existing));
    }
}
