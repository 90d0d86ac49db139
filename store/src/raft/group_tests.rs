//! Group apply end to end on a real state machine: entries of one apply call that read each
//! other's writes, a duplicate request id inside a group, and commands that end a group.

use std::sync::Arc;

use bytes::Bytes;
use openraft::EntryPayload;
use openraft::storage::RaftStateMachine;
use prost::Message;

use super::codec::tests::log_id;
use super::dedup;
use super::state_machine::{Shared, StateMachine};
use super::types::{Applied, CommandBytes, Entry};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::mvcc::ReadView;
use crate::proto::etcdserverpb::{self as pb, compare, request_op::Request};
use crate::proto::raftlog::{self, command::Op};
use crate::snapshot::SnapshotDir;

fn entry(index: u64, request_id: u64, op: Op) -> Entry {
    let cmd = raftlog::Command { request_id, op: Some(op) };
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Normal(CommandBytes(Bytes::from(cmd.encode_to_vec()))) }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()), ..Default::default() }
}

fn when(cmp: pb::Compare, then: Vec<Request>) -> Op {
    let success = then.into_iter().map(|r| pb::RequestOp { request: Some(r) }).collect();
    Op::Txn(pb::TxnRequest { compare: vec![cmp], success, failure: Vec::new() })
}

fn compare_value(key: &str, value: &str) -> pb::Compare {
    pb::Compare {
        key: Bytes::from(key.to_owned()),
        target: compare::CompareTarget::Value as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::Value(Bytes::from(value.to_owned()))),
        ..Default::default()
    }
}

fn compare_version(key: &str, version: i64) -> pb::Compare {
    pb::Compare {
        key: Bytes::from(key.to_owned()),
        target: compare::CompareTarget::Version as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::Version(version)),
        ..Default::default()
    }
}

fn value(engine: &Engine, key: &str) -> Option<Bytes> {
    ReadView::snapshot(engine).unwrap().get_latest(key.as_bytes()).unwrap().map(|kv| kv.value)
}

#[tokio::test]
async fn entries_in_one_group_see_each_other_and_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path().join("snap")).unwrap());
    let metrics = Arc::new(Metrics::new());
    let shared = Shared::open(engine.clone(), snapshots, metrics.clone()).unwrap();
    let mut sm = StateMachine::open(shared).unwrap();
    let delete_a = pb::DeleteRangeRequest { key: Bytes::from_static(b"a"), prev_kv: true, ..Default::default() };
    let range_b_then = pb::RangeRequest { key: Bytes::from_static(b"b"), revision: 3, ..Default::default() };
    let entries = vec![
        entry(1, 1, Op::Put(put("a", "1"))), // rev 2
        entry(2, 2, when(compare_value("a", "1"), vec![Request::RequestPut(put("b", "yes"))])), // rev 3
        entry(3, 1, Op::Put(put("a", "2"))), // a retry of request 1: answered, not applied
        entry(4, 3, Op::DeleteRange(delete_a)), // rev 4
        entry(5, 4, when(compare_version("a", 0), vec![Request::RequestPut(put("c", "gone"))])), // rev 5
        entry(6, 5, Op::Compact(pb::CompactionRequest { revision: 3, physical: false })), // alone
        entry(7, 6, Op::Put(put("a", "3"))), // rev 6
        entry(
            8,
            7,
            Op::Txn(pb::TxnRequest {
                success: vec![pb::RequestOp { request: Some(Request::RequestRange(range_b_then)) }],
                ..Default::default()
            }),
        ), // reads history: alone
        entry(9, 8, Op::Put(put("e", "x"))), // rev 7
    ];
    let commits_before = metrics.backend_commits();
    sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.unwrap();

    // Groups: entries 1–5, 6, 7, 8, 9.
    assert_eq!(metrics.backend_commits() - commits_before, 5);
    assert_eq!(value(&engine, "a").as_deref(), Some(&b"3"[..]));
    assert_eq!(value(&engine, "b").as_deref(), Some(&b"yes"[..]));
    assert_eq!(value(&engine, "c").as_deref(), Some(&b"gone"[..]));
    assert_eq!(value(&engine, "e").as_deref(), Some(&b"x"[..]));
    let view = ReadView::snapshot(&engine).unwrap();
    assert_eq!((view.current, view.compacted), (7, 3));
    assert_eq!(view.get_at(b"a", 3).unwrap().map(|kv| kv.value).as_deref(), Some(&b"1"[..]));
    assert_eq!(view.get_at(b"a", 5).unwrap(), None, "deleted at 5");

    let table = dedup::DedupIndex::load(&engine).unwrap();
    let reply = |id| table.lookup(&engine, id).unwrap().expect("recorded");
    assert!(matches!(reply(2), Applied::Txn(t) if t.succeeded));
    assert!(matches!(reply(3), Applied::DeleteRange(d) if d.deleted == 1 && d.prev_kvs[0].value == "1"));
    assert!(matches!(reply(4), Applied::Txn(t) if t.succeeded));
    let Applied::Txn(t) = reply(7) else { panic!("txn reply") };
    let Some(pb::response_op::Response::ResponseRange(r)) = &t.responses[0].response else { panic!("range") };
    assert_eq!(r.kvs[0].value, "yes");
    let (last, _) = sm.applied_state().await.unwrap();
    assert_eq!(last.map(|l| l.index), Some(9));
}

