//! Multi-member clusters of real store processes on loopback: start, per-member faults (SIGKILL,
//! SIGTERM, SIGSTOP/SIGCONT, restart, wiping the data directory), leader discovery through
//! `Status`, convergence through `HashKV`, membership changes, restores from a backup, and (geobuk
//! only) a TCP proxy on every directed peer link for partitions.
//!
//! Members are named `{prefix}{index}` (`m0`, `m1`, ...) and run with etcd's flag names for both
//! targets. Every test that starts a cluster must hold [`serial()`] first so that two multi-member
//! clusters never run at once in one test binary.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Client, ConnectOptions, GetOptions, HashKvResponse, MemberAddOptions, StatusResponse};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};
use tokio::task::JoinHandle;

use super::proxy::{Dir, Proxy};
use super::{PROBE_INTERVAL, PROBE_TIMEOUT, READY_TIMEOUT, START_ATTEMPTS, TERMINATE_TIMEOUT};
use super::{free_port, is_etcd, rev, send_signal};

/// Held by every cluster test: one multi-member cluster at a time per test binary (2 cores).
static SERIAL: AsyncMutex<()> = AsyncMutex::const_new(());

/// How long the live members may take to agree on one leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the live members may take to reach the same revision and `HashKV`.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member that must refuse to start may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one put of the background writers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's answer to a reconfiguration while a member is not yet connected to every peer for 5 s.
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
/// Lines of each member's log printed when the cluster is dropped (shown on failure).
const MEMBER_LOG_TAIL_LINES: usize = 40;
/// Error and panic lines of each member's log printed after the tails (the first ones).
const MEMBER_LOG_NOTABLE_LINES: usize = 12;

/// Locks the per-binary cluster mutex; hold the guard for the whole test.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// `--election-timeout` in ms.
    pub election_ms: u64,
    /// `--heartbeat-interval` in ms.
    pub heartbeat_ms: u64,
    /// `--snapshot-count`, if not the default.
    pub snapshot_count: Option<u64>,
    /// `--experimental-snapshot-catchup-entries` (geobuk only: etcd 3.4 keeps 5000, fixed).
    pub catchup_entries: Option<u64>,
    /// A proxy on every directed peer link, through `--experimental-peer-dial-overrides` (geobuk only).
    pub proxied: bool,
    /// `--initial-cluster-token`.
    pub token: String,
    /// More flags for every member (etcd's names).
    pub extra_args: Vec<String>,
    /// Restore every member's data directory from this backup before the first start.
    pub restore_from: Option<PathBuf>,
    /// Member names are `{name_prefix}{index}`.
    pub name_prefix: String,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            election_ms: 1000,
            heartbeat_ms: 100,
            snapshot_count: None,
            catchup_entries: None,
            proxied: false,
            token: "geobuk-test-cluster".into(),
            extra_args: Vec::new(),
            restore_from: None,
            name_prefix: "m".into(),
        }
    }
}

/// One member process and the flags it is (re)started with. The bootstrap flags can be changed
/// between stop and start through [`TestCluster::member_mut`].
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: "new" or "existing".
    pub state: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// More flags for this member only.
    pub extra_args: Vec<String>,
    /// `--experimental-peer-dial-overrides` (geobuk only).
    pub dial_overrides: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    id: u64,
}

impl Member {
    /// `127.0.0.1:PORT` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("member.log")
    }

    /// Raft member id as reported by `Status` (0 until the member was seen ready once).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn command(&self, opts: &ClusterOpts) -> Command {
        let (client, peer) = (self.client_url(), self.peer_url());
        let mut cmd = super::member_command();
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", &self.state, "--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &opts.heartbeat_ms.to_string()])
            .args(["--election-timeout", &opts.election_ms.to_string()]);
        if let Some(n) = opts.snapshot_count {
            cmd.args(["--snapshot-count", &n.to_string()]);
        }
        if !is_etcd() {
            if let Some(n) = opts.catchup_entries {
                cmd.args(["--experimental-snapshot-catchup-entries", &n.to_string()]);
            }
            if let Some(overrides) = &self.dial_overrides {
                cmd.args(["--experimental-peer-dial-overrides", overrides]);
            }
        }
        cmd.args(&opts.extra_args).args(&self.extra_args);
        cmd
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

