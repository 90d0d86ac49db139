//! The dependency graph between committed txns — ww, wr and rw edges from the version orders,
//! process and realtime edges from the history — and its strongly connected components, which are
//! where every cycle (and so every serializability anomaly) lives.

use std::collections::HashMap;

use super::order::Orders;
use super::txn::{KeyId, Parsed, TxnId};
use crate::history::{OpType, Process};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum EdgeKind {
    Ww,
    Wr,
    Rw,
    Process,
    Realtime,
}

impl EdgeKind {
    pub const ALL: [EdgeKind; 5] = [EdgeKind::Ww, EdgeKind::Wr, EdgeKind::Rw, EdgeKind::Process, EdgeKind::Realtime];

    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::Ww => "ww",
            EdgeKind::Wr => "wr",
            EdgeKind::Rw => "rw",
            EdgeKind::Process => "process",
            EdgeKind::Realtime => "realtime",
        }
    }
}

/// An edge `from -> to` (stored in `from`'s list). Data edges name the key and the element that
/// justifies them: ww the element `to` appended (`prev`: the one `from` appended just before it),
/// wr the element `to` read last, rw the element `to` appended (`prev`: the last one `from` read).
#[derive(Clone, Copy, Debug)]
pub(super) struct Edge {
    pub to: TxnId,
    pub kind: EdgeKind,
    pub key: Option<KeyId>,
    pub elem: Option<i64>,
    pub prev: Option<i64>,
}

pub(super) struct Graph {
    pub adj: Vec<Vec<Edge>>,
}

impl Graph {
    fn add(
        &mut self,
        from: TxnId,
        to: TxnId,
        kind: EdgeKind,
        key: Option<KeyId>,
        elem: Option<i64>,
        prev: Option<i64>,
    ) {
        self.adj[from as usize].push(Edge { to, kind, key, elem, prev });
    }

    pub fn count(&self, kind: EdgeKind) -> usize {
        self.adj.iter().flatten().filter(|e| e.kind == kind).count()
    }
}

pub(super) fn build(p: &Parsed, o: &Orders) -> Graph {
    let mut g = Graph { adj: vec![Vec::new(); p.txns.len()] };
    add_ww(&mut g, p, o);
    add_reads(&mut g, p, o);
    add_process(&mut g, p);
    add_realtime(&mut g, p);
    // One edge per (to, kind) is all a cycle search needs; stable sort keeps the first reason.
    for list in &mut g.adj {
        list.sort_by_key(|e| (e.to, e.kind));
        list.dedup_by_key(|e| (e.to, e.kind));
    }
    g
}

/// Consecutive committed appends in a key's order; appends by uncommitted writers are skipped over
/// (they are reported as G1a), and a txn's run of appends to a key is one step.
fn add_ww(g: &mut Graph, p: &Parsed, o: &Orders) {
    for (k, ko) in o.keys.iter().enumerate() {
        let mut prev: Option<(TxnId, i64)> = None;
        for &e in &ko.order {
            let Some(w) = o.committed_writer(p, k as KeyId, e) else { continue };
            if let Some((pt, pe)) = prev
                && pt != w
            {
                g.add(pt, w, EdgeKind::Ww, Some(k as KeyId), Some(e), Some(pe));
            }
            prev = Some((w, e));
        }
    }
}

