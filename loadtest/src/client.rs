//! The client every scenario uses: where to connect ([`Target`]), the
//! WebSocket handshake over hyper's HTTP/1 client ([`connect_to`]), one
//! connection's two halves ([`Conn`]), and the Phoenix V2 join and
//! heartbeat on top.
//!
//! # Protocols
//! * [`Protocol::Phoenix`]: the socket URL gets `vsn=2.0.0` and the token
//!   in its query; connections join a topic and send heartbeats.
//! * [`Protocol::Raw`], for peers that do not speak Phoenix: `--url` is a
//!   base `ws://host:port` (its path is replaced), no token, no join, no
//!   heartbeat. A raw peer implements exactly this ([`raw`]):
//!   - `GET /echo`: every data message is echoed back unchanged, same opcode;
//!   - `GET /sub`: a subscriber of the one topic; it only receives;
//!   - `GET /pub`: every data message is published to all current `/sub`
//!     subscribers (not back to the publisher), same opcode.
//!
//! # Contract
//! * One TCP connection per [`Conn`], `TCP_NODELAY` set, bound to the
//!   connection's source address if `--source-addrs` was given (connection
//!   `i` uses address `i mod n`, port 0), split into a read half and a
//!   write half that may live in different futures.
//! * [`recv`] is **not cancel-safe** (fastwebsockets' `read_frame` is not):
//!   race it only against events after which the connection is never read
//!   again (the end of the run).
//! * Pings are returned to the caller ([`Inbound::Ping`]), who answers them
//!   with the write half; nothing is written behind the caller's back.
//! * No scheme but `ws://` (TLS is not supported yet).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use fastwebsockets::{WebSocketRead, WebSocketWrite};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, Chain};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, DecodeError, Encoding, Kind};
use crate::sources::SourceAddrs;
use crate::stats::ErrorKind;

/// Phoenix's heartbeat interval, so idle connections are not timed out.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The wire protocol spoken to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Phoenix Channels V2 (vsn 2.0.0): token, joins, heartbeats.
    #[default]
    Phoenix,
    /// Plain WebSocket messages on `/echo`, `/sub` and `/pub` (see [`raw`]).
    Raw,
}

/// The raw-protocol contract (see the module docs).
pub mod raw {
    /// Every data message is echoed back unchanged, same opcode.
    pub const ECHO: &str = "/echo";
    /// A subscriber of the one topic; it only receives.
    pub const SUB: &str = "/sub";
    /// Every data message is published to every current subscriber.
    pub const PUB: &str = "/pub";
    /// The text message a raw publisher sends after its last message;
    /// subscribers stop when they receive it.
    pub const DONE: &[u8] = b"done";
}

/// The read half of a connection (fragments are reassembled).
pub type Reader = FragmentCollectorRead<Chain<std::io::Cursor<Bytes>, OwnedReadHalf>>;
/// The write half of a connection (client frames are masked).
pub type Writer = WebSocketWrite<OwnedWriteHalf>;

