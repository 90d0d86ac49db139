//! The Raft state machine: applies committed entries to the MVCC store,
//! persists `last_applied` and membership in the same atomic batch as the
//! data they cover (so replay after a crash is exact), then publishes events
//! to watchers and answers the proposer.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use rocksdb::WriteBatch;
use tokio::sync::watch;

use super::apply::{self, header};
use super::codec;
use super::dedup::DedupIndex;
use super::group::{self, Group};
use super::removed::{self, RemovedMembers};
use super::types::{Applied, LogId, StoredMembership, TypeConfig};
use crate::engine::{Engine, EngineError, cf};
use crate::error::StoreError;
use crate::lease::Lessor;
use crate::metrics::Metrics;
use crate::mvcc::{self, Event, LatestCache, Overlay, WriteTxn};
use crate::proto::etcdserverpb as pb;
use crate::proto::raftlog::{self, command::Op};
use crate::snapshot::{self, Published, SnapshotData, SnapshotDir, SnapshotInfo};
use crate::watch::Hub;

/// `sm_meta` key of the last applied log id.
pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
/// `sm_meta` key of the membership in effect at `last_applied`.
pub(crate) const META_MEMBERSHIP: &[u8] = b"membership";

/// The store revision and compaction revision after the last applied entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revisions {
    /// Current store revision.
    pub current: i64,
    /// Compaction revision.
    pub compacted: i64,
}

/// State the state machine shares with the services.
pub struct Shared {
    /// The database.
    pub engine: Engine,
    /// Watchers.
    pub hub: Arc<Hub>,
    /// Lease expiry clocks.
    pub lessor: Arc<Lessor>,
    /// Revisions after each apply.
    pub revisions: watch::Sender<Revisions>,
    /// Compaction revision the background compactor should reach.
    pub compaction_target: watch::Sender<i64>,
    /// Raft snapshots on disk.
    pub snapshots: Arc<SnapshotDir>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Members removed from the cluster.
    pub removed: RemovedMembers,
}

impl Shared {
    /// Loads the persisted revisions and leases from `engine`.
    pub fn open(engine: Engine, snapshots: Arc<SnapshotDir>, metrics: Arc<Metrics>) -> Result<Arc<Self>, EngineError> {
        mvcc::upgrade_if_needed(&engine)?;
        mvcc::load_index(&engine)?;
        let (current, compacted) = mvcc::load_revisions(&engine)?;
        let lessor = Arc::new(Lessor::default());
        lessor.reset(&apply::load_leases(&engine)?);
        let hub = Hub::new(engine.clone(), current, compacted);
        let removed = RemovedMembers::load(&engine)?;
        Ok(Arc::new(Shared {
            engine,
            hub,
            lessor,
            revisions: watch::channel(Revisions { current, compacted }).0,
            compaction_target: watch::channel(compacted).0,
            snapshots,
            metrics,
            removed,
        }))
    }

    /// Reloads every in-memory view of the store after a snapshot install.
    fn reload(&self) -> Result<Revisions, EngineError> {
        // A snapshot from a member of the older layout is converted here.
        mvcc::upgrade_if_needed(&self.engine)?;
        mvcc::load_index(&self.engine)?;
        let (current, compacted) = mvcc::load_revisions(&self.engine)?;
        self.lessor.reset(&apply::load_leases(&self.engine)?);
        self.removed.reload(&self.engine)?;
        self.hub.reset(current, compacted);
        let rev = Revisions { current, compacted };
        self.revisions.send_replace(rev);
        self.compaction_target.send_replace(compacted);
        Ok(rev)
    }
}

