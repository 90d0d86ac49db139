//! The nemesis: a seeded schedule of faults (kill, pause, partition, member, clock), one at a
//! time, each recorded as a window in the history and in `faults.jsonl`; and the final heal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client;
use crate::cluster::Cluster;
use crate::history::{FaultWindow, Op, OpType, Process, Recorder};

/// The fault families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Member,
    Clock,
    /// Every family above.
    All,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Member => "member",
            FaultKind::Clock => "clock",
            FaultKind::All => "all",
        }
    }

    /// Expands `all` and removes duplicates.
    pub fn expand(kinds: &[FaultKind]) -> Vec<FaultKind> {
        let all = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Member, FaultKind::Clock];
        let set: BTreeSet<FaultKind> =
            kinds.iter().flat_map(|k| if *k == FaultKind::All { all.to_vec() } else { vec![*k] }).collect();
        set.into_iter().collect()
    }
}

/// Timing of the schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub kinds: Vec<FaultKind>,
    /// Quiet time between faults: uniform in [min, max].
    pub quiet: (Duration, Duration),
    /// How long a fault stays: uniform in [min, max].
    pub hold: (Duration, Duration),
    pub seed: u64,
    /// Whether members run under libfaketime (else clock faults are skipped).
    pub faketime: bool,
}

/// Wall-clock offsets the clock fault chooses from (seconds): NTP-style small and large jumps.
const CLOCK_OFFSETS: [i64; 6] = [-86_400, -7_200, -60, 60, 7_200, 86_400];
/// How long a removed member may take to stop by itself before it is killed.
const REMOVED_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long re-adding a member may be retried (it needs a leader).
const MEMBER_ADD_RETRY: Duration = Duration::from_secs(30);
/// Timeout of the nemesis' own Cluster API requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A fault in place, and how to undo it.
enum Active {
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Partitioned,
    Removed(usize),
    Clock(usize),
    Nothing,
}

pub struct Nemesis {
    cluster: Arc<Mutex<Cluster>>,
    recorder: Recorder,
    schedule: Schedule,
    rng: StdRng,
    pub faults: Vec<FaultWindow>,
    /// The active fault's description, for the progress bar.
    pub current: Arc<std::sync::Mutex<String>>,
}

impl Nemesis {
    pub fn new(cluster: Arc<Mutex<Cluster>>, recorder: Recorder, schedule: Schedule) -> Nemesis {
        let rng = StdRng::seed_from_u64(schedule.seed ^ 0x006e_656d_6573_6973);
        Nemesis { cluster, recorder, schedule, rng, faults: Vec::new(), current: Default::default() }
    }

    /// Runs faults one at a time until `deadline`, then undoes the last one.
    pub async fn run(&mut self, deadline: Instant) -> Result<()> {
        if self.schedule.kinds.is_empty() {
            return Ok(());
        }
        loop {
            let quiet = self.pick_duration(self.schedule.quiet);
            tokio::time::sleep_until((Instant::now() + quiet).min(deadline)).await;
            if Instant::now() >= deadline {
                return Ok(());
            }
            let kind = *self.schedule.kinds.choose(&mut self.rng).expect("non-empty kinds");
            let hold = self.pick_duration(self.schedule.hold);
            let (active, index) = self.start(kind).await?;
            tokio::time::sleep_until((Instant::now() + hold).min(deadline)).await;
            self.stop(active, index).await?;
        }
    }

    fn pick_duration(&mut self, (min, max): (Duration, Duration)) -> Duration {
        if max <= min { min } else { self.rng.gen_range(min..max) }
    }

    /// Starts one fault of `kind`; returns what is active and its window's index.
    async fn start(&mut self, kind: FaultKind) -> Result<(Active, usize)> {
        let cluster_lock = self.cluster.clone();
        let mut cluster = cluster_lock.lock().await;
        let leader = cluster.leader().await;
        let n = cluster.len();
        let (active, detail, targets, outcome) = match kind {
            FaultKind::Kill => {
                let (detail, targets) = self.pick_targets(n, leader);
                for &i in &targets {
                    cluster.kill(i)?;
                }
                (Active::Killed(targets.clone()), detail, targets, "installed")
            }
            FaultKind::Pause => {
                let (detail, targets) = self.pick_targets(n, leader);
                for &i in &targets {
                    cluster.pause(i, true)?;
                }
                (Active::Paused(targets.clone()), detail, targets, "installed")
            }
            FaultKind::Partition => {
                let (detail, cut, targets) = self.pick_partition(n, leader);
                for &(from, to) in &cut {
                    cluster.set_link(from, to, true);
                }
                (Active::Partitioned, detail, targets, "installed")
            }
            FaultKind::Member => {
                let target = self.rng.gen_range(0..n);
                let outcome = remove_member(&mut cluster, target).await;
                (Active::Removed(target), "remove then re-add".into(), vec![target], outcome)
            }
            FaultKind::Clock => {
                let target = self.rng.gen_range(0..n);
                let offset = *CLOCK_OFFSETS.choose(&mut self.rng).expect("offsets");
                if self.schedule.faketime {
                    cluster.set_clock_offset(target, offset)?;
                    (Active::Clock(target), format!("wall clock {offset:+}s"), vec![target], "installed")
                } else {
                    (Active::Nothing, "libfaketime not installed".into(), vec![target], "skipped")
                }
            }
            FaultKind::All => bail!("`all` must be expanded before scheduling"),
        };
        let names: Vec<String> = targets.iter().map(|&i| cluster.members[i].name.clone()).collect();
        drop(cluster);
        let index = self.open_window(kind, detail, names, outcome);
        Ok((active, index))
    }

