//! The cluster under test: `geobuk store` member processes on loopback, each directed peer link
//! through a [`Proxy`] the nemesis controls, and the process-level faults (SIGKILL, SIGSTOP,
//! restart, wipe) and clock offsets (libfaketime) applied to them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::client;
use crate::ports::free_port;
use crate::proxy::{Dir, Proxy};

/// Where Debian's `libfaketime` package puts the preload library.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// How long a fresh cluster may take to elect a leader and answer on every member.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Which store the members run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    /// `geobuk store`, with every directed peer link through a proxy.
    Geobuk,
    /// Debian's etcd (`/usr/bin/etcd`), same flags; it cannot dial through proxies, so partitions
    /// are not available.
    Etcd,
}

/// Where Debian's etcd-server package installs etcd.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// How the members are started.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub db: Db,
    /// The `geobuk` binary (or etcd's).
    pub bin: PathBuf,
    pub nodes: usize,
    /// Member data dirs and logs go under this directory.
    pub dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// `--experimental-watch-progress-notify-interval`, so watches get bookmarks during a short run.
    pub progress_notify: String,
    pub snapshot_count: u64,
    /// Start members under libfaketime so the clock nemesis can shift their wall clock.
    pub faketime: bool,
    /// Extra flags for every member.
    pub extra_args: Vec<String>,
    /// Route every directed peer link through a proxy the nemesis controls (geobuk only).
    /// Benchmarks turn it off: a proxy adds a copy and a hop to every Raft message.
    pub proxied: bool,
}

/// One member slot.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// `new` at first; `existing` after a remove-and-re-add.
    state: String,
    /// `name=peer_url,...` it bootstraps or joins with.
    initial_cluster: String,
    /// peer-URL=proxy-URL for each other member.
    dial_overrides: String,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn clock_file(&self) -> PathBuf {
        self.dir.join("faketime")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, once it has (reaping it); `None` while it runs or was never started.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process exists (paused or not).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }
}

/// The members and the proxies on their peer links.
pub struct Cluster {
    spec: ClusterSpec,
    pub members: Vec<Member>,
    /// (from, to) → the proxy `from` dials instead of `to`'s peer port.
    proxies: BTreeMap<(usize, usize), Proxy>,
}

