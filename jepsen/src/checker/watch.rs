//! The nine watch properties against the ground truth.
use super::CheckResult;
use crate::history::Op;
use crate::watchlog::{EventRecord, WatchRecord};

pub fn check(history: &[Op], watches: &[WatchRecord], truth: &[EventRecord]) -> CheckResult {
    let _ = (history, watches, truth);
    super::CheckResult::from_anomalies("stub", Vec::new(), serde_json::Value::Null)
}

pub fn compare_truths(truths: &[(String, Vec<EventRecord>)]) -> Vec<super::Anomaly> {
    let _ = truths;
    Vec::new()
}
