//! The throughput and latency plots (SVG via plotters), both shaded by the fault windows, so an
//! unavailability window or a latency spike can be matched with the fault that caused it.

use std::collections::HashMap;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{FAULT_KINDS, Run, fault_kind_index, fault_rgb, outcome_name, outcome_rgb, secs_f64};
use crate::history::{OpType, Pair};

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 440;
const LEGEND_WIDTH: u32 = 240;
/// Coarser buckets for long runs keep the plots readable (and the SVG small).
const MAX_BUCKETS: u64 = 600;
/// Beyond this the latency SVG gets too heavy for a browser; the rest is sampled uniformly.
pub(crate) const MAX_LATENCY_POINTS: usize = 20_000;
/// Distinct `f` values drawn as their own throughput lines; the rest are summed as "other".
const MAX_F_SERIES: usize = 6;
const OUTCOMES: [OpType; 3] = [OpType::Ok, OpType::Fail, OpType::Info];

type SvgArea<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// The latency plot and how many of its ops were drawn (the report says when it sampled).
pub(crate) struct LatencyPlot {
    pub svg: String,
    pub drawn: usize,
    pub total: usize,
}

/// Time buckets of whole seconds, widened for long runs so there are at most ~600.
#[derive(Debug)]
pub(crate) struct Buckets {
    pub width_ns: u64,
    pub count: usize,
}

impl Buckets {
    pub fn new(end_ns: u64) -> Buckets {
        let end_s = end_ns.div_ceil(1_000_000_000).max(1);
        let width_ns = end_s.div_ceil(MAX_BUCKETS).saturating_mul(1_000_000_000);
        let count = usize::try_from(end_ns / width_ns).unwrap_or(usize::MAX - 1).saturating_add(1);
        Buckets { width_ns, count }
    }

    pub fn of(&self, t: u64) -> usize {
        usize::try_from(t / self.width_ns).unwrap_or(usize::MAX).min(self.count - 1)
    }

    fn width_s(&self) -> f64 {
        secs_f64(self.width_ns)
    }

    fn mid_s(&self, i: usize, x_max: f64) -> f64 {
        ((i as f64 + 0.5) * self.width_s()).min(x_max)
    }

    /// How much of bucket `i` the run covers: the last one is usually partial.
    fn covered_ns(&self, i: usize, end_ns: u64) -> u64 {
        let start = (i as u64).saturating_mul(self.width_ns);
        end_ns.saturating_sub(start).min(self.width_ns)
    }
}

/// Marker shapes that tell the `f` lines of one outcome apart (besides their shade).
#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Cross,
    Square,
}

const MARKERS: [Marker; 4] = [Marker::Circle, Marker::Triangle, Marker::Cross, Marker::Square];

enum Swatch {
    Line(RGBColor, Option<Marker>),
    Band(RGBColor),
    Rule(RGBColor),
    Dot(RGBColor),
    Top(RGBColor),
}

