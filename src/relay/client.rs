//! The upstream WebSocket client: one outbound `ws://` or `wss://`
//! connection to a price feed, built on fastwebsockets' frame codec, hyper's
//! HTTP/1.1 client for the upgrade, and rustls ([`super::tls`]).
//!
//! The pool owns the reconnect policy, the ping schedule and the silence
//! detector; this module owns one connection and tells the pool what it saw.
//!
//! # Contract
//! * [`Connector::new`] validates everything that can be validated before
//!   the first connection (the extra CA file); [`UpstreamUrl::parse`] checks a
//!   URL once, at the edge. Connecting reads no files.
//! * [`Connector::connect`] is bounded by `connect_timeout` as a whole (DNS,
//!   TCP, TLS, HTTP upgrade) and spawns nothing until it succeeds; cancelling
//!   it drops the half-open socket. The response must be `101` with
//!   `Upgrade: websocket`, `Connection: upgrade` and the right
//!   `Sec-WebSocket-Accept`, or it fails with [`ClientError::Handshake`].
//! * A connected [`Upstream`] runs one reader task and one writer task. They
//!   belong to it: dropping the `Upstream` aborts both and so closes the
//!   socket; nothing outlives it. fastwebsockets' `read_frame` is not
//!   cancel-safe, so only the reader task calls it and it is never raced.
//!   Everything the owner calls is therefore cancel-safe
//!   ([`Upstream::next_text`], [`Upstream::silence`]) or synchronous
//!   ([`Upstream::ping`], [`Upstream::last_seen`]).
//! * Every frame the upstream sends (data, ping, pong, close) moves
//!   [`Upstream::last_seen`]. Pings are answered by the writer task; when it
//!   is still busy with an earlier frame the pong is skipped (RFC 6455 lets a
//!   peer answer only the latest ping).
//! * Backpressure: at most [`EVENT_QUEUE`] messages wait for the owner. While
//!   the owner does not call `next_text`, the reader stops reading (and so
//!   `last_seen` stops moving: a consumer stalled for longer than the silence
//!   timeout looks like a silent upstream).
//! * A message is bounded by `max_message_bytes` across all its fragments.
//!   A larger one ends the connection with close 1009 and
//!   [`ClientError::TooBig`]; invalid UTF-8 (1007) and bad fragment
//!   sequences (1002) end it with [`ClientError::Protocol`]. Binary messages
//!   are skipped (the feeds are text) and logged at debug.
//! * The upstream's close frame is echoed and reported as `Ok(None)`; after
//!   `Ok(None)` or an error, `next_text` returns [`ClientError::Closed`].
//! * Frames from the upstream are not checked for a mask (fastwebsockets does
//!   not expose it); a masked server frame arrives scrambled and usually fails
//!   as invalid UTF-8.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead, WebSocketWrite};
use http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
    USER_AGENT,
};
use http::uri::{Authority, PathAndQuery};
use http::StatusCode;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::tls::{self, TlsConfigError};
use crate::transport::reassemble::{Kind, ReassembleError, Reassembler};

/// Most complete messages the reader holds for the owner before it stops
/// reading the socket.
pub const EVENT_QUEUE: usize = 16;
/// Most frames (pings, pongs, a close) waiting for the writer task.
const COMMAND_QUEUE: usize = 4;
/// Largest ping payload RFC 6455 allows.
pub const MAX_PING_PAYLOAD: usize = 125;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const USER_AGENT_VALUE: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

// === errors ===

/// Why an upstream connection could not be made or ended. Every variant is
/// a failure on the upstream side (or of its configuration).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a `ws://` or `wss://` URL this client can use.
    #[error("bad upstream URL: {0}")]
    BadUrl(&'static str),
    /// The TLS settings could not be built (extra CA file).
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// Resolving the host or opening the TCP connection failed.
    #[error("upstream TCP connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The TLS handshake failed (unknown issuer, name mismatch, reset...).
    #[error("upstream TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The HTTP upgrade to WebSocket failed.
    #[error("upstream WebSocket handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// Connecting took longer than `connect_timeout`.
    #[error("upstream connect timed out after {0:?}")]
    Timeout(Duration),
    /// The upstream broke the WebSocket protocol.
    #[error("upstream broke the WebSocket protocol: {0}")]
    Protocol(#[source] WebSocketError),
    /// The upstream sent a message over `max_message_bytes`.
    #[error("upstream message larger than {max} bytes")]
    TooBig {
        /// The configured bound.
        max: usize,
    },
    /// Reading or writing failed after the upgrade (reset, EOF without a
    /// close frame).
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    /// The connection has already ended (reported once before as `Ok(None)`
    /// or an error).
    #[error("upstream connection is closed")]
    Closed,
    /// [`Upstream::ping`] was given more than [`MAX_PING_PAYLOAD`] bytes.
    #[error("ping payload of {0} bytes (at most {MAX_PING_PAYLOAD})")]
    PingTooLarge(usize),
}

impl ClientError {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::BadUrl(_) => "bad_url",
            ClientError::Config(_) => "config",
            ClientError::Connect(_) => "connect",
            ClientError::Tls(_) => "tls",
            ClientError::Handshake(_) => "handshake",
            ClientError::Timeout(_) => "timeout",
            ClientError::Protocol(_) => "protocol",
            ClientError::TooBig { .. } => "too_big",
            ClientError::Io(_) => "io",
            ClientError::Closed => "closed",
            ClientError::PingTooLarge(_) => "ping_too_large",
        }
    }

    fn from_ws(e: WebSocketError, max: usize) -> ClientError {
        match e {
            WebSocketError::IoError(e) => ClientError::Io(e),
            WebSocketError::UnexpectedEOF => ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection ended without a close frame",
            )),
            WebSocketError::FrameTooLarge => ClientError::TooBig { max },
            other => ClientError::Protocol(other),
        }
    }
}