/// Runs `geobuk snapshot restore` / `etcdctl snapshot restore` for `member` from `snapshot`.
pub async fn restore(snapshot: &Path, member: &Member) -> Result<()> {
    let mut cmd = if is_etcd() {
        let mut c = tokio::process::Command::new("/usr/bin/etcdctl");
        c.env("ETCDCTL_API", "3");
        c
    } else {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_geobuk"))
    };
    cmd.args(["snapshot", "restore"])
        .arg(snapshot)
        .args(["--name", &member.name, "--data-dir"])
        .arg(member.data_dir())
        .args(["--initial-cluster", &member.initial_cluster, "--initial-cluster-token", &member.token])
        .args(["--initial-advertise-peer-urls", &member.peer_url()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out =
        super::within_for(Duration::from_secs(60), "snapshot restore", cmd.output()).await?.context("run restore")?;
    let mut log = OpenOptions::new().create(true).append(true).open(member.log_path())?;
    writeln!(log, "=== harness: {cmd:?} -> {}", out.status)?;
    log.write_all(&out.stdout)?;
    log.write_all(&out.stderr)?;
    ensure!(
        out.status.success(),
        "snapshot restore failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A client for `endpoints` with bounded connect time and the given per-request timeout.
pub async fn connect_with(endpoints: &[String], request_timeout: Duration) -> Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(request_timeout);
    Client::connect(endpoints, Some(options)).await.with_context(|| format!("connect to {endpoints:?}"))
}

/// n store processes on loopback forming one cluster.
pub struct TestCluster {
    dir: TempDir,
    opts: ClusterOpts,
    members: Vec<Member>,
    /// (from, to) -> proxy that `from` dials instead of `to`'s peer port.
    proxies: BTreeMap<(usize, usize), Proxy>,
}

impl TestCluster {
    /// A cluster directory with no member yet (see [`TestCluster::new_member`]).
    pub fn empty(opts: ClusterOpts) -> Result<Self> {
        ensure!(SERIAL.try_lock().is_err(), "hold common::cluster::serial() before starting a cluster");
        ensure!(!(opts.proxied && is_etcd()), "proxied clusters need geobuk's --experimental-peer-dial-overrides");
        let dir = tempfile::Builder::new().prefix("geobuk-cluster-").tempdir().context("create temp dir")?;
        Ok(TestCluster { dir, opts, members: Vec::new(), proxies: BTreeMap::new() })
    }

    /// Starts `n` members with `--initial-cluster-state new` and waits until every member reports
    /// the same leader. Start-up is retried with fresh ports when a member lost a port race.
    pub async fn start(n: usize, opts: ClusterOpts) -> Result<Self> {
        let mut cluster = Self::empty(opts)?;
        let mut last_err = anyhow!("no start attempt");
        for attempt in 0..START_ATTEMPTS {
            cluster.stop_all_and_forget()?;
            match cluster.try_start(n).await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let port_race = (0..cluster.members.len()).any(|i| {
                        cluster.members[i].exit_status().is_some()
                            && cluster.log(i).to_lowercase().contains("address already in use")
                    });
                    if !port_race {
                        return Err(e.context(format!("cluster start attempt {attempt}")));
                    }
                    eprintln!("cluster start attempt {attempt} lost a port race, retrying: {e:#}");
                    last_err = e;
                }
            }
        }
        Err(last_err.context(format!("cluster did not start after {START_ATTEMPTS} attempts")))
    }

    async fn try_start(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.new_member_unnamed()?;
        }
        let initial = self.initial_cluster(&(0..n).collect::<Vec<_>>());
        for m in &mut self.members {
            m.initial_cluster = initial.clone();
        }
        if self.opts.proxied {
            for from in 0..n {
                let mut overrides = Vec::new();
                for to in 0..n {
                    if from == to {
                        continue;
                    }
                    let target: SocketAddr = format!("127.0.0.1:{}", self.members[to].peer_port).parse()?;
                    let proxy = Proxy::start(target).await?;
                    overrides.push(format!("{}={}", self.members[to].name, proxy.url()));
                    self.proxies.insert((from, to), proxy);
                }
                self.members[from].dial_overrides = Some(overrides.join(","));
            }
        }
        if let Some(snapshot) = self.opts.restore_from.clone() {
            for m in &self.members {
                restore(&snapshot, m).await?;
            }
        }
        for i in 0..n {
            self.spawn(i)?;
        }
        for i in 0..n {
            self.wait_member_ready(i).await?;
        }
        self.leader().await?;
        Ok(())
    }

    /// Kills every member and forgets members and proxies (start-up retry).
    fn stop_all_and_forget(&mut self) -> Result<()> {
        for m in &mut self.members {
            m.kill_child();
            if m.dir.exists() {
                std::fs::remove_dir_all(&m.dir).with_context(|| format!("remove {}", m.dir.display()))?;
            }
        }
        self.members.clear();
        self.proxies.clear();
        Ok(())
    }

    fn new_member_unnamed(&mut self) -> Result<usize> {
        let name = format!("{}{}", self.opts.name_prefix, self.members.len());
        self.new_member(&name)
    }

    /// Allocates a member slot (ports, directory) without starting it. Its initial cluster is
    /// just itself, state "new", the cluster's token; change them with `member_mut` before `spawn`.
    pub fn new_member(&mut self, name: &str) -> Result<usize> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut member = Member {
            name: name.to_string(),
            client_port: free_port()?,
            peer_port: free_port()?,
            initial_cluster: String::new(),
            state: "new".into(),
            token: self.opts.token.clone(),
            extra_args: Vec::new(),
            dial_overrides: None,
            dir,
            child: None,
            paused: false,
            id: 0,
        };
        member.initial_cluster = format!("{}={}", member.name, member.peer_url());
        self.members.push(member);
        Ok(self.members.len() - 1)
    }

    /// `name=peer_url,...` for the given members.
    pub fn initial_cluster(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    /// Number of member slots (running or not, including removed ones).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// The member's id (known once it was ready).
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// The index of the member with this raft id.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id && id != 0)
    }

    /// The member's whole log (all its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].log_path()).unwrap_or_default()
    }

    /// Members whose process runs and is not paused.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].is_running() && !self.members[i].paused).collect()
    }

    /// All members except `i`, among the live ones.
    pub fn live_except(&mut self, i: usize) -> Vec<usize> {
        self.live().into_iter().filter(|&j| j != i).collect()
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// Starts member `i`'s process with its current flags, without waiting for anything.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        ensure!(!self.members[i].is_running(), "member {} already running", self.members[i].name);
        let member = &mut self.members[i];
        let log: File =
            OpenOptions::new().create(true).append(true).open(member.log_path()).context("open member log")?;
        let mut cmd = member.command(&self.opts);
        writeln!(&log, "=== harness: starting {cmd:?}")?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        member.child = Some(cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?);
        member.paused = false;
        Ok(())
    }

    /// Polls `Status` on member `i` until it answers with a known leader; records its id.
    pub async fn wait_member_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            let name = self.members[i].name.clone();
            if let Some(status) = self.members[i].exit_status() {
                bail!("member {name} exited during start-up: {status}");
            }
            match self.status(i).await {
                Ok(s) if s.leader() != 0 => {
                    self.members[i].id = s.header().context("status header")?.member_id();
                    return Ok(());
                }
                Ok(_) => last = "no leader yet".into(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("member {name} not ready within {READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// SIGKILL member `i` (works on a paused member too) and reap it.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let member = &mut self.members[i];
        let mut child = member.child.take().with_context(|| format!("member {} not running", member.name))?;
        child.kill().context("SIGKILL member")?;
        child.wait().context("reap killed member")?;
        member.paused = false;
        Ok(())
    }

    /// SIGTERM member `i` and wait for its exit (bounded).
    pub async fn terminate(&mut self, i: usize) -> Result<ExitStatus> {
        let pid = self.pid(i)?;
        send_signal(pid, "-TERM")?;
        if self.members[i].paused {
            send_signal(pid, "-CONT")?;
            self.members[i].paused = false;
        }
        self.wait_exit(i, TERMINATE_TIMEOUT).await
    }

    /// Waits (bounded) until member `i`'s process exits on its own; returns its exit status.
    pub async fn wait_exit(&mut self, i: usize, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let member = &mut self.members[i];
            let child = member.child.as_mut().with_context(|| format!("member {} not running", member.name))?;
            if let Some(status) = child.try_wait()? {
                member.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("member {} did not exit within {limit:?}", member.name);
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// SIGSTOP: the process keeps its sockets but does nothing until `resume`.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        send_signal(self.pid(i)?, "-STOP")?;
        self.members[i].paused = true;
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        send_signal(self.pid(i)?, "-CONT")?;
        self.members[i].paused = false;
        Ok(())
    }

    pub fn pid(&self, i: usize) -> Result<u32> {
        let member = &self.members[i];
        Ok(member.child.as_ref().with_context(|| format!("member {} not running", member.name))?.id())
    }

    /// Starts member `i` again on the same data directory, ports and flags (SIGKILL first if it
    /// still runs) and waits until it answers `Status` with a leader.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_some() {
            self.members[i].kill_child();
        }
        self.spawn(i)?;
        self.wait_member_ready(i).await
    }

    /// Deletes member `i`'s data directory (the member must be stopped).
    pub fn wipe(&mut self, i: usize) -> Result<()> {
        ensure!(!self.members[i].is_running(), "wipe needs member {} stopped", self.members[i].name);
        let data = self.members[i].data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("remove {}", data.display()))?;
        }
        Ok(())
    }

    /// A client connected to member `i` only.
    pub async fn client(&self, i: usize) -> Result<Client> {
        super::connect(&self.endpoint(i)).await
    }

    /// A client balancing over the given members only.
    pub async fn client_for(&self, members: &[usize]) -> Result<Client> {
        let endpoints: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        connect_with(&endpoints, Duration::from_secs(30)).await
    }

    /// A client balancing over every live member.
    pub async fn client_all(&mut self) -> Result<Client> {
        let live = self.live();
        self.client_for(&live).await
    }

    /// `Status` of member `i` (fresh connection, bounded by `PROBE_TIMEOUT`).
    pub async fn status(&self, i: usize) -> Result<StatusResponse> {
        let endpoint = self.endpoint(i);
        let probe = async {
            let mut client = super::connect(&endpoint).await?;
            Ok::<_, anyhow::Error>(client.status().await?)
        };
        super::within_for(PROBE_TIMEOUT, "Status", probe).await?
    }

    /// `HashKV(rev)` answered by member `i`.
    pub async fn hash_kv(&self, i: usize, revision: i64) -> Result<HashKvResponse> {
        let mut client = self.client(i).await?;
        Ok(super::within("HashKV", client.hash_kv(revision)).await??)
    }

    /// Index of the leader that every live member agrees on (polls until `LEADER_TIMEOUT`).
    pub async fn leader(&mut self) -> Result<usize> {
        let live = self.live();
        self.leader_among(&live).await
    }

    /// Index of the leader that all of `members` report, which must be one of them.
    pub async fn leader_among(&self, members: &[usize]) -> Result<usize> {
        ensure!(!members.is_empty(), "no member to ask for the leader");
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for &i in members {
                seen.push(match self.status(i).await {
                    Ok(s) => s.leader(),
                    Err(_) => 0,
                });
            }
            let agreed = seen[0] != 0 && seen.iter().all(|&l| l == seen[0]);
            if let Some(idx) = self.index_of(seen[0]).filter(|idx| agreed && members.contains(idx)) {
                return Ok(idx);
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = members.iter().map(|&i| self.members[i].name.as_str()).collect();
                bail!("members {names:?} did not agree on a leader among them within {LEADER_TIMEOUT:?}: {seen:x?}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Waits until all `members` report the same store revision and the same `HashKV` at it;
    /// returns (revision, hash). Call it once writes have stopped.
    pub async fn converge(&self, members: &[usize]) -> Result<(i64, u32)> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let mut last;
        loop {
            let mut revs = Vec::new();
            for &i in members {
                revs.push(self.status(i).await.map(|s| rev(s.header())).unwrap_or(-1));
            }
            if revs[0] > 0 && revs.iter().all(|&r| r == revs[0]) {
                let mut hashes = Vec::new();
                for &i in members {
                    hashes.push(self.hash_kv(i, revs[0]).await.map(|h| h.hash()).ok());
                }
                if hashes[0].is_some() && hashes.iter().all(|h| *h == hashes[0]) {
                    return Ok((revs[0], hashes[0].unwrap_or_default()));
                }
                last = format!("revision {} on all, hashes {hashes:x?}", revs[0]);
            } else {
                last = format!("revisions {revs:?}");
            }
            if Instant::now() > deadline {
                bail!("members did not converge within {CONVERGE_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `converge` over every live member.
    pub async fn converge_live(&mut self) -> Result<(i64, u32)> {
        let live = self.live();
        self.converge(&live).await
    }

    /// MemberAdd (as a learner if asked) through the live members, then starts a new process named
    /// `name` with `--initial-cluster-state existing` and the member list the add answered, and
    /// waits until it reports a leader. The new member's links are not proxied.
    pub async fn add_member(&mut self, name: &str, learner: bool) -> Result<usize> {
        let (i, new_id) = self.member_add(name, learner).await?;
        self.spawn(i)?;
        self.wait_member_ready(i).await?;
        ensure!(
            self.members[i].id == new_id,
            "new member reports id {:x}, MemberAdd gave {new_id:x}",
            self.members[i].id
        );
        Ok(i)
    }

    /// MemberRemove of member `id` through `client`, asked again while etcd's strict reconfig
    /// check answers "unhealthy cluster" (the member answering has not been connected to every
    /// peer for 5 s yet), for up to 30 s.
    pub async fn member_remove(client: &mut Client, id: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match super::within("MemberRemove", client.member_remove(id)).await? {
                Ok(_) => return Ok(()),
                Err(e) if super::grpc_status(&e).is_some_and(|(_, m)| m == UNHEALTHY) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("MemberRemove of {id:x}")),
            }
        }
    }

    /// MemberAdd through the live members for a new slot named `name` (not started): its
    /// initial cluster is the member list the add answered, its state "existing". Returns the
    /// slot and the id MemberAdd assigned.
    pub async fn member_add(&mut self, name: &str, learner: bool) -> Result<(usize, u64)> {
        let live = self.live();
        let i = self.new_member(name)?;
        let peer_url = self.members[i].peer_url();
        let mut client = self.client_for(&live).await?;
        // etcd (strict reconfig check) refuses a MemberAdd with Unavailable "etcdserver: unhealthy
        // cluster" until the member answering it has been connected to all peers for 5 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let resp = loop {
            let options = learner.then(|| MemberAddOptions::new().with_is_learner());
            match super::within("MemberAdd", client.member_add([peer_url.as_str()], options)).await? {
                Ok(resp) => break resp,
                Err(e) if super::grpc_status(&e).is_some_and(|(_, m)| m == UNHEALTHY) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).context("MemberAdd"),
            }
        };
        let new_id = resp.member().context("MemberAdd answered no member")?.id();
        let mut initial = Vec::new();
        for m in resp.member_list() {
            let member_name = if m.id() == new_id { name } else { m.name() };
            for url in m.peer_urls() {
                initial.push(format!("{member_name}={url}"));
            }
        }
        let member = &mut self.members[i];
        member.initial_cluster = initial.join(",");
        member.state = "existing".into();
        Ok((i, new_id))
    }

    /// The proxy on the directed link `from` → `to` (proxied clusters only).
    pub fn link(&self, from: usize, to: usize) -> Result<&Proxy> {
        self.proxies.get(&(from, to)).with_context(|| format!("no proxy for link {from}->{to} (cluster not proxied?)"))
    }

    /// Blackholes every byte on every link to and from member `i`.
    pub fn isolate(&self, i: usize) -> Result<()> {
        ensure!(self.opts.proxied, "isolate needs a proxied cluster");
        for (&(from, to), proxy) in &self.proxies {
            if from == i || to == i {
                proxy.blackhole_both();
            }
        }
        Ok(())
    }

    /// Splits the members into groups that cannot talk to each other (links inside a group pass).
    pub fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        ensure!(self.opts.proxied, "partition needs a proxied cluster");
        let group_of = |m: usize| groups.iter().position(|g| g.contains(&m));
        for (&(from, to), proxy) in &self.proxies {
            if group_of(from) == group_of(to) {
                proxy.pass_both();
            } else {
                proxy.blackhole_both();
            }
        }
        Ok(())
    }

    /// Lets every byte on every link pass again.
    pub fn heal_all(&self) {
        for proxy in self.proxies.values() {
            proxy.pass(Dir::ToServer);
            proxy.pass(Dir::ToClient);
        }
    }

    fn print_log_tails(&self) {
        for (i, m) in self.members.iter().enumerate() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(MEMBER_LOG_TAIL_LINES);
            eprintln!("--- log tail of member {} (id {:x}, {}) ---", m.name, m.id, m.log_path().display());
            for line in &lines[start..] {
                eprintln!("{line}");
            }
        }
        // Last, so that a runner showing only the end of the output still shows them: the
        // errors and panics from anywhere in each log, which the tails often miss.
        for (i, m) in self.members.iter().enumerate() {
            let log = self.log(i);
            let notable: Vec<&str> = log.lines().filter(|l| is_notable_log_line(l)).collect();
            // The first ones: a failure's cause comes before the errors that follow from it.
            let shown = notable.len().min(MEMBER_LOG_NOTABLE_LINES);
            eprintln!("--- errors and panics of member {} (first {shown} of {}) ---", m.name, notable.len());
            for line in &notable[..shown] {
                eprintln!("{line}");
            }
        }
        eprintln!("--- end of member logs ---");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill_child();
        }
        self.proxies.clear();
        // Captured by the test harness: shown only when the test fails (or with --nocapture).
        self.print_log_tails();
    }
}

