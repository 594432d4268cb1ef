//! `broadcast`: S subscriber connections joined to one room (`room:load`),
//! one publisher connection pushing `msg` events into it. The room channel
//! broadcasts every push to every subscriber (the publisher included, which
//! drains its own copies and does not count them).
//!
//! # Timestamps and coordinated omission
//! Every payload carries a [`Stamp`]: `t`, nanoseconds since the generator's
//! epoch, and `s`, the publish sequence number. With `--rate R` the publisher
//! runs on a schedule: message `s` is *intended* at `start + s/R`, and `t` is
//! that intended time, not the moment it was actually written. A publisher
//! that falls behind (a stalled socket, a busy runtime) sends the late
//! messages at once with their original stamps, so the queueing it suffered
//! shows up in the latencies instead of being silently skipped.
//!
//! With `--rate 0` the publisher sends flat out, but never more than
//! `--max-lag` messages ahead of the average live subscriber (so the server's
//! per-socket queues measure fan-out, not an unbounded backlog); `t` is then
//! the actual send time.
//!
//! # Counting
//! * `sent`: publishes intended in the measured window; `expected` = `sent` ×
//!   established subscribers; `received`: measured deliveries.
//! * `timeouts` = `expected` − `received`: deliveries not made by the
//!   deadline (dropped, late, or to a subscriber that died).
//! * After the end the publisher pushes a `done` event; a subscriber stops
//!   when it sees it (or at the deadline).
//!
//! # Raw protocol
//! Subscribers open `/sub`, the publisher `/pub` ([`client::raw`]); the
//! messages are the binary stamps themselves (`t`, `s`, filler to `--size`,
//! at least 16 bytes; `--binary` is implied), and `done` is the text
//! message `done`. Pacing, flat out with `--max-lag`, and the counting are
//! the same code as with Phoenix. Nothing comes back to a raw publisher, so
//! it keeps its socket open after `done` until every subscriber has ended
//! (or the deadline).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::client::{self, raw, Conn, ConnError, Inbound, Protocol, Reader, Writer};
use crate::codec::{self, Body, Encoding, Kind};
use crate::harness::{self, Gate, Phases, Run};
use crate::progress::Live;
use crate::report::{per_second, Params, Summary};
use crate::stats::{ErrorKind, Stats};
use crate::{Common, Error};

/// The join_ref (and join ref) of every connection.
const JOIN_REF: &str = "1";
/// The ref of publish 0 (the join took "1").
const FIRST_REF: u64 = 2;
/// The event of a timestamped message.
const MSG: &str = "msg";
/// The event the publisher pushes after the end.
const DONE: &str = "done";
/// How long closing a connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes of a binary stamp (`t` and `s`, big-endian u64s).
pub const STAMP_LEN: usize = 16;

/// Options of the `broadcast` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct BroadcastArgs {
    /// Publishes per second; 0 = flat out (bounded by --max-lag).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Payload size: bytes of a binary payload (at least 16), or length of the JSON `d` string.
    #[arg(long, short = 'p', default_value_t = 20)]
    pub size: usize,
    /// Publish binary payloads (ArrayBuffer, kind-0 binary frames) instead
    /// of JSON (always so with --protocol raw).
    #[arg(long)]
    pub binary: bool,
    /// With --rate 0: how many messages the publisher may run ahead of the average subscriber.
    #[arg(long, default_value_t = 64)]
    pub max_lag: u64,
    /// The room's topic.
    #[arg(long, default_value = "room:load")]
    pub topic: String,
}

impl Default for BroadcastArgs {
    fn default() -> Self {
        BroadcastArgs {
            rate: 1000,
            size: 20,
            binary: false,
            max_lag: 64,
            topic: "room:load".into(),
        }
    }
}

// === stamp ===

/// What every `msg` payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Intended (paced) or actual (flat out) send time, ns since the epoch.
    pub t: u64,
    /// Publish sequence number.
    pub s: u64,
}