/// How the HTTP upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The upstream answered with another status than 101.
    #[error("upstream answered {0} instead of 101 Switching Protocols")]
    Status(StatusCode),
    /// The 101 lacks a header RFC 6455 requires, or has a wrong value.
    #[error("upstream's 101 response lacks {0}")]
    Header(&'static str),
    /// The request could not be built.
    #[error("building the request: {0}")]
    Request(#[source] http::Error),
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

// === impl UpstreamUrl ===

/// A checked `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `Some` for `wss://`: the name the certificate must match (SNI for DNS
    /// names; none is sent for IP literals).
    server_name: Option<ServerName<'static>>,
    /// Host to connect to, without IPv6 brackets.
    host: String,
    port: u16,
    /// `Host` header value: the authority as written.
    authority: Authority,
    path_and_query: PathAndQuery,
}

impl UpstreamUrl {
    /// Parse `ws://host[:port][/path][?query]` or the `wss://` form. The port
    /// defaults to 80 / 443, the path to `/`. User info and fragments are
    /// refused.
    pub fn parse(url: &str) -> Result<UpstreamUrl, ClientError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or(ClientError::BadUrl("missing ws:// or wss://"))?;
        let tls = if scheme.eq_ignore_ascii_case("ws") {
            false
        } else if scheme.eq_ignore_ascii_case("wss") {
            true
        } else {
            return Err(ClientError::BadUrl("scheme must be ws or wss"));
        };
        if rest.contains('#') {
            return Err(ClientError::BadUrl("fragments are not allowed"));
        }
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(ClientError::BadUrl("missing host"));
        }
        if authority.contains('@') {
            return Err(ClientError::BadUrl("user info is not allowed"));
        }
        let authority =
            Authority::from_str(authority).map_err(|_| ClientError::BadUrl("bad host or port"))?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(ClientError::BadUrl("missing host"));
        }
        // `Authority::port` hides a port that does not fit in u16, so read
        // what follows the host (there is no user info: refused above).
        let port = match authority.as_str().strip_prefix(authority.host()) {
            Some("") if tls => 443,
            Some("") => 80,
            Some(port) => match port.strip_prefix(':') {
                Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                    match digits.parse::<u16>() {
                        Ok(p) if p != 0 => p,
                        _ => return Err(ClientError::BadUrl("bad port")),
                    }
                }
                _ => return Err(ClientError::BadUrl("bad port")),
            },
            None => return Err(ClientError::BadUrl("bad host or port")),
        };
        let path_and_query = if path_and_query.starts_with('?') {
            PathAndQuery::try_from(format!("/{path_and_query}"))
        } else {
            PathAndQuery::try_from(path_and_query)
        }
        .map_err(|_| ClientError::BadUrl("bad path or query"))?;
        let server_name = match tls {
            false => None,
            true => Some(
                ServerName::try_from(host.to_owned())
                    .map_err(|_| ClientError::BadUrl("host is not a valid TLS server name"))?,
            ),
        };
        Ok(UpstreamUrl {
            server_name,
            host: host.to_owned(),
            port,
            authority,
            path_and_query,
        })
    }

    /// Whether this is a `wss://` URL.
    pub fn is_tls(&self) -> bool {
        self.server_name.is_some()
    }

    /// The host, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (explicit or the scheme's default).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: path and query.
    pub fn path_and_query(&self) -> &str {
        self.path_and_query.as_str()
    }
}

impl FromStr for UpstreamUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<UpstreamUrl, ClientError> {
        UpstreamUrl::parse(s)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority, self.path_and_query)
    }
}

// === impl Connector ===

