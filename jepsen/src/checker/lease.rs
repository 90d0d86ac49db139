//! Lease safety against the ground truth: a revoked or expired lease's keys are gone (and reads
//! stop returning them), while a lease kept alive keeps its keys. The truth shows expiry and
//! revocation as DELETE events; the history's single clock bounds when they really happened.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::CheckResult;
use super::watch::{Tally, Truth, to_json};
use crate::history::{self, Op, OpType, Pair};
use crate::watchlog::{EventKind, EventRecord};

/// How long after its last possible renewal a lease's keys may linger before `lease-key-survived`:
/// expiry is detected by a periodic check and applied through consensus, and a new leader
/// extends every lease by an election timeout.
pub const SURVIVAL_SLACK_NS: u64 = 5_000_000_000;

const NS_PER_S: u64 = 1_000_000_000;

/// What the history says about one lease.
#[derive(Default)]
struct Lease<'p> {
    /// It was certainly alive until then: the latest invoke time + TTL of an ok grant or of a
    /// keepalive that found it alive (renewal happened after the invoke).
    alive_until: Option<(u64, &'p Pair)>,
    /// It may have been alive until then at the latest: completion + TTL of any grant or keepalive
    /// that may have renewed it (`u64::MAX` when one never completed).
    latest_expiry: Option<u64>,
    ttl: Option<i64>,
    /// Indeterminate keepalives' completion times; they may have renewed the lease for `ttl`.
    maybe_renewed: Vec<u64>,
    revokes: Vec<&'p Pair>,
}

impl Lease<'_> {
    /// Completion time of the first ok revoke.
    fn revoked_at(&self) -> Option<(u64, &Pair)> {
        self.revokes.iter().filter(|p| p.kind() == OpType::Ok).map(|p| (p.complete.time, *p)).min_by_key(|(t, _)| *t)
    }

    fn revoke_invoked_before(&self, time: u64) -> bool {
        self.revokes.iter().any(|p| p.invoke.time < time)
    }
}

fn lease_of(value: &Value) -> Option<i64> {
    value.get("lease")?.as_i64()
}

fn ttl_of(value: &Value) -> Option<i64> {
    value.get("ttl")?.as_i64()
}

fn plus_ttl(time: u64, ttl: i64) -> u64 {
    time.saturating_add((ttl.max(0) as u64).saturating_mul(NS_PER_S))
}

fn evidence(pairs: &[&Pair]) -> Vec<Op> {
    pairs.iter().flat_map(|p| [p.invoke.clone(), p.complete.clone()]).collect()
}

/// Gathers grants, keepalives and revokes per lease. Ops whose lease id is unreadable are counted.
fn leases<'p>(pairs: &'p [Pair], skipped: &mut u64) -> BTreeMap<i64, Lease<'p>> {
    let mut leases: BTreeMap<i64, Lease> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.kind() != OpType::Fail) {
        if !matches!(p.invoke.f.as_str(), "grant" | "keepalive" | "revoke") {
            continue;
        }
        let Some(id) = lease_of(&p.invoke.value).or_else(|| lease_of(&p.complete.value)) else {
            *skipped += 1;
            continue;
        };
        let lease = leases.entry(id).or_default();
        let asked = ttl_of(&p.invoke.value);
        let granted = ttl_of(&p.complete.value);
        match (p.invoke.f.as_str(), p.kind()) {
            ("revoke", _) => lease.revokes.push(p),
            ("grant", OpType::Ok) | ("keepalive", OpType::Ok) => {
                let ttl = if p.invoke.f == "grant" { granted.or(asked) } else { granted };
                let Some(ttl) = ttl.filter(|t| *t > 0) else { continue }; // keepalive found it gone
                lease.ttl = lease.ttl.max(Some(ttl));
                let until = plus_ttl(p.invoke.time, ttl);
                if lease.alive_until.is_none_or(|(t, _)| until > t) {
                    lease.alive_until = Some((until, p));
                }
                lease.latest_expiry = lease.latest_expiry.max(Some(plus_ttl(p.end(), ttl)));
            }
            ("grant", _) => {
                lease.ttl = lease.ttl.max(asked);
                lease.maybe_renewed.push(p.end());
            }
            _ => lease.maybe_renewed.push(p.end()),
        }
    }
    for lease in leases.values_mut() {
        for &end in &lease.maybe_renewed {
            // Without any known TTL an indeterminate renewal bounds nothing.
            let expiry = lease.ttl.map_or(u64::MAX, |ttl| plus_ttl(end, ttl));
            lease.latest_expiry = lease.latest_expiry.max(Some(expiry));
        }
    }
    leases
}

