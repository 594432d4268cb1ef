//! What one connection counts: messages, errors by kind, timeouts and a
//! latency histogram. Each connection task owns its [`Stats`]; the scenario
//! merges them when the tasks end (no shared counters on the hot path).
//!
//! # Contract
//! * The histogram is allocated on the first [`Stats::record`] (about
//!   140 KiB at these bounds), so a connection that records nothing (a
//!   failed setup, an idle `connect` socket) costs a few hundred bytes.
//! * A [`Stats`] made with [`Stats::with_live`] also bumps the run's live
//!   error counter ([`crate::progress::Live`]) on every error, for the
//!   progress bar only; merged totals never do.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::progress::Live;

/// Highest latency the histogram tracks exactly (µs); larger values are
/// clamped into the top bucket but still reach [`Stats::max_us`].
const HIGHEST_US: u64 = 60_000_000;
/// Significant figures kept by the histogram.
const SIGFIG: u8 = 3;

/// Why something failed. A bounded set: the labels are summary keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect or the HTTP upgrade failed (refused, 403, timeout).
    Connect,
    /// The channel join was refused or not answered.
    Join,
    /// The server closed the socket (close frame or EOF) before the run ended.
    Closed,
    /// A socket read or write failed.
    Io,
    /// A server frame could not be decoded, or had an unexpected shape.
    Decode,
    /// A reply had a status other than `ok`, or a payload other than the one sent.
    Reply,
    /// Nothing arrived for `--timeout` while requests were in flight: the
    /// connection was abandoned.
    Stalled,
    /// A connection task ended abnormally (panic or cut at the hard deadline).
    Internal,
}

impl ErrorKind {
    /// Every kind, in summary order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Join,
        ErrorKind::Closed,
        ErrorKind::Io,
        ErrorKind::Decode,
        ErrorKind::Reply,
        ErrorKind::Stalled,
        ErrorKind::Internal,
    ];

    /// The summary key.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Join => "join",
            ErrorKind::Closed => "closed",
            ErrorKind::Io => "io",
            ErrorKind::Decode => "decode",
            ErrorKind::Reply => "reply",
            ErrorKind::Stalled => "stalled",
            ErrorKind::Internal => "internal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters and latencies of one connection (or, merged, of a whole run).
///
/// Only messages of the measured window (after the warmup, before the end)
/// are counted in `sent`, `received`, `timeouts` and the histogram; errors
/// are counted whenever they happen.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Messages sent in the measured window.
    pub sent: u64,
    /// Replies or deliveries received for measured messages.
    pub received: u64,
    /// Measured messages never answered or delivered in time.
    pub timeouts: u64,
    /// Errors by kind ([`ErrorKind::ALL`] order).
    errors: [u64; ErrorKind::ALL.len()],
    /// Round-trip or end-to-end latencies in microseconds; allocated on
    /// the first sample.
    latency: Option<Histogram<u64>>,
    /// The largest latency seen, unclamped (µs).
    max_us: u64,
    /// The first error's message, to tell people what went wrong.
    first_error: Option<String>,
    /// The run's live counters, bumped on every error (progress bar only).
    live: Option<Arc<Live>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Empty stats.
    pub fn new() -> Stats {
        Stats {
            sent: 0,
            received: 0,
            timeouts: 0,
            errors: [0; ErrorKind::ALL.len()],
            latency: None,
            max_us: 0,
            first_error: None,
            live: None,
        }
    }

    /// Empty stats whose errors also show on the run's progress bar.
    pub fn with_live(live: Arc<Live>) -> Stats {
        Stats {
            live: Some(live),
            ..Stats::new()
        }
    }

    /// Like [`Stats::with_live`], with the latency histogram allocated now
    /// (~140 KiB): for connections that record a latency per message, so the
    /// allocation and its page faults happen during setup, not inside the
    /// measured window.
    pub fn recording(live: Arc<Live>) -> Stats {
        Stats {
            latency: Some(Stats::histogram()),
            ..Stats::with_live(live)
        }
    }

    /// An empty histogram with the bounds every [`Stats`] uses.
    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG)
            .expect("constant histogram bounds are valid")
    }

    /// Stats of a connection that failed once and did nothing else.
    pub fn failed(kind: ErrorKind, message: impl std::fmt::Display) -> Stats {
        let mut s = Stats::new();
        s.error(kind, message);
        s
    }

    /// Count one error; the first one's `message` is kept.
    pub fn error(&mut self, kind: ErrorKind, message: impl std::fmt::Display) {
        self.errors[kind.index()] += 1;
        if let Some(live) = &self.live {
            live.error();
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {message}", kind.label()));
        }
    }

    /// The first error's message (`kind: message`), if any.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Record one latency sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .get_or_insert_with(Stats::histogram)
            .saturating_record(us);
        self.max_us = self.max_us.max(us);
    }

    /// Errors of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// All errors.
    pub fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The latency histogram (µs); `None` until something was recorded.
    pub fn latency(&self) -> Option<&Histogram<u64>> {
        self.latency.as_ref()
    }

    /// The largest latency recorded, unclamped (µs).
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.sent += other.sent;
        self.received += other.received;
        self.timeouts += other.timeouts;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        if let Some(theirs) = &other.latency {
            // Same bounds on both sides: adding cannot fail.
            let added = self
                .latency
                .get_or_insert_with(Stats::histogram)
                .add(theirs);
            debug_assert!(added.is_ok());
        }
        self.max_us = self.max_us.max(other.max_us);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::new();
        a.sent = 2;
        a.received = 1;
        a.record(Duration::from_micros(100));
        a.error(ErrorKind::Reply, "status error");
        let mut b = Stats::failed(ErrorKind::Connect, "refused");
        b.timeouts = 3;
        b.record(Duration::from_secs(120));
        a.merge(&b);
        assert_eq!((a.sent, a.received, a.timeouts), (2, 1, 3));
        assert_eq!(a.errors(), 2);
        assert_eq!(a.errors_of(ErrorKind::Connect), 1);
        assert_eq!(a.first_error(), Some("reply: status error"));
        let h = a.latency().expect("recorded");
        assert_eq!(h.len(), 2);
        // Clamped in the histogram, exact in max.
        assert_eq!(a.max_us(), 120_000_000);
        assert!(h.max() <= 2 * HIGHEST_US);
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::ALL[kind.index()], kind);
        }
    }

    #[test]
    fn histogram_is_lazy_and_live_errors_are_counted() {
        let live = Arc::new(Live::default());
        let mut s = Stats::with_live(live.clone());
        assert!(s.latency().is_none(), "nothing recorded, nothing allocated");
        s.error(ErrorKind::Closed, "bye");
        s.error(ErrorKind::Io, "reset");
        assert_eq!(live.snapshot().errors, 2);
        let mut total = Stats::new();
        total.merge(&s);
        assert!(total.latency().is_none());
        assert_eq!(total.errors(), 2);
        // Merged totals do not count again.
        total.error(ErrorKind::Internal, "cut");
        assert_eq!(live.snapshot().errors, 2);
        s.record(Duration::from_micros(7));
        total.merge(&s);
        assert_eq!(total.latency().map(|h| h.len()), Some(1));
    }
}
