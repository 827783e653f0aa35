//! A progress display for long interactive runs: a spinner with counts while Graph is read, then a bar with
//! counts and ETA while the directory is written. Nothing is drawn when stderr is not a terminal, so logs,
//! pipes and services see plain log lines only.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
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
}

impl Progress {
    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress { bar: None, always: false }
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
        bar.set_style(ProgressStyle::with_template("{prefix}: {spinner} {msg} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar), always }
    }

    /// Graph has delivered `groups` group and `users` user entries so far.
    pub fn reading(&self, groups: usize, users: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("reading Graph: {groups} groups, {users} users"));
        }
    }

    /// The directory is being read and the plan computed.
    pub fn planning(&self, groups: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("planning {groups} groups against the directory"));
        }
    }

    /// `total` writes are about to be applied.
    pub fn writing(&self, total: usize) {
        let Some(bar) = &self.bar else { return };
        if total < BAR_FROM && !self.always {
            bar.finish_and_clear();
            return;
        }
        let style = ProgressStyle::with_template("{prefix}: [{bar:40}] {pos}/{len} writes, {per_sec}, {eta} left")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_length(total as u64);
        bar.set_position(0);
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
    fn the_bar_counts_writes_and_a_short_run_gets_none() {
        let progress = Progress::on(ProgressDrawTarget::hidden(), "t", false);
        progress.reading(5, 7);
        progress.writing(250);
        for _ in 0..3 {
            progress.wrote();
        }
        let bar = progress.bar.as_ref().unwrap();
        assert_eq!((bar.position(), bar.length()), (3, Some(250)));
        let short = Progress::on(ProgressDrawTarget::hidden(), "t", false);
        short.writing(5);
        assert!(short.bar.as_ref().unwrap().is_finished());
        let full = Progress::on(ProgressDrawTarget::hidden(), "t", true);
        full.writing(5);
        assert_eq!(full.bar.as_ref().unwrap().length(), Some(5));
        assert!(Progress::hidden().bar.is_none());
    }
}
