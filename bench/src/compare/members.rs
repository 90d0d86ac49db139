//! Resource use during one run of a row: the member processes' peak RSS (VmHWM, reset before
//! the run through /proc/PID/clear_refs) and CPU seconds (utime + stime from /proc/PID/stat),
//! the load generator's own CPU seconds (its clients run in this process) and how busy the
//! machine's cores were (/proc/stat), so the results file can set each system's throughput
//! against what it cost, and show how far the shared cores let the ratio go.

use std::path::Path;

use anyhow::{Context, Result};

/// Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ is 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read stat of {pid}"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("parse /proc/{pid}/stat"))
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after its closing ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after "state".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Jiffies of all cores together from /proc/stat's first line: (busy, total), where busy is
/// everything but idle and iowait.
pub fn machine_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_machine_jiffies(&stat).context("parse /proc/stat")
}

fn parse_machine_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// The process's peak resident set size since start or the last `reset_peak_rss`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read status of {pid}"))?;
    parse_kib_field(&status, "VmHWM:").map(|kib| kib * 1024).with_context(|| format!("no VmHWM for {pid}"))
}

fn parse_kib_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0: writing 5 to clear_refs).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(Path::new(&path), "5").with_context(|| format!("write {path}"))
}

/// The last `lines` lines of a member's log (what it said before it died), or why it is unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A run's view of the machine: CPU seconds of the members and of this process, and the
/// machine's jiffies at the start, for the differences at the end.
pub struct Sample {
    pids: Vec<u32>,
    cpu_start: Vec<f64>,
    load_cpu_start: f64,
    machine_start: (u64, u64),
}

/// What the members, the load generator and the machine used during a run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    /// CPU seconds of all members together.
    pub cpu_seconds: f64,
    /// The largest member's peak RSS, in bytes.
    pub peak_rss_bytes: u64,
    /// CPU seconds of the load generator (this process, whose tasks are the clients).
    pub load_cpu_seconds: f64,
    /// How busy the machine's cores were, 0–1 (everything on it: both clusters, the load
    /// generator, the rest).
    pub machine_busy: f64,
}

impl Sample {
    /// Starts a sample: resets each member's peak RSS and reads its CPU time.
    pub fn start(pids: Vec<u32>) -> Result<Sample> {
        let mut cpu_start = Vec::new();
        for &pid in &pids {
            reset_peak_rss(pid)?;
            cpu_start.push(cpu_seconds(pid)?);
        }
        let load_cpu_start = cpu_seconds(std::process::id())?;
        Ok(Sample { pids, cpu_start, load_cpu_start, machine_start: machine_jiffies()? })
    }

    pub fn finish(&self) -> Result<Usage> {
        let (busy, total) = machine_jiffies()?;
        let (busy, total) = (busy.saturating_sub(self.machine_start.0), total.saturating_sub(self.machine_start.1));
        let mut usage = Usage {
            load_cpu_seconds: cpu_seconds(std::process::id())? - self.load_cpu_start,
            machine_busy: if total > 0 { busy as f64 / total as f64 } else { 0.0 },
            ..Usage::default()
        };
        for (&pid, start) in self.pids.iter().zip(&self.cpu_start) {
            usage.cpu_seconds += cpu_seconds(pid)? - start;
            usage.peak_rss_bytes = usage.peak_rss_bytes.max(peak_rss_bytes(pid)?);
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_time_after_a_command_with_spaces() {
        let stat = "4242 (my (weird) cmd) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 100 2000 300";
        assert_eq!(parse_cpu_seconds(stat), Some(4.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 20 800 50 3 2 10 7 0\ncpu0 50 2 10 400 25 1 1 5 3 0\nintr 1\n";
        // busy: user + nice + system + irq + softirq + steal; guest is already inside user.
        assert_eq!(parse_machine_jiffies(stat), Some((140, 990)));
        assert_eq!(parse_machine_jiffies("cpu0 1 2 3\n"), None);
        let (busy, total) = machine_jiffies().unwrap();
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn quotes_the_end_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(&path, 2), "two\nthree");
        assert_eq!(log_tail(&path, 10), "one\ntwo\nthree");
        assert!(log_tail(&dir.path().join("missing.log"), 2).starts_with("(cannot read"));
    }

    #[test]
    fn measures_this_process() {
        let pid = std::process::id();
        // Touch 64 MiB so the peak is visibly above zero, then check it is reported.
        // black_box: an optimised build would otherwise elide the unused allocation.
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let peak = peak_rss_bytes(pid).unwrap();
        assert!(peak >= 64 << 20, "peak RSS {peak} below the 64 MiB just touched");
        drop(block);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert_eq!(parse_kib_field("VmHWM:\t  1234 kB\n", "VmHWM:"), Some(1234));
    }
}
