//! The progress bar of a run: elapsed time, ops/s and the active fault.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::history::Recorder;

/// Redraw period.
const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Shows a bar over `time_limit` seconds (hidden when `visible` is false or stderr is no TTY).
pub fn start(time_limit: u64, recorder: Recorder, fault: Arc<Mutex<String>>, visible: bool) -> Progress {
    let bar = if visible { ProgressBar::new(time_limit) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = bar.clone();
    let task = tokio::spawn(async move {
        let mut last_ops = 0usize;
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            // Two records (invoke and completion) per op.
            let ops = recorder.len() / 2;
            let rate = (ops.saturating_sub(last_ops)) as f64 / TICK.as_secs_f64();
            last_ops = ops;
            let fault = fault.lock().map(|f| f.clone()).unwrap_or_default();
            let fault = if fault.is_empty() { "none".to_string() } else { fault };
            ticker.set_position(recorder.origin().elapsed().as_secs().min(time_limit));
            ticker.set_message(format!("{ops} ops, {rate:.0} ops/s, fault: {fault}"));
        }
    });
    Progress { bar, task: Some(task) }
}

impl Progress {
    pub fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}
