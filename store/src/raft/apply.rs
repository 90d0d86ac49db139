//! Executes one replicated command against the MVCC store. Everything here is
//! a pure function of the command and the stored state: no clock, no
//! randomness, no I/O beyond the engine. A rejected command changes nothing.

use bytes::Bytes;

use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;
use crate::mvcc::{self, KeyValue, RangeQuery, WriteTxn};
use crate::proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use crate::proto::mvccpb;

/// Converts a domain KeyValue to etcd's wire form.
pub fn kv_to_pb(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease,
    }
}

/// A header carrying only the revision; the service fills in the member's ids.
pub fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

/// Whether lease `id` exists in the replicated state.
pub fn lease_exists(engine: &Engine, id: i64) -> Result<bool, EngineError> {
    Ok(engine.db().get_cf(engine.cf(cf::LEASE), id.to_be_bytes())?.is_some())
}

/// The branch each txn (and nested txn) takes, decided before any write.
struct Plan {
    succeeded: bool,
    nested: Vec<Plan>,
}

fn branch(req: &pb::TxnRequest, succeeded: bool) -> &[pb::RequestOp] {
    if succeeded { &req.success } else { &req.failure }
}

fn plan(txn: &WriteTxn<'_>, req: &pb::TxnRequest) -> Result<Plan, StoreError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare_holds(txn, c)? {
            succeeded = false;
            break;
        }
    }
    let mut nested = Vec::new();
    for op in branch(req, succeeded) {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            nested.push(plan(txn, t)?);
        }
    }
    Ok(Plan { succeeded, nested })
}

/// etcd's applyCompare: a missing key compares as zeroes, except that a
/// value compare on missing keys is false; a range holds only if every key does.
fn compare_holds(txn: &WriteTxn<'_>, c: &pb::Compare) -> Result<bool, StoreError> {
    let kvs = if c.range_end.is_empty() {
        txn.get(&c.key)?.into_iter().collect()
    } else {
        txn.live_keys(&c.key, &c.range_end)?
    };
    let target = compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if kvs.is_empty() {
        return Ok(target != compare::CompareTarget::Value && compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &pb::Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    // etcd reads the union only when its variant matches the target; else 0.
    let wanted = match (target, &c.target_union) {
        (T::Create, Some(U::CreateRevision(v)))
        | (T::Mod, Some(U::ModRevision(v)))
        | (T::Version, Some(U::Version(v)))
        | (T::Lease, Some(U::Lease(v))) => *v,
        _ => 0,
    };
    let ord = match target {
        T::Value => {
            let want: &[u8] = match &c.target_union {
                Some(U::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        T::Create => kv.create_revision.cmp(&wanted),
        T::Mod => kv.mod_revision.cmp(&wanted),
        T::Version => kv.version.cmp(&wanted),
        T::Lease => kv.lease.cmp(&wanted),
    };
    match R::try_from(c.result).unwrap_or(R::Equal) {
        R::Equal => ord.is_eq(),
        R::NotEqual => ord.is_ne(),
        R::Greater => ord.is_gt(),
        R::Less => ord.is_lt(),
    }
}

/// Checks the ops on the chosen path against the state before the txn, so a
/// txn either applies whole or not at all.
fn check(engine: &Engine, txn: &WriteTxn<'_>, req: &pb::TxnRequest, plan: &Plan) -> Result<(), StoreError> {
    let mut nested = plan.nested.iter();
    for op in branch(req, plan.succeeded) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => check_put(engine, txn, p)?,
            Some(request_op::Request::RequestRange(r)) => {
                if r.revision > txn.visible_revision() {
                    return Err(StoreError::FutureRev);
                }
                if r.revision > 0 && r.revision < txn.compacted() {
                    return Err(StoreError::Compacted);
                }
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let p = nested.next().expect("one plan per nested txn");
                check(engine, txn, t, p)?;
            }
            Some(request_op::Request::RequestDeleteRange(_)) | None => {}
        }
    }
    Ok(())
}

fn check_put(engine: &Engine, txn: &WriteTxn<'_>, p: &pb::PutRequest) -> Result<(), StoreError> {
    if (p.ignore_value || p.ignore_lease) && txn.get(&p.key)?.is_none() {
        return Err(StoreError::KeyNotFound);
    }
    if p.lease != 0 && !p.ignore_lease && !lease_exists(engine, p.lease)? {
        return Err(StoreError::LeaseNotFound);
    }
    Ok(())
}

fn run(txn: &mut WriteTxn<'_>, req: &pb::TxnRequest, plan: &Plan) -> Result<pb::TxnResponse, StoreError> {
    let mut nested = plan.nested.iter();
    let mut responses = Vec::new();
    for op in branch(req, plan.succeeded) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => response_op::Response::ResponseRange(run_range(txn, r)?),
            Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(run_put(txn, p)?),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(run_delete(txn, d)?)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let p = nested.next().expect("one plan per nested txn");
                response_op::Response::ResponseTxn(run(txn, t, p)?)
            }
            None => continue,
        };
        responses.push(pb::ResponseOp { response: Some(response) });
    }
    Ok(pb::TxnResponse { header: header(txn.visible_revision()), succeeded: plan.succeeded, responses })
}

