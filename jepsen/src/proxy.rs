//! A userspace TCP proxy for one directed peer link (A dials B through it), controllable per
//! direction like etcd's `pkg/proxy`: bytes pass, are dropped (blackhole, on the connections that
//! are already open too), or every connection is closed (reset).
//!
//! "To server" is the direction of the bytes the dialing member sends; "to client" carries what the
//! dialed member answers on those connections. A connection that dropped bytes in some direction
//! has a hole in its byte stream and cannot go on meaningfully, so when that direction is healed
//! the proxy closes it (as a real TCP connection would eventually time out); new connections then
//! pass normally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// One direction of the proxied connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Bytes from the dialing side (the proxy's client) to the target.
    ToServer,
    /// Bytes from the target back to the dialing side.
    ToClient,
}

struct Shared {
    /// `true` while the direction is blackholed.
    to_server: watch::Sender<bool>,
    to_client: watch::Sender<bool>,
    /// Bumped by `reset`: every connection open at that moment closes.
    generation: watch::Sender<u64>,
    /// Connection tasks, aborted when the proxy is dropped.
    conns: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// A TCP proxy listening on a free loopback port and forwarding to `target`.
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Binds a free port on 127.0.0.1 and starts forwarding every accepted connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind proxy listener")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            to_server: watch::channel(false).0,
            to_client: watch::channel(false).0,
            generation: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.accepted.fetch_add(1, Ordering::Relaxed);
                let conn_shared = accept_shared.clone();
                let task = tokio::spawn(async move {
                    // A target that is down: the inbound connection is closed, like a refused dial.
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        serve(inbound, outbound, conn_shared).await;
                    }
                });
                let mut conns = accept_shared.conns.lock().expect("proxy conns lock");
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Ok(Proxy { port, target, shared, accept_task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the URL a member is told to dial instead of the target.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Drops every byte in `dir` from now on, on open and new connections.
    pub fn blackhole(&self, dir: Dir) {
        self.sender(dir).send_replace(true);
    }

    /// Lets bytes in `dir` pass again (closing connections that lost bytes in that direction).
    pub fn pass(&self, dir: Dir) {
        self.sender(dir).send_replace(false);
    }

    /// Blackholes both directions.
    pub fn blackhole_both(&self) {
        self.blackhole(Dir::ToServer);
        self.blackhole(Dir::ToClient);
    }

    /// Lets both directions pass.
    pub fn pass_both(&self) {
        self.pass(Dir::ToServer);
        self.pass(Dir::ToClient);
    }

    /// Closes every connection open now; later connections are served normally.
    pub fn reset(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    pub fn is_blackholed(&self, dir: Dir) -> bool {
        *self.sender(dir).borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes dropped so far by blackholing.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped_bytes.load(Ordering::Relaxed)
    }

    fn sender(&self, dir: Dir) -> &watch::Sender<bool> {
        match dir {
            Dir::ToServer => &self.shared.to_server,
            Dir::ToClient => &self.shared.to_client,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        for conn in self.shared.conns.lock().expect("proxy conns lock").drain(..) {
            conn.abort();
        }
    }
}

/// Copies both directions until either side closes, a reset, or a heal after lost bytes.
async fn serve(inbound: TcpStream, outbound: TcpStream, shared: Arc<Shared>) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut generation = shared.generation.subscribe();
    generation.borrow_and_update();
    let up = pump(in_read, out_write, shared.to_server.subscribe(), &shared);
    let down = pump(out_read, in_write, shared.to_client.subscribe(), &shared);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
    // Dropping both halves of both streams closes the two TCP connections.
}

/// One direction: forwards or drops bytes; returns when the connection must close.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut blackholed: watch::Receiver<bool>, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut lost_bytes = false;
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if *blackholed.borrow_and_update() {
                    lost_bytes = true;
                    shared.dropped_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = blackholed.changed() => {
                if changed.is_err() || (lost_bytes && !*blackholed.borrow_and_update()) {
                    return;
                }
            }
        }
    }
}
