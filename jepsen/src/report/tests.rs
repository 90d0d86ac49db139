//! Report tests: a generated run with faults and an anomaly must render every part, and odd
//! inputs (empty, info-only, times at `u64::MAX`, markup everywhere, huge) must not panic.

use serde_json::json;

use super::plots::{Buckets, MAX_LATENCY_POINTS, sample_indices};
use super::*;
use crate::checker::Anomaly;
use crate::history::{Process, reindex};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const SCRIPT_KEY: &str = "<script>alert(1)</script>";
const REPRODUCE: &str =
    "cargo run -p jepsen -- test --workload register --nemesis kill,partition --time-limit 30 --seed 7";

/// xorshift64: deterministic, no seed plumbing.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn nemesis(f: &str, time: u64) -> Op {
    let mut op = Op::invoke(0, f, None, json!(["n1"]), time);
    op.process = Process::Nemesis;
    op.kind = OpType::Info;
    op
}

fn fault(fault: &str, detail: &str, target: &str, start: u64, end: Option<u64>) -> FaultWindow {
    FaultWindow {
        fault: fault.to_string(),
        detail: detail.to_string(),
        targets: vec![target.to_string()],
        start,
        end,
        outcome: "installed".to_string(),
    }
}

fn faults() -> Vec<FaultWindow> {
    vec![
        fault("kill", "one", "n1", 5 * SEC, Some(9 * SEC)),
        fault("partition", "isolate-leader", "n2", 15 * SEC, Some(22 * SEC)),
        fault("clock", "bump +7200s", "n3", 25 * SEC, Some(25 * SEC)),
        fault("pause", "leader", "n2", 28 * SEC, None),
    ]
}

/// One worker's op; an `info` moves the worker to a new process, as the recorder's workers do.
fn worker_op(rng: &mut Rng, worker: u64, process: u64, t: u64) -> (Op, Op) {
    let f = ["read", "write", "cas"][rng.below(3) as usize];
    let key = if worker == 0 && (12 * SEC..12 * SEC + 500 * MS).contains(&t) {
        SCRIPT_KEY.to_string()
    } else {
        format!("r{}", rng.below(5))
    };
    let in_fault = (5 * SEC..9 * SEC).contains(&t) || (15 * SEC..22 * SEC).contains(&t);
    let roll = rng.below(100);
    let (kind, latency) = if in_fault && roll < 25 {
        (OpType::Info, 500 * MS)
    } else if roll < 3 {
        (OpType::Fail, MS + rng.below(5 * MS))
    } else if roll < 5 {
        (OpType::Info, 200 * MS)
    } else {
        (OpType::Ok, MS + rng.below(150 * MS))
    };
    let invoke = Op::invoke(process, f, Some(&key), json!(rng.below(1000)), t);
    let mut done = invoke.complete(kind, t + latency);
    match kind {
        OpType::Ok => done = done.with_rev(t as i64 / 1000).with_hrev(t as i64 / 1000),
        OpType::Fail => done.error = Some("etcdserver: <no leader>".to_string()),
        _ => done.error = Some("deadline exceeded".to_string()),
    }
    (invoke, done)
}

/// ~3,500 register ops from 10 workers over 30 s, with nemesis records and one op never completed.
fn generated_history() -> Vec<Op> {
    let mut rng = Rng(7);
    let mut ops = Vec::new();
    for worker in 0..10u64 {
        let (mut process, mut t) = (worker, rng.below(50 * MS) + 1);
        while t < 30 * SEC {
            let (invoke, done) = worker_op(&mut rng, worker, process, t);
            t = done.time + rng.below(20 * MS) + 1;
            if done.kind == OpType::Info {
                process += 100;
            }
            ops.push(invoke);
            ops.push(done);
        }
    }
    for (f, time) in [("start-kill", 5), ("stop-kill", 9), ("start-partition", 15), ("stop-partition", 22)] {
        ops.push(nemesis(f, time * SEC));
    }
    ops.push(Op::invoke(999, "write", Some("r0"), json!(1), 29_900 * MS));
    ops.sort_by_key(|op| op.time);
    reindex(&mut ops);
    ops
}

