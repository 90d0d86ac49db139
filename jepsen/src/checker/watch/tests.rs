//! Known-good and known-bad watch logs: each property's checker is shown to reject a log that
//! breaks it, and to accept a correct one with resumes, progress notifications, prev_kv, txns and
//! deletes; then randomized logs from the simulator, correct and singly mutated.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::sim::{self, Spec, Store, created, delivered, end, progress, request, response};
use super::*;
use crate::history::OpType;
use crate::watchlog::{EventKind, Filter, prefix_end};

/// Truth (revision: event):
/// 2 put w/a, 3 put w/b, 4 txn put w/a + put w/c, 5 delete w/b, 6 put w/b, 7 put x/z (outside
/// the prefix), 8 delete w/a, 9 put w/a (re-created).
fn store() -> Store {
    let mut s = Store::new();
    s.put("w/a", OpType::Ok, true);
    s.put("w/b", OpType::Ok, true);
    s.txn_puts(&["w/a", "w/c"]);
    s.delete("w/b");
    s.put("w/b", OpType::Ok, true);
    s.put("x/z", OpType::Ok, true);
    s.delete("w/a");
    s.put("w/a", OpType::Ok, true);
    s.delete("w/zz"); // absent: no revision
    s.put("w/q", OpType::Fail, false);
    s.put("w/q", OpType::Info, false);
    assert_eq!(s.rev, 9);
    s
}

fn prefix(prev_kv: bool, progress_notify: bool, filters: Vec<Filter>) -> Spec {
    Spec { key: "w/".into(), range_end: prefix_end("w/"), prev_kv, progress_notify, filters }
}

/// Truth events at positions `idx`, as a watch with or without prev_kv delivers them.
fn evs(truth: &[EventRecord], idx: &[usize], prev_kv: bool) -> Vec<EventRecord> {
    idx.iter().map(|&i| delivered(&truth[i], prev_kv)).collect()
}

/// The correct log. Truth positions: 0:r2 a, 1:r3 b, 2:r4 a, 3:r4 c, 4:r5 del b, 5:r6 b, 6:r7 x/z,
/// 7:r8 del a, 8:r9 a.
fn good_log(t: &[EventRecord]) -> Vec<WatchRecord> {
    let w1 = prefix(true, true, vec![]);
    let w2 =
        Spec { key: "w/b".into(), range_end: String::new(), prev_kv: false, progress_notify: false, filters: vec![] };
    let w3 = prefix(true, false, vec![Filter::NoDelete]);
    vec![
        request(1, 1, &w1, 2),
        created(1, 1, 1),
        request(2, 1, &w2, 0),
        created(2, 1, 2),
        response(1, 1, 3, evs(t, &[0, 1], true)),
        progress(1, 1, 3),
        response(2, 1, 3, evs(t, &[1], false)),
        response(1, 1, 4, evs(t, &[2, 3], true)),
        end(1, 1),
        request(1, 2, &w1, 5),
        response(2, 1, 5, evs(t, &[4], false)),
        end(2, 1),
        request(2, 2, &w2, 6),
        response(1, 2, 6, evs(t, &[4, 5], true)),
        progress(1, 2, 7),
        response(2, 2, 6, evs(t, &[5], false)),
        end(2, 2),
        response(1, 2, 8, evs(t, &[7], true)),
        response(1, 2, 9, evs(t, &[8], true)),
        progress(1, 2, 9),
        end(1, 2),
        request(3, 1, &w3, 1),
        response(3, 1, 4, evs(t, &[0, 1, 2, 3], true)),
        response(3, 1, 9, evs(t, &[5], true)),
        response(3, 1, 9, evs(t, &[8], true)),
        progress(3, 1, 9),
    ]
}

fn kinds(r: &CheckResult) -> Vec<&str> {
    r.anomalies.iter().map(|a| a.kind.as_str()).collect()
}

fn assert_invalid_with(r: &CheckResult, kind: &str) {
    assert_eq!(r.valid, Validity::Invalid, "{:#?}", r.anomalies);
    assert!(kinds(r).contains(&kind), "expected {kind}, got {:?}", kinds(r));
    assert!(r.stats["anomaly_counts"][kind].as_u64().unwrap_or(0) >= 1, "{}", r.stats);
}

