//! Integration tests of the price relay, in process: the server relays the
//! built-in mock feed (a real WebSocket server on loopback) to real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::relay::mock::{MockHandle, MockOptions, MockUpstream};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "integration-test-secret-key-base-0123456789";
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Server {
    addr: SocketAddr,
    mock: MockHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sluice::Error>>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mock = MockUpstream::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions {
            rate_hz: 50.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let scratch = std::env::temp_dir().join(format!("sluice-relay-it-{}", std::process::id()));
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.files_dir = scratch.join("files");
    config.uploads_dir = scratch.join("uploads");
    config.upstream = format!("ws://{}/prices?assets={{assets}}", mock.local_addr());
    config.upstream_backoff_base = Duration::from_millis(50);
    config.upstream_backoff_max = Duration::from_millis(200);
    config.drain_grace = Duration::from_secs(5);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let server = sluice::Sluice::new(config).unwrap().secrets(SECRET, "k");
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        mock,
        stop,
        task,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("drains")
            .expect("task")
            .expect("result");
        self.mock.shutdown().await;
    }
}

async fn connect(addr: SocketAddr) -> Ws {
    let key = sluice::token::Key::derive(SECRET.as_bytes(), b"user socket");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let token = sluice::token::sign(
        &key,
        &sluice::token::Term::Int(3),
        now,
        sluice::token::MaxAge::Seconds(3600),
    );
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={token}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Join and return the reply (asserting nothing of the topic came before it).
async fn join(ws: &mut Ws, topic: &str, jr: &str) -> Value {
    send(ws, json!([jr, jr, topic, "phx_join", {}])).await;
    loop {
        let v = next_json(ws).await;
        if v[3] == "phx_reply" && v[1] == jr {
            return v[4].clone();
        }
        assert_ne!(v[2], topic, "nothing of {topic} before its join reply: {v}");
    }
}

#[tokio::test]
async fn reply_first_then_prices_and_status_through_an_upstream_drop() {
    let server = start(|_| {}).await;
    let mut ws = connect(server.addr).await;
    let reply = join(&mut ws, "prices:bitcoin", "1").await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["response"]["asset"], "bitcoin");
    assert!(reply["response"]["upstream"].is_string());
    let mut prices = 0;
    while prices < 5 {
        let v = next_json(&mut ws).await;
        if v[3] == "new" {
            assert!(v[4]["value"].as_f64().unwrap() > 0.0);
            assert!(v[4]["time"].as_u64().is_some());
            assert_eq!(v[0], Value::Null, "encoded once, join_ref null");
            prices += 1;
        }
    }
    assert_eq!(server.mock.subscriptions("bitcoin"), 1);
    // The upstream drops every connection: reconnecting, then live, then prices.
    server.mock.drop_connections();
    let mut seen = Vec::new();
    while !(seen.contains(&"live".to_owned()) && seen.last().map(String::as_str) == Some("new")) {
        let v = next_json(&mut ws).await;
        match v[3].as_str().unwrap() {
            "status" => seen.push(v[4]["upstream"].as_str().unwrap().to_owned()),
            "new" if seen.contains(&"live".to_owned()) => seen.push("new".into()),
            "new" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(seen, vec!["reconnecting", "live", "new"]);
    server.stop().await;
}

#[tokio::test]
async fn lingering_feeds_give_way_at_the_cap_and_close_after_the_linger() {
    let server = start(|c| {
        c.upstream_max_connections = 2;
        c.upstream_linger = Duration::from_millis(600);
    })
    .await;
    let mut ws = connect(server.addr).await;
    for (i, asset) in ["a0", "a1"].iter().enumerate() {
        let jr = format!("{i}");
        assert_eq!(
            join(&mut ws, &format!("prices:{asset}"), &jr).await["status"],
            "ok"
        );
        send(
            &mut ws,
            json!([jr, "l", format!("prices:{asset}"), "phx_leave", {}]),
        )
        .await;
    }
    // Both linger (their upstreams are still open); a third asset still gets in.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = join(&mut ws, "prices:bitcoin", "9").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    // A fourth, with two feeds subscribed, is refused.
    let r2 = join(&mut ws, "prices:ethereum", "8").await;
    let r3 = join(&mut ws, "prices:solana", "7").await;
    assert_eq!(
        r2["status"], "ok",
        "the second lingering feed gave way: {r2}"
    );
    assert_eq!(r3["response"]["reason"], "upstream_limit", "{r3}");
    // After the linger, the upstream sees no subscription for the left assets.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(server.mock.subscriptions("a0"), 0);
    assert_eq!(server.mock.subscriptions("a1"), 0);
    assert_eq!(server.mock.subscriptions("bitcoin"), 1);
    server.stop().await;
}
