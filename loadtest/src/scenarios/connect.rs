//! `connect`: C connections opened at a ramp rate, each joined to one topic
//! (`room:idle` by default), then held idle; how fast they were set up, how
//! long each took, and — with `--server-pid` — how much memory the server
//! needs per connection.
//!
//! # Timeline
//! ```text
//! ramp (connect + join, --rate R/s, --connect-concurrency at once) ── all set up
//!   ── --settle ── server memory sampled ── --duration held ── close
//! ```
//! * Connection `i` starts its handshake no earlier than `i / R` s after the
//!   first (`--rate 0`: as fast as `--connect-concurrency` allows).
//! * From its join on, a connection reads (answering pings; Phoenix: a
//!   heartbeat every 30 s, so the server does not time it out however long
//!   the ramp) until the end of the hold, then closes with 1000.
//! * Raw protocol: connections open `/sub` and are held the same way (no
//!   join, no heartbeat).
//!
//! # Figures
//! * `connect.connect_latency_us`: TCP connect + WebSocket upgrade;
//!   `connect.join_latency_us`: the join (Phoenix only); the common
//!   `latency_us`: both together. Waiting for a ramp slot or a setup permit
//!   is not included.
//! * `connect.ramp_s`: from the first spawn until every connection has set
//!   up or failed; the common `rate` is established connections per second
//!   of it (`rate_unit` `connections/s`).
//! * `--warmup` is not used: `params.warmup_s` reports the settle.
//! * `sent` = connections attempted, `received` = established, `expected`
//!   = requested; `timeouts` is 0 (a setup that times out is a `connect`
//!   error, also counted in `connect.setup_timeouts`).
//! * `connect.server` (with `--server-pid`): `VmRSS`, `RssAnon` and `VmHWM`
//!   of `/proc/PID/status` before the first connection and after the settle,
//!   and `per_connection`: (after − before) / established, in bytes.
//!   An unreadable status file at the start is an invalid parameter; at the
//!   end, an `internal` error (and `after` is null).
//!
//! # Memory of the generator
//! One task per connection; the handshake's state is boxed and freed once
//! set up, so a held connection costs its socket, fastwebsockets' 8 KiB
//! read buffer, a 4-slot ping channel and a few hundred bytes of task
//! state. Each task returns a few hundred bytes (no histogram: the
//! latencies are merged at the end).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, raw, Conn, ConnError, Inbound, Protocol, Reader};
use crate::codec::{Encoding, Kind};
use crate::harness::{self, Gate, Open, Run, Timing};
use crate::progress::{Labels, Live};
use crate::report::{per_second, Latency, Params, Summary};
use crate::stats::{ErrorKind, Stats};
use crate::system::{self, Memory};
use crate::{Common, Error};

/// The join_ref (and join ref) of every connection.
const JOIN_REF: &str = "1";
/// How long closing a connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Options of the `connect` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Connections started per second; 0 = as fast as --connect-concurrency allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The topic every connection joins (the default server routes `room:*` to a room channel).
    #[arg(long, default_value = "room:idle")]
    pub topic: String,
    /// Sample this process's memory (/proc/PID/status: VmRSS, RssAnon, VmHWM)
    /// before the first connection and after the settle.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Wait after the last connection is set up before sampling memory (the
    /// --duration hold follows).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

impl Default for ConnectArgs {
    fn default() -> Self {
        ConnectArgs {
            rate: 0,
            topic: "room:idle".into(),
            server_pid: None,
            settle: Duration::from_secs(2),
        }
    }
}

/// Memory per established connection, in bytes (negative if it shrank).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerConnection {
    /// VmRSS difference / established.
    pub vm_rss_bytes: f64,
    /// RssAnon difference / established.
    pub rss_anon_bytes: f64,
    /// VmHWM difference / established.
    pub vm_hwm_bytes: f64,
}

/// The server's memory around the ramp.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerMemory {
    /// The process sampled.
    pub pid: u32,
    /// Before the first connection.
    pub before: Memory,
    /// After all were set up and the settle; `null` if it could not be read.
    pub after: Option<Memory>,
    /// (after − before) / established; `null` without `after` or connections.
    pub per_connection: Option<PerConnection>,
}

