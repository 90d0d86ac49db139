//! The Wing & Gong depth-first search over one key's ops, with Lowe's memoization: a
//! (linearized set, value) pair already explored cannot lead anywhere new, which is what keeps
//! the search polynomial on realistic histories.
//!
//! Call and return entries sit in a doubly linked list (index vectors, dancing-links style) so
//! lifting a linearized op out and putting it back on backtrack are O(1).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::RegisterOp;

/// Limits on one key's search; exceeding either makes the key `unknown`.
pub(super) struct Budget {
    pub states: u64,
    pub time: Duration,
}

/// The furthest the search got before failing.
pub(super) struct Deepest {
    /// Indices into the searched ops, in linearization order.
    pub linearized: Vec<usize>,
    /// The register's value after `linearized`.
    pub state: Option<i64>,
    /// The op whose completion came with no way left to linearize it.
    pub blocked: usize,
}

pub(super) enum Outcome {
    Linearizable,
    NotLinearizable(Deepest),
    OutOfBudget,
}

pub(super) struct Search {
    pub outcome: Outcome,
    /// Distinct (linearized set, value) states explored.
    pub states: u64,
}

/// Decides whether `ops` (one key; indeterminate ops with `end == u64::MAX`) are linearizable
/// from an absent value.
pub(super) fn search(ops: &[RegisterOp], budget: &Budget) -> Search {
    let mut searcher = Searcher::new(ops, budget);
    let outcome = searcher.run();
    Search { outcome, states: searcher.states }
}

const NIL: usize = usize::MAX;

/// Call and return entries in time order; entry `head` is a sentinel before the first.
struct EntryList {
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// A call entry's return entry, and a return entry's call entry.
    partner: Vec<usize>,
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new(ops: &[RegisterOp]) -> EntryList {
        // Calls before returns on equal times (such ops count as concurrent), and returns of
        // determinate ops before indeterminate ones: reaching an indeterminate return must mean
        // every determinate op is already linearized.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            order.push((op.start, 0, i));
            // Never before the call, whatever the input: the list relies on calls coming first.
            order.push((op.end.max(op.start), if op.indeterminate { 2 } else { 1 }, i));
        }
        order.sort_unstable();
        let len = order.len();
        let mut call_at = vec![NIL; ops.len()];
        let mut partner = vec![NIL; len];
        for (at, &(_, rank, op)) in order.iter().enumerate() {
            if rank == 0 {
                call_at[op] = at;
            } else {
                partner[call_at[op]] = at;
                partner[at] = call_at[op];
            }
        }
        let head = len;
        let mut prev: Vec<usize> = (0..=len).map(|at| if at == 0 { head } else { at - 1 }).collect();
        let mut next: Vec<usize> = (0..=len).map(|at| if at + 1 < len { at + 1 } else { NIL }).collect();
        prev[head] = NIL;
        next[head] = if len > 0 { 0 } else { NIL };
        EntryList {
            op: order.iter().map(|&(_, _, op)| op).collect(),
            is_call: order.iter().map(|&(_, rank, _)| rank == 0).collect(),
            partner,
            prev,
            next,
            head,
        }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = (self.prev[at], self.next[at]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    /// Undoes `unlink(at)`; valid only in reverse order of the unlinks.
    fn relink(&mut self, at: usize) {
        let (prev, next) = (self.prev[at], self.next[at]);
        self.next[prev] = at;
        if next != NIL {
            self.prev[next] = at;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.partner[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.partner[call]);
        self.relink(call);
    }
}

/// One op taken out of the list: its call entry and the value before it.
struct Frame {
    call: usize,
    before: Option<i64>,
    /// Skipped past its deadline rather than linearized.
    skipped: bool,
}

struct Searcher<'a> {
    ops: &'a [RegisterOp],
    budget: &'a Budget,
    started: Instant,
    list: EntryList,
    state: Option<i64>,
    linearized: Bitset,
    stack: Vec<Frame>,
    seen: SeenStates,
    deepest: Option<Deepest>,
    /// Frames on the stack when `deepest` was taken (skipped ones included).
    deepest_depth: usize,
    states: u64,
    steps: u64,
}

impl<'a> Searcher<'a> {
    fn new(ops: &'a [RegisterOp], budget: &'a Budget) -> Searcher<'a> {
        let words = ops.len().div_ceil(64).max(1);
        Searcher {
            ops,
            budget,
            started: Instant::now(),
            list: EntryList::new(ops),
            state: None,
            linearized: Bitset(vec![0; words]),
            stack: Vec::new(),
            seen: SeenStates::new(words),
            deepest: None,
            deepest_depth: 0,
            states: 0,
            steps: 0,
        }
    }

