//! Live progress on stderr: counters the connection tasks bump ([`Live`])
//! and a bar ([`Ticker`]) that draws them every [`TICK`].
//!
//! # Contract
//! * The hot path only does `Relaxed` `fetch_add`s on [`Live`] (one or two
//!   per message); reading the counters and drawing happen on the ticker's
//!   own task, every [`TICK`].
//! * The bar is drawn on **stderr only**, never stdout (so `--json` stays one
//!   clean object); it is hidden when stderr is not a terminal (indicatif's
//!   `ProgressDrawTarget::stderr`) and not started at all with
//!   `--no-progress`; it is cleared when the [`Ticker`] is dropped, before
//!   the summary is printed.
//! * The counters are for display only: summaries are built from each
//!   connection's own [`crate::stats::Stats`], never from [`Live`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::Phases;

/// How often the bar is redrawn.
pub const TICK: Duration = Duration::from_millis(100);
/// Width of the bar itself, in characters.
const BAR: u64 = 16;

/// Counters shared by every connection task of a run.
#[derive(Debug, Default)]
pub struct Live {
    /// Connection tasks spawned.
    pub requested: AtomicU64,
    /// Connections that finished their setup.
    pub established: AtomicU64,
    /// Connections whose setup failed.
    pub failed: AtomicU64,
    /// Messages received (or, for uploads, chunks sent), any phase.
    pub messages: AtomicU64,
    /// Payload bytes of those messages.
    pub bytes: AtomicU64,
    /// Errors counted after setup.
    pub errors: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Live::requested`].
    pub requested: u64,
    /// See [`Live::established`].
    pub established: u64,
    /// See [`Live::failed`].
    pub failed: u64,
    /// See [`Live::messages`].
    pub messages: u64,
    /// See [`Live::bytes`].
    pub bytes: u64,
    /// See [`Live::errors`].
    pub errors: u64,
}

impl Live {
    /// One message of `bytes` payload bytes.
    pub fn message(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One error.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Read every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requested: self.requested.load(Ordering::Relaxed),
            established: self.established.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// What the two timed phases are called on the bar (a scenario may rename
/// them: `connect` settles and holds rather than warming up and measuring).
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    /// From the start to `measure_from`.
    pub warmup: &'static str,
    /// From `measure_from` to `end`.
    pub measure: &'static str,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            warmup: "warmup",
            measure: "measure",
        }
    }
}

/// One drawing of the bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The phase.
    pub prefix: &'static str,
    /// Progress so far (connections, or milliseconds).
    pub pos: u64,
    /// Progress at the end of the phase.
    pub len: u64,
    /// The counters.
    pub msg: String,
}

impl Frame {
    /// The whole line: `  prefix [=====>    ] msg` (one update per tick,
    /// so the parts never disagree; indicatif truncates it to the terminal).
    pub fn line(&self) -> String {
        let filled = (self.pos.min(self.len) * BAR)
            .checked_div(self.len)
            .unwrap_or(0) as usize;
        let mut bar = "=".repeat(filled);
        if filled < BAR as usize {
            bar.push('>');
            bar.push_str(&" ".repeat(BAR as usize - filled - 1));
        }
        format!("{:>7} [{bar}] {}", self.prefix, self.msg)
    }
}

/// What the bar shows at `now`: the setup (connections done of requested)
/// before the start, then the time through warmup and measurement, then
/// the grace for the last answers.
pub fn frame(s: &Snapshot, phases: Option<&Phases>, labels: Labels, now: Instant) -> Frame {
    let errors = s.errors + s.failed;
    let Some(p) = phases else {
        return Frame {
            prefix: "setup",
            pos: s.established + s.failed,
            len: s.requested,
            msg: format!(
                "{}/{} connected · {errors} errors",
                s.established, s.requested
            ),
        };
    };
    let total = p.end.saturating_duration_since(p.start);
    let elapsed = now.saturating_duration_since(p.start).min(total);
    let prefix = if now < p.measure_from {
        labels.warmup
    } else if now < p.end {
        labels.measure
    } else {
        "grace"
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Frame {
        prefix,
        pos: ms(elapsed),
        len: ms(total).max(1),
        msg: format!(
            "{:.1}/{:.1}s · {errors} errors · {} conns · {} msgs · {:.1} MB",
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            s.established,
            s.messages,
            s.bytes as f64 / 1e6,
        ),
    }
}

/// The bar and the task redrawing it; dropping it stops the task and
/// clears the bar.
pub struct Ticker {
    bar: ProgressBar,
    task: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Start drawing `live` on stderr, following the run's start signal
    /// `go`. Must be called within a tokio runtime. Nothing is spawned when
    /// stderr is not a terminal.
    pub fn start(
        live: Arc<Live>,
        mut go: watch::Receiver<Option<Phases>>,
        labels: Labels,
    ) -> Ticker {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if bar.is_hidden() {
            return Ticker { bar, task: None };
        }
        // The line is rendered by `Frame::line`; `wide_msg` fits it to the terminal.
        let style = ProgressStyle::with_template("{wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        let drawn = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let phases = *go.borrow_and_update();
                let f = frame(&live.snapshot(), phases.as_ref(), labels, Instant::now());
                drawn.set_message(f.line());
            }
        });
        Ticker {
            bar,
            task: Some(task),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_phases() {
        let live = Live::default();
        live.requested.store(10, Ordering::Relaxed);
        live.established.store(6, Ordering::Relaxed);
        live.failed.store(1, Ordering::Relaxed);
        live.message(1_500_000);
        live.message(500_000);
        live.error();
        let s = live.snapshot();
        assert_eq!((s.messages, s.bytes, s.errors), (2, 2_000_000, 1));

        let now = Instant::now();
        let f = frame(&s, None, Labels::default(), now);
        assert_eq!((f.prefix, f.pos, f.len), ("setup", 7, 10));
        assert_eq!(f.msg, "6/10 connected · 2 errors");
        assert_eq!(
            f.line(),
            "  setup [===========>    ] 6/10 connected · 2 errors"
        );

        let start = now;
        let phases = Phases {
            epoch: start,
            start,
            measure_from: start + Duration::from_secs(1),
            end: start + Duration::from_secs(3),
            deadline: start + Duration::from_secs(5),
        };
        let at = |ms| start + Duration::from_millis(ms);
        let f = frame(&s, Some(&phases), Labels::default(), at(500));
        assert_eq!((f.prefix, f.pos, f.len), ("warmup", 500, 3000));
        assert_eq!(
            f.msg, "0.5/3.0s · 2 errors · 6 conns · 2 msgs · 2.0 MB",
            "{f:?}"
        );
        let f = frame(&s, Some(&phases), Labels::default(), at(1500));
        assert_eq!(f.prefix, "measure");
        let labels = Labels {
            warmup: "settle",
            measure: "hold",
        };
        assert_eq!(frame(&s, Some(&phases), labels, at(10)).prefix, "settle");
        let f = frame(&s, Some(&phases), labels, at(4000));
        assert_eq!((f.prefix, f.pos), ("grace", 3000));
        assert!(
            f.line().starts_with("  grace [================] 3.0/3.0s"),
            "{}",
            f.line()
        );
        let empty = Frame {
            prefix: "setup",
            pos: 0,
            len: 0,
            msg: String::new(),
        };
        assert_eq!(empty.line(), "  setup [>               ] ");
    }
}
