//! The results of a run: latencies gathered in HDR histograms, summarized into serde structs that
//! print as etcd's `pkg/report` text (so runs compare line by line with etcd's `benchmark`) or as
//! JSON for scripts and for an in-process `compare`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// HDR precision: 3 significant digits keeps every quantile within 0.1% of the true value.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// The percentiles of the text report's "Latency distribution" (etcd's `pctls`).
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Rows of the text histogram between fastest and slowest (etcd's 10 intervals + the slowest).
const HISTOGRAM_INTERVALS: usize = 10;
/// Width of the longest histogram bar, in characters (etcd's 40).
const BAR_WIDTH_MAX: u64 = 40;
/// etcd's bar character, so the output looks the same.
const BAR_CHAR: char = '∎';

/// Collects the latencies and errors of one kind of operation. Each worker owns one (no
/// sharing on the hot path); they are merged when the workers end.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Latencies in microseconds. Auto-resizing, so memory follows the slowest op seen.
    hist: Histogram<u64>,
    /// Exact moments, because HDR quantizes min/max/mean to its precision.
    sum_us: f64,
    sum_sq_us: f64,
    min_us: u64,
    max_us: u64,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        // `new` can fail only for a precision above 5.
        let hist =
            Histogram::new(SIGNIFICANT_DIGITS).unwrap_or_else(|_| unreachable!("3 significant digits are valid"));
        Recorder { hist, sum_us: 0.0, sum_sq_us: 0.0, min_us: u64::MAX, max_us: 0, errors: BTreeMap::new() }
    }

    /// Records one successful op.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Plain `record` resizes the histogram to fit; `saturating_record` would clamp to its
        // current (initially tiny) range instead.
        if self.hist.record(us).is_err() {
            self.hist.saturating_record(us);
        }
        let f = us as f64;
        self.sum_us += f;
        self.sum_sq_us += f * f;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Records one failed op under its error message.
    pub fn record_error(&mut self, message: String) {
        *self.errors.entry(message).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both auto-resize, so `add` cannot run out of range.
        let _ = self.hist.add(&other.hist);
        self.sum_us += other.sum_us;
        self.sum_sq_us += other.sum_sq_us;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        for (message, count) in &other.errors {
            *self.errors.entry(message.clone()).or_default() += count;
        }
    }

    pub fn succeeded(&self) -> u64 {
        self.hist.len()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The summary of everything recorded, over a run that took `elapsed`.
    pub fn summarize(&self, elapsed: Duration) -> Summary {
        let ok = self.succeeded();
        let elapsed_s = elapsed.as_secs_f64();
        Summary {
            total_ops: ok + self.failed(),
            errors: self.failed(),
            error_counts: self.errors.clone(),
            elapsed_s,
            ops_per_sec: if elapsed_s > 0.0 { ok as f64 / elapsed_s } else { 0.0 },
            latency_ms: self.latency(),
            histogram: self.buckets(),
        }
    }

    fn latency(&self) -> Latency {
        if self.hist.is_empty() {
            return Latency::default();
        }
        let n = self.hist.len() as f64;
        let mean = self.sum_us / n;
        // Population stddev, as etcd's report computes it.
        let variance = (self.sum_sq_us / n - mean * mean).max(0.0);
        let q = |p: f64| ms(self.quantile_us(p / 100.0));
        Latency {
            p10: q(10.0),
            p25: q(25.0),
            p50: q(50.0),
            p75: q(75.0),
            p90: q(90.0),
            p95: q(95.0),
            p99: q(99.0),
            p999: q(99.9),
            min: ms(self.min_us),
            max: ms(self.max_us),
            mean: mean / 1000.0,
            stddev: variance.sqrt() / 1000.0,
        }
    }

    /// HDR reports the top of a value's bucket; clamping to the exact extremes keeps a
    /// percentile from exceeding the slowest op.
    fn quantile_us(&self, quantile: f64) -> u64 {
        self.hist.value_at_quantile(quantile).clamp(self.min_us, self.max_us)
    }

    /// etcd's histogram: 10 equal intervals from fastest to slowest; each row counts the ops
    /// above the previous bound up to its own.
    fn buckets(&self) -> Vec<Bucket> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        let (fastest, slowest) = (self.min_us as f64, self.max_us as f64);
        let step = (slowest - fastest) / HISTOGRAM_INTERVALS as f64;
        let mut bounds: Vec<f64> = (0..HISTOGRAM_INTERVALS).map(|i| fastest + step * i as f64).collect();
        bounds.push(slowest);
        let mut counts = vec![0u64; bounds.len()];
        for value in self.hist.iter_recorded() {
            let us = self.representative_us(value.value_iterated_to()) as f64;
            let row = bounds.iter().position(|&b| us <= b).unwrap_or(bounds.len() - 1);
            counts[row] += value.count_at_value();
        }
        bounds.into_iter().zip(counts).map(|(b, count)| Bucket { le_ms: b / 1000.0, count }).collect()
    }
}

