//! The result of a run: one [`Summary`], printed as a single JSON object
//! (`--json`) or as a small human-readable table.
//!
//! # JSON shape
//! ```json
//! {"scenario":"echo","params":{"url":"…","protocol":"phoenix",...},
//!  "connections":{"requested":2,"established":2},
//!  "sent":100,"received":100,"expected":null,"errors":0,"timeouts":0,"error_kinds":{},
//!  "first_error":null,
//!  "duration_s":1.0,"rate":100.0,"rate_unit":"msgs/s","publish_rate":null,
//!  "latency_us":{"count":100,"min":20,"mean":31.5,"p50":30,"p90":40,"p99":60,"p999":90,"max":95}}
//! ```
//! `latency_us` is `null` when nothing was measured. Latencies are whole
//! microseconds; percentiles come from an HDR histogram with 3 significant digits.
//!
//! # Contract
//! Every scenario's JSON has every field above (`null` where it does not
//! apply, never missing), errors and timeouts counted explicitly, and
//! latency percentiles p50, p90, p99, p99.9 (`p999`) and max; scenarios add
//! one object of their own (`transfer`, `prices`, `connect`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Protocol;
use crate::codec::Encoding;
use crate::harness::Setup;
use crate::stats::{ErrorKind, Stats};
use crate::Common;

/// The parameters a run was made with (no secrets: the token is never echoed).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The URL as given (without the appended `vsn` and token).
    pub url: String,
    /// `phoenix` or `raw`.
    pub protocol: Protocol,
    /// How many source addresses connections rotate over (`--source-addrs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_addrs: Option<usize>,
    /// Connections requested (echo) or subscribers (broadcast).
    pub connections: usize,
    /// Measured duration requested, seconds.
    pub duration_s: f64,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// Request / delivery timeout and end-of-run grace, seconds.
    pub timeout_s: f64,
    /// Payload size in bytes (binary payload, or length of the JSON filler string).
    pub payload_bytes: usize,
    /// `json` or `binary`.
    pub encoding: Encoding,
    /// Echo: requests each connection keeps in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Broadcast: the publisher's target rate (msgs/s, 0 = flat out);
    /// connect: the ramp rate (connections/s, 0 = as fast as allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Broadcast, flat out: how far the publisher may run ahead of subscribers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u64>,
    /// Broadcast, connect: the topic (raw mode: the path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Params {
    /// The common options of `common`, with `payload_bytes` of `encoding`;
    /// the scenario-specific fields are unset.
    pub fn new(common: &Common, payload_bytes: usize, encoding: Encoding) -> Params {
        Params {
            url: common.url.clone(),
            protocol: common.protocol,
            source_addrs: common.source_addrs.as_ref().map(|s| s.len()),
            connections: common.connections,
            duration_s: common.duration.as_secs_f64(),
            warmup_s: common.warmup.as_secs_f64(),
            timeout_s: common.timeout.as_secs_f64(),
            payload_bytes,
            encoding,
            window: None,
            rate: None,
            max_lag: None,
            topic: None,
        }
    }
}

/// How many connections were asked for and how many got through setup.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Connections {
    /// Spawned.
    pub requested: usize,
    /// Connected and joined.
    pub established: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest (exact, not clamped by the histogram).
    pub max: u64,
}

/// The summary of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `echo` or `broadcast`.
    pub scenario: &'static str,
    /// What was asked for.
    pub params: Params,
    /// Connections requested and established (broadcast: subscribers + publisher).
    pub connections: Connections,
    /// Messages sent in the measured window (echo: requests; broadcast: publishes).
    pub sent: u64,
    /// Measured replies (echo) or deliveries (broadcast) received.
    pub received: u64,
    /// Broadcast: deliveries expected (publishes × established subscribers).
    pub expected: Option<u64>,
    /// All errors.
    pub errors: u64,
    /// Measured requests never answered / deliveries never made in time.
    pub timeouts: u64,
    /// Non-zero error counts by kind.
    pub error_kinds: BTreeMap<&'static str, u64>,
    /// The first error's message (`kind: message`), if any.
    pub first_error: Option<String>,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// `received` per second of the measured window.
    pub rate: f64,
    /// What `rate` counts: `msgs/s` (echo) or `deliveries/s` (broadcast).
    pub rate_unit: &'static str,
    /// Broadcast: publishes per second of the measured window.
    pub publish_rate: Option<f64>,
    /// Latency percentiles; `null` when nothing was measured.
    pub latency_us: Option<Latency>,
}

impl Latency {
    /// Percentiles of `stats`' histogram; `None` if it is empty.
    pub fn of(stats: &Stats) -> Option<Latency> {
        let h = stats.latency()?;
        if h.is_empty() {
            return None;
        }
        // A percentile is its bucket's highest equivalent value, which may
        // be above the exact maximum: clamp, so that p50 <= … <= max.
        let max = stats.max_us();
        let at = |q| h.value_at_quantile(q).min(max);
        Some(Latency {
            count: h.len(),
            min: h.min().min(max),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max,
        })
    }
}

impl Summary {
    /// Build a summary from merged stats.
    pub fn new(
        scenario: &'static str,
        params: Params,
        setup: Setup,
        stats: &Stats,
        window_s: f64,
        rate_unit: &'static str,
    ) -> Summary {
        let error_kinds = ErrorKind::ALL
            .into_iter()
            .filter(|k| stats.errors_of(*k) > 0)
            .map(|k| (k.label(), stats.errors_of(k)))
            .collect();
        Summary {
            scenario,
            params,
            connections: Connections {
                requested: setup.requested,
                established: setup.established,
            },
            sent: stats.sent,
            received: stats.received,
            expected: None,
            errors: stats.errors(),
            timeouts: stats.timeouts,
            error_kinds,
            first_error: stats.first_error().map(str::to_owned),
            duration_s: window_s,
            rate: per_second(stats.received, window_s),
            rate_unit,
            publish_rate: None,
            latency_us: Latency::of(stats),
        }
    }