/// Where and how to connect: a resolved address, the request target and
/// the local addresses to connect from.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resolved server address.
    pub addr: SocketAddr,
    /// The `Host` header (the URL's authority).
    host: String,
    /// Phoenix: path and query, with `vsn=2.0.0` and the token appended.
    /// Raw: `/` (every connection names its own path).
    path_and_query: String,
    /// Local addresses to bind to, in rotation; `None`: the kernel's choice.
    sources: Option<SourceAddrs>,
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The upgrade request could not be built (e.g. a bad character in the host).
    #[error("bad upgrade request: {0}")]
    Request(http::Error),
    /// The HTTP exchange failed.
    #[error("upgrade request: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered the upgrade with something other than 101.
    #[error("upgrade refused with HTTP {0}")]
    Status(u16),
    /// The upgraded connection was not the TCP stream we opened.
    #[error("upgrade returned an unexpected IO type")]
    Upgrade,
    /// A WebSocket read or write failed.
    #[error("websocket: {0}")]
    Ws(#[from] WebSocketError),
    /// The server closed the socket (close frame code, if any).
    #[error("closed by the server (code {0:?})")]
    Closed(Option<u16>),
    /// A server message could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The join was refused: the reply's status and response.
    #[error("join refused: {0}")]
    Join(String),
    /// Binding to the source address failed.
    #[error("bind to source address {addr}: {source}")]
    Bind {
        /// The source address.
        addr: IpAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting and joining took longer than the setup timeout.
    #[error("setup timed out")]
    Timeout,
    /// Nothing arrived for this long while requests were in flight.
    #[error("no answer for {0:?} with requests in flight; connection abandoned")]
    Stalled(std::time::Duration),
    /// The channel was closed or crashed by the server (`phx_close` / `phx_error`).
    #[error("channel ended by the server: {0}")]
    Channel(&'static str),
    /// A message could not be encoded (meta field too long).
    #[error("encode: {0}")]
    Encode(#[from] codec::EncodeError),
}

impl ConnError {
    /// The error's summary kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnError::Connect(_)
            | ConnError::Request(_)
            | ConnError::Http(_)
            | ConnError::Status(_)
            | ConnError::Bind { .. }
            | ConnError::Timeout => ErrorKind::Connect,
            ConnError::Channel(_) => ErrorKind::Closed,
            ConnError::Stalled(_) => ErrorKind::Stalled,
            ConnError::Upgrade => ErrorKind::Internal,
            ConnError::Ws(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => {
                ErrorKind::Closed
            }
            ConnError::Ws(WebSocketError::IoError(_)) => ErrorKind::Io,
            ConnError::Ws(_) | ConnError::Decode(_) | ConnError::Encode(_) => ErrorKind::Decode,
            ConnError::Closed(_) => ErrorKind::Closed,
            ConnError::Join(_) => ErrorKind::Join,
        }
    }
}

/// Why a URL or token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse, or is not `ws://host[:port]/path`.
    #[error("bad --url {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A source address is of another family than the server's address.
    #[error("source address {source_addr} cannot reach {server} (different address family)")]
    SourceFamily {
        /// The source address.
        source_addr: IpAddr,
        /// The server's address.
        server: SocketAddr,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// `host:port`.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
}

// === impl Target ===

impl Target {
    /// Parse `url` (`ws://host[:port]/path[?query]`), resolve its host once,
    /// and append `vsn=2.0.0` and, if given, `token=...` to the query.
    pub async fn resolve(url: &str, token: Option<&str>) -> Result<Target, TargetError> {
        let (uri, mut target) = Target::parse(url).await?;
        let mut path_and_query = uri.path().to_owned();
        path_and_query.push('?');
        if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
            path_and_query.push_str(q);
            path_and_query.push('&');
        }
        path_and_query.push_str("vsn=2.0.0");
        if let Some(token) = token {
            path_and_query.push_str("&token=");
            percent_encode(&mut path_and_query, token);
        }
        target.path_and_query = path_and_query;
        Ok(target)
    }

    /// Parse a raw peer's base URL `ws://host[:port][/ignored]` and resolve
    /// its host once; connections name their own path ([`raw`]).
    pub async fn resolve_raw(url: &str) -> Result<Target, TargetError> {
        Ok(Target::parse(url).await?.1)
    }

    /// Connect from `sources` in rotation. Every address must be of the
    /// server address's family.
    pub fn with_sources(mut self, sources: SourceAddrs) -> Result<Target, TargetError> {
        let server = self.addr;
        if let Some(&source_addr) = sources
            .addrs()
            .iter()
            .find(|a| a.is_ipv4() != server.is_ipv4())
        {
            return Err(TargetError::SourceFamily {
                source_addr,
                server,
            });
        }
        self.sources = Some(sources);
        Ok(self)
    }

    /// The Phoenix socket path and query (`vsn` and token included).
    pub fn phoenix_path(&self) -> &str {
        &self.path_and_query
    }

    /// The source address of connection `index`, if addresses rotate.
    pub fn source(&self, index: usize) -> Option<IpAddr> {
        self.sources.as_ref().map(|s| s.pick(index))
    }

    /// Parse `ws://host[:port]...` and resolve the host; path `/`.
    async fn parse(url: &str) -> Result<(http::Uri, Target), TargetError> {
        let bad = |why| TargetError::Url {
            url: url.to_owned(),
            why,
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(bad("wss:// is not supported yet")),
            _ => return Err(bad("the scheme must be ws://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let hostport = format!("{host}:{port}");
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: hostport.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| TargetError::Resolve {
                host: hostport.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let host = authority.as_str().to_owned();
        Ok((
            uri,
            Target {
                addr,
                host,
                path_and_query: "/".to_owned(),
                sources: None,
            },
        ))
    }
}

/// Append `s` with everything but RFC 3986 unreserved characters percent-encoded.
fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Mint a socket token for `user` as `Phoenix.Token.sign(secret_key_base, salt, user)`
/// would, valid for a day.
pub fn mint_token(secret_key_base: &str, salt: &str, user: i128) -> String {
    let key = sluice::token::Key::derive(secret_key_base.as_bytes(), salt.as_bytes());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    sluice::token::sign(
        &key,
        &sluice::token::Term::Int(user),
        now_ms,
        sluice::token::DEFAULT_MAX_AGE,
    )
}

// === connect ===

/// One open WebSocket connection, split in two halves.
pub struct Conn {
    /// The read half.
    pub reader: Reader,
    /// The write half.
    pub writer: Writer,
}

/// Open connection 0 to the Phoenix socket of `target` (see [`connect_to`]).
pub async fn connect(target: &Target) -> Result<Conn, ConnError> {
    connect_to(target, target.phoenix_path(), 0).await
}

/// Open TCP connection `index` to `target` (from its source address, if
/// addresses rotate), with `TCP_NODELAY`.
pub async fn tcp(target: &Target, index: usize) -> Result<TcpStream, ConnError> {
    let tcp = match target.source(index) {
        None => TcpStream::connect(target.addr)
            .await
            .map_err(ConnError::Connect)?,
        Some(ip) => {
            let bind_err = |source| ConnError::Bind { addr: ip, source };
            let socket = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(bind_err)?;
            socket.bind(SocketAddr::new(ip, 0)).map_err(bind_err)?;
            socket
                .connect(target.addr)
                .await
                .map_err(ConnError::Connect)?
        }
    };
    tcp.set_nodelay(true).map_err(ConnError::Connect)?;
    Ok(tcp)
}

/// Open connection `index` to `target` and upgrade it to a WebSocket at
/// `path_and_query` ([`Target::phoenix_path`], or a [`raw`] path).
///
/// The HTTP/1 connection is driven in this future (nothing is spawned);
/// cancelling it drops the socket.
pub async fn connect_to(
    target: &Target,
    path_and_query: &str,
    index: usize,
) -> Result<Conn, ConnError> {
    let tcp = tcp(target, index).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let request = hyper::Request::builder()
        .method("GET")
        .uri(path_and_query)
        .header(HOST, target.host.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(ConnError::Request)?;
    // The connection future must be polled for the exchange to progress; it
    // finishes once it has handed the socket over to the upgrade (which may
    // be before `send_request` has returned the response).
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut send = std::pin::pin!(sender.send_request(request));
    let mut conn_done = false;
    let mut response = tokio::select! {
        r = &mut send => r?,
        r = &mut conn => {
            r?;
            conn_done = true;
            send.await?
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ConnError::Status(response.status().as_u16()));
    }
    let upgraded = if conn_done {
        hyper::upgrade::on(&mut response).await
    } else {
        let (upgraded, driven) = tokio::join!(hyper::upgrade::on(&mut response), conn);
        driven?;
        upgraded
    };
    let parts = upgraded?
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| ConnError::Upgrade)?;
    let (r, w) = parts.io.into_inner().into_split();
    // Bytes the server sent right behind the 101 are read first. Copied (or
    // dropped when empty, as usual) so that hyper's read buffer is freed:
    // it would otherwise be kept alive by the slice for the whole connection.
    let early = if parts.read_buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&parts.read_buf)
    };
    let r = std::io::Cursor::new(early).chain(r);
    let (mut reader, writer): (WebSocketRead<_>, _) =
        fastwebsockets::after_handshake_split(r, w, Role::Client);
    // Pings and close frames come back to the caller, who owns the writer.
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    Ok(Conn {
        reader: FragmentCollectorRead::new(reader),
        writer,
    })
}

// === reading and writing ===

/// One inbound WebSocket message.
pub enum Inbound {
    /// A text message (already checked to be UTF-8).
    Text(Payload<'static>),
    /// A binary message.
    Binary(Payload<'static>),
    /// A ping: answer it with [`pong`].
    Ping(Payload<'static>),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
}

/// Read the next message (pongs are skipped). Not cancel-safe.
pub async fn recv(reader: &mut Reader) -> Result<Inbound, ConnError> {
    // With auto pong and auto close off, nothing is owed to the peer here.
    let mut no_obligations =
        |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    loop {
        let frame = reader.read_frame(&mut no_obligations).await?;
        let inbound = match frame.opcode {
            OpCode::Text => Inbound::Text(frame.payload),
            OpCode::Binary => Inbound::Binary(frame.payload),
            OpCode::Ping => Inbound::Ping(frame.payload),
            OpCode::Close => Inbound::Close(match frame.payload.get(..2) {
                Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
                _ => None,
            }),
            // Pongs answer nothing we sent; fragments arrive reassembled.
            OpCode::Pong | OpCode::Continuation => continue,
        };
        return Ok(inbound);
    }
}

/// Decode an inbound data message; a ping is handed to `pings` (answered by
/// the writer side) and yields `None`; a close ends the connection.
pub fn decode<'a>(
    inbound: &'a Inbound,
    pings: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<Option<crate::codec::ServerMsg<'a>>, ConnError> {
    match inbound {
        Inbound::Text(p) => Ok(Some(crate::codec::decode_text(p)?)),
        Inbound::Binary(p) => Ok(Some(crate::codec::decode_binary(p)?)),
        Inbound::Ping(p) => {
            let _ = pings.try_send(p.to_vec());
            Ok(None)
        }
        Inbound::Close(code) => Err(ConnError::Closed(*code)),
    }
}

/// Send one message from `buf` (masked in place: `buf` is garbage afterwards).
pub async fn send(
    writer: &mut Writer,
    encoding: Encoding,
    buf: &mut [u8],
) -> Result<(), ConnError> {
    let payload = Payload::BorrowedMut(buf);
    let frame = match encoding {
        Encoding::Json => Frame::text(payload),
        Encoding::Binary => Frame::binary(payload),
    };
    writer.write_frame(frame).await?;
    Ok(())
}

/// Answer a ping.
pub async fn pong(writer: &mut Writer, payload: &[u8]) -> Result<(), ConnError> {
    let payload = Payload::Owned(payload.to_vec());
    writer.write_frame(Frame::pong(payload)).await?;
    Ok(())
}

/// Send a close frame (1000), ignoring failures: the connection is done either way.
pub async fn close(writer: &mut Writer) {
    let _ = writer.write_frame(Frame::close(1000, b"")).await;
}

/// The write half of a reading connection: answer the pings the reader
/// hands over, and (Phoenix) send a heartbeat every [`HEARTBEAT`], until
/// `stop` fires or is dropped.
pub async fn keepalive(
    writer: &mut Writer,
    mut pings: mpsc::Receiver<Vec<u8>>,
    mut stop: oneshot::Receiver<()>,
    heartbeats: bool,
) -> Result<(), ConnError> {
    let mut buf = Vec::with_capacity(64);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            Some(p) = pings.recv() => pong(writer, &p).await?,
            _ = beat.tick(), if heartbeats => {
                n += 1;
                heartbeat(writer, &mut buf, &format!("hb{n}")).await?;
            }
        }
    }
}

/// Send a Phoenix heartbeat (`[null, ref, "phoenix", "heartbeat", {}]`).
pub async fn heartbeat(
    writer: &mut Writer,
    buf: &mut Vec<u8>,
    ref_: &str,
) -> Result<(), ConnError> {
    buf.clear();
    codec::encode_push(
        buf,
        Encoding::Json,
        None,
        Some(ref_),
        "phoenix",
        "heartbeat",
        b"{}",
    )?;
    send(writer, Encoding::Json, buf).await
}

impl Conn {
    /// Join `topic` with `join_ref` as both join_ref and ref, and wait for an
    /// `ok` reply (other messages before it are skipped). Not cancel-safe.
    pub async fn join(
        &mut self,
        buf: &mut Vec<u8>,
        topic: &str,
        join_ref: &str,
    ) -> Result<(), ConnError> {
        buf.clear();
        codec::encode_push(
            buf,
            Encoding::Json,
            Some(join_ref),
            Some(join_ref),
            topic,
            "phx_join",
            b"{}",
        )?;
        send(&mut self.writer, Encoding::Json, buf).await?;
        loop {
            let msg = match recv(&mut self.reader).await? {
                Inbound::Text(p) => p,
                Inbound::Binary(_) => continue,
                Inbound::Ping(p) => {
                    pong(&mut self.writer, &p).await?;
                    continue;
                }
                Inbound::Close(code) => return Err(ConnError::Closed(code)),
            };
            let m = codec::decode_text(&msg)?;
            if m.kind != Kind::Reply || m.ref_.as_deref() != Some(join_ref) || m.topic != topic {
                continue;
            }
            return match m.status.as_deref() {
                Some("ok") => Ok(()),
                status => Err(ConnError::Join(format!(
                    "{} {}",
                    status.unwrap_or("?"),
                    String::from_utf8_lossy(m.payload.as_bytes())
                ))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn target_appends_vsn_and_token() {
        let t = Target::resolve("ws://127.0.0.1:4000/socket/websocket", Some("a.b+c"))
            .await
            .expect("resolves");
        assert_eq!(t.addr, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(t.host, "127.0.0.1:4000");
        assert_eq!(
            t.path_and_query,
            "/socket/websocket?vsn=2.0.0&token=a.b%2Bc"
        );
        let t = Target::resolve("ws://127.0.0.1/s?x=1", None)
            .await
            .expect("resolves");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path_and_query, "/s?x=1&vsn=2.0.0");
        for bad in ["http://h/", "wss://h/", "nonsense", "/path"] {
            assert!(Target::resolve(bad, None).await.is_err(), "{bad}");
            assert!(Target::resolve_raw(bad).await.is_err(), "{bad}");
        }
        let t = Target::resolve_raw("ws://127.0.0.1:4000/socket/websocket?x=1")
            .await
            .expect("resolves");
        assert_eq!((t.addr.port(), t.phoenix_path()), (4000, "/"));
        assert_eq!(t.source(3), None);
        let sources = SourceAddrs::parse("127.0.0.2-127.0.0.3").expect("parses");
        let t = t.with_sources(sources.clone()).expect("same family");
        assert_eq!(t.source(3), Some("127.0.0.3".parse().expect("ip")));
        let t6 = Target::resolve_raw("ws://[::1]:4000")
            .await
            .expect("resolves");
        assert!(matches!(
            t6.with_sources(sources),
            Err(TargetError::SourceFamily { .. })
        ));
    }

    #[tokio::test]
    async fn connections_come_from_the_rotated_source_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let target = Target::resolve_raw(&url)
            .await
            .expect("resolves")
            .with_sources(SourceAddrs::parse("127.0.0.2-127.0.0.4").expect("parses"))
            .expect("same family");
        let mut seen = Vec::new();
        for i in 0..6 {
            let _stream = tcp(&target, i).await.expect("connects");
            let (_, peer) = listener.accept().await.expect("accepts");
            seen.push(peer.ip().to_string());
        }
        assert_eq!(
            seen,
            [
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4"
            ]
        );
    }

    #[test]
    fn minted_token_verifies() {
        let secret = "a-secret-key-base-of-at-least-20-bytes";
        let token = mint_token(secret, sluice::token::SOCKET_SALT, 1);
        let key = sluice::token::Key::derive(secret.as_bytes(), b"user socket");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let data =
            sluice::token::verify(&key, Some(&token), now, &Default::default()).expect("verifies");
        assert_eq!(sluice::token::user_id(&data).as_deref(), Some("1"));
    }
}