/// A linearizable read's observation: key, lease and value read, mod_revision, header revision.
struct Read<'p> {
    pair: &'p Pair,
    key: &'p str,
    lease: i64,
    rev: i64,
    hrev: i64,
}

/// Ok linearizable reads that returned a lease-attached value (serializable reads have no hrev).
fn reads(pairs: &[Pair]) -> Vec<Read<'_>> {
    pairs
        .iter()
        .filter(|p| p.invoke.f == "read" && p.kind() == OpType::Ok)
        .filter_map(|p| {
            let lease = lease_of(&p.complete.value).filter(|l| *l != 0)?;
            Some(Read { pair: p, key: p.invoke.key.as_deref()?, lease, rev: p.complete.rev?, hrev: p.complete.hrev? })
        })
        .collect()
}

/// Checks the lease workload's `history` against `truth`.
pub fn check(history: &[Op], truth: &[EventRecord]) -> CheckResult {
    let mut tally = Tally::new();
    let (index, disorder) = Truth::new(truth);
    if !disorder.is_empty() {
        tally.report("truth-order", || {
            let why = format!("ground truth revisions decrease at {} positions", disorder.len());
            (why, Vec::new(), json!({"positions": disorder.iter().take(8).collect::<Vec<_>>()}))
        });
    }
    let pairs = history::pairs(history);
    let mut skipped = 0;
    let leases = leases(&pairs, &mut skipped);
    let reads = reads(&pairs);
    read_after_revoke(&reads, &leases, &mut tally);
    read_after_expiry(&reads, &index, &mut tally);
    revoke_left_keys(&leases, &index, &mut tally, &mut skipped);
    let deletes = expired_early(&pairs, &leases, &index, &mut tally);
    let last_time = history.iter().map(|op| op.time).filter(|t| *t != u64::MAX).max().unwrap_or(0);
    lease_key_survived(&leases, &index, last_time, &mut tally);
    let stats = json!({
        "leases": leases.len(),
        "revokes": leases.values().map(|l| l.revokes.len()).sum::<usize>(),
        "lease_reads": reads.len(),
        "lease_deletes": deletes,
        "truth_events": truth.len(),
        "skipped_history_ops": skipped,
    });
    tally.finish("lease", stats)
}

/// A read invoked after an acknowledged revoke of L returned a value attached to L.
fn read_after_revoke(reads: &[Read], leases: &BTreeMap<i64, Lease>, tally: &mut Tally) {
    for read in reads {
        let Some((revoked, revoke)) = leases.get(&read.lease).and_then(Lease::revoked_at) else { continue };
        if read.pair.invoke.time > revoked {
            tally.report("read-after-revoke", || {
                let why = format!(
                    "read of {:?} invoked after lease {} was revoked returned a value attached to it",
                    read.key, read.lease
                );
                (
                    why,
                    evidence(&[revoke, read.pair]),
                    json!({"key": read.key, "lease": read.lease, "value": read.pair.complete.value}),
                )
            });
        }
    }
}

