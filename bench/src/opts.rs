//! Command-line options with etcd `tools/benchmark`'s subcommand and flag names and defaults,
//! as plain structs that code (a `compare` run, tests) can build without a command line.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// etcd's default client endpoint.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";
/// Largest `--conns`: each is an HTTP/2 connection with its own tasks and buffers.
pub const CONNS_MAX: usize = 10_000;
/// Largest `--clients`: each is a task with its own histogram.
pub const CLIENTS_MAX: usize = 100_000;
/// Largest key or value: etcd's default request limit is 1.5 MiB.
pub const ENTRY_BYTES_MAX: usize = 1536 * 1024;
/// Largest number of watchers of one run (`--streams` × per stream).
pub const WATCHERS_MAX: usize = 1_000_000;
/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX: usize = 128;

/// The whole command line: global flags, then a subcommand.
#[derive(Parser, Clone, Debug)]
#[command(name = "bench", version, about = "A load generator for etcd v3 endpoints (etcd's tools/benchmark flags)")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every subcommand (etcd's persistent flags); accepted before or after it.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct GlobalOpts {
    /// gRPC endpoints, comma-separated; connections go to them round-robin.
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections (etcd-client Clients).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of concurrent workers, spread round-robin over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Connect only to the leader (found with Maintenance Status).
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// How long to wait for each connection to answer its first request (e.g. 2s, 500ms).
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Print a JSON report on stdout instead of the text report.
    #[arg(long, global = true)]
    pub json: bool,
    /// Hide the progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Parser)]
struct GlobalOnly {
    #[command(flatten)]
    global: GlobalOpts,
}

impl Default for GlobalOpts {
    fn default() -> Self {
        GlobalOnly::parse_from(["bench"]).global
    }
}

impl GlobalOpts {
    /// The defaults pointed at `endpoints`, without a progress bar (for in-process runs).
    pub fn new(endpoints: &[&str]) -> Self {
        GlobalOpts {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            no_progress: true,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            bail!("--endpoints is empty");
        }
        in_range("--conns", self.conns, 1, CONNS_MAX)?;
        in_range("--clients", self.clients, 1, CLIENTS_MAX)?;
        if self.dial_timeout.is_zero() {
            bail!("--dial-timeout must be positive");
        }
        Ok(())
    }
}

/// A benchmark.
#[derive(Subcommand, Clone, Debug, PartialEq)]
pub enum Command {
    /// Benchmark put.
    Put(PutOpts),
    /// Benchmark range.
    Range(RangeOpts),
    /// Benchmark txn-put (one txn of --txn-ops puts per op).
    TxnPut(TxnPutOpts),
    /// Benchmark watch: watch creation, then puts and their delivery to every watcher.
    Watch(WatchOpts),
    /// Benchmark watch latency: from a put to its receipt on every watcher.
    WatchLatency(WatchLatencyOpts),
    /// Benchmark lease keep-alive round trips.
    LeaseKeepalive(LeaseKeepaliveOpts),
    /// Start a three-member etcd and a three-member geobuk, run the suite against both
    /// (interleaved, `--repeats` runs each), and write the side-by-side results (RESULTS.md,
    /// JSON, SVG chart).
    Compare(crate::compare::CompareOpts),
}

