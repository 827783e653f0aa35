//! A progress display for long interactive runs: a spinner with counts while Graph is read, then a bar with
//! counts and ETA while the directory is written. Nothing is drawn when stderr is not a terminal, so logs,
//! pipes and services see plain log lines only.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Writes below this many do not get a bar: they are over before a bar would help.
const BAR_FROM: usize = 100;

/// The bar on screen now, if any: log lines are written around it rather than through it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Log output to stderr that hides the progress display while a line is written, so that lines and the
/// bar do not overwrite each other. Give it to the log subscriber as its writer.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// See [`log_writer`].
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match shown {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// The progress of one tenant's cycle; inert unless made for a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Show the write bar even for few writes (a full reconcile).
    always: bool,
    tally: Arc<Mutex<Tally>>,
}

/// What the bar's estimate of the total writes is made from: groups are planned a batch at a time, so the
/// writes of the groups not planned yet are guessed from those planned so far.
#[derive(Debug, Default)]
struct Tally {
    groups: usize,
    groups_planned: usize,
    writes_planned: usize,
}

impl Tally {
    fn estimate(&self) -> usize {
        let left = self.groups.saturating_sub(self.groups_planned);
        self.writes_planned + self.writes_planned * left / self.groups_planned.max(1)
    }
}

impl Progress {
    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress { bar: None, always: false, tally: Arc::default() }
    }

    /// Draws on stderr when it is a terminal, labelled with `tenant`. `always`: show the write bar however
    /// few the writes (for a full reconcile, which an admin starts by hand).
    pub fn on_terminal(tenant: &str, always: bool) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let progress = Progress::on(ProgressDrawTarget::stderr(), tenant, always);
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = progress.bar.clone();
        progress
    }

    fn on(target: ProgressDrawTarget, tenant: &str, always: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(None, target).with_prefix(tenant.to_string());
        bar.set_style(
            ProgressStyle::with_template("{prefix}: {spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar), always, tally: Arc::default() }
    }

    /// Graph has delivered `groups` group and `users` user entries so far.
    pub fn reading(&self, groups: usize, users: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("reading Graph: {groups} groups, {users} users"));
        }
    }

    /// `groups` groups are about to be planned against the directory, a batch at a time.
    pub fn planning(&self, groups: usize) {
        let Some(bar) = &self.bar else { return };
        *self.tally.lock().unwrap_or_else(PoisonError::into_inner) = Tally { groups, ..Tally::default() };
        bar.set_message(format!("planning {groups} groups against the directory"));
    }

    /// A batch of `groups` groups was planned with `writes` writes, which are about to be applied.
    pub fn planned(&self, groups: usize, writes: usize) {
        let Some(bar) = &self.bar else { return };
        let estimate = {
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.groups_planned += groups;
            tally.writes_planned += writes;
            tally.estimate()
        };
        if bar.length().is_none() {
            if estimate < BAR_FROM && !self.always {
                return;
            }
            let style = ProgressStyle::with_template("{prefix}: [{bar:40}] {pos}/{len} writes, {per_sec}, {eta} left")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(0);
        }
        bar.set_length(estimate as u64);
    }

    /// One more write is done.
    pub fn wrote(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// The cycle ended: remove the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            SHOWN.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_counts_writes_and_estimates_the_batches_not_planned_yet() {
        let progress = Progress::on(ProgressDrawTarget::hidden(), "t", false);
        progress.reading(5, 7);
        progress.planning(4_000);
        progress.planned(1_000, 250);
        for _ in 0..3 {
            progress.wrote();
        }
        let bar = progress.bar.as_ref().unwrap();
        assert_eq!((bar.position(), bar.length()), (3, Some(1_000)), "250 writes per 1,000 groups, 4,000 groups");
        progress.planned(1_000, 750);
        assert_eq!(bar.length(), Some(2_000), "now 500 per 1,000 groups");
        let short = Progress::on(ProgressDrawTarget::hidden(), "t", false);
        short.planning(10);
        short.planned(10, 5);
        assert_eq!(short.bar.as_ref().unwrap().length(), None, "a short run keeps its spinner");
        let full = Progress::on(ProgressDrawTarget::hidden(), "t", true);
        full.planning(10);
        full.planned(10, 5);
        assert_eq!(full.bar.as_ref().unwrap().length(), Some(5));
        assert!(Progress::hidden().bar.is_none());
    }
}