/// The openraft state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    rev: Revisions,
    /// The ids in the dedup table (empty in a snapshot builder, which applies nothing).
    dedup: DedupIndex,
    /// Live versions of recently written keys: what a put replaces, without a RocksDB read.
    latest: LatestCache,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachine {
    /// Opens the state machine persisted in `shared.engine`.
    pub fn open(shared: Arc<Shared>) -> Result<Self, io::Error> {
        let engine = &shared.engine;
        let meta = engine.cf(cf::SM_META);
        let last_applied = match engine.db().get_cf(meta, META_LAST_APPLIED).map_err(io_err)? {
            Some(raw) => Some(codec::decode_log_id(&raw).map_err(io_err)?),
            None => None,
        };
        let membership = match engine.db().get_cf(meta, META_MEMBERSHIP).map_err(io_err)? {
            Some(raw) => codec::decode_stored_membership(&raw).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        let rev = *shared.revisions.borrow();
        let dedup = DedupIndex::load(engine).map_err(io_err)?;
        Ok(StateMachine { shared, last_applied, membership, rev, dedup, latest: LatestCache::default() })
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Applies one normal entry's command at log `index`; returns the batch
    /// to write, the events to publish after writing, and the answer.
    fn apply_command(&mut self, raw: &[u8], index: u64) -> (WriteBatch, Vec<Event>, Applied) {
        let cmd = match raftlog::Command::decode(raw) {
            Ok(c) => c,
            Err(e) => {
                // Deterministic: every member decodes the same bytes the same way.
                let err = StoreError::Internal(format!("undecodable command: {e}"));
                return (WriteBatch::default(), Vec::new(), Applied::Rejected(err));
            }
        };
        if cmd.request_id != 0 {
            match self.dedup.lookup(self.engine(), cmd.request_id) {
                Ok(Some(first)) => return (WriteBatch::default(), Vec::new(), first),
                Ok(None) => {}
                Err(e) => return (WriteBatch::default(), Vec::new(), Applied::Rejected(e.into())),
            }
        }
        let (mut batch, events, applied) = self.apply_op(cmd.op);
        if cmd.request_id != 0 && !matches!(&applied, Applied::Rejected(StoreError::Internal(_))) {
            self.dedup.record(&self.shared.engine, &mut batch, cmd.request_id, index, &applied);
        }
        (batch, events, applied)
    }

    fn apply_op(&mut self, op: Option<Op>) -> (WriteBatch, Vec<Event>, Applied) {
        let Some(op) = op else {
            return (WriteBatch::default(), Vec::new(), Applied::Nothing);
        };
        match op {
            Op::Put(p) => self.apply_kv(apply::single_op_txn(pb::request_op::Request::RequestPut(p)), KvKind::Put),
            Op::DeleteRange(d) => {
                self.apply_kv(apply::single_op_txn(pb::request_op::Request::RequestDeleteRange(d)), KvKind::Delete)
            }
            Op::Txn(t) => self.apply_kv(t, KvKind::Txn),
            Op::Compact(c) => self.apply_compact(c.revision),
            Op::LeaseGrant(g) => self.apply_lease_grant(g),
            Op::LeaseRevoke(r) => self.apply_lease_revoke(r),
            Op::Publish(m) => self.apply_publish(m),
        }
    }

    /// Records a member's published name and client URLs, if it is a member.
    fn apply_publish(&mut self, m: raftlog::MemberAttributes) -> (WriteBatch, Vec<Event>, Applied) {
        let mut batch = WriteBatch::default();
        if self.membership.membership().get_node(&m.id).is_some() {
            batch.put_cf(self.engine().cf(cf::MEMBERS), m.id.to_be_bytes(), m.encode_to_vec());
        }
        (batch, Vec::new(), Applied::Nothing)
    }

    /// Forgets the published attributes of members no longer in `membership`.
    fn prune_member_attributes(&self, batch: &mut WriteBatch) -> Result<(), EngineError> {
        let members = self.engine().cf(cf::MEMBERS);
        for item in self.engine().db().iterator_cf(members, rocksdb::IteratorMode::Start) {
            let (k, _) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| EngineError::Corrupt {
                what: "member attributes key",
                detail: format!("{} bytes", k.len()),
            })?);
            if self.membership.membership().get_node(&id).is_none() {
                batch.delete_cf(members, k);
            }
        }
        Ok(())
    }

    fn apply_kv(&mut self, req: pb::TxnRequest, kind: KvKind) -> (WriteBatch, Vec<Event>, Applied) {
        let (mut batch, _, events, applied) = self.run_kv(WriteBatch::default(), Overlay::new(), req, kind);
        if !events.is_empty() {
            mvcc::stage_revision(self.engine(), &mut batch, self.rev.current);
        }
        (batch, events, applied)
    }

    /// Runs a KV txn on top of the staged, unwritten `batch`/`overlay` (see [`WriteTxn::resume`]).
    /// A rejected txn stages nothing; if one did, that is a bug reported as an internal error,
    /// which stops the member rather than write a partial txn.
    fn run_kv(
        &mut self,
        batch: WriteBatch,
        overlay: Overlay,
        req: pb::TxnRequest,
        kind: KvKind,
    ) -> (WriteBatch, Overlay, Vec<Event>, Applied) {
        let engine = self.shared.engine.clone();
        let staged_before = batch.len();
        let mut txn =
            WriteTxn::resume(&engine, self.rev.current, self.rev.compacted, batch, overlay).with_cache(&self.latest);
        let result = apply::apply_txn(&engine, &mut txn, &req);
        let (batch, overlay, revision, events) = txn.finish_with_overlay();
        let applied = match result {
            Err(_) if !events.is_empty() || batch.len() != staged_before => {
                Applied::Rejected(StoreError::Internal("a rejected txn staged writes".into()))
            }
            Err(e) => Applied::Rejected(e),
            Ok(mut resp) => {
                self.rev.current = revision;
                resp.header = header(revision);
                kind.answer(resp)
            }
        };
        (batch, overlay, events, applied)
    }

    fn apply_compact(&mut self, revision: i64) -> (WriteBatch, Vec<Event>, Applied) {
        if let Err(e) = mvcc::check_compact(self.rev.current, self.rev.compacted, revision) {
            return (WriteBatch::default(), Vec::new(), Applied::Rejected(e));
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.engine().cf(cf::SM_META), mvcc::META_COMPACT_REVISION, revision.to_be_bytes());
        // Compacted before the batch is written, like every index change: from here on reads
        // below `revision` fail, and the compactor may drop what they would have read.
        self.engine().index_mut().compact(revision);
        self.rev.compacted = revision;
        let resp = pb::CompactionResponse { header: header(self.rev.current) };
        (batch, Vec::new(), Applied::Compact(resp))
    }

    fn apply_lease_grant(&mut self, g: pb::LeaseGrantRequest) -> (WriteBatch, Vec<Event>, Applied) {
        match apply::lease_exists(self.engine(), g.id) {
            Ok(true) => return (WriteBatch::default(), Vec::new(), Applied::Rejected(StoreError::LeaseExist)),
            Ok(false) => {}
            Err(e) => return (WriteBatch::default(), Vec::new(), Applied::Rejected(e.into())),
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.engine().cf(cf::LEASE), g.id.to_be_bytes(), apply::encode_lease(g.ttl));
        let resp =
            pb::LeaseGrantResponse { header: header(self.rev.current), id: g.id, ttl: g.ttl, error: String::new() };
        (batch, Vec::new(), Applied::LeaseGrant(resp))
    }

    /// Revokes leases one revision each. Earlier leases' batches are written
    /// here; the last one is returned to be written with `last_applied`.
    fn apply_lease_revoke(&mut self, r: raftlog::LeaseRevoke) -> (WriteBatch, Vec<Event>, Applied) {
        let engine = self.shared.engine.clone();
        let mut pending: Option<(WriteBatch, Vec<Event>)> = None;
        for id in &r.ids {
            match apply::lease_exists(&engine, *id) {
                Ok(true) => {}
                Ok(false) if r.expired => continue,
                Ok(false) => return (WriteBatch::default(), Vec::new(), Applied::Rejected(StoreError::LeaseNotFound)),
                Err(e) => return (WriteBatch::default(), Vec::new(), Applied::Rejected(e.into())),
            }
            if let Some((batch, events)) = pending.take()
                && let Err(e) = self.write_and_publish(batch, &events)
            {
                return (WriteBatch::default(), Vec::new(), Applied::Rejected(e.into()));
            }
            let mut txn = WriteTxn::new(&engine, self.rev.current, self.rev.compacted).with_cache(&self.latest);
            if let Err(e) = apply::revoke_lease(&engine, &mut txn, *id) {
                return (WriteBatch::default(), Vec::new(), Applied::Rejected(e));
            }
            let (batch, revision, events) = txn.finish();
            self.rev.current = revision;
            self.shared.lessor.on_revoke(*id);
            pending = Some((batch, events));
        }
        let (batch, events) = pending.unwrap_or_default();
        let resp = pb::LeaseRevokeResponse { header: header(self.rev.current) };
        (batch, events, Applied::LeaseRevoke(resp))
    }

    fn write_and_publish(&mut self, batch: WriteBatch, events: &[Event]) -> Result<(), EngineError> {
        mvcc::index_changes(self.engine(), events);
        self.engine().write_unlogged(batch)?;
        self.publish(events);
        Ok(())
    }

    /// After a batch is written: its changes go into the cache of live versions and to the
    /// watchers.
    fn publish(&mut self, events: &[Event]) {
        self.latest.apply_events(events);
        if let Some(last) = events.last() {
            self.shared.hub.publish(last.kv.mod_revision, events);
        }
    }

    fn apply_entry(&mut self, entry: &super::types::Entry) -> Result<Applied, io::Error> {
        let mut removed_members = Vec::new();
        let (mut batch, events, applied) = match &entry.payload {
            EntryPayload::Blank => (WriteBatch::default(), Vec::new(), Applied::Nothing),
            EntryPayload::Normal(cmd) => self.apply_command(&cmd.0, entry.log_id.index),
            EntryPayload::Membership(m) => {
                removed_members = removed::removed_by(self.membership.membership(), m);
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                let mut b = WriteBatch::default();
                removed::stage(self.engine(), &mut b, &removed_members);
                let raw = codec::encode_stored_membership(&self.membership);
                b.put_cf(self.engine().cf(cf::SM_META), META_MEMBERSHIP, raw);
                self.prune_member_attributes(&mut b).map_err(io_err)?;
                (b, Vec::new(), Applied::Nothing)
            }
        };
        self.dedup.prune_due(&self.shared.engine, &mut batch, entry.log_id.index).map_err(io_err)?;
        if let Applied::Rejected(StoreError::Internal(e)) = &applied {
            // Storage failed mid-apply: stop rather than diverge from peers.
            return Err(io_err(e));
        }
        self.last_applied = Some(entry.log_id);
        batch.put_cf(self.engine().cf(cf::SM_META), META_LAST_APPLIED, codec::encode_log_id(&entry.log_id));
        mvcc::index_changes(self.engine(), &events);
        let started = std::time::Instant::now();
        self.engine().write_unlogged(batch).map_err(io_err)?;
        self.shared.metrics.observe_backend_commit(started.elapsed());
        self.shared.removed.extend(&removed_members);
        self.after_write(&events, &applied);
        Ok(applied)
    }

    /// Applies a groupable KV command (see [`group::groupable`]) into `group`; its reply is sent
    /// once the group is written.
    fn apply_in_group(
        &mut self,
        group: &mut Group,
        entry: &super::types::Entry,
        cmd: raftlog::Command,
        responder: Option<ApplyResponder<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let recorded = match cmd.request_id {
            0 => None,
            id => match group.dedup.get(&id) {
                Some(&first) => Some(group.answers[first].1.clone()),
                None => self.dedup.lookup(self.engine(), id).map_err(io_err)?,
            },
        };
        let applied = match recorded {
            Some(first) => first,
            None => {
                let (req, kind) = match cmd.op {
                    Some(Op::Put(p)) => (apply::single_op_txn(pb::request_op::Request::RequestPut(p)), KvKind::Put),
                    Some(Op::DeleteRange(d)) => {
                        (apply::single_op_txn(pb::request_op::Request::RequestDeleteRange(d)), KvKind::Delete)
                    }
                    Some(Op::Txn(t)) => (t, KvKind::Txn),
                    _ => return Err(io_err("a command that cannot be grouped was grouped")),
                };
                let (batch, overlay) = (std::mem::take(&mut group.batch), std::mem::take(&mut group.overlay));
                let (batch, overlay, events, applied) = self.run_kv(batch, overlay, req, kind);
                (group.batch, group.overlay) = (batch, overlay);
                if let Applied::Rejected(StoreError::Internal(e)) = &applied {
                    return Err(io_err(e));
                }
                if !events.is_empty() {
                    group.events.push(events);
                }
                if cmd.request_id != 0 {
                    let index = entry.log_id.index;
                    self.dedup.record(&self.shared.engine, &mut group.batch, cmd.request_id, index, &applied);
                    group.dedup.insert(cmd.request_id, group.answers.len());
                }
                applied
            }
        };
        self.dedup.prune_due(&self.shared.engine, &mut group.batch, entry.log_id.index).map_err(io_err)?;
        group.last_applied = Some(entry.log_id);
        group.answers.push((responder, applied));
        Ok(())
    }

    /// Writes a group's batch with `last_applied` in one RocksDB write, then publishes its
    /// events and answers its proposers.
    fn write_group(&mut self, mut group: Group) -> Result<(), io::Error> {
        let Some(last) = group.last_applied else {
            return Ok(());
        };
        self.last_applied = Some(last);
        if !group.events.is_empty() {
            mvcc::stage_revision(self.engine(), &mut group.batch, self.rev.current);
        }
        group.batch.put_cf(self.engine().cf(cf::SM_META), META_LAST_APPLIED, codec::encode_log_id(&last));
        mvcc::index_group_changes(self.engine(), &group.events);
        let started = std::time::Instant::now();
        self.engine().write_unlogged(group.batch).map_err(io_err)?;
        self.shared.metrics.observe_backend_commit(started.elapsed());
        for events in &group.events {
            self.publish(events);
        }
        self.shared.revisions.send_replace(self.rev);
        for (responder, applied) in group.answers {
            if let Some(r) = responder {
                r.send(applied);
            }
        }
        Ok(())
    }

    fn after_write(&mut self, events: &[Event], applied: &Applied) {
        self.publish(events);
        match applied {
            Applied::LeaseGrant(g) => self.shared.lessor.on_grant(g.id, g.ttl),
            Applied::Compact(_) => {
                self.shared.hub.on_compacted(self.rev.compacted);
                self.shared.compaction_target.send_replace(self.rev.compacted);
            }
            _ => {}
        }
        self.shared.revisions.send_replace(self.rev);
    }
}