impl Recorder {
    /// One value standing for an HDR bucket: the exact fastest or slowest op for their buckets
    /// (so they land in the first and last rows, as in etcd's), else the bucket's middle.
    fn representative_us(&self, bucket_top_us: u64) -> u64 {
        if self.hist.equivalent(bucket_top_us, self.min_us) {
            self.min_us
        } else if self.hist.equivalent(bucket_top_us, self.max_us) {
            self.max_us
        } else {
            self.hist.median_equivalent(bucket_top_us).clamp(self.min_us, self.max_us)
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Latency statistics in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
}

impl Latency {
    /// The values of [`PERCENTILES`], in order.
    pub fn percentiles(&self) -> [f64; 8] {
        [self.p10, self.p25, self.p50, self.p75, self.p90, self.p95, self.p99, self.p999]
    }
}

/// One row of the response-time histogram: ops slower than the previous row, up to `le_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

/// The outcome of one kind of operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Ops that ran: succeeded + failed.
    pub total_ops: u64,
    /// Ops that failed (timeouts included).
    pub errors: u64,
    /// Failed ops by error message.
    pub error_counts: BTreeMap<String, u64>,
    /// From the first op's start to the last op's end.
    pub elapsed_s: f64,
    /// Successful ops per second (etcd's Requests/sec).
    pub ops_per_sec: f64,
    /// Latencies of the successful ops.
    pub latency_ms: Latency,
    pub histogram: Vec<Bucket>,
}

/// What `watch` and `watch-latency` measure besides their puts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchStats {
    pub watchers: u64,
    /// Watch creation: one op per watcher, from its create request to its `created` answer.
    pub watch_create: Summary,
    /// Events the watchers should receive: for each put, one per watcher of its key.
    pub events_expected: u64,
    /// Expected events received (at most `events_expected`).
    pub events_delivered: u64,
    /// Expected events not received before the run gave up waiting (a failed put's events
    /// count here too: it may have been applied, so its events are awaited).
    pub missing_events: u64,
    /// Events beyond a watcher's expected count (another writer on the keys, or duplicates).
    pub unexpected_events: u64,
    /// From the first put's start to the last event's receipt.
    pub delivery_elapsed_s: f64,
    pub events_per_sec: f64,
    /// From a put's send to each watcher's receipt of its event.
    pub delivery_latency_ms: Latency,
    pub delivery_histogram: Vec<Bucket>,
    /// Errors of the watch streams (a stream that failed or was canceled), by message.
    pub stream_errors: BTreeMap<String, u64>,
}

/// Where and with what a run was made, so that results stay comparable later.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub bench_version: String,
    pub build_profile: String,
    pub cpus: usize,
    pub os: String,
    /// The endpoints the connections went to (only the leader's with `--target-leader`).
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// The version the first endpoint's Status reported.
    pub server_version: String,
}

/// The report of one subcommand run. JSON: the put/range/... summary's fields at the top level,
/// the watch fields (when present) beside them, and `env`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub subcommand: String,
    #[serde(flatten)]
    pub summary: Summary,
    #[serde(flatten)]
    pub watch: Option<WatchStats>,
    pub env: Environment,
}

