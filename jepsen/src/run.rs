//! One test run: start the cluster (or use given endpoints), run the workload's workers and the
//! nemesis for the time limit, heal, run the final phase, read back the ground truth from every
//! member, check, and write the results directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::checker::{CheckResult, Validity};
use crate::cluster::{Cluster, ClusterSpec, Db, ETCD_BIN, FAKETIME_LIB};
use crate::history::{FaultWindow, Op, Recorder};
use crate::nemesis::{self, FaultKind, Nemesis, Schedule};
use crate::results::{self, Artifacts};
use crate::truth;
use crate::workload::{self, ReadMode, Shared, Worker, WorkloadKind};

/// `jepsen test` options.
#[derive(clap::Args, Clone, Debug)]
pub struct TestOpts {
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
    /// Comma-separated fault families: kill, pause, partition, member, clock, all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub nemesis: Vec<FaultKind>,
    /// Seconds of workload (faults included).
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    /// Client processes.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Target ops per second over all clients (0 = as fast as possible).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seed of the op and fault schedules (random when not given; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Results directory (default: jepsen-results/<workload>-<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cluster size (3 or 5) when the harness starts the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Run against an existing cluster (comma-separated client URLs) instead; no nemesis.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "linearizable")]
    pub read_mode: ReadMode,
    /// Client request timeout in milliseconds; a write that times out is indeterminate.
    #[arg(long, default_value_t = 1000)]
    pub request_timeout_ms: u64,
    /// The store the harness starts: geobuk, or Debian's etcd for comparison (no partitions).
    #[arg(long, value_enum, default_value = "geobuk")]
    pub db: Db,
    /// The geobuk binary (default: built with cargo next to this binary).
    #[arg(long)]
    pub geobuk_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub election_timeout_ms: u64,
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Longest quiet time between two faults, in seconds (the shortest is a fifth of it).
    #[arg(long, default_value_t = 5.0)]
    pub nemesis_interval: f64,
    /// Longest time a fault stays, in seconds.
    #[arg(long, default_value_t = 6.0)]
    pub fault_max: f64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl TestOpts {
    /// Defaults for a run from code (tests).
    pub fn new(workload: WorkloadKind) -> TestOpts {
        TestOpts {
            workload,
            nemesis: Vec::new(),
            time_limit: 30,
            concurrency: 10,
            rate: 200.0,
            seed: None,
            out: None,
            nodes: 3,
            endpoints: Vec::new(),
            read_mode: ReadMode::Linearizable,
            request_timeout_ms: 1000,
            db: Db::Geobuk,
            geobuk_bin: None,
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
            nemesis_interval: 5.0,
            fault_max: 6.0,
            no_progress: true,
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The command that repeats this run's schedule.
    pub fn reproduce(&self, seed: u64, out: &Path) -> String {
        let mut cmd = format!(
            "cargo run --release -p jepsen -- test --workload {} --time-limit {} --concurrency {} --rate {} --seed {seed} --read-mode {} --request-timeout-ms {} --out {}",
            name_of(self.workload),
            self.time_limit,
            self.concurrency,
            self.rate,
            name_of(self.read_mode),
            self.request_timeout_ms,
            out.display()
        );
        if !self.nemesis.is_empty() {
            let kinds: Vec<&str> = self.nemesis.iter().map(|k| k.name()).collect();
            cmd += &format!(" --nemesis {}", kinds.join(","));
        }
        if self.endpoints.is_empty() {
            cmd += &format!(" --nodes {} --db {}", self.nodes, name_of(self.db));
        } else {
            cmd += &format!(" --endpoints {}", self.endpoints.join(","));
        }
        cmd
    }
}

fn name_of<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// What a run produced.
pub struct RunOutcome {
    pub valid: Validity,
    pub results: Vec<CheckResult>,
    pub dir: PathBuf,
    pub ops: usize,
    pub reproduce: String,
}

/// Runs one test.
pub async fn run(opts: TestOpts) -> Result<RunOutcome> {
    let seed = opts.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let out =
        opts.out.clone().unwrap_or_else(|| PathBuf::from(format!("jepsen-results/{}-{seed}", name_of(opts.workload))));
    ensure!(opts.concurrency >= 2, "--concurrency must be at least 2");
    ensure!(
        opts.endpoints.is_empty() || opts.nemesis.is_empty(),
        "--endpoints runs have no nemesis (it needs the processes)"
    );
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clear {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let mut kinds = FaultKind::expand(&opts.nemesis);
    if opts.db == Db::Etcd {
        kinds.retain(|k| *k != FaultKind::Partition);
    }
    let faketime = Path::new(FAKETIME_LIB).exists();
    let cluster = if opts.endpoints.is_empty() { Some(start_cluster(&opts, &out, faketime).await?) } else { None };
    let endpoints = match &cluster {
        Some(c) => c.lock().await.endpoints(),
        None => opts.endpoints.clone(),
    };
    let recorder = Recorder::new(std::time::Instant::now());
    let shared = Shared {
        recorder: recorder.clone(),
        endpoints: endpoints.clone(),
        request_timeout: opts.request_timeout(),
        read_mode: opts.read_mode,
        deadline: Instant::now() + Duration::from_secs(opts.time_limit),
        concurrency: opts.concurrency,
        rate: opts.rate,
        seed,
        next_value: Arc::new(AtomicU64::new(0)),
        watch_log: Default::default(),
    };
    let schedule = Schedule {
        kinds,
        quiet: (Duration::from_secs_f64(opts.nemesis_interval / 5.0), Duration::from_secs_f64(opts.nemesis_interval)),
        hold: (Duration::from_secs_f64(opts.fault_max / 3.0), Duration::from_secs_f64(opts.fault_max)),
        seed,
        faketime,
    };
    let faults = drive(&opts, &shared, cluster.clone(), schedule).await?;
    if let Some(c) = &cluster {
        nemesis::heal_all(c).await?;
        c.lock().await.wait_healthy(Duration::from_secs(60)).await.context("cluster did not recover after healing")?;
    }
    final_phase(&opts, &shared).await?;
    let names: Vec<String> = match &cluster {
        Some(c) => c.lock().await.names(),
        // Given endpoints are named e1, e2... (they name the truth files).
        None => (1..=endpoints.len()).map(|i| format!("e{i}")).collect(),
    };
    let truths = truth::collect(&names, &endpoints).await?;
    let logs = match &cluster {
        Some(c) => c.lock().await.log_paths(),
        None => Vec::new(),
    };
    if let Some(c) = &cluster {
        c.lock().await.stop_all();
    }
    let artifacts = Artifacts {
        history: recorder.snapshot(),
        faults,
        watches: shared.watch_log.lock().expect("watch log").clone(),
        truths,
        logs,
    };
    let reproduce = opts.reproduce(seed, &out);
    let results = results::check_and_write(&out, opts.workload, &artifacts, &reproduce, json!({"seed": seed}))?;
    let valid = results.iter().fold(Validity::Valid, |v, r| v.and(r.valid));
    let ops = artifacts.history.iter().filter(|o| o.is_client() && o.kind == crate::history::OpType::Invoke).count();
    Ok(RunOutcome { valid, results, dir: out, ops, reproduce })
}

/// Starts the cluster, retrying with fresh ports when a member lost a port race.
async fn start_cluster(opts: &TestOpts, out: &Path, faketime: bool) -> Result<Arc<Mutex<Cluster>>> {
    ensure!(opts.nodes >= 1, "--nodes must be at least 1");
    let bin = match (&opts.geobuk_bin, opts.db) {
        (_, Db::Etcd) => PathBuf::from(ETCD_BIN),
        (Some(b), Db::Geobuk) => b.clone(),
        (None, Db::Geobuk) => crate::cluster::build_geobuk()?,
    };
    let mut last = anyhow::anyhow!("no attempt");
    for attempt in 0..3 {
        let spec = ClusterSpec {
            db: opts.db,
            bin: bin.clone(),
            nodes: opts.nodes,
            dir: out.join("members").join(format!("attempt-{attempt}")),
            heartbeat_ms: opts.heartbeat_interval_ms,
            election_ms: opts.election_timeout_ms,
            progress_notify: "1s".into(),
            snapshot_count: 10_000,
            faketime,
            extra_args: Vec::new(),
            proxied: true,
        };
        match Cluster::start(spec).await {
            Ok(c) => return Ok(Arc::new(Mutex::new(c))),
            Err(e) => last = e,
        }
    }
    Err(last.context("cluster start failed 3 times"))
}

/// Runs the workers, the nemesis and the progress display until the time limit.
async fn drive(
    opts: &TestOpts,
    shared: &Shared,
    cluster: Option<Arc<Mutex<Cluster>>>,
    schedule: Schedule,
) -> Result<Vec<FaultWindow>> {
    let deadline = shared.deadline;
    let mut nemesis = cluster.map(|c| Nemesis::new(c, shared.recorder.clone(), schedule));
    let label = nemesis.as_ref().map(|n| n.current.clone()).unwrap_or_default();
    let progress = crate::progress::start(opts.time_limit, shared.recorder.clone(), label, !opts.no_progress);
    let workers = tokio::spawn(workload::run(opts.workload, shared.clone()));
    let faults = match &mut nemesis {
        Some(n) => {
            let result = n.run(deadline).await;
            if let Err(e) = result {
                // A harness failure, not a verdict: still heal and report what happened.
                tracing::error!("nemesis failed: {e:#}");
                eprintln!("nemesis failed: {e:#}");
            }
            n.faults.clone()
        }
        None => Vec::new(),
    };
    workers.await.context("workers")?;
    progress.finish();
    Ok(faults)
}

/// The workload's final phase after healing (final reads, watch catch-up, lease expiry).
async fn final_phase(opts: &TestOpts, shared: &Shared) -> Result<()> {
    let mut finisher = Worker::new(shared.clone(), opts.concurrency);
    finisher.process = 1_000_000;
    workload::final_phase(opts.workload, shared, finisher).await
}

/// Reads back `results.json` of an earlier run.
pub fn load_results(dir: &Path) -> Result<Vec<CheckResult>> {
    let text = std::fs::read_to_string(dir.join("results.json")).context("read results.json")?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    Ok(serde_json::from_value(value["checkers"].clone())?)
}

/// Ops of a history file.
pub fn load_history(dir: &Path) -> Result<Vec<Op>> {
    let text = std::fs::read_to_string(dir.join("history.jsonl")).context("read history.jsonl")?;
    Ok(crate::history::parse_jsonl(&text)?)
}
