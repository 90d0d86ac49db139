//! Serving: binds the etcd gRPC services (and gRPC health) on the client
//! listeners, with the operator's HTTP endpoints (`/metrics`, `/health`, ...)
//! on the same port as etcd does, plus HTTP-only listeners for
//! `--listen-metrics-urls`; runs until the shutdown future resolves.
//!
//! One port, two protocols: tonic's server (hyper's auto connection builder,
//! with `accept_http1`) tells an HTTP/2 connection preface from HTTP/1.1, so
//! gRPC clients (h2c) and curl (HTTP/1.1) share the listener; one axum router
//! holds the gRPC services and the HTTP routes, whose fallback answers 404 to
//! HTTP and Unimplemented to unknown gRPC methods.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;

use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::StoreConfig;
use crate::http::GrpcMetricsLayer;
use crate::limits::{
    GRPC_OVERHEAD_BYTES, PEER_CONNECTION_WINDOW_BYTES, PEER_MESSAGE_BYTES_MAX, PEER_STREAM_WINDOW_BYTES,
};
use crate::node::{Node, StartError};
use crate::peer::server::PeerService;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::peerpb::peer_server::PeerServer;
use crate::service::Ctx;
use coalesce::CoalescingStream;

/// Errors running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The member did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A `--listen-metrics-urls` listener could not be set up.
    #[error(transparent)]
    Listen(#[from] crate::http::ListenError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Starts the member, serves peers on `peer_listeners` and clients on
/// `client_listeners` until `shutdown` resolves.
pub async fn run(
    config: StoreConfig,
    client_listeners: Vec<TcpListener>,
    peer_listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node = Node::start(config).await?;
    let (peer_stop, peer_stopped) = tokio::sync::oneshot::channel::<()>();
    let peers = tokio::spawn(serve_peers(node.clone(), peer_listeners, async {
        let _ = peer_stopped.await;
    }));
    let removed = {
        let node = node.clone();
        async move { node.removed().await }
    };
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = removed => {}
        }
    };
    let result = serve(node.clone(), client_listeners, stop).await;
    node.stop().await;
    let _ = peer_stop.send(());
    match peers.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "peer server"),
        Err(e) => tracing::warn!(error = %e, "peer server task"),
        Ok(Ok(())) => {}
    }
    result
}

/// Accepted connections from every listener, with Nagle's algorithm off and their writes
/// coalesced ([`CoalescingStream`]). tonic's
/// `Server::tcp_nodelay` applies only to listeners it binds itself; on ours, a response written
/// behind an unacknowledged one waited for the peer's delayed ACK (up to 40 ms), which capped a
/// connection with many concurrent requests at a few thousand requests per second.
fn accept_nodelay(
    listeners: Vec<TcpListener>,
) -> impl futures::Stream<Item = std::io::Result<CoalescingStream<tokio::net::TcpStream>>> {
    futures::stream::select_all(listeners.into_iter().map(|l| TcpIncoming::from(l).with_nodelay(Some(true))))
        .map(|accepted| accepted.map(CoalescingStream::new))
}

/// Serves the peer protocol until `shutdown` resolves.
pub async fn serve_peers(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    tracing::info!(?addrs, "serving peer requests");
    let incoming = accept_nodelay(listeners);
    let service = PeerServer::new(PeerService::new(node))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    // A leader's append stream to this member ends when the node stops; the bounded grace is
    // for a stream that does not (a stalled connection).
    let (stopped, stopping) = bounded_grace(shutdown);
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(PEER_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(PEER_CONNECTION_WINDOW_BYTES)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stopped());
    tokio::select! {
        res = server => res?,
        _ = stopping => tracing::info!("closing peer connections still open after the shutdown grace period"),
    }
    Ok(())
}

/// A graceful shutdown with a bounded grace period: `stopped()` (one per server) resolves when
/// `shutdown` does, starting the servers' graceful shutdown; `stopping` resolves
/// `SHUTDOWN_GRACE` later, for the caller to close whatever is still open.
fn bounded_grace(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (impl Fn() -> futures::future::BoxFuture<'static, ()>, impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || -> futures::future::BoxFuture<'static, ()> {
        let mut rx = stop_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        })
    };
    let stopping = async move {
        shutdown.await;
        stop_tx.send_replace(true);
        tokio::time::sleep(crate::limits::SHUTDOWN_GRACE).await;
    };
    (stopped, stopping)
}

/// Aborts a background task when dropped, whichever way `serve` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds every leader change Raft reports into the metrics
/// (etcd_server_leader_changes_seen_total). Ends when Raft stops. Subscribes to the server
/// metrics, which change with the leader or membership only: the full metrics are sent on
/// every turn of Raft's loop, i.e. several times per write.
fn watch_leader(node: &Node) -> AbortOnDrop {
    let mut rx = node.raft.server_metrics();
    let metrics = node.metrics.clone();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let leader = rx.borrow_watched().current_leader;
            metrics.observe_leader(leader);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// Serves an already started member.
pub async fn serve(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics_listeners = crate::http::bind(&node.config.listen_metrics_urls).await?;
    node.metrics.set_member_id(node.member_id);
    let _leader_watch = watch_leader(&node);
    let ctx = Ctx { node: node.clone() };
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let unary_limit = crate::limits::GRPC_MESSAGE_BYTES_HARD_MAX.max(limit);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let metrics_addrs: Vec<_> = metrics_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    // The listeners are bound (connections queue in the backlog); accepting starts once the
    // member is published, as etcd serves its clients only after ReadyNotify.
    let ready = node.clone();
    let incoming = futures::stream::once(async move {
        ready.wait_published().await;
        accept_nodelay(listeners)
    })
    .flatten();
    tracing::info!(?addrs, ?metrics_addrs, member_id = format!("{:x}", node.member_id), "serving client requests");

    // Long-lived streams (watch, keep-alive) would hold a graceful shutdown open forever.
    let (stopped, stopping) = bounded_grace(shutdown);

    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(ctx.clone()).max_decoding_message_size(unary_limit).max_encoding_message_size(usize::MAX),
    )
    .add_service(WatchServer::new(ctx.clone()).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX))
    .add_service(LeaseServer::new(ctx.clone()).max_decoding_message_size(limit))
    .add_service(ClusterServer::new(ctx.clone()).max_decoding_message_size(limit))
    .add_service(MaintenanceServer::new(ctx).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX))
    .add_service(health);
    // tonic's own fallback answers every unknown path with gRPC Unimplemented;
    // the HTTP router's answers plain HTTP with 404 instead.
    let routes = grpc.routes().into_axum_router().reset_fallback().merge(crate::http::router(node.clone()));
    let client = tonic::transport::Server::builder()
        .accept_http1(true)
        .concurrency_limit_per_connection(crate::limits::CONCURRENT_REQUESTS_MAX)
        .layer(GrpcMetricsLayer::new(node.metrics.clone()))
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(incoming, stopped());

    let metrics_servers = metrics_listeners.into_iter().map(|listener| {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .concurrency_limit_per_connection(crate::limits::CONCURRENT_REQUESTS_MAX)
            .add_routes(crate::http::router(node.clone()).into())
            .serve_with_incoming_shutdown(accept_nodelay(vec![listener]), stopped())
    });
    let servers = futures::future::try_join(client, futures::future::try_join_all(metrics_servers));
    tokio::select! {
        res = servers => { res?; }
        _ = stopping => tracing::info!("closing connections still open after the shutdown grace period"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(accept_nodelay(vec![listener]));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(
            accepted.get_ref().nodelay().unwrap(),
            "an accepted client or peer connection still runs Nagle's algorithm"
        );
    }
}
