//! The etcd v3 gRPC services: request validation (etcd's error for each bad
//! input), conversion between wire and domain types, and response headers.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use crate::node::Node;
use crate::proto::etcdserverpb as pb;

/// Fills the member's ids and term into a header that carries a revision.
pub(crate) fn fill(node: &Node, h: &mut Option<pb::ResponseHeader>) {
    let revision = h.as_ref().map_or(0, |h| h.revision);
    *h = node.header(revision);
}

/// The shared handle every service holds.
#[derive(Clone)]
pub struct Ctx {
    /// The member.
    pub node: Arc<Node>,
}

/// grpc-go's answer to a message over the receive limit, which etcd clients
/// see for requests far above `--max-request-bytes`.
pub(crate) fn check_grpc_size(node: &Node, msg: &impl prost::Message) -> Result<(), tonic::Status> {
    let limit = node.config.max_request_bytes + crate::limits::GRPC_OVERHEAD_BYTES;
    let len = msg.encoded_len();
    if len > limit {
        let text = format!("grpc: received message larger than max ({len} vs. {limit})");
        return Err(tonic::Status::resource_exhausted(text));
    }
    Ok(())
}
