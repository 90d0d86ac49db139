//! The members removed from the cluster, recorded by apply (etcd's `IsIDRemoved`): a peer
//! tells a removed member that it is removed, and the removed member stops. A removed follower
//! often never learns of its removal otherwise: the leader stops replicating to it as soon as
//! the final configuration is appended, so the follower never has that entry.
//!
//! Only a committed, applied membership records a removal, on every member alike, and member
//! ids are not reused (MemberAdd draws a new one per request and refuses a removed one; a
//! restore, which recomputes ids, forgets the removals), so a member that a peer calls removed
//! is removed. "Not in my membership" would not do: a peer that has not yet applied a
//! MemberAdd would turn the new member away.

use std::collections::BTreeSet;
use std::sync::RwLock;

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::types::Membership;
use crate::engine::{Engine, EngineError, cf};

/// `sm_meta` key prefix of a removed member: the prefix ‖ big-endian member id → empty.
pub(crate) const KEY_PREFIX: &[u8] = b"removed_member/";

/// The `sm_meta` key recording that member `id` was removed.
pub(crate) fn key(id: u64) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The members `before` lists and `after` does not.
pub fn removed_by(before: &Membership, after: &Membership) -> Vec<u64> {
    before.nodes().map(|(id, _)| *id).filter(|id| after.get_node(id).is_none()).collect()
}

/// Stages the record of each of `ids` as removed.
pub fn stage(engine: &Engine, batch: &mut WriteBatch, ids: &[u64]) {
    for id in ids {
        batch.put_cf(engine.cf(cf::SM_META), key(*id), []);
    }
}

/// Forgets every recorded removal (a restore starts a new cluster).
pub fn clear(engine: &Engine) -> Result<(), EngineError> {
    let mut batch = WriteBatch::default();
    for id in load(engine)? {
        batch.delete_cf(engine.cf(cf::SM_META), key(id));
    }
    Ok(engine.db().write(batch)?)
}

/// The removed members recorded in `engine`.
pub fn load(engine: &Engine) -> Result<BTreeSet<u64>, EngineError> {
    let mut ids = BTreeSet::new();
    let iter = engine.db().iterator_cf(engine.cf(cf::SM_META), IteratorMode::From(KEY_PREFIX, Direction::Forward));
    for item in iter {
        let (k, _) = item?;
        let Some(raw) = k.strip_prefix(KEY_PREFIX) else { break };
        let id = raw.try_into().map(u64::from_be_bytes).map_err(|_| EngineError::Corrupt {
            what: "removed member key",
            detail: format!("{} id bytes", raw.len()),
        })?;
        ids.insert(id);
    }
    Ok(ids)
}

/// The removed members, in memory for the peer service to check each request against.
#[derive(Debug, Default)]
pub struct RemovedMembers {
    ids: RwLock<BTreeSet<u64>>,
}

impl RemovedMembers {
    /// The set loaded from `engine`.
    pub fn load(engine: &Engine) -> Result<Self, EngineError> {
        Ok(RemovedMembers { ids: RwLock::new(load(engine)?) })
    }

    /// Whether member `id` was removed.
    pub fn contains(&self, id: u64) -> bool {
        self.ids.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Adds `ids`, once their records are written.
    pub fn extend(&self, ids: &[u64]) {
        self.ids.write().unwrap_or_else(|p| p.into_inner()).extend(ids);
    }

    /// Replaces the set with what `engine` holds (after a snapshot install).
    pub fn reload(&self, engine: &Engine) -> Result<(), EngineError> {
        let ids = load(engine)?;
        *self.ids.write().unwrap_or_else(|p| p.into_inner()) = ids;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::raft::types::MemberInfo;

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        let nodes: BTreeMap<u64, MemberInfo> =
            voters.iter().chain(learners).map(|id| (*id, MemberInfo::default())).collect();
        let config = vec![voters.iter().copied().collect()];
        Membership::new(config, nodes).expect("a valid membership")
    }

    #[test]
    fn only_members_that_leave_the_listing_are_removed() {
        let three = membership(&[1, 2, 3], &[]);
        assert_eq!(removed_by(&three, &membership(&[1, 2], &[])), vec![3]);
        // A voter demoted to a learner is still a member.
        assert_eq!(removed_by(&three, &membership(&[1, 2], &[3])), Vec::<u64>::new());
        assert_eq!(removed_by(&membership(&[1, 2], &[4]), &membership(&[1, 2], &[])), vec![4]);
        // An addition removes nobody.
        assert_eq!(removed_by(&three, &membership(&[1, 2, 3, 5], &[])), Vec::<u64>::new());
    }

    #[test]
    fn removals_are_read_back_by_prefix_and_stop_at_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        stage(&engine, &mut batch, &[7, 0xfeed_beef_0000_0001]);
        // Neighbours of the prefix in key order must not be taken for removals.
        batch.put_cf(engine.cf(cf::SM_META), b"removed_member", b"x");
        batch.put_cf(engine.cf(cf::SM_META), b"removed_member0", b"x");
        engine.db().write(batch).expect("write");
        let removed = RemovedMembers::load(&engine).expect("load");
        assert!(removed.contains(7) && removed.contains(0xfeed_beef_0000_0001));
        assert!(!removed.contains(8));
        assert_eq!(key(7), b"removed_member/\0\0\0\0\0\0\0\x07".to_vec(), "the on-disk key is a contract");
        clear(&engine).expect("clear");
        assert!(load(&engine).expect("load").is_empty());
        let neighbour = engine.db().get_cf(engine.cf(cf::SM_META), b"removed_member0").expect("get");
        assert_eq!(neighbour.as_deref(), Some(&b"x"[..]), "clearing keeps what is not a removal");
    }
}
