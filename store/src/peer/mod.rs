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

use tonic::transport::{Channel, Endpoint};

use crate::limits::PEER_MESSAGE_BYTES_MAX;
use crate::proto::peerpb::{Route, peer_client::PeerClient};
use crate::raft::types::MemberInfo;

/// How long dialing a peer may take before it counts as unreachable.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle peer connections: a peer that stops answering (a
/// partition, a paused process) is noticed within interval + timeout.
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One lazily connected channel per peer address, shared by Raft replication
/// and request forwarding (tonic channels multiplex and reconnect).
pub struct PeerClients {
    /// This member.
    pub member_id: u64,
    /// This member's cluster.
    pub cluster_id: u64,
    overrides: BTreeMap<String, String>,
    channels: Mutex<HashMap<String, Channel>>,
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
        PeerClients { member_id, cluster_id, overrides, channels: Mutex::new(HashMap::new()) }
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
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy())
}
