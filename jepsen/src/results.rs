//! The results directory: the raw records (history, faults, watch logs, ground truth), the
//! checkers' verdicts in `results.json`, and the HTML report.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::checker::{self, Anomaly, CheckResult, Validity};
use crate::history::{FaultWindow, Op, OpType};
use crate::report::{self, RunSummary};
use crate::watchlog::{EventRecord, WatchRecord};
use crate::workload::WorkloadKind;

/// Everything a run recorded.
pub struct Artifacts {
    pub history: Vec<Op>,
    pub faults: Vec<FaultWindow>,
    pub watches: Vec<WatchRecord>,
    /// Each member's committed events, by member name.
    pub truths: Vec<(String, Vec<EventRecord>)>,
    /// Member log files, by member name.
    pub logs: Vec<(String, PathBuf)>,
}

/// Runs the workload's checkers plus the ones every run gets.
pub fn check(workload: WorkloadKind, a: &Artifacts) -> Vec<CheckResult> {
    let truth: &[EventRecord] = a.truths.first().map_or(&[], |(_, t)| t.as_slice());
    let mut results = match workload {
        WorkloadKind::Register => vec![checker::linear::check(&a.history)],
        WorkloadKind::Append => vec![checker::elle::check(&a.history)],
        WorkloadKind::Watch => vec![checker::watch::check(&a.history, &a.watches, truth)],
        WorkloadKind::Lease => vec![checker::lease::check(&a.history, truth)],
    };
    results.push(checker::revisions::check(&a.history));
    results.push(CheckResult::from_anomalies(
        "replicas",
        checker::watch::compare_truths(&a.truths),
        json!({"members": a.truths.len(), "events": truth.len()}),
    ));
    results.push(check_logs(&a.logs));
    results
}

/// A member that panicked is a failure whatever the history says.
fn check_logs(logs: &[(String, PathBuf)]) -> CheckResult {
    let mut anomalies = Vec::new();
    for (name, path) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            anomalies.push(Anomaly {
                kind: "member-panic".into(),
                explanation: format!("{name} panicked: {line}"),
                ops: Vec::new(),
                details: Value::Null,
            });
        }
    }
    CheckResult::from_anomalies("member-logs", anomalies, json!({"members": logs.len()}))
}

/// Writes the raw records, checks, and writes `results.json` and the report.
pub fn check_and_write(
    dir: &Path,
    workload: WorkloadKind,
    a: &Artifacts,
    reproduce: &str,
    extra: Value,
) -> Result<Vec<CheckResult>> {
    write_jsonl(&dir.join("history.jsonl"), &a.history)?;
    write_jsonl(&dir.join("faults.jsonl"), &a.faults)?;
    if !a.watches.is_empty() {
        write_jsonl(&dir.join("watch.jsonl"), &a.watches)?;
    }
    for (name, events) in &a.truths {
        write_jsonl(&dir.join(format!("truth-{name}.jsonl")), events)?;
    }
    let results = check(workload, a);
    let valid = results.iter().fold(Validity::Valid, |v, r| v.and(r.valid));
    let counts = op_counts(&a.history);
    let summary = json!({
        "valid": valid,
        "workload": workload,
        "reproduce": reproduce,
        "counts": counts,
        "faults": a.faults,
        "extra": extra,
        "checkers": results,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(dir.join("results.json"), text).context("write results.json")?;
    let title = format!("{} — {}", serde_json::to_value(workload)?.as_str().unwrap_or_default(), verdict_word(valid));
    let run_summary =
        RunSummary { title, reproduce: reproduce.to_string(), valid, extra: json!({"counts": counts, "extra": extra}) };
    report::write_report(dir, &a.history, &a.faults, &results, &run_summary)?;
    Ok(results)
}

pub fn verdict_word(valid: Validity) -> &'static str {
    match valid {
        Validity::Valid => "valid",
        Validity::Invalid => "INVALID",
        Validity::Unknown => "unknown",
    }
}

/// Client op completions by f and type.
pub fn op_counts(history: &[Op]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.is_client() && o.kind != OpType::Invoke) {
        let kind = serde_json::to_value(op.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        *counts.entry(op.f.clone()).or_default().entry(kind).or_default() += 1;
    }
    counts
}

fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Re-checks a saved run from its records (`jepsen check DIR`).
pub fn recheck(dir: &Path) -> Result<Vec<CheckResult>> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("read {name}"));
    let saved: Value = serde_json::from_str(&read("results.json")?)?;
    let workload: WorkloadKind =
        serde_json::from_value(saved["workload"].clone()).context("workload in results.json")?;
    let history = crate::history::parse_jsonl(&read("history.jsonl")?)?;
    let faults = crate::watchlog::parse_jsonl(&read("faults.jsonl")?)?;
    let watches = match read("watch.jsonl") {
        Ok(text) => crate::watchlog::parse_jsonl(&text)?,
        Err(_) => Vec::new(),
    };
    let mut truths = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
        if let Some(name) = file.strip_prefix("truth-").and_then(|f| f.strip_suffix(".jsonl")) {
            truths.push((name.to_string(), crate::watchlog::parse_jsonl(&read(&file)?)?));
        }
    }
    let artifacts = Artifacts { history, faults, watches, truths, logs: Vec::new() };
    Ok(check(workload, &artifacts))
}
