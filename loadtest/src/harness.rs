//! The shape every scenario shares: spawn one task per connection, let each
//! connect and join (bounded concurrency, bounded time), start the clock
//! once all are ready, and collect their results by a hard deadline.
//!
//! # Timeline
//! ```text
//! epoch ── setup (connect + join) ── start ── warmup ── measure_from ── duration ── end ── grace ── deadline
//! ```
//! * `epoch` is the generator's own monotonic zero; message timestamps are
//!   nanoseconds since it ([`Phases::ns`]).
//! * Only messages sent (or, for paced publishers, *intended*) in
//!   `[measure_from, end)` are counted ([`Phases::measured`]).
//! * Nothing is sent after `end`; answers are awaited until `deadline`
//!   (`end` + `--timeout`), when every connection task is cut.
//!
//! # Contract
//! * Every spawned task reports its setup exactly once ([`Gate::ready`]), or
//!   drops its [`Gate`]; [`Run::start`] returns when all have done so.
//! * [`Run::finish`] returns by `deadline` + [`ABORT_SLACK`]: tasks still
//!   running then are aborted; scenarios count them as
//!   [`crate::stats::ErrorKind::Internal`] errors.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{self, Conn, ConnError, Target};

/// How long after the deadline [`Run::finish`] waits before aborting tasks.
pub const ABORT_SLACK: Duration = Duration::from_secs(2);

/// When the phases of a run begin and end (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// The generator's monotonic zero for timestamps.
    pub epoch: Instant,
    /// All connections ready; traffic starts (warmup).
    pub start: Instant,
    /// Warmup over: measurement starts.
    pub measure_from: Instant,
    /// Measurement over: nothing new is sent.
    pub end: Instant,
    /// Everything stops: connections still open are cut.
    pub deadline: Instant,
}

impl Phases {
    /// Nanoseconds from the epoch to `t` (0 before the epoch).
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the epoch to now.
    pub fn now_ns(&self) -> u64 {
        self.ns(Instant::now())
    }

    /// Whether a message sent (or intended) at `t` is in the measured window.
    pub fn measured(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }

    /// Whether a message stamped `ns` after the epoch is in the measured window.
    pub fn measured_ns(&self, ns: u64) -> bool {
        ns >= self.ns(self.measure_from) && ns < self.ns(self.end)
    }

    /// Length of the measured window.
    pub fn window(&self) -> Duration {
        self.end.saturating_duration_since(self.measure_from)
    }
}

/// Setup limits shared by all connections of a run.
#[derive(Debug, Clone, Copy)]
pub struct SetupLimits {
    /// Most connections doing their handshake and join at once.
    pub concurrency: usize,
    /// Longest one connection's handshake and join may take.
    pub timeout: Duration,
}

/// One connection task's handle on the run: how to connect, where to report
/// readiness, and when to start.
#[derive(Clone)]
pub struct Gate {
    target: Arc<Target>,
    permits: Arc<Semaphore>,
    limits: SetupLimits,
    ready: mpsc::UnboundedSender<bool>,
    go: watch::Receiver<Option<Phases>>,
}

impl Gate {
    /// Connect and join `topic` (join_ref `join_ref`), holding one of the
    /// setup permits and bounded by the setup timeout.
    pub async fn connect_and_join(
        &self,
        buf: &mut Vec<u8>,
        topic: &str,
        join_ref: &str,
    ) -> Result<Conn, ConnError> {
        // The semaphore is never closed.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ConnError::Timeout)?;
        let setup = async {
            let mut conn = client::connect(&self.target).await?;
            conn.join(buf, topic, join_ref).await?;
            Ok(conn)
        };
        tokio::time::timeout(self.limits.timeout, setup)
            .await
            .map_err(|_| ConnError::Timeout)?
    }

    /// Report whether setup succeeded, then (if it did) wait for the start.
    /// `None`: setup failed, or the run was abandoned.
    pub async fn ready(mut self, ok: bool) -> Option<Phases> {
        // The receiver lives until every task has reported.
        let _ = self.ready.send(ok);
        drop(self.ready);
        if !ok {
            return None;
        }
        let phases = self.go.wait_for(Option::is_some).await.ok()?;
        *phases
    }
}

/// A run in progress: the tasks, the readiness reports and the start signal.
pub struct Run<T> {
    gate: Option<Gate>,
    ready: mpsc::UnboundedReceiver<bool>,
    go: watch::Sender<Option<Phases>>,
    tasks: JoinSet<T>,
    epoch: Instant,
    spawned: usize,
}

/// What [`Run::start`] learned about the setup.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Connections spawned.
    pub requested: usize,
    /// Connections that connected and joined.
    pub established: usize,
}

impl<T: Send + 'static> Run<T> {
    /// A run against `target`; `epoch` is the generator's zero.
    pub fn new(target: Target, limits: SetupLimits, epoch: Instant) -> Run<T> {
        let (ready_tx, ready) = mpsc::unbounded_channel();
        let (go, go_rx) = watch::channel(None);
        Run {
            gate: Some(Gate {
                target: Arc::new(target),
                permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
                limits,
                ready: ready_tx,
                go: go_rx,
            }),
            ready,
            go,
            tasks: JoinSet::new(),
            epoch,
            spawned: 0,
        }
    }

    /// Spawn one connection task; `task` gets its [`Gate`].
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(Gate) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if let Some(gate) = &self.gate {
            self.tasks.spawn(task(gate.clone()));
            self.spawned += 1;
        }
    }

    /// Wait until every task has reported its setup, then start the clock:
    /// warmup, `duration`, and `grace` for the last answers.
    pub async fn start(
        &mut self,
        warmup: Duration,
        duration: Duration,
        grace: Duration,
    ) -> (Phases, Setup) {
        // Our own sender goes, so `recv` ends once every task has reported.
        self.gate = None;
        let mut established = 0;
        while let Some(ok) = self.ready.recv().await {
            established += usize::from(ok);
        }
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + duration;
        let phases = Phases {
            epoch: self.epoch,
            start,
            measure_from,
            end,
            deadline: end + grace,
        };
        // Tasks that already ended dropped their receivers; that is fine.
        let _ = self.go.send(Some(phases));
        (
            phases,
            Setup {
                requested: self.spawned,
                established,
            },
        )
    }

    /// Collect every task's result by `deadline` + [`ABORT_SLACK`]. Returns
    /// the results and how many tasks panicked or had to be aborted.
    pub async fn finish(mut self, deadline: Instant) -> (Vec<T>, u64) {
        let mut results = Vec::with_capacity(self.spawned);
        let mut lost = 0;
        let cutoff = tokio::time::Instant::from_std(deadline + ABORT_SLACK);
        loop {
            match tokio::time::timeout_at(cutoff, self.tasks.join_next()).await {
                Ok(Some(Ok(r))) => results.push(r),
                Ok(Some(Err(_))) => lost += 1,
                Ok(None) => break,
                Err(_) => {
                    // Our own tasks, past the hard deadline.
                    self.tasks.abort_all();
                    while let Some(r) = self.tasks.join_next().await {
                        match r {
                            Ok(r) => results.push(r),
                            Err(_) => lost += 1,
                        }
                    }
                    break;
                }
            }
        }
        (results, lost)
    }
}

/// Run `fut` until `deadline`; `None` if it was cut.
pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), fut)
        .await
        .ok()
}
