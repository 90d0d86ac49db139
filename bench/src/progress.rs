//! The progress bar of a phase: done / total and the rate, redrawn from a shared counter so the
//! workers only bump an atomic.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::opts::GlobalOpts;

/// Redraw period: often enough to look live, rarely enough to cost nothing.
const TICK: Duration = Duration::from_millis(200);

/// Whether bars are drawn: not with `--no-progress`, and not when stderr (where they are
/// drawn) is no terminal, so logs and CI output stay clean.
pub fn visible(global: &GlobalOpts) -> bool {
    !global.no_progress && std::io::stderr().is_terminal()
}

/// A bar following a counter until `finish` (or drop).
pub struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A bar labelled `label` over `total` units, following `done`.
    pub fn start(label: &str, total: u64, done: Arc<AtomicU64>, visible: bool) -> Progress {
        if !visible {
            return Progress { bar: ProgressBar::hidden(), done, task: None };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} {elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        let (ticker, counter) = (bar.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                ticker.set_position(counter.load(Ordering::Relaxed));
            }
        });
        Progress { bar, done, task: Some(task) }
    }

    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.bar.set_position(self.done.load(Ordering::Relaxed));
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
