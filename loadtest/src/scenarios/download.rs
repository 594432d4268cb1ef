//! `download`: K connections, each joined to its own `files:load-…` channel,
//! each downloading `--file` with the native `download` event of the `files`
//! channel (docs/FILES.md), verifying every chunk as it arrives.
//!
//! # One download
//! 1. Push `download` `{"file", "chunk_size"?}` (JSON). The `ok` reply gives
//!    `size`, `chunk_size`, `chunks`, `first_chunk` and `sha256`; an `error`
//!    reply (`not_found`, …) is a `reply` error.
//! 2. Binary `new chunk` pushes, payload `<<index::32 big-endian, bytes>>`:
//!    the index must be the next one (from `first_chunk`, which must be 0) and
//!    the length exactly the chunk's (`chunk_size`, the last one shorter).
//!    The sha256 is computed incrementally over the payload slices.
//! 3. The push `image complete`: every chunk must have arrived, and the digest
//!    computed must equal the reply's `sha256` (else a `reply` error, counted
//!    in `transfer.digest_mismatches`).
//!
//! The download time (a `latency_us` sample) runs from writing the `download`
//! push to reading `image complete`.
//!
//! # Modes
//! * Default: every connection downloads the file once, all starting
//!   together (no warmup). `--duration` + `--timeout` is how long they may
//!   take; the run ends as soon as all are done. Throughput is all bytes
//!   over the time from the start to the last `image complete`.
//! * `--repeat`: every connection downloads in a loop; only downloads that
//!   start after `--warmup` and end before `--duration` is over are counted
//!   (`sent`, `received`, latencies), throughput is the chunk bytes that
//!   arrived in the measured window over its length, and a download still
//!   running at the end is abandoned (`transfer.cut_at_end`, not an error).
//!
//! # Output
//! The common [`Summary`] (`sent`/`received`: transfers started/completed
//! and verified, `rate` in transfers/s, `latency_us`: transfer times,
//! `params.payload_bytes`: the chunk size), flattened, plus `transfer`:
//! ```json
//! "transfer":{"file":"big.bin","size_bytes":1073741824,"chunk_bytes":262144,"repeat":false,
//!  "verified":true,"completed":8,"bytes":8589934592,"seconds":8.818,"mb_per_s":974.2,
//!  "per_transfer_mb_s":{"min":121.8,"p10":121.9,"p50":126.0,"p90":135.1,"max":136.0},
//!  "digest_mismatches":0,"cut_at_end":0}
//! ```
//! `upload` adds `window_bytes` and `acks_out_of_order`. MB = 10^6 bytes.
//!
//! # Contract
//! * Chunk payloads are not copied by the client: fastwebsockets reads each
//!   frame into its buffer once, the codec borrows the payload, the hasher
//!   reads that slice, and it is dropped before the next read.
//! * A download that breaks the wire contract (a chunk out of order, of the
//!   wrong length, before the reply, missing at `image complete`) ends its
//!   connection with a `decode` error; so does an unreadable reply. A digest
//!   mismatch is counted and the connection goes on (with `--repeat`).
//! * Bounded in time like every scenario (see [`crate::harness`]); nothing
//!   arriving for `--timeout` during a download is a `stalled` error.
//! * This module also holds what `upload` shares: [`TransferSummary`],
//!   [`Outcome`], [`TransferError`], [`parse_bytes`] and [`hex`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use fastwebsockets::Payload;

use crate::client::{self, Conn, ConnError, Inbound, Reader, Writer};
use crate::codec::{self, DecodeError, Encoding, Kind, ServerMsg};
use crate::harness::{self, Gate, Phases, Run};
use crate::progress::Live;
use crate::report::{Params, Summary};
use crate::stats::{ErrorKind, Stats};
use crate::{Common, Error};

/// The join_ref (and join ref) of every connection.
pub(crate) const JOIN_REF: &str = "1";
/// The ref of download 0 (the join took "1").
const FIRST_REF: u64 = 2;
/// The event asking for a download.
const DOWNLOAD: &str = "download";
/// The event of a chunk.
const NEW_CHUNK: &str = "new chunk";
/// The event ending a download.
const IMAGE_COMPLETE: &str = "image complete";
/// How long closing a connection may take.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes in a megabyte, for MB/s.
const MB: f64 = 1e6;

/// Options of the `download` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// The file to download: a name relative to the server's `--files-dir`.
    #[arg(long)]
    pub file: String,
    /// Chunk size to ask for (e.g. 256KiB, 1MiB); the server clamps it to
    /// [4 KiB, its --max-chunk-bytes]. Default: the server's.
    #[arg(long, value_parser = parse_bytes)]
    pub chunk_size: Option<u64>,
    /// Download in a loop on every connection until --duration is over
    /// (after --warmup), instead of once each.
    #[arg(long)]
    pub repeat: bool,
    /// Skip the sha256 (order, lengths and count are still checked): the
    /// client then costs little more than reading the socket.
    #[arg(long)]
    pub no_verify: bool,
}