fn summary(valid: Validity) -> RunSummary {
    RunSummary {
        title: "register, nemesis kill,partition, 30 s, seed 7".to_string(),
        reproduce: REPRODUCE.to_string(),
        valid,
        extra: json!({"ops": 3500, "ok": 3300, "version": "geobuk 0.1 <dev>"}),
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_svg(svg: &str, elements: &[&str]) {
    let svg = svg.trim();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.ends_with("</svg>"));
    for element in elements {
        assert!(svg.contains(&format!("<{element}")), "no <{element}> in the SVG");
    }
}

#[test]
fn report_of_a_generated_run_has_plots_faults_anomaly_and_timeline() {
    let history = generated_history();
    let all = pairs(&history);
    assert!(all.len() > 2_000, "{}", all.len());
    let blamed = all.iter().find(|p| p.invoke.key.as_deref() == Some(SCRIPT_KEY)).expect("the markup key is used");
    let near = |p: &&Pair| p.invoke.time.abs_diff(blamed.invoke.time) < 300 * MS;
    let other = all.iter().filter(near).find(|p| p.kind() == OpType::Ok && p.invoke.process != blamed.invoke.process);
    let other = other.expect("a concurrent ok op");
    let anomaly = Anomaly {
        kind: "nonlinearizable".to_string(),
        explanation: "read of a value <never> written".to_string(),
        ops: vec![blamed.invoke.clone(), blamed.complete.clone(), other.complete.clone()],
        details: json!({"key": SCRIPT_KEY, "state": [1, 2]}),
    };
    let results = vec![
        CheckResult::from_anomalies("linearizable", vec![anomaly], json!({"keys": 6})),
        CheckResult::from_anomalies("revisions", vec![], json!({})),
    ];
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &history, &faults(), &results, &summary(Validity::Invalid)).unwrap();

    assert_svg(&read(dir.path(), "throughput.svg"), &["rect", "polyline", "text"]);
    assert_svg(&read(dir.path(), "latency.svg"), &["rect", "circle", "polyline", "polygon"]);
    let html = read(dir.path(), "report.html");
    assert!(html.contains("<div class=\"verdict v-invalid\">INVALID</div>"));
    assert!(html.contains(REPRODUCE));
    assert_eq!(html.matches("class=\"fault-row\"").count(), 4);
    for text in ["isolate-leader", "bump +7200s", "instant", "active at the end", "geobuk 0.1 &lt;dev&gt;"] {
        assert!(html.contains(text), "missing {text}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script"), "raw markup from the history");
    assert!(html.contains("<svg"), "plots are inline");
    for pair in [blamed, other] {
        let marked = format!("anomaly\" data-index=\"{}\"", pair.invoke.index);
        assert!(html.contains(&marked), "no highlighted timeline box for op {}", pair.invoke.index);
    }
    let boxes = html.matches("data-index=").count();
    assert!(boxes > 100 && boxes <= timeline::MAX_OPS, "{boxes} timeline boxes");
}

#[test]
fn report_of_an_empty_run_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let summary = RunSummary { extra: serde_json::Value::Null, ..summary(Validity::Unknown) };
    write_report(dir.path(), &[], &[], &[], &summary).unwrap();
    assert_svg(&read(dir.path(), "throughput.svg"), &["rect"]);
    assert_svg(&read(dir.path(), "latency.svg"), &["rect"]);
    let html = read(dir.path(), "report.html");
    assert!(html.contains("UNKNOWN"));
    assert!(html.contains("No anomaly refers to client ops"));
}

