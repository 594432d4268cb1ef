//! The Phoenix WebSocket transport: upgrade, then one reader task (this
//! module, which also runs the [`Session`]) and one writer task
//! ([`super::writer`]) per socket.
//!
//! # Contract
//! * The upgrade is refused (403, empty body) before the 101 when
//!   [`connect::authorize`] says so; nothing is spawned for a refused socket.
//! * fastwebsockets' `read_frame` is not cancel-safe: it is raced in a
//!   `select!` only against events after which the loop never reads again
//!   (idle timeout, connection end).
//! * Before each read the reader waits for room in the control lane, so
//!   replies a client does not read cannot pile up ([`Outbox::wait_control_room`]).
//! * Every way a socket ends is counted once in `sluice_disconnects_total`.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::{OpCode, Role, WebSocketError};
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connect::{self, ConnectInfo};
use super::outbox::{close_code, Item, Limits, Outbox};
use super::reassemble::{Kind, ReassembleError, Reassembler};
use super::writer;
use crate::app::App;
use crate::files::raw::RawSession;
use crate::metrics;
use crate::protocol::{self, Format};
use crate::session::Session;

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// What a socket speaks once upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The Phoenix Channels protocol ([`Session`]).
    Phoenix,
    /// The raw upload socket ([`RawSession`]): needs a user.
    Raw,
}

/// The per-socket message handler.
enum Handler {
    Phoenix(Session),
    Raw(RawSession),
}