/// key -> (value, revision of the acknowledged put).
pub type Acked = BTreeMap<String, (String, i64)>;

/// Background writers: one task per client putting unique keys `{prefix}{task}/{seq}` until
/// stopped; only acknowledged puts are recorded. Failed puts are skipped (they may or may not
/// have been applied) and the next key is tried after a short pause.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    count: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    pub fn start(prefix: &str, clients: Vec<Client>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(w, mut client)| {
                let (stop, acked, count, failures) = (stop.clone(), acked.clone(), count.clone(), failures.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("{prefix}{w}/{seq:07}"), format!("value-{w}-{seq}"));
                        seq += 1;
                        match tokio::time::timeout(WRITE_TIMEOUT, client.put(key.clone(), value.clone(), None)).await {
                            Ok(Ok(resp)) => {
                                acked.lock().expect("acked lock").insert(key, (value, rev(resp.header())));
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acked, count, failures, tasks }
    }

    /// Puts acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Puts that failed or timed out so far.
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` puts were acknowledged in total.
    pub async fn wait_acked(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.acked_count() < n {
            ensure!(
                Instant::now() < deadline,
                "only {} of {n} puts acknowledged within {limit:?} ({} failed)",
                self.acked_count(),
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until `more` puts were acknowledged after this call.
    pub async fn wait_more(&self, more: usize, limit: Duration) -> Result<()> {
        self.wait_acked(self.acked_count() + more, limit).await
    }

    /// Stops the writers (in-flight puts finish or time out) and returns every acknowledged put.
    pub async fn stop(mut self) -> Result<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            super::within_for(WRITE_TIMEOUT * 2, "writer task to stop", task).await??;
        }
        let acked = self.acked.lock().expect("acked lock").clone();
        Ok(acked)
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every acknowledged put is stored with its value, `create_revision == mod_revision == acked
/// revision` and version 1 (each key was written once); one linearizable read of `prefix`.
pub async fn check_acked(client: &mut Client, prefix: &str, acked: &Acked) -> Result<()> {
    check_acked_with(client, prefix, acked, false).await
}

