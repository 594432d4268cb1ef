//! `upload`: K connections, each joined to its own `files:load-…` channel,
//! each uploading `--size` bytes with the resumable, verified, windowed
//! upload of the `files` channel (docs/FILES.md).
//!
//! # One upload
//! 1. Push `upload:start` `{"name", "size", "sha256"}` (a unique name per
//!    connection); the `ok` reply gives `upload_id`, `offset` (0 for a new
//!    name) and `window`.
//! 2. Binary `chunk` pushes of `--chunk-size` bytes from `offset` on, with at
//!    most `window` bytes (the server's, or a smaller `--window`) sent and
//!    not yet acknowledged; each is answered `ok {"offset"}` once written.
//!    At least one chunk is always allowed in flight, so a chunk larger than
//!    the window still goes, alone.
//! 3. Push `upload:finish` `{"upload_id"}` right behind the last chunk; its
//!    `ok` reply must carry the size and the sha256 the client declared.
//!
//! The upload time (a `latency_us` sample) runs from writing `upload:start`
//! to reading the `upload:finish` reply; throughput is all bytes sent over
//! the time from the start to the last reply. Every connection uploads once
//! (no warmup); `--duration` + `--timeout` is how long they may take.
//!
//! # Content
//! Deterministic: the byte stream repeats with a period of [`PERIOD`] bytes
//! (a prime, so no two chunks of a power-of-two size are equal and a chunk
//! written at the wrong offset changes the digest). [`Pattern`] holds one
//! period plus one chunk, so every chunk is one contiguous slice; the
//! sha256 is computed once per run, before connecting.
//!
//! # Contract
//! * Pipelined: the write half sends chunks while the read half takes the
//!   acknowledgements, in two futures of the connection task; credit flows
//!   from the reader to the writer through a `watch` of the acknowledged
//!   offset. The reader answers pings through the writer.
//! * One copy per chunk: the slice of the pattern into the frame buffer,
//!   which is then masked in place (clients must mask) and sent.
//! * A reply other than `ok` is a `reply` error, an acknowledgement past the
//!   size a `decode` error, a finish reply with another sha256 a `reply`
//!   error counted in `transfer.digest_mismatches`. Acknowledgements carry
//!   cumulative offsets, so the highest one seen is the credit; one that
//!   arrives after a higher one is only counted (`transfer.acks_out_of_order`).
//! * Nothing acknowledged for `--timeout` while chunks are unacknowledged is
//!   a `stalled` error; the finish reply (which waits for the server's fsync)
//!   is awaited until the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use super::download::{
    self, check_ok, parse_reply, Outcome, Shape, TransferError, TransferSummary, VerifyError,
    CLOSE_WAIT, JOIN_REF,
};
use crate::client::{self, Conn, ConnError, Reader, Writer};
use crate::codec::{self, Encoding, Kind};
use crate::harness::{self, Gate, Phases, Run};
use crate::progress::Live;
use crate::report::Summary;
use crate::stats::Stats;
use crate::{Common, Error};

/// Period of the upload content, bytes (a prime just under 1 MiB).
pub const PERIOD: usize = 1_048_573;
/// The window when the server's reply names none.
const DEFAULT_WINDOW: u64 = 8 << 20;
/// The ref of `upload:start` (the join took "1").
const START_REF: &str = "2";
/// The ref of chunk 0; chunk `i` has ref `i + FIRST_CHUNK_REF`.
const FIRST_CHUNK_REF: u64 = 3;
/// The ref of `upload:finish`.
const FINISH_REF: &str = "f";
/// Events.
const START: &str = "upload:start";
const CHUNK: &str = "chunk";
const FINISH: &str = "upload:finish";

/// Options of the `upload` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// Bytes each connection uploads (e.g. 64MiB, 1GiB).
    #[arg(long, value_parser = download::parse_bytes)]
    pub size: u64,
    /// Bytes per binary `chunk` push; a frame is this plus a small header and
    /// must fit the server's --max-frame-bytes.
    #[arg(long, default_value = "1MiB", value_parser = download::parse_bytes)]
    pub chunk_size: u64,
    /// Most unacknowledged bytes in flight; default and upper bound: the
    /// window the server announces.
    #[arg(long, value_parser = download::parse_bytes)]
    pub window: Option<u64>,
    /// Upload names are `<NAME>-<run tag>-<connection>.bin`.
    #[arg(long, default_value = "sluice-load")]
    pub name: String,
}

