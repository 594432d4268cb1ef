//! The pooled relay: one upstream connection per asset on this node,
//! however many sockets subscribe to it.
//!
//! # Contract
//! * **Design: one upstream connection per asset.** The URL template's
//!   `{assets}` is replaced by the single asset. Trade-off: N active assets
//!   cost N upstream connections (capped by `upstream_max_connections`; past
//!   it a join is refused `upstream_limit`), but a subscription change never
//!   forces a reconnect of a shared connection (coincap takes its asset list
//!   only in the URL), and one asset's upstream trouble never touches another's.
//! * The first subscriber of an asset starts its feed task; after the last
//!   leaves, the feed lingers `upstream_linger` and then closes its upstream.
//!   A subscriber arriving during the linger keeps it.
//! * A feed reconnects with exponential backoff and full jitter (reset after
//!   a stable period), pings its upstream every third of
//!   `upstream_silence_timeout` and reconnects when nothing (message or pong)
//!   arrived for that long. Subscribers stay joined throughout and get
//!   `status {upstream: "reconnecting" | "live"}` pushes, conflated in the
//!   same urgent slot as prices (sent before the next price).
//! * Each upstream message is parsed once; each price is encoded once per
//!   serializer (join_ref null, like a Phoenix broadcast) and offered to every
//!   subscriber's [`LatestSlot`] (conflation: never a queue, never a
//!   disconnect). Malformed messages and entries are counted and ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use serde_json::json;

use super::backoff::{self, Backoff};
use super::client::{Connector, Upstream, UpstreamUrl};
use super::feed;
use super::latest::LatestSlot;
use crate::protocol::{self, Format, Frame, Payload};
use crate::transport::outbox::Outbox;

/// Relay settings, from the configuration.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Keep an upstream open this long after its last subscriber left.
    pub linger: Duration,
    /// Most upstream connections at once.
    pub max_connections: usize,
    /// Reconnect delays.
    pub backoff: backoff::Settings,
    /// Reconnect when nothing arrived for this long.
    pub silence_timeout: Duration,
}

/// Why a subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// `upstream_max_connections` assets are already relayed.
    #[error("upstream connection limit reached")]
    UpstreamLimit,
    /// The relay has no upstream URL (simulated feed not started).
    #[error("no upstream configured")]
    NoUpstream,
}

impl RelayError {
    /// Reason for the join reply.
    pub fn reason(self) -> &'static str {
        match self {
            RelayError::UpstreamLimit => "upstream_limit",
            RelayError::NoUpstream => "no_upstream",
        }
    }
}

/// The last value of an asset.
#[derive(Debug, Clone, PartialEq)]
pub struct Last {
    /// The price.
    pub value: f64,
    /// When it arrived, ms since the epoch.
    pub time: u64,
}

/// Upstream state of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connecting for the first time.
    Connecting,
    /// Connected.
    Live,
    /// Lost; reconnecting with backoff.
    Reconnecting,
}

impl Status {
    /// The word clients see.
    pub fn label(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Live => "live",
            Status::Reconnecting => "reconnecting",
        }
    }
}

struct Subscriber {
    outbox: Arc<Outbox>,
    format: Format,
    slot: Arc<LatestSlot>,
}

struct FeedState {
    last: Option<Last>,
    status: Status,
    subscribers: HashMap<u64, Subscriber>,
    /// Bumped by every subscribe, so a linger timer knows it is stale.
    generation: u64,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The one linger timer of this feed, while it has no subscribers.
    linger: Option<tokio::task::JoinHandle<()>>,
    /// Set when the feed is stopped: a task finishing its last step after
    /// the abort must not move the gauges.
    stopped: bool,
}

struct Feed {
    asset: String,
    /// `prices:<asset>`, built once (used for every encoded frame).
    topic: String,
    state: Mutex<FeedState>,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct RelayMetrics {
    messages: Counter,
    malformed: Counter,
    deliveries: Counter,
    conflated: Counter,
    latency: Histogram,
    connecting: Gauge,
    live: Gauge,
    reconnecting: Gauge,
}

impl RelayMetrics {
    fn new() -> RelayMetrics {
        RelayMetrics {
            messages: counter!("sluice_upstream_messages_total"),
            malformed: counter!("sluice_upstream_malformed_total"),
            deliveries: counter!("sluice_relay_deliveries_total"),
            conflated: counter!("sluice_relay_conflated_total"),
            latency: histogram!("sluice_relay_latency_seconds"),
            connecting: gauge!("sluice_upstream_connections", "state" => "connecting"),
            live: gauge!("sluice_upstream_connections", "state" => "live"),
            reconnecting: gauge!("sluice_upstream_connections", "state" => "reconnecting"),
        }
    }