    fn run(&mut self) -> Outcome {
        let mut entry = self.list.first();
        while self.list.first() != NIL {
            if entry == NIL || self.over_budget() {
                // `entry` cannot run off the end (the last entry is always a return); if it
                // somehow did, the honest answer is "undecided".
                return Outcome::OutOfBudget;
            }
            if self.list.is_call[entry] {
                entry = if self.try_linearize(entry) { self.list.first() } else { self.list.next[entry] };
                continue;
            }
            let op = self.list.op[entry];
            if self.ops[op].indeterminate {
                if self.ops[op].end == u64::MAX {
                    // Every determinate op is linearized; the remaining indeterminate ones never happened.
                    return Outcome::Linearizable;
                }
                if self.try_skip(entry) {
                    entry = self.list.first();
                    continue;
                }
            } else {
                self.note_dead_end(op);
            }
            match self.backtrack() {
                Some(resume) => entry = resume,
                None => {
                    let fallback = Deepest { linearized: Vec::new(), state: None, blocked: op };
                    return Outcome::NotLinearizable(self.deepest.take().unwrap_or(fallback));
                }
            }
        }
        Outcome::Linearizable
    }

    /// Linearizes the op of `call` next if that is legal and leads to an unexplored state.
    fn try_linearize(&mut self, call: usize) -> bool {
        let op = self.list.op[call];
        let Some(after) = self.ops[op].action.step(self.state) else {
            return false;
        };
        self.enter(call, after, false)
    }

    /// Past an indeterminate op's deadline: from here on it never happened. Not a choice, but it
    /// still leaves a frame so backtracking can bring the op back.
    fn try_skip(&mut self, deadline: usize) -> bool {
        self.enter(self.list.partner[deadline], self.state, true)
    }

    /// Takes the op of `call` out of the list (linearized, or skipped), unless the resulting
    /// state was explored already.
    fn enter(&mut self, call: usize, after: Option<i64>, skipped: bool) -> bool {
        let op = self.list.op[call];
        self.linearized.set(op);
        if !self.seen.insert(&self.linearized, after) {
            self.linearized.clear(op);
            return false;
        }
        self.states += 1;
        self.stack.push(Frame { call, before: self.state, skipped });
        self.state = after;
        self.list.lift(call);
        true
    }

    /// Undoes frames up to and including the latest real choice and returns the entry after it,
    /// where the search resumes; `None` when there is no choice left.
    fn backtrack(&mut self) -> Option<usize> {
        while let Some(frame) = self.stack.pop() {
            self.state = frame.before;
            self.linearized.clear(self.list.op[frame.call]);
            self.list.unlift(frame.call);
            if !frame.skipped {
                return Some(self.list.next[frame.call]);
            }
        }
        None
    }

    fn note_dead_end(&mut self, blocked: usize) {
        if self.deepest.is_some() && self.deepest_depth >= self.stack.len() {
            return;
        }
        self.deepest_depth = self.stack.len();
        let linearized = self.stack.iter().filter(|f| !f.skipped).map(|f| self.list.op[f.call]).collect();
        self.deepest = Some(Deepest { linearized, state: self.state, blocked });
    }

    fn over_budget(&mut self) -> bool {
        self.steps += 1;
        self.states > self.budget.states
            || (self.steps.is_multiple_of(4096) && self.started.elapsed() > self.budget.time)
    }
}

struct Bitset(Vec<u64>);

impl Bitset {
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

const NO_STATE: usize = usize::MAX;

/// The memo of explored (linearized set, value) states. The sets live back to back in one arena
/// and collisions chain through `chain`, so a lookup allocates nothing.
struct SeenStates {
    words: usize,
    sets: Vec<u64>,
    values: Vec<Option<i64>>,
    chain: Vec<usize>,
    first_by_hash: HashMap<u64, usize, BuildHasherDefault<PreHashed>>,
}

impl SeenStates {
    fn new(words: usize) -> SeenStates {
        SeenStates { words, sets: Vec::new(), values: Vec::new(), chain: Vec::new(), first_by_hash: HashMap::default() }
    }

    /// Records the state; false when it was already there.
    fn insert(&mut self, set: &Bitset, value: Option<i64>) -> bool {
        let hash = fingerprint(set, value);
        let mut at = self.first_by_hash.get(&hash).copied().unwrap_or(NO_STATE);
        while at != NO_STATE {
            if self.values[at] == value && self.sets[at * self.words..(at + 1) * self.words] == set.0[..] {
                return false;
            }
            at = self.chain[at];
        }
        let index = self.values.len();
        self.sets.extend_from_slice(&set.0);
        self.values.push(value);
        self.chain.push(self.first_by_hash.insert(hash, index).unwrap_or(NO_STATE));
        true
    }
}

fn fingerprint(set: &Bitset, value: Option<i64>) -> u64 {
    let mut hash = match value {
        None => 0x243f_6a88_85a3_08d3,
        Some(v) => (v as u64) ^ 0x1319_8a2e_0370_7344,
    };
    for &word in &set.0 {
        hash = (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    // murmur3's finalizer: the map takes bucket bits from the low end, which a multiply leaves weak.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// A hasher for keys that are already well-mixed 64-bit fingerprints.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