/// The dedup table's ids live in memory: a reopened state machine must still answer a retry of
/// a command applied before it closed, not apply it again.
#[tokio::test]
async fn a_reopened_state_machine_still_answers_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path().join("snap")).unwrap());
    let open = || {
        let shared = Shared::open(engine.clone(), snapshots.clone(), Arc::new(Metrics::new())).unwrap();
        StateMachine::open(shared).unwrap()
    };
    let mut sm = open();
    let first = vec![entry(1, 41, Op::Put(put("a", "1"))), entry(2, 42, Op::Put(put("b", "1")))];
    sm.apply(futures::stream::iter(first.into_iter().map(|e| Ok((e, None))))).await.unwrap();
    drop(sm);

    let mut sm = open();
    let retry = entry(3, 41, Op::Put(put("a", "retried")));
    let fresh = entry(4, 43, Op::Put(put("c", "1")));
    sm.apply(futures::stream::iter([retry, fresh].into_iter().map(|e| Ok((e, None))))).await.unwrap();
    assert_eq!(value(&engine, "a").as_deref(), Some(&b"1"[..]), "the retry was applied again");
    assert_eq!(value(&engine, "c").as_deref(), Some(&b"1"[..]));
    let view = ReadView::snapshot(&engine).unwrap();
    assert_eq!(view.current, 4, "revisions 2, 3, 4: one per applied put, none for the retry");
}

/// A snapshot install replaces the store wholesale, so the cache of live versions a put reads
/// first must be emptied with it: a put after the install continues the snapshot's version of a
/// key, not the one this member had cached before.
#[tokio::test]
async fn a_put_after_a_snapshot_install_continues_the_snapshots_versions() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine as _};

    let open = |dir: &std::path::Path| {
        let engine = Engine::open(&dir.join("db")).unwrap();
        let snapshots = Arc::new(SnapshotDir::open(dir.join("snap")).unwrap());
        let shared = Shared::open(engine.clone(), snapshots.clone(), Arc::new(Metrics::new())).unwrap();
        (engine, snapshots, StateMachine::open(shared).unwrap())
    };
    let apply = |entries: Vec<Entry>| futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, _, mut leader) = open(dir_a.path());
    let (engine, snapshots, mut follower) = open(dir_b.path());

    // The follower has put "a" three times (version 3, all of it cached).
    let three = (1..=3).map(|i| entry(i, i, Op::Put(put("a", "old")))).collect();
    follower.apply(apply(three)).await.unwrap();
    // The leader's history differs: "b" first, then "a" once (version 1, created at revision 3).
    let leaders = vec![
        entry(1, 11, Op::Put(put("b", "1"))),
        entry(2, 12, Op::Put(put("a", "new"))),
        entry(4, 13, Op::Put(put("b", "2"))),
    ];
    leader.apply(apply(leaders)).await.unwrap();
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let built = snapshot.snapshot.into_file().unwrap();
    let received = snapshots.temp_path("received");
    std::fs::copy(&built.path, &received).unwrap();
    let data = crate::snapshot::SnapshotData::File(crate::snapshot::SnapshotFile::open(&received).unwrap());
    follower.install_snapshot(&snapshot.meta, data).await.unwrap();

    follower.apply(apply(vec![entry(5, 14, Op::Put(put("a", "after")))])).await.unwrap();
    let latest = ReadView::snapshot(&engine).unwrap().get_latest(b"a").unwrap().unwrap();
    assert_eq!(&latest.value[..], b"after");
    assert_eq!((latest.version, latest.create_revision), (2, 3), "continues the snapshot's a@version 1");
}
