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

/// A new voter: etcd's `IsReadyToAddVotingMember`, then every voter connected.
pub fn may_add_voter(view: &VoterView) -> Result<(), StoreError> {
    let members = view.voters.len() + 1;
    let started = view.started_voters(None);
    // etcd's exception: a second member added to a one-member cluster (restoring its data).
    let restoring = started == 1 && members == 2;
    if !restoring && started < members / 2 + 1 {
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

/// Voter `id` removed: etcd's `IsReadyToRemoveVotingMember`, then, unless `id` is down (not
/// part of the quorum that is up), enough connected voters left.
pub fn may_remove_voter(view: &VoterView, id: u64) -> Result<(), StoreError> {
    let remaining = view.voters.iter().filter(|v| **v != id).count();
    if view.started_voters(Some(id)) < remaining / 2 + 1 {
        return Err(StoreError::NotEnoughStartedMembers);
    }
    if id != view.me && !view.connected.contains(&id) {
        return Ok(());
    }
    let connected = view.voters.iter().filter(|v| **v == view.me || view.connected.contains(v)).count();
    if connected - 1 < 1 + (view.voters.len() - 1) / 2 {
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
    fn a_voter_is_added_only_with_a_started_quorum_after_it_and_every_voter_connected() {
        assert_eq!(may_add_voter(&view(&[1, 2, 3], &[1, 2, 3], &[2, 3])), Ok(()));
        // Four voters after the add need three started: a voter added and never started counts.
        assert_eq!(may_add_voter(&view(&[1, 2, 3], &[1, 2], &[2, 3])), Err(StoreError::NotEnoughStartedMembers));
        assert_eq!(may_add_voter(&view(&[1, 2, 3, 4], &[1, 2, 3], &[2, 3, 4])), Ok(()));
        // One voter down: the new one would make two of four unreachable.
        assert_eq!(may_add_voter(&view(&[1, 2, 3], &[1, 2, 3], &[2])), Err(StoreError::Unhealthy));
        // A one-member cluster may always grow.
        assert_eq!(may_add_voter(&view(&[1], &[1], &[])), Ok(()));
        // A two-member cluster whose second never started may not.
        assert_eq!(may_add_voter(&view(&[1, 2], &[1], &[2])), Err(StoreError::NotEnoughStartedMembers));
    }

    #[test]
    fn a_learner_is_promoted_only_with_a_started_quorum_counting_it() {
        assert_eq!(may_promote(&view(&[1, 2, 3], &[1, 2], &[])), Ok(()));
        assert_eq!(may_promote(&view(&[1, 2, 3], &[1], &[])), Err(StoreError::NotEnoughStartedMembers));
    }

    #[test]
    fn a_reachable_voter_is_removed_only_if_the_reachable_rest_is_a_quorum() {
        let all = view(&[1, 2, 3], &[1, 2, 3], &[2, 3]);
        assert_eq!(may_remove_voter(&all, 3), Ok(()));
        assert_eq!(may_remove_voter(&all, 1), Ok(()));
        // 3 is down: removing 2 would leave the leader alone of the three it still needs two of.
        let three_down = view(&[1, 2, 3], &[1, 2, 3], &[2]);
        assert_eq!(may_remove_voter(&three_down, 2), Err(StoreError::Unhealthy));
        assert_eq!(may_remove_voter(&three_down, 1), Err(StoreError::Unhealthy));
        // The member that is down may go.
        assert_eq!(may_remove_voter(&three_down, 3), Ok(()));
        // Of 1, 2 and 3 only 1 started: without 3, one of two is no quorum.
        assert_eq!(may_remove_voter(&view(&[1, 2, 3], &[1], &[2, 3]), 3), Err(StoreError::NotEnoughStartedMembers));
    }
}