/// `check_acked` with a serializable read (the answering member's local state) if asked.
pub async fn check_acked_with(client: &mut Client, prefix: &str, acked: &Acked, serializable: bool) -> Result<()> {
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = super::within("range over the acknowledged keys", client.get(prefix, Some(options))).await??;
    let stored: BTreeMap<String, (String, i64, i64, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            (key, (value, kv.create_revision(), kv.mod_revision(), kv.version()))
        })
        .collect();
    let mut bad = Vec::new();
    for (key, (value, r)) in acked {
        let got = stored.get(key);
        if got != Some(&(value.clone(), *r, *r, 1)) {
            bad.push(format!("{key}={value}@{r} stored as {got:?}"));
        }
    }
    ensure!(
        bad.is_empty(),
        "{} of {} acknowledged puts wrong, e.g. {:?}",
        bad.len(),
        acked.len(),
        &bad[..bad.len().min(5)]
    );
    Ok(())
}

/// The revisions of the acknowledged puts are unique (each revision belongs to one put).
pub fn check_unique_revisions(acked: &Acked) -> Result<()> {
    let revs: BTreeSet<i64> = acked.values().map(|(_, r)| *r).collect();
    ensure!(revs.len() == acked.len(), "{} acknowledged puts share {} revisions", acked.len(), revs.len());
    Ok(())
}