#[derive(Clone, Copy)]
enum KvKind {
    Put,
    Delete,
    Txn,
}

impl KvKind {
    fn answer(self, mut resp: pb::TxnResponse) -> Applied {
        let mut single = || resp.responses.pop().and_then(|r| r.response);
        match self {
            KvKind::Txn => Applied::Txn(resp),
            KvKind::Put => match single() {
                Some(pb::response_op::Response::ResponsePut(mut p)) => {
                    p.header = resp.header;
                    Applied::Put(p)
                }
                _ => Applied::Rejected(StoreError::Internal("put produced no put response".into())),
            },
            KvKind::Delete => {
                let header = resp.header;
                match single() {
                    Some(pb::response_op::Response::ResponseDeleteRange(mut d)) => {
                        d.header = header;
                        Applied::DeleteRange(d)
                    }
                    _ => Applied::Rejected(StoreError::Internal("delete produced no delete response".into())),
                }
            }
        }
    }
}

/// A snapshot of this state machine as openraft sees it.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// What a snapshot covers, as openraft sees it.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

fn to_meta(info: &SnapshotInfo) -> SnapshotMeta {
    SnapshotMeta { last_log_id: info.last_log_id, last_membership: info.last_membership.clone() }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let shared = self.shared.clone();
        let built = tokio::task::spawn_blocking(move || shared.snapshots.build(&shared.engine))
            .await
            .map_err(io_err)?
            .map_err(io::Error::from)?;
        let (info, data) = built;
        tracing::info!(last_log_id = ?info.last_log_id, revision = info.revision, "built snapshot");
        Ok(Snapshot { meta: to_meta(&info), snapshot: data })
    }
}

