//! The lessor: the in-memory expiry clock of every lease. Grants and revokes
//! are replicated; expiry times are not. Only the leader acts on them, and a
//! new leader restarts every lease at its full TTL (etcd's default, see
//! ARCHITECTURE.md), so a lease may outlive its TTL across a leader change
//! but never expires early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl_secs: i64,
    expiry: Instant,
}

/// Lease expiry bookkeeping.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Timer>>,
    /// The Raft term in which this member last took over the clocks as leader.
    promoted_term: std::sync::atomic::AtomicU64,
}

fn deadline(now: Instant, ttl_secs: i64) -> Instant {
    now + Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0).min(1 << 40))
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Timer>> {
        // A panic while holding this lock cannot leave the map inconsistent:
        // every update is a single insert or remove.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease was granted (applied).
    pub fn on_grant(&self, id: i64, ttl_secs: i64) {
        self.lock().insert(id, Timer { ttl_secs, expiry: deadline(Instant::now(), ttl_secs) });
    }

    /// A lease was revoked (applied).
    pub fn on_revoke(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Replaces every lease (after a snapshot install), each at its full TTL.
    pub fn reset(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut map = self.lock();
        map.clear();
        for (id, ttl) in leases {
            map.insert(*id, Timer { ttl_secs: *ttl, expiry: deadline(now, *ttl) });
        }
    }

    /// Called by the leader of `term` before it uses the clocks: the first
    /// call in a newer term restarts every lease at its full TTL (etcd's
    /// Promote). Returns false when a later term was already promoted here:
    /// this member's leadership of `term` is over, and its clocks belong to
    /// the later term, so the caller must not renew or answer from them.
    pub fn promote(&self, term: u64) -> bool {
        use std::sync::atomic::Ordering;
        let previous = self.promoted_term.fetch_max(term, Ordering::AcqRel);
        if previous < term {
            self.refresh_all();
        }
        previous <= term
    }

    /// Restarts every lease at its full TTL, as a new leader does.
    pub fn refresh_all(&self) {
        let now = Instant::now();
        for t in self.lock().values_mut() {
            t.expiry = deadline(now, t.ttl_secs);
        }
    }

    /// Renews a lease; its TTL, or `None` if it does not exist or has already expired.
    ///
    /// An expired lease's revoke may already be proposed: renewing it would tell the client it
    /// lives for another TTL while its keys are about to be deleted. etcd's `Renew` likewise
    /// answers "not found" for an expired lease.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut leases = self.lock();
        let t = leases.get_mut(&id)?;
        let now = Instant::now();
        if t.expiry <= now {
            return None;
        }
        t.expiry = deadline(now, t.ttl_secs);
        Some(t.ttl_secs)
    }

    /// Remaining and granted TTL in seconds, or `None` if unknown.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let t = *self.lock().get(&id)?;
        let left = t.expiry.saturating_duration_since(Instant::now());
        // Round up as etcd does, so a fresh lease reports its full TTL.
        let secs = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        Some((secs, t.ttl_secs))
    }

    /// Every lease id, sorted.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Up to `max` leases whose deadline has passed.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut ids: Vec<i64> =
            self.lock().iter().filter(|(_, t)| t.expiry <= now).map(|(id, _)| *id).take(max).collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_ttl_and_keep_alive() {
        let l = Lessor::default();
        l.on_grant(1, 2);
        l.on_grant(2, 100);
        let now = Instant::now();
        assert!(l.expired(now, 10).is_empty());
        assert_eq!(l.expired(now + Duration::from_secs(3), 10), vec![1]);
        assert_eq!(l.keep_alive(1), Some(2));
        assert_eq!(l.keep_alive(9), None);
        // An expired lease (its revoke may be in flight) is not brought back by a keep-alive.
        l.lock().get_mut(&1).unwrap().expiry = now;
        assert_eq!(l.keep_alive(1), None);
        assert_eq!(l.expired(now, 10), vec![1]);
        assert_eq!(l.time_to_live(2).map(|(_, g)| g), Some(100));
        assert!(l.time_to_live(2).unwrap().0 > 98);
        l.on_revoke(1);
        assert_eq!(l.ids(), vec![2]);
        // Promotion restarts the clocks once per term.
        l.on_grant(3, 100);
        l.lock().get_mut(&3).unwrap().expiry = now;
        assert!(l.promote(7));
        assert!(l.time_to_live(3).unwrap().0 > 98, "refreshed on the first promotion of term 7");
        l.lock().get_mut(&3).unwrap().expiry = now;
        assert!(l.promote(7));
        assert_eq!(l.time_to_live(3).unwrap().0, 0, "not refreshed again within term 7");
        // A stale leadership (term 6 after term 7) neither refreshes nor may use the clocks.
        assert!(!l.promote(6));
        assert_eq!(l.time_to_live(3).unwrap().0, 0, "a stale term does not refresh");
        assert!(l.promote(8));
        assert!(l.time_to_live(3).unwrap().0 > 98, "refreshed on the first promotion of term 8");
        l.on_revoke(3);
        assert_eq!(l.expired(now + Duration::from_secs(1000), 10), vec![2]);
    }
}