/// `GET path` over plain HTTP/1.1 on `endpoint` (`127.0.0.1:PORT`); returns (status, body).
/// Handles both `Content-Length` and chunked bodies.
pub async fn http_get(endpoint: &str, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut stream = TcpStream::connect(endpoint).await.with_context(|| format!("connect {endpoint}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = super::within("HTTP GET", fetch).await??;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("HTTP status line")?
        .parse()
        .with_context(|| format!("status line {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&body[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(body.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The sum of every series of metric `name` on a `/metrics` page (0 when absent).
pub fn metric_total(text: &str, name: &str) -> f64 {
    metric_samples(text, name).iter().map(|(_, v)| *v).sum()
}

/// Samples of the Prometheus metric `name` in a text exposition: (label text inside the braces,
/// value). `etcd_x{From="a"} 3` gives `("From=\"a\"", 3.0)`.
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
                let close = inner.find('}')?;
                (inner[..close].to_string(), inner[close + 1..].trim())
            } else if rest.starts_with(' ') {
                (String::new(), rest.trim())
            } else {
                return None;
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// A member log line worth showing whatever its place: an error event or a panic.
fn is_notable_log_line(line: &str) -> bool {
    line.contains("ERROR") || line.contains("panicked")
}

/// Raft ids print as lowercase hex without leading zeros in etcd's metrics and logs.
pub fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// Puts `n` unique keys `{prefix}{seq}` with `concurrency` tasks over `client`; every put must be
/// acknowledged. Returns the acknowledged puts.
pub async fn put_many(client: &Client, prefix: &str, n: usize, concurrency: usize) -> Result<Acked> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut client, next, prefix) = (client.clone(), next.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n {
                    return anyhow::Ok(acked);
                }
                let (key, value) = (format!("{prefix}{seq:07}"), format!("value-{seq}"));
                let resp = super::within_for(WRITE_TIMEOUT, "a put", client.put(key.clone(), value.clone(), None))
                    .await?
                    .with_context(|| format!("put {key}"))?;
                acked.push((key, (value, rev(resp.header()))));
            }
        }));
    }
    let mut all = Acked::new();
    for task in tasks {
        all.extend(task.await??);
    }
    ensure!(all.len() == n, "{} of {n} puts acknowledged", all.len());
    Ok(all)
}