/// Entries up to this size are decoded in place by [`decode_for_apply`].
const IN_PLACE_DECODE_BYTES_MAX: usize = 64 << 10;

/// Decodes a command to apply. A small entry is decoded from its `Bytes`: keys and values are
/// slices of it, not copies, and what outlives the apply copies what it keeps (the key index,
/// the LatestCache). A larger one (a big txn) is decoded into copies, so that an event of one
/// small key, queued for a slow watcher, cannot keep the whole entry alive.
fn decode_for_apply(payload: &Bytes) -> Result<raftlog::Command, prost::DecodeError> {
    if payload.len() <= IN_PLACE_DECODE_BYTES_MAX {
        raftlog::Command::decode(payload.clone())
    } else {
        raftlog::Command::decode(&payload[..])
    }
}

/// The path of a received snapshot file, not yet published, for `install_snapshot`.
/// Snapshot data openraft hands over is a received file; anything else is
/// copied to a temp file first, so publishing never moves a published snapshot.
fn received_file(dir: &SnapshotDir, data: SnapshotData) -> Result<std::path::PathBuf, io::Error> {
    match data {
        SnapshotData::File(f) if dir.is_temp(&f.path) => Ok(f.path),
        other => {
            let mut file = other.into_file()?;
            let temp = dir.temp_path("install");
            // From the open file, not its path: a newer snapshot may have replaced it there.
            let mut copy = std::fs::File::create(&temp)?;
            std::io::copy(&mut file.file, &mut copy)?;
            copy.sync_all()?; // publish renames it into place: it must be durable first
            Ok(temp)
        }
    }
}

