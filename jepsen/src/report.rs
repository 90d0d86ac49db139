//! STUB (replaced by the report branch).
use std::path::Path;

use crate::checker::{CheckResult, Validity};
use crate::history::{FaultWindow, Op};

pub struct RunSummary {
    pub title: String,
    pub reproduce: String,
    pub valid: Validity,
    pub extra: serde_json::Value,
}

pub fn write_report(
    _dir: &Path,
    _history: &[Op],
    _faults: &[FaultWindow],
    _results: &[CheckResult],
    _summary: &RunSummary,
) -> anyhow::Result<()> {
    Ok(())
}
