//! The cluster's membership as etcd's Cluster API sees it: Raft's voters and
//! learners with their peer URLs, plus the names and client URLs members
//! publish once they run; and membership changes, executed by the leader
//! one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::Instant as _;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;

use super::Node;
use super::forward::{AttemptError, Target, status_error, write_refusal};
use super::reconfig_check::{self, VoterView};
use crate::engine::cf;
use crate::error::StoreError;
use crate::proto::etcdserverpb as epb;
use crate::proto::peerpb::{self as pb, member_change::Change};
use crate::proto::raftlog;
use crate::raft::types::{MemberInfo, Membership, StoredMembership, TypeConfig};

type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// etcd promotes a learner only once it has this share of the leader's log.
const LEARNER_READY_PERCENT: u64 = 90;
/// etcd allows one learner at a time (`maxLearners`).
const LEARNERS_MAX: usize = 1;
/// How long MoveLeader waits for the target to take over.
const MOVE_LEADER_WAIT_ELECTIONS: u32 = 4;

/// Whether `id` is a voter of a membership that is not joint: a change that made it a voter has
/// finished.
fn is_settled_voter(membership: &Membership, id: u64) -> bool {
    matches!(membership.get_joint_config().as_slice(), [voters] if voters.contains(&id))
}

/// How a membership change this member executed as leader ended, as an attempt: a lost
/// leadership or a timeout is worth another attempt against the (possibly new) leader.
fn change_error(e: StoreError) -> AttemptError {
    match e {
        StoreError::NotLeader | StoreError::Timeout => AttemptError::Retry(e),
        e => AttemptError::Final(e),
    }
}

impl Node {
    /// The attributes member `id` published, if any.
    pub fn published_attributes(&self, id: u64) -> Option<raftlog::MemberAttributes> {
        let engine = &self.shared.engine;
        let raw = engine.db().get_cf(engine.cf(cf::MEMBERS), id.to_be_bytes()).ok()??;
        raftlog::MemberAttributes::decode(raw.as_slice()).ok()
    }