impl Stamp {
    /// Write the payload into `out` (cleared first): binary `t`, `s` then
    /// filler up to `size` bytes; JSON `{"t":..,"s":..,"d":"xxx…"}` with a
    /// `size`-byte filler string.
    pub fn write(&self, encoding: Encoding, size: usize, out: &mut Vec<u8>) {
        out.clear();
        match encoding {
            Encoding::Binary => {
                out.extend_from_slice(&self.t.to_be_bytes());
                out.extend_from_slice(&self.s.to_be_bytes());
                out.resize(size.max(STAMP_LEN), b'x');
            }
            Encoding::Json => {
                let mut digits = [0u8; 20];
                out.extend_from_slice(br#"{"t":"#);
                out.extend_from_slice(super::decimal(self.t, &mut digits).as_bytes());
                out.extend_from_slice(br#","s":"#);
                out.extend_from_slice(super::decimal(self.s, &mut digits).as_bytes());
                out.extend_from_slice(br#","d":""#);
                out.resize(out.len() + size, b'x');
                out.extend_from_slice(br#""}"#);
            }
        }
    }

    /// Read the stamp of a received payload (any key order in JSON).
    pub fn read(body: Body<'_>) -> Option<Stamp> {
        match body {
            Body::Binary(b) => {
                let t = b.get(..8)?.try_into().ok()?;
                let s = b.get(8..16)?.try_into().ok()?;
                Some(Stamp {
                    t: u64::from_be_bytes(t),
                    s: u64::from_be_bytes(s),
                })
            }
            Body::Json(text) => serde_json::from_str(text).ok(),
        }
    }
}

// === run ===

/// What the publisher and the subscribers share (used only when flat out).
struct Shared {
    /// Deliveries to live subscribers (a subscriber that ends takes its own back out).
    delivered: AtomicU64,
    /// Subscribers still reading.
    live: AtomicU64,
    /// Signalled on every delivery and every subscriber end (the flat-out
    /// publisher's only wake-up).
    progress: Notify,
    /// Signalled on every subscriber end (a raw publisher waits for all).
    gone: Notify,
}

/// What one connection needs.
struct Cfg {
    protocol: Protocol,
    topic: String,
    encoding: Encoding,
    size: usize,
    rate: u64,
    max_lag: u64,
}

impl Cfg {
    fn flat_out(&self) -> bool {
        self.rate == 0
    }
}

/// One task's result.
struct Outcome {
    publisher: bool,
    established: bool,
    stats: Stats,
}

/// Run the scenario.
pub async fn run(common: &Common, args: &BroadcastArgs) -> Result<Summary, Error> {
    let epoch = Instant::now();
    let encoding = if args.binary || common.protocol == Protocol::Raw {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    if args.rate == 0 && args.max_lag == 0 {
        return Err(Error::Invalid("--max-lag must be at least 1".into()));
    }
    let target = common.target().await?;
    let cfg = Arc::new(Cfg {
        protocol: common.protocol,
        topic: args.topic.clone(),
        encoding,
        size: args.size,
        rate: args.rate,
        max_lag: args.max_lag,
    });
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        live: AtomicU64::new(common.connections as u64),
        progress: Notify::new(),
        gone: Notify::new(),
    });
    let mut run = Run::<Outcome>::new(target, common.setup_limits(), epoch);
    for _ in 0..common.connections {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        run.spawn(move |gate| subscriber(gate, cfg, shared));
    }
    {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        run.spawn(move |gate| publisher(gate, cfg, shared));
    }
    let (phases, setup) = run
        .start(common.warmup, common.duration, common.timeout)
        .await;
    let (results, lost) = run.finish(phases.deadline).await;

    let mut total = Stats::new();
    let mut subscribers = 0u64;
    for r in &results {
        total.merge(&r.stats);
        if r.established && !r.publisher {
            subscribers += 1;
        }
    }
    for _ in 0..lost {
        total.error(ErrorKind::Internal, "connection task panicked or was cut");
    }
    let expected = total.sent * subscribers;
    total.timeouts += expected.saturating_sub(total.received);
    let window = phases.window().as_secs_f64();
    let payload_bytes = match encoding {
        Encoding::Binary => args.size.max(STAMP_LEN),
        Encoding::Json => args.size,
    };
    let params = Params {
        rate: Some(args.rate),
        max_lag: (args.rate == 0).then_some(args.max_lag),
        topic: Some(match common.protocol {
            Protocol::Phoenix => args.topic.clone(),
            Protocol::Raw => raw::SUB.to_owned(),
        }),
        ..Params::new(common, payload_bytes, encoding)
    };
    let mut summary = Summary::new("broadcast", params, setup, &total, window, "deliveries/s");
    summary.expected = Some(expected);
    summary.publish_rate = Some(per_second(total.sent, window));
    Ok(summary)
}

/// Connect and join (raw: connect to `/pub` or `/sub`); on failure report
/// it and return the failed outcome.
async fn open(gate: Gate, cfg: &Cfg, publisher: bool) -> Result<(Conn, Phases), Outcome> {
    let mut buf = Vec::with_capacity(128);
    let failed = |stats| Outcome {
        publisher,
        established: false,
        stats,
    };
    let opened = match (cfg.protocol, publisher) {
        (Protocol::Phoenix, _) => gate.connect_and_join(&mut buf, &cfg.topic, JOIN_REF).await,
        (Protocol::Raw, true) => gate.connect_raw(raw::PUB).await,
        (Protocol::Raw, false) => gate.connect_raw(raw::SUB).await,
    };
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            let _ = gate.ready(false).await;
            return Err(failed(Stats::failed(e.kind(), e)));
        }
    };
    match gate.ready(true).await {
        Some(phases) => Ok((conn, phases)),
        None => {
            client::close(&mut conn.writer).await;
            Err(failed(Stats::new()))
        }
    }
}

// === subscriber ===

async fn subscriber(gate: Gate, cfg: Arc<Cfg>, shared: Arc<Shared>) -> Outcome {
    let live = gate.live();
    let (conn, phases) = match open(gate, &cfg, false).await {
        Ok(x) => x,
        Err(outcome) => {
            leave(&shared, 0);
            return outcome;
        }
    };
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let mut stats = Stats::recording(live.clone());
    let mut delivered = 0;
    let (ping_tx, ping_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel();
    let read = async {
        let r = harness::until(
            phases.deadline,
            deliveries(
                &mut reader,
                &ping_tx,
                Ctx {
                    cfg: &cfg,
                    phases: &phases,
                    shared: &shared,
                    live: &live,
                },
                &mut stats,
                &mut delivered,
            ),
        )
        .await;
        let _ = stop_tx.send(());
        r
    };
    let heartbeats = cfg.protocol == Protocol::Phoenix;
    let (read, write) = tokio::join!(
        read,
        client::keepalive(&mut writer, ping_rx, stop_rx, heartbeats)
    );
    match (read, write) {
        (Some(Err(e)), _) | (_, Err(e)) => stats.error(e.kind(), e),
        _ => {}
    }
    // Only flat-out runs add deliveries to the shared count.
    leave(&shared, if cfg.flat_out() { delivered } else { 0 });
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut writer)).await;
    Outcome {
        publisher: false,
        established: true,
        stats,
    }
}