/// The `connect`-specific figures.
#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    /// The topic joined (Phoenix), or the path opened (raw).
    pub topic: String,
    /// The ramp rate asked for (connections/s; 0: unpaced).
    pub ramp_rate: u64,
    /// From the first spawn until every connection had set up or failed, s.
    pub ramp_s: f64,
    /// Established connections per second of the ramp.
    pub connections_per_s: f64,
    /// The settle before the memory sample, s.
    pub settle_s: f64,
    /// How long the connections were held after the settle, s.
    pub held_s: f64,
    /// Setups that timed out (also `connect` errors).
    pub setup_timeouts: u64,
    /// TCP connect + WebSocket upgrade, µs.
    pub connect_latency_us: Option<Latency>,
    /// The join, µs (`null` with the raw protocol).
    pub join_latency_us: Option<Latency>,
    /// With `--server-pid`: the server's memory.
    pub server: Option<ServerMemory>,
}

/// The summary of a `connect` run: the common fields, plus `connect`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectSummary {
    /// The fields every scenario reports.
    #[serde(flatten)]
    pub summary: Summary,
    /// Ramp, setup latencies and server memory.
    pub connect: Connect,
}

impl ConnectSummary {
    /// One line of JSON: the common fields, plus `connect`.
    pub fn to_json(&self) -> String {
        // Numbers, strings and maps with string keys always serialize.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The common table, plus the connect lines.
    pub fn to_table(&self) -> String {
        let mut out = self.summary.to_table();
        let c = &self.connect;
        let _ = writeln!(
            out,
            "  {:<12}{} connections in {:.3} s ({:.1}/s), held {} s after a {} s settle",
            "ramp",
            self.summary.connections.established,
            c.ramp_s,
            c.connections_per_s,
            c.held_s,
            c.settle_s
        );
        for (label, latency) in [
            ("connect µs", &c.connect_latency_us),
            ("join µs", &c.join_latency_us),
        ] {
            if let Some(l) = latency {
                let _ = writeln!(
                    out,
                    "  {label:<12}p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, n {})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                );
            }
        }
        if c.setup_timeouts > 0 {
            let _ = writeln!(out, "  {:<12}{}", "setup t/o", c.setup_timeouts);
        }
        if let Some(s) = &c.server {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let mut line = format!("pid {}", s.pid);
            match &s.after {
                Some(a) => {
                    let _ = write!(
                        line,
                        ": VmRSS {:.1} -> {:.1} MiB, RssAnon {:.1} -> {:.1} MiB, VmHWM {:.1} -> {:.1} MiB",
                        mib(s.before.vm_rss_bytes),
                        mib(a.vm_rss_bytes),
                        mib(s.before.rss_anon_bytes),
                        mib(a.rss_anon_bytes),
                        mib(s.before.vm_hwm_bytes),
                        mib(a.vm_hwm_bytes),
                    );
                }
                None => line.push_str(": memory after the ramp unreadable"),
            }
            let _ = writeln!(out, "  {:<12}{line}", "server");
            if let Some(p) = &s.per_connection {
                let _ = writeln!(
                    out,
                    "  {:<12}VmRSS {:.2} KiB, RssAnon {:.2} KiB, VmHWM {:.2} KiB",
                    "per conn",
                    p.vm_rss_bytes / 1024.0,
                    p.rss_anon_bytes / 1024.0,
                    p.vm_hwm_bytes / 1024.0
                );
            }
        }
        out
    }
}

/// What every connection needs.
struct Cfg {
    protocol: Protocol,
    topic: String,
}

/// One task's result (no histogram: a few hundred bytes).
struct Outcome {
    timing: Option<Timing>,
    setup_timed_out: bool,
    stats: Stats,
}

/// Run the scenario; the common summary only (see [`run_connect`]).
pub async fn run(common: &Common, args: &ConnectArgs) -> Result<Summary, Error> {
    Ok(run_connect(common, args).await?.summary)
}

/// Run the scenario.
pub async fn run_connect(common: &Common, args: &ConnectArgs) -> Result<ConnectSummary, Error> {
    common.validate()?;
    if common.protocol == Protocol::Phoenix && args.topic.is_empty() {
        return Err(Error::Invalid("--topic must not be empty".into()));
    }
    let epoch = Instant::now();
    let target = common.target().await?;
    let cfg = Arc::new(Cfg {
        protocol: common.protocol,
        topic: match common.protocol {
            Protocol::Phoenix => args.topic.clone(),
            Protocol::Raw => raw::SUB.to_owned(),
        },
    });
    let before = match args.server_pid {
        Some(pid) => Some((pid, system::memory(pid)?)),
        None => None,
    };
    let mut limits = common.setup_limits();
    limits.rate = args.rate;
    let created = Instant::now();
    let mut run = Run::<Outcome>::new(target, limits, epoch);
    run.labels(Labels {
        warmup: "settle",
        measure: "hold",
    });
    for _ in 0..common.connections {
        let cfg = cfg.clone();
        run.spawn(move |gate| connection(gate, cfg));
    }
    let (phases, setup) = run
        .start(args.settle, common.duration, common.timeout)
        .await;
    let ramp = phases.start.saturating_duration_since(created);
    tokio::time::sleep_until(tokio::time::Instant::from_std(phases.measure_from)).await;
    let after = before.map(|(pid, _)| system::memory(pid));
    let (results, lost) = run.finish(phases.deadline).await;

    let mut total = Stats::new();
    let (mut connect, mut join) = (Stats::new(), Stats::new());
    let mut setup_timeouts = 0;
    for r in &results {
        total.merge(&r.stats);
        setup_timeouts += u64::from(r.setup_timed_out);
        if let Some(t) = r.timing {
            connect.record(t.connect);
            total.record(t.connect + t.join.unwrap_or_default());
            if let Some(j) = t.join {
                join.record(j);
            }
        }
    }
    for _ in 0..lost {
        total.error(ErrorKind::Internal, "connection task panicked or was cut");
    }
    let server = match (before, after) {
        (Some((pid, before)), Some(after)) => {
            let after = match after {
                Ok(m) => Some(m),
                Err(e) => {
                    total.error(ErrorKind::Internal, e);
                    None
                }
            };
            Some(ServerMemory {
                pid,
                before,
                after,
                per_connection: after.and_then(|a| per_connection(&before, &a, setup.established)),
            })
        }
        _ => None,
    };
    total.sent = setup.requested as u64;
    total.received = setup.established as u64;
    let ramp_s = ramp.as_secs_f64();
    let params = Params {
        warmup_s: args.settle.as_secs_f64(),
        rate: Some(args.rate),
        topic: Some(cfg.topic.clone()),
        ..Params::new(common, 0, Encoding::Json)
    };
    let window = phases.window().as_secs_f64();
    let mut summary = Summary::new("connect", params, setup, &total, window, "connections/s");
    summary.expected = Some(setup.requested as u64);
    summary.rate = per_second(setup.established as u64, ramp_s);
    Ok(ConnectSummary {
        summary,
        connect: Connect {
            topic: cfg.topic.clone(),
            ramp_rate: args.rate,
            ramp_s: (ramp_s * 1e3).round() / 1e3,
            connections_per_s: per_second(setup.established as u64, ramp_s),
            settle_s: args.settle.as_secs_f64(),
            held_s: window,
            setup_timeouts,
            connect_latency_us: Latency::of(&connect),
            join_latency_us: Latency::of(&join),
            server,
        },
    })
}

/// (after − before) / `established`, bytes; `None` without connections.
pub fn per_connection(
    before: &Memory,
    after: &Memory,
    established: usize,
) -> Option<PerConnection> {
    if established == 0 {
        return None;
    }
    let per = |b: u64, a: u64| ((a as f64 - b as f64) / established as f64).round();
    Some(PerConnection {
        vm_rss_bytes: per(before.vm_rss_bytes, after.vm_rss_bytes),
        rss_anon_bytes: per(before.rss_anon_bytes, after.rss_anon_bytes),
        vm_hwm_bytes: per(before.vm_hwm_bytes, after.vm_hwm_bytes),
    })
}

/// One connection: set up, then read (and keep alive) until the end of the
/// hold, then close.
async fn connection(gate: Gate, cfg: Arc<Cfg>) -> Outcome {
    let live = gate.live();
    let how = match cfg.protocol {
        Protocol::Phoenix => Open::Join {
            topic: &cfg.topic,
            join_ref: JOIN_REF,
        },
        Protocol::Raw => Open::Raw { path: raw::SUB },
    };
    // Boxed: the handshake's state is large and only needed until set up.
    let opened = Box::pin(async {
        let mut buf = Vec::new();
        gate.open(&mut buf, how).await
    })
    .await;
    let (conn, timing) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = gate.ready(false).await;
            return Outcome {
                timing: None,
                setup_timed_out: matches!(e, ConnError::Timeout),
                stats: Stats::failed(e.kind(), e),
            };
        }
    };
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let mut stats = Stats::with_live(live.clone());
    // Read from the join on: the ramp may last longer than the server's
    // idle timeout, and pings must be answered meanwhile.
    let (ping_tx, ping_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let read = async {
        let r = tokio::select! {
            r = idle(&mut reader, &ping_tx, &cfg, &live) => Some(r),
            _ = end_rx => None,
        };
        let _ = stop_tx.send(());
        r
    };
    let control = async {
        // `None`: the run was abandoned; stop at once.
        if let Some(p) = gate.ready(true).await {
            tokio::time::sleep_until(tokio::time::Instant::from_std(p.end)).await;
        }
        let _ = end_tx.send(());
    };
    let heartbeats = cfg.protocol == Protocol::Phoenix;
    let (read, kept, ()) = tokio::join!(
        read,
        client::keepalive(&mut writer, ping_rx, stop_rx, heartbeats),
        control
    );
    match (read, kept) {
        (Some(Err(e)), _) | (_, Err(e)) => stats.error(e.kind(), e),
        _ => {}
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut writer)).await;
    Outcome {
        timing: Some(timing),
        setup_timed_out: false,
        stats,
    }
}

