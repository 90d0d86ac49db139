//! The results file: one table with both systems per row (each row's median run, every run's
//! headline beside it), the ratio and whether the row's target is met, the machine it ran on,
//! how the runs were ordered and the exact commands; plus the raw JSON (every run) and the chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::suite::{Headline, Row};
use super::{CompareOpts, Comparison, Measured, System, budget, chart, headline, quiet, schedule};

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

/// What bounds the rows that miss their target, with the profiles behind it: kept by hand in
/// bench/BOUNDS.md and carried into every results file.
const BOUNDS: &str = include_str!("../../BOUNDS.md");

fn markdown(opts: &CompareOpts, rows: &[Row], c: &Comparison, svg: &Path) -> String {
    let mut s = String::from("# geobuk vs etcd: benchmark results\n\n");
    let _ = writeln!(s, "Written by `cargo run --release -p bench -- compare` (scale {}).\n", opts.scale);
    s.push_str(&machine());
    for (system, version) in &c.versions {
        let _ = writeln!(s, "- {}: {}", system.name(), version);
    }
    s.push_str(
        "\nBoth clusters: three members on loopback, `--heartbeat-interval 100 --election-timeout 1000 \
         --snapshot-count 100000`, every write fsynced on a majority before it is acknowledged.\n\n",
    );
    s.push_str(&method(c));
    s.push_str(&table(rows, c));
    let name = svg.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let _ = writeln!(s, "\n![geobuk / etcd per row]({name})");
    s.push_str(&budget::section(rows, c));
    s.push_str(BOUNDS);
    s.push('\n');
    let _ = writeln!(
        s,
        "## Commands\n\n`$ENDPOINTS` is the three members' client URLs. Each row, against each system ({}):\n",
        times(c.repeats)
    );
    for row in rows {
        let _ = writeln!(s, "- `{}`: `{}`", row.id, row.command_line());
    }
    s.push_str(&notes(c));
    s.push_str(&errors(c));
    s
}

/// How the runs were ordered and which one a row reports: host speed drifts by tens of percent
/// within minutes, so the order is part of what the figures mean.
fn method(c: &Comparison) -> String {
    let names: Vec<&str> = c.versions.iter().map(|(s, _)| s.name()).collect();
    let mut s = format!(
        "Method: the {} stay up for the whole run, the load generator on the same machine. ",
        if names.len() > 1 { "clusters" } else { "cluster" }
    );
    if names.len() > 1 {
        let systems: Vec<System> = c.versions.iter().map(|(s, _)| *s).collect();
        let slots = schedule::order(2, &systems, c.repeats);
        let row = |r: usize| slots.iter().filter(|s| s.row == r).map(|s| s.system.name()).collect::<Vec<_>>().join(" ");
        let _ = write!(
            s,
            "The runs are interleaved: each row runs on every system back to back, and the system that \
             goes first alternates from row to row and from repeat to repeat (row 0: {}, row 1: {}, …), \
             so a drift of the host's speed hits all alike. ",
            row(0),
            row(1)
        );
    }
    let _ = write!(
        s,
        "Every row runs {} on each system. Before every run the measured cluster must be healthy and \
         the members of all clusters together must use less than {:.0} % of one core per member \
         over {} s (so neither is measured while the other still flushes or compacts); the wait is at \
         most {} s, and a run that started without a quiet window has a note below. CPU seconds and \
         peak RSS are those of the measured system's members during its run. After every run the \
         measured cluster's history is compacted to its current revision, as a Kubernetes API \
         server does every five minutes.",
        times(c.repeats),
        quiet::QUIET_CPU_PER_MEMBER * 100.0,
        quiet::QUIET_WINDOW.as_secs(),
        quiet::QUIET_TIMEOUT.as_secs()
    );
    if c.repeats > 1 {
        s.push_str(
            " A row's figures are those of its run with the median headline (the lower middle for an \
             even count; failed runs left out), every run's headline in brackets; RESULTS.json has \
             every run.",
        );
    }
    s.push_str("\n\n");
    s
}

fn times(n: usize) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

/// The reported headline of a row on a system, followed by every run's when there were several.
fn headline_cell(row: &Row, c: &Comparison, system: System, reported: Option<Figures>) -> String {
    let Some(f) = reported else { return "—".into() };
    let runs = c.runs(row.id, system);
    if runs.len() < 2 {
        return format!("{:.0}", f.headline);
    }
    let mut ok: Vec<f64> = runs.iter().filter_map(|m| m.headline).collect();
    ok.sort_by(f64::total_cmp);
    let mut all: Vec<String> = ok.iter().map(|h| format!("{h:.0}")).collect();
    all.extend(runs.iter().filter(|m| m.headline.is_none()).map(|_| "failed".to_string()));
    format!("{:.0} (median of {})", f.headline, all.join(" / "))
}

/// "run k of N" when a row ran more than once, else nothing.
fn run_label(c: &Comparison, m: &Measured) -> String {
    if c.repeats > 1 { format!(" (run {} of {})", m.repeat + 1, c.repeats) } else { String::new() }
}

