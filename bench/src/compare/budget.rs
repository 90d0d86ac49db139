//! What the shared cores allow: the members' and the load generator's CPU time per operation in
//! each row's reported runs, and the ceiling that puts on geobuk's throughput ratio over etcd.
//!
//! Both clusters and the load generator run on the same cores. A run that keeps them busy
//! reaches about `busy cores / (members' + load generator's CPU per op)`, and the load
//! generator's part is the same work against either system, so the throughput ratio cannot go
//! past the ratio of the two totals however the members' time is spent. The results file shows
//! that ceiling beside the measured ratio, and the members' cost geobuk would need for a target.

use std::fmt::Write as _;

use super::suite::{Headline, Row};
use super::{Comparison, Measured, System};

/// CPU cost per successful operation of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Members' CPU time per op, all members together (µs).
    pub members_us: f64,
    /// The load generator's CPU time per op (µs).
    pub load_us: f64,
    /// How busy the machine's cores were during the run, 0–1.
    pub busy: f64,
}

/// The cost per op of a run; `None` for a failed run or one without successful ops.
pub fn cost(m: &Measured) -> Option<Cost> {
    let summary = &m.report.as_ref()?.summary;
    let ops = summary.total_ops.saturating_sub(summary.errors);
    if ops == 0 {
        return None;
    }
    let per_op = |seconds: f64| seconds * 1e6 / ops as f64;
    Some(Cost {
        members_us: per_op(m.usage.cpu_seconds),
        load_us: per_op(m.usage.load_cpu_seconds),
        busy: m.usage.machine_busy,
    })
}

/// The largest throughput ratio geobuk / etcd these costs allow on saturated shared cores;
/// `None` when geobuk's run used no measurable CPU (a run shorter than a clock tick).
pub fn ceiling(etcd: Cost, geobuk: Cost) -> Option<f64> {
    let geobuk_total = geobuk.members_us + geobuk.load_us;
    (geobuk_total > 0.0).then(|| (etcd.members_us + etcd.load_us) / geobuk_total)
}

/// geobuk's members' CPU per op at which the ceiling reaches `ratio` (its load generator's
/// cost unchanged); at most zero when the load generator alone rules the ratio out.
pub fn members_us_needed(etcd: Cost, geobuk: Cost, ratio: f64) -> f64 {
    (etcd.members_us + etcd.load_us) / ratio - geobuk.load_us
}

