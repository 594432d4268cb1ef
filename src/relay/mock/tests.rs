//! Tests of the mock upstream over real sockets on 127.0.0.1:0, with a
//! fastwebsockets client.

#![allow(clippy::unwrap_used)]

use std::future::Future;

use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn options_validation() {
    assert!(MockOptions::default().validate().is_ok());
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.5] {
        let o = MockOptions {
            rate_hz: rate,
            ..MockOptions::default()
        };
        assert!(matches!(o.validate(), Err(MockError::Rate(_))), "{rate}");
    }
    let o = MockOptions {
        assets: vec!["bitcoin".into(), "Bad Coin".into()],
        ..MockOptions::default()
    };
    assert!(matches!(o.validate(), Err(MockError::Asset(a)) if a == "Bad Coin"));
}

// === over real sockets ===

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

type Client = fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

const WAIT: Duration = Duration::from_secs(5);

async fn start(opts: MockOptions) -> MockHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockUpstream::start(listener, opts).await.unwrap()
}

fn fast() -> MockOptions {
    MockOptions {
        rate_hz: 50.0,
        seed: Some(1),
        ..MockOptions::default()
    }
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Client, WebSocketError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let req = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await?;
    Ok(ws)
}

/// The next text message (pongs and other control frames are skipped).
async fn next_text(ws: &mut Client) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.read_frame())
            .await
            .unwrap()
            .unwrap();
        if frame.opcode == OpCode::Text {
            return String::from_utf8(frame.payload.to_vec()).unwrap();
        }
    }
}

/// One plain HTTP/1.1 request; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assets_of(text: &str) -> Vec<String> {
    let parsed = feed::parse(text.as_bytes()).unwrap();
    assert!(parsed.is_clean(), "{text}");
    parsed.ticks.into_iter().map(|t| t.asset).collect()
}

