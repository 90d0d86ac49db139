//! Member-to-member traffic over gRPC on the peer URLs: the Raft network
//! (`network`), the peer service (`server`), and the connection pool both
//! the network and request forwarding use.

pub mod convert;
pub mod network;
pub mod server;
pub mod stream_append;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::limits::{PEER_CONNECTION_WINDOW_BYTES, PEER_MESSAGE_BYTES_MAX, PEER_STREAM_WINDOW_BYTES};
use crate::proto::peerpb::{Route, peer_client::PeerClient};
use crate::raft::types::MemberInfo;

/// How long dialing a peer may take before it counts as unreachable.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle peer connections: a peer that stops answering (a
/// partition, a paused process) is noticed within interval + timeout.
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a peer answers a member it has recorded as removed (etcd's rafthttp answers
/// `410 Gone` with this text).
pub const REMOVED_MEMBER_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// The status a peer refuses a removed member's request with.
pub fn removed_member_status() -> tonic::Status {
    tonic::Status::permission_denied(REMOVED_MEMBER_MESSAGE)
}

/// Whether a peer refused a request because this member was removed.
pub fn is_removed_member(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied && status.message() == REMOVED_MEMBER_MESSAGE
}

/// One lazily connected channel per peer address, shared by Raft replication
/// and request forwarding (tonic channels multiplex and reconnect).
pub struct PeerClients {
    /// This member.
    pub member_id: u64,
    /// This member's cluster.
    pub cluster_id: u64,
    overrides: BTreeMap<String, String>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Set once a peer answered that this member was removed.
    told_removed: watch::Sender<bool>,
}

/// Why a peer cannot be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The member advertises no peer URL.
    #[error("member {0:x} has no peer URL")]
    NoUrl(u64),
    /// The URL is not valid.
    #[error("invalid peer URL {url}: {source}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

impl PeerClients {
    /// A pool for `member_id` of `cluster_id`; `overrides` maps member names (or peer URLs) to
    /// the URL to dial instead of their advertised peer URL.
    pub fn new(member_id: u64, cluster_id: u64, overrides: BTreeMap<String, String>) -> Self {
        PeerClients {
            member_id,
            cluster_id,
            overrides,
            channels: Mutex::new(HashMap::new()),
            told_removed: watch::channel(false).0,
        }
    }

    /// Takes note of a peer's error answer: one saying this member was removed is kept for
    /// [`PeerClients::told_removed`]. Hands the status back.
    pub fn noted(&self, status: tonic::Status) -> tonic::Status {
        if is_removed_member(&status) {
            self.told_removed.send_replace(true);
        }
        status
    }

    /// Resolves once a peer has answered that this member was removed.
    pub async fn told_removed(&self) {
        let mut told = self.told_removed.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while borrowed.
        let _ = told.wait_for(|told| *told).await;
    }

    /// The address header of a request to `to`.
    pub fn route(&self, to: u64) -> Option<Route> {
        Some(Route { cluster_id: self.cluster_id, from: self.member_id, to })
    }

    /// The URL this member dials to reach `info`.
    pub fn url_of(&self, id: u64, info: &MemberInfo) -> Result<String, DialError> {
        if let Some(url) = self.overrides.get(&info.name) {
            return Ok(url.clone());
        }
        info.peer_urls.first().cloned().ok_or(DialError::NoUrl(id))
    }

    /// The override for a peer URL, or the URL itself. Overrides keyed by URL also cover a member
    /// that was just added and has not published its name yet.
    fn dial_url<'a>(&'a self, url: &'a str) -> &'a str {
        self.overrides.get(url).map_or(url, String::as_str)
    }

    /// A client for member `id`.
    pub fn client(&self, id: u64, info: &MemberInfo) -> Result<PeerClient<Channel>, DialError> {
        let url = self.url_of(id, info)?;
        self.client_for_url(&url)
    }

    /// A client for a peer URL (used before member ids are known).
    pub fn client_for_url(&self, url: &str) -> Result<PeerClient<Channel>, DialError> {
        let url = self.dial_url(url);
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let c = lazy_channel(url)?;
                channels.insert(url.to_string(), c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(url: &str) -> Result<Channel, DialError> {
    let bad = |source| DialError::BadUrl { url: url.to_string(), source };
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(bad)?;
    Ok(endpoint
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .initial_stream_window_size(PEER_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(PEER_CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy())
}
