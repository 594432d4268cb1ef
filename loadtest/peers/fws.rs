//! sluice-peer-fws: the minimal WebSocket server on fastwebsockets, the floor
//! for what Sluice's protocol layer costs on top of the same library.
//!
//! It speaks the peers' raw protocol (see `loadtest/peers/README.md`):
//!
//! * `GET /echo` (WebSocket): every text or binary message comes back as is;
//! * `GET /sub` (WebSocket): receives whatever `/pub` sockets publish;
//! * `GET /pub` (WebSocket): every message is published to all `/sub`
//!   sockets (not back to the publisher), same opcode;
//! * `GET /health`: 200 `ok`; any other path: 404.
//!
//! Usage: `sluice-peer-fws [PORT]` (else `$PORT`, else 4703); it listens on
//! 127.0.0.1 and exits with 0 on SIGTERM or SIGINT.
//!
//! It is written the way the library's own examples are: a hyper 1 HTTP/1
//! server, `fastwebsockets::upgrade::upgrade`, one task per connection, the
//! library's defaults (auto close, auto pong, vectored writes of payloads
//! over 1 KiB, 64 MiB max message size, an 8 KiB read buffer per socket),
//! `TCP_NODELAY` (as Bun and Node's http server set it), and tokio's default multi-thread runtime, whose worker count follows the
//! CPUs the process may run on (one under `taskset -c 0`).
//!
//! Fan-out is a `tokio::sync::broadcast` channel of capacity 1024: each
//! `/sub` socket has a receiver and writes the messages it receives one frame
//! at a time (fastwebsockets has no batched write: each frame is one write
//! or writev call). A subscriber that falls more than 1024 messages behind
//! skips the ones it missed (`RecvError::Lagged`) and goes on with the
//! oldest message still queued; nothing is logged per message or per socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload};
use fastwebsockets::{WebSocketError, WebSocketWrite};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Mutex};

/// The port used when neither the first argument nor `$PORT` gives one.
const DEFAULT_PORT: u16 = 4703;

/// How many messages the broadcast channel keeps for slow subscribers.
const CAPACITY: usize = 1024;

/// One published message: its opcode (text or binary) and payload.
type Message = (OpCode, Bytes);

/// The upgraded connection's byte stream.
type Io = TokioIo<hyper::upgrade::Upgraded>;

/// The port to listen on: `argv[1]`, else `$PORT`, else [`DEFAULT_PORT`].
fn port() -> Result<u16, String> {
    let arg = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok());
    match arg {
        None => Ok(DEFAULT_PORT),
        Some(s) => s.parse().map_err(|_| format!("bad port {s:?}")),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = port().map_err(std::io::Error::other)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await?;
    let (hub, _) = broadcast::channel::<Message>(CAPACITY);
    eprintln!("sluice-peer-fws listening on {addr}");

    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            res = &mut stop => return res,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: keep serving the
                // others, without spinning on the error.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, hub.clone()));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            // A connection that fails (reset, bad request) is just dropped.
            let _ = conn.await;
        });
    }
}

/// A plain response with a text body.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res
}

/// Routes one HTTP request: health, 404, or a WebSocket upgrade.
async fn route(
    mut req: Request<Incoming>,
    hub: broadcast::Sender<Message>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    if !matches!(path.as_str(), "/echo" | "/sub" | "/pub") {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    if !upgrade::is_upgrade_request(&req) {
        return Ok(text(StatusCode::UPGRADE_REQUIRED, "websocket only\n"));
    }
    let (response, fut) = match upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "bad upgrade\n")),
    };
    // Subscribe before the handshake response goes out: once a client sees
    // its `/sub` socket open, it receives everything published after that.
    let events = (path == "/sub").then(|| hub.subscribe());
    tokio::spawn(async move {
        let Ok(ws) = fut.await else { return };
        // Errors end the socket; a peer that goes away is the normal case.
        let _ = match (path.as_str(), events) {
            ("/pub", _) => publish(FragmentCollector::new(ws), hub).await,
            (_, Some(events)) => subscribe(ws, events).await,
            _ => echo(FragmentCollector::new(ws)).await,
        };
    });
    Ok(response.map(|_| Full::default()))
}

/// `/echo`: writes every data message back with its opcode.
async fn echo(mut ws: FragmentCollector<Io>) -> Result<(), WebSocketError> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// `/pub`: publishes every data message; it is never echoed to this socket.
async fn publish(
    mut ws: FragmentCollector<Io>,
    hub: broadcast::Sender<Message>,
) -> Result<(), WebSocketError> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => {
                let payload = match frame.payload {
                    Payload::Bytes(b) => b.freeze(),
                    other => Bytes::copy_from_slice(&other),
                };
                // Err only means that nobody is subscribed right now.
                let _ = hub.send((frame.opcode, payload));
            }
            _ => {}
        }
    }
}

/// `/sub`: writes every published message to this socket, while reading
/// from it only to answer pings and notice the close.
///
/// The socket is split so both run at once in this task; the write half is
/// shared behind a mutex with the reader's pong and close replies.
async fn subscribe(
    ws: fastwebsockets::WebSocket<Io>,
    mut events: broadcast::Receiver<Message>,
) -> Result<(), WebSocketError> {
    let (rx, tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let tx: Arc<Mutex<WebSocketWrite<_>>> = Arc::new(Mutex::new(tx));

    let reader = {
        let tx = Arc::clone(&tx);
        async move {
            let mut send = |frame: Frame<'static>| {
                let tx = Arc::clone(&tx);
                async move { tx.lock().await.write_frame(frame).await }
            };
            loop {
                let frame = rx.read_frame(&mut send).await?;
                if frame.opcode == OpCode::Close {
                    return Ok::<(), WebSocketError>(());
                }
            }
        }
    };
    let writer = async {
        loop {
            let (opcode, payload) = match events.recv().await {
                Ok(message) => message,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
            tx.lock().await.write_frame(frame).await?;
        }
    };
    tokio::select! {
        res = reader => res,
        res = writer => res,
    }
}