/// A subscriber is done: take its deliveries out of the live average.
fn leave(shared: &Shared, delivered: u64) {
    shared.delivered.fetch_sub(delivered, Ordering::Relaxed);
    shared.live.fetch_sub(1, Ordering::Relaxed);
    shared.progress.notify_one();
    shared.gone.notify_one();
}

/// What a subscriber's reader consults.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    cfg: &'a Cfg,
    phases: &'a Phases,
    shared: &'a Shared,
    live: &'a Live,
}

/// What one inbound message is to a subscriber.
enum Delivery {
    /// A timestamped message (`None`: the stamp is unreadable).
    Stamped(Option<Stamp>),
    /// The publisher's `done`.
    Done,
    /// Anything else (already dealt with).
    Other,
}

/// Read deliveries until the publisher's `done`. Not cancel-safe.
async fn deliveries(
    reader: &mut Reader,
    pings: &mpsc::Sender<Vec<u8>>,
    ctx: Ctx<'_>,
    stats: &mut Stats,
    delivered: &mut u64,
) -> Result<(), ConnError> {
    let Ctx {
        cfg,
        phases,
        shared,
        live,
    } = ctx;
    let (from, end) = (phases.ns(phases.measure_from), phases.ns(phases.end));
    loop {
        let inbound = client::recv(reader).await?;
        let now = phases.now_ns();
        let delivery = match cfg.protocol {
            Protocol::Phoenix => phoenix_delivery(&inbound, pings, cfg)?,
            Protocol::Raw => raw_delivery(&inbound, pings, stats)?,
        };
        let stamp = match delivery {
            Delivery::Stamped(stamp) => stamp,
            Delivery::Done => return Ok(()),
            Delivery::Other => continue,
        };
        if let Inbound::Text(p) | Inbound::Binary(p) = &inbound {
            live.message(p.len());
        }
        let Some(stamp) = stamp else {
            stats.error(ErrorKind::Decode, "broadcast without a timestamp");
            continue;
        };
        if stamp.t >= from && stamp.t < end {
            stats.received += 1;
            stats.record(Duration::from_nanos(now.saturating_sub(stamp.t)));
        }
        *delivered += 1;
        if cfg.flat_out() {
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            shared.progress.notify_one();
        }
    }
}