struct LegendEntry {
    label: String,
    swatch: Swatch,
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// The `i`-th shade of an outcome colour: alternately darker and lighter.
fn shade(base: (u8, u8, u8), i: usize) -> RGBColor {
    const FACTORS: [f64; 7] = [0.0, -0.45, 0.45, -0.25, 0.65, -0.65, 0.25];
    let f = FACTORS[i % FACTORS.len()];
    let mix = |c: u8| {
        let c = f64::from(c);
        let v = if f >= 0.0 { c + (255.0 - c) * f } else { c * (1.0 + f) };
        v.round().clamp(0.0, 255.0) as u8
    };
    RGBColor(mix(base.0), mix(base.1), mix(base.2))
}

/// SVG labels come from the history: plotters escapes markup, but control characters are not
/// valid XML even escaped, and long labels would run out of the legend.
fn label_text(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    super::clip(&clean, 26)
}

fn axis_secs(v: &f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

fn axis_ms(v: &f64) -> String {
    if *v >= 1.0 || *v <= 0.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-v.log10()).ceil().clamp(0.0, 9.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// The right end of both plots' x axes, in seconds.
fn x_max(run: &Run) -> f64 {
    secs_f64(run.end_ns).max(1.0)
}

/// Completed ops per second, one line per (f, outcome).
pub(crate) fn throughput_svg(run: &Run) -> anyhow::Result<String> {
    let buckets = Buckets::new(run.end_ns);
    let x_max = x_max(run);
    let series = throughput_series(run, &buckets, x_max);
    let peak = series.iter().flat_map(|s| s.points.iter()).map(|p| p.1).fold(0.0, f64::max);
    let y_max = (peak * 1.15).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let caption = format!("Throughput (completed client ops/s, {} s buckets)", axis_secs(&buckets.width_s()));
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("ops/s")
            .x_label_formatter(&axis_secs)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let faults = draw_faults(&mut chart, run, x_max, (0.0, y_max))?;
        let mut legend = Vec::new();
        for s in &series {
            let points = &s.points;
            chart.draw_series(LineSeries::new(points.iter().copied(), s.color.stroke_width(2)))?;
            // A marker on every point would bury the lines; ~40 per line is enough to tell them apart.
            let step = points.len().div_ceil(40).max(1);
            let sparse: Vec<(f64, f64)> = points.iter().copied().step_by(step).collect();
            draw_markers(&mut chart, &sparse, s.marker, s.color.filled())?;
            legend.push(LegendEntry { label: s.label.clone(), swatch: Swatch::Line(s.color, Some(s.marker)) });
        }
        legend.extend(faults);
        draw_legend(&legend_area, &legend)?;
        root.present()?;
    }
    Ok(svg)
}

struct Series {
    label: String,
    color: RGBColor,
    marker: Marker,
    /// (bucket middle s, ops/s).
    points: Vec<(f64, f64)>,
}

/// Completions bucketed by time, per (f, outcome); `f`s beyond the most frequent few are summed.
fn throughput_series(run: &Run, buckets: &Buckets, x_max: f64) -> Vec<Series> {
    let completed: Vec<&Pair> =
        run.pairs.iter().filter(|p| Run::has_completion_record(p) && p.invoke.time != u64::MAX).collect();
    let mut per_f: HashMap<&str, u64> = HashMap::new();
    for p in &completed {
        *per_f.entry(p.invoke.f.as_str()).or_default() += 1;
    }
    let mut fs: Vec<(&str, u64)> = per_f.into_iter().collect();
    fs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: Vec<&str> = fs.iter().take(MAX_F_SERIES).map(|(f, _)| *f).collect();
    let f_slot = |f: &str| named.iter().position(|n| *n == f).unwrap_or(named.len());
    let slots = named.len() + usize::from(fs.len() > named.len());
    let mut counts = vec![vec![0u64; buckets.count]; slots * OUTCOMES.len()];
    for p in &completed {
        let o = OUTCOMES.iter().position(|k| *k == p.kind()).unwrap_or(2);
        counts[f_slot(&p.invoke.f) * OUTCOMES.len() + o][buckets.of(p.complete.time)] += 1;
    }
    let mut out = Vec::new();
    for (i, c) in counts.into_iter().enumerate() {
        let (slot, o) = (i / OUTCOMES.len(), i % OUTCOMES.len());
        if c.iter().all(|n| *n == 0) {
            continue;
        }
        let f = named.get(slot).map_or("other".to_string(), |f| label_text(f));
        out.push(Series {
            label: format!("{f} {}", outcome_name(OUTCOMES[o])),
            color: shade(outcome_rgb(OUTCOMES[o]), slot),
            marker: MARKERS[slot % MARKERS.len()],
            points: rates(&c, buckets, run.end_ns, x_max),
        });
    }
    out
}

/// Counts to rates over the part of each bucket the run covers. A last bucket covering under a
/// tenth of its width is left out: its rate would be noise (or a misleading drop to zero).
fn rates(counts: &[u64], buckets: &Buckets, end_ns: u64, x_max: f64) -> Vec<(f64, f64)> {
    counts
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let covered = buckets.covered_ns(i, end_ns);
            let full = i + 1 < buckets.count || covered.saturating_mul(10) >= buckets.width_ns;
            (full && covered > 0).then(|| (buckets.mid_s(i, x_max), *c as f64 / secs_f64(covered)))
        })
        .collect()
}