    fn gauge(&self, s: Status) -> &Gauge {
        match s {
            Status::Connecting => &self.connecting,
            Status::Live => &self.live,
            Status::Reconnecting => &self.reconnecting,
        }
    }

    fn reconnect(reason: &'static str) {
        counter!("sluice_upstream_reconnects_total", "reason" => reason).increment(1);
    }
}

/// The relay of one node.
pub struct Relay {
    settings: RelaySettings,
    template: OnceLock<String>,
    connector: Connector,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    next_id: AtomicU64,
    metrics: RelayMetrics,
}

impl Relay {
    /// A relay; the upstream URL template is set now or later ([`Relay::set_template`]).
    pub fn new(settings: RelaySettings, connector: Connector, template: Option<String>) -> Relay {
        let cell = OnceLock::new();
        if let Some(t) = template {
            let _ = cell.set(t);
        }
        Relay {
            settings,
            template: cell,
            connector,
            feeds: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics: RelayMetrics::new(),
        }
    }

    /// Set the upstream URL template (once; the simulated feed's address).
    pub fn set_template(&self, template: String) {
        let _ = self.template.set(template);
    }

    /// The latency histogram subscribers' streams record into.
    pub fn latency(&self) -> Histogram {
        self.metrics.latency.clone()
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Assets with a feed (running or lingering).
    pub fn active_assets(&self) -> usize {
        self.feeds().len()
    }

    /// Subscribe a socket to `asset`: returns the subscription id, the last
    /// value and the upstream status. Starts the feed if needed.
    pub fn subscribe(
        self: &Arc<Self>,
        asset: &str,
        outbox: Arc<Outbox>,
        format: Format,
        slot: Arc<LatestSlot>,
    ) -> Result<(u64, Option<Last>, Status), RelayError> {
        let template = self.template.get().ok_or(RelayError::NoUpstream)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut feeds = self.feeds();
        let feed = match feeds.get(asset) {
            Some(f) => f.clone(),
            None => {
                if feeds.len() >= self.settings.max_connections {
                    // Lingering feeds (no subscribers) give way to a live demand.
                    let idle = feeds
                        .iter()
                        .find(|(_, f)| f.lock().subscribers.is_empty())
                        .map(|(a, _)| a.clone());
                    match idle {
                        Some(asset) => {
                            if let Some(f) = feeds.remove(&asset) {
                                self.stop(&f);
                            }
                        }
                        None => return Err(RelayError::UpstreamLimit),
                    }
                }
                let feed = Arc::new(Feed {
                    asset: asset.to_owned(),
                    topic: format!("prices:{asset}"),
                    state: Mutex::new(FeedState {
                        last: None,
                        status: Status::Connecting,
                        subscribers: HashMap::new(),
                        generation: 0,
                        task: None,
                        linger: None,
                        stopped: false,
                    }),
                });
                feeds.insert(asset.to_owned(), feed.clone());
                feed
            }
        };
        let mut st = feed.lock();
        st.generation += 1;
        if let Some(timer) = st.linger.take() {
            timer.abort();
        }
        st.subscribers.insert(
            id,
            Subscriber {
                outbox,
                format,
                slot,
            },
        );
        if st.task.is_none() {
            let url = template.replace("{assets}", asset);
            self.metrics.connecting.increment(1.0);
            st.task = Some(tokio::spawn(run_feed(self.clone(), feed.clone(), url)));
        }
        Ok((id, st.last.clone(), st.status))
    }

    /// Remove subscription `id` of `asset`; after the last one the feed
    /// lingers, then stops.
    pub fn unsubscribe(self: &Arc<Self>, asset: &str, id: u64) {
        let Some(feed) = self.feeds().get(asset).cloned() else {
            return;
        };
        let mut st = feed.lock();
        if let Some(sub) = st.subscribers.remove(&id) {
            sub.slot.close();
        }
        if !st.subscribers.is_empty() || st.stopped {
            return;
        }
        // One timer per feed: a new one replaces the old.
        let generation = st.generation;
        let relay = self.clone();
        let linger = self.settings.linger;
        let asset = asset.to_owned();
        if let Some(old) = st.linger.replace(tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            relay.stop_if_idle(&asset, generation);
        })) {
            old.abort();
        }
    }