impl DownloadArgs {
    /// Download `file` once per connection, default chunk size, verified.
    pub fn new(file: &str) -> DownloadArgs {
        DownloadArgs {
            file: file.to_owned(),
            chunk_size: None,
            repeat: false,
            no_verify: false,
        }
    }
}

// === shared with upload: sizes, digests, errors, results ===

/// Parse a byte count: a number with an optional unit, `K`/`KiB` (1024),
/// `M`/`MiB`, `G`/`GiB`, or `KB`/`MB`/`GB` (powers of 1000); `B` is allowed.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 4096, 256KiB, 1MiB, 1GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The connection failed (socket, decode, stall, channel closed).
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server broke the download wire contract, or the digest differs.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The server answered a push with a status other than `ok`.
    #[error("{event}: {status} {response}")]
    Refused {
        /// The event pushed.
        event: &'static str,
        /// The reply's status.
        status: String,
        /// The reply's response (JSON text).
        response: String,
    },
    /// A reply's response does not have the documented shape.
    #[error("{event} reply not understood ({json}): {source}")]
    BadReply {
        /// The event pushed.
        event: &'static str,
        /// The reply's response (JSON text).
        json: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The server acknowledged something impossible (upload).
    #[error("{0}")]
    Protocol(String),
}

impl TransferError {
    /// The error's summary kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransferError::Conn(e) => e.kind(),
            TransferError::Verify(VerifyError::Digest { .. }) | TransferError::Refused { .. } => {
                ErrorKind::Reply
            }
            TransferError::Verify(_)
            | TransferError::BadReply { .. }
            | TransferError::Protocol(_) => ErrorKind::Decode,
        }
    }

    /// Whether this is a digest mismatch.
    pub fn is_digest(&self) -> bool {
        matches!(self, TransferError::Verify(VerifyError::Digest { .. }))
    }
}

impl From<codec::EncodeError> for TransferError {
    fn from(e: codec::EncodeError) -> Self {
        TransferError::Conn(ConnError::Encode(e))
    }
}

impl From<DecodeError> for TransferError {
    fn from(e: DecodeError) -> Self {
        TransferError::Conn(ConnError::Decode(e))
    }
}

/// Parse a reply's JSON response into `T`.
pub(crate) fn parse_reply<'a, T: Deserialize<'a>>(
    event: &'static str,
    json: &'a str,
) -> Result<T, TransferError> {
    serde_json::from_str(json).map_err(|source| TransferError::BadReply {
        event,
        json: json.chars().take(200).collect(),
        source,
    })
}

/// The reply as an error, unless its status is `ok`.
pub(crate) fn check_ok(event: &'static str, msg: &ServerMsg<'_>) -> Result<(), TransferError> {
    match msg.status.as_deref() {
        Some("ok") => Ok(()),
        status => Err(TransferError::Refused {
            event,
            status: status.unwrap_or("?").to_owned(),
            response: String::from_utf8_lossy(msg.payload.as_bytes())
                .chars()
                .take(200)
                .collect(),
        }),
    }
}

/// A unique-enough tag for topics and upload names of this run.
pub(crate) fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// What one transfer connection did.
#[derive(Debug)]
pub struct Outcome {
    /// Counters, errors and transfer times (µs).
    pub stats: Stats,
    /// Payload bytes counted for throughput.
    pub bytes: u64,
    /// Transfers completed and verified (measured or not).
    pub completed: u64,
    /// Digest mismatches.
    pub digest_mismatches: u64,
    /// Transfers abandoned at the end of a `--repeat` run.
    pub cut_at_end: u64,
    /// When the last counted transfer ended.
    pub last_done: Option<Instant>,
    /// The transfer size the server announced (download) or sent (upload).
    pub size: Option<u64>,
    /// The chunk size in use.
    pub chunk_size: Option<u64>,
    /// The upload window in use.
    pub window: Option<u64>,
    /// Upload: acknowledgements that arrived after one for a later offset.
    pub acks_out_of_order: u64,
}

impl Outcome {
    /// Nothing done yet.
    pub fn new() -> Outcome {
        Outcome {
            stats: Stats::new(),
            bytes: 0,
            completed: 0,
            digest_mismatches: 0,
            cut_at_end: 0,
            last_done: None,
            size: None,
            chunk_size: None,
            window: None,
            acks_out_of_order: 0,
        }
    }

    /// Count `e`.
    pub fn error(&mut self, e: &TransferError) {
        if e.is_digest() {
            self.digest_mismatches += 1;
        }
        self.stats.error(e.kind(), e);
    }
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::new()
    }
}

/// Throughput of single transfers, MB/s (10^6 bytes per second), derived
/// from the transfer-time percentiles (`p10` of the rate is `p90` of the time).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rates {
    /// Slowest transfer.
    pub min: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Fastest transfer.
    pub max: f64,
}

