//! Cycle search inside each strongly connected component: for each Adya class (G0, G1c, G-single,
//! G2-item), the shortest cycle that is an instance of it, first with data edges only, then also
//! with process edges, then also with realtime edges — so each class is reported in the weakest form
//! the history proves. Breadth-first searches are bounded by a work budget so that a history that is
//! one giant cycle is still checked quickly (the budget may cost optimality, never the verdict).

use std::collections::{HashMap, VecDeque};

use super::graph::{Edge, EdgeKind, Graph};
use super::report::{Anomalies, explain_cycle};
use super::txn::{Parsed, TxnId};

/// Edge visits allowed per (component, class, edge set) once a first search has run.
const BUDGET: usize = 2_000_000;

/// A cycle as its steps `(from, edge)`; each edge's `to` is the next step's `from`.
pub(super) struct Cycle {
    pub steps: Vec<(TxnId, Edge)>,
}

/// A class as a search: the cycle is rotated to start with an edge of kind `first`, and the path back
/// uses only `path` kinds (plus the neutral process/realtime kinds of the current level), containing
/// at least one rw edge when `path_needs_rw`.
struct Class {
    first: EdgeKind,
    path: &'static [EdgeKind],
    path_needs_rw: bool,
}

use EdgeKind::{Process, Realtime, Rw, Wr, Ww};

const CLASSES: [Class; 4] = [
    Class { first: Ww, path: &[Ww], path_needs_rw: false },     // G0
    Class { first: Wr, path: &[Ww, Wr], path_needs_rw: false }, // G1c
    Class { first: Rw, path: &[Ww, Wr], path_needs_rw: false }, // G-single
    Class { first: Rw, path: &[Ww, Wr, Rw], path_needs_rw: true }, // G2-item
];

const LEVELS: [&[EdgeKind]; 3] = [&[], &[Process], &[Process, Realtime]];

/// Reports the cycles of every component.
pub(super) fn report(p: &Parsed, g: &Graph, sccs: &[Vec<TxnId>], out: &mut Anomalies) {
    let mut s = Searcher::new(g);
    for (c, nodes) in sccs.iter().enumerate() {
        for &n in nodes {
            s.scc_of[n as usize] = c as u32;
        }
        for cycle in s.cycles(c as u32, nodes) {
            let kind = classify(&cycle);
            out.add(&kind, || explain_cycle(&kind, &cycle, p));
        }
    }
}

/// The anomaly a cycle proves: its class by data edges, suffixed by the strongest order it needs.
pub(super) fn classify(cycle: &Cycle) -> String {
    let count = |k: EdgeKind| cycle.steps.iter().filter(|(_, e)| e.kind == k).count();
    let base = match (count(Rw), count(Wr)) {
        (0, 0) => "G0",
        (0, _) => "G1c",
        (1, _) => "G-single",
        _ => "G2-item",
    };
    let suffix = if count(Realtime) > 0 {
        "-realtime"
    } else if count(Process) > 0 {
        "-process"
    } else {
        ""
    };
    format!("{base}{suffix}")
}

struct Searcher<'g> {
    g: &'g Graph,
    scc_of: Vec<u32>,
    /// Search states are `node * 2 + layer` (layer 1: an rw edge has been crossed).
    seen: Vec<u32>,
    pred: Vec<(u32, u32)>,
    target: Vec<u32>,
    generation: u32,
    queue: VecDeque<(u32, u32)>,
}

