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