/// Read until cut (by the end of the hold): pings go to the writer; the
/// server closing the socket or the channel is an error. Not cancel-safe.
async fn idle(
    reader: &mut Reader,
    pings: &mpsc::Sender<Vec<u8>>,
    cfg: &Cfg,
    live: &Live,
) -> Result<(), ConnError> {
    loop {
        let inbound = client::recv(reader).await?;
        if let Inbound::Text(p) | Inbound::Binary(p) = &inbound {
            live.message(p.len());
        }
        match cfg.protocol {
            Protocol::Phoenix => {
                let Some(msg) = client::decode(&inbound, pings)? else {
                    continue;
                };
                if msg.topic != cfg.topic || msg.kind != Kind::Push {
                    continue;
                }
                match &*msg.event {
                    "phx_error" => return Err(ConnError::Channel("phx_error")),
                    "phx_close" => return Err(ConnError::Channel("phx_close")),
                    _ => {}
                }
            }
            Protocol::Raw => match inbound {
                Inbound::Ping(p) => {
                    let _ = pings.try_send(p.to_vec());
                }
                Inbound::Close(code) => return Err(ConnError::Closed(code)),
                Inbound::Text(_) | Inbound::Binary(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection() {
        let before = Memory {
            vm_rss_bytes: 10 << 20,
            rss_anon_bytes: 8 << 20,
            vm_hwm_bytes: 11 << 20,
        };
        let after = Memory {
            vm_rss_bytes: (10 << 20) + 1000 * 20_480,
            rss_anon_bytes: (8 << 20) + 1000 * 16_384,
            vm_hwm_bytes: 11 << 20,
        };
        let p = per_connection(&before, &after, 1000).expect("connections");
        assert_eq!(
            (p.vm_rss_bytes, p.rss_anon_bytes, p.vm_hwm_bytes),
            (20_480.0, 16_384.0, 0.0)
        );
        let p = per_connection(&after, &before, 1000).expect("connections");
        assert_eq!(p.vm_rss_bytes, -20_480.0, "shrinking shows as negative");
        assert!(per_connection(&before, &after, 0).is_none());
    }
}