/// Answer an upgrade request on a socket path and, if accepted, spawn the socket.
pub fn upgrade(
    app: Arc<App>,
    mut req: Request<Incoming>,
    tracker: &TaskTracker,
    permit: Option<Arc<OwnedSemaphorePermit>>,
    mode: Mode,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        metrics::connect_rejected("bad_request");
        return status(StatusCode::BAD_REQUEST);
    }
    let info = match connect::authorize(
        &app,
        req.uri().query(),
        req.headers(),
        crate::clock::now_ms(),
    ) {
        Ok(info) => info,
        Err(reject) => {
            metrics::connect_rejected(reject.label());
            tracing::info!(reason = reject.label(), "socket refused");
            if reject == connect::Reject::Draining {
                return status(StatusCode::SERVICE_UNAVAILABLE);
            }
            return status(StatusCode::FORBIDDEN);
        }
    };
    if mode == Mode::Raw && info.user_id.is_none() {
        metrics::connect_rejected("token_missing");
        return status(StatusCode::FORBIDDEN);
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            metrics::connect_rejected("bad_request");
            tracing::debug!(error = %e, "bad upgrade request");
            return status(StatusCode::BAD_REQUEST);
        }
    };
    let (mut parts, _) = response.into_parts();
    if info.subprotocol_phoenix && mode == Mode::Phoenix {
        parts.headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("phoenix"),
        );
    }
    let inner_tracker = tracker.clone();
    tracker.spawn(async move {
        let _permit = permit;
        match fut.await {
            Ok(ws) => {
                let upgraded: Upgraded = ws.into_inner().into_inner();
                match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let (r, w) = parts.io.into_inner().into_split();
                        let r = std::io::Cursor::new(parts.read_buf).chain(r);
                        run_socket(app, r, w, info, &inner_tracker, mode).await;
                    }
                    Err(upgraded) => {
                        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                        run_socket(app, r, w, info, &inner_tracker, mode).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// A reader that records when bytes last arrived, so the idle timeout
/// measures silence rather than the length of one slow frame.
struct Tracked<R> {
    inner: R,
    base: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tracked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        r
    }
}

/// Resolves once nothing was read for `timeout`. Cancel-safe.
async fn silence(base: tokio::time::Instant, last_ms: &AtomicU64, timeout: std::time::Duration) {
    loop {
        let deadline =
            base + std::time::Duration::from_millis(last_ms.load(Ordering::Relaxed)) + timeout;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Why the reader stopped (a bounded label).
#[derive(Debug, Clone, Copy)]
enum End {
    ClientClose,
    Eof,
    Idle,
    BadInput,
    TooBig,
    Protocol,
    ServerClose,
    Panic,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::ClientClose => "client_close",
            End::Eof => "eof",
            End::Idle => "idle_timeout",
            End::BadInput => "bad_input",
            End::TooBig => "too_big",
            End::Protocol => "protocol_error",
            End::ServerClose => "server_close",
            End::Panic => "panic",
        }
    }
}

fn payload_bytes(p: fastwebsockets::Payload<'_>) -> Bytes {
    match p {
        fastwebsockets::Payload::Bytes(b) => b.freeze(),
        fastwebsockets::Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

async fn run_socket<R, W>(
    app: Arc<App>,
    read: R,
    write: W,
    info: ConnectInfo,
    tracker: &TaskTracker,
    mode: Mode,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &app.config;
    let outbox = Arc::new(Outbox::new(
        Limits {
            bulk_bytes: cfg.outbound_queue_bytes,
            control_bytes: cfg.control_queue_bytes,
            policy: cfg.slow_consumer,
        },
        app.metrics.clone(),
    ));
    let id = app.next_id();
    app.register(id, outbox.clone());
    app.metrics.ws_connections.increment(1.0);
    app.metrics.ws_connections_total.increment(1);
    tracing::debug!(socket = id, user = info.user_id.as_deref(), format = ?info.format, "socket open");

    let done = CancellationToken::new();
    let writer = tracker.spawn(writer::run(
        write,
        outbox.clone(),
        done.clone(),
        cfg.write_timeout,
        app.metrics.clone(),
    ));

    let mut session = match (mode, info.user_id.as_deref()) {
        (Mode::Raw, Some(user)) => Handler::Raw(RawSession::new(
            app.files.clone(),
            user.to_owned(),
            outbox.clone(),
        )),
        _ => Handler::Phoenix(Session::new(
            id,
            info.format,
            info.user_id.clone(),
            outbox.clone(),
            app.clone(),
        )),
    };
    // Teardown below must run whatever happens in the session, so a panic in
    // user channel code is caught here and counted.
    let end = AssertUnwindSafe(read_loop(
        &app,
        read,
        &outbox,
        &mut session,
        info.format,
        &done,
    ))
    .catch_unwind()
    .await
    .unwrap_or_else(|_| {
        app.metrics.crashes.increment(1);
        tracing::error!(socket = id, "session panicked; closing the socket");
        outbox.close(close_code::INTERNAL, "internal error");
        End::Panic
    });
    if let Handler::Phoenix(session) = &mut session {
        if AssertUnwindSafe(session.shutdown())
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(socket = id, "session shutdown panicked");
        }
    }
    app.unregister(id);
    done.cancel();
    let _ = writer.await;
    app.metrics.ws_connections.decrement(1.0);
    metrics::disconnect(end.label());
    tracing::debug!(socket = id, reason = end.label(), "socket closed");
}

/// Most bytes discarded after the server decided to close, before giving up
/// on a clean close handshake.
const DRAIN_MAX_BYTES: usize = 64 << 20;
/// How long the reader keeps discarding input after a server-side close.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(3);

async fn read_loop<R: AsyncRead + Unpin>(
    app: &App,
    read: R,
    outbox: &Arc<Outbox>,
    session: &mut Handler,
    format: Format,
    done: &CancellationToken,
) -> End {
    let base = tokio::time::Instant::now();
    let last_ms = Arc::new(AtomicU64::new(0));
    let mut read = Tracked {
        inner: read,
        base,
        last_ms: last_ms.clone(),
    };
    let end = read_messages(
        app, &mut read, base, &last_ms, outbox, session, format, done,
    )
    .await;
    if !matches!(end, End::ClientClose | End::Eof | End::ServerClose) {
        // We asked to close while the client may still be sending (the rest of
        // an oversized message, say). Closing a socket with unread input makes
        // the kernel send a reset that can overtake our close frame, so keep
        // reading and discarding until the client hangs up, the writer is
        // done, or a bound is hit.
        drain(&mut read, done).await;
    }
    end
}

async fn drain<R: AsyncRead + Unpin>(read: &mut R, done: &CancellationToken) {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let discard = async {
        while total < DRAIN_MAX_BYTES {
            match read.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    tokio::select! {
        _ = discard => {}
        _ = done.cancelled() => {}
        _ = tokio::time::sleep(DRAIN_FOR) => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_messages<R: AsyncRead + Unpin>(
    app: &App,
    read: &mut R,
    base: tokio::time::Instant,
    last_ms: &AtomicU64,
    outbox: &Arc<Outbox>,
    session: &mut Handler,
    format: Format,
    done: &CancellationToken,
) -> End {
    let cfg = &app.config;
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    // fastwebsockets refuses a frame when `len >= max`; ours is inclusive.
    ws.set_max_message_size(cfg.max_frame_bytes.saturating_add(1));
    // Pings come back to this loop (not answered inside read_frame), so each
    // one waits for control-lane room like any other input.
    ws.set_auto_pong(false);
    ws.set_auto_close(true);
    let mut reassembler = Reassembler::new(cfg.max_frame_bytes);
    let obligations = outbox.clone();
    let mut send_fn = move |frame: fastwebsockets::Frame<'_>| {
        let item = match frame.opcode {
            OpCode::Close => Some(Item::CloseEcho(payload_bytes(frame.payload))),
            _ => None,
        };
        if let Some(item) = item {
            obligations.push_control_item(item);
        }
        std::future::ready(Ok::<(), Infallible>(()))
    };
    let m = &app.metrics;
    loop {
        tokio::select! {
            _ = outbox.wait_control_room() => {}
            _ = done.cancelled() => return End::ServerClose,
        }
        let frame = tokio::select! {
            r = ws.read_frame(&mut send_fn) => r,
            _ = silence(base, last_ms, cfg.idle_timeout) => {
                m.idle_timeouts.increment(1);
                outbox.close(close_code::GOING_AWAY, "idle timeout");
                return End::Idle;
            }
            _ = done.cancelled() => return End::ServerClose,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return read_error(outbox, e),
        };
        let kind = match frame.opcode {
            OpCode::Close => return End::ClientClose,
            OpCode::Ping => {
                outbox.push_control_item(Item::Pong(payload_bytes(frame.payload)));
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Text => Kind::Text,
            OpCode::Binary => Kind::Binary,
            OpCode::Continuation => Kind::Continuation,
        };
        let msg = match reassembler.push(kind, frame.fin, payload_bytes(frame.payload)) {
            Ok(Some(msg)) => msg,
            Ok(None) => continue,
            Err(ReassembleError::TooBig) => {
                metrics::bad_input("too_big");
                outbox.close(close_code::TOO_BIG, "message too big");
                return End::TooBig;
            }
            Err(ReassembleError::InvalidUtf8) => {
                metrics::bad_input("invalid_utf8");
                outbox.close(close_code::INVALID_PAYLOAD, "invalid UTF-8");
                return End::BadInput;
            }
            Err(ReassembleError::BadSequence) => {
                metrics::bad_input("bad_fragment");
                outbox.close(close_code::PROTOCOL_ERROR, "bad fragment sequence");
                return End::Protocol;
            }
        };
        if msg.text {
            m.frames_in_text.increment(1);
            m.bytes_in_text.increment(msg.data.len() as u64);
        } else {
            m.frames_in_binary.increment(1);
            m.bytes_in_binary.increment(msg.data.len() as u64);
        }
        let session = match session {
            Handler::Phoenix(s) => s,
            Handler::Raw(raw) => {
                if !outbox.is_closing() {
                    raw.handle(msg.text, msg.data).await;
                }
                continue;
            }
        };
        match protocol::decode(format, msg.text, msg.data) {
            Ok(message) => {
                if outbox.is_closing() {
                    continue;
                }
                session.handle(message).await;
            }
            Err(e) => {
                metrics::bad_input(e.reason());
                tracing::info!(error = %e, "undecodable message; closing socket");
                let code = match e {
                    protocol::DecodeError::BinaryUnsupported => close_code::UNSUPPORTED_DATA,
                    _ => close_code::INVALID_PAYLOAD,
                };
                outbox.close(code, &e.to_string());
                return End::BadInput;
            }
        }
    }
}

fn read_error(outbox: &Outbox, e: WebSocketError) -> End {
    match e {
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => End::Eof,
        WebSocketError::FrameTooLarge => {
            metrics::bad_input("too_big");
            outbox.close(close_code::TOO_BIG, "message too big");
            End::TooBig
        }
        WebSocketError::InvalidUTF8 => {
            metrics::bad_input("invalid_utf8");
            outbox.close(close_code::INVALID_PAYLOAD, "invalid UTF-8");
            End::BadInput
        }
        other => {
            metrics::bad_input("ws_protocol");
            tracing::debug!(error = %other, "WebSocket protocol error");
            outbox.close(close_code::PROTOCOL_ERROR, "protocol error");
            End::Protocol
        }
    }
}