/// A read at header revision H returned L's value from before L's keys were deleted at D <= H.
fn read_after_expiry(reads: &[Read], truth: &Truth, tally: &mut Tally) {
    for read in reads {
        let Some(next) = truth.next_after(read.key, read.rev).map(|i| truth.event(i)) else { continue };
        let deleted = next.revision();
        if next.kind != EventKind::Delete || deleted > read.hrev {
            continue;
        }
        let attached = truth.state_at(read.key, deleted.saturating_sub(1)).is_some_and(|kv| kv.lease == read.lease);
        if attached {
            tally.report("read-after-expiry", || {
                let why = format!(
                    "read at revision {} returned {:?} of lease {} from revision {}, but the key was deleted at {deleted}",
                    read.hrev, read.key, read.lease, read.rev
                );
                (why, evidence(&[read.pair]), json!({"read": read.pair.complete.value, "delete": to_json(next)}))
            });
        }
    }
}

/// Keys attached to each lease at some point, from the truth's puts.
fn attached_keys<'a>(truth: &Truth<'a>) -> HashMap<i64, Vec<&'a str>> {
    let mut keys: HashMap<i64, HashSet<&str>> = HashMap::new();
    for i in 0..truth.len() {
        let ev = truth.event(i);
        if ev.kind == EventKind::Put && ev.kv.lease != 0 {
            keys.entry(ev.kv.lease).or_default().insert(ev.kv.key.as_str());
        }
    }
    keys.into_iter()
        .map(|(lease, set)| {
            let mut list: Vec<&str> = set.into_iter().collect();
            list.sort_unstable();
            (lease, list)
        })
        .collect()
}

/// An acknowledged revoke at revision R deletes, by R, every key attached to the lease at R − 1.
fn revoke_left_keys(leases: &BTreeMap<i64, Lease>, truth: &Truth, tally: &mut Tally, skipped: &mut u64) {
    let attached = attached_keys(truth);
    for (&id, lease) in leases {
        for revoke in lease.revokes.iter().filter(|p| p.kind() == OpType::Ok) {
            let Some(at) = revoke.complete.hrev else {
                *skipped += 1;
                continue;
            };
            for &key in attached.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                if truth.state_at(key, at.saturating_sub(1)).is_none_or(|kv| kv.lease != id) {
                    continue;
                }
                let next = truth.next_after(key, at.saturating_sub(1)).map(|i| truth.event(i));
                if next.is_some_and(|e| e.kind == EventKind::Delete && e.revision() <= at) {
                    continue;
                }
                tally.report("revoke-left-keys", || {
                    let why =
                        format!("lease {id} was revoked at revision {at} but its key {key:?} was not deleted by then");
                    (why, evidence(&[revoke]), json!({"lease": id, "key": key, "next_event": to_json(&next)}))
                });
            }
        }
    }
}

/// For every revision, the earliest time an acknowledged op proved it committed (its rev or
/// hrev is at least that revision): an upper bound on when that revision really happened.
struct CommitBound {
    revs: Vec<i64>,
    /// `times[i]` = the earliest completion among ops with revision >= `revs[i]`.
    times: Vec<(u64, usize)>,
}

impl CommitBound {
    fn new(pairs: &[Pair]) -> CommitBound {
        let mut seen: Vec<(i64, u64, usize)> = pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind() == OpType::Ok)
            .filter_map(|(i, p)| Some((p.complete.rev.max(p.complete.hrev)?, p.complete.time, i)))
            .collect();
        seen.sort_unstable();
        let mut times = vec![(u64::MAX, 0); seen.len()];
        let mut best = (u64::MAX, 0);
        for (i, &(_, time, pair)) in seen.iter().enumerate().rev() {
            best = best.min((time, pair));
            times[i] = best;
        }
        CommitBound { revs: seen.iter().map(|s| s.0).collect(), times }
    }

    /// (time, pair index) of the earliest completion proving `rev` committed.
    fn at(&self, rev: i64) -> Option<(u64, usize)> {
        self.times.get(self.revs.partition_point(|&r| r < rev)).copied()
    }
}