/// What a files scenario adds to the common [`Summary`].
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// Download: the file; upload: the name prefix.
    pub file: String,
    /// Bytes of one transfer.
    pub size_bytes: Option<u64>,
    /// Chunk size in use.
    pub chunk_bytes: Option<u64>,
    /// Upload: the most unacknowledged bytes in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_bytes: Option<u64>,
    /// Download: transfers looped until the end.
    pub repeat: bool,
    /// Whether the client checked the sha256.
    pub verified: bool,
    /// Transfers completed and verified (including any outside the window).
    pub completed: u64,
    /// Bytes counted for throughput.
    pub bytes: u64,
    /// The time those bytes took, seconds.
    pub seconds: f64,
    /// `bytes` / `seconds`, in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// Throughput of single transfers; `null` when none was measured.
    pub per_transfer_mb_s: Option<Rates>,
    /// Transfers whose sha256 did not match (also counted in `errors`).
    pub digest_mismatches: u64,
    /// `--repeat`: downloads still running at the end, abandoned.
    pub cut_at_end: u64,
    /// Upload: acknowledgements that arrived after one for a later offset
    /// (harmless: offsets are cumulative, the highest one counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks_out_of_order: Option<u64>,
}

/// The summary of a files scenario: the common fields plus `transfer`.
#[derive(Debug, Clone, Serialize)]
pub struct TransferSummary {
    /// The fields every scenario reports.
    #[serde(flatten)]
    pub summary: Summary,
    /// Bytes, throughput and digests.
    pub transfer: Transfer,
}

/// How a files run was set up, for [`TransferSummary::build`].
pub(crate) struct Shape<'a> {
    pub scenario: &'static str,
    pub rate_unit: &'static str,
    pub file: String,
    pub repeat: bool,
    pub verified: bool,
    pub requested_chunk: Option<u64>,
    pub phases: &'a Phases,
    pub setup: harness::Setup,
}

impl TransferSummary {
    /// Merge the connections' outcomes.
    pub(crate) fn build(
        common: &Common,
        shape: Shape<'_>,
        results: &[Outcome],
        lost: u64,
    ) -> TransferSummary {
        let mut total = Stats::new();
        let (mut bytes, mut completed, mut mismatches, mut cut, mut reordered) = (0, 0, 0, 0, 0);
        let (mut size, mut chunk, mut window, mut last_done) = (None, None, None, None);
        for r in results {
            total.merge(&r.stats);
            bytes += r.bytes;
            completed += r.completed;
            mismatches += r.digest_mismatches;
            cut += r.cut_at_end;
            reordered += r.acks_out_of_order;
            size = size.or(r.size);
            chunk = chunk.or(r.chunk_size);
            window = window.or(r.window);
            last_done = last_done.max(r.last_done);
        }
        for _ in 0..lost {
            total.error(ErrorKind::Internal, "connection task panicked or was cut");
        }
        let phases = shape.phases;
        let seconds = if shape.repeat {
            phases.window().as_secs_f64()
        } else {
            last_done
                .map(|t| t.saturating_duration_since(phases.start).as_secs_f64())
                .unwrap_or(0.0)
        };
        let chunk = chunk.or(shape.requested_chunk);
        let params = Params {
            warmup_s: if shape.repeat {
                common.warmup.as_secs_f64()
            } else {
                0.0
            },
            ..Params::new(
                common,
                chunk.and_then(|c| usize::try_from(c).ok()).unwrap_or(0),
                Encoding::Binary,
            )
        };
        let summary = Summary::new(
            shape.scenario,
            params,
            shape.setup,
            &total,
            seconds,
            shape.rate_unit,
        );
        let per_transfer_mb_s = match (summary.latency_us, size) {
            (Some(l), Some(size)) if size > 0 => {
                let rate = |us: u64| round1(size as f64 / MB / (us.max(1) as f64 / 1e6));
                // The fastest transfers are the shortest: rate p90 is time p10.
                Some(Rates {
                    min: rate(l.max),
                    p10: rate(l.p90),
                    p50: rate(l.p50),
                    p90: rate(total.latency().map_or(l.min, |h| h.value_at_quantile(0.1))),
                    max: rate(l.min),
                })
            }
            _ => None,
        };
        let transfer = Transfer {
            file: shape.file,
            size_bytes: size,
            chunk_bytes: chunk,
            window_bytes: window,
            repeat: shape.repeat,
            verified: shape.verified,
            completed,
            bytes,
            seconds: (seconds * 1e3).round() / 1e3,
            mb_per_s: if seconds > 0.0 {
                round1(bytes as f64 / MB / seconds)
            } else {
                0.0
            },
            per_transfer_mb_s,
            digest_mismatches: mismatches,
            cut_at_end: cut,
            acks_out_of_order: (shape.scenario == "upload").then_some(reordered),
        };
        TransferSummary { summary, transfer }
    }

