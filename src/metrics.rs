//! Metric families, described once, with bounded label values only.
//!
//! # Contract
//! * Every metric Sluice exports is registered in [`Metrics::new`] with its
//!   help text; labels are fixed enums (transport, kind, result, reason), never
//!   topics, user ids or paths.
//! * Hot paths hold pre-resolved handles (a [`Metrics`] clone), so counting
//!   costs an atomic add, not a registry lookup.
//! * [`install`] puts the Prometheus recorder in place once per process and
//!   returns the handle `/metrics` renders.

use std::sync::{Arc, OnceLock};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder (first call only) and return its handle.
/// `None` when another recorder was installed by the embedding program.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_gauge!("sluice_connections", "Open connections by transport.");
    describe_counter!(
        "sluice_connections_total",
        "Accepted connections by transport."
    );
    describe_counter!(
        "sluice_connect_rejected_total",
        "Refused socket connections by reason (token_missing, token_invalid, token_expired, token_from_future, bad_vsn, origin, limit, bad_request)."
    );
    describe_counter!("sluice_joins_total", "Channel joins by result (ok, unauthorized, unmatched, too_many, refused, crashed, invalid_topic).");
    describe_gauge!("sluice_channels", "Joined channels on this node.");
    describe_counter!(
        "sluice_frames_in_total",
        "WebSocket messages received by transport and kind (text, binary)."
    );
    describe_counter!(
        "sluice_bytes_in_total",
        Unit::Bytes,
        "Payload bytes received by transport and kind."
    );
    describe_counter!(
        "sluice_frames_out_total",
        "WebSocket frames sent by transport and kind (text, binary, control)."
    );
    describe_counter!(
        "sluice_bytes_out_total",
        Unit::Bytes,
        "Bytes written to sockets by transport and kind, WebSocket headers included."
    );
    describe_counter!(
        "sluice_writev_total",
        "Vectored writes issued by socket writers (frames per write = frames_out / writev)."
    );
    describe_counter!(
        "sluice_queue_dropped_total",
        "Outbound messages dropped by the slow-consumer policy `drop`."
    );
    describe_counter!(
        "sluice_slow_consumer_closes_total",
        "Sockets closed because their outbound queue was full or a write stalled."
    );
    describe_counter!(
        "sluice_heartbeat_timeouts_total",
        "Sockets closed (1001) because nothing, not even a heartbeat, arrived within idle_timeout."
    );
    describe_counter!("sluice_heartbeats_total", "Heartbeats answered.");
    describe_counter!(
        "sluice_bad_input_total",
        "Inbound messages refused, by reason."
    );
    describe_counter!("sluice_disconnects_total", "Closed sockets by reason.");
    describe_counter!(
        "sluice_server_closes_total",
        "Sockets the server asked to close, by reason (drain)."
    );
    describe_counter!(
        "sluice_stale_messages_total",
        "Messages dropped because their join_ref was stale."
    );
    describe_counter!(
        "sluice_unmatched_total",
        "Messages for topics the socket has not joined."
    );
    describe_counter!(
        "sluice_channel_crashes_total",
        "Channel callbacks that failed or panicked."
    );
    describe_counter!(
        "sluice_broadcasts_total",
        "Broadcasts by origin (channel, api)."
    );
    describe_counter!(
        "sluice_deliveries_total",
        "Broadcast frames queued to subscribers."
    );
    describe_histogram!(
        "sluice_broadcast_fanout_seconds",
        Unit::Seconds,
        "Time to queue one broadcast to every local subscriber."
    );
    describe_counter!(
        "sluice_api_requests_total",
        "POST /api/broadcast requests by result."
    );
    describe_counter!(
        "sluice_stream_bytes_total",
        Unit::Bytes,
        "File bytes streamed to clients by mode (zero_copy: slices of a shared map; copied: read into buffers)."
    );
    describe_gauge!("sluice_streams_active", "Download streams running.");
    describe_counter!(
        "sluice_streams_total",
        "Finished download streams by end (complete, cancelled, failed, closed)."
    );
    describe_counter!(
        "sluice_stream_resumes_total",
        "Downloads started at an offset > 0."
    );
    describe_counter!(
        "sluice_upload_bytes_total",
        Unit::Bytes,
        "Upload bytes written to disk (channels and raw socket)."
    );
    describe_counter!(
        "sluice_uploads_total",
        "Finished uploads by result (ok, digest_mismatch, incomplete, past_end, too_large, storage, aborted, raw)."
    );
    describe_counter!(
        "sluice_upload_credit_stalls_total",
        "Upload chunks that had to wait because a window of bytes was still being written."
    );
    describe_counter!(
        "sluice_digest_failures_total",
        "Uploads whose sha256 did not match the declared digest."
    );
    describe_gauge!(
        "sluice_upstream_connections",
        "Upstream feed connections by state (connecting, live, reconnecting)."
    );
    describe_counter!(
        "sluice_upstream_reconnects_total",
        "Upstream connections lost or failed, by reason (closed, silent, connect, tls, handshake, timeout, ...)."
    );
    describe_counter!(
        "sluice_upstream_messages_total",
        "Messages received from upstream feeds."
    );
    describe_counter!(
        "sluice_upstream_malformed_total",
        "Upstream messages ignored in whole or part as malformed."
    );
    describe_counter!(
        "sluice_relay_deliveries_total",
        "Prices offered to subscribers."
    );
    describe_counter!(
        "sluice_relay_conflated_total",
        "Prices replaced by a newer one before the subscriber was sent them."
    );
    describe_histogram!(
        "sluice_relay_latency_seconds",
        Unit::Seconds,
        "From an upstream message's arrival to its price being taken by a subscriber's writer."
    );
    describe_counter!(
        "sluice_path_rejections_total",
        "Refused file names by reason (invalid_name, escapes_root, not_found, not_a_file)."
    );
}