/// One client op on the latency plot: `ms` is `None` when it never completed.
struct LatencyPoint {
    x: f64,
    ms: Option<f64>,
    kind: OpType,
}

/// Every op's latency by invocation time (log y), plus p50/p99 lines of ok ops.
pub(crate) fn latency_svg(run: &Run) -> anyhow::Result<LatencyPlot> {
    let points = latency_points(run);
    let (y_lo, y_hi) = log_range(points.iter().filter_map(|p| p.ms));
    let x_max = x_max(run);
    let buckets = Buckets::new(run.end_ns);
    let quantiles = ok_quantiles(run, &buckets);
    let sample = sample_indices(points.len(), MAX_LATENCY_POINTS);
    let drawn = sample.len();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut caption = "Latency (ms, log scale) by invocation time".to_string();
        if drawn < points.len() {
            caption = format!("{caption}: {drawn} of {} ops drawn (uniform sample)", points.len());
        }
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("latency (ms)")
            .x_label_formatter(&axis_secs)
            .y_label_formatter(&axis_ms)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let mut legend = draw_faults(&mut chart, run, x_max, (y_lo, y_hi))?;
        let chosen: Vec<&LatencyPoint> = sample.iter().filter_map(|i| points.get(*i)).collect();
        let mut entries = draw_latency_points(&mut chart, &chosen, (y_lo, y_hi))?;
        entries.extend(draw_quantiles(&mut chart, &quantiles, &buckets, x_max, (y_lo, y_hi))?);
        entries.append(&mut legend);
        draw_legend(&legend_area, &entries)?;
        root.present()?;
    }
    Ok(LatencyPlot { svg, drawn, total: points.len() })
}

fn latency_points(run: &Run) -> Vec<LatencyPoint> {
    run.pairs
        .iter()
        .filter(|p| p.invoke.time != u64::MAX)
        .map(|p| LatencyPoint {
            x: secs_f64(p.invoke.time),
            ms: run.settled_end(p).map(|end| latency_ms(p, end)),
            kind: p.kind(),
        })
        .collect()
}

fn latency_ms(pair: &Pair, end: u64) -> f64 {
    end.saturating_sub(pair.invoke.time) as f64 / 1e6
}

/// A decade-aligned log range covering the latencies, with headroom at the top where the ops that
/// never completed are drawn. Always finite, positive and non-empty (plotters' log axis loops
/// forever otherwise).
fn log_range(latencies: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = latencies.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.1, 1000.0);
    }
    let lo = lo.max(1e-3);
    let bottom = 10f64.powf(lo.log10().floor());
    let top = 10f64.powf((hi.max(lo) * 1.3).log10().ceil());
    if top.is_finite() && top > bottom { (bottom, top) } else { (bottom, bottom * 10.0) }
}

/// `min(n, cap)` indices spread evenly over `0..n`.
pub(crate) fn sample_indices(n: usize, cap: usize) -> Vec<usize> {
    if n <= cap {
        return (0..n).collect();
    }
    (0..cap).map(|k| usize::try_from(k as u128 * n as u128 / cap as u128).unwrap_or(n - 1)).collect()
}

/// p50 and p99 of ok latencies per invocation bucket (`None` for a bucket without ok ops).
fn ok_quantiles(run: &Run, buckets: &Buckets) -> Vec<Option<(f64, f64)>> {
    let mut per_bucket: Vec<Vec<f64>> = vec![Vec::new(); buckets.count];
    for p in run.pairs.iter().filter(|p| p.kind() == OpType::Ok && p.invoke.time != u64::MAX) {
        if let Some(end) = run.settled_end(p) {
            per_bucket[buckets.of(p.invoke.time)].push(latency_ms(p, end));
        }
    }
    per_bucket
        .into_iter()
        .map(|mut v| {
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let at = |q: usize| v[(v.len() - 1) * q / 100];
            Some((at(50), at(99)))
        })
        .collect()
}