    /// One line of JSON: the common fields, plus `transfer`.
    pub fn to_json(&self) -> String {
        // Numbers, strings and maps with string keys always serialize.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The common table plus the transfer lines.
    pub fn to_table(&self) -> String {
        let mut out = self.summary.to_table();
        let t = &self.transfer;
        let size = t
            .size_bytes
            .map_or_else(|| "?".to_owned(), |s| s.to_string());
        let chunk = t
            .chunk_bytes
            .map_or_else(|| "?".to_owned(), |s| s.to_string());
        let mut what = format!(
            "{} · {size} B each, chunk {chunk} B",
            if t.file.is_empty() { "?" } else { &t.file }
        );
        if let Some(w) = t.window_bytes {
            let _ = write!(what, ", window {w} B");
        }
        what.push_str(if t.verified {
            ", sha256 verified"
        } else {
            ", sha256 not checked"
        });
        let _ = writeln!(out, "  {:<12}{what}", "transfer");
        let _ = writeln!(
            out,
            "  {:<12}{:.1} MB/s ({} B in {:.3} s, {} completed{})",
            "throughput",
            t.mb_per_s,
            t.bytes,
            t.seconds,
            t.completed,
            if t.cut_at_end > 0 {
                format!(", {} cut at the end", t.cut_at_end)
            } else {
                String::new()
            }
        );
        if let Some(r) = &t.per_transfer_mb_s {
            let _ = writeln!(
                out,
                "  {:<12}min {:.1}  p10 {:.1}  p50 {:.1}  p90 {:.1}  max {:.1}",
                "each MB/s", r.min, r.p10, r.p50, r.p90, r.max
            );
        }
        let _ = writeln!(out, "  {:<12}{}", "digest bad", t.digest_mismatches);
        if let Some(n) = t.acks_out_of_order.filter(|&n| n > 0) {
            let _ = writeln!(out, "  {:<12}{n} acknowledgements out of order", "acks");
        }
        out
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A text or binary message.
pub(crate) struct Data {
    binary: bool,
    payload: Payload<'static>,
}

impl Data {
    /// Decode it; the message borrows from `self`.
    pub(crate) fn decode(&self) -> Result<ServerMsg<'_>, DecodeError> {
        if self.binary {
            codec::decode_binary(&self.payload)
        } else {
            codec::decode_text(&self.payload)
        }
    }
}

/// Read the next text or binary message, answering pings inline; a close is
/// an error, and so is nothing arriving for `stall`. Not cancel-safe.
pub(crate) async fn recv_data(
    reader: &mut Reader,
    writer: &mut Writer,
    stall: Duration,
) -> Result<Data, ConnError> {
    loop {
        let inbound = match tokio::time::timeout(stall, client::recv(reader)).await {
            Ok(inbound) => inbound?,
            Err(_) => return Err(ConnError::Stalled(stall)),
        };
        match inbound {
            Inbound::Text(payload) => {
                return Ok(Data {
                    binary: false,
                    payload,
                })
            }
            Inbound::Binary(payload) => {
                return Ok(Data {
                    binary: true,
                    payload,
                })
            }
            Inbound::Ping(p) => client::pong(writer, &p).await?,
            Inbound::Close(code) => return Err(ConnError::Closed(code)),
        }
    }
}

// === the download wire contract, pure ===

/// How a download broke the wire contract, or its digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The `ok` reply is inconsistent (chunk count vs size, zero chunk size, resume).
    #[error("download reply inconsistent: {0}")]
    Reply(String),
    /// A chunk arrived before the reply.
    #[error("`new chunk` before the reply to `download`")]
    ChunkBeforeReply,
    /// A chunk payload has no 4-byte index.
    #[error("`new chunk` payload shorter than its index")]
    NoIndex,
    /// A chunk arrived out of order.
    #[error("chunk {got} arrived, expected {expected}")]
    Order {
        /// The next index.
        expected: u64,
        /// The index received.
        got: u64,
    },
    /// A chunk has the wrong length.
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    Length {
        /// The chunk's index.
        index: u64,
        /// Its length by the reply's chunk size.
        expected: u64,
        /// Its length received.
        got: u64,
    },
    /// `image complete` came early, or describes another download.
    #[error("`image complete` after {chunks} of {expected} chunks ({bytes} of {size} bytes)")]
    Incomplete {
        /// Chunks received.
        chunks: u64,
        /// Chunks announced.
        expected: u64,
        /// Bytes received.
        bytes: u64,
        /// Bytes announced.
        size: u64,
    },
    /// The digest of the bytes received differs from the announced one.
    #[error("sha256 mismatch: computed {computed}, announced {announced}")]
    Digest {
        /// What the client computed.
        computed: String,
        /// What the server announced.
        announced: String,
    },
}

/// The `ok` reply to `download`.
#[derive(Debug, Clone, Deserialize)]
pub struct DownloadReply {
    /// File size.
    pub size: u64,
    /// Chunk size in use.
    pub chunk_size: u64,
    /// Chunks in the file.
    pub chunks: u64,
    /// First chunk sent (resume).
    #[serde(default)]
    pub first_chunk: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
}

/// The `image complete` push.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageComplete {
    /// File size.
    pub size: u64,
    /// Chunks in the file.
    pub chunks: u64,
    /// Lowercase hex sha256 of the whole file.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Checks one download's chunks as they arrive and digests them.
pub struct Verifier {
    reply: DownloadReply,
    next: u64,
    bytes: u64,
    hasher: Option<Sha256>,
}

impl Verifier {
    /// Start checking the download `reply` describes; `verify`: compute the sha256.
    pub fn new(reply: DownloadReply, verify: bool) -> Result<Verifier, VerifyError> {
        let r = &reply;
        if r.chunk_size == 0 {
            return Err(VerifyError::Reply("chunk_size 0".into()));
        }
        if r.chunks != r.size.div_ceil(r.chunk_size) {
            return Err(VerifyError::Reply(format!(
                "{} chunks of {} bytes for {} bytes",
                r.chunks, r.chunk_size, r.size
            )));
        }
        if r.first_chunk != 0 {
            return Err(VerifyError::Reply(format!(
                "first_chunk {} on a download from 0",
                r.first_chunk
            )));
        }
        Ok(Verifier {
            next: r.first_chunk,
            bytes: 0,
            hasher: verify.then(Sha256::new),
            reply,
        })
    }