/// Pre-resolved handles for the hot paths, shared: a clone is one pointer
/// (every socket's outbox and channel holds one).
#[derive(Clone)]
pub struct Metrics(Arc<Handles>);

impl std::ops::Deref for Metrics {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// The handles behind [`Metrics`].
pub struct Handles {
    /// Open WebSocket connections.
    pub ws_connections: Gauge,
    /// Accepted WebSocket connections.
    pub ws_connections_total: Counter,
    /// Text messages in.
    pub frames_in_text: Counter,
    /// Binary messages in.
    pub frames_in_binary: Counter,
    /// Text bytes in.
    pub bytes_in_text: Counter,
    /// Binary bytes in.
    pub bytes_in_binary: Counter,
    /// Text frames out.
    pub frames_out_text: Counter,
    /// Binary frames out.
    pub frames_out_binary: Counter,
    /// Control frames out (pong, close).
    pub frames_out_control: Counter,
    /// Text bytes out (WebSocket headers included).
    pub bytes_out_text: Counter,
    /// Binary bytes out (WebSocket headers included).
    pub bytes_out_binary: Counter,
    /// Control bytes out (pong, close).
    pub bytes_out_control: Counter,
    /// Vectored writes.
    pub writev: Counter,
    /// Dropped by policy.
    pub queue_dropped: Counter,
    /// Slow-consumer closes.
    pub slow_consumer_closes: Counter,
    /// Idle timeouts.
    pub idle_timeouts: Counter,
    /// Heartbeats answered.
    pub heartbeats: Counter,
    /// Joined channels.
    pub channels: Gauge,
    /// Stale join_ref drops.
    pub stale: Counter,
    /// Unmatched topics.
    pub unmatched: Counter,
    /// Channel crashes.
    pub crashes: Counter,
    /// Broadcasts from channels (e.g. room pushes).
    pub broadcasts_channel: Counter,
    /// Broadcasts from POST /api/broadcast.
    pub broadcasts_api: Counter,
    /// Broadcast deliveries.
    pub deliveries: Counter,
    /// Broadcast fan-out time.
    pub fanout_seconds: Histogram,
}

impl Metrics {
    /// Resolve the handles against the installed recorder (no-ops without one).
    pub fn new() -> Metrics {
        let t = ("transport", "websocket");
        Metrics(Arc::new(Handles {
            ws_connections: gauge!("sluice_connections", t.0 => t.1),
            ws_connections_total: counter!("sluice_connections_total", t.0 => t.1),
            frames_in_text: counter!("sluice_frames_in_total", t.0 => t.1, "kind" => "text"),
            frames_in_binary: counter!("sluice_frames_in_total", t.0 => t.1, "kind" => "binary"),
            bytes_in_text: counter!("sluice_bytes_in_total", t.0 => t.1, "kind" => "text"),
            bytes_in_binary: counter!("sluice_bytes_in_total", t.0 => t.1, "kind" => "binary"),
            frames_out_text: counter!("sluice_frames_out_total", t.0 => t.1, "kind" => "text"),
            frames_out_binary: counter!("sluice_frames_out_total", t.0 => t.1, "kind" => "binary"),
            frames_out_control: counter!("sluice_frames_out_total", t.0 => t.1, "kind" => "control"),
            bytes_out_text: counter!("sluice_bytes_out_total", t.0 => t.1, "kind" => "text"),
            bytes_out_binary: counter!("sluice_bytes_out_total", t.0 => t.1, "kind" => "binary"),
            bytes_out_control: counter!("sluice_bytes_out_total", t.0 => t.1, "kind" => "control"),
            writev: counter!("sluice_writev_total", t.0 => t.1),
            queue_dropped: counter!("sluice_queue_dropped_total"),
            slow_consumer_closes: counter!("sluice_slow_consumer_closes_total"),
            idle_timeouts: counter!("sluice_heartbeat_timeouts_total"),
            heartbeats: counter!("sluice_heartbeats_total"),
            channels: gauge!("sluice_channels"),
            stale: counter!("sluice_stale_messages_total"),
            unmatched: counter!("sluice_unmatched_total"),
            crashes: counter!("sluice_channel_crashes_total"),
            broadcasts_channel: counter!("sluice_broadcasts_total", "origin" => "channel"),
            broadcasts_api: counter!("sluice_broadcasts_total", "origin" => "api"),
            deliveries: counter!("sluice_deliveries_total"),
            fanout_seconds: histogram!("sluice_broadcast_fanout_seconds"),
        }))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Count a refused connection attempt.
pub fn connect_rejected(reason: &'static str) {
    counter!("sluice_connect_rejected_total", "reason" => reason).increment(1);
}

/// Count a join by result.
pub fn join(result: &'static str) {
    counter!("sluice_joins_total", "result" => result).increment(1);
}

/// Count refused inbound input by reason.
pub fn bad_input(reason: &'static str) {
    counter!("sluice_bad_input_total", "reason" => reason).increment(1);
}

/// Count a closed socket by reason.
pub fn disconnect(reason: &'static str) {
    counter!("sluice_disconnects_total", "reason" => reason).increment(1);
}

/// Count `n` sockets closed for one reason.
pub fn disconnect_many(reason: &'static str, n: u64) {
    counter!("sluice_server_closes_total", "reason" => reason).increment(n);
}

/// Count an API request by result.
pub fn api_request(result: &'static str) {
    counter!("sluice_api_requests_total", "result" => result).increment(1);
}
