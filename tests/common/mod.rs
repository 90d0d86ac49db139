//! Test harness shared by every integration test file: starts one store process per test on
//! loopback and hands out `etcd-client` clients.
//!
//! By default the process is `geobuk store`. With `GEOBUK_TEST_TARGET=etcd` the same tests run
//! against Debian's etcd 3.4.23 (`/usr/bin/etcd`), which is how the expectations in this suite were
//! validated: a test that passes there encodes etcd's real behaviour.
//!
//! Extra flags are given with etcd's names (`--max-request-bytes`, `--max-txn-ops`,
//! `--election-timeout`, `--experimental-watch-progress-notify-interval`); `geobuk store` accepts
//! the same names, and for etcd the harness adds the `--heartbeat-interval` that etcd needs.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

pub mod cluster;
pub use jepsen::ports::free_port;
pub use jepsen::proxy;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, ResponseHeader, WatchResponse};
use etcd_client::{Error as EtcdError, WatchStream};
use tempfile::TempDir;

/// How long a server may take to answer `Status` with a leader after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one readiness probe may take before the next is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness probes (polling, not a fixed wait for the server).
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Start attempts with fresh ports when the process dies during start-up (port races).
const START_ATTEMPTS: usize = 5;
/// How long a SIGTERM'd server may take to exit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default bound for one awaited event (a watch message, an RPC answer).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the server log printed when a `TestServer` is dropped (shown by cargo only on failure).
const LOG_TAIL_LINES: usize = 60;

/// True when the suite runs against real etcd (`GEOBUK_TEST_TARGET=etcd`).
pub fn is_etcd() -> bool {
    std::env::var("GEOBUK_TEST_TARGET").is_ok_and(|v| v == "etcd")
}

/// Returns true (and says so) when the current test must be skipped on etcd 3.4.23.
pub fn skip_on_etcd(reason: &str) -> bool {
    if is_etcd() {
        eprintln!("SKIPPED on etcd 3.4.23: {reason}");
    }
    is_etcd()
}

/// One store process with its own data directory and port.
pub struct TestServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    peer_port: u16,
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server with default flags.
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra flags (etcd's names, e.g. `["--max-txn-ops", "4"]`).
    pub async fn start_with(args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("geobuk-test-").tempdir().context("create temp dir")?;
        let mut server = TestServer {
            child: None,
            dir,
            port: 0,
            peer_port: 0,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        };
        let mut last_err = anyhow!("no start attempt");
        for _ in 0..START_ATTEMPTS {
            server.port = free_port()?;
            server.peer_port = free_port()?;
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    // Only a process that exited on its own (e.g. port taken) is retried.
                    let exited = server.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                    server.kill_child();
                    if !exited {
                        return Err(e);
                    }
                    last_err = e;
                }
            }
        }
        Err(last_err.context(format!("server did not start after {START_ATTEMPTS} attempts")))
    }

    /// `127.0.0.1:PORT`, the form etcd-client and etcdctl take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, the advertised client URL.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the peer URL (geobuk's peer protocol).
    #[allow(dead_code)]
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The data directory handed to the server.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A fresh connected client.
    pub async fn client(&self) -> Result<Client> {
        connect(&self.endpoint()).await
    }

    /// The OS process id of the running server.
    pub fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().context("server not running")?.id())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("server not running")?;
        child.kill().context("SIGKILL server")?;
        child.wait().context("reap killed server")?;
        Ok(())
    }

    /// SIGTERM and wait for the exit (bounded by `TERMINATE_TIMEOUT`).
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.pid()?;
        send_signal(pid, "-TERM")?;
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            let child = self.child.as_mut().context("server not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("server did not exit within {TERMINATE_TIMEOUT:?} after SIGTERM");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing until `resume`.
    pub fn pause(&self) -> Result<()> {
        send_signal(self.pid()?, "-STOP")
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) -> Result<()> {
        send_signal(self.pid()?, "-CONT")
    }

    /// Starts the server again on the same data directory and port.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        let result = self.spawn_and_wait().await;
        if result.is_err() {
            self.kill_child();
        }
        result
    }

    /// The whole server log so far (all runs on this data directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).context("open server log")?;
        let mut cmd = self.command(&log)?;
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    fn command(&self, log: &File) -> Result<Command> {
        let url = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = member_command();
        // Both targets bind a peer listener (default :2380), so each server gets its own port.
        cmd.args(["--name", "default", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")]);
        if is_etcd() {
            cmd.args(etcd_args(&self.extra_args)?);
        } else {
            cmd.args(&self.extra_args);
        }
        writeln!(&*log, "=== harness: starting {cmd:?}")?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log.try_clone()?));
        Ok(cmd)
    }

    /// Polls `Status` until the server answers and knows a leader.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint();
        loop {
            if let Some(status) = self.child.as_mut().context("no child")?.try_wait()? {
                bail!("server exited during start-up: {status}");
            }
            let probe = async {
                let mut client = connect(&endpoint).await?;
                let status = client.status().await?;
                ensure!(status.leader() != 0, "no leader yet");
                Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server not ready within {READY_TIMEOUT:?} on {endpoint}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn print_log_tail(&self) {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        eprintln!("--- server log tail ({}) ---", self.log_path().display());
        for line in &lines[start..] {
            eprintln!("{line}");
        }
        eprintln!("--- end of server log ---");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_child();
        // Captured by the test harness: shown only when the test fails (or with --nocapture).
        self.print_log_tail();
    }
}

/// Maps the suite's flags to etcd's: etcd also needs `--heartbeat-interval` ≤ election / 5.
fn etcd_args(extra: &[String]) -> Result<Vec<String>> {
    let mut out = extra.to_vec();
    if let Some(pos) = extra.iter().position(|a| a == "--election-timeout") {
        let ms: u64 = extra
            .get(pos + 1)
            .context("--election-timeout needs a value")?
            .parse()
            .context("--election-timeout value")?;
        out.push("--heartbeat-interval".into());
        out.push((ms / 10).max(1).to_string());
    }
    Ok(out)
}

/// The command that runs one member of the target under test: `geobuk store`, or etcd with its
/// log on stderr.
pub fn member_command() -> Command {
    if is_etcd() {
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args(["--logger", "zap", "--log-outputs", "stderr"]);
        cmd
    } else {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_geobuk"));
        cmd.arg("store");
        cmd
    }
}

fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().context("run kill")?;
    ensure!(status.success(), "kill {signal} {pid} failed: {status}");
    Ok(())
}

