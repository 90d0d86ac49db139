//! The run report: `report.html` (verdicts, plots shaded by fault windows, the anomalies and a
//! timeline of the ops around the first one), so a failed run can be understood from one
//! self-contained file without re-running the checkers.

mod html;
mod plots;
#[cfg(test)]
mod tests;
mod timeline;

use std::path::Path;

use anyhow::Context;

use crate::checker::{CheckResult, Validity};
use crate::history::{FaultWindow, Op, OpType, Pair, pairs};

/// What the report says about the run besides the history.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// One line naming the run, e.g. "register, nemesis kill,partition, 30 s, seed 7".
    pub title: String,
    /// The exact command that reproduces the run.
    pub reproduce: String,
    pub valid: Validity,
    /// Op counts, versions, etc.: rendered as a small key/value table.
    pub extra: serde_json::Value,
}

/// Writes `throughput.svg`, `latency.svg` and `report.html` (which embeds both plots) into `dir`.
pub fn write_report(
    dir: &Path,
    history: &[Op],
    faults: &[FaultWindow],
    results: &[CheckResult],
    summary: &RunSummary,
) -> anyhow::Result<()> {
    let run = Run::new(history, faults);
    let throughput = plots::throughput_svg(&run).context("drawing the throughput plot")?;
    let latency = plots::latency_svg(&run).context("drawing the latency plot")?;
    let page = html::page(&run, results, summary, &throughput, &latency).context("rendering report.html")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in [("throughput.svg", &throughput), ("latency.svg", &latency.svg), ("report.html", &page)] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The history digested once for every part of the report.
pub(crate) struct Run<'a> {
    /// Client ops, in invocation order.
    pub pairs: Vec<Pair>,
    pub faults: &'a [FaultWindow],
    /// The last finite timestamp of the run (history or fault schedule): where the plots end.
    pub end_ns: u64,
    /// The last client invocation. Once workers stop invoking, the recorder closes every op still
    /// open with an `info` stamped at the end of the test; such a "latency" only says how long the
    /// test went on, so those ops count as never completed.
    last_invoke_ns: u64,
}

impl<'a> Run<'a> {
    pub fn new(history: &[Op], faults: &'a [FaultWindow]) -> Run<'a> {
        let finite = |t: u64| (t != u64::MAX).then_some(t);
        let history_end = history.iter().filter_map(|op| finite(op.time)).max().unwrap_or(0);
        let fault_end =
            faults.iter().flat_map(|f| [Some(f.start), f.end]).flatten().filter_map(finite).max().unwrap_or(0);
        let last_invoke_ns = history
            .iter()
            .filter(|op| op.is_client() && op.kind == OpType::Invoke)
            .filter_map(|op| finite(op.time))
            .max()
            .unwrap_or(0);
        Run { pairs: pairs(history), faults, end_ns: history_end.max(fault_end), last_invoke_ns }
    }

    /// When the op really completed: `None` for an `info` that never came back or was only closed
    /// at the end of the test.
    pub fn settled_end(&self, pair: &Pair) -> Option<u64> {
        let t = pair.complete.time;
        let open_ended = t == u64::MAX
            || pair.invoke.time == u64::MAX
            || (pair.kind() == OpType::Info && t > self.last_invoke_ns && self.last_invoke_ns > 0);
        (!open_ended).then_some(t)
    }

    /// Whether the op's completion is a real record (not the synthetic one `pairs` adds).
    pub fn has_completion_record(pair: &Pair) -> bool {
        pair.complete.time != u64::MAX
    }
}

/// Nanoseconds to seconds for plot axes.
pub(crate) fn secs_f64(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Seconds for tables; `∞` for "never".
pub(crate) fn secs_text(ns: u64) -> String {
    if ns == u64::MAX { "∞".to_string() } else { format!("{:.3}", secs_f64(ns)) }
}

/// HTML-escapes text for element content and quoted attributes alike. Control characters (other
/// than newline and tab) are invalid in HTML and XML, so they become U+FFFD.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text`, with an ellipsis when cut; keeps huge values from
/// swamping the page.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Compact JSON, clipped.
pub(crate) fn json_clip(value: &serde_json::Value, max: usize) -> String {
    clip(&value.to_string(), max)
}

pub(crate) fn outcome_name(kind: OpType) -> &'static str {
    match kind {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    }
}

pub(crate) fn verdict_name(valid: Validity) -> &'static str {
    match valid {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    }
}

/// The fault kinds the nemesis knows, in legend order; anything else is drawn as "other".
pub(crate) const FAULT_KINDS: [&str; 5] = ["kill", "pause", "partition", "member", "clock"];

/// Index into [`FAULT_KINDS`], or `FAULT_KINDS.len()` for an unknown kind.
pub(crate) fn fault_kind_index(fault: &str) -> usize {
    FAULT_KINDS.iter().position(|k| *k == fault).unwrap_or(FAULT_KINDS.len())
}

/// Fault colours as RGB, shared by the plots and the HTML timeline.
pub(crate) fn fault_rgb(index: usize) -> (u8, u8, u8) {
    match index {
        0 => (148, 103, 189), // kill: purple
        1 => (31, 119, 180),  // pause: blue
        2 => (140, 86, 75),   // partition: brown
        3 => (23, 190, 207),  // member: teal
        4 => (188, 189, 34),  // clock: olive
        _ => (127, 127, 127), // other: grey
    }
}

/// Outcome colours: ok green, fail red, info orange.
pub(crate) fn outcome_rgb(kind: OpType) -> (u8, u8, u8) {
    match kind {
        OpType::Ok => (44, 160, 44),
        OpType::Fail => (214, 39, 40),
        OpType::Info => (255, 140, 0),
        OpType::Invoke => (127, 127, 127),
    }
}