    /// Stop a feed's task (feeds lock held by the caller, feed removed from the map).
    fn stop(&self, feed: &Feed) {
        let mut st = feed.lock();
        st.stopped = true;
        if let Some(task) = st.task.take() {
            task.abort();
            self.metrics.gauge(st.status).decrement(1.0);
        }
        if let Some(timer) = st.linger.take() {
            timer.abort();
        }
        tracing::info!(asset = %feed.asset, "upstream closed");
    }

    fn stop_if_idle(&self, asset: &str, generation: u64) {
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get(asset).cloned() else {
            return;
        };
        {
            let mut st = feed.lock();
            if !st.subscribers.is_empty() || st.generation != generation {
                return;
            }
            // This timer is the one running now: do not abort it.
            st.linger = None;
        }
        feeds.remove(asset);
        self.stop(&feed);
    }

    fn set_status(&self, feed: &Feed, status: Status) {
        let subs = {
            let mut st = feed.lock();
            if st.status == status || st.stopped {
                return;
            }
            self.metrics.gauge(st.status).decrement(1.0);
            self.metrics.gauge(status).increment(1.0);
            st.status = status;
            subscribers(&st)
        };
        let payload = Payload::json(&json!({ "upstream": status.label() }));
        // Conflated like prices (the urgent lane): never queued behind
        // pushes, never a reason to disconnect a slow subscriber.
        fan_out(feed, subs, "status", &payload, |slot, frame| {
            slot.offer_status(frame);
            false
        });
    }

    fn deliver(&self, feed: &Feed, tick: &feed::Tick, at: Instant) {
        let time = crate::clock::now_ms();
        let subs = {
            let mut st = feed.lock();
            st.last = Some(Last {
                value: tick.value,
                time,
            });
            subscribers(&st)
        };
        let payload = Payload::json(&json!({ "value": tick.value, "time": time }));
        let (delivered, conflated) = fan_out(feed, subs, "new", &payload, |slot, frame| {
            slot.offer(frame, at)
        });
        self.metrics.deliveries.increment(delivered);
        self.metrics.conflated.increment(conflated);
    }
}

type Subs = Vec<(Arc<Outbox>, Format, Arc<LatestSlot>)>;

/// A snapshot of a feed's subscribers, taken under its lock.
fn subscribers(st: &FeedState) -> Subs {
    st.subscribers
        .values()
        .map(|s| (s.outbox.clone(), s.format, s.slot.clone()))
        .collect()
}

/// Encode `event` once per serializer and hand the shared frame to every
/// subscriber's slot with `offer` (true = it replaced an unsent frame), then
/// wake its writer. Returns (offered, replaced).
fn fan_out(
    feed: &Feed,
    subs: Subs,
    event: &str,
    payload: &Payload,
    offer: impl Fn(&LatestSlot, Frame) -> bool,
) -> (u64, u64) {
    let mut frames: [Option<Frame>; 2] = [None, None];
    let (mut offered, mut replaced) = (0u64, 0u64);
    for (outbox, format, slot) in subs {
        let frame = match &frames[format.index()] {
            Some(f) => f.clone(),
            None => match protocol::encode_broadcast(format, &feed.topic, event, payload) {
                Ok(f) => {
                    frames[format.index()] = Some(f.clone());
                    f
                }
                Err(_) => continue,
            },
        };
        replaced += u64::from(offer(&slot, frame));
        offered += 1;
        outbox.wake_writer();
    }
    (offered, replaced)
}

/// One asset's feed: connect, relay, reconnect, until aborted.
async fn run_feed(relay: Arc<Relay>, feed: Arc<Feed>, url: String) {
    let url = match UpstreamUrl::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(asset = %feed.asset, url, error = %e, "bad upstream URL");
            return;
        }
    };
    let mut backoff = Backoff::new(relay.settings.backoff);
    loop {
        match relay.connector.connect(&url).await {
            Ok(up) => {
                tracing::info!(asset = %feed.asset, "upstream live");
                relay.set_status(&feed, Status::Live);
                let since = Instant::now();
                let why = relay_messages(&relay, &feed, up).await;
                RelayMetrics::reconnect(why);
                tracing::warn!(asset = %feed.asset, reason = why, "upstream lost; reconnecting");
                backoff.on_disconnect(since.elapsed());
            }
            Err(e) => {
                RelayMetrics::reconnect(e.label());
                tracing::warn!(asset = %feed.asset, error = %e, "upstream connect failed");
            }
        }
        relay.set_status(&feed, Status::Reconnecting);
        backoff.wait().await;
    }
}