/// A client for `endpoint` with bounded connect and request times.
pub async fn connect(endpoint: &str) -> Result<Client> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(30));
    Client::connect([endpoint], Some(options)).await.with_context(|| format!("connect to {endpoint}"))
}

/// Awaits `fut` for at most `EVENT_TIMEOUT`.
pub async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output> {
    within_for(EVENT_TIMEOUT, what, fut).await
}

/// Awaits `fut` for at most `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> Result<F::Output> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// The gRPC status (code name, message) inside an etcd-client error, if any.
pub fn grpc_status(err: &EtcdError) -> Option<(String, String)> {
    match err {
        EtcdError::GRpcStatus(s) => Some((format!("{:?}", s.code()), s.message().to_string())),
        _ => None,
    }
}

/// Asserts that `res` failed with exactly this gRPC code name (e.g. "InvalidArgument") and message.
pub fn expect_grpc_error<T: Debug>(res: Result<T, EtcdError>, code: &str, message: &str) -> Result<()> {
    match res {
        Ok(v) => bail!("expected {code} {message:?}, got success: {v:?}"),
        Err(e) => {
            let (got_code, got_msg) = grpc_status(&e).with_context(|| format!("not a gRPC status: {e:?}"))?;
            ensure!(got_code == code && got_msg == message, "expected {code} {message:?}, got {got_code} {got_msg:?}");
            Ok(())
        }
    }
}

/// The revision carried by a response header (which must be present).
pub fn rev(header: Option<&ResponseHeader>) -> i64 {
    header.expect("response has a header").revision()
}

/// The store's current revision, read with a Range that matches nothing.
pub async fn current_revision(client: &mut Client) -> Result<i64> {
    let resp = client.get("/__harness_probe__", Some(GetOptions::new().with_count_only())).await?;
    Ok(rev(resp.header()))
}

/// Keys of `kvs` as UTF-8 strings.
pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

/// Values of `kvs` as UTF-8 strings.
pub fn values(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).collect()
}

/// The next message of a watch stream; an error if the stream ends or nothing comes in time.
pub async fn next_watch(stream: &mut WatchStream) -> Result<WatchResponse> {
    within("a watch response", stream.message()).await??.context("watch stream ended")
}

/// Reads watch responses until `n` events arrived in total; returns the responses.
pub async fn watch_events(stream: &mut WatchStream, n: usize) -> Result<Vec<WatchResponse>> {
    let mut got = 0;
    let mut out = Vec::new();
    while got < n {
        let resp = next_watch(stream).await?;
        ensure!(!resp.canceled(), "watch canceled: {:?}", resp.cancel_reason());
        got += resp.events().len();
        out.push(resp);
    }
    ensure!(got == n, "expected {n} events, got {got}");
    Ok(out)
}

/// Path of etcdctl, or a failure that says how to install it.
pub fn etcdctl_path() -> Result<PathBuf> {
    let path = Path::new("/usr/bin/etcdctl");
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    bail!("etcdctl not found at /usr/bin/etcdctl: install Debian's etcd-client (apt-get install -y etcd-client)")
}
