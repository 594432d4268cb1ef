//! `echo`: C connections, connection `i` joined to `echo:load-<i>`, each
//! keeping W pushes in flight. Every `ok` reply with the payload sent is one
//! round trip; its latency is measured from the moment the push was written.
//!
//! This is a closed loop: a connection sends its next push when a reply
//! comes back, so the rate is the result, not an input (there is no
//! coordinated-omission correction to make: nothing was scheduled).
//!
//! # Per connection
//! * Push `i` of a connection has ref `i + 2` and sits in slot `i % W` until
//!   its reply; a reply whose ref is not in flight is a decode error.
//! * A reply that is not `ok`, or whose payload differs from the one sent,
//!   is a reply error.
//! * When nothing arrives for `--timeout` while pushes are in flight, the
//!   connection is abandoned (a `stalled` error) and its measured pushes in
//!   flight are timeouts; so are those still in flight at the deadline.
//!
//! # Raw protocol
//! Connections open `/echo` ([`client::raw`]) and send binary messages of
//! `--size` bytes (`--binary` is implied), message `i` starting with `i`
//! big-endian (its last `min(size, 8)` bytes) and then the binary filler.
//! Echoes are matched in order: the next one must be exactly the oldest
//! message in flight, same bytes, binary; anything else (other bytes, a
//! text frame, an echo out of order) is a decode error, and the message it
//! was matched with is not measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, raw, Conn, ConnError, Inbound, Protocol, Writer};
use crate::codec::{self, Encoding, Kind};
use crate::harness::{self, Gate, Phases, Run};
use crate::progress::Live;
use crate::report::{Params, Summary};
use crate::stats::{ErrorKind, Stats};
use crate::{Common, Error};

/// The join_ref (and join ref) of every echo connection.
const JOIN_REF: &str = "1";
/// The ref of push 0 (the join took "1").
const FIRST_REF: u64 = 2;
/// The event of every push (the echo channel answers any event).
const EVENT: &str = "ping";
/// How long closing a connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Options of the `echo` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Pushes each connection keeps in flight.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub window: usize,
    /// Payload size: bytes of a binary payload, or length of the JSON `d` string.
    #[arg(long, short = 'p', default_value_t = 20)]
    pub size: usize,
    /// Push binary payloads (ArrayBuffer, kind-0 binary frames) instead of
    /// JSON (always so with --protocol raw).
    #[arg(long)]
    pub binary: bool,
}

impl Default for EchoArgs {
    fn default() -> Self {
        EchoArgs {
            window: 1,
            size: 20,
            binary: false,
        }
    }
}

/// Run the scenario.
pub async fn run(common: &Common, args: &EchoArgs) -> Result<Summary, Error> {
    if args.window == 0 {
        return Err(Error::Invalid("--window must be at least 1".into()));
    }
    let epoch = Instant::now();
    let protocol = common.protocol;
    let encoding = if args.binary || protocol == Protocol::Raw {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    let payload: Arc<[u8]> = payload(encoding, args.size).into();
    let target = common.target().await?;
    let mut run = Run::<Stats>::new(target, common.setup_limits(), epoch);
    for i in 0..common.connections {
        let cfg = Cfg {
            topic: match protocol {
                Protocol::Phoenix => format!("echo:load-{i}"),
                Protocol::Raw => String::new(),
            },
            protocol,
            encoding,
            window: args.window,
            timeout: common.timeout,
            payload: payload.clone(),
        };
        run.spawn(move |gate| connection(gate, cfg));
    }
    let (phases, setup) = run
        .start(common.warmup, common.duration, common.timeout)
        .await;
    let (results, lost) = run.finish(phases.deadline).await;
    let mut total = Stats::new();
    for r in &results {
        total.merge(r);
    }
    for _ in 0..lost {
        total.error(ErrorKind::Internal, "connection task panicked or was cut");
    }
    let params = Params {
        window: Some(args.window),
        ..Params::new(common, args.size, encoding)
    };
    Ok(Summary::new(
        "echo",
        params,
        setup,
        &total,
        phases.window().as_secs_f64(),
        "msgs/s",
    ))
}

/// The payload every push carries: `{"d":"xxx…"}` or `size` bytes.
pub fn payload(encoding: Encoding, size: usize) -> Vec<u8> {
    match encoding {
        Encoding::Json => {
            let mut p = Vec::with_capacity(size + 8);
            p.extend_from_slice(br#"{"d":""#);
            p.resize(p.len() + size, b'x');
            p.extend_from_slice(br#""}"#);
            p
        }
        Encoding::Binary => (0..size).map(|i| (i % 251) as u8).collect(),
    }
}

/// What one connection needs.
struct Cfg {
    /// Phoenix: the connection's topic; raw: empty.
    topic: String,
    protocol: Protocol,
    encoding: Encoding,
    window: usize,
    timeout: Duration,
    payload: Arc<[u8]>,
}

/// One connection task: set up, run until the end, count what is left.
async fn connection(gate: Gate, cfg: Cfg) -> Stats {
    let live = gate.live();
    let mut buf = Vec::with_capacity(cfg.payload.len() + cfg.topic.len() + 64);
    let opened = match cfg.protocol {
        Protocol::Phoenix => gate.connect_and_join(&mut buf, &cfg.topic, JOIN_REF).await,
        Protocol::Raw => gate.connect_raw(raw::ECHO).await,
    };
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            let _ = gate.ready(false).await;
            return Stats::failed(e.kind(), e);
        }
    };
    let mut stats = Stats::recording(live.clone());
    if let Some(phases) = gate.ready(true).await {
        let mut echo = Echo {
            cfg: &cfg,
            slots: vec![None; cfg.window],
            in_flight: 0,
            next_echo: 0,
            buf,
            live,
        };
        match harness::until(phases.deadline, echo.drive(&mut conn, &mut stats, &phases)).await {
            Some(Ok(())) | None => {}
            Some(Err(e)) => stats.error(e.kind(), e),
        }
        stats.timeouts += echo.slots.iter().flatten().filter(|f| f.measured).count() as u64;
    }
    let _ = harness::until(Instant::now() + CLOSE_WAIT, client::close(&mut conn.writer)).await;
    stats
}

/// A push waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    sent: Instant,
    measured: bool,
}