/// `raft_meta` key naming a snapshot whose install has begun but not finished.
pub(crate) const META_INSTALLING: &[u8] = b"installing_snapshot";

/// Loads the snapshot at `path` into the state machine, recording the install
/// in progress first so that a crash midway redoes it at the next start.
pub(crate) fn load_snapshot(engine: &Engine, path: &std::path::Path) -> Result<SnapshotInfo, io::Error> {
    let raft_meta = engine.cf(cf::RAFT_META);
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let marker = path.to_string_lossy().into_owned();
    engine.db().put_cf_opt(raft_meta, META_INSTALLING, marker.as_bytes(), &sync).map_err(io_err)?;
    let info = snapshot::file::load(engine, path)?;
    engine.db().delete_cf_opt(raft_meta, META_INSTALLING, &sync).map_err(io_err)?;
    Ok(info)
}

/// Finishes a snapshot install a crash interrupted, before anything reads the store.
pub fn recover_interrupted_install(engine: &Engine) -> Result<(), io::Error> {
    let Some(raw) = engine.db().get_cf(engine.cf(cf::RAFT_META), META_INSTALLING).map_err(io_err)? else {
        return Ok(());
    };
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&raw).into_owned());
    tracing::warn!(path = %path.display(), "redoing a snapshot install interrupted by a crash");
    load_snapshot(engine, &path).map(|_| ())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut group = Group::default();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let groupable = match &entry.payload {
                EntryPayload::Normal(cmd) => decode_for_apply(&cmd.0).ok().filter(group::groupable),
                _ => None,
            };
            if let Some(cmd) = groupable {
                self.apply_in_group(&mut group, &entry, cmd, responder)?;
                if group.is_full() {
                    self.write_group(std::mem::take(&mut group))?;
                }
                continue;
            }
            self.write_group(std::mem::take(&mut group))?;
            let applied = self.apply_entry(&entry)?;
            if let Some(r) = responder {
                r.send(applied);
            }
        }
        self.write_group(group)
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            shared: self.shared.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            rev: self.rev,
            dedup: DedupIndex::default(),
            latest: LatestCache::default(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let expected = meta.last_log_id;
        let (info, dedup) = tokio::task::spawn_blocking(move || -> Result<(SnapshotInfo, DedupIndex), io::Error> {
            let temp = received_file(&shared.snapshots, data)?;
            let info = snapshot::file::verify(&temp)?;
            if info.last_log_id != expected {
                return Err(io_err(format!(
                    "snapshot file covers {:?}, its metadata says {:?}",
                    info.last_log_id, expected
                )));
            }
            let (published, path) = shared.snapshots.publish(&temp, &info)?;
            match path {
                Published::File(path) if published.last_log_id == info.last_log_id => {
                    let info = load_snapshot(&shared.engine, &path)?;
                    Ok((info, DedupIndex::load(&shared.engine).map_err(io_err)?))
                }
                _ => Err(io_err("a newer snapshot than the one received is already installed")),
            }
        })
        .await
        .map_err(io_err)??;
        // The store was replaced wholesale.
        self.latest.clear();
        self.rev = self.shared.reload().map_err(io_err)?;
        self.last_applied = info.last_log_id;
        self.membership = info.last_membership.clone();
        self.dedup = dedup;
        tracing::info!(last_log_id = ?info.last_log_id, revision = info.revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<Snapshot>, io::Error> {
            let Some((info, data)) = shared.snapshots.current_data()? else {
                return Ok(None);
            };
            Ok(Some(Snapshot { meta: to_meta(&info), snapshot: data }))
        })
        .await
        .map_err(io_err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_entry(value_bytes: usize) -> Bytes {
        let put = pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: vec![b'v'; value_bytes].into(),
            ..Default::default()
        };
        raftlog::Command { request_id: 1, op: Some(Op::Put(put)) }.encode_to_vec().into()
    }

    fn value_in_entry(entry: &Bytes) -> bool {
        let Some(Op::Put(put)) = decode_for_apply(entry).expect("decodes").op else { panic!("a put") };
        entry.as_ptr_range().contains(&put.value.as_ptr())
    }

    #[test]
    fn small_entries_are_decoded_in_place_and_large_ones_into_copies() {
        assert!(value_in_entry(&put_entry(256)), "a small entry's value is a slice of it");
        let large = put_entry(IN_PLACE_DECODE_BYTES_MAX + 1);
        assert!(!value_in_entry(&large), "a large entry's value is copied out of it");
    }
}
