//! The timeline around the first anomaly: one column per process, time flowing downward, each op
//! a box from invocation to completion. It shows what ran concurrently with the ops a checker
//! blamed, which is what a reader needs to judge (or debug) the verdict.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write};

use super::{Run, clip, esc, fault_kind_index, fault_rgb, json_clip, outcome_name, secs_text};
use crate::checker::{Anomaly, CheckResult};
use crate::history::{Op, Pair, Process};

/// Beyond this many boxes the page gets sluggish; the ops nearest the anomaly are kept.
pub(crate) const MAX_OPS: usize = 2_000;
/// The window around the anomaly's ops, in time and in invocations.
const WINDOW_NS: u64 = 2_000_000_000;
const WINDOW_OPS: usize = 200;
/// Anomalies looked at for one with client ops (each look scans the history).
const MAX_ANOMALIES_SCANNED: usize = 64;
const COLUMN_WIDTH: f64 = 96.0;
const GUTTER: f64 = 72.0;
const HEADER: f64 = 24.0;

/// The anomaly the timeline centres on and the positions (in `run.pairs`) of its client ops.
struct Focus<'r> {
    checker: &'r str,
    kind: &'r str,
    number: usize,
    highlighted: Vec<usize>,
}

/// The ops drawn: positions in `run.pairs` (sorted) and the time range shown.
struct Window {
    positions: Vec<usize>,
    v0: u64,
    v1: u64,
    capped: bool,
}

/// Writes the timeline section (or why there is none).
pub(crate) fn section(out: &mut String, run: &Run, results: &[CheckResult]) -> fmt::Result {
    writeln!(out, "<h2 id=\"timeline\">Timeline around the first anomaly</h2>")?;
    let Some(focus) = find_focus(run, results) else {
        return writeln!(out, "<p class=\"note\">No anomaly refers to client ops, so there is no timeline.</p>");
    };
    let window = select(run, &focus.highlighted);
    let processes: BTreeMap<Process, usize> = {
        let mut ps: Vec<Process> = window.positions.iter().map(|&i| run.pairs[i].invoke.process).collect();
        ps.sort_unstable();
        ps.dedup();
        ps.into_iter().enumerate().map(|(c, p)| (p, c)).collect()
    };
    writeln!(
        out,
        "<p>Around <b>{}</b>: {} (anomaly #{}). {} ops from {} processes, invoked {} s to {} s{}. \
         The anomaly's ops are outlined; hover a box for details. \
         <span class=\"op-key ok\">ok</span> <span class=\"op-key fail\">fail</span> \
         <span class=\"op-key info\">info</span></p>",
        esc(focus.checker),
        esc(focus.kind),
        focus.number,
        window.positions.len(),
        processes.len(),
        secs_text(window.v0),
        secs_text(window.v1),
        if window.capped { format!(" (capped at the {MAX_OPS} ops nearest the anomaly)") } else { String::new() },
    )?;
    render(out, run, &focus, &window, &processes)
}

fn find_focus<'r>(run: &Run, results: &'r [CheckResult]) -> Option<Focus<'r>> {
    let candidates = results
        .iter()
        .flat_map(|r| r.anomalies.iter().enumerate().map(move |(i, a)| (r, i, a)))
        .take(MAX_ANOMALIES_SCANNED);
    for (result, i, anomaly) in candidates {
        let highlighted = anomaly_positions(run, anomaly);
        if !highlighted.is_empty() {
            return Some(Focus { checker: &result.checker, kind: &anomaly.kind, number: i + 1, highlighted });
        }
    }
    None
}

/// Checkers hand back copies of history records; index and time together identify a record even
/// in a history that was never reindexed.
fn record_key(op: &Op) -> (Process, u64, u64) {
    (op.process, op.index, op.time)
}

fn anomaly_positions(run: &Run, anomaly: &Anomaly) -> Vec<usize> {
    let keys: HashSet<(Process, u64, u64)> = anomaly.ops.iter().map(record_key).collect();
    run.pairs
        .iter()
        .enumerate()
        .filter(|(_, p)| keys.contains(&record_key(&p.invoke)) || keys.contains(&record_key(&p.complete)))
        .map(|(i, _)| i)
        .collect()
}

fn shown_end(run: &Run, pair: &Pair) -> u64 {
    run.settled_end(pair).unwrap_or(pair.start())
}

