//! The results file: one table with both systems per row, the ratio and whether the row's
//! target is met, the machine it ran on and the exact commands; plus the raw JSON and the chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::suite::{Headline, Row};
use super::{CompareOpts, Comparison, Measured, System, chart, headline};

/// A row's figures on one system, flattened for the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub headline: f64,
    /// Request p99, or delivery p99 on watch rows (ms).
    pub p99_ms: f64,
    pub errors: u64,
    pub missing_events: u64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

pub fn figures(row: &Row, m: &Measured) -> Option<Figures> {
    let r = m.report.as_ref()?;
    let (p99_ms, missing_events) = match (&r.watch, row.headline) {
        (Some(w), Headline::EventsPerSec) => (w.delivery_latency_ms.p99, w.missing_events),
        _ => (r.summary.latency_ms.p99, 0),
    };
    Some(Figures {
        headline: headline(row, r),
        p99_ms,
        errors: r.summary.errors,
        missing_events,
        cpu_seconds: m.usage.cpu_seconds,
        peak_rss_bytes: m.usage.peak_rss_bytes,
    })
}

/// Whether geobuk meets the row's target against etcd; `None` when the row has no target or
/// a side is missing. The text says what was required.
pub fn verdict(row: &Row, etcd: Option<Figures>, geobuk: Option<Figures>) -> (Option<bool>, String) {
    let t = row.target;
    let mut needs = Vec::new();
    let mut met = true;
    let (Some(e), Some(g)) = (etcd, geobuk) else { return (None, "—".into()) };
    if let Some(r) = t.min_ratio {
        needs.push(format!("≥ {r}×"));
        met &= g.headline >= r * e.headline;
    }
    if t.p99_no_worse {
        needs.push("p99 ≤ etcd".into());
        met &= g.p99_ms <= e.p99_ms;
    }
    if t.all_delivered {
        needs.push("all delivered".into());
        met &= g.missing_events == 0;
    }
    if t.rss_no_worse {
        needs.push("RSS ≤ etcd".into());
        met &= g.peak_rss_bytes <= e.peak_rss_bytes;
    }
    if needs.is_empty() {
        return (None, "—".into());
    }
    (Some(met), needs.join(", "))
}

/// Writes `opts.out` (Markdown), the JSON beside it and the SVG chart beside it.
pub fn write(opts: &CompareOpts, rows: &[Row], c: &Comparison) -> Result<()> {
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let json = opts.out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(c)?).with_context(|| format!("write {}", json.display()))?;
    let svg = opts.out.with_extension("svg");
    chart::draw(&svg, rows, c)?;
    let md = markdown(opts, rows, c, &svg);
    std::fs::write(&opts.out, md).with_context(|| format!("write {}", opts.out.display()))
}

fn markdown(opts: &CompareOpts, rows: &[Row], c: &Comparison, svg: &Path) -> String {
    let mut s = String::from("# geobuk vs etcd: benchmark results\n\n");
    let _ = writeln!(s, "Written by `cargo run --release -p bench -- compare` (scale {}).\n", opts.scale);
    s.push_str(&machine());
    for (system, version) in &c.versions {
        let _ = writeln!(s, "- {}: {}", system.name(), version);
    }
    s.push_str(
        "\nBoth clusters: three members on loopback, `--heartbeat-interval 100 --election-timeout 1000 \
         --snapshot-count 100000`, every write fsynced on a majority before it is acknowledged. \
         The clusters run one after the other, the load generator on the same machine.\n\n",
    );
    s.push_str(&table(rows, c));
    let name = svg.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let _ = writeln!(s, "\n![geobuk / etcd per row]({name})\n");
    s.push_str("## Commands\n\n`$ENDPOINTS` is the three members' client URLs. Each row, against each system:\n\n");
    for row in rows {
        let _ = writeln!(s, "- `{}`: `{}`", row.id, row.command_line());
    }
    s.push_str(&errors(c));
    s
}