/// Runs the checker on the good fixture after `edit` changed its watch log.
fn check_edited(edit: impl FnOnce(&[EventRecord], &mut Vec<WatchRecord>)) -> CheckResult {
    let s = store();
    let mut log = good_log(&s.truth);
    edit(&s.truth, &mut log);
    check(&s.history, &log, &s.truth)
}

/// The events of the `n`-th record of the log.
fn events_of(log: &mut [WatchRecord], n: usize) -> &mut Vec<EventRecord> {
    match &mut log[n] {
        WatchRecord::Response { events, .. } => events,
        other => panic!("record {n} is not a response: {other:?}"),
    }
}

#[test]
fn the_correct_fixture_is_valid() {
    let r = check_edited(|_, _| {});
    assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats["sessions"], 5);
    assert_eq!(r.stats["events_delivered"], 17);
    assert_eq!(r.stats["events_expected"], 17);
    assert_eq!(r.stats["progress_notifications"], 4);
}

#[test]
fn reordered_events_break_ordered() {
    let r = check_edited(|_, log| events_of(log, 4).swap(0, 1));
    assert_invalid_with(&r, "ordered");
}

#[test]
fn a_duplicated_event_breaks_unique() {
    let r = check_edited(|t, log| events_of(log, 7).push(delivered(&t[3], true)));
    assert_invalid_with(&r, "unique");
}

#[test]
fn a_revision_split_across_responses_breaks_atomic() {
    let r = check_edited(|t, log| {
        events_of(log, 7).pop();
        log.insert(8, response(1, 1, 4, evs(t, &[3], true)));
    });
    assert_invalid_with(&r, "atomic");
    assert!(!kinds(&r).contains(&"reliable"), "{:?}", kinds(&r));
}

#[test]
fn an_event_at_or_below_a_progress_notification_breaks_bookmarkable() {
    let r = check_edited(|_, log| log[5] = progress(1, 1, 4));
    assert_invalid_with(&r, "bookmarkable");
}

#[test]
fn notifications_going_back_or_below_delivered_events_break_bookmarkable() {
    let r = check_edited(|_, log| log.insert(15, progress(1, 2, 6)));
    assert_invalid_with(&r, "bookmarkable");
    let r = check_edited(|_, log| log[5] = progress(1, 1, 2));
    assert_invalid_with(&r, "bookmarkable");
}

#[test]
fn a_gap_breaks_reliable() {
    let r = check_edited(|_, log| _ = events_of(log, 13).pop());
    assert_invalid_with(&r, "reliable");
    assert!(r.anomalies.iter().any(|a| a.explanation.contains("missing event")), "{:#?}", r.anomalies);
    let gap = r.anomalies.iter().find(|a| a.kind == "reliable").map(|a| a.details.clone()).unwrap_or_default();
    assert_eq!(gap["expected"]["kv"]["key"], "w/b", "{gap}");
    assert!(!gap["expected"]["kv"]["mod_revision"].is_null(), "{gap}");
}

#[test]
fn a_missing_event_at_the_end_of_a_session_is_caught_by_its_last_notification() {
    let r = check_edited(|_, log| _ = log.remove(18));
    assert_invalid_with(&r, "reliable");
}

#[test]
fn a_wrong_first_event_after_resume_breaks_resumable() {
    let r = check_edited(|_, log| _ = events_of(log, 13).remove(0));
    assert_invalid_with(&r, "resumable");
}

#[test]
fn a_wrong_prev_kv_breaks_prev_kv() {
    let r = check_edited(|_, log| {
        if let Some(prev) = &mut events_of(log, 7)[0].prev_kv {
            prev.value = "0".into();
        }
    });
    assert_invalid_with(&r, "prev-kv");
    let r = check_edited(|_, log| events_of(log, 7)[0].prev_kv = None);
    assert_invalid_with(&r, "prev-kv");
}

#[test]
fn a_wrong_create_flag_breaks_is_create() {
    // Revision 9 re-creates w/a after its delete at 8: a create_revision of 2 claims it never went away.
    let r = check_edited(|_, log| {
        let ev = &mut events_of(log, 18)[0];
        ev.kv.create_revision = 2;
        ev.kv.version = 3;
    });
    assert_invalid_with(&r, "is-create");
    let r = check_edited(|_, log| events_of(log, 7)[0].kv.create_revision = 4);
    assert_invalid_with(&r, "is-create");
}

#[test]
fn an_event_outside_the_range_breaks_filter() {
    let r = check_edited(|t, log| log.insert(17, response(1, 2, 7, evs(t, &[6], true))));
    assert_invalid_with(&r, "filter");
}

