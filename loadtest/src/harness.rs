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
//! # Setup
//! * Task `i` (in spawn order) is connection `i`: it connects from source
//!   address `i mod n` with `--source-addrs`, and with a ramp rate `R > 0`
//!   it starts its handshake no earlier than `i / R` seconds after the run
//!   was created.
//! * At most `concurrency` handshakes (+ joins) run at once; each is bounded
//!   by the setup timeout, counted from when it got its turn.
//!
//! # Contract
//! * Every spawned task reports its setup exactly once ([`Gate::ready`]), or
//!   drops its [`Gate`]; [`Run::start`] returns when all have done so.
//! * [`Run::finish`] returns by `deadline` + [`ABORT_SLACK`]: tasks still
//!   running then are aborted; scenarios count them as
//!   [`crate::stats::ErrorKind::Internal`] errors.
//! * The run's [`Live`] counters (readiness here, messages and errors in the
//!   scenarios) feed the progress bar, drawn on stderr from [`Run::start`]
//!   until [`Run::finish`] returns (see [`crate::progress`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{self, Conn, ConnError, Target};
use crate::progress::{Labels, Live, Ticker};

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

/// How the connections of a run are set up, and whether it is shown.
#[derive(Debug, Clone, Copy)]
pub struct SetupLimits {
    /// Most connections doing their handshake and join at once.
    pub concurrency: usize,
    /// Longest one connection's handshake and join may take.
    pub timeout: Duration,
    /// Connections started per second (connection `i` not before `i / rate`
    /// s after the run was created); 0: as fast as `concurrency` allows.
    pub rate: u64,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// How a connection is opened by [`Gate::open`].
#[derive(Debug, Clone, Copy)]
pub enum Open<'a> {
    /// Phoenix: upgrade at the socket path, then join `topic` with `join_ref`.
    Join {
        /// The topic to join.
        topic: &'a str,
        /// Its join_ref (and the join's ref).
        join_ref: &'a str,
    },
    /// Raw protocol: upgrade at `path` ([`client::raw`]), nothing else.
    Raw {
        /// The request path.
        path: &'a str,
    },
}

/// How long the parts of one connection's setup took.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// TCP connect + WebSocket upgrade.
    pub connect: Duration,
    /// The join (Phoenix only).
    pub join: Option<Duration>,
}

/// One connection task's handle on the run: how to connect, where to report
/// readiness, and when to start.
#[derive(Clone)]
pub struct Gate {
    target: Arc<Target>,
    permits: Arc<Semaphore>,
    limits: SetupLimits,
    // Unbounded, but each task sends at most one report: bounded by the
    // number of connections.
    ready: mpsc::UnboundedSender<bool>,
    go: watch::Receiver<Option<Phases>>,
    live: Arc<Live>,
    /// This connection's number, in spawn order.
    index: usize,
    /// When the run was created: the ramp's zero.
    created: Instant,
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
        Ok(self.open(buf, Open::Join { topic, join_ref }).await?.0)
    }

    /// Connect to a raw peer's `path`, holding one of the setup permits and
    /// bounded by the setup timeout.
    pub async fn connect_raw(&self, path: &str) -> Result<Conn, ConnError> {
        Ok(self.open(&mut Vec::new(), Open::Raw { path }).await?.0)
    }

    /// Open this connection as `how` says (after its ramp slot, holding one
    /// of the setup permits, bounded by the setup timeout), timing the parts.
    pub async fn open(
        &self,
        buf: &mut Vec<u8>,
        how: Open<'_>,
    ) -> Result<(Conn, Timing), ConnError> {
        if self.limits.rate > 0 {
            let offset =
                u128::from(self.index as u64) * 1_000_000_000 / u128::from(self.limits.rate);
            let offset = Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.created + offset)).await;
        }
        // The semaphore is never closed.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ConnError::Timeout)?;
        let setup = async {
            let started = Instant::now();
            let path = match how {
                Open::Join { .. } => self.target.phoenix_path(),
                Open::Raw { path } => path,
            };
            let mut conn = client::connect_to(&self.target, path, self.index).await?;
            let connected = Instant::now();
            let mut timing = Timing {
                connect: connected.saturating_duration_since(started),
                join: None,
            };
            if let Open::Join { topic, join_ref } = how {
                conn.join(buf, topic, join_ref).await?;
                timing.join = Some(connected.elapsed());
            }
            Ok((conn, timing))
        };
        tokio::time::timeout(self.limits.timeout, setup)
            .await
            .map_err(|_| ConnError::Timeout)?
    }

    /// This connection's number, in spawn order.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The run's live counters (for the progress bar).
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Report whether setup succeeded, then (if it did) wait for the start.
    /// `None`: setup failed, or the run was abandoned.
    pub async fn ready(mut self, ok: bool) -> Option<Phases> {
        let counter = if ok {
            &self.live.established
        } else {
            &self.live.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    live: Arc<Live>,
    progress: bool,
    labels: Labels,
    /// The progress bar, from [`Run::start`] to the end of [`Run::finish`].
    ticker: Option<Ticker>,
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
        let live = Arc::new(Live::default());
        Run {
            gate: Some(Gate {
                target: Arc::new(target),
                permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
                limits,
                ready: ready_tx,
                go: go_rx,
                live: live.clone(),
                index: 0,
                created: Instant::now(),
            }),
            ready,
            go,
            tasks: JoinSet::new(),
            epoch,
            spawned: 0,
            live,
            progress: limits.progress,
            labels: Labels::default(),
            ticker: None,
        }
    }

    /// Name the two timed phases on the progress bar.
    pub fn labels(&mut self, labels: Labels) {
        self.labels = labels;
    }

    /// The run's live counters.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Spawn one connection task; `task` gets its [`Gate`].
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(Gate) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if let Some(gate) = &self.gate {
            let mut gate = gate.clone();
            gate.index = self.spawned;
            self.tasks.spawn(task(gate));
            self.spawned += 1;
            self.live
                .requested
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        if self.progress && self.ticker.is_none() {
            self.ticker = Some(Ticker::start(
                self.live.clone(),
                self.go.subscribe(),
                self.labels,
            ));
        }
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
        // Clears the bar before anyone prints the summary.
        self.ticker = None;
        (results, lost)
    }
}

/// Run `fut` until `deadline`; `None` if it was cut.
pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), fut)
        .await
        .ok()
}
