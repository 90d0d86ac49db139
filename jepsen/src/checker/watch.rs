//! The nine watch properties against the ground truth.
use super::CheckResult;
use crate::history::Op;
use crate::watchlog::{EventRecord, WatchRecord};

pub fn check(history: &[Op], watches: &[WatchRecord], truth: &[EventRecord]) -> CheckResult {
    let _ = (history, watches, truth);
    todo!()
}