fn draw_latency_points(
    chart: &mut Chart<'_, '_, LogCoord<f64>>,
    points: &[&LatencyPoint],
    (y_lo, y_hi): (f64, f64),
) -> anyhow::Result<Vec<LegendEntry>> {
    let mut legend = Vec::new();
    for kind in OUTCOMES {
        let color = rgb(outcome_rgb(kind));
        let settled = points.iter().filter(|p| p.kind == kind).filter_map(|p| p.ms.map(|ms| (p.x, ms)));
        let style = color.mix(0.55).filled();
        chart.draw_series(settled.map(|(x, ms)| Circle::new((x, ms.clamp(y_lo, y_hi)), 2, style)))?;
        legend.push(LegendEntry { label: outcome_name(kind).to_string(), swatch: Swatch::Dot(color) });
    }
    let info = rgb(outcome_rgb(OpType::Info));
    let open = points.iter().filter(|p| p.ms.is_none()).map(|p| TriangleMarker::new((p.x, y_hi), 4, info.filled()));
    chart.draw_series(open)?;
    legend.push(LegendEntry { label: "info, never completed (top)".to_string(), swatch: Swatch::Top(info) });
    Ok(legend)
}

fn draw_quantiles(
    chart: &mut Chart<'_, '_, LogCoord<f64>>,
    quantiles: &[Option<(f64, f64)>],
    buckets: &Buckets,
    x_max: f64,
    (y_lo, y_hi): (f64, f64),
) -> anyhow::Result<Vec<LegendEntry>> {
    let lines = [("ok p50", RGBColor(10, 90, 30), 0usize), ("ok p99", RGBColor(30, 50, 150), 1)];
    for (_, color, which) in lines {
        // Empty buckets break the line instead of bridging a gap with made-up values.
        let mut segment: Vec<(f64, f64)> = Vec::new();
        for (i, q) in quantiles.iter().enumerate() {
            match q {
                Some(q) => {
                    let v = if which == 0 { q.0 } else { q.1 };
                    segment.push((buckets.mid_s(i, x_max), v.clamp(y_lo, y_hi)));
                }
                None => flush_segment(chart, &mut segment, color)?,
            }
        }
        flush_segment(chart, &mut segment, color)?;
    }
    Ok(lines
        .iter()
        .map(|(label, color, _)| LegendEntry { label: label.to_string(), swatch: Swatch::Line(*color, None) })
        .collect())
}

fn flush_segment(
    chart: &mut Chart<'_, '_, LogCoord<f64>>,
    segment: &mut Vec<(f64, f64)>,
    color: RGBColor,
) -> anyhow::Result<()> {
    if segment.len() == 1 {
        chart.draw_series(segment.iter().map(|p| Circle::new(*p, 2, color.filled())))?;
    } else if segment.len() > 1 {
        chart.draw_series(LineSeries::new(segment.iter().copied(), color.stroke_width(2)))?;
    }
    segment.clear();
    Ok(())
}