/// Serves a Range inside a txn (it sees the txn's earlier writes).
fn run_range(txn: &WriteTxn<'_>, r: &pb::RangeRequest) -> Result<pb::RangeResponse, StoreError> {
    let res = txn.range(&RangeQuery::from(r))?;
    Ok(pb::RangeResponse {
        header: header(txn.visible_revision()),
        kvs: res.kvs.iter().map(kv_to_pb).collect(),
        more: res.more,
        count: res.count,
    })
}

fn run_put(txn: &mut WriteTxn<'_>, p: &pb::PutRequest) -> Result<pb::PutResponse, StoreError> {
    let value = (!p.ignore_value).then(|| p.value.clone());
    let lease = (!p.ignore_lease).then_some(p.lease);
    let prev = txn.put(p.key.clone(), value, lease)?;
    Ok(pb::PutResponse {
        header: header(txn.visible_revision()),
        prev_kv: if p.prev_kv { prev.as_ref().map(kv_to_pb) } else { None },
    })
}

fn run_delete(txn: &mut WriteTxn<'_>, d: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, StoreError> {
    let deleted = txn.delete_range(&d.key, &d.range_end)?;
    Ok(pb::DeleteRangeResponse {
        header: header(txn.visible_revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted.iter().map(kv_to_pb).collect() } else { Vec::new() },
    })
}

/// Applies an etcd Txn: compares, checks, then the chosen ops in order.
pub fn apply_txn(engine: &Engine, txn: &mut WriteTxn<'_>, req: &pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
    let plan = plan(txn, req)?;
    check(engine, txn, req, &plan)?;
    run(txn, req, &plan)
}

/// Wraps a single op as a txn with no compares.
pub fn single_op_txn(op: request_op::Request) -> pb::TxnRequest {
    pb::TxnRequest { compare: Vec::new(), success: vec![pb::RequestOp { request: Some(op) }], failure: Vec::new() }
}

/// Deletes every key attached to `lease` and the lease itself, in `txn`.
pub fn revoke_lease(engine: &Engine, txn: &mut WriteTxn<'_>, lease: i64) -> Result<(), StoreError> {
    for key in mvcc::lease_keys(engine, lease)? {
        txn.delete_range(&key, &[])?;
    }
    let lease_cf = engine.cf(cf::LEASE);
    txn.batch_mut().delete_cf(lease_cf, lease.to_be_bytes());
    Ok(())
}

/// The stored form of a lease: its granted TTL in seconds.
pub fn encode_lease(ttl: i64) -> [u8; 8] {
    ttl.to_be_bytes()
}

/// Reads every stored lease as (id, granted TTL).
pub fn load_leases(engine: &Engine) -> Result<Vec<(i64, i64)>, EngineError> {
    let mut out = Vec::new();
    for item in engine.db().iterator_cf(engine.cf(cf::LEASE), rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let id = mvcc::decode_i64(&k)?;
        out.push((id, mvcc::decode_i64(&v)?));
    }
    Ok(out)
}

/// The keys attached to `lease` (for TimeToLive).
pub fn keys_of_lease(engine: &Engine, lease: i64) -> Result<Vec<Bytes>, EngineError> {
    mvcc::lease_keys(engine, lease)
}