impl Command {
    /// The subcommand's name on the command line (and in reports).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::Watch(_) => "watch",
            Command::WatchLatency(_) => "watch-latency",
            Command::LeaseKeepalive(_) => "lease-keepalive",
            Command::Compare(_) => "compare",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Command::Put(o) => o.validate(),
            Command::Range(o) => o.validate(),
            Command::TxnPut(o) => o.validate(),
            Command::Watch(o) => o.validate(),
            Command::WatchLatency(o) => o.validate(),
            Command::LeaseKeepalive(o) => in_range("--total", o.total, 1, u64::MAX),
            Command::Compare(_) => Ok(()),
        }
    }
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "put")]
pub struct PutOpts {
    /// Total number of put requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size of put request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys (else random ones within the key space).
    #[arg(long)]
    pub sequential_keys: bool,
    /// Maximum puts per second over all clients (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

impl Default for PutOpts {
    fn default() -> Self {
        PutOpts::parse_from(["put"])
    }
}

impl PutOpts {
    pub fn validate(&self) -> Result<()> {
        in_range("--total", self.total, 1, u64::MAX)?;
        in_range("--val-size", self.val_size, 0, ENTRY_BYTES_MAX)?;
        in_range("--key-space-size", self.key_space_size, 1, u64::MAX)?;
        key_fits("--key-size", self.key_size, self.key_space_size)
    }
}

/// `l`: linearizable, `s`: serializable (etcd's letters).
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    #[default]
    #[value(name = "l", alias = "linearizable")]
    Linearizable,
    #[value(name = "s", alias = "serializable")]
    Serializable,
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "range")]
pub struct RangeOpts {
    /// The key to read (or the start of the range).
    pub key: String,
    /// The end of the range (exclusive); none reads the key alone.
    pub end: Option<String>,
    /// Total number of range requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Maximum range requests per second over all clients (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Linearizable (l) or serializable (s).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
}

impl RangeOpts {
    /// The defaults, reading `key`.
    pub fn new(key: &str) -> Self {
        RangeOpts::parse_from(["range", key])
    }