    /// One line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and maps with string keys always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A small table for people.
    pub fn to_table(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let mut what = if self.scenario == "connect" {
            format!("idle on {}", p.topic.as_deref().unwrap_or("?"))
        } else {
            format!(
                "{} B {}",
                p.payload_bytes,
                match p.encoding {
                    Encoding::Json => "JSON",
                    Encoding::Binary => "binary",
                }
            )
        };
        if p.protocol == Protocol::Raw {
            what.push_str(", raw protocol");
        }
        if let Some(n) = p.source_addrs {
            let _ = write!(what, ", from {n} source addresses");
        }
        if let Some(w) = p.window {
            let _ = write!(what, ", window {w}");
        }
        match p.rate {
            Some(0) if self.scenario == "connect" => what.push_str(", unpaced ramp"),
            Some(r) if self.scenario == "connect" => {
                let _ = write!(what, ", ramp {r} connections/s");
            }
            Some(0) => {
                let _ = write!(what, ", flat out (max lag {})", p.max_lag.unwrap_or(0));
            }
            Some(r) => {
                let _ = write!(what, ", {r} msgs/s");
            }
            None => {}
        }
        line(format!(
            "sluice-load {}: {} · {} connections ({} established) · {} after {} {}",
            self.scenario,
            what,
            self.connections.requested,
            self.connections.established,
            secs(p.duration_s),
            secs(p.warmup_s),
            if self.scenario == "connect" {
                "settle"
            } else {
                "warmup"
            },
        ));
        line(format!("  {:<12}{}", "sent", self.sent));
        match self.expected {
            Some(e) => line(format!(
                "  {:<12}{} of {} expected",
                "received", self.received, e
            )),
            None => line(format!("  {:<12}{}", "received", self.received)),
        }
        let mut rate = format!("{:.1} {}", self.rate, self.rate_unit);
        if let Some(pr) = self.publish_rate {
            let _ = write!(rate, " ({pr:.1} publishes/s)");
        }
        line(format!(
            "  {:<12}{rate} over {}",
            "rate",
            secs(self.duration_s)
        ));
        let mut errors = self.errors.to_string();
        if !self.error_kinds.is_empty() {
            let kinds: Vec<String> = self
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = write!(errors, " ({})", kinds.join(", "));
        }
        line(format!("  {:<12}{errors}", "errors"));
        if let Some(first) = &self.first_error {
            line(format!("  {:<12}{first}", "first error"));
        }
        line(format!("  {:<12}{}", "timeouts", self.timeouts));
        match &self.latency_us {
            Some(l) => line(format!(
                "  {:<12}p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, min {}, n {})",
                "latency µs", l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.min, l.count
            )),
            None => line(format!("  {:<12}none measured", "latency µs")),
        }
        out
    }
}

/// `n` per second of `secs`, 0 for an empty window.
pub fn per_second(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        ((n as f64 / secs) * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn secs(s: f64) -> String {
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn params() -> Params {
        Params {
            url: "ws://x/socket/websocket".into(),
            protocol: Protocol::Phoenix,
            source_addrs: None,
            connections: 2,
            duration_s: 1.0,
            warmup_s: 0.5,
            timeout_s: 5.0,
            payload_bytes: 20,
            encoding: Encoding::Json,
            window: Some(1),
            rate: None,
            max_lag: None,
            topic: None,
        }
    }

    #[test]
    fn json_has_every_field() {
        let mut stats = Stats::new();
        stats.sent = 10;
        stats.received = 10;
        for us in 1..=10 {
            stats.record(Duration::from_micros(us * 10));
        }
        stats.error(ErrorKind::Closed, "code 1013");
        let setup = Setup {
            requested: 2,
            established: 2,
        };
        let s = Summary::new("echo", params(), setup, &stats, 2.0, "msgs/s");
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).expect("valid JSON");
        assert_eq!(v["scenario"], "echo");
        assert_eq!(v["params"]["encoding"], "json");
        assert_eq!(v["params"]["protocol"], "phoenix");
        assert!(v["params"].get("source_addrs").is_none());
        assert_eq!(v["params"]["window"], 1);
        assert!(v["params"].get("rate").is_none());
        assert_eq!(v["received"], 10);
        assert_eq!(v["rate"], 5.0);
        assert_eq!(v["errors"], 1);
        assert_eq!(v["error_kinds"]["closed"], 1);
        assert_eq!(v["first_error"], "closed: code 1013");
        assert_eq!(v["latency_us"]["p50"], 50);
        assert_eq!(v["latency_us"]["max"], 100);
        assert_eq!(v["latency_us"]["count"], 10);
        let table = s.to_table();
        assert!(table.contains("p99.9"), "{table}");
        assert!(table.contains("errors      1 (closed 1)"), "{table}");

        // The top bucket's highest equivalent (30 015) is above the exact max.
        let mut wide = Stats::new();
        wide.record(Duration::from_micros(30_000));
        let l = Latency::of(&wide).expect("one sample");
        assert_eq!(
            (l.min, l.p50, l.p999, l.max),
            (30_000, 30_000, 30_000, 30_000)
        );

        let empty = Summary::new("echo", params(), setup, &Stats::new(), 0.0, "msgs/s");
        let v: serde_json::Value = serde_json::from_str(&empty.to_json()).expect("valid JSON");
        assert!(v["latency_us"].is_null());
        assert_eq!(v["rate"], 0.0);
    }
}