/// Relay one connection's messages until it fails; returns why.
async fn relay_messages(relay: &Relay, feed: &Feed, mut up: Upstream) -> &'static str {
    let silence = relay.settings.silence_timeout;
    let mut ping = tokio::time::interval((silence / 3).max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &relay.metrics;
    enum Event {
        Message(Result<Option<Bytes>, super::client::ClientError>),
        Ping,
        Silence,
    }
    loop {
        let deadline = up.last_seen() + silence;
        let event = tokio::select! {
            msg = up.next_text() => Event::Message(msg),
            _ = ping.tick() => Event::Ping,
            _ = tokio::time::sleep_until(deadline) => Event::Silence,
        };
        match event {
            Event::Message(Ok(Some(text))) => {
                let at = Instant::now();
                m.messages.increment(1);
                match feed::parse(&text) {
                    Ok(parsed) => {
                        if !parsed.is_clean() {
                            m.malformed.increment(1);
                        }
                        for tick in parsed.ticks.iter().filter(|t| t.asset == feed.asset) {
                            relay.deliver(feed, tick, at);
                        }
                    }
                    Err(e) => {
                        m.malformed.increment(1);
                        tracing::debug!(asset = %feed.asset, error = %e, "malformed upstream message");
                    }
                }
            }
            Event::Message(Ok(None)) => return "closed",
            Event::Message(Err(e)) => return e.label(),
            Event::Ping => {
                let _ = up.ping(b"sluice");
            }
            Event::Silence => {
                if up.last_seen() + silence <= tokio::time::Instant::now() {
                    return "silent";
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::transport::outbox::Limits;

    fn relay(linger: Duration, max: usize) -> Arc<Relay> {
        let connector = Connector::new(&super::super::client::ClientConfig::default()).unwrap();
        // Port 9 (discard) on loopback: refused at once; the feed keeps retrying.
        Arc::new(Relay::new(
            RelaySettings {
                linger,
                max_connections: max,
                backoff: backoff::Settings::default(),
                silence_timeout: Duration::from_secs(30),
            },
            connector,
            Some("ws://127.0.0.1:9/prices?assets={assets}".into()),
        ))
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            Limits {
                bulk_bytes: 1 << 20,
                control_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            crate::metrics::Metrics::new(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn linger_keeps_the_feed_then_stops_it_and_a_return_cancels_it() {
        let r = relay(Duration::from_secs(30), 10);
        let slot = Arc::new(LatestSlot::default());
        let (id, last, status) = r.subscribe("bitcoin", outbox(), Format::V2, slot).unwrap();
        assert_eq!((last, status), (None, Status::Connecting));
        r.unsubscribe("bitcoin", id);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(r.active_assets(), 1, "still lingering");
        // A subscriber during the linger keeps the feed past the first timer.
        let (id2, ..) = r
            .subscribe(
                "bitcoin",
                outbox(),
                Format::V2,
                Arc::new(LatestSlot::default()),
            )
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(r.active_assets(), 1, "the old timer did not stop it");
        r.unsubscribe("bitcoin", id2);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(r.active_assets(), 0, "stopped after the linger");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_refuses_only_when_no_feed_is_lingering() {
        let r = relay(Duration::from_secs(30), 1);
        let (a, ..) = r
            .subscribe("a", outbox(), Format::V2, Arc::new(LatestSlot::default()))
            .unwrap();
        assert_eq!(
            r.subscribe("b", outbox(), Format::V2, Arc::new(LatestSlot::default()))
                .err(),
            Some(RelayError::UpstreamLimit)
        );
        r.unsubscribe("a", a);
        assert!(r
            .subscribe("b", outbox(), Format::V2, Arc::new(LatestSlot::default()))
            .is_ok());
        assert_eq!(r.active_assets(), 1);
    }
}