#[tokio::test]
async fn serves_requested_assets_and_counts_subscriptions() {
    let mock = start(fast()).await;
    let addr = mock.local_addr();
    let mut ws = connect(addr, "/prices?assets=bitcoin,ethereum")
        .await
        .unwrap();
    // The connect snapshot has every asset, then ticks carry changes.
    assert_eq!(
        assets_of(&next_text(&mut ws).await),
        ["bitcoin", "ethereum"]
    );
    for _ in 0..5 {
        let assets = assets_of(&next_text(&mut ws).await);
        assert!(!assets.is_empty());
        assert!(assets.iter().all(|a| a == "bitcoin" || a == "ethereum"));
    }
    assert_eq!(mock.connections(), 1);
    assert_eq!(mock.connections_total(), 1);
    assert_eq!(mock.subscriptions("bitcoin"), 1);
    assert_eq!(mock.subscriptions("ethereum"), 1);
    assert_eq!(mock.subscriptions("solana"), 0);

    let (status, body) = http(addr, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let stats: MockStats = serde_json::from_str(&body).unwrap();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.connections_total, 1);
    assert!(stats.messages_sent >= 6);
    assert_eq!(
        stats.subscriptions,
        BTreeMap::from([("bitcoin".into(), 1), ("ethereum".into(), 1)])
    );

    ws.write_frame(Frame::close(1000, b"bye")).await.unwrap();
    eventually("disconnect", || mock.connections() == 0).await;
    assert_eq!(mock.subscriptions("bitcoin"), 0);
    assert_eq!(mock.stats().subscriptions, BTreeMap::new());
    assert_eq!(mock.connections_total(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn counts_overlapping_connections_per_asset() {
    let mock = start(fast()).await;
    let addr = mock.local_addr();
    let a = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    let b = connect(addr, "/prices?assets=bitcoin,solana")
        .await
        .unwrap();
    let c = connect(addr, "/prices?assets=ALL").await.unwrap();
    assert_eq!(mock.connections(), 3);
    assert_eq!(mock.subscriptions("bitcoin"), 3);
    assert_eq!(mock.subscriptions("solana"), 2);
    assert_eq!(mock.subscriptions("cardano"), 1);
    drop(b);
    eventually("b gone", || mock.subscriptions("solana") == 1).await;
    assert_eq!(mock.subscriptions("bitcoin"), 2);
    drop((a, c));
    eventually("all gone", || mock.connections() == 0).await;
    assert_eq!(mock.connections_total(), 3);
    mock.shutdown().await;
}

#[tokio::test]
async fn connections_see_the_same_market() {
    let mock = start(MockOptions {
        rate_hz: 4.0,
        ..fast()
    })
    .await;
    let addr = mock.local_addr();
    let mut a = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    let mut b = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    // Ticks are aligned across connections, so the two streams carry the
    // same prices (at most one snapshot apart if they connected across a
    // tick boundary).
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..4 {
        seen_a.push(next_text(&mut a).await);
        seen_b.push(next_text(&mut b).await);
    }
    let common = seen_a.iter().filter(|m| seen_b.contains(m)).count();
    assert!(common >= 3, "{seen_a:?} vs {seen_b:?}");
    mock.shutdown().await;
}

#[tokio::test]
async fn answers_pings_unless_silent() {
    let mock = start(fast()).await;
    let mut ws = connect(mock.local_addr(), "/prices?assets=bitcoin")
        .await
        .unwrap();
    ws.set_auto_pong(true);
    let ping = |p: &'static [u8]| Frame::new(true, OpCode::Ping, None, Payload::Borrowed(p));
    ws.write_frame(ping(b"one")).await.unwrap();
    loop {
        let f = tokio::time::timeout(WAIT, ws.read_frame())
            .await
            .unwrap()
            .unwrap();
        if f.opcode == OpCode::Pong {
            assert_eq!(&*f.payload, b"one");
            break;
        }
    }

    mock.set_silent(true);
    // Let what is in flight arrive, then expect nothing at all.
    let quiet = Duration::from_millis(200);
    while tokio::time::timeout(quiet, ws.read_frame()).await.is_ok() {}
    ws.write_frame(ping(b"two")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), ws.read_frame())
            .await
            .is_err()
    );

    mock.set_silent(false);
    assert_eq!(assets_of(&next_text(&mut ws).await), ["bitcoin"]);
    mock.shutdown().await;
}

#[tokio::test]
async fn inject_drop_and_refuse() {
    let mock = start(fast()).await;
    let addr = mock.local_addr();
    let mut ws = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    next_text(&mut ws).await;
    mock.inject("{not json");
    loop {
        if next_text(&mut ws).await == "{not json" {
            break;
        }
    }
    let (status, _) = http(addr, "POST", "/control/inject", r#"{"bitcoin":1}"#).await;
    assert_eq!(status, 204);
    loop {
        if next_text(&mut ws).await == r#"{"bitcoin":1}"# {
            break;
        }
    }

    mock.drop_connections();
    // Cut without a close frame: the client sees the stream end.
    while let Ok(f) = tokio::time::timeout(WAIT, ws.read_frame()).await.unwrap() {
        assert_ne!(f.opcode, OpCode::Close);
    }
    eventually("dropped", || mock.connections() == 0).await;

    mock.set_refuse(true);
    match connect(addr, "/prices?assets=bitcoin").await {
        Err(WebSocketError::InvalidStatusCode(503)) => {}
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(http(addr, "POST", "/control/accept", "").await.0, 204);
    let mut ws = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    next_text(&mut ws).await;
    assert_eq!(mock.connections_total(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn http_routes_and_bad_requests() {
    let mock = start(fast()).await;
    let addr = mock.local_addr();
    assert_eq!(http(addr, "GET", "/nope", "").await.0, 404);
    assert_eq!(http(addr, "GET", "/prices?assets=bitcoin", "").await.0, 426);
    assert_eq!(http(addr, "POST", "/control/bogus", "").await.0, 404);
    assert_eq!(http(addr, "POST", "/control/silent", "").await.0, 204);
    assert_eq!(http(addr, "POST", "/control/live", "").await.0, 204);
    for path in ["/prices", "/prices?assets=", "/prices?assets=BAD,Coin"] {
        match connect(addr, path).await {
            Err(WebSocketError::InvalidStatusCode(400)) => {}
            other => panic!("{path}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
    let mut ws = connect(addr, "/prices?assets=ALL").await.unwrap();
    let mut assets = assets_of(&next_text(&mut ws).await);
    assets.sort();
    assert_eq!(
        assets,
        ["bitcoin", "cardano", "dogecoin", "ethereum", "solana"]
    );
    assert_eq!(mock.connections_total(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn unknown_assets_served_or_ignored() {
    let mock = start(fast()).await;
    let mut ws = connect(mock.local_addr(), "/prices?assets=foo-coin")
        .await
        .unwrap();
    assert_eq!(assets_of(&next_text(&mut ws).await), ["foo-coin"]);
    mock.shutdown().await;

    let mock = start(MockOptions {
        serve_unknown: false,
        ..fast()
    })
    .await;
    let mut ws = connect(mock.local_addr(), "/prices?assets=foo-coin,bitcoin")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(assets_of(&next_text(&mut ws).await), ["bitcoin"]);
    }
    assert_eq!(mock.subscriptions("foo-coin"), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_with_1001_and_frees_the_port() {
    let mock = start(fast()).await;
    let addr = mock.local_addr();
    let mut ws = connect(addr, "/prices?assets=bitcoin").await.unwrap();
    next_text(&mut ws).await;
    let stopping = tokio::spawn(mock.shutdown());
    let code = loop {
        let f = tokio::time::timeout(WAIT, ws.read_frame())
            .await
            .unwrap()
            .unwrap();
        if f.opcode == OpCode::Close {
            break u16::from_be_bytes([f.payload[0], f.payload[1]]);
        }
    };
    assert_eq!(code, 1001);
    drop(ws);
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    TcpListener::bind(addr).await.unwrap();
}