    /// Random member, the leader, or a majority (kill and pause).
    fn pick_targets(&mut self, n: usize, leader: Option<usize>) -> (String, Vec<usize>) {
        let roll = self.rng.gen_range(0..10);
        let mut all: Vec<usize> = (0..n).collect();
        all.shuffle(&mut self.rng);
        match (roll, leader) {
            (0..=3, Some(l)) => ("leader".into(), vec![l]),
            (4..=7, _) | (0..=3, None) => ("one".into(), vec![all[0]]),
            _ => ("majority".into(), all[..n / 2 + 1].to_vec()),
        }
    }

    /// A partition shape: the directed links to cut, and the members it isolates or bridges.
    fn pick_partition(&mut self, n: usize, leader: Option<usize>) -> (String, Vec<(usize, usize)>, Vec<usize>) {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let shapes: &[&str] = if n >= 5 {
            &["isolate-leader", "one", "halves", "bridge", "ring", "leader-outbound"]
        } else {
            &["isolate-leader", "one", "halves", "bridge", "leader-outbound"]
        };
        let shape = *shapes.choose(&mut self.rng).expect("shapes");
        let leader_or_first = leader.unwrap_or(order[0]);
        let mut cut = Vec::new();
        let both = |a: usize, b: usize, cut: &mut Vec<(usize, usize)>| {
            cut.push((a, b));
            cut.push((b, a));
        };
        let targets = match shape {
            "isolate-leader" | "one" => {
                let lonely = if shape == "one" { order[0] } else { leader_or_first };
                (0..n).filter(|&j| j != lonely).for_each(|j| both(lonely, j, &mut cut));
                vec![lonely]
            }
            "halves" => {
                let minority = &order[..n / 2];
                for &a in minority {
                    order[n / 2..].iter().for_each(|&b| both(a, b, &mut cut));
                }
                minority.to_vec()
            }
            "bridge" => {
                // order[0] sees both halves; the halves do not see each other.
                let (left, right) = order[1..].split_at((n - 1) / 2);
                for &a in left {
                    right.iter().for_each(|&b| both(a, b, &mut cut));
                }
                vec![order[0]]
            }
            "ring" => {
                // Majorities ring: each member keeps only its nearest ring neighbours, a majority
                // of its own, but no two members see the same majority.
                for (pos_a, &a) in order.iter().enumerate() {
                    for (pos_b, &b) in order.iter().enumerate().skip(pos_a + 1) {
                        let d = pos_b - pos_a;
                        if d.min(n - d) > n / 4 {
                            both(a, b, &mut cut);
                        }
                    }
                }
                order.clone()
            }
            _ => {
                // leader-outbound: the leader hears everyone but nobody hears it.
                (0..n).filter(|&j| j != leader_or_first).for_each(|j| cut.push((leader_or_first, j)));
                vec![leader_or_first]
            }
        };
        (shape.to_string(), cut, targets)
    }

    fn open_window(&mut self, kind: FaultKind, detail: String, targets: Vec<String>, outcome: &str) -> usize {
        let op = self.nemesis_op(
            &format!("start-{}", kind.name()),
            json!({"detail": detail, "targets": targets, "outcome": outcome}),
        );
        *self.current.lock().expect("nemesis label") = format!("{} {} {}", kind.name(), detail, targets.join(","));
        self.faults.push(FaultWindow {
            fault: kind.name().into(),
            detail,
            targets,
            start: op.time,
            end: None,
            outcome: outcome.into(),
        });
        self.faults.len() - 1
    }

    fn nemesis_op(&self, f: &str, value: serde_json::Value) -> Op {
        let mut op = Op::invoke(0, f, None, value, 0);
        op.process = Process::Nemesis;
        op.kind = OpType::Info;
        self.recorder.record(op)
    }