fn notes(c: &Comparison) -> String {
    let mut s = String::new();
    for m in c.measured.iter().filter(|m| !m.notes.is_empty()) {
        if s.is_empty() {
            s.push_str("\n## Notes\n\n");
        }
        let _ = writeln!(s, "- {} {}{}: {}", m.system.name(), m.row, run_label(c, m), m.notes.join("; "));
    }
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
            headline_cell(row, c, System::Etcd, e),
            headline_cell(row, c, System::Geobuk, g),
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
            // Continuation lines (a dead member's log) stay inside the list item.
            let what = what.replace('\n', "\n  ");
            let _ = writeln!(s, "- {} {}{}: {what}", m.system.name(), m.row, run_label(c, m));
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
    use crate::report::Report;

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

    /// One run of put-100: ops/s `headline` with request p99 `p99_ms`, or a failed run.
    fn run(system: System, repeat: usize, figures: Option<(f64, f64)>) -> Measured {
        let report = figures.map(|(ops, p99)| {
            let mut r = Report::default();
            r.summary.ops_per_sec = ops;
            r.summary.latency_ms.p99 = p99;
            r
        });
        Measured {
            row: "put-100".into(),
            system,
            repeat,
            headline: figures.map(|f| f.0),
            error: figures.is_none().then(|| format!("{} died", system.name())),
            report,
            usage: Default::default(),
            quiet: Default::default(),
            notes: Vec::new(),
        }
    }

    fn comparison(repeats: usize, measured: Vec<Measured>) -> Comparison {
        let versions = vec![(System::Etcd, "3.4".into()), (System::Geobuk, "0.1".into())];
        Comparison { rows: vec!["put-100".into()], repeats, measured, versions }
    }

    fn opts() -> CompareOpts {
        CompareOpts {
            systems: vec![System::Etcd, System::Geobuk],
            geobuk_bin: None,
            etcd_bin: "etcd".into(),
            work_dir: "members".into(),
            out: "RESULTS.md".into(),
            scale: 1.0,
            load_keys: 1_000_000,
            rows: Vec::new(),
            repeats: 1,
        }
    }

    fn put100() -> Vec<Row> {
        rows(1.0, 1_000_000).into_iter().filter(|r| r.id == "put-100").collect()
    }

    #[test]
    fn the_table_reports_each_sides_median_run_beside_every_run() {
        let (e, g) = (System::Etcd, System::Geobuk);
        let c = comparison(
            3,
            vec![
                run(e, 0, Some((7400.0, 1.0))),
                run(g, 0, Some((12000.0, 4.0))),
                run(g, 1, None),
                run(e, 1, Some((6900.0, 2.0))),
                run(e, 2, Some((7120.0, 3.0))),
                run(g, 2, Some((10000.0, 5.0))),
            ],
        );
        let rows = put100();
        let table = table(&rows, &c);
        let line = table.lines().nth(2).unwrap();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells[3], "7120 (median of 6900 / 7120 / 7400)", "{line}");
        // The failed run is left out: the lower middle of 10000 and 12000.
        assert_eq!(cells[4], "10000 (median of 10000 / 12000 / failed)", "{line}");
        assert_eq!(cells[5], "1.40", "the ratio of the medians: {line}");
        // The other columns come from the median runs too.
        assert_eq!((cells[6], cells[7]), ("3.0", "5.0"), "{line}");
        assert_eq!(chart::ratios(&rows, &c), [("put-100".to_string(), 10000.0 / 7120.0)]);
        let md = markdown(&opts(), &rows, &c, Path::new("RESULTS.svg"));
        assert!(md.contains("runs 3 times on each system") && md.contains("median headline"), "{md}");
        assert!(md.contains("(row 0: etcd geobuk geobuk etcd etcd geobuk, row 1: geobuk etcd"), "{md}");
        assert!(md.contains("- geobuk put-100 (run 2 of 3): geobuk died"), "{md}");
    }

    #[test]
    fn a_row_whose_runs_all_failed_shows_the_error() {
        let (e, g) = (System::Etcd, System::Geobuk);
        let c = comparison(2, vec![run(e, 0, Some((5.0, 1.0))), run(g, 0, None), run(g, 1, None), run(e, 1, None)]);
        assert_eq!(c.get("put-100", g).and_then(|m| m.error.as_deref()), Some("geobuk died"));
        let rows = put100();
        let line = table(&rows, &c).lines().nth(2).unwrap().to_string();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!((cells[3], cells[4], cells[5]), ("5 (median of 5 / failed)", "—", "—"), "{line}");
        let errors = errors(&c);
        assert!(errors.contains("- geobuk put-100 (run 1 of 2): geobuk died"), "{errors}");
        assert!(errors.contains("- geobuk put-100 (run 2 of 2): geobuk died"), "{errors}");
        assert!(errors.contains("- etcd put-100 (run 2 of 2): etcd died"), "{errors}");
    }

    #[test]
    fn one_run_per_row_reads_as_before_and_notes_are_listed() {
        let mut late = run(System::Geobuk, 0, Some((900.0, 1.0)));
        late.notes.push("not quiet".into());
        let c = comparison(1, vec![run(System::Etcd, 0, Some((1000.0, 1.0))), late]);
        let rows = put100();
        let md = markdown(&opts(), &rows, &c, Path::new("RESULTS.svg"));
        let line = md.lines().find(|l| l.starts_with("| put, 100")).unwrap();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!((cells[3], cells[4], cells[5]), ("1000", "900", "0.90"), "{line}");
        assert!(md.contains("runs once on each system") && !md.contains("median headline"), "{md}");
        assert!(md.contains("(row 0: etcd geobuk, row 1: geobuk etcd, …)"), "{md}");
        assert!(md.contains("## Notes\n\n- geobuk put-100: not quiet\n"), "{md}");
        assert!(!md.contains("## Errors"), "{md}");
    }
}