/// Client settings (from the relay's configuration).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// A PEM file of CA certificates trusted besides Mozilla's roots.
    pub extra_ca: Option<PathBuf>,
    /// Bound on DNS + TCP + TLS + HTTP upgrade.
    pub connect_timeout: Duration,
    /// How long [`Upstream::close`] waits for the upstream's close echo.
    pub close_timeout: Duration,
    /// Largest message accepted, summed over its fragments.
    pub max_message_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            extra_ca: None,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_message_bytes: 1 << 20,
        }
    }
}

/// Opens upstream connections with one validated set of settings. Cheap to
/// clone (the TLS settings are shared).
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    close_timeout: Duration,
    max_message_bytes: usize,
}

impl Connector {
    /// Build the TLS settings (reads `extra_ca` once). Call it at startup:
    /// it does blocking file I/O.
    pub fn new(cfg: &ClientConfig) -> Result<Connector, ClientError> {
        Ok(Connector {
            tls: tls::client_config(cfg.extra_ca.as_deref())?,
            connect_timeout: cfg.connect_timeout,
            close_timeout: cfg.close_timeout,
            max_message_bytes: cfg.max_message_bytes,
        })
    }

    /// Connect and upgrade; see the module contract. Cancel-safe: dropping
    /// the future drops the half-open connection and spawns nothing.
    pub async fn connect(&self, url: &UpstreamUrl) -> Result<Upstream, ClientError> {
        let started = Instant::now();
        let (upgraded, peer) = tokio::time::timeout(self.connect_timeout, self.open(url))
            .await
            .map_err(|_| ClientError::Timeout(self.connect_timeout))??;
        tracing::debug!(
            url = %url,
            %peer,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "upstream connected"
        );
        Ok(Upstream::start(
            upgraded,
            peer,
            self.max_message_bytes,
            self.close_timeout,
        ))
    }

    async fn open(&self, url: &UpstreamUrl) -> Result<(Upgraded, SocketAddr), ClientError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(ClientError::Connect)?;
        tcp.set_nodelay(true).map_err(ClientError::Connect)?;
        let peer = tcp.peer_addr().map_err(ClientError::Connect)?;
        let upgraded = match &url.server_name {
            None => upgrade(tcp, url).await?,
            Some(name) => {
                let tls = TlsConnector::from(self.tls.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?;
                upgrade(tls, url).await?
            }
        };
        Ok((upgraded, peer))
    }
}

/// The HTTP/1.1 upgrade over `stream`. The connection future is driven here
/// (nothing is spawned), so dropping this future drops the socket.
async fn upgrade<S>(stream: S, url: &UpstreamUrl) -> Result<Upgraded, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HandshakeError::Http)?;
    let key = fastwebsockets::handshake::generate_key();
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(url.path_and_query.clone())
        .header(HOST, url.authority.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(SEC_WEBSOCKET_KEY, key.as_str())
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())
        .map_err(HandshakeError::Request)?;
    // The connection future must be polled for the exchange to progress; it
    // finishes once it has handed the socket to the upgrade (which may be
    // before `send_request` has returned the response).
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut send = std::pin::pin!(sender.send_request(request));
    let mut conn_done = false;
    let mut response = tokio::select! {
        r = &mut send => r.map_err(HandshakeError::Http)?,
        r = &mut conn => {
            r.map_err(HandshakeError::Http)?;
            conn_done = true;
            send.await.map_err(HandshakeError::Http)?
        }
    };
    check_response(&response, &key)?;
    let upgraded = if conn_done {
        hyper::upgrade::on(&mut response).await
    } else {
        let (upgraded, driven) = tokio::join!(hyper::upgrade::on(&mut response), conn);
        driven.map_err(HandshakeError::Http)?;
        upgraded
    };
    Ok(upgraded.map_err(HandshakeError::Http)?)
}

