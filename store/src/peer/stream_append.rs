//! AppendEntries on one bidirectional gRPC stream per follower (openraft's
//! `stream_append`): replies come back in request order, and each request
//! costs one HTTP/2 message on an open stream instead of a whole call
//! (headers, a new stream, trailers). openraft's default is one unary RPC per
//! request. How many requests may be in flight is
//! [`APPEND_STREAM_IN_FLIGHT_MAX`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::error::{RPCError, Unreachable};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::sync::Semaphore;
use tonic::{Status, Streaming};

use super::PeerClients;
use super::convert;
use super::network::{net_error, rpc_error};
use crate::proto::peerpb as pb;
use crate::raft::types::TypeConfig;

/// AppendEntries requests a leader sends a follower before the oldest is answered. openraft
/// builds a request from every entry it has when the stream asks for the next one, so a
/// request held back here grows instead of becoming many small ones. Measured (A/B, geobuk
/// only): unbounded and 2 in flight sent a request per few entries under 100–1,000 clients and
/// cost 10–40 % more member CPU (fsync jobs, replies, RaftCore wake-ups) than they saved; 1 in
/// flight keeps openraft's batching and still saves the per-call HTTP/2 work: put with one
/// client went from 579–606 to 701–736 puts/s at a quarter less CPU, the loaded rows within
/// noise.
pub const APPEND_STREAM_IN_FLIGHT_MAX: usize = 1;

/// Replies as the leader's replication sees them.
pub type Replies = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

fn unreachable(why: &str) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why.to_owned())))
}

/// Opens the stream to a follower: `input` is sent as it comes, the replies are returned in
/// order. A reply owed for longer than `ttl` ends the stream as unreachable (openraft then
/// reopens it); an idle stream, owing nothing, waits as long as it takes. A refusal is shown to
/// `peers` (a follower saying this member was removed, [`PeerClients::noted`]).
pub async fn open<S>(
    mut client: pb::peer_client::PeerClient<tonic::transport::Channel>,
    route: Option<pb::Route>,
    input: S,
    ttl: Duration,
    peers: Arc<PeerClients>,
) -> Result<Replies, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let sent = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(APPEND_STREAM_IN_FLIGHT_MAX));
    let outgoing =
        futures::stream::unfold((input, in_flight.clone(), sent.clone()), move |(mut input, slots, sent)| {
            async move {
                // Take a slot before asking openraft for the request, so it holds every entry so far.
                slots.acquire().await.ok()?.forget();
                let rpc = input.next().await?;
                sent.fetch_add(1, Ordering::Relaxed);
                Some((convert::append_request_to_pb(route, &rpc), (input, slots, sent)))
            }
        });
    let opened = tokio::time::timeout(ttl, client.stream_append(outgoing))
        .await
        .map_err(|_| unreachable("opening the append stream timed out"))?;
    let inbound = opened.map_err(|s| rpc_error(peers.noted(s)))?.into_inner();
    Ok(replies(inbound, sent, in_flight, ttl, peers))
}

fn replies(
    inbound: Streaming<pb::StreamAppendReply>,
    sent: Arc<AtomicU64>,
    in_flight: Arc<Semaphore>,
    ttl: Duration,
    peers: Arc<PeerClients>,
) -> Replies {
    let stream = futures::stream::unfold(Some((inbound, 0u64)), move |state| {
        let (sent, in_flight, peers) = (sent.clone(), in_flight.clone(), peers.clone());
        async move {
            let (mut inbound, received) = state?;
            let next = loop {
                // Streaming::message is cancel-safe: a timed-out wait loses nothing.
                match tokio::time::timeout(ttl, inbound.message()).await {
                    Ok(next) => break next,
                    Err(_) if sent.load(Ordering::Relaxed) > received => {
                        return Some((Err(unreachable("no append reply within the RPC deadline")), None));
                    }
                    Err(_) => continue,
                }
            };
            match next {
                Ok(Some(reply)) => match convert::stream_reply_from_pb(&reply) {
                    Ok(result) => {
                        in_flight.add_permits(1);
                        Some((Ok(result), Some((inbound, received + 1))))
                    }
                    Err(e) => Some((Err(net_error(e)), None)),
                },
                Ok(None) => None,
                Err(status) => Some((Err(rpc_error(peers.noted(status))), None)),
            }
        }
    });
    Box::pin(stream)
}

/// The follower's side: the requests of an incoming stream, each checked with `check` (route,
/// decoding), until the leader closes it or one is refused; why it was refused is left in
/// `refused`, to end the reply stream with.
pub fn requests<C>(
    inbound: Streaming<pb::AppendRequest>,
    check: C,
    refused: Arc<Mutex<Option<Status>>>,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static
where
    C: Fn(pb::AppendRequest) -> Result<AppendEntriesRequest<TypeConfig>, Status> + Send + Sync + 'static,
{
    let check = Arc::new(check);
    futures::stream::unfold(Some(inbound), move |state| {
        let (check, refused) = (check.clone(), refused.clone());
        async move {
            let mut inbound = state?;
            let outcome = match inbound.message().await {
                Ok(None) => return None,
                Ok(Some(msg)) => check(msg),
                Err(status) => Err(status),
            };
            match outcome {
                Ok(req) => Some((req, Some(inbound))),
                Err(status) => {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    None
                }
            }
        }
    })
}
