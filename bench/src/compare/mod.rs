//! `bench compare`: etcd 3.4 and geobuk side by side on this machine. It starts a three-member
//! cluster of each (same flags, same fsync durability, no proxies) and keeps both up for the
//! whole run, measures every row on both back to back (interleaved, who goes first alternating,
//! `--repeats` times each, after waiting for both clusters to be idle), records the measured
//! members' CPU seconds and peak RSS per run, and writes the results file and chart that the
//! performance targets are judged on, with each row's median run.

pub mod budget;
pub mod chart;
pub mod members;
pub mod quiet;
pub mod results;
pub mod schedule;
pub mod suite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use jepsen::cluster::{Cluster, ClusterSpec, Db, ETCD_BIN};

use crate::report::Report;
use members::{Sample, Usage};
use quiet::Quiet;
use schedule::Slot;
use suite::Row;

/// How long a cluster may take to agree on a leader and catch up between rows.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a run checks whether a measured member has died.
const DEATH_POLL: Duration = Duration::from_millis(200);
/// Lines of a dead member's log quoted in the results.
const DEATH_LOG_LINES: usize = 15;
/// Most runs of one row on one system (`--repeats`): each full-scale repeat adds ~11 minutes.
pub const REPEATS_MAX: usize = 99;

#[derive(Args, Clone, Debug, PartialEq)]
pub struct CompareOpts {
    /// Systems to run; the first one goes first in row 0.
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
    /// Runs of each row on each system; the results show the run with the median headline.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
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

/// One run of a row on one system.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measured {
    pub row: String,
    pub system: System,
    /// Which run of the row on this system (0-based, up to `--repeats` − 1).
    pub repeat: usize,
    /// The row's headline figure (ops/s or events/s); `None` when the run failed.
    pub headline: Option<f64>,
    pub report: Option<Report>,
    pub error: Option<String>,
    pub usage: Usage,
    /// The wait for both clusters to be idle before this run.
    pub quiet: Quiet,
    /// Anything that makes the figure less trustworthy (shown in the results file's notes).
    pub notes: Vec<String>,
}

/// Everything a compare run measured: every run, in the order they were taken.
#[derive(Debug, Default, serde::Serialize)]
pub struct Comparison {
    pub rows: Vec<String>,
    /// Runs of each row on each system (`--repeats`).
    pub repeats: usize,
    pub measured: Vec<Measured>,
    pub versions: Vec<(System, String)>,
}

impl Comparison {
    /// The run reported for a row on a system: the one with the median headline (lower middle
    /// for an even count, failed runs left out); the first run when every run failed.
    pub fn get(&self, row: &str, system: System) -> Option<&Measured> {
        let runs = self.runs(row, system);
        let headlines: Vec<Option<f64>> = runs.iter().map(|m| m.headline).collect();
        let pick = schedule::median_run(&headlines).unwrap_or(0);
        runs.get(pick).copied()
    }

    /// Every run of a row on a system, in repeat order.
    pub fn runs(&self, row: &str, system: System) -> Vec<&Measured> {
        let mut runs: Vec<&Measured> = self.measured.iter().filter(|m| m.row == row && m.system == system).collect();
        runs.sort_by_key(|m| m.repeat);
        runs
    }
}