/// RFC 6455 §4.1: the client must fail the connection unless all of these hold.
fn check_response<B>(response: &http::Response<B>, key: &str) -> Result<(), HandshakeError> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HandshakeError::Status(response.status()));
    }
    let headers = response.headers();
    let upgrade_ok = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !upgrade_ok {
        return Err(HandshakeError::Header("Upgrade: websocket"));
    }
    let connection_ok = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_ok {
        return Err(HandshakeError::Header("Connection: upgrade"));
    }
    let accept_ok = headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == accept_for(key).as_bytes());
    if !accept_ok {
        return Err(HandshakeError::Header("the matching Sec-WebSocket-Accept"));
    }
    Ok(())
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
fn accept_for(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

// === impl Upstream ===

type Io = TokioIo<Upgraded>;

/// What the reader (or writer) task tells the owner.
#[derive(Debug)]
enum Event {
    Text(Bytes),
    /// The upstream sent a close frame (with this code, if any); it was echoed.
    Closed(Option<u16>),
    Failed(ClientError),
}

/// Frames for the writer task.
#[derive(Debug)]
enum Command {
    Ping(Bytes),
    Pong(Bytes),
    /// Close with this code and reason; the writer stops afterwards.
    Close(u16, &'static str),
    /// Echo the upstream's close payload; the writer stops afterwards.
    CloseEcho(Bytes),
}

/// When the last frame arrived, readable from any task.
#[derive(Debug)]
struct Seen {
    base: Instant,
    /// Nanoseconds after `base`.
    nanos: AtomicU64,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(n, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// One connected upstream WebSocket. Dropping it aborts its tasks and
/// closes the socket at once; [`Upstream::close`] closes politely.
pub struct Upstream {
    /// From the reader task (messages, the end) and the writer task (its failure).
    events: mpsc::Receiver<Event>,
    /// To the writer task; the reader task holds a clone for pongs.
    commands: mpsc::Sender<Command>,
    seen: Arc<Seen>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    peer: SocketAddr,
    close_timeout: Duration,
    /// `next_text` has reported the end (`Ok(None)` or an error).
    ended: bool,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("peer", &self.peer)
            .field("last_seen", &self.seen.last())
            .finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Upstream {
    /// Parse `url`, build a [`Connector`] from `cfg` and connect: a
    /// convenience for one-off connections (it reads `cfg.extra_ca` each
    /// time; the pool should keep one `Connector`).
    pub async fn connect(url: &str, cfg: &ClientConfig) -> Result<Upstream, ClientError> {
        let url = UpstreamUrl::parse(url)?;
        Connector::new(cfg)?.connect(&url).await
    }

    fn start(
        upgraded: Upgraded,
        peer: SocketAddr,
        max: usize,
        close_timeout: Duration,
    ) -> Upstream {
        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
        let (mut read, write) = fastwebsockets::after_handshake_split(r, w, Role::Client);
        // Pings and closes come back to the reader loop, which hands the
        // answers to the writer task.
        read.set_auto_pong(false);
        read.set_auto_close(false);
        // fastwebsockets refuses a frame when `len >= max`; ours is inclusive.
        read.set_max_message_size(max.saturating_add(1));
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let seen = Arc::new(Seen::new());
        let reader = tokio::spawn(read_loop(
            read,
            events_tx.clone(),
            commands.clone(),
            seen.clone(),
            max,
            peer,
        ));
        let writer = tokio::spawn(write_loop(write, commands_rx, events_tx, max));
        Upstream {
            events,
            commands,
            seen,
            reader,
            writer,
            peer,
            close_timeout,
            ended: false,
        }
    }

    /// The next complete text message; `Ok(None)` once the upstream closed
    /// cleanly; after that (or an error) [`ClientError::Closed`].
    ///
    /// Cancel-safe: the socket is read by the reader task, so dropping this
    /// future loses nothing. Use it freely in `select!`.
    pub async fn next_text(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.ended {
            return Err(ClientError::Closed);
        }
        let event = self.events.recv().await;
        self.ended = !matches!(event, Some(Event::Text(_)));
        match event {
            Some(Event::Text(data)) => Ok(Some(data)),
            Some(Event::Closed(code)) => {
                tracing::debug!(peer = %self.peer, ?code, "upstream closed");
                Ok(None)
            }
            Some(Event::Failed(e)) => Err(e),
            None => Err(ClientError::Closed),
        }
    }

    /// Queue a ping (at most [`MAX_PING_PAYLOAD`] bytes). The pong, like any
    /// frame, moves [`Upstream::last_seen`]. If frames are still waiting for
    /// the writer (the upstream is not reading), the ping is skipped: the
    /// silence detector will notice. Fails with [`ClientError::Closed`] once
    /// the connection has ended.
    pub fn ping(&self, payload: &[u8]) -> Result<(), ClientError> {
        if payload.len() > MAX_PING_PAYLOAD {
            return Err(ClientError::PingTooLarge(payload.len()));
        }
        match self
            .commands
            .try_send(Command::Ping(Bytes::copy_from_slice(payload)))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(peer = %self.peer, "upstream writer busy; ping skipped");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientError::Closed),
        }
    }

    /// When the upstream last sent a frame of any kind (data, ping, pong,
    /// close); the moment the connection was made if it sent none yet. On
    /// tokio's clock, so paused-time tests see it move with the clock.
    pub fn last_seen(&self) -> Instant {
        self.seen.last()
    }

    /// Resolves once the upstream has sent nothing for `timeout`. Cancel-safe.
    pub async fn silence(&self, timeout: Duration) {
        loop {
            let deadline = self.seen.last() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// The upstream's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Send close 1000 and wait (at most `close_timeout`) for the upstream
    /// to answer, discarding messages that arrive meanwhile; then drop the
    /// connection. Never fails: a broken connection is simply dropped.
    pub async fn close(mut self) {
        let timeout = self.close_timeout;
        let peer = self.peer;
        let polite = async {
            if self
                .commands
                .send(Command::Close(close_code::NORMAL, ""))
                .await
                .is_err()
            {
                return;
            }
            while let Some(event) = self.events.recv().await {
                if !matches!(event, Event::Text(_)) {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, polite).await.is_err() {
            tracing::debug!(%peer, "upstream did not answer our close in time");
        }
    }
}

// === reader and writer tasks ===

fn payload_bytes(p: Payload<'_>) -> Bytes {
    match p {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

async fn read_loop(
    mut ws: WebSocketRead<ReadHalf<Io>>,
    events: mpsc::Sender<Event>,
    commands: mpsc::Sender<Command>,
    seen: Arc<Seen>,
    max: usize,
    peer: SocketAddr,
) {
    let end = read_messages(&mut ws, &events, &commands, &seen, max).await;
    match &end {
        Some(Event::Failed(e)) => {
            tracing::debug!(%peer, reason = e.label(), error = %e, "upstream read ended")
        }
        Some(_) => tracing::trace!(%peer, "upstream read ended: close frame"),
        None => tracing::trace!(%peer, "upstream read ended: owner gone"),
    }
    if let Some(end) = end {
        let _ = events.send(end).await;
    }
}

/// Read until the connection ends; returns the final event (`None` if the
/// owner is gone).
async fn read_messages(
    ws: &mut WebSocketRead<ReadHalf<Io>>,
    events: &mpsc::Sender<Event>,
    commands: &mpsc::Sender<Command>,
    seen: &Seen,
    max: usize,
) -> Option<Event> {
    // With auto pong and auto close off, fastwebsockets owes the peer nothing.
    let mut nothing_owed =
        |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    let mut reassembler = Reassembler::new(max);
    // Ends the connection: tell the upstream why (best effort), report `e`.
    let fail = |code: u16, reason: &'static str, e: ClientError| {
        let _ = commands.try_send(Command::Close(code, reason));
        Some(Event::Failed(e))
    };
    loop {
        let frame = match ws.read_frame(&mut nothing_owed).await {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => {
                return fail(
                    close_code::TOO_BIG,
                    "message too big",
                    ClientError::TooBig { max },
                )
            }
            Err(e @ (WebSocketError::IoError(_) | WebSocketError::UnexpectedEOF)) => {
                return Some(Event::Failed(ClientError::from_ws(e, max)))
            }
            Err(e) => {
                return fail(
                    close_code::PROTOCOL_ERROR,
                    "protocol error",
                    ClientError::Protocol(e),
                )
            }
        };
        seen.touch();
        let kind = match frame.opcode {
            OpCode::Ping => {
                // Skipped when the writer is busy: only the latest ping needs an answer.
                let _ = commands.try_send(Command::Pong(payload_bytes(frame.payload)));
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Close => {
                let payload = payload_bytes(frame.payload);
                if payload.len() == 1 {
                    return fail(
                        close_code::PROTOCOL_ERROR,
                        "bad close frame",
                        ClientError::Protocol(WebSocketError::InvalidCloseFrame),
                    );
                }
                let code = match payload.get(..2) {
                    Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
                    _ => None,
                };
                // Echo the status code only (RFC 6455 §5.5.1).
                let _ =
                    commands.try_send(Command::CloseEcho(payload.slice(..payload.len().min(2))));
                return Some(Event::Closed(code));
            }
            OpCode::Text => Kind::Text,
            OpCode::Binary => Kind::Binary,
            OpCode::Continuation => Kind::Continuation,
        };
        let message = match reassembler.push(kind, frame.fin, payload_bytes(frame.payload)) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(ReassembleError::TooBig) => {
                return fail(
                    close_code::TOO_BIG,
                    "message too big",
                    ClientError::TooBig { max },
                )
            }
            Err(ReassembleError::InvalidUtf8) => {
                return fail(
                    close_code::INVALID_PAYLOAD,
                    "invalid UTF-8",
                    ClientError::Protocol(WebSocketError::InvalidUTF8),
                )
            }
            Err(ReassembleError::BadSequence) => {
                return fail(
                    close_code::PROTOCOL_ERROR,
                    "bad fragment sequence",
                    ClientError::Protocol(WebSocketError::InvalidFragment),
                )
            }
        };
        if !message.text {
            tracing::debug!(
                bytes = message.data.len(),
                "upstream binary message skipped"
            );
            continue;
        }
        if events.send(Event::Text(message.data)).await.is_err() {
            return None;
        }
    }
}

async fn write_loop(
    mut ws: WebSocketWrite<WriteHalf<Io>>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    max: usize,
) {
    while let Some(command) = commands.recv().await {
        let owned = |b: Bytes| Payload::Bytes(BytesMut::from(&b[..]));
        let (frame, last) = match command {
            Command::Ping(b) => (Frame::new(true, OpCode::Ping, None, owned(b)), false),
            Command::Pong(b) => (Frame::pong(owned(b)), false),
            Command::Close(code, reason) => (Frame::close(code, reason.as_bytes()), true),
            Command::CloseEcho(b) => (Frame::close_raw(owned(b)), true),
        };
        let written = match ws.write_frame(frame).await {
            Ok(()) => ws.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let e = ClientError::from_ws(e, max);
            tracing::debug!(reason = e.label(), error = %e, "upstream write failed");
            let _ = events.send(Event::Failed(e)).await;
            return;
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! All loopback: tokio-tungstenite servers (plain and over tokio-rustls
    //! with an rcgen CA), and raw TCP servers for broken handshakes.

    use std::sync::atomic::AtomicUsize;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{
        CloseCode, Data, OpCode as TOpCode,
    };
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn cfg() -> ClientConfig {
        ClientConfig {
            extra_ca: None,
            connect_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_millis(500),
            max_message_bytes: 64,
        }
    }

    async fn next(up: &mut Upstream) -> Result<Option<Bytes>, ClientError> {
        tokio::time::timeout(WAIT, up.next_text()).await.unwrap()
    }

    /// A one-connection tungstenite server on loopback; `handler` gets the
    /// socket and the request target.
    // tungstenite's callback type returns `Result<Response, ErrorResponse>`.
    #[allow(clippy::result_large_err)]
    async fn ws_server<F, Fut>(handler: F) -> (SocketAddr, JoinHandle<()>)
    where
        F: FnOnce(WebSocketStream<TcpStream>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut target = String::new();
            let ws = tokio_tungstenite::accept_hdr_async(
                tcp,
                |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    target = req.uri().to_string();
                    Ok(resp)
                },
            )
            .await
            .unwrap();
            handler(ws, target).await;
        });
        (addr, task)
    }

    /// A raw TCP server that reads the request head and answers `response`.
    async fn raw_server(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tcp.write_all(response.as_bytes()).await;
            // Hold the socket until the client gives up.
            let _ = tcp.read(&mut buf).await;
        });
        addr
    }

    // --- URLs ---

    #[test]
    fn urls_parse_with_defaults() {
        let u = UpstreamUrl::parse("wss://ws.coincap.io/prices?assets=bitcoin,ethereum").unwrap();
        assert!(u.is_tls());
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("ws.coincap.io", 443, "/prices?assets=bitcoin,ethereum")
        );
        assert_eq!(
            u.to_string(),
            "wss://ws.coincap.io/prices?assets=bitcoin,ethereum"
        );

        let u = UpstreamUrl::parse("WS://127.0.0.1:9000").unwrap();
        assert!(!u.is_tls());
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("127.0.0.1", 9000, "/")
        );

        let u = UpstreamUrl::parse("ws://example.com?x=1").unwrap();
        assert_eq!((u.port(), u.path_and_query()), (80, "/?x=1"));

        let u = UpstreamUrl::parse("wss://[::1]:8443/feed").unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 8443));
        assert_eq!(u.to_string(), "wss://[::1]:8443/feed");
        assert_eq!(u, "wss://[::1]:8443/feed".parse().unwrap());
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "ws.coincap.io/prices",
            "http://example.com/",
            "https://example.com/",
            "ws://",
            "ws:///path",
            "ws://:80/",
            "ws://host:/",
            "ws://host:0/",
            "ws://host:65536/",
            "ws://host:+80/",
            "ws://host:99999999999999999999/",
            "ws://host:port/",
            "ws://user:pw@host/",
            "ws://host/path#frag",
            "ws://host/pa th",
            "wss://bad_name!/",
            "ws://[::1/",
        ] {
            match UpstreamUrl::parse(url) {
                Err(ClientError::BadUrl(_)) => {}
                other => panic!("{url:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    // --- plain ws:// ---

    #[tokio::test]
    async fn receives_texts_answers_pings_and_sees_pongs_then_clean_close() {
        let (saw_pong_tx, saw_pong) = oneshot::channel::<()>();
        let (go_close, go_close_rx) = oneshot::channel::<()>();
        let (addr, server) = ws_server(move |mut ws, target| async move {
            assert_eq!(target, "/prices?assets=bitcoin");
            ws.send(Message::Text(r#"{"bitcoin":"91234.12"}"#.into()))
                .await
                .unwrap();
            // A fragmented message, and a binary one the client skips.
            ws.send(Message::Frame(TFrame::message(
                br#"{"bitcoin":"#.to_vec(),
                TOpCode::Data(Data::Text),
                false,
            )))
            .await
            .unwrap();
            ws.send(Message::Frame(TFrame::message(
                br#""91235.00"}"#.to_vec(),
                TOpCode::Data(Data::Continue),
                true,
            )))
            .await
            .unwrap();
            ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
            ws.send(Message::Ping(b"srv".to_vec())).await.unwrap();
            // The client answers our ping...
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => assert_eq!(p, b"srv"),
                other => panic!("expected our pong, got {other:?}"),
            }
            saw_pong_tx.send(()).unwrap();
            // ...and pings us; tungstenite queues the pong, flush sends it.
            match ws.next().await {
                Some(Ok(Message::Ping(p))) => assert_eq!(p, b"cli"),
                other => panic!("expected the client's ping, got {other:?}"),
            }
            ws.flush().await.unwrap();
            go_close_rx.await.unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))
            .await
            .unwrap();
            // The client echoes the close.
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
                other => panic!("expected the close echo, got {other:?}"),
            }
        })
        .await;

        let url = format!("ws://{addr}/prices?assets=bitcoin");
        let mut up = Upstream::connect(&url, &cfg()).await.unwrap();
        assert_eq!(up.peer_addr(), addr);
        assert_eq!(
            next(&mut up).await.unwrap().unwrap(),
            &br#"{"bitcoin":"91234.12"}"#[..]
        );
        assert_eq!(
            next(&mut up).await.unwrap().unwrap(),
            &br#"{"bitcoin":"91235.00"}"#[..]
        );

        tokio::time::timeout(WAIT, saw_pong).await.unwrap().unwrap();
        // The server's ping has been read; now only our pong can move last_seen.
        let before = up.last_seen();
        tokio::time::sleep(Duration::from_millis(5)).await;
        up.ping(b"cli").unwrap();
        tokio::time::timeout(WAIT, async {
            while up.last_seen() <= before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the pong moves last_seen");

        go_close.send(()).unwrap();
        assert!(next(&mut up).await.unwrap().is_none());
        assert!(matches!(next(&mut up).await, Err(ClientError::Closed)));
        assert!(matches!(up.ping(b"x"), Err(ClientError::Closed)));
        tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn close_sends_1000_and_waits_for_the_echo() {
        let (addr, server) = ws_server(|mut ws, _| async move {
            ws.send(Message::Text("unread".into())).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => {
                        assert_eq!(f.code, CloseCode::Normal);
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("expected a close, got {other:?}"),
                }
            }
            // tungstenite echoes on the next flush.
            let _ = ws.flush().await;
        })
        .await;
        let up = Upstream::connect(&format!("ws://{addr}"), &cfg())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, up.close()).await.unwrap();
        tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_messages_are_too_big() {
        // Exactly the bound passes; one more byte, whole or fragmented, fails.
        for fragmented in [false, true] {
            let (addr, server) = ws_server(move |mut ws, _| async move {
                ws.send(Message::Text("a".repeat(64))).await.unwrap();
                if fragmented {
                    for (data, op, fin) in [
                        ("b".repeat(40), Data::Text, false),
                        ("c".repeat(25), Data::Continue, true),
                    ] {
                        let frame = TFrame::message(data.into_bytes(), TOpCode::Data(op), fin);
                        ws.send(Message::Frame(frame)).await.unwrap();
                    }
                } else {
                    ws.send(Message::Text("b".repeat(65))).await.unwrap();
                }
                // The client closes with 1009.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(Some(f)))) => {
                            assert_eq!(f.code, CloseCode::Size);
                            return;
                        }
                        Some(Ok(_)) => {}
                        other => panic!("expected close 1009, got {other:?}"),
                    }
                }
            })
            .await;
            let mut up = Upstream::connect(&format!("ws://{addr}/"), &cfg())
                .await
                .unwrap();
            assert_eq!(next(&mut up).await.unwrap().unwrap().len(), 64);
            match next(&mut up).await {
                Err(ClientError::TooBig { max: 64 }) => {}
                other => panic!("fragmented={fragmented}: {other:?}"),
            }
            assert!(matches!(next(&mut up).await, Err(ClientError::Closed)));
            tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn silence_follows_last_seen_on_the_tokio_clock() {
        let (addr, _server) = ws_server(|mut ws, _| async move {
            ws.send(Message::Text("1".into())).await.unwrap();
            // Then nothing, until the client goes away.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let mut up = Upstream::connect(&format!("ws://{addr}/"), &cfg())
            .await
            .unwrap();
        assert_eq!(next(&mut up).await.unwrap().unwrap(), &b"1"[..]);
        let seen = up.last_seen();
        // Paused only now (connecting on a paused clock could auto-advance
        // past the connect timeout): the sleep in `silence` auto-advances.
        tokio::time::pause();
        up.silence(Duration::from_secs(30)).await;
        assert!(Instant::now() >= seen + Duration::from_secs(30));
        assert_eq!(up.last_seen(), seen);
    }

    #[tokio::test]
    async fn next_text_is_cancel_safe() {
        let (go_tx, go) = oneshot::channel::<()>();
        let (addr, _server) = ws_server(|mut ws, _| async move {
            go.await.unwrap();
            for i in 0..3 {
                ws.send(Message::Text(format!("m{i}"))).await.unwrap();
            }
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let mut up = Upstream::connect(&format!("ws://{addr}/"), &cfg())
            .await
            .unwrap();
        // Cancel many reads while nothing has arrived...
        for _ in 0..20 {
            tokio::select! {
                r = up.next_text() => panic!("nothing was sent yet: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        go_tx.send(()).unwrap();
        // ...and nothing is lost or corrupted afterwards.
        for i in 0..3 {
            let got = next(&mut up).await.unwrap().unwrap();
            assert_eq!(got, format!("m{i}").as_bytes());
        }
    }

    // --- failures ---

    #[tokio::test]
    async fn refused_connection_is_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        match Upstream::connect(&format!("ws://{addr}/"), &cfg()).await {
            Err(e @ ClientError::Connect(_)) => assert_eq!(e.label(), "connect"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_handshake_is_typed() {
        let addr = raw_server("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        match Upstream::connect(&format!("ws://{addr}/prices"), &cfg()).await {
            Err(ClientError::Handshake(HandshakeError::Status(s))) => {
                assert_eq!(s, StatusCode::FORBIDDEN)
            }
            other => panic!("{other:?}"),
        }

        // A 101 whose accept key does not match ours.
        let addr = raw_server(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: s3pPLMBiTxaKDQYOBIs0YMA9zFo=\r\n\r\n",
        )
        .await;
        match Upstream::connect(&format!("ws://{addr}/"), &cfg()).await {
            Err(ClientError::Handshake(HandshakeError::Header(h))) => {
                assert!(h.contains("Sec-WebSocket-Accept"), "{h}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let addr = raw_server("").await;
        let cfg = ClientConfig {
            connect_timeout: Duration::from_millis(150),
            ..cfg()
        };
        let started = std::time::Instant::now();
        match Upstream::connect(&format!("ws://{addr}/"), &cfg).await {
            Err(ClientError::Timeout(d)) => assert_eq!(d, Duration::from_millis(150)),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn bad_url_and_bad_ca_fail_before_connecting() {
        assert!(matches!(
            Upstream::connect("http://127.0.0.1:1/", &cfg()).await,
            Err(ClientError::BadUrl(_))
        ));
        let cfg = ClientConfig {
            extra_ca: Some(PathBuf::from("/nonexistent/sluice-ca.pem")),
            ..cfg()
        };
        assert!(matches!(
            Connector::new(&cfg),
            Err(ClientError::Config(TlsConfigError::ExtraCa { .. }))
        ));
    }

    // --- wss:// ---

    /// A test CA and a server certificate for `localhost` and 127.0.0.1 it signed.
    struct Pki {
        ca_pem: String,
        server: Arc<rustls::ServerConfig>,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let ca = ca.self_signed(&ca_key).unwrap();

        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test upstream");
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }

    /// A wss server accepting `connections` connections; each gets one text.
    async fn wss_server(server: Arc<rustls::ServerConfig>, connections: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        tokio::spawn(async move {
            for _ in 0..connections {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that distrusts us aborts the TLS handshake.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
                    ws.send(Message::Text("secure".into())).await.unwrap();
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        addr
    }

    fn temp_ca(pem: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-client-test-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, pem).unwrap();
        path
    }

    #[tokio::test]
    async fn wss_with_the_extra_ca_by_name_and_by_ip() {
        let pki = pki();
        let addr = wss_server(pki.server.clone(), 2).await;
        let ca = temp_ca(&pki.ca_pem);
        let connector = Connector::new(&ClientConfig {
            extra_ca: Some(ca.clone()),
            ..cfg()
        });
        std::fs::remove_file(&ca).unwrap();
        let connector = connector.unwrap();
        for host in ["localhost", "127.0.0.1"] {
            let url = UpstreamUrl::parse(&format!("wss://{host}:{}/prices", addr.port())).unwrap();
            let mut up = connector.connect(&url).await.unwrap();
            assert_eq!(
                next(&mut up).await.unwrap().unwrap(),
                &b"secure"[..],
                "{host}"
            );
            up.close().await;
        }
    }

    #[tokio::test]
    async fn wss_without_the_extra_ca_is_a_tls_error() {
        let pki = pki();
        let addr = wss_server(pki.server.clone(), 1).await;
        let url = format!("wss://localhost:{}/prices", addr.port());
        match Upstream::connect(&url, &cfg()).await {
            Err(e @ ClientError::Tls(_)) => {
                assert_eq!(e.label(), "tls");
                assert!(e.to_string().contains("UnknownIssuer"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
