//! Instruction-count workloads for the callgrind regression guard.
//!
//! Each workload drives Sluice's real code paths over in-memory data for
//! [`FRAMES`] frames. The work to count happens inside one `#[inline(never)]`
//! function named `cg_workload_<name>`; `benches/callgrind/guard.sh` runs
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='callgrind::cg_workload_<name>'` on this binary, so setup
//! (runtime, sessions, input frames) and teardown are not counted. Nothing in
//! the measured function may be a closure or async block: those would be
//! named `cg_workload_<name>::{{closure}}` and toggle collection off again.
//!
//! * `cargo bench --bench callgrind -- NAME` runs one workload (what callgrind counts);
//! * `cargo bench --bench callgrind` runs every workload once and prints wall
//!   times (a smoke test; the numbers that matter are the instruction counts);
//! * `--list` prints the workload names.
//!
//! Workloads:
//! * `echo`: 1 000 client pushes `[join_ref,ref,"echo:x","ping",{"d":..}]` in
//!   masked text frames, one at a time as a ping-pong client sends them (one
//!   frame per read): the reader's input buffer and frame decoder
//!   ([`frames::decode`], unmasking included), reassembly, the V2 JSON
//!   decoder, [`Session::handle`] with the built-in `echo` channel, the reply
//!   encode, the outbox, and the real writer task ([`writer::run`]) framing
//!   the reply and writing it to an in-memory sink, on a current-thread runtime.
//! * `echo_binary`: the same with V2 binary pushes (kind 0) of 20 bytes.
//! * `broadcast_encode`: one JSON broadcast to 1 000 V2 subscribers through
//!   [`PubSub::broadcast`] (encode once, share bytes), then the 1 000 writer
//!   tasks each wake, frame and write their copy: per 1 000 delivered frames.
//! * `unmask`: 1 000 masked 1 KiB binary client frames arriving back to back
//!   (each read fills the buffer): the reader's input buffer, frame decoder
//!   and unmasking, and the reassembler.
//!
//! Frames are read through the server's own [`Input`]; the reader task's
//! loop (`read_messages` in `src/transport/websocket.rs`) is private, and
//! [`serve_pushes`] mirrors it step for step and must follow it when it
//! changes. Not counted by design: the kernel (socket reads and writes, the
//! readiness wait), the hyper upgrade and connection setup. The Prometheus
//! recorder is installed as in the server, so metric updates are counted.
//!
//! Counts vary by about 0.1-0.3 % run to run: tokio's `select!` polls its
//! branches in a random order (the writer's wait, the reader's selects).

use std::future::Future;
use std::hint::black_box;
use std::io::IoSlice;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;
use sluice::app::App;
use sluice::channel::Registry;
use sluice::config::Config;
use sluice::protocol::{self, Format, Payload};
use sluice::pubsub::{Origin, PubSub};
use sluice::session::Session;
use sluice::transport::frames::{self, Op};
use sluice::transport::input::{Input, Source};
use sluice::transport::outbox::{Limits, Outbox};
use sluice::transport::reassemble::{InMessage, Kind, Reassembler};
use sluice::transport::writer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Frames per workload: the guard reports instructions per 1 000 frames.
const FRAMES: usize = 1000;

/// The workloads, in the order the guard runs them.
const WORKLOADS: &[&str] = &["echo", "echo_binary", "broadcast_encode", "unmask"];

/// What the in-memory sockets have written.
#[derive(Default)]
struct Written {
    writes: AtomicU64,
    bytes: AtomicU64,
}

/// The write half of an in-memory socket: accepts every byte at once (the
/// kernel's copy is not user-space work, so nothing is copied here).
struct Sink(Arc<Written>);

impl Sink {
    fn accept(&self, n: usize) -> Poll<std::io::Result<usize>> {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        self.0.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.accept(black_box(buf).len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.accept(black_box(bufs).iter().map(|b| b.len()).sum())
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Yield to the runtime until the sinks have seen `writes` writes in total.
async fn wait_written(written: &Written, writes: u64) {
    let mut spins = 0u32;
    while written.writes.load(Ordering::Relaxed) < writes {
        spins += 1;
        assert!(spins < 1_000_000, "writers stalled");
        tokio::task::yield_now().await;
    }
}

/// Run a future that cannot wait (in-memory I/O) to completion without a runtime.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory I/O never waits"),
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn limits(config: &Config) -> Limits {
    Limits {
        bulk_bytes: config.outbound_queue_bytes,
        control_bytes: config.control_queue_bytes,
        policy: config.slow_consumer,
    }
}

/// Spawn the real writer task of one socket, writing into a [`Sink`].
fn spawn_writer(
    rt: &Runtime,
    outbox: &Arc<Outbox>,
    app: &App,
    written: &Arc<Written>,
    reader_done: &CancellationToken,
) {
    rt.spawn(writer::run(
        Sink(written.clone()),
        outbox.clone(),
        reader_done.clone(),
        app.config.write_timeout,
        app.metrics.clone(),
    ));
}

/// A scratch directory for the files channel's directories, removed on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server's shared state with only the `echo` route, as `Sluice::run` builds it.
fn app() -> (Arc<App>, Scratch) {
    // Before any metric handle is resolved, as in the server.
    let _ = sluice::metrics::install();
    // Start the monotonic clock the reader stamps input with (a one-time init).
    let _ = sluice::clock::mono_ms();
    let dir = std::env::temp_dir().join(format!("sluice-callgrind-{}", std::process::id()));
    let scratch = Scratch(dir.clone());
    let mut config = Config::defaults();
    config.files_dir = dir.join("files");
    config.uploads_dir = dir.join("uploads");
    config.routes.retain(|r| r.kind == "echo");
    let files = Arc::new(sluice::files::Files::new(&config).expect("files dirs"));
    let app = App::new(
        config,
        &Registry::with_builtins(),
        "a-secret-key-base-of-at-least-20-bytes",
        "api-key".into(),
        files,
    )
    .expect("app");
    (Arc::new(app), scratch)
}

/// A masked client frame, as a browser sends it.
fn client_frame(opcode: OpCode, payload: Vec<u8>, mask: [u8; 4]) -> Vec<u8> {
    let mut frame = fastwebsockets::Frame::new(true, opcode, Some(mask), payload.into());
    frame.mask();
    let mut buf = Vec::new();
    frame.write(&mut buf).to_vec()
}

/// A deterministic mask per frame (browsers use random ones).
fn mask(i: usize) -> [u8; 4] {
    ((i as u32).wrapping_mul(2_654_435_761) ^ 0x5a5a_5a5a).to_be_bytes()
}

/// A kind-0 binary push as phoenix.js encodes it.
fn binary_push(join_ref: &str, ref_: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    for f in [join_ref, ref_, topic, event] {
        v.push(u8::try_from(f.len()).expect("short meta"));
    }
    for f in [join_ref, ref_, topic, event] {
        v.extend_from_slice(f.as_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// The client end of an in-memory connection. Each read returns at most one
/// segment (what one `read(2)` finds: one frame from a ping-pong client, or
/// a long run of back-to-back frames), bounded by the buffer's room.
struct ClientStream {
    data: Vec<u8>,
    pos: usize,
    /// End offsets of the segments, ascending; the last is `data.len()`.
    ends: Vec<usize>,
    segment: usize,
}

impl ClientStream {
    /// `frames` concatenated; one segment per frame if `per_frame`, else one.
    fn new(frames: Vec<Vec<u8>>, per_frame: bool) -> ClientStream {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for f in frames {
            data.extend_from_slice(&f);
            if per_frame {
                ends.push(data.len());
            }
        }
        if !per_frame {
            ends.push(data.len());
        }
        ClientStream {
            data,
            pos: 0,
            ends,
            segment: 0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let s = &mut *self;
        let Some(&end) = s.ends.get(s.segment) else {
            return Poll::Ready(Ok(())); // EOF
        };
        let n = (end - s.pos).min(buf.remaining());
        buf.put_slice(&s.data[s.pos..s.pos + n]);
        s.pos += n;
        if s.pos == end {
            s.segment += 1;
        }
        Poll::Ready(Ok(()))
    }
}

/// The server's own reader input ([`Input`]) over the in-memory stream.
type ClientInput = Input<ClientStream>;

impl Source for ClientStream {
    fn ready(&mut self) -> impl Future<Output = ()> + Send + '_ {
        // In memory: always readable.
        std::future::ready(())
    }
}

/// The next client frame through the server's [`Input::next`].
async fn next_frame(input: &mut ClientInput, max: usize, outbox: &Outbox) -> frames::Frame {
    input.next(max, outbox).await.expect("valid frame")
}

/// A data frame into a message, as the reader task does.
fn reassemble(reassembler: &mut Reassembler, frame: frames::Frame) -> InMessage {
    let kind = match frame.op {
        Op::Text => Kind::Text,
        Op::Binary => Kind::Binary,
        other => panic!("unexpected {other:?}"),
    };
    reassembler
        .push(kind, frame.fin, frame.payload)
        .expect("reassembles")
        .expect("one frame per message")
}

/// One Phoenix V2 socket joined to `echo:x`, with [`FRAMES`] client pushes
/// waiting to be read, and its writer task parked on an empty outbox.
struct EchoSocket {
    app: Arc<App>,
    outbox: Arc<Outbox>,
    session: Session,
    input: ClientInput,
    /// The server's frame size limit.
    max: usize,
    reassembler: Reassembler,
    /// The reader's end signal, shared with the writer (never cancelled here).
    done: CancellationToken,
    written: Arc<Written>,
    _scratch: Scratch,
}

/// The runtime is a separate field so the measured function can borrow both.
struct Echo {
    rt: Runtime,
    socket: EchoSocket,
}

impl Echo {
    fn new(binary: bool) -> Echo {
        let (app, scratch) = app();
        let rt = runtime();
        let outbox = Arc::new(Outbox::new(limits(&app.config), app.metrics.clone()));
        let written = Arc::new(Written::default());
        let done = CancellationToken::new();
        spawn_writer(&rt, &outbox, &app, &written, &done);
        let mut session = Session::new(
            1,
            Format::V2,
            Some(Arc::from("bench")),
            outbox.clone(),
            app.clone(),
        );
        let join = protocol::v2::decode(Bytes::from_static(br#"["1","1","echo:x","phx_join",{}]"#))
            .expect("join decodes");
        rt.block_on(async {
            session.handle(join).await;
            wait_written(&written, 1).await;
        });
        assert_eq!(session.joined(), 1, "joined echo:x");

        let data = br#"{"d":"0123456789abcd"}"#;
        let mut client = Vec::new();
        for i in 0..FRAMES {
            // phoenix.js counts refs up from the join's.
            let ref_ = (i + 2).to_string();
            let payload = if binary {
                binary_push("1", &ref_, "echo:x", "ping", &data[..20])
            } else {
                let json = std::str::from_utf8(data).expect("utf8");
                format!(r#"["1","{ref_}","echo:x","ping",{json}]"#).into_bytes()
            };
            let opcode = if binary { OpCode::Binary } else { OpCode::Text };
            client.push(client_frame(opcode, payload, mask(i)));
        }
        let input = Input::new(ClientStream::new(client, true), BytesMut::new());
        let reassembler = Reassembler::new(app.config.max_frame_bytes);
        let max = app.config.max_frame_bytes;
        Echo {
            rt,
            socket: EchoSocket {
                app,
                outbox,
                session,
                input,
                max,
                reassembler,
                done,
                written,
                _scratch: scratch,
            },
        }
    }

    /// Every push was answered: one write per reply, of the expected size.
    fn check(&self, binary: bool) {
        let w = &self.socket.written;
        assert_eq!(w.writes.load(Ordering::Relaxed), 1 + FRAMES as u64);
        let join_ref = protocol::Ref::Str("1".into());
        let data = &br#"{"d":"0123456789abcd"}"#[..];
        let response = if binary {
            Payload::Binary(Bytes::copy_from_slice(&data[..20]))
        } else {
            Payload::Json(Bytes::from_static(data))
        };
        let replies: usize = (0..FRAMES)
            .map(|i| {
                let ref_ = protocol::Ref::Str((i + 2).to_string());
                let len = protocol::encode_reply(
                    Format::V2,
                    Some(&join_ref),
                    Some(&ref_),
                    "echo:x",
                    "ok",
                    &response,
                )
                .expect("encodes")
                .len();
                2 + len
            })
            .sum();
        let join_reply = w.bytes.load(Ordering::Relaxed) as usize - replies;
        assert_eq!(
            join_reply,
            2 + r#"["1","1","echo:x","phx_reply",{"status":"ok","response":{}}]"#.len()
        );
    }
}

/// The reader task's loop body for [`FRAMES`] pushes, each answered before the next.
async fn serve_pushes(s: &mut EchoSocket) {
    let m = &s.app.metrics;
    let base = s.written.writes.load(Ordering::Relaxed);
    for i in 1..=FRAMES as u64 {
        if s.done.is_cancelled() {
            unreachable!("never cancelled");
        }
        tokio::select! {
            biased;
            _ = s.outbox.wait_control_room() => {}
            _ = s.done.cancelled() => unreachable!("never cancelled"),
        }
        let frame = tokio::select! {
            biased;
            f = next_frame(&mut s.input, s.max, &s.outbox) => f,
            _ = s.done.cancelled() => unreachable!("never cancelled"),
        };
        let msg = reassemble(&mut s.reassembler, frame);
        if msg.text {
            m.frames_in_text.increment(1);
            m.bytes_in_text.increment(msg.data.len() as u64);
        } else {
            m.frames_in_binary.increment(1);
            m.bytes_in_binary.increment(msg.data.len() as u64);
        }
        let message = protocol::decode(Format::V2, msg.text, msg.data).expect("decodes");
        assert!(!s.outbox.is_closing(), "socket closing");
        // Boxed as in the reader task.
        Box::pin(s.session.handle(message)).await;
        // A ping-pong client: the reply is written before the next push is read.
        wait_written(&s.written, base + i).await;
    }
}

#[inline(never)]
fn cg_workload_echo(e: &mut Echo) {
    e.rt.block_on(serve_pushes(&mut e.socket));
}

#[inline(never)]
fn cg_workload_echo_binary(e: &mut Echo) {
    e.rt.block_on(serve_pushes(&mut e.socket));
}

/// [`FRAMES`] V2 sockets subscribed to one topic, their writers parked.
struct Fanout {
    rt: Runtime,
    pubsub: PubSub,
    payload: Payload,
    written: Arc<Written>,
    _outboxes: Vec<Arc<Outbox>>,
    _app: Arc<App>,
    _scratch: Scratch,
}

impl Fanout {
    fn new() -> Fanout {
        let (app, scratch) = app();
        let rt = runtime();
        let written = Arc::new(Written::default());
        let pubsub = app.pubsub.clone();
        let outboxes: Vec<_> = (0..FRAMES)
            .map(|i| {
                let outbox = Arc::new(Outbox::new(limits(&app.config), app.metrics.clone()));
                pubsub.subscribe("prices:bitcoin", i as u64, Format::V2, outbox.clone());
                spawn_writer(&rt, &outbox, &app, &written, &CancellationToken::new());
                outbox
            })
            .collect();
        // Let every writer run once and park on its empty outbox.
        rt.block_on(async {
            for _ in 0..FRAMES {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(written.writes.load(Ordering::Relaxed), 0);
        Fanout {
            rt,
            pubsub,
            payload: Payload::Json(Bytes::from_static(
                br#"{"value":"91234.12","time":1764107000000}"#,
            )),
            written,
            _outboxes: outboxes,
            _app: app,
            _scratch: scratch,
        }
    }

    fn check(&self) {
        let w = &self.written;
        assert_eq!(w.writes.load(Ordering::Relaxed), FRAMES as u64);
        let frame = protocol::encode_broadcast(Format::V2, "prices:bitcoin", "new", &self.payload)
            .expect("encodes");
        assert_eq!(
            w.bytes.load(Ordering::Relaxed),
            (2 + frame.len() as u64) * FRAMES as u64
        );
    }
}

/// One broadcast, then every subscriber's writer frames and writes it.
async fn broadcast_and_write(f: &Fanout) {
    let d = f
        .pubsub
        .broadcast("prices:bitcoin", "new", &f.payload, Origin::Api);
    assert_eq!(d.queued, FRAMES);
    wait_written(&f.written, FRAMES as u64).await;
}

#[inline(never)]
fn cg_workload_broadcast_encode(f: &Fanout) {
    f.rt.block_on(broadcast_and_write(f));
}

/// [`FRAMES`] masked 1 KiB binary client frames, back to back, behind the reader's input.
struct Unmask {
    input: ClientInput,
    max: usize,
    reassembler: Reassembler,
    outbox: Outbox,
}

impl Unmask {
    fn new() -> Unmask {
        let config = Config::defaults();
        let _ = sluice::metrics::install();
        let _ = sluice::clock::mono_ms();
        let client = (0..FRAMES)
            .map(|i| {
                let payload = (0..1024).map(|j| (i * 31 + j) as u8).collect();
                client_frame(OpCode::Binary, payload, mask(i))
            })
            .collect();
        Unmask {
            input: Input::new(ClientStream::new(client, false), BytesMut::new()),
            max: config.max_frame_bytes,
            reassembler: Reassembler::new(config.max_frame_bytes),
            outbox: Outbox::new(limits(&config), sluice::metrics::Metrics::new()),
        }
    }
}

/// Read every frame; returns a checksum of the unmasked payloads.
async fn read_all(u: &mut Unmask) -> u64 {
    let mut sum = 0u64;
    for _ in 0..FRAMES {
        let frame = next_frame(&mut u.input, u.max, &u.outbox).await;
        let msg = reassemble(&mut u.reassembler, frame);
        sum += u64::from(black_box(&msg.data)[msg.data.len() - 1]);
    }
    sum
}

#[inline(never)]
fn cg_workload_unmask(u: &mut Unmask) -> u64 {
    now(read_all(u))
}

/// Set up workload `name`, run its measured function once, check the result,
/// and return the measured function's wall time.
fn run(name: &str) -> Option<Duration> {
    let t;
    match name {
        "echo" | "echo_binary" => {
            let mut e = Echo::new(name == "echo_binary");
            t = Instant::now();
            if name == "echo" {
                cg_workload_echo(&mut e);
            } else {
                cg_workload_echo_binary(&mut e);
            }
            let elapsed = t.elapsed();
            e.check(name == "echo_binary");
            Some(elapsed)
        }
        "broadcast_encode" => {
            let f = Fanout::new();
            t = Instant::now();
            cg_workload_broadcast_encode(&f);
            let elapsed = t.elapsed();
            f.check();
            Some(elapsed)
        }
        "unmask" => {
            let mut u = Unmask::new();
            t = Instant::now();
            let sum = cg_workload_unmask(&mut u);
            let elapsed = t.elapsed();
            // Last byte of frame i is (i*31 + 1023) mod 256.
            let want: u64 = (0..FRAMES).map(|i| u64::from((i * 31 + 1023) as u8)).sum();
            assert_eq!(sum, want, "unmasked payloads");
            Some(elapsed)
        }
        _ => None,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other flags are ignored too.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for name in WORKLOADS {
            println!("{name}");
        }
        return;
    }
    let mut names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if names.is_empty() {
        names = WORKLOADS.to_vec();
    }
    for name in names {
        let Some(elapsed) = run(name) else {
            eprintln!("unknown workload `{name}`; known: {}", WORKLOADS.join(", "));
            std::process::exit(2);
        };
        println!("callgrind-workload {name} frames={FRAMES} wall={elapsed:?}");
    }
}