/// Phoenix: a `msg` or `done` broadcast to our topic, or something else.
fn phoenix_delivery(
    inbound: &Inbound,
    pings: &mpsc::Sender<Vec<u8>>,
    cfg: &Cfg,
) -> Result<Delivery, ConnError> {
    let Some(msg) = client::decode(inbound, pings)? else {
        return Ok(Delivery::Other);
    };
    if msg.topic != cfg.topic {
        return Ok(Delivery::Other);
    }
    match (msg.kind, &*msg.event) {
        (Kind::Broadcast, MSG) => Ok(Delivery::Stamped(Stamp::read(msg.payload))),
        (Kind::Broadcast, DONE) => Ok(Delivery::Done),
        (Kind::Push, "phx_error") => Err(ConnError::Channel("phx_error")),
        (Kind::Push, "phx_close") => Err(ConnError::Channel("phx_close")),
        _ => Ok(Delivery::Other),
    }
}

/// Raw: a binary stamp, the text `done`, or a ping (handed to `pings`);
/// any other text is a decode error, a close ends the connection.
fn raw_delivery(
    inbound: &Inbound,
    pings: &mpsc::Sender<Vec<u8>>,
    stats: &mut Stats,
) -> Result<Delivery, ConnError> {
    match inbound {
        Inbound::Binary(p) => Ok(Delivery::Stamped(Stamp::read(Body::Binary(p)))),
        Inbound::Text(p) if &p[..] == raw::DONE => Ok(Delivery::Done),
        Inbound::Text(_) => {
            stats.error(ErrorKind::Decode, "a text message other than `done`");
            Ok(Delivery::Other)
        }
        Inbound::Ping(p) => {
            let _ = pings.try_send(p.to_vec());
            Ok(Delivery::Other)
        }
        Inbound::Close(code) => Err(ConnError::Closed(*code)),
    }
}

// === publisher ===

async fn publisher(gate: Gate, cfg: Arc<Cfg>, shared: Arc<Shared>) -> Outcome {
    let (conn, phases) = match open(gate, &cfg, true).await {
        Ok(x) => x,
        Err(outcome) => return outcome,
    };
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let mut stats = Stats::new();
    let (ping_tx, mut ping_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel();
    let read = async {
        let r = match cfg.protocol {
            Protocol::Phoenix => {
                harness::until(phases.deadline, drain(&mut reader, &ping_tx, &cfg)).await
            }
            Protocol::Raw => {
                harness::until(phases.deadline, raw_drain(&mut reader, &ping_tx, &shared)).await
            }
        };
        let _ = stop_tx.send(());
        r
    };
    let write = async {
        let published = harness::until(
            phases.deadline,
            publish(
                &mut writer,
                &mut ping_rx,
                &cfg,
                &phases,
                &shared,
                &mut stats,
            ),
        )
        .await;
        // Then keep the socket alive until our own `done` comes back (raw:
        // until every subscriber has ended).
        let heartbeats = cfg.protocol == Protocol::Phoenix;
        let kept = client::keepalive(&mut writer, ping_rx, stop_rx, heartbeats).await;
        (published, kept, stats)
    };
    let (read, (published, kept, mut stats)) = tokio::join!(read, write);
    match (read, published, kept) {
        (Some(Err(e)), _, _) | (_, Some(Err(e)), _) | (_, _, Err(e)) => stats.error(e.kind(), e),
        _ => {}
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut writer)).await;
    Outcome {
        publisher: true,
        established: true,
        stats,
    }
}