    /// Check and digest one `new chunk` payload; returns its data length.
    pub fn chunk(&mut self, payload: &[u8]) -> Result<u64, VerifyError> {
        let (index, data) = payload
            .split_first_chunk::<4>()
            .ok_or(VerifyError::NoIndex)?;
        let index = u64::from(u32::from_be_bytes(*index));
        if index != self.next || index >= self.reply.chunks {
            return Err(VerifyError::Order {
                expected: self.next,
                got: index,
            });
        }
        let start = index * self.reply.chunk_size;
        let expected = self.reply.chunk_size.min(self.reply.size - start);
        let got = data.len() as u64;
        if got != expected {
            return Err(VerifyError::Length {
                index,
                expected,
                got,
            });
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.next += 1;
        self.bytes += got;
        Ok(got)
    }

    /// Check `image complete` and the digest.
    pub fn complete(self, done: &ImageComplete) -> Result<(), VerifyError> {
        let r = &self.reply;
        if self.next != r.chunks
            || self.bytes != r.size
            || done.size != r.size
            || done.chunks != r.chunks
        {
            return Err(VerifyError::Incomplete {
                chunks: self.next,
                expected: r.chunks.max(done.chunks),
                bytes: self.bytes,
                size: r.size.max(done.size),
            });
        }
        let Some(hasher) = self.hasher else {
            return Ok(());
        };
        let computed = hex(&hasher.finalize());
        let announced = &r.sha256;
        let complete_agrees = done.sha256.as_deref().is_none_or(|s| s == announced);
        if &computed != announced || !complete_agrees {
            return Err(VerifyError::Digest {
                computed,
                announced: announced.clone(),
            });
        }
        Ok(())
    }
}

// === the run ===

/// What every connection needs.
struct Cfg {
    /// The `download` push's payload.
    request: Vec<u8>,
    repeat: bool,
    verify: bool,
    timeout: Duration,
}

/// Run the scenario; the common summary only (see [`run_transfer`]).
pub async fn run(common: &Common, args: &DownloadArgs) -> Result<Summary, Error> {
    Ok(run_transfer(common, args).await?.summary)
}

/// Run the scenario.
pub async fn run_transfer(common: &Common, args: &DownloadArgs) -> Result<TransferSummary, Error> {
    common.validate()?;
    common.require_phoenix("download")?;
    if args.file.is_empty() {
        return Err(Error::Invalid("--file must not be empty".into()));
    }
    if args.chunk_size == Some(0) {
        return Err(Error::Invalid("--chunk-size must be positive".into()));
    }
    let epoch = Instant::now();
    let mut request = serde_json::json!({ "file": args.file });
    if let Some(c) = args.chunk_size {
        request["chunk_size"] = c.into();
    }
    let cfg = Arc::new(Cfg {
        request: request.to_string().into_bytes(),
        repeat: args.repeat,
        verify: !args.no_verify,
        timeout: common.timeout,
    });
    let target = common.target().await?;
    let tag = run_tag();
    let mut run = Run::<Outcome>::new(target, common.setup_limits(), epoch);
    for i in 0..common.connections {
        let cfg = cfg.clone();
        let topic = format!("files:load-{tag}-{i}");
        run.spawn(move |gate| connection(gate, cfg, topic));
    }
    let warmup = if args.repeat {
        common.warmup
    } else {
        Duration::ZERO
    };
    let (phases, setup) = run.start(warmup, common.duration, common.timeout).await;
    let (results, lost) = run.finish(phases.deadline).await;
    let shape = Shape {
        scenario: "download",
        rate_unit: "downloads/s",
        file: args.file.clone(),
        repeat: args.repeat,
        verified: !args.no_verify,
        requested_chunk: args.chunk_size,
        phases: &phases,
        setup,
    };
    Ok(TransferSummary::build(common, shape, &results, lost))
}

/// One connection task: set up, download (once or until the end), close.
async fn connection(gate: Gate, cfg: Arc<Cfg>, topic: String) -> Outcome {
    let live = gate.live();
    let mut out = Outcome::new();
    let mut buf = Vec::with_capacity(256);
    let mut conn = match gate.connect_and_join(&mut buf, &topic, JOIN_REF).await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = gate.ready(false).await;
            out.stats.error(e.kind(), e);
            return out;
        }
    };
    out.stats = Stats::with_live(live.clone());
    if let Some(phases) = gate.ready(true).await {
        let cut = if cfg.repeat {
            phases.end
        } else {
            phases.deadline
        };
        let mut running = None;
        let mut dl = Downloads {
            cfg: &cfg,
            topic: &topic,
            phases: &phases,
            buf,
            live,
        };
        match harness::until(cut, dl.drive(&mut conn, &mut out, &mut running)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => out.error(&e),
            None => match running {
                // A download running at the end of a --repeat run.
                Some(_) if cfg.repeat => out.cut_at_end += 1,
                Some(true) => out.stats.timeouts += 1,
                _ => {}
            },
        }
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut conn.writer)).await;
    out
}

