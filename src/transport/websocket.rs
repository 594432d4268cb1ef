//! The Phoenix WebSocket transport: upgrade, then one reader task (this
//! module, which also runs the [`Session`]) and one writer task
//! ([`super::writer`]) per socket.
//!
//! # Contract
//! * The upgrade is refused (403, empty body) before the 101 when
//!   [`connect::authorize`] says so; nothing is spawned for a refused socket.
//! * Client frames are decoded by [`super::frames`] from a buffer the reader
//!   owns and releases whenever it empties: an idle socket holds no read
//!   buffer (it waits for readability first). Reading is cancel-safe.
//! * Before each read the reader waits for room in the control lane, so
//!   replies a client does not read cannot pile up ([`Outbox::wait_control_room`]).
//! * Every way a socket ends is counted once in `sluice_disconnects_total`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connect::{self, ConnectInfo};
use super::frames::{self, Op};
use super::input::{Buffered, Input, ReadFail, Source};
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
                    Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                        // Whatever hyper read past the request (usually nothing):
                        // a copy, not a view that would pin hyper's read buffer.
                        let early = BytesMut::from(&read_buf[..]);
                        drop(read_buf);
                        let (r, w) = io.into_inner().into_split();
                        run_socket(app, Input::new(r, early), w, info, &inner_tracker, mode).await;
                    }
                    Err(upgraded) => {
                        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                        let r = Input::new(Buffered(r), BytesMut::new());
                        run_socket(app, r, w, info, &inner_tracker, mode).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::from_parts(parts, Full::new(Bytes::new()))
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

async fn run_socket<R, W>(
    app: Arc<App>,
    read: Input<R>,
    write: W,
    info: ConnectInfo,
    tracker: &TaskTracker,
    mode: Mode,
) where
    R: Source,
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
        if AssertUnwindSafe(Box::pin(session.shutdown()))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(socket = id, "session shutdown panicked");
        }
    }
    // However the reader saw it end, a socket the idle sweep closed counts as idle.
    let end = match end {
        End::Panic => End::Panic,
        _ if outbox.closed_for_idle() => End::Idle,
        other => other,
    };
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

async fn read_loop<R: Source>(
    app: &App,
    mut input: Input<R>,
    outbox: &Arc<Outbox>,
    session: &mut Handler,
    format: Format,
    done: &CancellationToken,
) -> End {
    let end = read_messages(app, &mut input, outbox, session, format, done).await;
    if !matches!(end, End::ClientClose | End::Eof | End::ServerClose) {
        // We asked to close while the client may still be sending (the rest of
        // an oversized message, say). Closing a socket with unread input makes
        // the kernel send a reset that can overtake our close frame, so keep
        // reading and discarding until the client hangs up, the writer is
        // done, or a bound is hit.
        input.discard();
        Box::pin(drain(&mut input.src, done)).await;
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

async fn read_messages<R: Source>(
    app: &App,
    input: &mut Input<R>,
    outbox: &Arc<Outbox>,
    session: &mut Handler,
    format: Format,
    done: &CancellationToken,
) -> End {
    let cfg = &app.config;
    let mut reassembler = Reassembler::new(cfg.max_frame_bytes);
    let m = &app.metrics;
    loop {
        // `biased`: the branch that is usually ready is polled first, so the
        // cancellation token's waiter list is only touched when we do wait;
        // this check keeps a client that never pauses from hiding the end.
        if done.is_cancelled() {
            return End::ServerClose;
        }
        tokio::select! {
            biased;
            _ = outbox.wait_control_room() => {}
            _ = done.cancelled() => return End::ServerClose,
        }
        let frame = tokio::select! {
            biased;
            r = input.next(cfg.max_frame_bytes, outbox) => r,
            _ = done.cancelled() => return End::ServerClose,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return read_error(outbox, e),
        };
        let kind = match frame.op {
            Op::Close => {
                if let Err(e) = frames::check_close(&frame.payload) {
                    return frame_error(outbox, e);
                }
                // Echo the client's close (code and reason) and stop reading.
                outbox.push_control_item(Item::CloseEcho(frame.payload));
                return End::ClientClose;
            }
            Op::Ping => {
                outbox.push_control_item(Item::Pong(frame.payload));
                continue;
            }
            Op::Pong => continue,
            Op::Text => Kind::Text,
            Op::Binary => Kind::Binary,
            Op::Continuation => Kind::Continuation,
        };
        let msg = match reassembler.push(kind, frame.fin, frame.payload) {
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
                    // Boxed: an idle socket's task keeps only the await
                    // point it is parked at, not the largest handler state.
                    Box::pin(raw.handle(msg.text, msg.data)).await;
                }
                continue;
            }
        };
        match protocol::decode(format, msg.text, msg.data) {
            Ok(message) => {
                if outbox.is_closing() {
                    continue;
                }
                Box::pin(session.handle(message)).await;
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

fn read_error(outbox: &Outbox, e: ReadFail) -> End {
    match e {
        ReadFail::Eof => End::Eof,
        ReadFail::Frame(e) => frame_error(outbox, e),
    }
}

fn frame_error(outbox: &Outbox, e: frames::FrameError) -> End {
    use frames::FrameError;
    match e {
        FrameError::TooBig(_) => {
            metrics::bad_input("too_big");
            outbox.close(close_code::TOO_BIG, "message too big");
            End::TooBig
        }
        FrameError::CloseReasonUtf8 => {
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