/// Publish until the end, then push `done`. Not cancel-safe.
async fn publish(
    writer: &mut Writer,
    pings: &mut mpsc::Receiver<Vec<u8>>,
    cfg: &Cfg,
    phases: &Phases,
    shared: &Shared,
    stats: &mut Stats,
) -> Result<(), ConnError> {
    let mut payload = Vec::with_capacity(cfg.size + 64);
    let mut buf = Vec::with_capacity(cfg.size + 128);
    let mut seq = 0u64;
    let end = tokio::time::Instant::from_std(phases.end);
    loop {
        let intended = if cfg.flat_out() {
            // Wait until the average live subscriber is less than max_lag behind.
            loop {
                let notified = shared.progress.notified();
                let live = shared.live.load(Ordering::Relaxed);
                let delivered = shared.delivered.load(Ordering::Relaxed);
                if live == 0 || seq.saturating_sub(delivered / live) < cfg.max_lag {
                    break;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(end) => break,
                    Some(p) = pings.recv() => client::pong(writer, &p).await?,
                }
            }
            Instant::now()
        } else {
            let offset = u128::from(seq) * 1_000_000_000 / u128::from(cfg.rate);
            let offset = Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
            let intended = phases.start + offset;
            if intended >= phases.end {
                break;
            }
            while Instant::now() < intended {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(intended)) => {}
                    Some(p) = pings.recv() => client::pong(writer, &p).await?,
                }
            }
            intended
        };
        if intended >= phases.end {
            break;
        }
        let stamp = Stamp {
            t: phases.ns(intended),
            s: seq,
        };
        match cfg.protocol {
            Protocol::Phoenix => {
                stamp.write(cfg.encoding, cfg.size, &mut payload);
                let mut digits = [0u8; 20];
                let ref_ = super::decimal(seq + FIRST_REF, &mut digits);
                buf.clear();
                codec::encode_push(
                    &mut buf,
                    cfg.encoding,
                    Some(JOIN_REF),
                    Some(ref_),
                    &cfg.topic,
                    MSG,
                    &payload,
                )?;
            }
            // The message is the stamp itself (`cfg.encoding` is binary).
            Protocol::Raw => stamp.write(cfg.encoding, cfg.size, &mut buf),
        }
        if phases.measured(intended) {
            stats.sent += 1;
        }
        client::send(writer, cfg.encoding, &mut buf).await?;
        seq += 1;
    }
    buf.clear();
    match cfg.protocol {
        Protocol::Phoenix => {
            let mut digits = [0u8; 20];
            let ref_ = super::decimal(seq + FIRST_REF, &mut digits);
            codec::encode_push(
                &mut buf,
                Encoding::Json,
                Some(JOIN_REF),
                Some(ref_),
                &cfg.topic,
                DONE,
                b"{}",
            )?;
        }
        Protocol::Raw => buf.extend_from_slice(raw::DONE),
    }
    // A text frame either way.
    client::send(writer, Encoding::Json, &mut buf).await
}

/// Raw: nothing comes back to the publisher; hand pings over and notice a
/// close until every subscriber has ended. Cancels a read then (the socket
/// is only closed after that).
async fn raw_drain(
    reader: &mut Reader,
    pings: &mpsc::Sender<Vec<u8>>,
    shared: &Shared,
) -> Result<(), ConnError> {
    let all_gone = async {
        loop {
            let gone = shared.gone.notified();
            if shared.live.load(Ordering::Relaxed) == 0 {
                return;
            }
            gone.await;
        }
    };
    let read = async {
        loop {
            match client::recv(reader).await? {
                Inbound::Ping(p) => {
                    let _ = pings.try_send(p.to_vec());
                }
                Inbound::Close(code) => return Err(ConnError::Closed(code)),
                Inbound::Text(_) | Inbound::Binary(_) => {}
            }
        }
    };
    tokio::select! {
        () = all_gone => Ok(()),
        r = read => r,
    }
}

/// Read the publisher's own copies until its `done` comes back. Not cancel-safe.
async fn drain(
    reader: &mut Reader,
    pings: &mpsc::Sender<Vec<u8>>,
    cfg: &Cfg,
) -> Result<(), ConnError> {
    loop {
        let inbound = client::recv(reader).await?;
        let Some(msg) = client::decode(&inbound, pings)? else {
            continue;
        };
        if msg.topic != cfg.topic {
            continue;
        }
        match (msg.kind, &*msg.event) {
            (Kind::Broadcast, DONE) => return Ok(()),
            (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error")),
            (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            t: 1_234_567_890_123,
            s: 42,
        };
        let mut out = Vec::new();
        stamp.write(Encoding::Binary, 20, &mut out);
        assert_eq!(out.len(), 20);
        assert_eq!(Stamp::read(Body::Binary(&out)), Some(stamp));
        stamp.write(Encoding::Binary, 4, &mut out);
        assert_eq!(out.len(), STAMP_LEN);
        assert_eq!(Stamp::read(Body::Binary(&out)), Some(stamp));
        assert_eq!(Stamp::read(Body::Binary(&out[..15])), None);

        stamp.write(Encoding::Json, 3, &mut out);
        let text = std::str::from_utf8(&out).expect("utf8");
        assert_eq!(text, r#"{"t":1234567890123,"s":42,"d":"xxx"}"#);
        assert_eq!(Stamp::read(Body::Json(text)), Some(stamp));
        // Key order does not matter (Jason writes small maps sorted).
        assert_eq!(
            Stamp::read(Body::Json(r#"{"d":"x","s":42,"t":1234567890123}"#)),
            Some(stamp)
        );
        assert_eq!(Stamp::read(Body::Json(r#"{"d":"x"}"#)), None);
    }
}