impl<'g> Searcher<'g> {
    fn new(g: &'g Graph) -> Searcher<'g> {
        let n = g.adj.len();
        Searcher {
            g,
            scc_of: vec![u32::MAX; n],
            seen: vec![0; 2 * n],
            pred: vec![(0, 0); 2 * n],
            target: vec![0; n],
            generation: 0,
            queue: VecDeque::new(),
        }
    }

    /// The shortest cycle of each class found in component `c`; any cycle if the budget ran out
    /// before a class was found, since every component holds one.
    fn cycles(&mut self, c: u32, nodes: &[TxnId]) -> Vec<Cycle> {
        let mut found = Vec::new();
        for class in &CLASSES {
            if let Some(cycle) = LEVELS.iter().find_map(|extra| self.shortest(c, nodes, class, extra)) {
                found.push(cycle);
            }
        }
        if found.is_empty() {
            let first = nodes.iter().find_map(|&a| {
                let i = self.g.adj[a as usize].iter().position(|e| self.scc_of[e.to as usize] == c)?;
                Some((self.g.adj[a as usize][i], a, i as u32))
            });
            if let Some((edge, a, i)) = first {
                let any = Class { first: edge.kind, path: &EdgeKind::ALL, path_needs_rw: false };
                found.extend(self.search_group(c, &[(edge.to, a, i)], &any, &[], None, &mut 0));
            }
        }
        found
    }

    /// The shortest cycle of `class` in component `c` using `extra` edge kinds besides the class's.
    fn shortest(&mut self, c: u32, nodes: &[TxnId], class: &Class, extra: &[EdgeKind]) -> Option<Cycle> {
        // Candidate first edges `a -> b`, grouped by `b`: one search from `b` serves them all.
        let mut cands: Vec<(TxnId, TxnId, u32)> = Vec::new();
        for &a in nodes {
            for (i, e) in self.g.adj[a as usize].iter().enumerate() {
                if e.kind == class.first && self.scc_of[e.to as usize] == c {
                    cands.push((e.to, a, i as u32));
                }
            }
        }
        cands.sort_unstable();
        let mut best: Option<Cycle> = None;
        let mut work = 0;
        for group in cands.chunk_by(|x, y| x.0 == y.0) {
            if work > BUDGET || best.as_ref().is_some_and(|b| b.steps.len() == 2) {
                break;
            }
            let limit = best.as_ref().map(|b| b.steps.len());
            if let Some(cycle) = self.search_group(c, group, class, extra, limit, &mut work) {
                best = Some(cycle);
            }
        }
        best
    }

    /// Breadth-first from the common head `b` of the candidate edges `a -> b` in `group`, back to
    /// the nearest `a`; only cycles shorter than `limit` are of interest.
    fn search_group(
        &mut self,
        c: u32,
        group: &[(TxnId, TxnId, u32)],
        class: &Class,
        extra: &[EdgeKind],
        limit: Option<usize>,
        work: &mut usize,
    ) -> Option<Cycle> {
        let generation = self.next_generation();
        for &(_, a, _) in group {
            self.target[a as usize] = generation;
        }
        let start = group.first()?.0 * 2;
        self.seen[start as usize] = generation;
        self.queue.clear();
        self.queue.push_back((start, 0));
        while let Some((s, depth)) = self.queue.pop_front() {
            let (v, layer) = (s / 2, s % 2);
            if self.target[v as usize] == generation && (layer == 1 || !class.path_needs_rw) {
                // A layered search may return a walk through some txn twice; only a simple cycle
                // inside it that still has the class's rw edges counts.
                let walk = self.unwind(group, start, s);
                let rw = |c: &Cycle| c.steps.iter().filter(|(_, e)| e.kind == Rw).count();
                let wanted = if class.path_needs_rw { 2 } else { rw(&walk) };
                let simple = simple_cycles(walk).into_iter().filter(|c| rw(c) >= wanted).min_by_key(|c| c.steps.len());
                if simple.is_some() {
                    return simple;
                }
            }
            // A cycle is the candidate edge plus the path: depth + 2 edges if we go one step further.
            if limit.is_some_and(|l| depth as usize + 2 >= l) {
                continue;
            }
            for (i, e) in self.g.adj[v as usize].iter().enumerate() {
                *work += 1;
                let allowed = class.path.contains(&e.kind) || extra.contains(&e.kind);
                if !allowed || self.scc_of[e.to as usize] != c {
                    continue;
                }
                let next = e.to * 2 + if class.path_needs_rw && e.kind == Rw { 1 } else { layer };
                if self.seen[next as usize] != generation {
                    self.seen[next as usize] = generation;
                    self.pred[next as usize] = (s, i as u32);
                    self.queue.push_back((next, depth + 1));
                }
            }
        }
        None
    }

    /// The cycle ending at search state `end`: the candidate edge into the start, then the path.
    fn unwind(&self, group: &[(TxnId, TxnId, u32)], start: u32, end: u32) -> Cycle {
        let mut path = Vec::new();
        let mut s = end;
        while s != start {
            let (prev, i) = self.pred[s as usize];
            let from = prev / 2;
            path.push((from, self.g.adj[from as usize][i as usize]));
            s = prev;
        }
        path.reverse();
        let a = end / 2;
        let mut steps = Vec::with_capacity(path.len() + 1);
        if let Some(&(_, _, i)) = group.iter().find(|(_, x, _)| *x == a) {
            steps.push((a, self.g.adj[a as usize][i as usize]));
        }
        steps.extend(path);
        Cycle { steps }
    }

    fn next_generation(&mut self) -> u32 {
        if self.generation == u32::MAX {
            self.seen.fill(0);
            self.target.fill(0);
            self.generation = 0;
        }
        self.generation += 1;
        self.generation
    }
}

/// Splits a closed walk into simple cycles (each txn at most once), cutting a loop off the walk
/// whenever it comes back to a txn it has not left for good.
fn simple_cycles(walk: Cycle) -> Vec<Cycle> {
    let mut stack: Vec<(TxnId, Edge)> = Vec::new();
    let mut at: HashMap<TxnId, usize> = HashMap::new();
    let mut out = Vec::new();
    for step in walk.steps {
        at.insert(step.0, stack.len());
        stack.push(step);
        if let Some(&p) = at.get(&step.1.to) {
            let cycle = stack.split_off(p);
            for (from, _) in &cycle {
                at.remove(from);
            }
            out.push(Cycle { steps: cycle });
        }
    }
    out
}