impl UploadArgs {
    /// Upload `size` bytes per connection in 1 MiB chunks, the server's window.
    pub fn new(size: u64) -> UploadArgs {
        UploadArgs {
            size,
            chunk_size: 1 << 20,
            window: None,
            name: "sluice-load".into(),
        }
    }
}

// === content ===

/// The deterministic upload content (see the module docs).
#[derive(Debug)]
pub struct Pattern {
    /// One period, then its first `chunk` bytes again.
    ring: Vec<u8>,
    chunk: usize,
}

impl Pattern {
    /// The content, sliceable in pieces of at most `chunk` bytes.
    pub fn new(chunk: usize) -> Pattern {
        let mut ring = Vec::with_capacity(PERIOD + chunk);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..PERIOD {
            // xorshift64: cheap, deterministic, not compressible.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ring.push((x >> 24) as u8);
        }
        for i in 0..chunk {
            let b = ring[i % PERIOD];
            ring.push(b);
        }
        Pattern { ring, chunk }
    }

    /// Bytes `[offset, offset + len)` of the content; `None` if `len` is
    /// larger than the chunk size it was made for.
    pub fn slice(&self, offset: u64, len: usize) -> Option<&[u8]> {
        if len > self.chunk {
            return None;
        }
        // Less than PERIOD: fits a usize.
        let start = (offset % PERIOD as u64) as usize;
        self.ring.get(start..start + len)
    }

    /// Lowercase hex sha256 of the first `size` bytes.
    pub fn sha256(&self, size: u64) -> String {
        let mut h = Sha256::new();
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(self.chunk as u64) as usize;
            if let Some(piece) = self.slice(offset, len) {
                h.update(piece);
            }
            offset += len as u64;
        }
        download::hex(&h.finalize())
    }
}

// === the run ===

/// What every connection needs.
struct Cfg {
    size: u64,
    chunk: u64,
    window: Option<u64>,
    pattern: Pattern,
    sha256: String,
    timeout: Duration,
}

/// The `ok` reply to `upload:start`.
#[derive(Debug, Deserialize)]
struct StartReply {
    upload_id: Box<RawValue>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    window: Option<u64>,
}

/// The `ok` reply to a chunk.
#[derive(Debug, Deserialize)]
struct Ack {
    offset: u64,
}

/// The `ok` reply to `upload:finish`.
#[derive(Debug, Deserialize)]
struct FinishReply {
    size: u64,
    sha256: String,
}

/// Run the scenario; the common summary only (see [`run_transfer`]).
pub async fn run(common: &Common, args: &UploadArgs) -> Result<Summary, Error> {
    Ok(run_transfer(common, args).await?.summary)
}

/// Run the scenario.
pub async fn run_transfer(common: &Common, args: &UploadArgs) -> Result<TransferSummary, Error> {
    common.validate()?;
    common.require_phoenix("upload")?;
    let chunk = usize::try_from(args.chunk_size)
        .ok()
        .filter(|&c| c > 0 && c <= 1 << 30)
        .ok_or_else(|| Error::Invalid("--chunk-size must be between 1 B and 1 GiB".into()))?;
    if args.window == Some(0) {
        return Err(Error::Invalid("--window must be positive".into()));
    }
    if args.name.is_empty() || args.name.contains(['/', '\\', '\0']) {
        return Err(Error::Invalid(
            "--name must be a non-empty file name component".into(),
        ));
    }
    let epoch = Instant::now();
    let target = common.target().await?;
    let size = args.size;
    let sha256 = tokio::task::spawn_blocking(move || {
        let pattern = Pattern::new(chunk);
        let sha = pattern.sha256(size);
        (pattern, sha)
    })
    .await;
    let Ok((pattern, sha256)) = sha256 else {
        return Err(Error::Invalid(
            "computing the content's sha256 failed".into(),
        ));
    };
    let cfg = Arc::new(Cfg {
        size,
        chunk: args.chunk_size,
        window: args.window,
        pattern,
        sha256,
        timeout: common.timeout,
    });
    let tag = download::run_tag();
    let mut run = Run::<Outcome>::new(target, common.setup_limits(), epoch);
    for i in 0..common.connections {
        let cfg = cfg.clone();
        let topic = format!("files:load-{tag}-{i}");
        let name = format!("{}-{tag}-{i}.bin", args.name);
        run.spawn(move |gate| connection(gate, cfg, topic, name));
    }
    let (phases, setup) = run
        .start(Duration::ZERO, common.duration, common.timeout)
        .await;
    let (results, lost) = run.finish(phases.deadline).await;
    let shape = Shape {
        scenario: "upload",
        rate_unit: "uploads/s",
        file: args.name.clone(),
        repeat: false,
        verified: true,
        requested_chunk: Some(args.chunk_size),
        phases: &phases,
        setup,
    };
    Ok(TransferSummary::build(common, shape, &results, lost))
}

