//! `bench compare`: etcd 3.4 and geobuk side by side on this machine. It starts a three-member
//! cluster of each in turn (same flags, same fsync durability, no proxies), runs the same suite
//! against each, records the members' CPU seconds and peak RSS per row, and writes the results
//! file and chart that the performance targets are judged on.

pub mod chart;
pub mod members;
pub mod results;
pub mod suite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use jepsen::cluster::{Cluster, ClusterSpec, Db, ETCD_BIN};

use crate::report::Report;
use members::{Sample, Usage};
use suite::Row;

/// How long a cluster may take to agree on a leader and catch up between rows.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Clone, Debug, PartialEq)]
pub struct CompareOpts {
    /// Systems to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "etcd,geobuk")]
    pub systems: Vec<System>,
    /// The geobuk binary (default: built with cargo next to this binary).
    #[arg(long)]
    pub geobuk_bin: Option<PathBuf>,
    /// The etcd binary (Debian's etcd-server).
    #[arg(long, default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// Members' data dirs go under this directory (one file system for both systems).
    #[arg(long, default_value = "bench-results/members")]
    pub work_dir: PathBuf,
    /// The results file (Markdown).
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// Multiplies every row's op count (smoke runs use a tiny scale).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Keys written by the memory row.
    #[arg(long, default_value_t = 1_000_000)]
    pub load_keys: u64,
    /// Run only these rows (ids, comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Etcd,
    Geobuk,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Geobuk => "geobuk",
        }
    }
}

/// One row's outcome on one system.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measured {
    pub row: String,
    pub system: System,
    pub report: Option<Report>,
    pub error: Option<String>,
    pub usage: Usage,
}

/// Everything a compare run measured, in row order per system.
#[derive(Debug, serde::Serialize)]
pub struct Comparison {
    pub rows: Vec<String>,
    pub measured: Vec<Measured>,
    pub versions: Vec<(System, String)>,
}

impl Comparison {
    pub fn get(&self, row: &str, system: System) -> Option<&Measured> {
        self.measured.iter().find(|m| m.row == row && m.system == system)
    }
}

/// Runs the suite against each system and writes the results file, its JSON and the chart.
pub async fn run(opts: &CompareOpts) -> Result<Comparison> {
    ensure!(opts.scale > 0.0, "--scale must be positive");
    let rows: Vec<Row> = suite::rows(opts.scale, opts.load_keys)
        .into_iter()
        .filter(|r| opts.rows.is_empty() || opts.rows.iter().any(|id| id == r.id))
        .collect();
    ensure!(!rows.is_empty(), "no row matches --rows {:?}", opts.rows);
    let mut comparison = Comparison {
        rows: rows.iter().map(|r| r.id.to_string()).collect(),
        measured: Vec::new(),
        versions: Vec::new(),
    };
    for &system in &opts.systems {
        let bin = binary(opts, system)?;
        comparison.versions.push((system, version_of(system, &bin)));
        let measured = run_system(opts, system, &bin, &rows).await.with_context(|| system.name())?;
        comparison.measured.extend(measured);
    }
    results::write(opts, &rows, &comparison)?;
    Ok(comparison)
}

fn binary(opts: &CompareOpts, system: System) -> Result<PathBuf> {
    let bin = match system {
        System::Etcd => opts.etcd_bin.clone(),
        System::Geobuk => match &opts.geobuk_bin {
            Some(b) => b.clone(),
            None => jepsen::cluster::build_geobuk()?,
        },
    };
    if !bin.exists() {
        bail!("{} not found (etcd: `apt-get install etcd-server`)", bin.display());
    }
    Ok(bin)
}

fn version_of(system: System, bin: &Path) -> String {
    let out = std::process::Command::new(bin).arg("--version").output();
    let version = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    if system == System::Geobuk { format!("{version} (commit {})", git_commit()) } else { version }
}

fn git_commit() -> String {
    let out = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output();
    out.ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

async fn run_system(opts: &CompareOpts, system: System, bin: &Path, rows: &[Row]) -> Result<Vec<Measured>> {
    let dir = opts.work_dir.join(system.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let spec = ClusterSpec {
        db: if system == System::Etcd { Db::Etcd } else { Db::Geobuk },
        bin: bin.to_path_buf(),
        nodes: 3,
        dir: dir.clone(),
        heartbeat_ms: 100,
        election_ms: 1000,
        progress_notify: "10m".into(),
        // etcd 3.4's default.
        snapshot_count: 100_000,
        faketime: false,
        extra_args: Vec::new(),
        proxied: false,
    };
    let mut cluster = Cluster::start(spec).await?;
    let endpoints = cluster.endpoints();
    write_range_key(&endpoints).await?;
    let mut out = Vec::new();
    for row in rows {
        eprintln!("compare: {} {} …", system.name(), row.id);
        cluster.wait_healthy(SETTLE_TIMEOUT).await?;
        let pids: Vec<u32> = (0..cluster.len()).filter_map(|i| cluster.members[i].pid()).collect();
        ensure!(pids.len() == cluster.len(), "a member is not running");
        let sample = Sample::start(pids)?;
        let result = crate::run(&row.global(&endpoints), &row.command).await;
        let usage = sample.finish()?;
        let (report, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if let Some(r) = &report {
            eprintln!("compare: {} {}: {:.0}/s", system.name(), row.id, headline(row, r));
        }
        out.push(Measured { row: row.id.to_string(), system, report, error, usage });
    }
    // Dropping the cluster kills its members before their data dirs go.
    drop(cluster);
    std::fs::remove_dir_all(&dir).ok();
    Ok(out)
}

/// A row's headline figure from a report.
pub fn headline(row: &Row, report: &Report) -> f64 {
    match row.headline {
        suite::Headline::OpsPerSec => report.summary.ops_per_sec,
        suite::Headline::EventsPerSec => report.watch.as_ref().map_or(0.0, |w| w.events_per_sec),
    }
}

async fn write_range_key(endpoints: &[String]) -> Result<()> {
    let (mut client, _) = crate::conn::dial(&endpoints[0], Duration::from_secs(5)).await?;
    client.put(suite::RANGE_KEY, vec![b'v'; suite::VALUE_BYTES], None).await.context("write the range key")?;
    Ok(())
}