    /// Every member in the current membership, as etcd's Member.
    pub fn members_pb(&self) -> Vec<epb::Member> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| {
                let published = self.published_attributes(*id);
                epb::Member {
                    id: *id,
                    name: published.as_ref().map_or_else(|| info.name.clone(), |p| p.name.clone()),
                    peer_ur_ls: info.peer_urls.clone(),
                    client_ur_ls: published.map(|p| p.client_urls).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// Applies a membership change through the leader; returns the new members.
    ///
    /// An attempt that fails because the leader changed, or whose answer is lost, is retried
    /// against the new leader as a retry: openraft executes a change in steps (a voter is added
    /// as a learner first, a removal goes through a joint configuration), so the first attempt
    /// may have done part or all of it, and the retry finishes it instead of refusing it.
    pub async fn change_members(&self, change: Change) -> Result<Vec<epb::Member>, StoreError> {
        let attempted = AtomicBool::new(false);
        self.with_leader(|target, limit| {
            let change = change.clone();
            let attempted = &attempted;
            // Adding a voter waits for a quorum that includes it: allow the full request time.
            let limit = limit.max(self.config.request_timeout());
            async move {
                // Whether an earlier attempt reached a leader (or what it took for one), which may
                // have executed the change in part.
                let retry = attempted.load(Ordering::Relaxed);
                match target {
                    Target::Me => {
                        attempted.store(true, Ordering::Relaxed);
                        match tokio::time::timeout(limit, self.change_members_here(change, retry)).await {
                            Err(_) => Err(AttemptError::Retry(StoreError::Timeout)),
                            Ok(result) => result.map_err(change_error),
                        }
                    }
                    Target::Peer(id, info) => {
                        let mut client =
                            self.peers.client(id, &info).map_err(|e| AttemptError::Retry(StoreError::internal(e)))?;
                        attempted.store(true, Ordering::Relaxed);
                        let msg = pb::MemberChange { route: self.peers.route(id), change: Some(change), retry };
                        let mut req = tonic::Request::new(msg);
                        req.set_timeout(limit);
                        client
                            .change_members(req)
                            .await
                            .map(|r| r.into_inner().members)
                            .map_err(|s| status_error(self.peers.noted(s)))
                    }
                }
            }
        })
        .await
    }

    /// Executes a membership change on this member, which must lead. `retry`: an earlier attempt
    /// of the same change may have been executed (see `change_members`).
    pub(crate) async fn change_members_here(
        &self,
        change: Change,
        retry: bool,
    ) -> Result<Vec<epb::Member>, StoreError> {
        let _serial = self.membership_lock.lock().await;
        if self.raft.metrics().borrow_watched().current_leader != Some(self.member_id) {
            return Err(StoreError::NotLeader);
        }
        self.wait_for_settled_membership().await;
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let exists = |id: u64| membership.get_node(&id).is_some();
        // A retry finishes what an attempt that passed the check began.
        if self.config.strict_reconfig_check && !retry {
            let view = self.voter_view(&metrics, &voters);
            match &change {
                Change::Add(add) if !exists(add.id) => reconfig_check::may_add_member(&view, add.is_learner)?,
                Change::Remove(id) if voters.contains(id) => reconfig_check::may_remove_voter(&view, *id)?,
                _ => {}
            }
        }
        let result = match change {
            Change::Add(add) => return self.add_member_here(add, &membership, retry).await,
            Change::Promote(id) => {
                if !exists(id) {
                    return Err(StoreError::MemberNotFound);
                }
                if voters.contains(&id) && !retry {
                    return Err(StoreError::MemberNotLearner);
                }
                if is_settled_voter(&membership, id) {
                    return Ok(self.members_pb());
                }
                // A retry whose first attempt's joint step committed: the call finishes it.
                let finishing = voters.contains(&id);
                let leader_last = metrics.last_log_index.unwrap_or(0);
                let matched =
                    metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
                if !finishing && matched * 100 < leader_last * LEARNER_READY_PERCENT {
                    return Err(StoreError::LearnerNotReady);
                }
                if self.config.strict_reconfig_check && !finishing {
                    reconfig_check::may_promote(&self.voter_view(&metrics, &voters))?;
                }
                self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
            }
            Change::Remove(id) => {
                if !exists(id) {
                    return if retry { Ok(self.members_pb()) } else { Err(StoreError::MemberNotFound) };
                }
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await
            }
            Change::Update(update) => {
                let Some(old) = membership.get_node(&update.id) else {
                    return Err(StoreError::MemberNotFound);
                };
                let info = MemberInfo { peer_urls: update.peer_urls, ..old.clone() };
                self.raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(update.id, info)])), false).await
            }
        };
        self.change_result(result)
    }

    /// MemberAdd on the leader: a learner first, then (unless a learner is asked for) a voter. A
    /// retry finds the member its earlier attempt added (ids are drawn per request, so the same
    /// id with the same peer URLs is that attempt's) and finishes the change.
    async fn add_member_here(
        &self,
        add: pb::AddMember,
        membership: &Membership,
        retry: bool,
    ) -> Result<Vec<epb::Member>, StoreError> {
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        // etcd's ErrIDRemoved (answered as "member not found"): a retry whose id a MemberRemove
        // took meanwhile would bring back a member every peer now refuses.
        if self.shared.removed.contains(add.id) {
            return Err(StoreError::MemberNotFound);
        }
        let added_before = match membership.get_node(&add.id) {
            Some(node) if retry && node.peer_urls == add.peer_urls => true,
            Some(_) => return Err(StoreError::MemberExists),
            None => false,
        };
        if !added_before {
            let taken: BTreeSet<&String> = membership.nodes().flat_map(|(_, i)| i.peer_urls.iter()).collect();
            if add.peer_urls.iter().any(|u| taken.contains(u)) {
                return Err(StoreError::PeerUrlExists);
            }
            let learners = membership.nodes().filter(|(id, _)| !voters.contains(id)).count();
            if add.is_learner && learners >= LEARNERS_MAX {
                return Err(StoreError::TooManyLearners);
            }
            let info = MemberInfo { name: String::new(), peer_urls: add.peer_urls, client_urls: Vec::new() };
            self.change_result(self.raft.add_learner(add.id, info, false).await)?;
        }
        if add.is_learner || is_settled_voter(membership, add.id) {
            return Ok(self.members_pb());
        }
        // Also a retry whose first attempt's joint step committed (the id is a voter in one of
        // the joint configurations): openraft leaves a joint configuration as it is until the next
        // change, which this call is.
        self.add_voter_here(add.id, &voters).await
    }

    /// Makes learner `id` a voter. etcd answers a MemberAdd once its single-step conf change
    /// commits under the configuration before it, so a one-member cluster grows to two at once
    /// (and then waits for the new member to start). openraft's joint step also needs a quorum of
    /// the new configuration, which is the new member itself when growing from one: the change
    /// commits only once that member runs, which its operator starts only after MemberAdd
    /// answers. So the answer comes when the change completes or, failing that within an
    /// election timeout, once the joint entry is held by a majority of the voters before it (what
    /// etcd's commit means); the change goes on in the background.
    async fn add_voter_here(&self, id: u64, voters_before: &BTreeSet<u64>) -> Result<Vec<epb::Member>, StoreError> {
        let raft = self.raft.clone();
        let mut change = tokio::spawn(async move {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
        });
        let grace = Duration::from_millis(self.config.election_timeout_ms);
        let done = match tokio::time::timeout(grace, &mut change).await {
            Ok(done) => done,
            Err(_) => tokio::select! {
                done = &mut change => done,
                () = self.joint_entry_held(id, voters_before) => return Ok(self.members_pb()),
            },
        };
        match done {
            Ok(result) => self.change_result(result),
            Err(e) => Err(StoreError::internal(e)),
        }
    }

    /// Resolves once the membership in this leader's log makes `id` a voter and a majority of
    /// `voters_before` have that entry in their logs.
    async fn joint_entry_held(&self, id: u64, voters_before: &BTreeSet<u64>) {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                let config = &m.membership_config;
                if config.membership().voter_ids().any(|v| v == id)
                    && let (Some(entry), Some(matched)) = (config.log_id(), m.replication.as_ref())
                {
                    let holding = voters_before
                        .iter()
                        .filter(|v| matched.get(*v).cloned().flatten().is_some_and(|l| l.index >= entry.index))
                        .count();
                    if holding * 2 > voters_before.len() {
                        return;
                    }
                }
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The members after a change openraft executed, or why it did not.
    fn change_result<T>(
        &self,
        result: Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    ) -> Result<Vec<epb::Member>, StoreError> {
        match result {
            Ok(_) => Ok(self.members_pb()),
            Err(RaftError::APIError(e)) => Err(write_refusal(e)),
            Err(RaftError::Fatal(_)) => Err(StoreError::Stopped),
        }
    }

    /// The voters as `--strict-reconfig-check` weighs them: started once their attributes are
    /// published, connected when the leader (this member) heard from them within the election
    /// timeout.
    fn voter_view(&self, metrics: &RaftMetrics, voters: &BTreeSet<u64>) -> VoterView {
        let recent = Duration::from_millis(self.config.election_timeout_ms);
        let voters = voters.clone();
        let started = voters.iter().copied().filter(|id| self.published_attributes(*id).is_some()).collect();
        let heard = metrics.heartbeat.iter().flatten();
        let connected =
            heard.filter(|(_, at)| at.as_ref().is_some_and(|at| at.elapsed() < recent)).map(|(id, _)| *id).collect();
        VoterView { me: self.member_id, voters, started, connected }
    }

    /// Waits until the membership in effect here has applied, within the request timeout. A
    /// leader elected right after a change (its predecessor removed itself, say) holds that
    /// change's last step uncommitted until its own first entry commits it, moments later, and
    /// openraft refuses another change meanwhile (`InProgress`), where etcd's Raft loop would
    /// simply take them in turn. On a timeout the change goes ahead and reports what is wrong.
    async fn wait_for_settled_membership(&self) {
        let index = self.raft.metrics().borrow_watched().membership_config.log_id().map(|id| id.index);
        let waited = self.raft.wait(Some(self.config.request_timeout()));
        let _ = waited.applied_index_at_least(index, "the membership in effect to apply").await;
    }

    /// Resolves once this member has been removed from the cluster (it was a member, and a
    /// committed membership no longer lists it, or a peer answered that it was removed), after
    /// recording that in the data dir so that a restart is refused; etcd then stops.
    pub async fn removed(&self) {
        tokio::select! {
            () = self.removed_from_membership() => {}
            () = self.peers.told_removed() => {
                tracing::warn!("a peer refused this member's request: it was removed from the cluster");
            }
        }
        tracing::warn!(
            member_id = format!("{:x}", self.member_id),
            "the member has been permanently removed from the cluster"
        );
        if let Err(e) = super::bootstrap::record_removed(&self.shared.engine) {
            tracing::warn!(error = %e, "could not record the removal in the data dir");
        }
    }

    /// Resolves once a committed membership applied here no longer lists this member, which it
    /// once did. A removed follower may never see that: the leader stops replicating to it once
    /// the final configuration is appended, and then a peer tells it ([`crate::raft::removed`]).
    async fn removed_from_membership(&self) {
        // The server metrics change with the membership (not with every write, as the full
        // metrics do).
        let mut metrics = self.raft.server_metrics();
        let mut was_member = false;
        loop {
            // Only a committed membership counts: a leader removing itself must stay until the
            // final configuration is committed, or the survivors are left in the joint
            // configuration that still lists it (found by the jepsen member nemesis).
            let (listed, committed_listed) = {
                let m = metrics.borrow_watched();
                let lists = |c: &StoredMembership| c.membership().get_node(&self.member_id).is_some();
                (lists(&m.membership_config), lists(&m.committed_membership_config))
            };
            if listed {
                was_member = true;
            } else if was_member && !committed_listed {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// etcd's MoveLeader: this member, the leader, hands leadership to `target`.
    pub async fn move_leader(&self, target: u64) -> Result<(), StoreError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.member_id) {
            return Err(StoreError::NotLeader);
        }
        if target == self.member_id {
            return Ok(());
        }
        if !metrics.membership_config.membership().voter_ids().any(|id| id == target) {
            return Err(StoreError::BadLeaderTransferee);
        }
        // The target may refuse a transfer while its log is not yet flushed up
        // to ours; ask again once per election timeout, as long as we lead.
        let round = Duration::from_millis(self.config.election_timeout_ms);
        for _ in 0..MOVE_LEADER_WAIT_ELECTIONS {
            if !self.is_leader() && self.raft.metrics().borrow_watched().current_leader != Some(target) {
                break;
            }
            self.raft.trigger().transfer_leader(target).await.map_err(|_| StoreError::Stopped)?;
            if self.raft.wait(Some(round)).current_leader(target, "move leader").await.is_ok() {
                return Ok(());
            }
        }
        Err(StoreError::LeaderTransferTimeout)
    }
}