/// One connection task: set up, upload once, close.
async fn connection(gate: Gate, cfg: Arc<Cfg>, topic: String, name: String) -> Outcome {
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
        let up = Upload {
            cfg: &cfg,
            topic: &topic,
            name: &name,
            live: &live,
        };
        match harness::until(phases.deadline, up.drive(&mut conn, &phases, &mut out)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => out.error(&e),
            None => out.stats.timeouts += 1,
        }
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut conn.writer)).await;
    out
}

/// One connection's upload.
struct Upload<'a> {
    cfg: &'a Cfg,
    topic: &'a str,
    name: &'a str,
    live: &'a Live,
}

/// Where the chunks of one upload start and how many may be unacknowledged.
#[derive(Debug, Clone, Copy)]
struct Plan {
    offset: u64,
    window: u64,
}

impl Upload<'_> {
    /// Start, send, finish. Not cancel-safe.
    async fn drive(
        &self,
        conn: &mut Conn,
        phases: &Phases,
        out: &mut Outcome,
    ) -> Result<(), TransferError> {
        let cfg = self.cfg;
        let started = Instant::now();
        if phases.measured(started) {
            out.stats.sent += 1;
        }
        let mut buf = Vec::with_capacity(512);
        let request = serde_json::json!({
            "name": self.name,
            "size": cfg.size,
            "sha256": cfg.sha256,
        })
        .to_string();
        codec::encode_push(
            &mut buf,
            Encoding::Json,
            Some(JOIN_REF),
            Some(START_REF),
            self.topic,
            START,
            request.as_bytes(),
        )?;
        client::send(&mut conn.writer, Encoding::Json, &mut buf).await?;
        let reply: StartReply = loop {
            let inbound =
                download::recv_data(&mut conn.reader, &mut conn.writer, cfg.timeout).await?;
            let msg = inbound.decode()?;
            if msg.topic != self.topic {
                continue;
            }
            match (msg.kind, &*msg.event) {
                (Kind::Reply, _) if msg.ref_.as_deref() == Some(START_REF) => {
                    check_ok(START, &msg)?;
                    let json = std::str::from_utf8(msg.payload.as_bytes())
                        .map_err(|_| codec::DecodeError::Utf8("response"))?;
                    break parse_reply(START, json)?;
                }
                (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error").into()),
                (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close").into()),
                _ => continue,
            }
        };
        if reply.offset > cfg.size {
            return Err(TransferError::Protocol(format!(
                "upload:start offset {} past the size {}",
                reply.offset, cfg.size
            )));
        }
        let window = reply
            .window
            .unwrap_or(DEFAULT_WINDOW)
            .min(cfg.window.unwrap_or(u64::MAX))
            .max(1);
        out.window = Some(window);
        out.chunk_size = Some(cfg.chunk);
        out.size = Some(cfg.size - reply.offset);
        let plan = Plan {
            offset: reply.offset,
            window,
        };
        let finish = format!(r#"{{"upload_id":{}}}"#, reply.upload_id.get());

        let done = self
            .pipeline(conn, plan, finish.as_bytes(), &mut out.acks_out_of_order)
            .await?;
        if done.size != cfg.size {
            return Err(TransferError::Protocol(format!(
                "upload:finish reports {} bytes, {} sent",
                done.size, cfg.size
            )));
        }
        if done.sha256 != cfg.sha256 {
            return Err(VerifyError::Digest {
                computed: done.sha256,
                announced: cfg.sha256.clone(),
            }
            .into());
        }
        let now = Instant::now();
        out.completed += 1;
        out.bytes += cfg.size - plan.offset;
        out.last_done = Some(now);
        if phases.measured(started) {
            out.stats.received += 1;
            out.stats.record(now.saturating_duration_since(started));
        }
        Ok(())
    }

    /// Send the chunks and `upload:finish` while reading the
    /// acknowledgements; returns the finish reply.
    async fn pipeline(
        &self,
        conn: &mut Conn,
        plan: Plan,
        finish: &[u8],
        reordered: &mut u64,
    ) -> Result<FinishReply, TransferError> {
        let Conn { reader, writer } = conn;
        let (acked_tx, mut acked_rx) = watch::channel(plan.offset);
        let (ping_tx, mut ping_rx) = mpsc::channel::<Vec<u8>>(4);
        // Whichever half ends first stops the other.
        let (stop_writer, mut writer_stopped) = oneshot::channel::<()>();
        let (stop_reader, mut reader_stopped) = oneshot::channel::<()>();
        let read = async {
            let r = tokio::select! {
                r = self.acks(reader, &ping_tx, &acked_tx, reordered) => Some(r),
                Ok(()) = &mut reader_stopped => None,
            };
            let _ = stop_writer.send(());
            r
        };
        let write = async {
            let r = tokio::select! {
                r = self.chunks(writer, &mut ping_rx, &mut acked_rx, plan, finish) => Some(r),
                Ok(()) = &mut writer_stopped => None,
            };
            let _ = stop_reader.send(());
            r
        };
        match tokio::join!(read, write) {
            (Some(r), _) => r,
            (None, Some(Err(e))) => Err(e),
            // `chunks` only ever returns an error.
            (None, _) => Err(TransferError::Protocol("upload writer ended early".into())),
        }
    }

    /// The write half: chunks within the window, then `upload:finish`, then
    /// pongs until stopped. Returns only on failure. Not cancel-safe.
    async fn chunks(
        &self,
        writer: &mut Writer,
        pings: &mut mpsc::Receiver<Vec<u8>>,
        acked: &mut watch::Receiver<u64>,
        plan: Plan,
        finish: &[u8],
    ) -> Result<(), TransferError> {
        let cfg = self.cfg;
        let mut buf = Vec::with_capacity(cfg.pattern.chunk + self.topic.len() + 64);
        let mut offset = plan.offset;
        let mut n = 0u64;
        while offset < cfg.size {
            let len = (cfg.size - offset).min(cfg.chunk);
            // Credit: at most `window` bytes unacknowledged, but always one chunk.
            loop {
                let a = *acked.borrow_and_update();
                if offset <= a || offset + len - a <= plan.window {
                    break;
                }
                tokio::select! {
                    changed = acked.changed() => {
                        if changed.is_err() {
                            // The reader is gone; it reports why.
                            std::future::pending::<()>().await;
                        }
                    }
                    Some(p) = pings.recv() => client::pong(writer, &p).await?,
                }
            }
            while let Ok(p) = pings.try_recv() {
                client::pong(writer, &p).await?;
            }
            // `len` is at most the chunk size the pattern was made for.
            let piece = cfg
                .pattern
                .slice(offset, len as usize)
                .ok_or_else(|| TransferError::Protocol("chunk larger than the pattern".into()))?;
            let mut digits = [0u8; 20];
            let ref_ = super::decimal(n + FIRST_CHUNK_REF, &mut digits);
            buf.clear();
            codec::encode_push(
                &mut buf,
                Encoding::Binary,
                Some(JOIN_REF),
                Some(ref_),
                self.topic,
                CHUNK,
                piece,
            )?;
            client::send(writer, Encoding::Binary, &mut buf).await?;
            self.live.message(piece.len());
            offset += len;
            n += 1;
        }
        buf.clear();
        codec::encode_push(
            &mut buf,
            Encoding::Json,
            Some(JOIN_REF),
            Some(FINISH_REF),
            self.topic,
            FINISH,
            finish,
        )?;
        client::send(writer, Encoding::Json, &mut buf).await?;
        loop {
            match pings.recv().await {
                Some(p) => client::pong(writer, &p).await?,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// The read half: acknowledgements until the finish reply. Not cancel-safe.
    async fn acks(
        &self,
        reader: &mut Reader,
        pings: &mpsc::Sender<Vec<u8>>,
        acked: &watch::Sender<u64>,
        reordered: &mut u64,
    ) -> Result<FinishReply, TransferError> {
        let cfg = self.cfg;
        loop {
            let waiting_for_acks = *acked.borrow() < cfg.size;
            let inbound = if waiting_for_acks {
                match tokio::time::timeout(cfg.timeout, client::recv(reader)).await {
                    Ok(inbound) => inbound?,
                    Err(_) => return Err(ConnError::Stalled(cfg.timeout).into()),
                }
            } else {
                client::recv(reader).await?
            };
            let Some(msg) = client::decode(&inbound, pings)? else {
                continue;
            };
            if msg.topic != self.topic {
                continue;
            }
            match (msg.kind, &*msg.event) {
                (Kind::Reply, _) => {}
                (Kind::Push, "phx_error") => return Err(ConnError::Channel("phx_error").into()),
                (Kind::Push, "phx_close") => return Err(ConnError::Channel("phx_close").into()),
                _ => continue,
            }
            let json = std::str::from_utf8(msg.payload.as_bytes())
                .map_err(|_| codec::DecodeError::Utf8("response"))?;
            match msg.ref_.as_deref() {
                Some(FINISH_REF) => {
                    check_ok(FINISH, &msg)?;
                    return parse_reply(FINISH, json);
                }
                Some(r) if r.parse::<u64>().is_ok_and(|r| r >= FIRST_CHUNK_REF) => {
                    check_ok(CHUNK, &msg)?;
                    let ack: Ack = parse_reply(CHUNK, json)?;
                    if ack.offset > cfg.size {
                        return Err(TransferError::Protocol(format!(
                            "chunk acknowledged at offset {} past the size {}",
                            ack.offset, cfg.size
                        )));
                    }
                    // Offsets are cumulative: a late, lower one says nothing new.
                    if ack.offset < *acked.borrow() {
                        *reordered += 1;
                    } else {
                        acked.send_replace(ack.offset);
                    }
                }
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_slices_are_the_periodic_stream() {
        let chunk = 4096;
        let p = Pattern::new(chunk);
        let at = |i: u64| p.ring[(i % PERIOD as u64) as usize];
        for offset in [
            0,
            1,
            4096,
            PERIOD as u64 - 10,
            PERIOD as u64,
            5 * PERIOD as u64 + 3,
        ] {
            let s = p.slice(offset, chunk).expect("fits");
            for (k, b) in s.iter().enumerate() {
                assert_eq!(*b, at(offset + k as u64));
            }
        }
        assert!(p.slice(0, chunk + 1).is_none());
        // Chunks differ from one another.
        assert_ne!(p.slice(0, chunk), p.slice(PERIOD as u64 / 2, chunk));
    }

    #[test]
    fn sha256_is_over_the_stream() {
        let p = Pattern::new(1000);
        let size = 2 * PERIOD as u64 + 12_345;
        let mut h = Sha256::new();
        for i in 0..size {
            h.update([p.ring[(i % PERIOD as u64) as usize]]);
        }
        assert_eq!(p.sha256(size), download::hex(&h.finalize()));
        // Independent of the chunk size the pattern was made for.
        assert_eq!(Pattern::new(1 << 20).sha256(size), p.sha256(size));
        assert_eq!(
            p.sha256(0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chunk_frames_are_what_sluice_decodes() {
        let p = Pattern::new(64);
        let piece = p.slice(100, 64).expect("fits");
        let mut buf = Vec::new();
        codec::encode_push(
            &mut buf,
            Encoding::Binary,
            Some(JOIN_REF),
            Some("3"),
            "files:x",
            CHUNK,
            piece,
        )
        .expect("encodes");
        let m =
            sluice::protocol::decode(sluice::protocol::Format::V2, false, bytes::Bytes::from(buf))
                .expect("sluice decodes");
        assert_eq!(m.event.as_str(), CHUNK);
        let sluice::protocol::Payload::Binary(b) = &m.payload else {
            panic!("binary payload")
        };
        assert_eq!(&b[..], piece);
    }

    #[test]
    fn replies_parse() {
        let r: StartReply =
            parse_reply(START, r#"{"upload_id":"u-1","offset":0,"window":8388608}"#)
                .expect("parses");
        assert_eq!(
            (r.upload_id.get(), r.offset, r.window),
            (r#""u-1""#, 0, Some(8 << 20))
        );
        let r: StartReply = parse_reply(START, r#"{"upload_id":7}"#).expect("parses");
        assert_eq!(
            format!(r#"{{"upload_id":{}}}"#, r.upload_id.get()),
            r#"{"upload_id":7}"#
        );
        let a: Ack = parse_reply(CHUNK, r#"{"offset":1048576}"#).expect("parses");
        assert_eq!(a.offset, 1 << 20);
        let f: FinishReply =
            parse_reply(FINISH, r#"{"name":"a.bin","size":3,"sha256":"ab"}"#).expect("parses");
        assert_eq!((f.size, f.sha256.as_str()), (3, "ab"));
        assert!(parse_reply::<Ack>(CHUNK, "{}").is_err());
    }
}