#[test]
fn a_filtered_event_type_breaks_filter() {
    let r = check_edited(|t, log| events_of(log, 23).insert(0, delivered(&t[4], true)));
    assert_invalid_with(&r, "filter");
}

#[test]
fn a_lost_acknowledged_write_is_reported() {
    let mut s = store();
    let log = good_log(&s.truth);
    s.truth.truncate(8);
    let r = check(&s.history, &[], &s.truth);
    assert_invalid_with(&r, "lost-write");
    let lost = r.anomalies.iter().find(|a| a.kind == "lost-write").map(|a| a.ops.len());
    assert_eq!(lost, Some(2), "the put's invoke and completion are the evidence");
    // The watchers saw revision 9 although the truth lacks it.
    let r = check(&s.history, &log, &s.truth);
    assert_invalid_with(&r, "reliable");
}

#[test]
fn a_lost_acknowledged_delete_is_reported() {
    let mut s = store();
    s.truth.remove(4);
    let r = check(&s.history, &[], &s.truth);
    assert_invalid_with(&r, "lost-write");
}

#[test]
fn writes_nobody_made_or_made_twice_are_reported() {
    let mut s = store();
    s.truth[6].kv.value = "4242".into();
    assert_invalid_with(&check(&s.history, &[], &s.truth), "phantom-write");

    // A failed put that nevertheless took effect.
    let mut s = store();
    let failed = s.put("w/f", OpType::Fail, false);
    s.apply(&[("w/f", Some(failed.to_string()))]);
    assert_invalid_with(&check(&s.history, &[], &s.truth), "phantom-write");

    // An indeterminate put applied twice.
    let mut s = store();
    let value = s.put("w/i", OpType::Info, true);
    s.apply(&[("w/i", Some(value.to_string()))]);
    assert_invalid_with(&check(&s.history, &[], &s.truth), "truth-duplicate");

    // Applied once is fine.
    let mut s = store();
    s.put("w/i", OpType::Info, true);
    assert_eq!(check(&s.history, &[], &s.truth).valid, Validity::Valid);
}

#[test]
fn a_truth_out_of_order_or_breaking_the_state_machine_is_reported() {
    let mut s = store();
    s.truth.swap(1, 2);
    assert_invalid_with(&check(&s.history, &[], &s.truth), "truth-order");
    let mut s = store();
    s.truth[5].kv.version = 7;
    assert_invalid_with(&check(&s.history, &[], &s.truth), "truth-state");
    let mut s = store();
    let dup = s.truth[3].clone();
    s.truth.insert(3, dup);
    assert_invalid_with(&check(&s.history, &[], &s.truth), "truth-order");
}

#[test]
fn diverging_replicas_are_reported_at_the_first_difference() {
    let s = store();
    let mut other = s.truth.clone();
    other[5].kv.value = "changed".into();
    let same = compare_truths(&[("n1".into(), s.truth.clone()), ("n2".into(), s.truth.clone())]);
    assert!(same.is_empty(), "{same:?}");
    let diff = compare_truths(&[
        ("n1".into(), s.truth.clone()),
        ("n2".into(), s.truth.clone()),
        ("n3".into(), other),
        ("n4".into(), s.truth[..7].to_vec()),
    ]);
    assert_eq!(diff.len(), 2, "{diff:#?}");
    assert!(diff.iter().all(|a| a.kind == "replicas-diverge"));
    assert_eq!(diff[0].details["members"], serde_json::json!(["n1", "n3"]));
    assert_eq!(diff[0].details["position"], 5);
    assert_eq!(diff[1].details["position"], 7);
    assert!(diff[1].details["events"][1].is_null());
}

#[test]
fn fragments_may_share_a_revision() {
    let r = check_edited(|t, log| {
        events_of(log, 7).pop();
        if let WatchRecord::Response { fragment, .. } = &mut log[7] {
            *fragment = true;
        }
        log.insert(8, response(1, 1, 4, evs(t, &[3], true)));
    });
    assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
}