/// The ops within ±2 s or ±200 invocations of the anomaly's ops, plus older ops still running then;
/// capped at [`MAX_OPS`] by distance (in invocations) from the nearest anomaly op.
fn select(run: &Run, highlighted: &[usize]) -> Window {
    let pairs = &run.pairs;
    let t0 = highlighted.iter().map(|&i| pairs[i].start()).min().unwrap_or(0);
    let t1 = highlighted.iter().map(|&i| shown_end(run, &pairs[i])).max().unwrap_or(0);
    let (lo, hi) = (t0.saturating_sub(WINDOW_NS), t1.saturating_add(WINDOW_NS));
    // Pairs are in invocation order, so each criterion picks contiguous ranges.
    let first = pairs.partition_point(|p| p.start() < lo);
    let last = pairs.partition_point(|p| p.start() <= hi);
    let mut core: Vec<usize> = (first..last).collect();
    for &h in highlighted {
        core.extend(h.saturating_sub(WINDOW_OPS)..h.saturating_add(WINDOW_OPS + 1).min(pairs.len()));
    }
    core.sort_unstable();
    core.dedup();
    let v0 = core.iter().map(|&i| pairs[i].start()).min().unwrap_or(0);
    let before = core.first().copied().unwrap_or(0);
    let running: Vec<usize> = (0..before).filter(|&i| run.settled_end(&pairs[i]).unwrap_or(u64::MAX) > v0).collect();
    let capped = core.len() + running.len() > MAX_OPS;
    let mut positions: Vec<(usize, bool)> =
        core.into_iter().map(|i| (i, true)).chain(running.into_iter().map(|i| (i, false))).collect();
    if capped {
        let distance = |i: usize| {
            let at = highlighted.partition_point(|&h| h < i);
            let after = highlighted.get(at).map_or(usize::MAX, |&h| h - i);
            let prior = at.checked_sub(1).and_then(|j| highlighted.get(j)).map_or(usize::MAX, |&h| i - h);
            after.min(prior)
        };
        positions.sort_by_key(|&(i, _)| (distance(i), i));
        positions.truncate(MAX_OPS);
        positions.sort_unstable();
    }
    let core_kept = positions.iter().filter(|(_, core)| *core).map(|&(i, _)| i);
    let v0 = core_kept.clone().map(|i| pairs[i].start()).min().unwrap_or(v0);
    let v1 = core_kept.map(|i| shown_end(run, &pairs[i])).max().unwrap_or(v0).max(v0);
    Window { positions: positions.into_iter().map(|(i, _)| i).collect(), v0, v1, capped }
}

/// Maps times to pixels within the shown range.
struct Scale {
    v0: u64,
    v1: u64,
    px_per_ns: f64,
}

impl Scale {
    fn y(&self, t: u64) -> f64 {
        // Not clamp: it panics on an inverted range.
        HEADER + t.max(self.v0).min(self.v1).saturating_sub(self.v0) as f64 * self.px_per_ns
    }
}

fn render(
    out: &mut String,
    run: &Run,
    focus: &Focus,
    window: &Window,
    processes: &BTreeMap<Process, usize>,
) -> fmt::Result {
    let mut per_column = vec![0usize; processes.len()];
    for &i in &window.positions {
        if let Some(&c) = processes.get(&run.pairs[i].invoke.process) {
            per_column[c] += 1;
        }
    }
    let busiest = per_column.iter().copied().max().unwrap_or(0);
    let height = (busiest as f64 * 18.0).clamp(300.0, 8000.0);
    let span = window.v1.saturating_sub(window.v0).max(1) as f64;
    let scale = Scale { v0: window.v0, v1: window.v1, px_per_ns: height / span };
    let width = GUTTER + processes.len() as f64 * COLUMN_WIDTH;
    writeln!(
        out,
        "<div class=\"timeline-wrap\"><div class=\"timeline\" style=\"width:{width:.0}px;height:{:.0}px\">",
        HEADER + height + 12.0
    )?;
    fault_bands(out, run, &scale, width)?;
    ticks(out, &scale, span)?;
    for (process, column) in processes {
        let left = GUTTER + *column as f64 * COLUMN_WIDTH;
        writeln!(out, "<div class=\"proc\" style=\"left:{left:.0}px\">process {}</div>", esc(&process.to_string()))?;
    }
    let highlighted: HashSet<usize> = focus.highlighted.iter().copied().collect();
    for &i in &window.positions {
        let pair = &run.pairs[i];
        let column = processes.get(&pair.invoke.process).copied().unwrap_or(0);
        op_box(out, run, pair, &scale, column, highlighted.contains(&i))?;
    }
    writeln!(out, "</div></div>")
}

