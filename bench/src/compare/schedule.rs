//! The order of a compare run's measurements and which of a row's repeated runs is reported.
//! The host's speed drifts by tens of percent within minutes, so the systems are measured back
//! to back per row, and who goes first alternates so neither system always gets the earlier
//! (or the later) time window.

use super::System;

/// One measurement: a row on one system, its `repeat`-th run (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub row: usize,
    pub system: System,
    pub repeat: usize,
}

/// Every measurement of a run, in the order they are taken. Row by row; within a row, `repeats`
/// rounds of one run per system. Round k of row r runs the systems rotated by r + k, so with two
/// systems A, B and two repeats: row 0 is A B B A, row 1 is B A A B (each system's mean position
/// in a row is the same, and a steady drift within the row favours neither).
pub fn order(rows: usize, systems: &[System], repeats: usize) -> Vec<Slot> {
    let n = systems.len();
    let mut slots = Vec::with_capacity(rows * n * repeats);
    for row in 0..rows {
        for repeat in 0..repeats {
            for i in 0..n {
                let system = systems[(row + repeat + i) % n];
                slots.push(Slot { row, system, repeat });
            }
        }
    }
    slots
}

/// The index of the run whose headline is the median of the runs that produced one (a run that
/// failed, `None`, counts as missing); for an even count the lower middle. `None` when every run
/// failed.
pub fn median_run(headlines: &[Option<f64>]) -> Option<usize> {
    let mut ok: Vec<(usize, f64)> = headlines.iter().enumerate().filter_map(|(i, h)| Some((i, (*h)?))).collect();
    if ok.is_empty() {
        return None;
    }
    // Stable sort: equal headlines keep run order, so the pick is deterministic.
    ok.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(ok[(ok.len() - 1) / 2].0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use System::{Etcd as E, Geobuk as G};

    fn systems_of(slots: &[Slot]) -> Vec<System> {
        slots.iter().map(|s| s.system).collect()
    }

    #[test]
    fn one_repeat_alternates_who_goes_first_per_row() {
        let slots = order(3, &[E, G], 1);
        assert_eq!(systems_of(&slots), [E, G, G, E, E, G]);
        assert_eq!(slots.iter().map(|s| s.row).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2]);
        assert!(slots.iter().all(|s| s.repeat == 0));
        // The order of --systems decides who is first in row 0.
        assert_eq!(systems_of(&order(2, &[G, E], 1)), [G, E, E, G]);
    }

    #[test]
    fn repeats_alternate_within_the_row_too() {
        let two = order(2, &[E, G], 2);
        assert_eq!(systems_of(&two), [E, G, G, E, G, E, E, G]);
        let repeats: Vec<usize> = two.iter().map(|s| s.repeat).collect();
        assert_eq!(repeats, [0, 0, 1, 1, 0, 0, 1, 1]);
        let three = order(2, &[E, G], 3);
        assert_eq!(systems_of(&three), [E, G, G, E, E, G, G, E, E, G, G, E]);
        // Every (row, system, repeat) exactly once.
        for row in 0..2 {
            for system in [E, G] {
                for repeat in 0..3 {
                    let n = three.iter().filter(|s| **s == Slot { row, system, repeat }).count();
                    assert_eq!(n, 1, "row {row} {system:?} repeat {repeat}");
                }
            }
        }
    }

    #[test]
    fn one_system_runs_its_repeats_in_a_row() {
        for repeats in 1..=3 {
            let slots = order(2, &[G], repeats);
            assert_eq!(slots.len(), 2 * repeats);
            assert!(slots.iter().all(|s| s.system == G));
            let expected: Vec<(usize, usize)> = (0..2).flat_map(|r| (0..repeats).map(move |k| (r, k))).collect();
            assert_eq!(slots.iter().map(|s| (s.row, s.repeat)).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn the_median_is_the_middle_run_or_the_lower_middle() {
        assert_eq!(median_run(&[Some(7.0)]), Some(0));
        assert_eq!(median_run(&[Some(7400.0), Some(6900.0), Some(7120.0)]), Some(2));
        // Even count: the lower of the two middle runs.
        assert_eq!(median_run(&[Some(4.0), Some(1.0), Some(3.0), Some(2.0)]), Some(3));
        assert_eq!(median_run(&[Some(5.0), Some(9.0)]), Some(0));
    }

    #[test]
    fn a_failed_run_counts_as_missing() {
        // Were a failure a zero, the median of 0, 1, 5, 9 would be 1 (index 0).
        assert_eq!(median_run(&[Some(1.0), Some(5.0), Some(9.0), None]), Some(1));
        // Were it infinite, the median of 1, 5, inf would be 5 (index 1).
        assert_eq!(median_run(&[None, Some(5.0), Some(1.0)]), Some(2));
        assert_eq!(median_run(&[None, Some(3.0), None]), Some(1));
        assert_eq!(median_run(&[None, None]), None);
        assert_eq!(median_run(&[]), None);
    }
}