/// One connection's pushes in flight.
struct Echo<'a> {
    cfg: &'a Cfg,
    /// Push `seq` waits in slot `seq % window`.
    slots: Vec<Option<InFlight>>,
    in_flight: usize,
    /// Raw: the message the next echo must match (echoes come in order).
    next_echo: u64,
    /// Reused for every push (masked in place when sent).
    buf: Vec<u8>,
    live: Arc<Live>,
}

/// An answer matched with the push it answers.
struct Answer {
    sent: InFlight,
    /// The right status and payload (else an error was counted).
    ok: bool,
}

impl Echo<'_> {
    /// Fill the window, then send a push for every reply until the end, then
    /// wait for the last replies. Not cancel-safe (cancel only to abandon).
    async fn drive(
        &mut self,
        conn: &mut Conn,
        stats: &mut Stats,
        phases: &Phases,
    ) -> Result<(), ConnError> {
        let window = self.cfg.window as u64;
        for seq in 0..window {
            self.send(&mut conn.writer, seq, stats, phases).await?;
        }
        while self.in_flight > 0 {
            let inbound = match tokio::time::timeout(
                self.cfg.timeout,
                client::recv(&mut conn.reader),
            )
            .await
            {
                Ok(inbound) => inbound?,
                // What is in flight becomes timeouts (counted by the caller).
                Err(_) => return Err(ConnError::Stalled(self.cfg.timeout)),
            };
            let (data, binary) = match &inbound {
                Inbound::Text(p) => (p, false),
                Inbound::Binary(p) => (p, true),
                Inbound::Ping(p) => {
                    client::pong(&mut conn.writer, p).await?;
                    continue;
                }
                Inbound::Close(code) => return Err(ConnError::Closed(*code)),
            };
            self.live.message(data.len());
            let answer = match self.cfg.protocol {
                Protocol::Phoenix => self.reply(data, binary, stats)?,
                Protocol::Raw => self.echo(data, binary, stats),
            };
            let Some(Answer { sent, ok }) = answer else {
                continue;
            };
            let now = Instant::now();
            if ok && sent.measured {
                stats.received += 1;
                stats.record(now.saturating_duration_since(sent.sent));
            }
            if now < phases.end {
                self.send(&mut conn.writer, sent.seq + window, stats, phases)
                    .await?;
            }
        }
        Ok(())
    }

    /// Phoenix: match a server message with its push, if it is a reply to
    /// one (`None`: something else, or an error counted).
    fn reply(
        &mut self,
        data: &[u8],
        binary: bool,
        stats: &mut Stats,
    ) -> Result<Option<Answer>, ConnError> {
        let msg = if binary {
            codec::decode_binary(data)?
        } else {
            codec::decode_text(data)?
        };
        if msg.topic != self.cfg.topic {
            return Ok(None);
        }
        match (msg.kind, &*msg.event) {
            (Kind::Reply, _) => {}
            (_, "phx_error") => return Err(ConnError::Channel("phx_error")),
            (_, "phx_close") => return Err(ConnError::Channel("phx_close")),
            _ => return Ok(None),
        }
        let Some(sent) = msg
            .ref_
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .and_then(|r| r.checked_sub(FIRST_REF))
            .and_then(|seq| self.take(seq))
        else {
            stats.error(ErrorKind::Decode, "reply to a ref not in flight");
            return Ok(None);
        };
        let ok = if msg.status.as_deref() != Some("ok") {
            stats.error(ErrorKind::Reply, format_args!("status {:?}", msg.status));
            false
        } else if msg.payload.as_bytes() != &*self.cfg.payload {
            stats.error(ErrorKind::Reply, "payload differs from the one sent");
            false
        } else {
            true
        };
        Ok(Some(Answer { sent, ok }))
    }

    /// Raw: match an echo with the oldest message in flight.
    fn echo(&mut self, data: &[u8], binary: bool, stats: &mut Stats) -> Option<Answer> {
        let seq = self.next_echo;
        let Some(sent) = self.take(seq) else {
            stats.error(ErrorKind::Decode, "an echo with no message in flight");
            return None;
        };
        self.next_echo += 1;
        let ok = binary && raw_matches(&self.cfg.payload, seq, data);
        if !ok {
            stats.error(
                ErrorKind::Decode,
                "echo differs from the message sent (bytes, opcode or order)",
            );
        }
        Some(Answer { sent, ok })
    }

    /// Write push `seq` and put it in its slot.
    async fn send(
        &mut self,
        writer: &mut Writer,
        seq: u64,
        stats: &mut Stats,
        phases: &Phases,
    ) -> Result<(), ConnError> {
        self.buf.clear();
        match self.cfg.protocol {
            Protocol::Phoenix => {
                let mut digits = [0u8; 20];
                let ref_ = super::decimal(seq + FIRST_REF, &mut digits);
                codec::encode_push(
                    &mut self.buf,
                    self.cfg.encoding,
                    Some(JOIN_REF),
                    Some(ref_),
                    &self.cfg.topic,
                    EVENT,
                    &self.cfg.payload,
                )?;
            }
            Protocol::Raw => raw_message(&self.cfg.payload, seq, &mut self.buf),
        }
        let sent = Instant::now();
        let measured = phases.measured(sent);
        let slot = (seq % self.cfg.window as u64) as usize;
        self.slots[slot] = Some(InFlight {
            seq,
            sent,
            measured,
        });
        self.in_flight += 1;
        if measured {
            stats.sent += 1;
        }
        client::send(writer, self.cfg.encoding, &mut self.buf).await
    }

    /// Take push `seq` out of its slot, if it is the one in flight there.
    /// Raw echoes are taken in order, so slot `seq % W` is the oldest.
    fn take(&mut self, seq: u64) -> Option<InFlight> {
        let slot = self
            .slots
            .get_mut((seq % self.cfg.window as u64) as usize)?;
        let found = slot.filter(|f| f.seq == seq)?;
        *slot = None;
        self.in_flight -= 1;
        Some(found)
    }
}