/// A key of lease L deleted (not by a client delete, not after a revoke was invoked) while L was
/// certainly alive. Returns how many truth deletes removed a lease-attached key.
fn expired_early(pairs: &[Pair], leases: &BTreeMap<i64, Lease>, truth: &Truth, tally: &mut Tally) -> u64 {
    let bound = CommitBound::new(pairs);
    let deleted_by_clients: HashSet<&str> = pairs
        .iter()
        .filter(|p| p.invoke.f == "delete" && p.kind() != OpType::Fail)
        .filter_map(|p| p.invoke.key.as_deref())
        .collect();
    let mut count = 0;
    for i in 0..truth.len() {
        let ev = truth.event(i);
        let at = ev.revision();
        if ev.kind != EventKind::Delete || deleted_by_clients.contains(ev.kv.key.as_str()) {
            continue;
        }
        let Some(id) = truth.state_at(&ev.kv.key, at.saturating_sub(1)).map(|kv| kv.lease).filter(|l| *l != 0) else {
            continue;
        };
        count += 1;
        let Some(lease) = leases.get(&id) else { continue };
        let (Some((alive_until, renewal)), Some((seen_by, witness))) = (lease.alive_until, bound.at(at)) else {
            continue;
        };
        if seen_by >= alive_until || lease.revoke_invoked_before(seen_by) {
            continue;
        }
        tally.report("expired-early", || {
            let why = format!(
                "key {:?} of lease {id} was deleted at revision {at}, committed by {seen_by} ns, but the lease was alive until at least {alive_until} ns",
                ev.kv.key
            );
            let details = json!({"lease": id, "delete": to_json(ev), "deleted_by_ns": seen_by, "alive_until_ns": alive_until});
            (why, evidence(&[renewal, &pairs[witness]]), details)
        });
    }
    count
}

/// A key still attached to a lease at the end of the truth, although the lease was revoked, or
/// its last possible renewal plus TTL plus slack passed before the history ended.
fn lease_key_survived(leases: &BTreeMap<i64, Lease>, truth: &Truth, last_time: u64, tally: &mut Tally) {
    let mut survivors: Vec<(&str, i64)> = truth
        .keys()
        .filter_map(|(key, _)| Some((key, truth.state_at(key, i64::MAX)?.lease)))
        .filter(|(_, lease)| *lease != 0)
        .collect();
    survivors.sort_unstable();
    for (key, id) in survivors {
        let Some(lease) = leases.get(&id) else { continue };
        let why = if let Some((_, revoke)) = lease.revoked_at() {
            (format!("key {key:?} outlived the acknowledged revoke of lease {id}"), vec![revoke])
        } else if let Some(expiry) = lease.latest_expiry.filter(|e| e.saturating_add(SURVIVAL_SLACK_NS) < last_time) {
            (format!("key {key:?} outlived lease {id}, which expired by {expiry} ns at the latest"), Vec::new())
        } else {
            continue;
        };
        tally.report("lease-key-survived", || {
            let details =
                json!({"key": key, "lease": id, "latest_expiry_ns": lease.latest_expiry, "history_end_ns": last_time});
            (why.0, evidence(&why.1), details)
        });
    }
}

#[cfg(test)]
mod tests {
    //! A known-good lease run (grant, keepalive, revoke, expiry, a lease still alive at the end)
    //! and one known-bad variant per anomaly kind.

    use super::*;
    use crate::checker::Validity;
    use crate::watchlog::KvRecord;

    const S: u64 = NS_PER_S;

    #[derive(Default)]
    struct Run {
        history: Vec<Op>,
        truth: Vec<EventRecord>,
        state: HashMap<String, KvRecord>,
        process: u64,
    }

    impl Run {
        /// An op from `start` to `end` (ms); `done` fills in the completion.
        fn op(
            &mut self,
            f: &str,
            key: Option<&str>,
            value: Value,
            (start, end): (u64, u64),
            done: impl FnOnce(Op) -> Op,
        ) {
            self.process += 1;
            let invoke = Op::invoke(self.process, f, key, value, start * S / 1000);
            let complete = done(invoke.complete(OpType::Ok, end * S / 1000));
            self.history.extend([invoke, complete]);
        }