/// Completions without invokes, times at `u64::MAX`, inverted times, control characters and
/// markup in every string, odd fault windows, anomalies pointing at nemesis records.
#[test]
fn report_survives_odd_inputs() {
    let mut history = vec![
        Op::invoke(1, "read", Some("k"), json!(null), 10).complete(OpType::Info, 20),
        nemesis("start-<img src=x>", u64::MAX),
        Op::invoke(2, "<img src=x>", Some("\u{0}\u{7}<img>"), json!("\u{1}"), u64::MAX),
        Op::invoke(3, "write", Some("k"), json!(1), 500),
        Op::invoke(3, "write", Some("k"), json!(1), 500).complete(OpType::Ok, 400),
        Op::invoke(4, "write", Some("k"), json!(2), 600),
        Op::invoke(4, "write", Some("k"), json!(2), 600).complete(OpType::Ok, u64::MAX),
    ];
    reindex(&mut history);
    let odd_faults = vec![
        fault("disk", "<img src=x>\u{0}", "n1", u64::MAX, None),
        fault("kill", "inverted", "n1", 700, Some(100)),
        fault("partition", "forever", "n2", 100, Some(u64::MAX)),
        fault("member", "", "", 0, None),
    ];
    let anomaly = Anomaly {
        kind: "<img src=x>".to_string(),
        explanation: String::new(),
        ops: history.clone(),
        details: json!({"\u{0}": "<img src=x>"}),
    };
    let results = vec![CheckResult {
        checker: "<img src=x>".to_string(),
        valid: Validity::Unknown,
        anomalies: vec![anomaly.clone(), anomaly],
        stats: json!("x".repeat(100_000)),
    }];
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &history, &odd_faults, &results, &summary(Validity::Unknown)).unwrap();
    for name in ["report.html", "throughput.svg", "latency.svg"] {
        let text = read(dir.path(), name);
        assert!(!text.contains("<img"), "raw markup in {name}");
        assert!(!text.contains('\u{0}') && !text.contains('\u{7}'), "control character in {name}");
    }
}

#[test]
fn a_huge_run_is_sampled_and_the_timeline_capped() {
    let mut history = Vec::new();
    for i in 0..25_000u64 {
        let invoke = Op::invoke(i % 8, "read", Some("k"), json!(null), i * 10 * MS);
        history.push(invoke.complete(OpType::Ok, i * 10 * MS + 3 * MS));
        history.push(invoke);
    }
    history.sort_by_key(|op| (op.time, op.kind != OpType::Invoke));
    reindex(&mut history);
    let all = pairs(&history);
    let (first, last) = (&all[0], &all[all.len() - 1]);
    let anomaly = Anomaly {
        kind: "G-single-realtime".to_string(),
        explanation: "a cycle across the whole run".to_string(),
        ops: vec![first.invoke.clone(), last.complete.clone()],
        details: serde_json::Value::Null,
    };
    let results = vec![CheckResult::from_anomalies("elle", vec![anomaly], json!({}))];
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &history, &[], &results, &summary(Validity::Invalid)).unwrap();
    let latency = read(dir.path(), "latency.svg");
    assert!(latency.contains(&format!("{MAX_LATENCY_POINTS} of 25000 ops drawn")));
    assert!(latency.matches("<circle").count() <= MAX_LATENCY_POINTS + 20);
    let html = read(dir.path(), "report.html");
    assert!(html.contains(&format!("draws {MAX_LATENCY_POINTS} of 25000 ops")));
    assert_eq!(html.matches("data-index=").count(), timeline::MAX_OPS);
    assert!(html.contains(&format!("anomaly\" data-index=\"{}\"", last.invoke.index)));
}

#[test]
fn buckets_stay_few_for_long_runs() {
    for end in [0, 1, SEC, 30 * SEC, 600 * SEC, 601 * SEC, 3 * 3600 * SEC, u64::MAX - 1, u64::MAX] {
        let b = Buckets::new(end);
        assert!(b.count >= 1 && b.count <= 601, "{end}: {b:?}");
        assert!(b.of(end) < b.count);
        assert!(b.of(u64::MAX) < b.count);
    }
    assert_eq!(Buckets::new(30 * SEC).width_ns, SEC);
    assert_eq!(sample_indices(3, 10), vec![0, 1, 2]);
    let sample = sample_indices(100_003, 20_000);
    assert_eq!(sample.len(), 20_000);
    assert!(sample.windows(2).all(|w| w[0] < w[1]) && sample[19_999] < 100_003);
}

#[test]
fn escaping_covers_markup_quotes_and_control_characters() {
    assert_eq!(esc("<a href=\"x\">'&'</a>\u{0}\n"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;\u{FFFD}\n");
    assert_eq!(clip("héllo", 2), "hé…");
    assert_eq!(clip("hé", 2), "hé");
    assert_eq!(secs_text(u64::MAX), "∞");
}