    /// Undoes a fault and closes its window.
    async fn stop(&mut self, active: Active, index: usize) -> Result<()> {
        let mut cluster = self.cluster.lock().await;
        let result = undo(&mut cluster, active).await;
        drop(cluster);
        let window = &self.faults[index];
        let f = format!("stop-{}", window.fault);
        let value = json!({"detail": window.detail, "targets": window.targets, "error": result.as_ref().err().map(|e| format!("{e:#}"))});
        let op = self.nemesis_op(&f, value);
        self.faults[index].end = Some(op.time);
        self.current.lock().expect("nemesis label").clear();
        result
    }
}

/// Undoes one fault.
async fn undo(cluster: &mut Cluster, active: Active) -> Result<()> {
    match active {
        Active::Killed(targets) => {
            for i in targets {
                cluster.spawn(i)?;
            }
        }
        Active::Paused(targets) => {
            for i in targets {
                cluster.pause(i, false)?;
            }
        }
        Active::Partitioned => cluster.heal_links(),
        Active::Removed(i) => add_member_back(cluster, i).await?,
        Active::Clock(i) => cluster.set_clock_offset(i, 0)?,
        Active::Nothing => {}
    }
    Ok(())
}

/// Heals everything after the test: every process running and resumed, links healed, clocks
/// reset, and no member left outside the cluster.
pub async fn heal_all(cluster: &Arc<Mutex<Cluster>>) -> Result<()> {
    let mut cluster = cluster.lock().await;
    cluster.heal_links();
    for i in 0..cluster.len() {
        cluster.set_clock_offset(i, 0)?;
        if cluster.members[i].paused {
            cluster.pause(i, false)?;
        }
        if !cluster.members[i].is_running() {
            cluster.spawn(i)?;
        }
    }
    Ok(())
}

/// Removes member `target` through another member's Cluster API; it then stops by itself.
async fn remove_member(cluster: &mut Cluster, target: usize) -> &'static str {
    let name = cluster.members[target].name.clone();
    let via: Vec<String> = (0..cluster.len()).filter(|&j| j != target).map(|j| cluster.members[j].endpoint()).collect();
    let mut outcome = "indeterminate";
    for endpoint in &via {
        let Ok(mut c) = client::connect(endpoint, Some(ADMIN_TIMEOUT)).await else { continue };
        let Ok(list) = c.member_list().await else { continue };
        let Some(id) = list.members().iter().find(|m| m.name() == name).map(|m| m.id()) else {
            outcome = "skipped";
            break;
        };
        if c.member_remove(id).await.is_ok() {
            outcome = "installed";
            break;
        }
    }
    // A removed member stops itself; make sure, so its data can be wiped.
    let deadline = Instant::now() + REMOVED_EXIT_WAIT;
    while outcome == "installed" && cluster.members[target].is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome
}

/// Adds member `i` back as a new member (fresh data, fresh id) and starts it.
async fn add_member_back(cluster: &mut Cluster, i: usize) -> Result<()> {
    let name = cluster.members[i].name.clone();
    let peer_url = cluster.members[i].peer_url();
    let deadline = Instant::now() + MEMBER_ADD_RETRY;
    loop {
        match member_state(cluster, &name, &peer_url).await {
            Ok(MemberState::Present) => {
                // The removal never happened (or was not needed): just make sure it runs.
                if !cluster.members[i].is_running() {
                    cluster.spawn(i)?;
                }
                return Ok(());
            }
            Ok(MemberState::Absent) => break,
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("member list for {name}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    cluster.kill(i)?;
    cluster.wipe(i)?;
    loop {
        match add_member(cluster, i, &peer_url).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("re-add {name}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let all: Vec<usize> = (0..cluster.len()).collect();
    cluster.prepare_join(i, &all);
    cluster.spawn(i)
}

enum MemberState {
    Present,
    Absent,
}

/// Whether the cluster (asked through any live member) still lists `peer_url`.
async fn member_state(cluster: &Cluster, name: &str, peer_url: &str) -> Result<MemberState> {
    for m in cluster.members.iter().filter(|m| m.name != name && !m.paused) {
        let Ok(mut c) = client::connect(&m.endpoint(), Some(ADMIN_TIMEOUT)).await else { continue };
        let Ok(list) = c.member_list().await else { continue };
        let present = list.members().iter().any(|x| x.peer_urls().iter().any(|u| u.trim_end_matches('/') == peer_url));
        return Ok(if present { MemberState::Present } else { MemberState::Absent });
    }
    bail!("no member answered MemberList")
}

async fn add_member(cluster: &Cluster, i: usize, peer_url: &str) -> Result<()> {
    let mut last = anyhow::anyhow!("no member to ask");
    for (j, m) in cluster.members.iter().enumerate() {
        if j == i || m.paused {
            continue;
        }
        let attempt = async {
            let mut c = client::connect(&m.endpoint(), Some(ADMIN_TIMEOUT)).await?;
            c.member_add([peer_url], None).await.context("MemberAdd")?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}