/// One system's cluster, up for the whole run; dropping it stops the members and removes
/// their data.
struct Running {
    system: System,
    cluster: Cluster,
    endpoints: Vec<String>,
    dir: PathBuf,
    /// Members already reported dead (by pid), so each death is reported once.
    reported_dead: Vec<u32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The members must be gone before their data dirs are.
        self.cluster.stop_all();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Running {
    fn pids(&self) -> Result<Vec<u32>> {
        let pids: Vec<u32> = self.cluster.members.iter().filter_map(|m| m.pid()).collect();
        ensure!(pids.len() == self.cluster.len(), "a {} member is not running", self.system.name());
        Ok(pids)
    }

    /// One line per member that has exited since the last call: how it ended and its log's tail.
    fn deaths(&mut self) -> Vec<String> {
        let system = self.system.name();
        let mut deaths = Vec::new();
        for member in &mut self.cluster.members {
            let Some(pid) = member.pid() else { continue };
            if self.reported_dead.contains(&pid) {
                continue;
            }
            if let Some(status) = member.exit_status() {
                self.reported_dead.push(pid);
                let tail = members::log_tail(&member.log_path(), DEATH_LOG_LINES);
                deaths.push(format!(
                    "{system} member {} (pid {pid}) exited ({status}); its log ends:\n```\n{tail}\n```",
                    member.name
                ));
            }
        }
        deaths
    }
}

/// Runs the suite against every system, interleaved, and writes the results file, its JSON and
/// the chart.
pub async fn run(opts: &CompareOpts) -> Result<Comparison> {
    let rows = selected_rows(opts)?;
    let mut comparison = Comparison {
        rows: rows.iter().map(|r| r.id.to_string()).collect(),
        repeats: opts.repeats,
        ..Default::default()
    };
    let mut running = Vec::new();
    for &system in &opts.systems {
        let bin = binary(opts, system)?;
        comparison.versions.push((system, version_of(system, &bin)));
        running.push(start(opts, system, &bin).await.with_context(|| system.name())?);
    }
    for slot in schedule::order(rows.len(), &opts.systems, opts.repeats) {
        let measured = measure(&mut running, &rows[slot.row], slot, opts.repeats).await;
        comparison.measured.push(measured);
    }
    drop(running);
    results::write(opts, &rows, &comparison)?;
    Ok(comparison)
}

/// Checks the options and returns the rows `--rows` selects.
fn selected_rows(opts: &CompareOpts) -> Result<Vec<Row>> {
    ensure!(opts.scale > 0.0, "--scale must be positive");
    ensure!((1..=REPEATS_MAX).contains(&opts.repeats), "--repeats must be in [1, {REPEATS_MAX}]");
    ensure!(!opts.systems.is_empty(), "--systems is empty");
    for (i, s) in opts.systems.iter().enumerate() {
        ensure!(!opts.systems[..i].contains(s), "--systems names {} twice", s.name());
    }
    let rows: Vec<Row> = suite::rows(opts.scale, opts.load_keys)
        .into_iter()
        .filter(|r| opts.rows.is_empty() || opts.rows.iter().any(|id| id == r.id))
        .collect();
    ensure!(!rows.is_empty(), "no row matches --rows {:?}", opts.rows);
    Ok(rows)
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

async fn start(opts: &CompareOpts, system: System, bin: &Path) -> Result<Running> {
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
    let cluster = Cluster::start(spec).await?;
    let endpoints = cluster.endpoints();
    let running = Running { system, cluster, endpoints, dir, reported_dead: Vec::new() };
    write_range_key(&running.endpoints).await?;
    Ok(running)
}

/// One run of `row` on the slot's system: once that cluster is healthy and every cluster is
/// quiet, the row runs while the measured members' CPU and peak RSS are sampled. A run that
/// cannot be taken (a member died, the cluster never settled) is recorded as failed, naming the
/// dead members with their logs' tails, and the compare goes on to the next run.
async fn measure(running: &mut [Running], row: &Row, slot: Slot, repeats: usize) -> Measured {
    let run_label = format!("{} {} run {}/{repeats}", slot.system.name(), row.id, slot.repeat + 1);
    eprintln!("compare: {run_label} …");
    // A member that died since the last run fails this one at once, not after the health wait.
    let earlier: Vec<String> = running.iter_mut().flat_map(Running::deaths).collect();
    let attempt = if earlier.is_empty() {
        try_measure(running, row, slot).await
    } else {
        Err(anyhow::anyhow!("not run: a member died before it"))
    };
    let mut measured = match attempt {
        Ok(m) => m,
        Err(e) => Measured {
            row: row.id.to_string(),
            system: slot.system,
            repeat: slot.repeat,
            headline: None,
            report: None,
            error: Some(format!("{e:#}")),
            usage: Usage::default(),
            quiet: Quiet::default(),
            notes: Vec::new(),
        },
    };
    let deaths: Vec<String> = earlier.into_iter().chain(running.iter_mut().flat_map(Running::deaths)).collect();
    if !deaths.is_empty() {
        measured.headline = None;
        let error = measured.error.take().into_iter().chain(deaths).collect::<Vec<_>>().join("; ");
        measured.error = Some(error);
    }
    match (measured.headline, &measured.error) {
        (Some(h), _) => eprintln!(
            "compare: {run_label}: {h:.0}/s (quiet after {:.1} s at {:.2} of a core)",
            measured.quiet.waited_seconds, measured.quiet.cpu_fraction
        ),
        (None, e) => eprintln!("compare: {run_label} failed: {}", e.as_deref().unwrap_or("")),
    }
    measured
}

async fn try_measure(running: &mut [Running], row: &Row, slot: Slot) -> Result<Measured> {
    let name = slot.system.name();
    let target = running.iter().position(|r| r.system == slot.system).context("system not started")?;
    // A cluster short of a member would only time out, run after run, waiting to be healthy.
    ensure!(running[target].reported_dead.is_empty(), "skipped: a {name} member died earlier in the compare");
    running[target].cluster.wait_healthy(SETTLE_TIMEOUT).await.with_context(|| format!("{name} before {}", row.id))?;
    let mut all_pids = Vec::new();
    for r in running.iter() {
        all_pids.extend(r.pids()?);
    }
    let quiet = quiet::wait_quiet(&all_pids, &quiet::QUIET).await;
    let sample = Sample::start(running[target].pids()?)?;
    let global = row.global(&running[target].endpoints);
    // A member dying mid-run ends the run at once: the figures of a run that lost a member
    // mid-way mean nothing, and its clients could wait out their op timeouts. `measure` then
    // names the member with its log's tail.
    let outcome = tokio::select! {
        result = crate::run(&global, &row.command) => Ok(result),
        died = first_exit(&mut running[target].cluster) => Err(died),
    };
    let (result, usage) = match outcome {
        Ok(result) => (result, sample.finish()?),
        // The dead member's /proc entry is gone with it: the run has no usage to show.
        Err(died) => (Err(anyhow::anyhow!("stopped: {died} during the run")), Usage::default()),
    };
    let mut notes = if quiet.timed_out { vec![quiet_note(&quiet)] } else { Vec::new() };
    if let Err(e) = compact(&running[target].endpoints).await {
        notes.push(format!("compacting {name} after the run failed: {e:#}"));
    }
    let (headline, report, error) = match result {
        Ok(r) => (Some(headline(row, &r)), Some(r), None),
        Err(e) => (None, None, Some(format!("{e:#}"))),
    };
    let (row, system, repeat) = (row.id.to_string(), slot.system, slot.repeat);
    Ok(Measured { row, system, repeat, headline, report, error, usage, quiet, notes })
}

/// Resolves when one of the cluster's members has exited, naming it. There is no exit event to
/// await for a child process here (std's `Child`), so it looks every [`DEATH_POLL`].
async fn first_exit(cluster: &mut Cluster) -> String {
    loop {
        for member in &mut cluster.members {
            if let Some(status) = member.exit_status() {
                return format!("member {} exited ({status})", member.name);
            }
        }
        tokio::time::sleep(DEATH_POLL).await;
    }
}

/// Compacts a cluster's history up to its current revision, as a Kubernetes API server does
/// every five minutes: without it, the rows' writes pile up as old revisions and a repeated
/// suite runs etcd into its 2 GiB backend quota.
async fn compact(endpoints: &[String]) -> Result<()> {
    let (mut client, _) = crate::conn::dial(&endpoints[0], Duration::from_secs(5)).await?;
    let got = client.get(suite::RANGE_KEY, None).await.context("read the current revision")?;
    let revision = got.header().context("no response header")?.revision();
    match client.compact(revision, Some(etcd_client::CompactionOptions::new().with_physical())).await {
        Ok(_) => Ok(()),
        // A row that wrote nothing (a range row) left the revision where the last compaction
        // put it: the history is already compacted up to here.
        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange => Ok(()),
        Err(e) => Err(e).context("compact"),
    }
}

fn quiet_note(q: &Quiet) -> String {
    format!(
        "the clusters were not quiet within {:.0} s (the members used {:.2} of a core, limit {:.2}); measured anyway",
        q.waited_seconds, q.cpu_fraction, q.limit
    )
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
