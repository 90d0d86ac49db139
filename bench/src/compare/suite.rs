//! The comparison suite: which benchmarks run against each system, with which flags, and the
//! target geobuk must meet on each (issue 5's table), so the rows are defined once for the run,
//! the results file and the chart.

use crate::opts::{Command, Consistency, GlobalOpts, PutOpts, RangeOpts, TxnPutOpts, WatchOpts};

/// The key the range rows read (written once, 256 B, before the suite).
pub const RANGE_KEY: &str = "bench-range-key";
/// Value size of every put row (etcd's published table uses 256 B values, 8 B keys).
pub const VALUE_BYTES: usize = 256;

/// What a row's headline figure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Headline {
    /// Requests per second.
    OpsPerSec,
    /// Watch events delivered per second (over all watchers).
    EventsPerSec,
}

/// What geobuk must reach on a row, relative to etcd's figures in the same run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Target {
    /// geobuk's headline / etcd's headline must be at least this.
    pub min_ratio: Option<f64>,
    /// geobuk's p99 (request latency, or delivery latency on watch rows) must not exceed etcd's.
    pub p99_no_worse: bool,
    /// Every expected watch event must arrive.
    pub all_delivered: bool,
    /// geobuk members' peak RSS (the largest member) must not exceed etcd's.
    pub rss_no_worse: bool,
}

/// One benchmark of the suite.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: &'static str,
    pub title: &'static str,
    pub conns: usize,
    pub clients: usize,
    pub target_leader: bool,
    pub command: Command,
    pub headline: Headline,
    pub target: Target,
}

impl Row {
    /// The global flags of this row against `endpoints`.
    pub fn global(&self, endpoints: &[String]) -> GlobalOpts {
        GlobalOpts {
            endpoints: endpoints.to_vec(),
            conns: self.conns,
            clients: self.clients,
            target_leader: self.target_leader,
            no_progress: true,
            ..Default::default()
        }
    }

    /// The equivalent `bench` command line, for the results file.
    pub fn command_line(&self) -> String {
        let mut s = format!("bench --endpoints $ENDPOINTS --conns {} --clients {}", self.conns, self.clients);
        if self.target_leader {
            s.push_str(" --target-leader");
        }
        s.push(' ');
        s.push_str(&subcommand_line(&self.command));
        s
    }
}

fn subcommand_line(command: &Command) -> String {
    match command {
        Command::Put(o) => format!(
            "put --total {} --key-size {} --val-size {} --key-space-size {}{}",
            o.total,
            o.key_size,
            o.val_size,
            o.key_space_size,
            if o.sequential_keys { " --sequential-keys" } else { "" }
        ),
        Command::Range(o) => format!(
            "range {} --total {} --consistency {}",
            o.key,
            o.total,
            if o.consistency == Consistency::Serializable { "s" } else { "l" }
        ),
        Command::TxnPut(o) => format!(
            "txn-put --total {} --txn-ops {} --key-size {} --val-size {} --key-space-size {}",
            o.total, o.txn_ops, o.key_size, o.val_size, o.key_space_size
        ),
        Command::Watch(o) => format!(
            "watch --streams {} --watch-per-stream {} --watched-key-total {} --put-total {} --key-size {} --val-size {}",
            o.streams, o.watch_per_stream, o.watched_key_total, o.put_total, o.key_size, o.val_size
        ),
        other => other.name().to_string(),
    }
}

/// `n` scaled down (for smoke runs), at least `floor`.
fn scaled(n: u64, scale: f64, floor: u64) -> u64 {
    ((n as f64 * scale).round() as u64).max(floor)
}

fn put(total: u64, key_space: u64) -> Command {
    Command::Put(PutOpts {
        total,
        key_size: 8,
        val_size: VALUE_BYTES,
        key_space_size: key_space,
        sequential_keys: true,
        rate: 0,
    })
}

fn range(total: u64, consistency: Consistency) -> Command {
    Command::Range(RangeOpts { total, consistency, ..RangeOpts::new(RANGE_KEY) })
}