        fn grant(&mut self, lease: i64, ttl: i64, at: u64) {
            self.op("grant", None, json!({"lease": lease, "ttl": ttl}), (at, at + 10), |c| c.with_hrev(1));
        }

        fn keepalive(&mut self, lease: i64, ttl: i64, at: u64) {
            self.op("keepalive", None, json!({"lease": lease, "ttl": ttl}), (at, at + 10), |c| c);
        }

        fn revoke(&mut self, lease: i64, at: u64, hrev: i64) {
            self.op("revoke", None, json!({"lease": lease}), (at, at + 10), |c| c.with_hrev(hrev));
        }

        /// A linearizable read (`hrev` given) or a serializable one.
        fn read(&mut self, key: &str, got: Value, rev: i64, hrev: Option<i64>, at: u64) {
            self.op("read", Some(key), json!(null), (at, at + 10), |c| {
                let c = c.with_value(got).with_rev(rev);
                if let Some(h) = hrev { c.with_hrev(h) } else { c }
            });
        }

        /// A put with a lease, acknowledged at `rev`, and its truth event.
        fn put(&mut self, key: &str, lease: i64, value: i64, rev: i64, at: u64) {
            self.op("put", Some(key), json!({"lease": lease, "value": value}), (at, at + 10), |c| c.with_rev(rev));
            self.commit_put(key, lease, value, rev);
        }

        fn commit_put(&mut self, key: &str, lease: i64, value: i64, rev: i64) {
            let prev = self.state.get(key).cloned();
            let kv = KvRecord {
                key: key.into(),
                value: value.to_string(),
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                lease,
            };
            self.state.insert(key.into(), kv.clone());
            self.truth.push(EventRecord { kind: EventKind::Put, kv, prev_kv: prev });
        }

        /// The truth's DELETE of `key` at `rev` (expiry or revoke).
        fn gone(&mut self, key: &str, rev: i64) {
            let prev = self.state.remove(key);
            let kv = KvRecord {
                key: key.into(),
                value: String::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            };
            self.truth.push(EventRecord { kind: EventKind::Delete, kv, prev_kv: prev });
        }

        fn check(&self) -> CheckResult {
            check(&self.history, &self.truth)
        }
    }

    /// Lease 1 (ttl 10 s) holds k1, is kept alive at 5 s and revoked at 12 s (revision 5); lease 2
    /// (ttl 2 s) holds k2 and expires (revision 4); lease 3 holds k3 and is alive at the end (20 s).
    /// Options: `expire_k2` and `revoke_k1` say whether the truth has those deletes; `early` adds a
    /// read at 8 s that already sees revision 5.
    fn run(expire_k2: bool, revoke_k1: bool, extra: impl FnOnce(&mut Run)) -> Run {
        let mut r = Run::default();
        r.grant(1, 10, 0);
        r.put("k1", 1, 1, 2, 100);
        r.grant(2, 2, 200);
        r.put("k2", 2, 2, 3, 300);
        r.keepalive(1, 10, 5000);
        r.read("k1", json!({"lease": 1, "value": 1}), 2, Some(3), 6000);
        if expire_k2 {
            r.gone("k2", 4);
        }
        r.read("k2", json!(null), 0, Some(4), 7000);
        r.revoke(1, 12_000, 5);
        if revoke_k1 {
            r.gone("k1", 5);
        }
        r.read("k1", json!(null), 0, Some(5), 13_000);
        r.grant(3, 5, 14_000);
        r.put("k3", 3, 3, 6, 14_100);
        r.keepalive(3, 5, 18_000);
        // A serializable read may be stale: exempt even after the revoke.
        r.read("k1", json!({"lease": 1, "value": 1}), 2, None, 19_000);
        r.read("k3", json!({"lease": 3, "value": 3}), 6, Some(6), 20_000);
        extra(&mut r);
        r
    }