/// Shades every fault window (a vertical rule for an instantaneous one) and returns the legend
/// entries for the kinds present.
fn draw_faults<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, Y>,
    run: &Run,
    x_max: f64,
    (y_lo, y_hi): (f64, f64),
) -> anyhow::Result<Vec<LegendEntry>> {
    let mut seen = [(false, false); FAULT_KINDS.len() + 1];
    let mut others: Vec<&str> = Vec::new();
    for fault in run.faults.iter().filter(|f| f.start != u64::MAX) {
        let kind = fault_kind_index(&fault.fault);
        if kind == FAULT_KINDS.len() && !others.contains(&fault.fault.as_str()) {
            others.push(&fault.fault);
        }
        let color = rgb(fault_rgb(kind));
        let x0 = secs_f64(fault.start).min(x_max);
        let x1 = match fault.end {
            None | Some(u64::MAX) => x_max,
            Some(end) => secs_f64(end.max(fault.start)).min(x_max),
        };
        if fault.end.is_some_and(|end| end <= fault.start) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x0, y_lo), (x0, y_hi)],
                color.mix(0.8).stroke_width(2),
            )))?;
            seen[kind].1 = true;
        } else {
            chart.draw_series(std::iter::once(Rectangle::new([(x0, y_lo), (x1, y_hi)], color.mix(0.18).filled())))?;
            seen[kind].0 = true;
        }
    }
    let mut legend = Vec::new();
    for (kind, (band, rule)) in seen.iter().enumerate() {
        let color = rgb(fault_rgb(kind));
        let name = FAULT_KINDS
            .get(kind)
            .map_or_else(|| label_text(&format!("other: {}", others.join(", "))), |k| k.to_string());
        if *band {
            legend.push(LegendEntry { label: name.clone(), swatch: Swatch::Band(color) });
        }
        if *rule {
            legend.push(LegendEntry { label: format!("{name} (instant)"), swatch: Swatch::Rule(color) });
        }
    }
    Ok(legend)
}

fn draw_markers<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, Y>,
    points: &[(f64, f64)],
    marker: Marker,
    style: ShapeStyle,
) -> anyhow::Result<()> {
    match marker {
        Marker::Circle => chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, style)))?,
        Marker::Triangle => chart.draw_series(points.iter().map(|p| TriangleMarker::new(*p, 4, style)))?,
        Marker::Cross => chart.draw_series(points.iter().map(|p| Cross::new(*p, 3, style.stroke_width(2))))?,
        Marker::Square => chart
            .draw_series(points.iter().map(|p| EmptyElement::at(*p) + Rectangle::new([(-3, -3), (3, 3)], style)))?,
    };
    Ok(())
}

/// The legend, drawn by hand in its own strip so it never hides data.
fn draw_legend(area: &SvgArea<'_>, entries: &[LegendEntry]) -> anyhow::Result<()> {
    const ROW: i32 = 20;
    let max_rows = usize::try_from((HEIGHT as i32 - 30) / ROW).unwrap_or(0);
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, entry) in entries.iter().enumerate().take(max_rows) {
        let y = 24 + ROW * i32::try_from(i).unwrap_or(0);
        let (x0, x1) = (8, 34);
        let label = if i + 1 == max_rows && entries.len() > max_rows { "…".to_string() } else { entry.label.clone() };
        match entry.swatch {
            Swatch::Line(c, marker) => {
                area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(2)))?;
                if let Some(m) = marker {
                    legend_marker(area, (21, y), m, c.filled())?;
                }
            }
            Swatch::Band(c) => area.draw(&Rectangle::new([(x0, y - 7), (x1, y + 7)], c.mix(0.3).filled()))?,
            Swatch::Rule(c) => area.draw(&PathElement::new(vec![(21, y - 8), (21, y + 8)], c.stroke_width(2)))?,
            Swatch::Dot(c) => area.draw(&Circle::new((21, y), 3, c.filled()))?,
            Swatch::Top(c) => area.draw(&TriangleMarker::new((21, y), 5, c.filled()))?,
        }
        area.draw(&Text::new(label, (x1 + 8, y - 7), font.clone()))?;
    }
    Ok(())
}

fn legend_marker(area: &SvgArea<'_>, at: (i32, i32), marker: Marker, style: ShapeStyle) -> anyhow::Result<()> {
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 3, style))?,
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 4, style))?,
        Marker::Cross => area.draw(&Cross::new(at, 3, style.stroke_width(2)))?,
        Marker::Square => area.draw(&Rectangle::new([(at.0 - 3, at.1 - 3), (at.0 + 3, at.1 + 3)], style))?,
    }
    Ok(())
}