/// One connection's downloads.
struct Downloads<'a> {
    cfg: &'a Cfg,
    topic: &'a str,
    phases: &'a Phases,
    buf: Vec<u8>,
    live: Arc<Live>,
}

impl Downloads<'_> {
    /// Download once, or in a loop with `--repeat`. `running` is
    /// `Some(measured)` while a download is in progress. Not cancel-safe.
    async fn drive(
        &mut self,
        conn: &mut Conn,
        out: &mut Outcome,
        running: &mut Option<bool>,
    ) -> Result<(), TransferError> {
        let mut n = 0u64;
        loop {
            let started = Instant::now();
            if self.cfg.repeat && started >= self.phases.end {
                return Ok(());
            }
            let measured = self.phases.measured(started);
            *running = Some(measured);
            if measured {
                out.stats.sent += 1;
            }
            let result = self.download(conn, n, out).await;
            *running = None;
            let done = Instant::now();
            n += 1;
            match result {
                Ok(()) => {
                    out.completed += 1;
                    if measured && (!self.cfg.repeat || done < self.phases.end) {
                        out.stats.received += 1;
                        out.stats.record(done.saturating_duration_since(started));
                    }
                    if !self.cfg.repeat {
                        out.last_done = Some(done);
                    }
                }
                // Counted; the next download may still be fine.
                Err(e) if e.is_digest() => out.error(&e),
                Err(e) => return Err(e),
            }
            if !self.cfg.repeat {
                return Ok(());
            }
        }
    }

    /// One download, `n`-th on this connection.
    async fn download(
        &mut self,
        conn: &mut Conn,
        n: u64,
        out: &mut Outcome,
    ) -> Result<(), TransferError> {
        let mut digits = [0u8; 20];
        let ref_ = super::decimal(n + FIRST_REF, &mut digits);
        self.buf.clear();
        codec::encode_push(
            &mut self.buf,
            Encoding::Json,
            Some(JOIN_REF),
            Some(ref_),
            self.topic,
            DOWNLOAD,
            &self.cfg.request,
        )?;
        client::send(&mut conn.writer, Encoding::Json, &mut self.buf).await?;
        let stall = self.cfg.timeout;

        // The reply comes first.
        let mut verifier = loop {
            let inbound = recv_data(&mut conn.reader, &mut conn.writer, stall).await?;
            let msg = inbound.decode()?;
            if msg.topic != self.topic {
                continue;
            }
            match (msg.kind, &*msg.event) {
                (Kind::Reply, _) if msg.ref_.as_deref() == Some(ref_) => {
                    check_ok(DOWNLOAD, &msg)?;
                    let Ok(json) = std::str::from_utf8(msg.payload.as_bytes()) else {
                        return Err(DecodeError::Utf8("response").into());
                    };
                    let reply: DownloadReply = parse_reply(DOWNLOAD, json)?;
                    out.size = Some(reply.size);
                    out.chunk_size = Some(reply.chunk_size);
                    break Verifier::new(reply, self.cfg.verify)?;
                }
                (Kind::Push, NEW_CHUNK) => return Err(VerifyError::ChunkBeforeReply.into()),
                (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error").into()),
                (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close").into()),
                _ => continue,
            }
        };

        // Then the chunks, then `image complete`.
        let (from, end) = (self.phases.measure_from, self.phases.end);
        loop {
            let inbound = recv_data(&mut conn.reader, &mut conn.writer, stall).await?;
            let msg = inbound.decode()?;
            if msg.topic != self.topic {
                continue;
            }
            match (msg.kind, &*msg.event) {
                (Kind::Push, NEW_CHUNK) => {
                    let len = verifier.chunk(msg.payload.as_bytes())?;
                    self.live.message(len as usize);
                    if !self.cfg.repeat || {
                        let now = Instant::now();
                        now >= from && now < end
                    } {
                        out.bytes += len;
                    }
                }
                (Kind::Push, IMAGE_COMPLETE) => {
                    let json = std::str::from_utf8(msg.payload.as_bytes())
                        .map_err(|_| DecodeError::Utf8("payload"))?;
                    let done: ImageComplete = parse_reply(IMAGE_COMPLETE, json)?;
                    return Ok(verifier.complete(&done)?);
                }
                (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error").into()),
                (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close").into()),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice::protocol::{self, Ref};

    use super::*;

    fn file(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn reply_for(data: &[u8], chunk: u64) -> DownloadReply {
        DownloadReply {
            size: data.len() as u64,
            chunk_size: chunk,
            chunks: (data.len() as u64).div_ceil(chunk),
            first_chunk: 0,
            sha256: hex(&Sha256::digest(data)),
        }
    }

    /// The frame Sluice sends for chunk `i`: push header, then index ++ bytes.
    fn chunk_frame(topic: &str, i: u32, bytes: &[u8]) -> Vec<u8> {
        let mut payload = i.to_be_bytes().to_vec();
        payload.extend_from_slice(bytes);
        protocol::binary::encode_push(
            Some(&Ref::Str("1".into())),
            topic,
            NEW_CHUNK,
            Bytes::from(payload),
        )
        .expect("encodes")
        .to_vec()
    }

    fn complete_of(r: &DownloadReply) -> ImageComplete {
        ImageComplete {
            size: r.size,
            chunks: r.chunks,
            sha256: Some(r.sha256.clone()),
        }
    }

    #[test]
    fn parses_byte_counts() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256KiB"), Ok(256 << 10));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert_eq!(parse_bytes("12B"), Ok(12));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "1 parsec",
            "-1",
            "99999999999999999999G",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!(parse_bytes("20000000000G").is_err());
    }

    #[test]
    fn verifies_sluice_chunk_frames() {
        let data = file(10_000);
        let reply = reply_for(&data, 4096);
        assert_eq!(reply.chunks, 3);
        let mut v = Verifier::new(reply.clone(), true).expect("consistent");
        for (i, piece) in data.chunks(4096).enumerate() {
            let frame = chunk_frame("files:x", i as u32, piece);
            let msg = codec::decode_binary(&frame).expect("decodes");
            assert_eq!(
                (msg.kind, &*msg.event, &*msg.topic),
                (Kind::Push, NEW_CHUNK, "files:x")
            );
            // The payload is borrowed from the frame, not copied.
            let p = msg.payload.as_bytes();
            assert!(frame.as_ptr_range().contains(&p.as_ptr()));
            assert_eq!(v.chunk(p), Ok(piece.len() as u64));
        }
        v.complete(&complete_of(&reply)).expect("verifies");

        // The same with hashing off.
        let mut v = Verifier::new(reply.clone(), false).expect("consistent");
        for (i, piece) in data.chunks(4096).enumerate() {
            let mut p = (i as u32).to_be_bytes().to_vec();
            p.extend_from_slice(piece);
            v.chunk(&p).expect("in order");
        }
        v.complete(&complete_of(&reply)).expect("no digest checked");
    }

    /// Bytes of a frame Phoenix itself sent (src/protocol/testdata/phoenix-frames.txt):
    /// `new chunk` 0 of the 16-byte file 0x00..0x0f on `image:cap`, join_ref "10".
    const PHOENIX_CHUNK: &str = "000209093130696d6167653a6361706e6577206368756e6b\
                                 00000000000102030405060708090a0b0c0d0e0f";

    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    #[test]
    fn verifies_a_captured_phoenix_chunk() {
        let frame = unhex(PHOENIX_CHUNK);
        let msg = codec::decode_binary(&frame).expect("decodes");
        assert_eq!(msg.kind, Kind::Push);
        assert_eq!(msg.join_ref.as_deref(), Some("10"));
        assert_eq!((&*msg.topic, &*msg.event), ("image:cap", NEW_CHUNK));
        let data: Vec<u8> = (0..16).collect();
        let reply = reply_for(&data, 256 << 10);
        let mut v = Verifier::new(reply.clone(), true).expect("consistent");
        assert_eq!(v.chunk(msg.payload.as_bytes()), Ok(16));
        v.complete(&complete_of(&reply)).expect("verifies");
    }

    #[test]
    fn cli_parses_the_files_scenarios() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "sluice-load",
            "download",
            "--file",
            "big.bin",
            "-c",
            "8",
            "--chunk-size",
            "1MiB",
            "--repeat",
            "--json",
        ])
        .expect("parses");
        let crate::Scenario::Download(d) = &cli.scenario else {
            panic!("download")
        };
        assert_eq!(
            (d.file.as_str(), d.chunk_size, d.repeat, d.no_verify),
            ("big.bin", Some(1 << 20), true, false)
        );
        assert_eq!(cli.common.connections, 8);
        let cli = crate::Cli::try_parse_from(["sluice-load", "upload", "--size", "1GiB"])
            .expect("parses");
        let crate::Scenario::Upload(u) = &cli.scenario else {
            panic!("upload")
        };
        assert_eq!((u.size, u.chunk_size, u.window), (1 << 30, 1 << 20, None));
        assert!(crate::Cli::try_parse_from(["sluice-load", "download"]).is_err());
        assert!(
            crate::Cli::try_parse_from(["sluice-load", "upload", "--size", "1 parsec"]).is_err()
        );
    }

    #[test]
    fn image_complete_from_sluice_json() {
        let json = br#"{"file":"a.bin","size":10000,"chunks":3,"chunk_size":4096,"sha256":"ab"}"#;
        let frame = protocol::v2::encode_message(
            Some(&Ref::Str("1".into())),
            None,
            "files:x",
            IMAGE_COMPLETE,
            &Bytes::from_static(json),
        )
        .to_vec();
        let msg = codec::decode_text(&frame).expect("decodes");
        assert_eq!((msg.kind, &*msg.event), (Kind::Push, IMAGE_COMPLETE));
        let Ok(text) = std::str::from_utf8(msg.payload.as_bytes()) else {
            panic!("utf8")
        };
        let done: ImageComplete = parse_reply(IMAGE_COMPLETE, text).expect("parses");
        assert_eq!((done.size, done.chunks), (10_000, 3));
        let reply: DownloadReply = parse_reply(
            DOWNLOAD,
            r#"{"file":"a.bin","size":10000,"chunk_size":4096,"chunks":3,"first_chunk":0,
                "offset":0,"sha256":"ab","etag":"2710-1-2"}"#,
        )
        .expect("parses");
        assert_eq!(reply.chunks, 3);
        assert!(parse_reply::<DownloadReply>(DOWNLOAD, r#"{"size":1}"#).is_err());
    }

    #[test]
    fn catches_contract_breaks() {
        let data = file(10_000);
        let reply = reply_for(&data, 4096);
        let chunk = |i: u32, bytes: &[u8]| {
            let mut p = i.to_be_bytes().to_vec();
            p.extend_from_slice(bytes);
            p
        };
        let mut v = Verifier::new(reply.clone(), true).expect("consistent");
        assert_eq!(
            v.chunk(&chunk(1, &data[4096..8192])),
            Err(VerifyError::Order {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            v.chunk(&chunk(0, &data[..100])),
            Err(VerifyError::Length {
                index: 0,
                expected: 4096,
                got: 100
            })
        );
        assert_eq!(v.chunk(&[0, 0]), Err(VerifyError::NoIndex));
        v.chunk(&chunk(0, &data[..4096])).expect("in order");
        assert!(matches!(
            v.complete(&complete_of(&reply)),
            Err(VerifyError::Incomplete {
                chunks: 1,
                expected: 3,
                ..
            })
        ));

        // A changed byte is a digest mismatch.
        let mut bad = data.clone();
        bad[5000] ^= 1;
        let mut v = Verifier::new(reply.clone(), true).expect("consistent");
        for (i, piece) in bad.chunks(4096).enumerate() {
            v.chunk(&chunk(i as u32, piece)).expect("in order");
        }
        let e = v.complete(&complete_of(&reply)).expect_err("mismatch");
        assert!(matches!(e, VerifyError::Digest { .. }));
        assert!(TransferError::from(e).is_digest());

        // Past the last chunk; inconsistent replies.
        let mut v = Verifier::new(reply_for(&data[..10], 4096), true).expect("consistent");
        v.chunk(&chunk(0, &data[..10])).expect("the only chunk");
        assert!(matches!(
            v.chunk(&chunk(1, &[])),
            Err(VerifyError::Order { .. })
        ));
        let mut r = reply.clone();
        r.chunks = 2;
        assert!(Verifier::new(r, true).is_err());
        let mut r = reply.clone();
        r.chunk_size = 0;
        assert!(Verifier::new(r, true).is_err());
        let mut r = reply;
        r.first_chunk = 1;
        assert!(Verifier::new(r, true).is_err());
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let reply = reply_for(&[], 4096);
        assert_eq!(reply.chunks, 0);
        let v = Verifier::new(reply.clone(), true).expect("consistent");
        v.complete(&complete_of(&reply))
            .expect("empty digest matches");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