/// The results file's section: one line per ops/s row both systems ran.
pub fn section(rows: &[Row], c: &Comparison) -> String {
    let mut lines = String::new();
    for row in rows.iter().filter(|r| r.headline == Headline::OpsPerSec) {
        let (Some(em), Some(gm)) = (c.get(row.id, System::Etcd), c.get(row.id, System::Geobuk)) else { continue };
        let (Some(e), Some(g)) = (cost(em), cost(gm)) else { continue };
        let (Some(eh), Some(gh)) = (em.headline, gm.headline) else { continue };
        let needed = row.target.min_ratio.map_or_else(
            || "—".to_string(),
            |r| match members_us_needed(e, g, r) {
                n if n > 0.0 => format!("{n:.0} for {r}× (etcd's ÷ {:.2})", e.members_us / n),
                _ => format!("none: the load generator alone rules out {r}×"),
            },
        );
        let two = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "—".to_string() };
        let _ = writeln!(
            lines,
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {needed} |",
            row.title,
            e.members_us,
            g.members_us,
            two(e.members_us / g.members_us),
            e.load_us,
            g.load_us,
            e.busy * 100.0,
            g.busy * 100.0,
            two(gh / eh),
            ceiling(e, g).map_or_else(|| "—".to_string(), two),
        );
    }
    if lines.is_empty() {
        return String::new();
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "\n## CPU per operation\n\n\
         CPU time per successful operation in each row's reported run: the three members together, and the \
         load generator (its clients, in the `bench compare` process); and how busy the machine's {cores} cores \
         were. Both clusters and the load generator share those cores, so a run that keeps them busy does about \
         `busy cores / (members + load generator)` ops per second, and the load generator's part is the same \
         work against either system: the throughput ratio cannot pass the ratio of the totals (*ceiling*), \
         however little the members spend. *geobuk members needed* is their CPU per op at which the ceiling \
         reaches the row's target, the load generator's cost as measured.\n\n\
         | row | µs/op members etcd | µs/op members geobuk | members etcd/geobuk | µs/op load gen. etcd run \
         | µs/op load gen. geobuk run | busy % etcd run | busy % geobuk run | throughput geobuk/etcd | ceiling \
         | geobuk members needed, µs/op |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n{lines}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::members::Usage;
    use crate::compare::suite::rows;
    use crate::report::Report;

    fn run(system: System, ops: u64, errors: u64, headline: f64, cpu: f64, load: f64) -> Measured {
        let mut report = Report::default();
        report.summary.total_ops = ops;
        report.summary.errors = errors;
        Measured {
            row: "put-1000".into(),
            system,
            repeat: 0,
            headline: Some(headline),
            report: Some(report),
            error: None,
            usage: Usage { cpu_seconds: cpu, load_cpu_seconds: load, machine_busy: 0.9, peak_rss_bytes: 0 },
            quiet: Default::default(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn costs_are_per_successful_op_and_bound_the_ratio() {
        // etcd: 105 µs members + 20 µs load per op; geobuk: 80 + 20.
        let e = cost(&run(System::Etcd, 100_010, 10, 14_000.0, 10.5, 2.0)).unwrap();
        assert!((e.members_us - 105.0).abs() < 1e-9 && (e.load_us - 20.0).abs() < 1e-9, "{e:?}");
        let g = cost(&run(System::Geobuk, 100_000, 0, 17_000.0, 8.0, 2.0)).unwrap();
        assert!((ceiling(e, g).unwrap() - 1.25).abs() < 1e-9);
        // 1.5× needs (105 + 20) / 1.5 − 20 ≈ 63.3 µs of members per op.
        assert!((members_us_needed(e, g, 1.5) - (125.0 / 1.5 - 20.0)).abs() < 1e-9);
        // Members at that cost reach the target exactly.
        let fast = Cost { members_us: members_us_needed(e, g, 1.5), ..g };
        assert!((ceiling(e, fast).unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(cost(&run(System::Etcd, 5, 5, 0.0, 1.0, 1.0)), None, "no successful op");
        let idle = cost(&run(System::Geobuk, 5, 0, 1.0, 0.0, 0.0)).unwrap();
        assert_eq!(ceiling(e, idle), None, "no CPU measured: no ceiling");
    }

    #[test]
    fn the_section_lists_ops_rows_with_both_sides() {
        let rows: Vec<Row> = rows(1.0, 1_000_000).into_iter().filter(|r| r.id == "put-1000").collect();
        let c = Comparison {
            rows: vec!["put-1000".into()],
            repeats: 1,
            measured: vec![
                run(System::Etcd, 100_000, 0, 14_000.0, 10.5, 2.0),
                run(System::Geobuk, 100_000, 0, 17_500.0, 8.0, 2.0),
            ],
            versions: vec![(System::Etcd, "3.4".into()), (System::Geobuk, "0.1".into())],
        };
        let s = section(&rows, &c);
        let line = s.lines().find(|l| l.starts_with("| put, 1,000")).expect("the row's line");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(&cells[2..11], ["105", "80", "1.31", "20", "20", "90", "90", "1.25", "1.25"], "{line}");
        assert_eq!(cells[11], "63 for 1.5× (etcd's ÷ 1.66)", "{line}");
        let only_etcd = Comparison { measured: vec![run(System::Etcd, 1, 0, 1.0, 1.0, 1.0)], ..c };
        assert_eq!(section(&rows, &only_etcd), "");
    }
}
