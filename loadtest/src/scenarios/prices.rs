//! `prices`: N subscriber connections joined to `prices:<asset>` channels of
//! the price relay (docs/RELAY.md), fed by the server's upstream (the
//! built-in simulated feed, or `sluice mock-upstream`). Nothing is published
//! by the generator: it only reads.
//!
//! # Joins
//! Connection `i` joins `prices:<assets[i % n]>` (round robin over
//! `--assets`), or every listed asset with `--all-assets` (join_refs `1`,
//! `2`, … in `--assets` order).
//!
//! # Latency
//! Every `new` push carries `time`: the server's wall-clock arrival time of
//! the upstream message, in **milliseconds** since the Unix epoch. A
//! subscriber records `now − time`, `now` being its own `SystemTime` in µs
//! when the frame is decoded. So the latency is *upstream message arrival
//! at the server → client*, and it is only meaningful with server and
//! generator on the same host clock; the server's stamp has ms resolution
//! (a negative difference counts as 0).
//!
//! # Counting
//! * `received`: `new` pushes received in the measured window
//!   (`[measure_from, end)` by the client's receive time); `sent` stays 0
//!   and `expected` null (the upstream's rate is not the generator's).
//! * `prices.status_pushes`: `status` pushes seen over the whole run;
//!   `prices.new_pushes`: every `new` push, warmup included.
//! * Errors: connect and join failures, closed sockets, `phx_error` /
//!   `phx_close`, undecodable frames, `new` pushes without a numeric `time`.
//! * Subscribers read from their join on (pushes during the setup of the
//!   others are drained, not left in socket buffers), until `end`, then
//!   close; there is nothing to wait for after the end.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, Conn, ConnError, Reader};
use crate::codec::{Encoding, Kind};
use crate::harness::{self, Gate, Phases, Run};
use crate::progress::Live;
use crate::report::{Params, Summary};
use crate::stats::{ErrorKind, Stats};
use crate::{Common, Error};

/// How long closing a connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// A price update.
const NEW: &str = "new";
/// An upstream state change.
const STATUS: &str = "status";

/// Options of the `prices` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct PricesArgs {
    /// Assets, comma-separated; connection i joins `prices:<assets[i % n]>`.
    #[arg(long, value_delimiter = ',', default_value = "bitcoin")]
    pub assets: Vec<String>,
    /// Every connection joins every listed asset instead.
    #[arg(long)]
    pub all_assets: bool,
}

impl Default for PricesArgs {
    fn default() -> Self {
        PricesArgs {
            assets: vec!["bitcoin".into()],
            all_assets: false,
        }
    }
}

/// The `prices`-specific figures.
#[derive(Debug, Clone, Serialize)]
pub struct Prices {
    /// The assets asked for.
    pub assets: Vec<String>,
    /// Whether every connection joined every asset.
    pub all_assets: bool,
    /// Channels joined, over all established connections.
    pub joined: u64,
    /// `new` pushes seen over the whole run (warmup included).
    pub new_pushes: u64,
    /// `status` pushes seen over the whole run.
    pub status_pushes: u64,
    /// What `latency_us` measures.
    pub latency: &'static str,
}

/// The summary of a `prices` run: the common fields, plus `prices`.
#[derive(Debug, Clone, Serialize)]
pub struct PricesSummary {
    /// The fields every scenario reports.
    #[serde(flatten)]
    pub summary: Summary,
    /// Joins, pushes and status changes.
    pub prices: Prices,
}