/// wr and rw edges from each external, compatible read of an ok txn. One rw edge per read, to the
/// next committed append after what it saw, suffices: ww edges carry the dependency onwards.
fn add_reads(g: &mut Graph, p: &Parsed, o: &Orders) {
    // next[k][i]: the first position >= i of key k whose writer committed (order length if none).
    let next: Vec<Vec<usize>> = o
        .keys
        .iter()
        .enumerate()
        .map(|(k, ko)| {
            let mut next = vec![ko.order.len(); ko.order.len() + 1];
            for i in (0..ko.order.len()).rev() {
                let committed = o.committed_writer(p, k as KeyId, ko.order[i]).is_some();
                next[i] = if committed { i } else { next[i + 1] };
            }
            next
        })
        .collect();
    for (r, _) in p.reads.iter().zip(&o.compatible).filter(|(r, c)| **c && r.external) {
        let (k, order) = (r.key, &o.keys[r.key as usize].order);
        let len = r.list.len();
        let last = len.checked_sub(1).map(|i| order[i]);
        if let Some(e) = last
            && let Some(w) = o.committed_writer(p, k, e)
            && w != r.txn
        {
            g.add(w, r.txn, EdgeKind::Wr, Some(k), Some(e), None);
        }
        let j = next[k as usize][len];
        if let Some(&e) = order.get(j)
            && let Some(w) = o.committed_writer(p, k, e)
            && w != r.txn
        {
            g.add(r.txn, w, EdgeKind::Rw, Some(k), Some(e), last);
        }
    }
}

/// Consecutive committed txns of one process. An `info` txn has no known end, so nothing follows it.
fn add_process(g: &mut Graph, p: &Parsed) {
    let mut last: HashMap<Process, TxnId> = HashMap::new();
    for (id, t) in p.txns.iter().enumerate().filter(|(_, t)| t.committed) {
        if let Some(&prev) = last.get(&t.process) {
            g.add(prev, id as TxnId, EdgeKind::Process, None, None, None);
        }
        if t.kind == OpType::Ok {
            last.insert(t.process, id as TxnId);
        }
    }
}

/// Realtime order without n² edges: each txn gets edges only from the frontier of completed txns
/// that no other completed txn is yet known to follow. A txn leaves the frontier when a txn that
/// followed it completes, so any `a` completed before `b` began still reaches `b` through a chain
/// of such edges. The frontier's members overlap pairwise in time, so it is at most as large as
/// the concurrency.
fn add_realtime(g: &mut Graph, p: &Parsed) {
    // (time, phase, txn): at equal times invocations come first, so touching intervals get no edge.
    let mut events: Vec<(u64, u8, TxnId)> = Vec::new();
    for (id, t) in p.txns.iter().enumerate().filter(|(_, t)| t.committed) {
        events.push((t.start, 0, id as TxnId));
        if t.kind == OpType::Ok {
            events.push((t.end, 1, id as TxnId));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<TxnId> = Vec::new();
    let mut preds: HashMap<TxnId, Vec<TxnId>> = HashMap::new();
    for (_, phase, id) in events {
        if phase == 0 {
            for &f in &frontier {
                g.add(f, id, EdgeKind::Realtime, None, None, None);
            }
            preds.insert(id, frontier.clone());
        } else {
            let before = preds.remove(&id).unwrap_or_default();
            frontier.retain(|f| !before.contains(f));
            frontier.push(id);
        }
    }
}

/// Tarjan's algorithm, iterative (a recursive one overflows the stack on long chains). Returns the
/// components with more than one txn; there are no self-loops, so the others hold no cycle.
pub(super) fn sccs(adj: &[Vec<Edge>]) -> Vec<Vec<TxnId>> {
    const UNSEEN: u32 = u32::MAX;
    let n = adj.len();
    let (mut index, mut low, mut on_stack) = (vec![UNSEEN; n], vec![0u32; n], vec![false; n]);
    let mut stack: Vec<usize> = Vec::new();
    // The explicit recursion: (node, index of the next edge to follow).
    let mut call: Vec<(usize, usize)> = Vec::new();
    let mut out: Vec<Vec<TxnId>> = Vec::new();
    let mut next = 0u32;
    for root in 0..n {
        if index[root] != UNSEEN || adj[root].is_empty() {
            continue;
        }
        call.push((root, 0));
        while let Some(&(v, i)) = call.last() {
            if i == 0 && index[v] == UNSEEN {
                (index[v], low[v]) = (next, next);
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(e) = adj[v].get(i) {
                if let Some(top) = call.last_mut() {
                    top.1 += 1;
                }
                let w = e.to as usize;
                if index[w] == UNSEEN {
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w as TxnId);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    out.push(component);
                }
            }
        }
    }
    out
}