    fn assert_invalid_with(r: &CheckResult, kind: &str) {
        assert_eq!(r.valid, Validity::Invalid, "{:#?}", r.anomalies);
        assert!(r.anomalies.iter().any(|a| a.kind == kind), "expected {kind}: {:#?}", r.anomalies);
    }

    #[test]
    fn a_correct_lease_run_is_valid() {
        let r = run(true, true, |_| {}).check();
        assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
        assert_eq!(r.stats["leases"], 3);
        assert_eq!(r.stats["lease_deletes"], 2);
    }

    #[test]
    fn a_read_after_an_acknowledged_revoke_returning_the_lease_value_is_caught() {
        let r = run(true, true, |r| r.read("k1", json!({"lease": 1, "value": 1}), 2, Some(4), 12_500)).check();
        assert_invalid_with(&r, "read-after-revoke");
        assert_eq!(r.anomalies[0].ops.len(), 4, "the revoke and the read are the evidence");
    }

    #[test]
    fn a_read_past_the_expiry_revision_returning_the_old_value_is_caught() {
        let r = run(true, true, |r| r.read("k2", json!({"lease": 2, "value": 2}), 3, Some(4), 7100)).check();
        assert_invalid_with(&r, "read-after-expiry");
    }

    #[test]
    fn a_revoke_that_leaves_keys_is_caught() {
        let r = run(true, false, |_| {}).check();
        assert_invalid_with(&r, "revoke-left-keys");
        assert_invalid_with(&r, "lease-key-survived");
    }

    #[test]
    fn a_kept_alive_lease_losing_its_key_is_caught() {
        // Revision 5 (k1's delete) is seen at 8 s, before any revoke was invoked; lease 1 was
        // renewed at 5 s for 10 s.
        let r = run(true, true, |r| r.read("k1", json!(null), 0, Some(5), 8000)).check();
        assert_invalid_with(&r, "expired-early");
        // Had a revoke been invoked before, the deletion is explained.
        let r = run(true, true, |r| {
            r.op("revoke", None, json!({"lease": 1}), (7500, 20_000), |c| Op { kind: OpType::Info, ..c });
            r.read("k1", json!(null), 0, Some(5), 8000);
        })
        .check();
        assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
    }

    #[test]
    fn a_key_outliving_its_expired_lease_is_caught() {
        let r = run(false, true, |_| {}).check();
        assert_invalid_with(&r, "lease-key-survived");
        // An indeterminate keepalive may have renewed it: no verdict on that lease.
        let r = run(false, true, |r| {
            r.op("keepalive", None, json!({"lease": 2}), (1000, 1010), |c| Op { kind: OpType::Info, ..c })
        })
        .check();
        assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
    }

    #[test]
    fn malformed_ops_are_skipped_without_panic() {
        let r = run(true, true, |r| {
            r.op("grant", None, json!("nonsense"), (0, 1), |c| c);
            r.op("revoke", None, json!({"lease": null}), (1, 2), |c| c);
            r.op("read", None, json!(null), (1, 2), |c| c.with_value(json!({"lease": "x"})));
            r.history.push(Op::invoke(999, "keepalive", None, json!({"lease": 7, "ttl": i64::MAX}), u64::MAX));
        })
        .check();
        assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
        assert!(r.stats["skipped_history_ops"].as_u64().unwrap_or(0) >= 2, "{}", r.stats);
    }

    #[test]
    fn extreme_revisions_never_panic() {
        let mut r = run(true, true, |r| r.revoke(3, 19_500, i64::MIN));
        r.truth.push(r.truth[0].clone());
        r.truth[0].kv.mod_revision = i64::MAX;
        r.truth[1].kind = EventKind::Delete;
        r.truth[1].kv.mod_revision = i64::MIN;
        r.read("k1", json!({"lease": 1, "value": 1}), i64::MAX, Some(i64::MIN), 19_900);
        assert_eq!(r.check().valid, Validity::Invalid);
    }
}
