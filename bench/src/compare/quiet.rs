//! Waiting until the members of every running cluster are idle before a measurement, so one
//! system is never measured while the other (or itself) still flushes or compacts from the
//! previous run: both clusters share two cores, and background work of either would slow it.

use std::time::{Duration, Instant};

use super::members::cpu_seconds;

/// The members together must use less than this share of one core per member to count as quiet
/// (six members: 0.3 of a core). Idle members only heartbeat (every 100 ms): about 0.01 of a core
/// each for etcd and a release geobuk, 0.035 for a debug geobuk (the CI test), so a fixed total
/// such as 0.05 of a core would never be met by six idle members. A flush, compaction or snapshot
/// keeps a core busy while it runs, which this catches unless under ~0.3 s of it is left.
pub const QUIET_CPU_PER_MEMBER: f64 = 0.05;
/// The window the CPU use is measured over.
pub const QUIET_WINDOW: Duration = Duration::from_secs(1);
/// The longest wait; after it the measurement proceeds, with a note in the results.
pub const QUIET_TIMEOUT: Duration = Duration::from_secs(60);

/// When the members count as quiet (the constants above; tests use shorter ones).
#[derive(Clone, Copy, Debug)]
pub struct QuietRule {
    /// Cores per member the members may use together over a window.
    pub max_cpu_per_member: f64,
    pub window: Duration,
    pub timeout: Duration,
}

/// The rule of a compare run.
pub const QUIET: QuietRule =
    QuietRule { max_cpu_per_member: QUIET_CPU_PER_MEMBER, window: QUIET_WINDOW, timeout: QUIET_TIMEOUT };

/// How a wait for quiet ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Quiet {
    /// Seconds from the start of the wait to its end.
    pub waited_seconds: f64,
    /// The members' CPU use over the last window, in cores.
    pub cpu_fraction: f64,
    /// The most they could use to count as quiet, in cores.
    pub limit: f64,
    /// The timeout expired before a quiet window.
    pub timed_out: bool,
}

/// Waits until the processes `pids` together use less than the rule's CPU share (per process)
/// over one window, or until its timeout (then `timed_out`). A process that exits meanwhile
/// counts as idle.
pub async fn wait_quiet(pids: &[u32], rule: &QuietRule) -> Quiet {
    let start = Instant::now();
    let limit = rule.max_cpu_per_member * pids.len() as f64;
    loop {
        let before = cpu_of(pids);
        let window_start = Instant::now();
        tokio::time::sleep(rule.window).await;
        let cpu_fraction = busy_fraction(&before, &cpu_of(pids), window_start.elapsed());
        let quiet = cpu_fraction < limit;
        let timed_out = !quiet && start.elapsed() >= rule.timeout;
        if quiet || timed_out {
            return Quiet { waited_seconds: start.elapsed().as_secs_f64(), cpu_fraction, limit, timed_out };
        }
    }
}

fn cpu_of(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|&pid| cpu_seconds(pid).ok()).collect()
}

/// CPU seconds used per second of `elapsed`, summed over the processes read both times.
fn busy_fraction(before: &[Option<f64>], after: &[Option<f64>], elapsed: Duration) -> f64 {
    let used: f64 = before.iter().zip(after).filter_map(|(b, a)| Some((a.as_ref()? - b.as_ref()?).max(0.0))).sum();
    used / elapsed.as_secs_f64().max(f64::EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short enough for a unit test, long enough for /proc's 10 ms ticks to show a busy loop.
    const TEST_RULE: QuietRule = QuietRule {
        max_cpu_per_member: QUIET_CPU_PER_MEMBER,
        window: Duration::from_millis(300),
        timeout: Duration::from_millis(900),
    };

    #[test]
    fn sums_the_cpu_of_processes_read_twice() {
        let before = [Some(1.0), Some(2.0), None, Some(5.0)];
        let after = [Some(1.5), Some(2.25), Some(9.0), None];
        assert!((busy_fraction(&before, &after, Duration::from_millis(500)) - 1.5).abs() < 1e-9);
        assert_eq!(busy_fraction(&[], &[], Duration::ZERO), 0.0);
    }

    /// A child process, killed and reaped when dropped (also when an assert fails first).
    struct Child(std::process::Child);

    impl Child {
        fn spawn(program: &str, args: &[&str]) -> Child {
            Child(std::process::Command::new(program).args(args).spawn().unwrap())
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn idle_processes_are_quiet_at_once() {
        let child = Child::spawn("sleep", &["30"]);
        let quiet = wait_quiet(&[child.0.id()], &TEST_RULE).await;
        assert!(!quiet.timed_out, "{quiet:?}");
        assert!(quiet.waited_seconds < 0.9 && quiet.cpu_fraction < QUIET_CPU_PER_MEMBER, "{quiet:?}");
        assert_eq!(quiet.limit, QUIET_CPU_PER_MEMBER);
    }

    #[tokio::test]
    async fn a_busy_process_keeps_the_wait_going_until_the_timeout() {
        let child = Child::spawn("sh", &["-c", "while :; do :; done"]);
        let quiet = wait_quiet(&[child.0.id()], &TEST_RULE).await;
        assert!(quiet.timed_out, "{quiet:?}");
        assert!(quiet.waited_seconds >= 0.9, "{quiet:?}");
        assert!(quiet.cpu_fraction >= QUIET_CPU_PER_MEMBER, "{quiet:?}");
    }
}