    pub fn validate(&self) -> Result<()> {
        in_range("--total", self.total, 1, u64::MAX)?;
        if self.key.is_empty() {
            bail!("range needs a non-empty KEY");
        }
        Ok(())
    }
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "txn-put")]
pub struct TxnPutOpts {
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Key size of txn put.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of txn put.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum txns per second over all clients (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

impl Default for TxnPutOpts {
    fn default() -> Self {
        TxnPutOpts::parse_from(["txn-put"])
    }
}

impl TxnPutOpts {
    pub fn validate(&self) -> Result<()> {
        in_range("--total", self.total, 1, u64::MAX)?;
        in_range("--txn-ops", self.txn_ops, 1, TXN_OPS_MAX)?;
        in_range("--val-size", self.val_size, 0, ENTRY_BYTES_MAX)?;
        in_range("--key-space-size", self.key_space_size, 1, u64::MAX)?;
        // A txn may not put one key twice ("duplicate key given in txn request").
        if self.txn_ops as u64 > self.key_space_size {
            bail!("--txn-ops ({}) must not exceed --key-space-size ({})", self.txn_ops, self.key_space_size);
        }
        key_fits("--key-size", self.key_size, self.key_space_size)
    }
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "watch")]
pub struct WatchOpts {
    /// Number of watch streams, spread round-robin over the connections.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Number of watchers on each stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Number of distinct keys watched (watcher i watches key i mod this); 1: all share one key.
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Every watcher watches one prefix; the puts go to --watched-key-total keys under it.
    #[arg(long)]
    pub prefix: bool,
    /// Number of puts (put j goes to key j mod --watched-key-total).
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Maximum puts per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Key size of the watched keys.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of the puts (at least 8: a value carries its put's send time).
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Give up waiting for watchers or events after this long without progress, and report
    /// the missing events (not an etcd flag).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl Default for WatchOpts {
    fn default() -> Self {
        WatchOpts::parse_from(["watch"])
    }
}

impl WatchOpts {
    pub fn validate(&self) -> Result<()> {
        watch_shape(self.streams, self.watch_per_stream)?;
        in_range("--watched-key-total", self.watched_key_total, 1, WATCHERS_MAX)?;
        in_range("--val-size", self.val_size, crate::watch::STAMP_BYTES, ENTRY_BYTES_MAX)?;
        crate::watch::check_key_size(self.key_size, self.watched_key_total)
    }
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "watch-latency")]
pub struct WatchLatencyOpts {
    /// Number of watch streams, spread round-robin over the connections.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Number of watchers on each stream (all watch the same key).
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Total number of put requests.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Number of puts per second (0 is no limit).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// The watchers ask for the previous key-value with each event.
    #[arg(long)]
    pub prevkv: bool,
    /// Key size of the watched key.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of the puts (at least 8: a value carries its put's send time).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Give up waiting for watchers or events after this long without progress, and report
    /// the missing events (not an etcd flag).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl Default for WatchLatencyOpts {
    fn default() -> Self {
        WatchLatencyOpts::parse_from(["watch-latency"])
    }
}

impl WatchLatencyOpts {
    pub fn validate(&self) -> Result<()> {
        watch_shape(self.streams, self.watchers_per_stream)?;
        in_range("--val-size", self.val_size, crate::watch::STAMP_BYTES, ENTRY_BYTES_MAX)?;
        crate::watch::check_key_size(self.key_size, 1)
    }
}

#[derive(Parser, Clone, Debug, PartialEq)]
#[command(name = "lease-keepalive")]
pub struct LeaseKeepaliveOpts {
    /// Total number of lease keep-alive requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
}

impl Default for LeaseKeepaliveOpts {
    fn default() -> Self {
        LeaseKeepaliveOpts::parse_from(["lease-keepalive"])
    }
}

fn watch_shape(streams: usize, per_stream: usize) -> Result<()> {
    in_range("--streams", streams, 1, WATCHERS_MAX)?;
    in_range("watchers per stream", per_stream, 1, WATCHERS_MAX)?;
    if streams.saturating_mul(per_stream) > WATCHERS_MAX {
        bail!("{streams} streams × {per_stream} watchers exceeds {WATCHERS_MAX} watchers");
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display>(flag: &str, value: T, min: T, max: T) -> Result<()> {
    if value < min || value > max {
        bail!("{flag} must be in [{min}, {max}], got {value}");
    }
    Ok(())
}

/// Keys are index varints in `key_size` bytes (as etcd's): the largest index must fit.
fn key_fits(flag: &str, key_size: usize, key_space_size: u64) -> Result<()> {
    let needed = crate::keys::varint_len(key_space_size - 1);
    if key_size < needed || key_size > ENTRY_BYTES_MAX {
        bail!("{flag} must be in [{needed}, {ENTRY_BYTES_MAX}] for a key space of {key_space_size}, got {key_size}");
    }
    Ok(())
}

/// Go-style durations as etcd's flags take them: `2s`, `500ms`, `1.5s`, `1m`, `100us`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "h" => value * 3600.0,
        "m" => value * 60.0,
        "s" | "" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => return Err(format!("invalid duration unit in {text:?} (use h, m, s, ms, us or ns)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn etcd_put_flags_are_accepted() {
        let cli = parse(&[
            "bench",
            "--endpoints",
            "a,b",
            "--conns",
            "10",
            "--clients",
            "100",
            "put",
            "--total",
            "100",
            "--key-size",
            "8",
            "--val-size",
            "256",
            "--sequential-keys",
        ]);
        assert_eq!(cli.global.endpoints, ["a", "b"]);
        assert_eq!((cli.global.conns, cli.global.clients), (10, 100));
        assert!(!cli.global.target_leader);
        let Command::Put(put) = cli.command else { panic!("not put: {:?}", cli.command) };
        assert_eq!((put.total, put.key_size, put.val_size), (100, 8, 256));
        assert!(put.sequential_keys);
        assert_eq!((put.key_space_size, put.rate), (1, 0));
    }

    #[test]
    fn etcd_equals_form_and_global_flags_after_the_subcommand() {
        let cli = parse(&[
            "bench",
            "--endpoints=h1:2379,h2:2379,h3:2379",
            "--target-leader",
            "range",
            "KEY",
            "--consistency=s",
            "--total=100000",
            "--conns=100",
            "--dial-timeout=500ms",
        ]);
        assert_eq!(cli.global.endpoints.len(), 3);
        assert!(cli.global.target_leader);
        assert_eq!(cli.global.conns, 100);
        assert_eq!(cli.global.dial_timeout, Duration::from_millis(500));
        let Command::Range(range) = cli.command else { panic!("not range") };
        assert_eq!(range.key, "KEY");
        assert_eq!(range.end, None);
        assert_eq!(range.consistency, Consistency::Serializable);
        assert_eq!(range.total, 100_000);
    }

    #[test]
    fn subcommand_names_and_their_flags() {
        let Command::TxnPut(t) = parse(&["bench", "txn-put", "--txn-ops", "4", "--key-space-size", "16"]).command
        else {
            panic!("not txn-put")
        };
        assert_eq!((t.txn_ops, t.key_space_size, t.total), (4, 16, 10_000));
        let watch = parse(&[
            "bench",
            "watch",
            "--streams",
            "100",
            "--watch-per-stream",
            "100",
            "--watched-key-total",
            "10",
            "--put-total",
            "100",
            "--put-rate",
            "50",
            "--prefix",
        ]);
        let Command::Watch(w) = watch.command else { panic!("not watch") };
        assert_eq!(
            (w.streams, w.watch_per_stream, w.watched_key_total, w.put_total, w.put_rate),
            (100, 100, 10, 100, 50)
        );
        assert!(w.prefix);
        let Command::WatchLatency(l) =
            parse(&["bench", "watch-latency", "--watchers-per-stream", "3", "--prevkv"]).command
        else {
            panic!("not watch-latency")
        };
        assert_eq!((l.streams, l.watchers_per_stream, l.put_rate, l.key_size, l.val_size), (10, 3, 100, 32, 32));
        assert!(l.prevkv);
        let lease = parse(&["bench", "lease-keepalive", "--total", "5"]).command;
        assert_eq!(lease, Command::LeaseKeepalive(LeaseKeepaliveOpts { total: 5 }));
        assert_eq!(lease.name(), "lease-keepalive");
    }

    #[test]
    fn defaults_are_etcds() {
        let g = GlobalOpts::default();
        assert_eq!(g.endpoints, [DEFAULT_ENDPOINT]);
        assert_eq!((g.conns, g.clients, g.dial_timeout), (1, 1, Duration::from_secs(2)));
        let p = PutOpts::default();
        assert_eq!((p.total, p.key_size, p.val_size, p.key_space_size), (10_000, 8, 8, 1));
        let w = WatchOpts::default();
        assert_eq!((w.streams, w.watch_per_stream, w.watched_key_total, w.put_total), (10, 100, 1, 1000));
        assert_eq!(RangeOpts::new("k").consistency, Consistency::Linearizable);
        assert_eq!(LeaseKeepaliveOpts::default().total, 10_000);
        for cmd in [
            Command::Put(p),
            Command::Range(RangeOpts::new("k")),
            Command::TxnPut(TxnPutOpts::default()),
            Command::Watch(w),
            Command::WatchLatency(WatchLatencyOpts::default()),
            Command::LeaseKeepalive(LeaseKeepaliveOpts::default()),
        ] {
            cmd.validate().unwrap_or_else(|e| panic!("{} defaults invalid: {e}", cmd.name()));
        }
        g.validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["bench", "range", "k", "--consistency", "x"]).is_err());
        assert!(Cli::try_parse_from(["bench", "put", "--total", "-1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--dial-timeout", "2 parsecs", "put"]).is_err());
        let put = |key_size, key_space_size| PutOpts { key_size, key_space_size, ..Default::default() }.validate();
        assert!(put(8, 1_000_000).is_ok());
        assert!(put(1, 64).is_ok(), "indexes up to 63 zigzag into one byte");
        assert!(put(1, 65).is_err(), "index 64 needs two bytes");
        assert!(PutOpts { total: 0, ..Default::default() }.validate().is_err());
        let txn = TxnPutOpts { txn_ops: 2, key_space_size: 1, ..Default::default() };
        assert!(txn.validate().is_err(), "a txn would put one key twice");
        assert!(WatchOpts { val_size: 7, ..Default::default() }.validate().is_err());
        assert!(WatchOpts { streams: 0, ..Default::default() }.validate().is_err());
        assert!(GlobalOpts { clients: 0, ..Default::default() }.validate().is_err());
        assert!(GlobalOpts { endpoints: vec![String::new()], ..Default::default() }.validate().is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