/// Bytes of a raw message's sequence header: its last `min(size, 8)` big-endian bytes.
fn header_len(size: usize) -> usize {
    size.min(8)
}

/// Raw message `seq`: `filler` with its first bytes replaced by `seq`.
fn raw_message(filler: &[u8], seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(filler);
    let k = header_len(filler.len());
    out[..k].copy_from_slice(&seq.to_be_bytes()[8 - k..]);
}

/// Whether `echo` is exactly raw message `seq`.
fn raw_matches(filler: &[u8], seq: u64, echo: &[u8]) -> bool {
    let k = header_len(filler.len());
    echo.len() == filler.len()
        && echo[..k] == seq.to_be_bytes()[8 - k..]
        && echo[k..] == filler[k..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_messages_carry_their_sequence() {
        let filler = payload(Encoding::Binary, 20);
        let mut m = Vec::new();
        raw_message(&filler, 0x0102, &mut m);
        assert_eq!(m.len(), 20);
        assert_eq!(&m[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&m[8..], &filler[8..]);
        assert!(raw_matches(&filler, 0x0102, &m));
        assert!(!raw_matches(&filler, 0x0103, &m), "another message");
        assert!(!raw_matches(&filler, 0x0102, &m[..19]), "truncated");
        let mut changed = m.clone();
        changed[15] ^= 1;
        assert!(!raw_matches(&filler, 0x0102, &changed), "corrupted");
        // Shorter than the header: the low bytes of the sequence.
        let tiny = payload(Encoding::Binary, 2);
        raw_message(&tiny, 0x0305, &mut m);
        assert_eq!(m, [3, 5]);
        assert!(raw_matches(&tiny, 0x0305, &m));
        let empty = payload(Encoding::Binary, 0);
        raw_message(&empty, 9, &mut m);
        assert!(m.is_empty() && raw_matches(&empty, 9, &m));
    }

    #[test]
    fn payloads() {
        assert_eq!(payload(Encoding::Json, 3), br#"{"d":"xxx"}"#);
        assert_eq!(payload(Encoding::Json, 0), br#"{"d":""}"#);
        let b = payload(Encoding::Binary, 300);
        assert_eq!(b.len(), 300);
        assert_eq!((b[0], b[250], b[251]), (0, 250, 0));
    }
}