#[test]
fn malformed_logs_are_unknown_and_never_panic() {
    let s = store();
    let log =
        vec![response(9, 1, 3, evs(&s.truth, &[0], false)), end(9, 1), request(9, 1, &prefix(false, false, vec![]), 1)];
    let r = check(&s.history, &log, &s.truth);
    assert_eq!(r.valid, Validity::Unknown, "{:#?}", r.anomalies);
    assert_eq!(r.stats["anomaly_counts"][MALFORMED], 2);

    // Nonsense revisions and an empty truth: anomalies, no panic.
    let mut ev = delivered(&s.truth[0], true);
    ev.kv.mod_revision = i64::MIN;
    let weird = vec![
        request(1, 1, &prefix(true, true, vec![]), i64::MAX),
        response(1, 1, -1, vec![ev]),
        progress(1, 1, i64::MIN),
    ];
    let r = check(&s.history, &weird, &[]);
    assert_eq!(r.valid, Validity::Invalid);

    // A truth with extreme versions and revisions.
    let mut truth = s.truth.clone();
    truth[0].kv.version = i64::MAX;
    truth[1].kv.mod_revision = i64::MIN;
    let r = check(&s.history, &weird, &truth);
    assert_eq!(r.valid, Validity::Invalid);
}

#[test]
fn only_a_bounded_number_of_anomalies_is_kept_per_kind() {
    let r = check_edited(|t, log| {
        for _ in 0..20 {
            events_of(log, 22).push(delivered(&t[0], true));
        }
    });
    let unique = r.anomalies.iter().filter(|a| a.kind == "unique").count();
    assert_eq!(unique, crate::checker::ANOMALIES_KEPT_PER_KIND);
    assert_eq!(r.stats["anomaly_counts"]["unique"], 20);
}

#[test]
fn a_large_run_is_checked_quickly() {
    // 100,000 truth events; 20 sessions of 50,000 events each.
    let mut s = Store::new();
    for i in 0..100_000 {
        s.put(&format!("w/{:03}", i % 1000), OpType::Ok, true);
    }
    let spec = prefix(false, true, vec![]);
    let mut log = Vec::new();
    for w in 0..20 {
        log.push(request(w, 1, &spec, 50_002));
        for chunk in s.truth[50_000..].chunks(500) {
            let last = chunk.last().map_or(0, |e| e.revision());
            log.push(response(w, 1, last, evs(chunk, &(0..chunk.len()).collect::<Vec<_>>(), false)));
            log.push(progress(w, 1, last));
        }
    }
    let start = std::time::Instant::now();
    let r = check(&s.history, &log, &s.truth);
    let took = start.elapsed();
    assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
    assert_eq!(r.stats["events_delivered"], 1_000_000);
    eprintln!("checked 1,000,000 delivered events against 100,000 in {took:?} (debug build)");
    assert!(took.as_secs() < 60, "{took:?}");
}

#[test]
fn simulated_runs_mutated_once_are_invalid() {
    let mut applied: HashMap<sim::Mutation, usize> = HashMap::new();
    for seed in 0..300u64 {
        let (history, log, truth) = sim::run(seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mutation = sim::MUTATIONS[seed as usize % sim::MUTATIONS.len()];
        let Some(bad) = sim::mutate(&log, mutation, &mut rng) else { continue };
        let r = check(&history, &bad, &truth);
        assert_eq!(r.valid, Validity::Invalid, "seed {seed}, {mutation:?} went unnoticed");
        *applied.entry(mutation).or_default() += 1;
    }
    for m in sim::MUTATIONS {
        assert!(applied.get(&m).copied().unwrap_or(0) >= 30, "{m:?} applied only {applied:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn simulated_correct_runs_are_valid(seed in any::<u64>()) {
        let (history, log, truth) = sim::run(seed);
        let r = check(&history, &log, &truth);
        prop_assert_eq!(r.valid, Validity::Valid, "{:#?}", r.anomalies);
    }

    #[test]
    fn any_single_mutation_is_detected(seed in any::<u64>(), which in 0..sim::MUTATIONS.len(), pick in any::<u64>()) {
        let (history, log, truth) = sim::run(seed);
        let mut rng = StdRng::seed_from_u64(pick);
        if let Some(bad) = sim::mutate(&log, sim::MUTATIONS[which], &mut rng) {
            let r = check(&history, &bad, &truth);
            prop_assert_eq!(r.valid, Validity::Invalid, "{:?} went unnoticed", sim::MUTATIONS[which]);
        }
    }
}

#[test]
fn events_of_one_txn_share_a_revision_in_truth_order() {
    let s = store();
    assert_eq!(s.truth[2].revision(), s.truth[3].revision());
    assert_eq!(s.truth[4].kind, EventKind::Delete);
}
