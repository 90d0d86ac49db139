//! Group apply: consecutive committed KV commands are applied into one RocksDB write batch and
//! written once, instead of one write (a write group and its bookkeeping) per entry. Commands that
//! read state a batch does not carry (leases, membership, history at an explicit revision) end
//! the group and are applied alone.

use std::collections::HashMap;

use openraft::storage::ApplyResponder;
use rocksdb::WriteBatch;

use super::types::{Applied, LogId, TypeConfig};
use crate::mvcc::{Event, Overlay};
use crate::proto::etcdserverpb as pb;
use crate::proto::raftlog::{self, command::Op};

/// Entries applied into one batch before it is written.
pub const APPLY_GROUP_ENTRIES_MAX: usize = 256;
/// Bytes staged in one batch before it is written (a few max-size requests).
pub const APPLY_GROUP_BYTES_MAX: usize = 8 << 20;

/// Applied entries not yet written: their changes, and what to do once they are durable in the
/// database (publish events, answer proposers).
#[derive(Default)]
pub struct Group {
    /// The staged writes of every entry in the group.
    pub batch: WriteBatch,
    /// Live keys the staged writes changed, for reads of later entries in the group.
    pub overlay: Overlay,
    /// Request ids applied in the group and where their replies are in `answers` (duplicates
    /// within a group).
    pub dedup: HashMap<u64, usize>,
    /// Each changed revision's events, in order.
    pub events: Vec<Vec<Event>>,
    /// Replies to send after the write.
    pub answers: Vec<(Option<ApplyResponder<TypeConfig>>, Applied)>,
    /// The last entry in the group.
    pub last_applied: Option<LogId>,
}

impl Group {
    /// Whether the group should be written before taking more.
    pub fn is_full(&self) -> bool {
        self.answers.len() >= APPLY_GROUP_ENTRIES_MAX || self.batch.size_in_bytes() >= APPLY_GROUP_BYTES_MAX
    }
}

/// Whether `cmd` can be applied into a group: a put, a delete, or a txn none of whose ranges
/// reads at an explicit revision (the database does not yet hold the group's revisions).
pub fn groupable(cmd: &raftlog::Command) -> bool {
    match &cmd.op {
        Some(Op::Put(_)) | Some(Op::DeleteRange(_)) => true,
        Some(Op::Txn(t)) => !reads_at_revision(t),
        _ => false,
    }
}

fn reads_at_revision(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.revision != 0,
        Some(Request::RequestTxn(nested)) => reads_at_revision(nested),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn txn(ops: Vec<Request>) -> raftlog::Command {
        let success = ops.into_iter().map(|r| pb::RequestOp { request: Some(r) }).collect();
        let t = pb::TxnRequest { compare: Vec::new(), success, failure: Vec::new() };
        raftlog::Command { request_id: 1, op: Some(Op::Txn(t)) }
    }

    #[test]
    fn only_commands_that_read_nothing_outside_the_group_are_grouped() {
        let put = raftlog::Command { request_id: 1, op: Some(Op::Put(pb::PutRequest::default())) };
        assert!(groupable(&put));
        let range_now = Request::RequestRange(pb::RangeRequest::default());
        assert!(groupable(&txn(vec![range_now.clone()])));
        let range_then = Request::RequestRange(pb::RangeRequest { revision: 3, ..Default::default() });
        assert!(!groupable(&txn(vec![range_then.clone()])));
        let nested = match txn(vec![range_then]).op {
            Some(Op::Txn(t)) => Request::RequestTxn(t),
            _ => unreachable!(),
        };
        assert!(!groupable(&txn(vec![range_now, nested])));
        let compact = raftlog::Command { request_id: 1, op: Some(Op::Compact(pb::CompactionRequest::default())) };
        assert!(!groupable(&compact));
    }
}