impl Report {
    pub fn to_json(&self) -> String {
        // A struct of plain numbers, strings and string-keyed maps always serializes.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| unreachable!("report serializes: {e}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = &self.env;
        writeln!(
            f,
            "bench {}: {} conns, {} clients to {} (server {}); {} cpus, {} build, bench {}",
            self.subcommand,
            env.conns,
            env.clients,
            env.endpoints.join(","),
            env.server_version,
            env.cpus,
            env.build_profile,
            env.bench_version
        )?;
        match &self.watch {
            None => f.write_str(&summary_text(&self.summary)),
            Some(watch) => {
                writeln!(f, "\nWatch creation summary ({} watchers):", watch.watchers)?;
                f.write_str(&summary_text(&watch.watch_create))?;
                writeln!(f, "\nPut summary:")?;
                f.write_str(&summary_text(&self.summary))?;
                f.write_str(&delivery_text(watch))
            }
        }
    }
}

/// One summary as etcd's `pkg/report` prints it: summary, histogram, percentiles, errors.
pub fn summary_text(s: &Summary) -> String {
    let mut out = String::new();
    let ok = s.total_ops - s.errors;
    if ok > 0 {
        let l = &s.latency_ms;
        out.push_str("\nSummary:\n");
        let _ = writeln!(out, "  Total:\t{:.4} secs.", s.elapsed_s);
        let _ = writeln!(out, "  Slowest:\t{:.4} secs.", l.max / 1000.0);
        let _ = writeln!(out, "  Fastest:\t{:.4} secs.", l.min / 1000.0);
        let _ = writeln!(out, "  Average:\t{:.4} secs.", l.mean / 1000.0);
        let _ = writeln!(out, "  Stddev:\t{:.4} secs.", l.stddev / 1000.0);
        let _ = writeln!(out, "  Requests/sec:\t{:.4}", s.ops_per_sec);
        out.push_str(&histogram_text(&s.histogram));
        out.push_str(&percentiles_text(l));
    }
    if !s.error_counts.is_empty() {
        out.push_str(&errors_text(&s.error_counts));
    }
    out
}

/// The text bars: one row per bucket, the longest `BAR_WIDTH_MAX` wide.
pub fn histogram_text(buckets: &[Bucket]) -> String {
    let mut out = String::from("\nResponse time histogram:\n");
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    for b in buckets {
        let width = (b.count * BAR_WIDTH_MAX).checked_div(max).unwrap_or(0);
        let bar: String = std::iter::repeat_n(BAR_CHAR, width as usize).collect();
        let _ = writeln!(out, "  {:.4} [{}]\t|{}", b.le_ms / 1000.0, b.count, bar);
    }
    out
}

fn percentiles_text(l: &Latency) -> String {
    let mut out = String::from("\nLatency distribution:\n");
    for (p, v) in PERCENTILES.iter().zip(l.percentiles()) {
        let _ = writeln!(out, "  {p}% in {:.4} secs.", v / 1000.0);
    }
    let _ = writeln!(out, "  max in {:.4} secs.", l.max / 1000.0);
    out
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    let mut out = String::from("\nError distribution:\n");
    for (message, count) in errors {
        let _ = writeln!(out, "  [{count}]\t{message}");
    }
    out
}

