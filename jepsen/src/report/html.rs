//! Assembles `report.html`: one self-contained page (inline CSS and SVG; no scripts, no network)
//! that reads top-down from the verdict to the evidence behind it.

use std::fmt::{self, Write};

use super::plots::LatencyPlot;
use super::{Run, RunSummary, clip, esc, json_clip, outcome_name, secs_text, timeline, verdict_name};
use crate::checker::{Anomaly, CheckResult};
use crate::history::Op;

/// Anomalies shown in full per checker; the rest are only counted.
const ANOMALIES_SHOWN: usize = 5;
/// Ops listed per anomaly.
const OPS_SHOWN: usize = 30;
/// Fault rows listed (a schedule longer than this is a harness bug or a very long run).
const FAULTS_SHOWN: usize = 1_000;
/// Characters of pretty-printed anomaly details; a partial linearization can be huge.
const DETAILS_CHARS: usize = 20_000;

const STYLE: &str = "
body{font-family:system-ui,-apple-system,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin-bottom:8px}
.verdict{display:inline-block;font-size:40px;font-weight:bold;padding:6px 18px;border-radius:6px;color:#fff}
.verdict.v-valid{background:#1a7f37}.verdict.v-invalid{background:#c62828}.verdict.v-unknown{background:#e08600}
.badge.v-valid{color:#1a7f37;font-weight:bold}.badge.v-invalid{color:#c62828;font-weight:bold}
.badge.v-unknown{color:#e08600;font-weight:bold}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-all}
code{word-break:break-all}
.note{color:#555;font-size:13px}
.plot svg{max-width:100%;height:auto}
.anomaly-box{border-left:4px solid #c62828;padding-left:10px;margin:12px 0}
.timeline-wrap{overflow:auto;max-height:85vh;border:1px solid #ccc}
.timeline{position:relative;font-size:11px}
.timeline .op{position:absolute;width:90px;overflow:hidden;white-space:nowrap;box-sizing:border-box;
 border:1px solid rgba(0,0,0,.35);border-radius:2px;padding:0 2px;line-height:12px;z-index:1}
.op.ok,.op-key.ok{background:#9fd89f}.op.fail,.op-key.fail{background:#f3a3a3}
.op.info,.op-key.info{background:#ffc980}
.op.open{border-bottom:3px dashed #555}.op.clipped{border-top:3px dashed #555}
.op.anomaly{outline:3px solid #d000ff;z-index:3}
.op-key{padding:0 6px;border:1px solid #999}
.fault{position:absolute;font-size:10px;color:#333;text-align:right;padding-right:4px;box-sizing:border-box;z-index:0}
.tick{position:absolute;left:0;width:68px;border-top:1px solid #bbb;font-size:10px;color:#555}
.proc{position:absolute;top:0;width:92px;font-weight:bold;overflow:hidden;white-space:nowrap}
";

/// The whole page.
pub(crate) fn page(
    run: &Run,
    results: &[CheckResult],
    summary: &RunSummary,
    throughput_svg: &str,
    latency: &LatencyPlot,
) -> Result<String, fmt::Error> {
    let mut out = String::new();
    let title = esc(&summary.title);
    writeln!(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")?;
    writeln!(out, "<title>jepsen: {title}</title><style>{STYLE}</style></head><body>")?;
    writeln!(out, "<h1>{title}</h1>")?;
    let verdict = verdict_name(summary.valid);
    writeln!(out, "<div class=\"verdict v-{verdict}\">{}</div>", verdict.to_uppercase())?;
    writeln!(
        out,
        "<p class=\"note\">exit code {}; {} client ops, {} fault windows, {} s recorded</p>",
        summary.valid.exit_code(),
        run.pairs.len(),
        run.faults.len(),
        secs_text(run.end_ns)
    )?;
    writeln!(out, "<h2>Reproduce</h2><pre>{}</pre>", esc(&summary.reproduce))?;
    extra_table(&mut out, &summary.extra)?;
    checker_table(&mut out, results)?;
    writeln!(out, "<h2>Throughput</h2><div class=\"plot\">{}</div>", inline_svg(throughput_svg))?;
    writeln!(out, "<h2>Latency</h2><div class=\"plot\">{}</div>", inline_svg(&latency.svg))?;
    if latency.drawn < latency.total {
        writeln!(
            out,
            "<p class=\"note\">The latency plot draws {} of {} ops, sampled uniformly; the p50/p99 lines use every ok op.</p>",
            latency.drawn, latency.total
        )?;
    }
    fault_table(&mut out, run)?;
    anomalies(&mut out, results)?;
    timeline::section(&mut out, run, results)?;
    writeln!(out, "</body></html>")?;
    Ok(out)
}

/// The SVG without an XML prolog, which is not allowed inside HTML.
fn inline_svg(svg: &str) -> &str {
    svg.find("<svg").map_or("", |at| &svg[at..])
}

fn extra_table(out: &mut String, extra: &serde_json::Value) -> fmt::Result {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => esc(&clip(s, 2_000)),
        other => esc(&json_clip(other, 2_000)),
    };
    match extra {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(map) if map.is_empty() => Ok(()),
        serde_json::Value::Object(map) => {
            writeln!(out, "<h2>Run</h2><table>")?;
            for (key, value) in map {
                writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(key), cell(value))?;
            }
            writeln!(out, "</table>")
        }
        other => writeln!(out, "<h2>Run</h2><table><tr><td>{}</td></tr></table>", cell(other)),
    }
}

fn checker_table(out: &mut String, results: &[CheckResult]) -> fmt::Result {
    writeln!(out, "<h2>Checkers</h2>")?;
    if results.is_empty() {
        return writeln!(out, "<p class=\"note\">No checker ran.</p>");
    }
    writeln!(out, "<table><tr><th>checker</th><th>verdict</th><th>anomalies</th><th>stats</th></tr>")?;
    for r in results {
        let verdict = verdict_name(r.valid);
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"badge v-{verdict}\">{verdict}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&r.checker),
            r.anomalies.len(),
            esc(&json_clip(&r.stats, 800)),
        )?;
    }
    writeln!(out, "</table>")
}

fn fault_table(out: &mut String, run: &Run) -> fmt::Result {
    writeln!(out, "<h2>Fault schedule</h2>")?;
    if run.faults.is_empty() {
        return writeln!(out, "<p class=\"note\">No faults.</p>");
    }
    writeln!(
        out,
        "<table><tr><th>fault</th><th>detail</th><th>targets</th><th>start s</th><th>end s</th><th>outcome</th></tr>"
    )?;
    for f in run.faults.iter().take(FAULTS_SHOWN) {
        let end = match f.end {
            None => "active at the end".to_string(),
            Some(end) if end == f.start => "instant".to_string(),
            Some(end) => secs_text(end),
        };
        writeln!(
            out,
            "<tr class=\"fault-row\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.fault),
            esc(&f.detail),
            esc(&f.targets.join(", ")),
            secs_text(f.start),
            esc(&end),
            esc(&f.outcome),
        )?;
    }
    writeln!(out, "</table>")?;
    if run.faults.len() > FAULTS_SHOWN {
        writeln!(out, "<p class=\"note\">First {FAULTS_SHOWN} of {} fault windows.</p>", run.faults.len())?;
    }
    Ok(())
}

fn anomalies(out: &mut String, results: &[CheckResult]) -> fmt::Result {
    let with_anomalies: Vec<&CheckResult> = results.iter().filter(|r| !r.anomalies.is_empty()).collect();
    if with_anomalies.is_empty() {
        return Ok(());
    }
    writeln!(out, "<h2>Anomalies</h2>")?;
    for r in with_anomalies {
        let shown = r.anomalies.len().min(ANOMALIES_SHOWN);
        let n = r.anomalies.len();
        let noun = if n == 1 { "anomaly" } else { "anomalies" };
        writeln!(out, "<h3>{}: {n} {noun}, first {shown} shown</h3>", esc(&r.checker))?;
        for (i, a) in r.anomalies.iter().take(ANOMALIES_SHOWN).enumerate() {
            anomaly(out, i + 1, a)?;
        }
    }
    Ok(())
}

fn anomaly(out: &mut String, number: usize, a: &Anomaly) -> fmt::Result {
    writeln!(out, "<div class=\"anomaly-box\"><h4>#{number} {}</h4>", esc(&a.kind))?;
    writeln!(out, "<p>{}</p>", esc(&a.explanation))?;
    if !a.details.is_null() {
        let pretty = serde_json::to_string_pretty(&a.details).unwrap_or_default();
        writeln!(out, "<pre>{}</pre>", esc(&clip(&pretty, DETAILS_CHARS)))?;
    }
    if !a.ops.is_empty() {
        op_table(out, &a.ops)?;
    }
    writeln!(out, "</div>")
}

fn op_table(out: &mut String, ops: &[Op]) -> fmt::Result {
    writeln!(
        out,
        "<table><tr><th>index</th><th>process</th><th>type</th><th>f</th><th>key</th><th>value</th>\
         <th>time s</th><th>rev</th><th>hrev</th><th>succeeded</th><th>error</th><th>node</th></tr>"
    )?;
    let opt = |v: Option<String>| v.map_or(String::new(), |s| esc(&clip(&s, 300)));
    for op in ops.iter().take(OPS_SHOWN) {
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            op.index,
            esc(&op.process.to_string()),
            outcome_name(op.kind),
            esc(&clip(&op.f, 100)),
            opt(op.key.clone()),
            esc(&json_clip(&op.value, 300)),
            secs_text(op.time),
            opt(op.rev.map(|r| r.to_string())),
            opt(op.hrev.map(|r| r.to_string())),
            opt(op.succeeded.map(|s| s.to_string())),
            opt(op.error.clone()),
            opt(op.node.clone()),
        )?;
    }
    writeln!(out, "</table>")?;
    if ops.len() > OPS_SHOWN {
        writeln!(out, "<p class=\"note\">First {OPS_SHOWN} of {} ops.</p>", ops.len())?;
    }
    Ok(())
}