fn op_box(out: &mut String, run: &Run, pair: &Pair, scale: &Scale, column: usize, anomaly: bool) -> fmt::Result {
    let settled = run.settled_end(pair);
    let top = scale.y(pair.start());
    // An op that never completed runs off the bottom of the window.
    let bottom = settled.map_or(scale.y(scale.v1) + 8.0, |end| scale.y(end));
    let height = (bottom - top).max(3.0);
    let left = GUTTER + column as f64 * COLUMN_WIDTH + 3.0;
    let mut class = format!("op {}", outcome_name(pair.kind()));
    if anomaly {
        class.push_str(" anomaly");
    }
    if settled.is_none() {
        class.push_str(" open");
    }
    if pair.start() < scale.v0 {
        class.push_str(" clipped");
    }
    let label = format!("{} {}", pair.invoke.f, pair.invoke.key.as_deref().unwrap_or(""));
    writeln!(
        out,
        "<div class=\"{class}\" data-index=\"{}\" style=\"left:{left:.0}px;top:{top:.1}px;height:{height:.1}px\" title=\"{}\">{}</div>",
        pair.invoke.index,
        esc(&op_title(pair, settled)),
        esc(&clip(&label, 24)),
    )
}

/// The hover text: everything the two records say.
fn op_title(pair: &Pair, settled: Option<u64>) -> String {
    let (inv, done) = (&pair.invoke, &pair.complete);
    let mut t = format!("{} {}  (process {})\n", inv.f, inv.key.as_deref().unwrap_or("-"), inv.process);
    t += &format!("invoke #{} at {} s, value {}\n", inv.index, secs_text(inv.time), json_clip(&inv.value, 300));
    match settled {
        Some(end) => {
            let ms = end.saturating_sub(inv.time) as f64 / 1e6;
            t += &format!("{} #{} at {} s ({ms:.3} ms)", outcome_name(done.kind), done.index, secs_text(end));
        }
        None if done.time == u64::MAX => t += "info: never completed",
        None => t += &format!("info at {} s (closed at the end of the test)", secs_text(done.time)),
    }
    t += &format!(", value {}\n", json_clip(&done.value, 300));
    let fields = [
        done.rev.map(|r| format!("rev {r}")),
        done.hrev.map(|r| format!("hrev {r}")),
        done.succeeded.map(|s| format!("succeeded {s}")),
        done.node.as_ref().or(inv.node.as_ref()).map(|n| format!("node {}", clip(n, 60))),
        done.error.as_ref().map(|e| format!("error {}", clip(e, 300))),
    ];
    let fields: Vec<String> = fields.into_iter().flatten().collect();
    t + &fields.join(", ")
}

fn fault_bands(out: &mut String, run: &Run, scale: &Scale, width: f64) -> fmt::Result {
    for fault in run.faults {
        let end = fault.end.unwrap_or(u64::MAX).max(fault.start);
        if fault.start > scale.v1 || end < scale.v0 {
            continue;
        }
        let (r, g, b) = fault_rgb(fault_kind_index(&fault.fault));
        let top = scale.y(fault.start);
        let height = (scale.y(end) - top).max(2.0);
        writeln!(
            out,
            "<div class=\"fault\" style=\"top:{top:.1}px;height:{height:.1}px;left:{GUTTER:.0}px;width:{:.0}px;\
             background:rgba({r},{g},{b},0.16);border-top:2px solid rgb({r},{g},{b})\" title=\"{}\">{}</div>",
            width - GUTTER,
            esc(&format!(
                "{} {} on {} ({} s to {} s, {})",
                fault.fault,
                fault.detail,
                fault.targets.join(", "),
                secs_text(fault.start),
                fault.end.map_or("active".to_string(), secs_text),
                fault.outcome
            )),
            esc(&clip(&format!("{} {}", fault.fault, fault.detail), 40)),
        )?;
    }
    Ok(())
}

/// About ten time labels down the left edge, at round steps.
fn ticks(out: &mut String, scale: &Scale, span: f64) -> fmt::Result {
    let step = nice_step(span / 10.0);
    let mut t = (scale.v0 as f64 / step).ceil() * step;
    for _ in 0..40 {
        if t > scale.v1 as f64 {
            break;
        }
        let y = HEADER + (t - scale.v0 as f64).max(0.0) * scale.px_per_ns;
        writeln!(out, "<div class=\"tick\" style=\"top:{y:.1}px\">{:.3} s</div>", t / 1e9)?;
        t += step;
    }
    Ok(())
}

/// 1, 2 or 5 times a power of ten, at least `x` (and at least 1 ns).
fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 1.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    let m = x / p;
    let k = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * p
}
