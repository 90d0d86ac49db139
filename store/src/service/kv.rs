//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::{Ctx, check_grpc_size, fill};
use crate::error::StoreError;
use crate::mvcc::{KeyValue, RangeQuery, range};
use crate::proto::etcdserverpb::{self as pb, kv_server::Kv, request_op};
use crate::proto::raftlog::command::Op;
use crate::raft::apply::kv_to_pb;
use crate::raft::types::Applied;

fn check_range(r: &pb::RangeRequest) -> Result<(), StoreError> {
    if r.key.is_empty() { Err(StoreError::EmptyKey) } else { Ok(()) }
}

fn check_put(p: &pb::PutRequest) -> Result<(), StoreError> {
    if p.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(d: &pb::DeleteRangeRequest) -> Result<(), StoreError> {
    if d.key.is_empty() { Err(StoreError::EmptyKey) } else { Ok(()) }
}

/// etcd's checkTxnRequest: op counts and each op, recursively, then the
/// duplicate-key rule.
pub(crate) fn check_txn(t: &pb::TxnRequest, max_ops: usize) -> Result<(), StoreError> {
    check_txn_ops(t, max_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_txn_ops(t: &pb::TxnRequest, max_ops: usize) -> Result<(), StoreError> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(StoreError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(request_op::Request::RequestTxn(n)) => check_txn_ops(n, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// Delete ranges as (start, end) with etcd's conventions.
type Dels = Vec<(Vec<u8>, Vec<u8>)>;

fn deleted(dels: &Dels, key: &[u8]) -> bool {
    dels.iter().any(|(s, e)| range::contains(s, e, key))
}

/// etcd's checkIntervals: within one branch a key may be put once and not
/// both put and deleted; the two branches of a nested txn exclude each other.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(BTreeMap<Vec<u8>, ()>, Dels), StoreError> {
    let mut dels: Dels = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.push((d.key.to_vec(), d.range_end.to_vec()));
        }
    }
    let mut puts: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in puts_then.keys() {
            if puts.contains_key(k) || deleted(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(k.clone(), ());
        }
        for k in puts_else.keys() {
            if (puts.contains_key(k) && !puts_then.contains_key(k)) || deleted(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(k.clone(), ());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else { continue };
        let k = p.key.to_vec();
        if puts.contains_key(&k) || deleted(&dels, &k) {
            return Err(StoreError::DuplicateKey);
        }
        puts.insert(k, ());
    }
    Ok((puts, dels))
}

fn range_response(kvs: &[KeyValue], more: bool, count: i64) -> pb::RangeResponse {
    pb::RangeResponse { header: None, kvs: kvs.iter().map(kv_to_pb).collect(), more, count }
}

fn unexpected(what: &str) -> Status {
    StoreError::Internal(format!("unexpected apply result for {what}")).into()
}

#[tonic::async_trait]
impl Kv for Ctx {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        check_grpc_size(&self.node, &r)?;
        check_range(&r)?;
        let view = self.node.read_view(r.serializable).await?;
        let res = view.range(&RangeQuery::from(&r))?;
        let mut resp = range_response(&res.kvs, res.more, res.count);
        resp.header = self.node.header(view.current);
        Ok(Response::new(resp))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = req.into_inner();
        check_grpc_size(&self.node, &p)?;
        check_put(&p)?;
        match self.node.propose(Op::Put(p)).await? {
            Applied::Put(mut resp) => {
                fill(&self.node, &mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = req.into_inner();
        check_grpc_size(&self.node, &d)?;
        check_delete(&d)?;
        match self.node.propose(Op::DeleteRange(d)).await? {
            Applied::DeleteRange(mut resp) => {
                fill(&self.node, &mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = req.into_inner();
        check_grpc_size(&self.node, &t)?;
        check_txn(&t, self.node.config.max_txn_ops)?;
        match self.node.propose(Op::Txn(t)).await? {
            Applied::Txn(mut resp) => {
                fill(&self.node, &mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        let c = req.into_inner();
        let physical = c.physical;
        let revision = c.revision;
        let mut resp = match self.node.propose(Op::Compact(c)).await? {
            Applied::Compact(resp) => resp,
            _ => return Err(unexpected("compact")),
        };
        if physical {
            self.node.wait_compacted(revision).await?;
        }
        fill(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(k: &str) -> pb::RequestOp {
        let p = pb::PutRequest { key: Bytes::from(k.to_string()), ..Default::default() };
        pb::RequestOp { request: Some(request_op::Request::RequestPut(p)) }
    }

    fn del(k: &str, end: &str) -> pb::RequestOp {
        let d = pb::DeleteRangeRequest {
            key: Bytes::from(k.to_string()),
            range_end: Bytes::from(end.to_string()),
            ..Default::default()
        };
        pb::RequestOp { request: Some(request_op::Request::RequestDeleteRange(d)) }
    }

    fn nested(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        let t = pb::TxnRequest { compare: vec![], success, failure };
        pb::RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
    }

    fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest { compare: vec![], success, failure: vec![] }
    }

    #[test]
    fn duplicate_key_rules_follow_etcd() {
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")]), 128), Err(StoreError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("b"), del("a", "c")]), 128), Err(StoreError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("a"), put("b")]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), del("b", "")]), 128), Ok(()));
        // Then/else of a nested txn exclude each other.
        assert_eq!(check_txn(&txn(vec![nested(vec![put("a")], vec![put("a")])]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![put("a"), nested(vec![put("a")], vec![])]), 128), Err(StoreError::DuplicateKey));
        assert_eq!(
            check_txn(&txn(vec![del("a", ""), nested(vec![], vec![put("a")])]), 128),
            Err(StoreError::DuplicateKey)
        );
        let many: Vec<_> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(many), 128), Err(StoreError::TooManyOps));
    }
}
