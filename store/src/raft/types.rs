//! The openraft type configuration: what a node id, a node, a log entry and an
//! apply result are in geobuk.

use std::fmt;

use bytes::Bytes;

use crate::error::StoreError;
use crate::proto::etcdserverpb as pb;

/// A member's identity as stored in the Raft membership (etcd's Member without the id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberInfo {
    /// The member's --name.
    pub name: String,
    /// URLs its peers reach it on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on.
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// An encoded `raftlog::Command`: encoded once by the proposer, decoded by apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandBytes(pub Bytes);

impl fmt::Display for CommandBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command({} bytes)", self.0.len())
    }
}

/// What applying one log entry produced, handed back to the proposer.
#[derive(Debug, Clone)]
pub enum Applied {
    /// A blank or membership entry.
    Nothing,
    /// Response to a Put.
    Put(pb::PutResponse),
    /// Response to a DeleteRange.
    DeleteRange(pb::DeleteRangeResponse),
    /// Response to a Txn.
    Txn(pb::TxnResponse),
    /// Response to a Compact (logical compaction done).
    Compact(pb::CompactionResponse),
    /// Response to a LeaseGrant.
    LeaseGrant(pb::LeaseGrantResponse),
    /// Response to a LeaseRevoke.
    LeaseRevoke(pb::LeaseRevokeResponse),
    /// The command was rejected deterministically (no state changed).
    Rejected(StoreError),
}

openraft::declare_raft_types!(
    /// geobuk's Raft types.
    pub TypeConfig:
        D = CommandBytes,
        R = Applied,
        NodeId = u64,
        Node = MemberInfo,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig, crate::raft::state_machine::StateMachine>;
/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Membership as stored with its log id.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A membership configuration.
pub type Membership = openraft::Membership<u64, MemberInfo>;
