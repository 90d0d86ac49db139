//! Serving: binds the etcd gRPC services (and gRPC health) on the client
//! listeners and runs until the shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::StoreConfig;
use crate::limits::{GRPC_OVERHEAD_BYTES, PEER_MESSAGE_BYTES_MAX};
use crate::node::{Node, StartError};
use crate::peer::server::PeerService;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::peerpb::peer_server::PeerServer;
use crate::service::Ctx;

/// Errors running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The member did not start.
    #[error(transparent)]
    Start(#[from] StartError),
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
    let result = serve(node.clone(), client_listeners, shutdown).await;
    node.stop().await;
    let _ = peer_stop.send(());
    match peers.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "peer server"),
        Err(e) => tracing::warn!(error = %e, "peer server task"),
        Ok(Ok(())) => {}
    }
    result
}

/// Serves the peer protocol until `shutdown` resolves.
pub async fn serve_peers(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    tracing::info!(?addrs, "serving peer requests");
    let incoming = futures::stream::select_all(listeners.into_iter().map(TcpListenerStream::new));
    let service = PeerServer::new(PeerService::new(node))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let grace = async move {
        shutdown.await;
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, grace)
        .await?;
    Ok(())
}

/// Serves an already started member.
pub async fn serve(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ctx = Ctx { node: node.clone() };
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let unary_limit = crate::limits::GRPC_MESSAGE_BYTES_HARD_MAX.max(limit);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let incoming = futures::stream::select_all(listeners.into_iter().map(TcpListenerStream::new));
    tracing::info!(?addrs, member_id = format!("{:x}", node.member_id), "serving client requests");
    // Long-lived streams (watch, keep-alive) would hold a graceful shutdown
    // open forever: give requests in flight a bounded grace period.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    let grace = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(crate::limits::SHUTDOWN_GRACE).await;
    };
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(crate::limits::CONCURRENT_REQUESTS_MAX)
        .add_service(
            KvServer::new(ctx.clone()).max_decoding_message_size(unary_limit).max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(ctx.clone()).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX),
        )
        .add_service(LeaseServer::new(ctx.clone()).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(ctx.clone()).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::new(ctx).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        res = server => res?,
        _ = grace => tracing::info!("closing connections still open after the shutdown grace period"),
    }
    Ok(())
}