impl PricesSummary {
    /// One line of JSON: the common fields, plus `prices`.
    pub fn to_json(&self) -> String {
        // Numbers, strings and maps with string keys always serialize.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The common table, plus the prices lines.
    pub fn to_table(&self) -> String {
        let mut out = self.summary.to_table();
        let p = &self.prices;
        let _ = writeln!(
            out,
            "  {:<12}{} ({}), {} channels joined",
            "assets",
            p.assets.join(","),
            if p.all_assets {
                "all per connection"
            } else {
                "round robin"
            },
            p.joined
        );
        let _ = writeln!(
            out,
            "  {:<12}{} new (warmup included), {} status",
            "pushes", p.new_pushes, p.status_pushes
        );
        let _ = writeln!(out, "  {:<12}{}", "latency is", p.latency);
        out
    }
}

/// What one connection needs.
struct Cfg {
    /// Topics per connection: all of them, or one by round robin.
    topics: Vec<String>,
    all: bool,
    join_timeout: Duration,
}

/// One task's result.
struct Outcome {
    joined: u64,
    new_pushes: u64,
    status_pushes: u64,
    stats: Stats,
}

impl Outcome {
    fn failed(stats: Stats) -> Outcome {
        Outcome {
            joined: 0,
            new_pushes: 0,
            status_pushes: 0,
            stats,
        }
    }
}

/// Run the scenario; the common summary only.
pub async fn run(common: &Common, args: &PricesArgs) -> Result<Summary, Error> {
    Ok(run_prices(common, args).await?.summary)
}

/// Run the scenario.
pub async fn run_prices(common: &Common, args: &PricesArgs) -> Result<PricesSummary, Error> {
    common.validate()?;
    common.require_phoenix("prices")?;
    let assets: Vec<String> = args
        .assets
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if assets.is_empty() {
        return Err(Error::Invalid(
            "--assets must name at least one asset".into(),
        ));
    }
    let epoch = Instant::now();
    let target = common.target().await?;
    let cfg = Arc::new(Cfg {
        topics: assets.iter().map(|a| format!("prices:{a}")).collect(),
        all: args.all_assets,
        join_timeout: common.connect_timeout,
    });
    let mut run = Run::<Outcome>::new(target, common.setup_limits(), epoch);
    for i in 0..common.connections {
        let cfg = cfg.clone();
        run.spawn(move |gate| subscriber(gate, cfg, i));
    }
    let (phases, setup) = run
        .start(common.warmup, common.duration, common.timeout)
        .await;
    let (results, lost) = run.finish(phases.deadline).await;

    let mut total = Stats::new();
    let (mut joined, mut new_pushes, mut status_pushes) = (0, 0, 0);
    for r in &results {
        total.merge(&r.stats);
        joined += r.joined;
        new_pushes += r.new_pushes;
        status_pushes += r.status_pushes;
    }
    for _ in 0..lost {
        total.error(ErrorKind::Internal, "connection task panicked or was cut");
    }
    let window = phases.window().as_secs_f64();
    let params = Params {
        topic: Some(cfg.topics.join(",")),
        ..Params::new(common, 0, Encoding::Json)
    };
    let summary = Summary::new("prices", params, setup, &total, window, "deliveries/s");
    Ok(PricesSummary {
        summary,
        prices: Prices {
            assets,
            all_assets: args.all_assets,
            joined,
            new_pushes,
            status_pushes,
            latency: "upstream arrival at the server (ms stamp) -> client receive, same host clock",
        },
    })
}

/// Connect, join the connection's topics, read until the end, close.
async fn subscriber(gate: Gate, cfg: Arc<Cfg>, i: usize) -> Outcome {
    let topics: Vec<&str> = if cfg.all {
        cfg.topics.iter().map(String::as_str).collect()
    } else {
        vec![cfg.topics[i % cfg.topics.len()].as_str()]
    };
    let live = gate.live();
    let mut buf = Vec::with_capacity(128);
    let mut conn = match gate.connect_and_join(&mut buf, topics[0], "1").await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = gate.ready(false).await;
            return Outcome::failed(Stats::failed(e.kind(), e));
        }
    };
    for (n, topic) in topics.iter().enumerate().skip(1) {
        let join_ref = (n + 1).to_string();
        let joined = tokio::time::timeout(cfg.join_timeout, conn.join(&mut buf, topic, &join_ref))
            .await
            .unwrap_or(Err(ConnError::Timeout));
        if let Err(e) = joined {
            let _ = gate.ready(false).await;
            client::close(&mut conn.writer).await;
            return Outcome::failed(Stats::failed(e.kind(), e));
        }
    }
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let mut out = Outcome {
        joined: topics.len() as u64,
        new_pushes: 0,
        status_pushes: 0,
        stats: Stats::recording(live.clone()),
    };
    // Read from the join on, not from the start: pushes left unread while
    // the other connections set up would pile up in the socket buffers
    // (the relay conflates only what it has not written yet) and be
    // measured as latency.
    let phases = OnceLock::new();
    let (ping_tx, ping_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let read = async {
        let r = tokio::select! {
            r = pushes(&mut reader, &ping_tx, &topics, &phases, &live, &mut out) => Some(r),
            _ = end_rx => None,
        };
        let _ = stop_tx.send(());
        r
    };
    let control = async {
        // `None`: the run was abandoned; stop at once.
        if let Some(p) = gate.ready(true).await {
            let _ = phases.set(p);
            tokio::time::sleep_until(tokio::time::Instant::from_std(p.end)).await;
        }
        let _ = end_tx.send(());
    };
    let (read, write, ()) = tokio::join!(
        read,
        client::keepalive(&mut writer, ping_rx, stop_rx, true),
        control
    );
    match (read, write) {
        (Some(Err(e)), _) | (_, Err(e)) => out.stats.error(e.kind(), e),
        _ => {}
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut writer)).await;
    out
}