fn watch(streams: usize, per_stream: usize, puts: u64) -> Command {
    Command::Watch(WatchOpts { streams, watch_per_stream: per_stream, put_total: puts, ..Default::default() })
}

/// The suite at `scale` (1.0: the full run; CI smoke runs use a tiny scale). `load_keys` is the
/// key count of the memory row (1M in the full run).
pub fn rows(scale: f64, load_keys: u64) -> Vec<Row> {
    let row = |id, title, conns, clients, command, headline, target| Row {
        id,
        title,
        conns,
        clients,
        target_leader: false,
        command,
        headline,
        target,
    };
    let ratio = |r: f64| Target { min_ratio: Some(r), ..Default::default() };
    let total = |n| scaled(n, scale, 20);
    vec![
        Row {
            target_leader: true,
            ..row(
                "put-1",
                "put, 1 client, leader",
                1,
                1,
                put(total(10_000), total(10_000)),
                Headline::OpsPerSec,
                ratio(1.0),
            )
        },
        row(
            "put-100",
            "put, 100 clients / 10 conns",
            10,
            100,
            put(total(100_000), total(100_000)),
            Headline::OpsPerSec,
            Target { p99_no_worse: true, ..ratio(1.5) },
        ),
        row(
            "put-1000",
            "put, 1,000 clients / 100 conns",
            100,
            1000,
            put(total(100_000), total(100_000)),
            Headline::OpsPerSec,
            ratio(1.5),
        ),
        row(
            "range-l",
            "range linearizable, 100 clients / 10 conns",
            10,
            100,
            range(total(100_000), Consistency::Linearizable),
            Headline::OpsPerSec,
            ratio(1.5),
        ),
        row(
            "range-s",
            "range serializable, 100 clients / 10 conns",
            10,
            100,
            range(total(100_000), Consistency::Serializable),
            Headline::OpsPerSec,
            Target::default(),
        ),
        row(
            "txn-put",
            "txn-put, 100 clients / 10 conns",
            10,
            100,
            Command::TxnPut(TxnPutOpts {
                total: total(50_000),
                key_size: 8,
                val_size: VALUE_BYTES,
                key_space_size: total(50_000),
                ..Default::default()
            }),
            Headline::OpsPerSec,
            Target::default(),
        ),
        row(
            "watch-100",
            "watch, 100 watchers on one key, 10 put clients",
            10,
            10,
            watch(10, 10, total(20_000)),
            Headline::EventsPerSec,
            Target { p99_no_worse: true, all_delivered: true, ..ratio(1.5) },
        ),
        row(
            "watch-10000",
            "watch, 10,000 watchers on one key, 10 put clients",
            10,
            10,
            watch(100, 100, total(200)),
            Headline::EventsPerSec,
            Target { all_delivered: true, ..Default::default() },
        ),
        row(
            "load-1m",
            "put 1M keys of 256 B, 1,000 clients / 100 conns (memory)",
            100,
            1000,
            put(load_keys, load_keys),
            Headline::OpsPerSec,
            Target { rss_no_worse: true, ..Default::default() },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_suite_has_the_issues_rows_and_targets() {
        let rows = rows(1.0, 1_000_000);
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        assert_eq!(
            ids,
            ["put-1", "put-100", "put-1000", "range-l", "range-s", "txn-put", "watch-100", "watch-10000", "load-1m"]
        );
        let put100 = &rows[1];
        assert_eq!((put100.conns, put100.clients), (10, 100));
        assert_eq!(put100.target.min_ratio, Some(1.5));
        assert!(put100.target.p99_no_worse);
        let Command::Watch(w) = &rows[7].command else { panic!("watch row") };
        assert_eq!(w.streams * w.watch_per_stream, 10_000);
        assert!(rows[8].target.rss_no_worse);
        assert!(rows[0].command_line().contains("--target-leader put --total 10000 --key-size 8 --val-size 256"));
        for row in &rows {
            row.command.validate().unwrap();
        }
    }

    #[test]
    fn a_scaled_suite_is_small_but_valid() {
        for row in rows(0.001, 100) {
            row.command.validate().unwrap();
            row.global(&["127.0.0.1:2379".into()]).validate().unwrap();
        }
    }
}
