//! The built-in upstream price feed: a real WebSocket server (hyper 1 +
//! fastwebsockets) that speaks coincap's format, so the relay's client path
//! is exercised offline (`--upstream simulate`) and tests can count what an
//! upstream sees (`sluice mock-upstream`).
//!
//! # Contract
//! * `GET /prices?assets=a,b,c` upgrades to a WebSocket, like coincap. The
//!   list is split on commas; ids failing [`feed::valid_asset`] are skipped,
//!   duplicates collapse, `ALL` means the catalogue ([`MockOptions::assets`]).
//!   No `assets`, no valid id or more than [`MAX_ASSETS`] ids is a 400. While
//!   refusing (a test control) the answer is 503.
//! * Assets outside the catalogue are served too (a random walk from a start
//!   price derived from the name), unless [`MockOptions::serve_unknown`] is
//!   off; then they get nothing, which is what coincap does. Either way they
//!   count as subscribed.
//! * On connect the socket gets one message with every served asset; then,
//!   `rate_hz` times a second, one message with the assets whose price text
//!   changed. Prices are one market per mock: every connection sees the same
//!   price for an asset at the same tick (ticks are aligned to the mock's
//!   start; the walk of asset X depends only on the seed and X).
//! * Pings are answered with pongs; a close is echoed; client data is ignored.
//! * Counters ([`MockStats`]): open sockets, sockets ever accepted, messages
//!   written, and per asset the number of open sockets that include it
//!   (assets at zero are left out). `GET /stats` returns them as JSON.
//! * Test controls, as [`MockHandle`] methods and as `POST /control/<verb>`
//!   (204): `silent`/`live` (stop or resume prices *and pongs*, to look like
//!   a stalled upstream), `refuse`/`accept` (new upgrades get 503), `drop`
//!   (cut every open socket without a close frame), `inject` (send the
//!   request body, at most 64 KiB, as one text message to every socket).
//! * [`MockHandle::shutdown`] (or dropping the handle) stops accepting and
//!   closes sockets with 1001; `shutdown` waits for every task (at most 5 s).
//!   Nothing is spawned untracked. The counters live behind one mutex that is
//!   never held across an `.await`.
//!
//! # Layout
//! * this file: options, counters, [`MockUpstream::start`], [`MockHandle`].
//! * `http`: accept loop, routes (`/prices`, `/stats`, `/control/*`).
//! * `socket`: one WebSocket (reader for pongs, writer for prices).
//! * `market`: the random walks and price formatting, pure.

mod http;
mod market;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::feed;
pub use market::format_price;
use market::Walk;

/// Most asset ids one connection may ask for.
pub const MAX_ASSETS: usize = 1000;
/// How long [`MockHandle::shutdown`] waits for its tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the mock behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct MockOptions {
    /// Price ticks per second (each tick moves every served asset). Default
    /// 2.0; must be finite, > 0 and ≤ 1000.
    pub rate_hz: f64,
    /// The catalogue: what `assets=ALL` means, and walks kept for the mock's
    /// lifetime. Default bitcoin, ethereum, solana, dogecoin, cardano.
    pub assets: Vec<String>,
    /// Seed for the price walks; `None` draws one (see [`MockHandle::seed`]).
    pub seed: Option<u64>,
    /// Serve assets outside the catalogue. Default true.
    pub serve_unknown: bool,
}

impl Default for MockOptions {
    fn default() -> MockOptions {
        MockOptions {
            rate_hz: 2.0,
            assets: ["bitcoin", "ethereum", "solana", "dogecoin", "cardano"]
                .map(String::from)
                .to_vec(),
            seed: None,
            serve_unknown: true,
        }
    }
}

impl MockOptions {
    /// Check the options before binding anything.
    pub fn validate(&self) -> Result<(), MockError> {
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 1000.0) {
            return Err(MockError::Rate(self.rate_hz));
        }
        if let Some(bad) = self.assets.iter().find(|a| !feed::valid_asset(a)) {
            return Err(MockError::Asset(bad.clone()));
        }
        Ok(())
    }
}

/// Why the mock cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The rate is not in (0, 1000].
    #[error("rate must be a number of ticks per second in (0, 1000], not {0}")]
    Rate(f64),
    /// A catalogue entry is not a valid asset id.
    #[error("invalid asset id {0:?} (expected 1-64 of [a-z0-9-])")]
    Asset(String),
    /// The listener's address cannot be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A snapshot of the mock's counters (also `GET /stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MockStats {
    /// Open WebSocket connections (counted from the 101 on).
    pub connections: u64,
    /// WebSocket connections ever accepted.
    pub connections_total: u64,
    /// Text messages written (prices and injected).
    pub messages_sent: u64,
    /// Per asset, the open connections that include it; absent means 0.
    pub subscriptions: BTreeMap<String, u64>,
}

/// The built-in upstream feed; see [`MockUpstream::start`].
#[derive(Debug)]
pub struct MockUpstream {
    _private: (),
}

/// A running mock. Dropping it stops the mock (without waiting).
#[derive(Debug)]
pub struct MockHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// What every task of one mock shares.
#[derive(Debug)]
struct Shared {
    rate_hz: f64,
    period: Duration,
    /// Tick 0 of the market.
    epoch: Instant,
    seed: u64,
    serve_unknown: bool,
    catalogue: Vec<String>,
    catalogue_set: HashSet<String>,
    /// The one lock: counters and walks. Never held across `.await`.
    state: Mutex<State>,
    messages_sent: AtomicU64,
    silent: AtomicBool,
    refuse: AtomicBool,
    /// Test controls fanned out to every socket.
    control: broadcast::Sender<Control>,
}