/// The payload of a `new` push (`value` is not needed).
#[derive(Deserialize)]
struct NewPrice {
    time: f64,
}

/// Client wall-clock now, µs since the Unix epoch.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Latency of a push stamped `time_ms` (server ms since the epoch) received
/// at `now_us` (client µs since the epoch); 0 if the stamp is ahead.
pub fn latency_us(now_us: u64, time_ms: f64) -> u64 {
    // A stamp in ms since the epoch fits f64 exactly (< 2^53).
    let stamp_us = (time_ms * 1000.0).round();
    if !(stamp_us.is_finite() && stamp_us >= 0.0) {
        return 0;
    }
    now_us.saturating_sub(stamp_us as u64)
}

/// Read pushes until cut (by the end). Not cancel-safe.
async fn pushes(
    reader: &mut Reader,
    pings: &mpsc::Sender<Vec<u8>>,
    topics: &[&str],
    phases: &OnceLock<Phases>,
    live: &Live,
    out: &mut Outcome,
) -> Result<(), ConnError> {
    loop {
        let inbound = client::recv(reader).await?;
        let Some(msg) = client::decode(&inbound, pings)? else {
            continue;
        };
        let now_us = wall_us();
        if !topics.contains(&&*msg.topic) {
            continue;
        }
        match (msg.kind, &*msg.event) {
            // Encoded once for all subscribers: join_ref null, a broadcast.
            (Kind::Broadcast | Kind::Push, NEW) => {}
            (Kind::Broadcast | Kind::Push, STATUS) => {
                out.status_pushes += 1;
                continue;
            }
            (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error")),
            (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close")),
            _ => continue,
        }
        out.new_pushes += 1;
        live.message(msg.payload.as_bytes().len());
        let time = match msg.payload {
            crate::codec::Body::Json(text) => serde_json::from_str::<NewPrice>(text).ok(),
            crate::codec::Body::Binary(_) => None,
        };
        let Some(NewPrice { time }) = time else {
            out.stats
                .error(ErrorKind::Decode, "`new` push without a numeric `time`");
            continue;
        };
        if phases.get().is_some_and(|p| p.measured(Instant::now())) {
            out.stats.received += 1;
            out.stats
                .record(Duration::from_micros(latency_us(now_us, time)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_from_a_ms_stamp() {
        assert_eq!(latency_us(1_700_000_000_123_456, 1_700_000_000_123.0), 456);
        assert_eq!(latency_us(1_700_000_000_000_000, 1_700_000_000_001.0), 0);
        assert_eq!(latency_us(5, f64::NAN), 0);
        assert_eq!(latency_us(5, -1.0), 0);
        let p: NewPrice =
            serde_json::from_str(r#"{"value":91234.12,"time":1700000000123}"#).expect("parses");
        assert_eq!(p.time, 1_700_000_000_123.0);
    }
}
