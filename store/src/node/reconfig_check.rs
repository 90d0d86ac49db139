//! etcd's `--strict-reconfig-check` (on by default): the leader refuses a membership change
//! that would leave the cluster without a quorum of started, reachable voters, so that an
//! operator's MemberAdd or MemberRemove cannot by itself make the cluster unavailable.
//!
//! The rules are etcd 3.4's (`mayAddMember`, `mayPromoteMember`, `mayRemoveMember` and the
//! cluster's `IsReadyTo*` counts). A member is *started* once it has published its attributes
//! (etcd: its name is set). etcd counts a peer as *connected* when its connection has been up
//! for the last 5 s; openraft exposes when the leader last heard from each follower instead, so
//! here a voter is connected when the leader heard from it within the election timeout (a
//! follower silent for that long would itself be asking for a new leader).

use std::collections::BTreeSet;

use crate::error::StoreError;

/// The leader's view of its voters, as the checks need it.
#[derive(Debug, Clone, Default)]
pub struct VoterView {
    /// The leader itself (always connected).
    pub me: u64,
    /// Every voter.
    pub voters: BTreeSet<u64>,
    /// Voters that have published their attributes.
    pub started: BTreeSet<u64>,
    /// Voters the leader heard from recently, itself included.
    pub connected: BTreeSet<u64>,
}

impl VoterView {
    fn started_voters(&self, except: Option<u64>) -> usize {
        self.voters.iter().filter(|id| Some(**id) != except && self.started.contains(id)).count()
    }
}

/// A new member: for a voter etcd's `IsReadyToAddVotingMember`; then, for a learner too, every
/// voter connected.
pub fn may_add_member(view: &VoterView, learner: bool) -> Result<(), StoreError> {
    let members = view.voters.len() + 1;
    let started = view.started_voters(None);
    // etcd's exception: a second member added to a one-member cluster (restoring its data).
    let restoring = started == 1 && members == 2;
    if !learner && !restoring && started < members / 2 + 1 {
        return Err(StoreError::NotEnoughStartedMembers);
    }
    if !view.voters.iter().all(|id| *id == view.me || view.connected.contains(id)) {
        return Err(StoreError::Unhealthy);
    }
    Ok(())
}

/// A learner made a voter: etcd's `IsReadyToPromoteMember` (the learner counts as started).
pub fn may_promote(view: &VoterView) -> Result<(), StoreError> {
    let members = view.voters.len() + 1;
    let started = view.started_voters(None) + 1;
    if started < members / 2 + 1 {
        return Err(StoreError::NotEnoughStartedMembers);
    }
    Ok(())
}

/// Voter `id` removed: etcd's `IsReadyToRemoveVotingMember`, then enough connected voters
/// left. etcd lets a member that is down go without the second check (it is not part of the
/// quorum that is up); here a voter merely slow for an election timeout also looks down, so
/// removing one must still leave the connected rest a quorum of the voters after it, or the
/// change would wait on the member that is really down.
pub fn may_remove_voter(view: &VoterView, id: u64) -> Result<(), StoreError> {
    let remaining = view.voters.iter().filter(|v| **v != id).count();
    if view.started_voters(Some(id)) < remaining / 2 + 1 {
        return Err(StoreError::NotEnoughStartedMembers);
    }
    let connected_rest =
        view.voters.iter().filter(|v| **v != id && (**v == view.me || view.connected.contains(v))).count();
    if connected_rest < remaining / 2 + 1 {
        return Err(StoreError::Unhealthy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[u64], started: &[u64], connected: &[u64]) -> VoterView {
        VoterView {
            me: 1,
            voters: voters.iter().copied().collect(),
            started: started.iter().copied().collect(),
            connected: connected.iter().copied().collect(),
        }
    }

    #[test]
    fn a_member_is_added_only_with_every_voter_connected_and_a_voter_with_a_started_quorum() {
        let all = view(&[1, 2, 3], &[1, 2, 3], &[2, 3]);
        assert_eq!(may_add_member(&all, false), Ok(()));
        assert_eq!(may_add_member(&all, true), Ok(()));
        // Four voters after the add need three started: a voter added and never started counts.
        let two_started = view(&[1, 2, 3], &[1, 2], &[2, 3]);
        assert_eq!(may_add_member(&two_started, false), Err(StoreError::NotEnoughStartedMembers));
        assert_eq!(may_add_member(&two_started, true), Ok(()), "a learner is no voter");
        assert_eq!(may_add_member(&view(&[1, 2, 3, 4], &[1, 2, 3], &[2, 3, 4]), false), Ok(()));
        // One voter down: neither a voter nor a learner (etcd's isConnectedFullySince).
        let three_down = view(&[1, 2, 3], &[1, 2, 3], &[2]);
        assert_eq!(may_add_member(&three_down, false), Err(StoreError::Unhealthy));
        assert_eq!(may_add_member(&three_down, true), Err(StoreError::Unhealthy));
        // A one-member cluster may always grow.
        assert_eq!(may_add_member(&view(&[1], &[1], &[]), false), Ok(()));
        // A two-member cluster whose second never started may not.
        assert_eq!(may_add_member(&view(&[1, 2], &[1], &[2]), false), Err(StoreError::NotEnoughStartedMembers));
    }

    #[test]
    fn a_learner_is_promoted_only_with_a_started_quorum_counting_it() {
        assert_eq!(may_promote(&view(&[1, 2, 3], &[1, 2], &[])), Ok(()));
        assert_eq!(may_promote(&view(&[1, 2, 3], &[1], &[])), Err(StoreError::NotEnoughStartedMembers));
    }

    #[test]
    fn a_voter_is_removed_only_if_the_connected_rest_is_a_quorum() {
        let all = view(&[1, 2, 3], &[1, 2, 3], &[2, 3]);
        assert_eq!(may_remove_voter(&all, 3), Ok(()));
        assert_eq!(may_remove_voter(&all, 1), Ok(()));
        // 3 is down: removing 2 (or the leader) would leave one of the two it then needs.
        let three_down = view(&[1, 2, 3], &[1, 2, 3], &[2]);
        assert_eq!(may_remove_voter(&three_down, 2), Err(StoreError::Unhealthy));
        assert_eq!(may_remove_voter(&three_down, 1), Err(StoreError::Unhealthy));
        // The member that is down may go.
        assert_eq!(may_remove_voter(&three_down, 3), Ok(()));
        // 2 only slow and 3 down look alike: removing either leaves the leader alone.
        let only_me = view(&[1, 2, 3], &[1, 2, 3], &[]);
        assert_eq!(may_remove_voter(&only_me, 3), Err(StoreError::Unhealthy));
        // Of four, one down: the other three stay a quorum of three without it.
        assert_eq!(may_remove_voter(&view(&[1, 2, 3, 4], &[1, 2, 3, 4], &[2, 3]), 4), Ok(()));
        // Of 1, 2 and 3 only 1 started: without 3, one of two is no quorum.
        assert_eq!(may_remove_voter(&view(&[1, 2, 3], &[1], &[2, 3]), 3), Err(StoreError::NotEnoughStartedMembers));
    }
}