impl Cluster {
    /// Starts `spec.nodes` members with fresh data and waits until they agree on a leader.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        ensure!(spec.nodes >= 1, "need at least one member");
        ensure!(
            spec.bin.exists(),
            "geobuk binary {} not found (build it with `cargo build --release --bin geobuk`)",
            spec.bin.display()
        );
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("create {}", spec.dir.display()))?;
        let mut members = Vec::new();
        for i in 0..spec.nodes {
            let name = format!("n{}", i + 1);
            let dir = spec.dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            members.push(Member {
                name,
                client_port: free_port()?,
                peer_port: free_port()?,
                dir,
                child: None,
                paused: false,
                state: "new".into(),
                initial_cluster: String::new(),
                dial_overrides: String::new(),
            });
        }
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let mut proxies = BTreeMap::new();
        for member in &mut members {
            member.initial_cluster = initial.clone();
        }
        for from in (0..members.len()).filter(|_| spec.proxied && spec.db == Db::Geobuk) {
            let mut overrides = Vec::new();
            for (to, peer) in members.iter().enumerate().filter(|(to, _)| *to != from) {
                let target: SocketAddr = format!("127.0.0.1:{}", peer.peer_port).parse()?;
                let proxy = Proxy::start(target).await?;
                overrides.push(format!("{}={}", peer.peer_url(), proxy.url()));
                proxies.insert((from, to), proxy);
            }
            members[from].dial_overrides = overrides.join(",");
        }
        let mut cluster = Cluster { spec, members, proxies };
        for i in 0..cluster.members.len() {
            cluster.set_clock_offset(i, 0)?;
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT).await.context("cluster did not come up")?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Starts member `i` with its current flags.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let spec = self.spec.clone();
        let member = &mut self.members[i];
        ensure!(!member.is_running(), "member {} already running", member.name);
        let log = OpenOptions::new().create(true).append(true).open(member.log_path()).context("open member log")?;
        let mut cmd = Command::new(&spec.bin);
        match spec.db {
            Db::Geobuk => {
                cmd.arg("store");
                if !member.dial_overrides.is_empty() {
                    cmd.arg("--experimental-peer-dial-overrides").arg(&member.dial_overrides);
                }
            }
            Db::Etcd => {
                cmd.args(["--logger", "zap", "--log-outputs", "stderr"]);
            }
        }
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        for (flag, value) in [
            ("--name", member.name.clone()),
            ("--data-dir", member.data_dir().display().to_string()),
            ("--listen-client-urls", url(member.client_port)),
            ("--advertise-client-urls", url(member.client_port)),
            ("--listen-peer-urls", url(member.peer_port)),
            ("--initial-advertise-peer-urls", url(member.peer_port)),
            ("--initial-cluster", member.initial_cluster.clone()),
            ("--initial-cluster-state", member.state.clone()),
            ("--initial-cluster-token", "jepsen".into()),
            ("--heartbeat-interval", spec.heartbeat_ms.to_string()),
            ("--election-timeout", spec.election_ms.to_string()),
            ("--snapshot-count", spec.snapshot_count.to_string()),
            ("--experimental-watch-progress-notify-interval", spec.progress_notify.clone()),
        ] {
            cmd.arg(flag).arg(value);
        }
        cmd.args(&spec.extra_args);
        if spec.faketime {
            // Only the wall clock moves: Raft timers and lease clocks use the monotonic clock,
            // as they must, and an NTP-style jump of the wall clock must not affect safety.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", member.clock_file())
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        writeln!(&log, "=== jepsen: starting {cmd:?}")?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        member.child = Some(cmd.spawn().with_context(|| format!("spawn {:?}", spec.bin))?);
        member.paused = false;
        Ok(())
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let member = &mut self.members[i];
        if let Some(mut child) = member.child.take() {
            child.kill().ok();
            child.wait().with_context(|| format!("reap {}", member.name))?;
        }
        member.paused = false;
        Ok(())
    }

    /// SIGSTOP (pause = true) or SIGCONT.
    pub fn pause(&mut self, i: usize, pause: bool) -> Result<()> {
        let member = &mut self.members[i];
        let Some(pid) = member.pid() else { bail!("{} is not running", member.name) };
        signal(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT })?;
        member.paused = pause;
        Ok(())
    }

    /// Whether partitions can be made (the members dial each other through the proxies).
    pub fn can_partition(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Blackholes (cut = true) or heals both directions of the directed link `from` → `to`.
    pub fn set_link(&self, from: usize, to: usize, cut: bool) {
        if let Some(proxy) = self.proxies.get(&(from, to)) {
            if cut {
                proxy.blackhole(Dir::ToServer);
                proxy.blackhole(Dir::ToClient);
            } else {
                proxy.pass(Dir::ToServer);
                proxy.pass(Dir::ToClient);
            }
        }
    }

    /// Heals every link.
    pub fn heal_links(&self) {
        for proxy in self.proxies.values() {
            proxy.pass(Dir::ToServer);
            proxy.pass(Dir::ToClient);
        }
    }

    /// Shifts member `i`'s wall clock by `offset_secs` (libfaketime reads the file on every call).
    pub fn set_clock_offset(&self, i: usize, offset_secs: i64) -> Result<()> {
        let path = self.members[i].clock_file();
        std::fs::write(&path, format!("{offset_secs:+}s\n")).with_context(|| format!("write {}", path.display()))
    }

    /// Forgets member `i`'s data (after it was removed) so it can join again as a new member.
    pub fn wipe(&mut self, i: usize) -> Result<()> {
        ensure!(!self.members[i].is_running(), "wipe of a running member");
        let data = self.members[i].data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("remove {}", data.display()))?;
        }
        Ok(())
    }

    /// Prepares member `i` to join the running cluster (after MemberAdd): state `existing` and
    /// the current member list.
    pub fn prepare_join(&mut self, i: usize, members: &[usize]) {
        let initial = members
            .iter()
            .map(|&j| format!("{}={}", self.members[j].name, self.members[j].peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        self.members[i].initial_cluster = initial;
        self.members[i].state = "existing".into();
    }

    /// Index of the member with this client endpoint's Status member id, by asking each member.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.paused {
                continue;
            }
            let Ok(status) = client::status(&m.endpoint()).await else { continue };
            if status.leader != 0 && status.leader == status.member_id {
                return Some(i);
            }
        }
        None
    }

    /// Waits until every member is running, answers Status, agrees on one leader, and has applied
    /// what that leader has (the cluster has recovered from the faults).
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = anyhow!("no probe yet");
        while tokio::time::Instant::now() < deadline {
            // An exited process does not come back by waiting: say so now, not at the deadline.
            if let Some(m) = self.members.iter_mut().find_map(|m| (!m.is_running()).then_some(m)) {
                bail!("{} is not running", m.name);
            }
            match self.probe_healthy().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        Err(last.context(format!("not healthy within {limit:?}")))
    }

    async fn probe_healthy(&mut self) -> Result<()> {
        let mut statuses = Vec::new();
        for i in 0..self.members.len() {
            ensure!(self.members[i].is_running(), "{} is not running", self.members[i].name);
            let status = client::status(&self.members[i].endpoint()).await?;
            statuses.push(status);
        }
        let leader = statuses[0].leader;
        ensure!(leader != 0, "no leader");
        ensure!(statuses.iter().all(|s| s.leader == leader), "members disagree on the leader");
        let committed = statuses.iter().find(|s| s.member_id == leader).map(|s| s.raft_index).unwrap_or(0);
        ensure!(statuses.iter().all(|s| s.raft_applied_index >= committed), "members still catching up");
        Ok(())
    }

    /// Kills every member (end of the test).
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                let _ = self.pause(i, false);
            }
            let _ = self.kill(i);
        }
    }

    /// Log files of every member.
    pub fn log_paths(&self) -> Vec<(String, PathBuf)> {
        self.members.iter().map(|m| (m.name.clone(), m.log_path())).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The geobuk binary next to the running one, built first with `cargo build [--release] --bin
/// geobuk` when run through cargo (so a harness run always tests the current source).
pub fn build_geobuk() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current exe")?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    if let Ok(cargo) = std::env::var("CARGO") {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(root).args(["build", "--bin", "geobuk"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("run cargo build --bin geobuk")?;
        ensure!(status.success(), "cargo build --bin geobuk failed: {status}");
    }
    let bin = dir.join("geobuk");
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release --bin geobuk` or pass --geobuk-bin", bin.display());
    }
    Ok(bin)
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped); no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    ensure!(rc == 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    Ok(())
}