#[derive(Debug, Default)]
struct State {
    connections: u64,
    connections_total: u64,
    subscriptions: HashMap<String, u64>,
    walks: HashMap<String, Walk>,
}

#[derive(Debug, Clone)]
enum Control {
    Inject(Arc<str>),
    Drop,
}

// === impl MockUpstream ===

impl MockUpstream {
    /// Serve the feed on `listener` until the handle is shut down or dropped.
    pub async fn start(listener: TcpListener, opts: MockOptions) -> Result<MockHandle, MockError> {
        opts.validate()?;
        let addr = listener.local_addr()?;
        let seed = opts.seed.unwrap_or_else(rand::random);
        let epoch = Instant::now();
        let mut state = State::default();
        for asset in &opts.assets {
            state
                .walks
                .entry(asset.clone())
                .or_insert_with(|| Walk::new(seed, asset, 0));
        }
        let shared = Arc::new(Shared {
            rate_hz: opts.rate_hz,
            period: Duration::from_secs_f64(1.0 / opts.rate_hz),
            epoch,
            seed,
            serve_unknown: opts.serve_unknown,
            catalogue_set: opts.assets.iter().cloned().collect(),
            catalogue: opts.assets,
            state: Mutex::new(state),
            messages_sent: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            control: broadcast::channel(64).0,
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(http::accept_loop(
            listener,
            shared.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        tracing::debug!(%addr, seed, "mock upstream started");
        Ok(MockHandle {
            shared,
            addr,
            stop,
            tracker,
        })
    }
}

// === impl MockHandle ===

impl MockHandle {
    /// The address the mock listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The seed of the price walks (drawn when none was given).
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// WebSocket connections ever accepted.
    pub fn connections_total(&self) -> u64 {
        self.shared.lock().connections_total
    }

    /// Open connections that include `asset`.
    pub fn subscriptions(&self, asset: &str) -> u64 {
        self.shared
            .lock()
            .subscriptions
            .get(asset)
            .copied()
            .unwrap_or(0)
    }

    /// Stop (`true`) or resume sending prices and pongs.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    /// Refuse (`true`) new upgrades with 503, or accept them again.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Send `text` as one text message to every open connection.
    pub fn inject(&self, text: &str) {
        let _ = self.shared.control.send(Control::Inject(Arc::from(text)));
    }

    /// Cut every open connection without a close frame; keep listening.
    pub fn drop_connections(&self) {
        let _ = self.shared.control.send(Control::Drop);
    }

    /// Stop accepting, close every socket with 1001 and wait for the tasks
    /// (at most 5 s).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.addr, "mock upstream tasks did not stop in time");
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> MockStats {
        let state = self.lock();
        MockStats {
            connections: state.connections,
            connections_total: state.connections_total,
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            subscriptions: state
                .subscriptions
                .iter()
                .map(|(a, n)| (a.clone(), *n))
                .collect(),
        }
    }

    /// The market tick in progress at `now`.
    fn tick_at(&self, now: Instant) -> u64 {
        self.ticks_since_epoch(now).floor() as u64
    }

    /// The tick scheduled at `at` (an instant from the tick interval).
    fn tick_scheduled(&self, at: Instant) -> u64 {
        self.ticks_since_epoch(at).round() as u64
    }

    fn ticks_since_epoch(&self, t: Instant) -> f64 {
        // Float to int `as` saturates; this is finite and >= 0.
        t.saturating_duration_since(self.epoch).as_secs_f64() * self.rate_hz
    }

    /// When tick `n` happens.
    fn instant_of(&self, n: u64) -> Instant {
        self.epoch + Duration::from_secs_f64(n as f64 / self.rate_hz)
    }

    fn serves(&self, asset: &str) -> bool {
        self.serve_unknown || self.catalogue_set.contains(asset)
    }

    /// The price text of each asset at tick `n` (`None`: not served).
    fn prices(&self, assets: &[String], n: u64) -> Vec<Option<String>> {
        let mut state = self.lock();
        assets
            .iter()
            .map(|asset| {
                if !self.serves(asset) {
                    return None;
                }
                let walk = state
                    .walks
                    .entry(asset.clone())
                    .or_insert_with(|| Walk::new(self.seed, asset, n));
                Some(format_price(walk.price_at(n)))
            })
            .collect()
    }
}

/// One open socket's place in the counters; undone on drop, however the
/// socket ends.
struct Subscription {
    shared: Arc<Shared>,
    assets: Vec<String>,
}

impl Subscription {
    fn open(shared: Arc<Shared>, assets: Vec<String>) -> Subscription {
        {
            let mut state = shared.lock();
            state.connections += 1;
            state.connections_total += 1;
            for asset in &assets {
                *state.subscriptions.entry(asset.clone()).or_insert(0) += 1;
            }
        }
        Subscription { shared, assets }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.connections = state.connections.saturating_sub(1);
        for asset in &self.assets {
            let left = match state.subscriptions.get_mut(asset) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if left == 0 {
                state.subscriptions.remove(asset);
                // Walks of unrequested non-catalogue assets are not kept.
                if !self.shared.catalogue_set.contains(asset) {
                    state.walks.remove(asset);
                }
            }
        }
    }
}