fn table(rows: &[Row], c: &Comparison) -> String {
    let mut s = String::from(
        "| row | metric | etcd | geobuk | geobuk/etcd | p99 ms etcd | p99 ms geobuk | CPU s etcd | CPU s geobuk \
         | peak RSS MiB etcd | peak RSS MiB geobuk | target | met |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for row in rows {
        let e = c.get(row.id, System::Etcd).and_then(|m| figures(row, m));
        let g = c.get(row.id, System::Geobuk).and_then(|m| figures(row, m));
        let metric = if row.headline == Headline::EventsPerSec { "events/s" } else { "ops/s" };
        let ratio = match (e, g) {
            (Some(e), Some(g)) if e.headline > 0.0 => format!("{:.2}", g.headline / e.headline),
            _ => "—".into(),
        };
        let (met, needs) = verdict(row, e, g);
        let f = |x: Option<Figures>, get: fn(Figures) -> String| x.map_or("—".into(), get);
        let _ = writeln!(
            s,
            "| {} | {metric} | {} | {} | {ratio} | {} | {} | {} | {} | {} | {} | {needs} | {} |",
            row.title,
            f(e, |x| format!("{:.0}", x.headline)),
            f(g, |x| format!("{:.0}", x.headline)),
            f(e, |x| format!("{:.1}", x.p99_ms)),
            f(g, |x| format!("{:.1}", x.p99_ms)),
            f(e, |x| format!("{:.1}", x.cpu_seconds)),
            f(g, |x| format!("{:.1}", x.cpu_seconds)),
            f(e, |x| format!("{:.0}", x.peak_rss_bytes as f64 / 1048576.0)),
            f(g, |x| format!("{:.0}", x.peak_rss_bytes as f64 / 1048576.0)),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    s
}

fn errors(c: &Comparison) -> String {
    let mut s = String::new();
    for m in &c.measured {
        let failed = m.report.as_ref().map_or(0, |r| r.summary.errors);
        if m.error.is_some() || failed > 0 {
            if s.is_empty() {
                s.push_str("\n## Errors\n\n");
            }
            let what = m.error.clone().unwrap_or_else(|| {
                let r = m.report.as_ref().map(|r| format!("{:?}", r.summary.error_counts));
                format!("{failed} failed ops: {}", r.unwrap_or_default())
            });
            let _ = writeln!(s, "- {} {}: {what}", m.system.name(), m.row);
        }
    }
    s
}

/// CPU model and count, memory, kernel and the file system of the data dirs.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Machine: {cpus} × {model}, {:.1} GiB RAM, Linux {}.\n\n", mem_kib as f64 / 1048576.0, kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::suite::rows;

    fn fig(headline: f64, p99_ms: f64, rss: u64) -> Option<Figures> {
        Some(Figures { headline, p99_ms, peak_rss_bytes: rss, ..Default::default() })
    }

    #[test]
    fn verdicts_follow_the_targets() {
        let rows = rows(1.0, 1_000_000);
        let put100 = rows.iter().find(|r| r.id == "put-100").unwrap();
        assert_eq!(verdict(put100, fig(100.0, 10.0, 0), fig(150.0, 10.0, 0)).0, Some(true));
        assert_eq!(verdict(put100, fig(100.0, 10.0, 0), fig(149.0, 9.0, 0)).0, Some(false), "ratio below 1.5");
        assert_eq!(verdict(put100, fig(100.0, 10.0, 0), fig(200.0, 11.0, 0)).0, Some(false), "p99 worse");
        let load = rows.iter().find(|r| r.id == "load-1m").unwrap();
        assert_eq!(verdict(load, fig(1.0, 1.0, 100), fig(1.0, 1.0, 101)).0, Some(false), "more memory");
        let range_s = rows.iter().find(|r| r.id == "range-s").unwrap();
        assert_eq!(verdict(range_s, fig(1.0, 1.0, 1), fig(0.1, 9.0, 9)).0, None, "no target");
        assert_eq!(verdict(put100, None, fig(1.0, 1.0, 1)).0, None, "a side is missing");
    }
}
