//! Checkers: each takes the recorded history (and, for watch and lease, the watch logs and the
//! ground-truth event sequence) and returns a verdict with the anomalies that prove it.
//!
//! Checkers are pure functions of their input: they can re-check a saved run (`jepsen check DIR`)
//! and are tested on known-bad histories that must come out invalid.

pub mod elle;
pub mod lease;
pub mod linear;
pub mod revisions;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::history::Op;

/// A checker's verdict, Jepsen's three values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker could not decide (e.g. a search hit its limit).
    Unknown,
}

impl Validity {
    /// Combines verdicts: any invalid wins, then any unknown.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }

    /// Jepsen's exit codes: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }
}

/// One anomaly: its kind (e.g. `nonlinearizable`, `G-single`, `watch-gap`), a human explanation,
/// and the history records that prove it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: String,
    pub explanation: String,
    #[serde(default)]
    pub ops: Vec<Op>,
    /// Extra structured evidence (expected vs got events, a cycle, a partial linearization).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// The result of one checker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub checker: String,
    pub valid: Validity,
    /// Anomalies found (at most a bounded number per kind; `anomaly_counts` has the totals).
    pub anomalies: Vec<Anomaly>,
    /// Totals per anomaly kind and other figures (ops checked, keys, search states...).
    #[serde(default)]
    pub stats: serde_json::Value,
}

/// How many anomalies of one kind a checker keeps in full (the rest are only counted).
pub const ANOMALIES_KEPT_PER_KIND: usize = 8;

impl CheckResult {
    /// Valid when `anomalies` is empty, invalid otherwise.
    pub fn from_anomalies(checker: &str, anomalies: Vec<Anomaly>, stats: serde_json::Value) -> CheckResult {
        let valid = if anomalies.is_empty() { Validity::Valid } else { Validity::Invalid };
        CheckResult { checker: checker.to_string(), valid, anomalies, stats }
    }
}