fn delivery_text(w: &WatchStats) -> String {
    let mut out = String::from("\nWatch events received summary:\n");
    let _ = writeln!(out, "  Events expected:\t{}", w.events_expected);
    let _ = writeln!(out, "  Events delivered:\t{}", w.events_delivered);
    let _ = writeln!(out, "  Events missing:\t{}", w.missing_events);
    if w.unexpected_events > 0 {
        let _ = writeln!(out, "  Events unexpected:\t{}", w.unexpected_events);
    }
    let _ = writeln!(out, "  Total:\t{:.4} secs.", w.delivery_elapsed_s);
    let _ = writeln!(out, "  Events/sec:\t{:.4}", w.events_per_sec);
    if w.events_delivered > 0 {
        let l = &w.delivery_latency_ms;
        out.push_str("\nPut-to-delivery latency:\n");
        let _ = writeln!(out, "  Slowest:\t{:.4} secs.", l.max / 1000.0);
        let _ = writeln!(out, "  Fastest:\t{:.4} secs.", l.min / 1000.0);
        let _ = writeln!(out, "  Average:\t{:.4} secs.", l.mean / 1000.0);
        let _ = writeln!(out, "  Stddev:\t{:.4} secs.", l.stddev / 1000.0);
        out.push_str(&histogram_text(&w.delivery_histogram));
        out.push_str(&percentiles_text(l));
    }
    if !w.stream_errors.is_empty() {
        out.push_str(&errors_text(&w.stream_errors));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder_1_to_1000_us() -> Recorder {
        let mut r = Recorder::new();
        for us in 1..=1000 {
            r.record(Duration::from_micros(us));
        }
        r
    }

    /// Within HDR's 3-significant-digit precision (one part in a thousand), or one sample of
    /// 1..=1000 µs away (quantile conventions differ by one rank: etcd's p99.9 of 1000 samples
    /// is the 1000th too).
    fn close(actual_ms: f64, expected_ms: f64) -> bool {
        (actual_ms - expected_ms).abs() <= (expected_ms * 1e-3).max(0.001) + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_run() {
        let l = recorder_1_to_1000_us().summarize(Duration::from_secs(1)).latency_ms;
        let expected = [0.100, 0.250, 0.500, 0.750, 0.900, 0.950, 0.990, 0.999];
        for (p, (got, want)) in PERCENTILES.iter().zip(l.percentiles().iter().zip(expected)) {
            assert!(close(*got, want), "p{p}: {got} ms, want {want} ms");
        }
        assert_eq!(l.min, 0.001);
        assert_eq!(l.max, 1.0);
        assert!((l.mean - 0.5005).abs() < 1e-9, "mean {}", l.mean);
        // Population stddev of 1..=1000 µs: sqrt((1000² - 1) / 12) µs.
        assert!((l.stddev - (999_999.0f64 / 12.0).sqrt() / 1000.0).abs() < 1e-9, "stddev {}", l.stddev);
    }

    #[test]
    fn percentiles_never_exceed_the_slowest_op() {
        let mut r = Recorder::new();
        r.record(Duration::from_micros(123_456));
        let l = r.summarize(Duration::from_secs(1)).latency_ms;
        assert_eq!(l.p999, 123.456);
        assert_eq!(l.p10, 123.456);
        assert_eq!(l.max, 123.456);
    }

    #[test]
    fn slow_ops_land_in_the_top_rows_not_clamped() {
        let mut r = Recorder::new();
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        r.record(Duration::from_secs(3));
        let s = r.summarize(Duration::from_secs(1));
        assert!(close(s.latency_ms.p50, 51.0), "p50 {}", s.latency_ms.p50);
        assert!(close(s.latency_ms.p99, 100.0), "p99 {}", s.latency_ms.p99);
        assert!(close(s.latency_ms.p999, 3000.0), "p99.9 {}", s.latency_ms.p999);
        assert_eq!(s.histogram.last().map(|b| b.count), Some(1), "{:?}", s.histogram);
        assert_eq!(s.histogram[0].count + s.histogram[1].count, 100);
    }

    #[test]
    fn summary_counts_errors_apart_from_latencies() {
        let mut r = recorder_1_to_1000_us();
        r.record_error("Unavailable: no leader".into());
        r.record_error("Unavailable: no leader".into());
        r.record_error("timeout".into());
        let s = r.summarize(Duration::from_secs(2));
        assert_eq!(s.total_ops, 1003);
        assert_eq!(s.errors, 3);
        assert_eq!(s.error_counts["Unavailable: no leader"], 2);
        assert_eq!(s.ops_per_sec, 500.0);
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Recorder::new();
        a.record(Duration::from_millis(5));
        a.record_error("x".into());
        let mut b = Recorder::new();
        b.record(Duration::from_micros(10));
        b.record(Duration::from_secs(2));
        b.record_error("x".into());
        a.merge(&b);
        let s = a.summarize(Duration::from_secs(1));
        assert_eq!((s.total_ops, s.errors), (5, 2));
        assert_eq!(s.latency_ms.min, 0.010);
        assert_eq!(s.latency_ms.max, 2000.0);
    }

    #[test]
    fn histogram_has_eleven_rows_summing_to_the_ops() {
        let s = recorder_1_to_1000_us().summarize(Duration::from_secs(1));
        assert_eq!(s.histogram.len(), HISTOGRAM_INTERVALS + 1);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!(s.histogram[0].le_ms, 0.001);
        assert_eq!(s.histogram[HISTOGRAM_INTERVALS].le_ms, 1.0);
        // The first row holds only the fastest op; the others about a tenth each.
        assert_eq!(s.histogram[0].count, 1);
        for b in &s.histogram[1..] {
            assert!((95..=105).contains(&b.count), "{b:?}");
        }
    }

    #[test]
    fn fastest_and_slowest_land_in_the_first_and_last_rows() {
        // Above 2048 µs HDR buckets are wider than 1 µs: the extremes share them with others.
        let mut r = Recorder::new();
        for us in [8_300, 9_000, 20_000, 54_200] {
            r.record(Duration::from_micros(us));
        }
        let h = r.summarize(Duration::from_secs(1)).histogram;
        assert_eq!((h[0].le_ms, h[0].count), (8.3, 1), "{h:?}");
        assert_eq!((h[10].le_ms, h[10].count), (54.2, 1), "{h:?}");
        assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 4);
    }

    #[test]
    fn histogram_text_scales_bars_to_the_largest_row() {
        let buckets =
            vec![Bucket { le_ms: 1.0, count: 10 }, Bucket { le_ms: 2.0, count: 20 }, Bucket { le_ms: 3.0, count: 0 }];
        let text = histogram_text(&buckets);
        let bars = |n: usize| BAR_CHAR.to_string().repeat(n);
        assert_eq!(
            text,
            format!(
                "\nResponse time histogram:\n  0.0010 [10]\t|{}\n  0.0020 [20]\t|{}\n  0.0030 [0]\t|\n",
                bars(20),
                bars(40)
            )
        );
    }

    #[test]
    fn summary_text_has_etcds_lines() {
        let mut r = recorder_1_to_1000_us();
        r.record_error("timeout".into());
        let text = summary_text(&r.summarize(Duration::from_millis(1500)));
        for line in [
            "Summary:\n",
            "  Total:\t1.5000 secs.\n",
            "  Slowest:\t0.0010 secs.\n",
            "  Fastest:\t0.0000 secs.\n",
            "  Requests/sec:\t666.6667\n",
            "Response time histogram:\n",
            "Latency distribution:\n",
            "  10% in 0.0001 secs.\n",
            "  99.9% in 0.0010 secs.\n",
            "Error distribution:\n  [1]\ttimeout\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn an_all_failed_run_prints_only_errors() {
        let mut r = Recorder::new();
        r.record_error("refused".into());
        let text = summary_text(&r.summarize(Duration::from_secs(1)));
        assert_eq!(text, "\nError distribution:\n  [1]\trefused\n");
    }

    #[test]
    fn json_shape_has_the_documented_fields() {
        let report = Report {
            subcommand: "put".into(),
            summary: recorder_1_to_1000_us().summarize(Duration::from_secs(1)),
            watch: None,
            env: Environment::default(),
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["subcommand"], "put");
        assert_eq!(v["total_ops"], 1000);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["elapsed_s"], 1.0);
        assert_eq!(v["ops_per_sec"], 1000.0);
        for field in ["p50", "p90", "p99", "p999", "max", "mean", "stddev"] {
            assert!(v["latency_ms"][field].is_f64(), "latency_ms.{field} in {v}");
        }
        assert!(v.get("events_delivered").is_none(), "no watch fields without a watch: {v}");
        assert!(v["env"]["cpus"].is_u64());
    }

    #[test]
    fn json_of_a_watch_run_has_the_watch_fields_at_the_top() {
        let report = Report {
            subcommand: "watch".into(),
            watch: Some(WatchStats {
                events_expected: 7,
                events_delivered: 5,
                missing_events: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = report.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["events_delivered"], 5);
        assert_eq!(v["missing_events"], 2);
        assert!(v["events_per_sec"].is_f64());
        assert!(v["delivery_latency_ms"]["p99"].is_f64());
        assert!(v["watch_create"]["latency_ms"]["p50"].is_f64());
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
